#!/usr/bin/env bash
# The project's test command (README, .ci/run): fetches the test models, checks formatting
# and lints, and runs every test against the real weights.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/trident/target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

step() { echo "==> $*" >&2; }

step "fetching test models (cached under ~/.cache/trident)"
scripts/fetch-models.sh

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings

step "optional: the openai Python client (for the client-compatibility test)"
OPENAI_VENV=${OPENAI_VENV:-$HOME/.cache/trident/openai-venv}
if [ -n "${TRIDENT_PYTHON:-}" ] && "$TRIDENT_PYTHON" -c "import openai" 2>/dev/null; then
  :
elif python3 -c "import openai" 2>/dev/null; then
  export TRIDENT_PYTHON=python3
elif "$OPENAI_VENV/bin/python" -c "import openai" 2>/dev/null \
  || { python3 -m venv "$OPENAI_VENV" >/dev/null 2>&1 \
       && "$OPENAI_VENV/bin/pip" install --quiet openai >/dev/null 2>&1; }; then
  export TRIDENT_PYTHON="$OPENAI_VENV/bin/python"
else
  echo "test.sh: could not install the openai Python package; its test will be skipped" >&2
fi

# The cohere and LangChain client tests find these venvs themselves (or $TRIDENT_COHERE_PYTHON,
# $TRIDENT_LANGCHAIN_PYTHON); where pip cannot install a package its test is skipped.
client_venv() { # venv-name import-name pip-package
  local venv="$HOME/.cache/trident/$1"
  "$venv/bin/python" -c "import $2" 2>/dev/null && return 0
  python3 -m venv "$venv" >/dev/null 2>&1 && "$venv/bin/pip" install --quiet "$3" >/dev/null 2>&1 \
    || echo "test.sh: could not install the $3 Python package; its client test will be skipped" >&2
}
step "optional: the cohere, langchain-openai and llama-index Python clients"
client_venv cohere-venv cohere cohere
client_venv langchain-venv langchain_openai langchain-openai
client_venv llamaindex-venv llama_index.llms.openai_like llama-index-llms-openai-like

step "cargo test"
cargo test --all-targets "$@"
