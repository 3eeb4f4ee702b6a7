#!/usr/bin/env bash
# Rerank benchmark, trident vs sentence-transformers' CrossEncoder, back to back on the
# same saved cross-encoder (MiniLM encoder + seeded random head, HF layout) and the same
# texts: 1 query x DOCS documents x WORDS words per request, THREADS threads each.
#   [ROUNDS=2] [CONCURRENCY="1 4"] [DTYPE=auto] scripts/bench/rerank.sh [REQUESTS] [DOCS] [WORDS] [THREADS]
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/trident/target}
REQ=${1:-20}; DOCS=${2:-100}; WORDS=${3:-100}; THREADS=${4:-2}
PY=${PEER_PYTHON:-$HOME/.cache/trident-peers/venv/bin/python}
WORK=${RERANK_BENCH_DIR:-/tmp/rerank-bench}
PORT=${RERANK_BENCH_PORT:-18013}
mkdir -p "$WORK"
. scripts/lib/bench.sh

BIN=$(bench_binary "$WORK")
if [ ! -f "$WORK/minilm-cross/model.safetensors" ]; then
  TRIDENT_FIXTURE_DIR="$WORK" cargo test --release --quiet --lib models::testutil::tests::dump_fixture_models -- --ignored >/dev/null
fi
cat > "$WORK/models.json" <<JSON
{"models": {"cross": {"path": "$WORK/minilm-cross", "type": "rerank", "port": $PORT,
                      "device": "cpu", "threads": $THREADS, "dtype": "${DTYPE:-auto}"}}}
JSON

bench_engine "$BIN" "$WORK/models.json" cross "$PORT" "$WORK/engine.log"
ENGINE=$BENCH_ENGINE_PID

ticks() { awk '{ print $14 + $15 }' "/proc/$ENGINE/stat"; }

# Rounds alternate trident and the peer so that load from elsewhere on the machine hits
# both alike; compare the ratio within a round.
for round in $(seq "${ROUNDS:-2}"); do
  echo "== round $round: trident ($(curl -s http://127.0.0.1:$PORT/v1/models | grep -o '"dtype":"[a-z0-9]*"'))"
  for c in ${CONCURRENCY:-1 4}; do
    t0=$(ticks)
    "$BIN" bench rerank --url "http://127.0.0.1:$PORT" --model cross \
      --concurrency "$c" --requests "$REQ" --documents "$DOCS" --words "$WORDS" --warmup 0 --json
    t1=$(ticks)
    # CPU time of the engine process (all threads): less sensitive to load from elsewhere.
    awk -v t="$((t1 - t0))" -v hz="$(getconf CLK_TCK)" -v p="$((REQ * DOCS))" \
      'BEGIN { printf "{\"engine_cpu_seconds\":%.2f,\"pairs_per_cpu_second\":%.1f}\n", t / hz, p / (t / hz) }'
  done
  echo "== round $round: sentence-transformers CrossEncoder"
  COMPARE=(); [ "$round" = 1 ] && COMPARE=(--compare "http://127.0.0.1:$PORT")
  "$PY" scripts/bench/rerank_peer.py --model "$WORK/minilm-cross" --requests "$REQ" \
    --documents "$DOCS" --words "$WORDS" --threads "$THREADS" "${COMPARE[@]}" --json 2>/dev/null
done
