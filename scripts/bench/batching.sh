#!/usr/bin/env bash
# Continuous batching, trident's chat engine vs llama.cpp's own server (`llama-server
# --parallel 16 --cont-batching`, built by scripts/peers/llama-server.sh), back to back with
# the same client (`trident bench chat`), the same GGUF (SmolLM2-135M-Instruct Q4_1), the
# same thread count, prompt shape and output length (`ignore_eos`, so every answer is
# MAX_TOKENS long), at 1 and 16 concurrent streams: aggregate output tok/s, ITL p50/p99, TTFT.
# Prints one JSON line per run ({"server":…, "round":…} plus the client's report), then the
# ratios of each round as a last JSON line.
#   [THREADS=2] [ROUNDS=2] [MAX_TOKENS=64] [PROMPT_WORDS=32] [BENCH_BIN=path] [PEER=0]
#   scripts/bench/batching.sh
# BENCH_BIN measures that trident binary instead of building this checkout (before/after
# comparisons); PEER=0 skips llama-server (the ratios line then lists trident's only).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/trident/target}
THREADS=${THREADS:-2}
MAX_TOKENS=${MAX_TOKENS:-64}
PROMPT_WORDS=${PROMPT_WORDS:-32}
WORK=${BATCHING_BENCH_DIR:-/tmp/batching-bench}
PORT=${BATCHING_BENCH_PORT:-18031}
PEER_PORT=${BATCHING_PEER_PORT:-18032}
GGUF=$PWD/models/chat/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p "$WORK"
. scripts/lib/bench.sh

if [ -n "${BENCH_BIN:-}" ]; then
  cp "$BENCH_BIN" "$WORK/trident" && BIN=$WORK/trident
else
  BIN=$(bench_binary "$WORK")
fi
[ "${PEER:-1}" = 0 ] || scripts/peers/llama-server.sh build >/dev/null
cat > "$WORK/models.json" <<JSON
{"models": {"chat": {"path": "$GGUF", "type": "chat", "port": $PORT, "device": "cpu",
                     "threads": $THREADS, "max_model_len": 2048, "max_num_seqs": 16}}}
JSON

# The two servers never run at once: each has the machine's cores to itself while measured.
start_trident() { bench_engine "$BIN" "$WORK/models.json" chat "$PORT" "$WORK/engine.log"; }
stop_trident() { kill "$BENCH_ENGINE_PID" 2>/dev/null || true; wait "$BENCH_ENGINE_PID" 2>/dev/null || true; }
start_peer() {
  PEER_PID=$(THREADS=$THREADS PARALLEL=16 LLAMA_SERVER_LOG="$WORK/llama-server.log" \
    scripts/peers/llama-server.sh start "$PEER_PORT" "$GGUF")
  trap 'kill ${PEER_PID:-} ${BENCH_ENGINE_PID:-} 2>/dev/null || true' EXIT
}
stop_peer() { kill "$PEER_PID" 2>/dev/null || true; wait "$PEER_PID" 2>/dev/null || true; }

measure() { # server port concurrency requests round
  local out
  out=$("$BIN" bench chat --url "http://127.0.0.1:$2" --model chat --concurrency "$3" \
    --requests "$4" --prompt-tokens "$PROMPT_WORDS" --max-tokens "$MAX_TOKENS" --warmup 2 --json \
    2>"$WORK/client.err") || true
  [ -n "$out" ] || out="{\"concurrency\":$3,\"failed\":$(python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))' <"$WORK/client.err")}"
  echo "{\"server\":\"$1\",\"round\":$5,${out#\{}" | tee -a "$WORK/runs.jsonl"
}

: >"$WORK/runs.jsonl"
for round in $(seq "${ROUNDS:-2}"); do
  start_trident
  measure trident "$PORT" 1 4 "$round"
  measure trident "$PORT" 16 32 "$round"
  stop_trident
  [ "${PEER:-1}" = 0 ] && continue
  start_peer
  measure llama-server "$PEER_PORT" 1 4 "$round"
  measure llama-server "$PEER_PORT" 16 32 "$round"
  stop_peer
done

python3 - "$WORK/runs.jsonl" <<'PY'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
def get(server, c, r):
    return next(x for x in runs if x["server"] == server and x["concurrency"] == c and x["round"] == r)
for r in sorted({x["round"] for x in runs}):
    t1, t16 = get("trident", 1, r), get("trident", 16, r)
    if not any(x["server"] == "llama-server" for x in runs):
        if "failed" in t1 or "failed" in t16:
            print(json.dumps({"round": r, "failed": "a run failed; see its line above"}))
            continue
        print(json.dumps({"round": r,
            "trident_16_vs_1_tok_s": round(t16["output_tok_per_s"] / t1["output_tok_per_s"], 2),
            "itl_p99_16_ms": {"trident": t16["itl_ms"]["p99"]},
            "itl_p99_over_p50_16": {"trident": round(t16["itl_ms"]["p99"] / max(t16["itl_ms"]["p50"], 1e-9), 2)}}))
        continue
    p1, p16 = get("llama-server", 1, r), get("llama-server", 16, r)
    if any("failed" in x for x in (t1, t16, p1, p16)):
        print(json.dumps({"round": r, "failed": "a run failed; see its line above"}))
        continue
    print(json.dumps({"round": r,
        "trident_16_vs_llama_server_16_tok_s": round(t16["output_tok_per_s"] / p16["output_tok_per_s"], 2),
        "trident_1_vs_llama_server_1_tok_s": round(t1["output_tok_per_s"] / p1["output_tok_per_s"], 2),
        "trident_16_vs_1_tok_s": round(t16["output_tok_per_s"] / t1["output_tok_per_s"], 2),
        "llama_server_16_vs_1_tok_s": round(p16["output_tok_per_s"] / p1["output_tok_per_s"], 2),
        "itl_p99_16_ms": {"trident": t16["itl_ms"]["p99"], "llama-server": p16["itl_ms"]["p99"]},
        "itl_p99_over_p50_16": {"trident": round(t16["itl_ms"]["p99"] / max(t16["itl_ms"]["p50"], 1e-9), 2),
                                "llama-server": round(p16["itl_ms"]["p99"] / max(p16["itl_ms"]["p50"], 1e-9), 2)},
        "errors": {s: sum(x["errors"] for x in runs if x["server"] == s and x["round"] == r)
                   for s in ("trident", "llama-server")}}))
PY
