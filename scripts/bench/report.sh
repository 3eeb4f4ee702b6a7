#!/usr/bin/env bash
# Runs every benchmark under scripts/bench back to back and writes one table of the figures
# the project sets goals for: trident, the peer (or trident's own baseline), their ratio per
# round (a range over ROUNDS rounds), the goal and whether it is met.
#   [ROUNDS=2] [BENCHES="chat batching prefix embeddings encoders-large structured proxy"] \
#     scripts/bench/report.sh [--out DIR]        (default target/bench-report)
# Writes DIR/report.json, DIR/report.md and each benchmark's output under DIR/logs/.
# A benchmark whose peer is not installed, or that fails, leaves its rows saying so; the
# others still run. prefix.sh runs when it exists. rerank can be added to BENCHES (no goal).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=target/bench-report
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=${2:?--out DIR}; shift 2 ;;
    *) sed -n '2,9p' "$0" >&2; exit 2 ;;
  esac
done
export ROUNDS=${ROUNDS:-2}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/trident/target}
PY=${PEER_PYTHON:-$HOME/.cache/trident-peers/venv/bin/python}
mkdir -p "$OUT/logs"
rm -f "$OUT"/logs/*.log "$OUT"/logs/*.status

# missing NAME: why NAME's peer cannot run here (empty when it can).
missing() {
  case "$1" in
    chat) "$PY" -c 'import llama_cpp' 2>/dev/null || echo "llama-cpp-python not in $PY (../shared/peers/setup.sh)" ;;
    embeddings | rerank | encoders-large) "$PY" -c 'import sentence_transformers' 2>/dev/null || echo "sentence-transformers not in $PY (../shared/peers/setup.sh)" ;;
    proxy) command -v nginx >/dev/null && command -v wrk >/dev/null || echo "nginx or wrk not installed (apt-get install -y nginx-light wrk)" ;;
    batching) command -v cmake >/dev/null || python3 -m pip --version >/dev/null 2>&1 || echo "cannot build llama-server (no pip)" ;;
  esac
}

# proxy.sh takes the binary; the others build and copy it themselves.
cargo build --release --quiet || exit 1
cp "$CARGO_TARGET_DIR/release/trident" "$OUT/trident"

for name in ${BENCHES:-chat batching prefix embeddings encoders-large structured proxy}; do
  script=scripts/bench/$name.sh
  log=$OUT/logs/$name.log
  if [ ! -x "$script" ]; then
    echo "not present" >"$OUT/logs/$name.status"
    echo "report: $name: $script not present, skipped" >&2
    continue
  fi
  why=$(missing "$name")
  if [ -n "$why" ] && [ "$name" != chat ] && [ "$name" != embeddings ]; then
    # chat.sh and embeddings.sh still measure trident without their peer.
    echo "peer not installed: $why" >"$OUT/logs/$name.status"
    echo "report: $name: peer not installed ($why), skipped" >&2
    continue
  fi
  echo "report: running $script (ROUNDS=$ROUNDS) > $log" >&2
  start=$(date +%s)
  if [ "$name" = proxy ]; then
    "$script" "$OUT/trident" >"$log" 2>"$log.err"
  else
    "$script" >"$log" 2>"$log.err"
  fi
  rc=$?
  echo "exit $rc${why:+; peer not installed: $why}" >"$OUT/logs/$name.status"
  echo "report: $name done in $(( $(date +%s) - start )) s (exit $rc)" >&2
done

python3 scripts/bench/report.py "$OUT" && echo "report: wrote $OUT/report.json and $OUT/report.md" >&2
cat "$OUT/report.md"
