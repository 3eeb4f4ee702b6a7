#!/usr/bin/env bash
# Prefix-cache benchmark: time to first token of a chat request whose ~1,000-token system
# prompt is already cached, against the same requests on an engine with the cache off.
# Two engines on the same GGUF (SmolLM2-135M-Instruct Q4_1) and thread count; each round
# runs `trident bench chat` once against each: the same system prompt before every
# request's own ~32-token user turn, one warm-up request (which fills the cache), then
# REQUESTS timed requests one at a time.
#   [THREADS=2] [ROUNDS=2] [SYSTEM_TOKENS=1000] [REQUESTS=4] scripts/bench/prefix.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/trident/target}
THREADS=${THREADS:-2}
SYSTEM_TOKENS=${SYSTEM_TOKENS:-1000}
REQUESTS=${REQUESTS:-4}
WORK=${PREFIX_BENCH_DIR:-/tmp/prefix-bench}
PORT=${PREFIX_BENCH_PORT:-18021}
GGUF=$PWD/models/chat/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p "$WORK"
. scripts/lib/bench.sh

BIN=$(bench_binary "$WORK")
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
# start NAME PORT PREFIX_CACHE: one engine, returned once /health answers.
start() {
  cat > "$WORK/$1.json" <<JSON
{"models": {"chat": {"path": "$GGUF", "type": "chat", "port": $2, "device": "cpu",
                     "threads": $THREADS, "max_model_len": 2048, "prefix_cache": $3}}}
JSON
  "$BIN" engine --config "$WORK/$1.json" --model chat --host 127.0.0.1 2>"$WORK/$1.log" &
  pids+=($!)
  bench_ready "$1" "$2" "$WORK/$1.log"
}
start cached "$PORT" true
start uncached "$((PORT + 1))" false

bench() {
  "$BIN" bench chat --url "http://127.0.0.1:$1" --model chat --concurrency 1 \
    --requests "$REQUESTS" --warmup 1 --system-tokens "$SYSTEM_TOKENS" --prompt-tokens 32 \
    --max-tokens 8 --json
}
ttft() {
  python3 -c 'import json, sys
r = json.load(sys.stdin)
t = r["ttft_ms"]
print("%.1f ms (p90 %.1f), prompt %.0f tokens" % (t["p50"], t["p90"], r["mean_prompt_tokens"]))'
}

for round in $(seq "${ROUNDS:-2}"); do
  echo "== round $round ($THREADS threads, ~$SYSTEM_TOKENS-token system prompt)"
  c=$(bench "$PORT" | ttft)
  u=$(bench "$((PORT + 1))" | ttft)
  echo "TTFT p50 cached:   $c"
  echo "TTFT p50 uncached: $u"
done
curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^trident_prefix_cache_(hit|query)_tokens_total|^trident_prefix_cache_blocks'
