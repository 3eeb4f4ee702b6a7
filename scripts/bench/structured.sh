#!/usr/bin/env bash
# Cost of structured output on the chat engine (SmolLM2-135M-Instruct Q4_1 GGUF): the same
# streams with and without a JSON Schema (`response_format` json_schema, enforced per token
# by llguidance), back to back, at 1 and 16 concurrent streams. The schema (an array of
# strings) never completes within max_tokens, so every token is constrained.
#   [THREADS=2] [ROUNDS=2] scripts/bench/structured.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/trident/target}
THREADS=${THREADS:-2}
WORK=${STRUCTURED_BENCH_DIR:-/tmp/structured-bench}
PORT=${STRUCTURED_BENCH_PORT:-18021}
GGUF=$PWD/models/chat/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p "$WORK"
. scripts/lib/bench.sh

BIN=$(bench_binary "$WORK")
cat > "$WORK/models.json" <<JSON
{"models": {"chat": {"path": "$GGUF", "type": "chat", "port": $PORT, "device": "cpu",
                     "threads": $THREADS, "max_model_len": 2048, "max_num_seqs": 16}}}
JSON
echo '{"type": "array", "items": {"type": "string"}}' >"$WORK/schema.json"
bench_engine "$BIN" "$WORK/models.json" chat "$PORT" "$WORK/engine.log"

run() { # concurrency requests [schema]
  "$BIN" bench chat --url "http://127.0.0.1:$PORT" --model chat --concurrency "$1" --requests "$2" \
    --prompt-tokens 32 --max-tokens 64 --json ${3:+--json-schema "$3"}
}
for round in $(seq "${ROUNDS:-2}"); do
  for c in 1 16; do
    n=$(( c == 1 ? 4 : 32 ))
    echo "== round $round, $c stream(s): free text"
    run "$c" "$n"
    echo "== round $round, $c stream(s): JSON Schema"
    run "$c" "$n" "$WORK/schema.json"
  done
done
