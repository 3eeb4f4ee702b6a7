#!/usr/bin/env bash
# Embedding benchmark, trident's engine over HTTP vs sentence-transformers, back to back on
# the same MiniLM weights with the same thread count:
#   * single short query (~12 words), concurrency 1: latency p50;
#   * batches of 32 inputs x ~100 words: inputs/s.
# Both sides encode the same texts: embed_texts.py writes the peer's own, in its order.
#   [THREADS=2] [DTYPE=auto|float32] [ROUNDS=2] [BENCH_BIN=path] [PEER=0] scripts/bench/embeddings.sh
# BENCH_BIN measures that trident binary instead of building this checkout (before/after
# comparisons); PEER=0 skips sentence-transformers.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/trident/target}
THREADS=${THREADS:-2}
PY=${PEER_PYTHON:-$HOME/.cache/trident-peers/venv/bin/python}
PEERS=${PEERS_DIR:-../shared/peers}
WORK=${EMBED_BENCH_DIR:-/tmp/embed-bench}
PORT=${EMBED_BENCH_PORT:-18012}
mkdir -p "$WORK"
. scripts/lib/bench.sh

if [ -n "${BENCH_BIN:-}" ]; then
  cp "$BENCH_BIN" "$WORK/trident" && BIN=$WORK/trident
else
  BIN=$(bench_binary "$WORK")
fi
cat > "$WORK/models.json" <<JSON
{"models": {"embedding": {"path": "$PWD/models/embedding", "type": "embedding", "port": $PORT,
                          "device": "cpu", "threads": $THREADS, "dtype": "${DTYPE:-auto}"}}}
JSON
bench_engine "$BIN" "$WORK/models.json" embedding "$PORT" "$WORK/engine.log"
python3 scripts/bench/embed_texts.py "$WORK" --words 100 --n 512

for round in $(seq "${ROUNDS:-2}"); do
  echo "== round $round: trident (dtype $(curl -s http://127.0.0.1:$PORT/v1/models | grep -o '"dtype":"[a-z0-9]*"'), $THREADS threads)"
  "$BIN" bench embeddings --url "http://127.0.0.1:$PORT" --model embedding \
    --concurrency 1 --requests 300 --inputs-per-request 1 --words 12 \
    --texts-file "$WORK/queries.txt" --json
  "$BIN" bench embeddings --url "http://127.0.0.1:$PORT" --model embedding \
    --concurrency 2 --requests 16 --inputs-per-request 32 --words 100 \
    --texts-file "$WORK/texts.txt" --json
  [ "${PEER:-1}" = 0 ] && continue
  echo "== round $round: sentence-transformers ($THREADS threads)"
  if "$PY" -c 'import sentence_transformers' 2>/dev/null; then
    THREADS=$THREADS "$PY" "$PEERS/embed_peer.py" models/embedding --batch 32 --words 100 --n 512
  else
    echo '{"peer": "sentence-transformers", "missing": "not installed (../shared/peers/setup.sh)"}'
  fi
done
