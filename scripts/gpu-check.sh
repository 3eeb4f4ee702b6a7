#!/usr/bin/env bash
# The GPU check (≤ 10 minutes on a machine with an NVIDIA GPU): serves, on `cuda`, a bf16
# safetensors chat model (the default SmolLM2 GGUF dequantised here), the default GGUF,
# MiniLM embeddings and a cross-encoder (MiniLM + seeded head); compares their outputs with
# the CPU engines' on the same inputs; prints decode tok/s at 1 and 32 streams, embeddings/s
# and rerank pairs/s as one JSON line. With two or more GPUs (or DEVICE=cpu, on CPU ranks) it
# also serves the bf16 model split over two ranks (`tensor_parallel_size: 2`), checks that its
# greedy answers match the unsplit model's, and reports its decode tok/s beside TP=1's.
#
#   TRIDENT_BIN=path/to/cuda/trident scripts/gpu-check.sh     # prebuilt (scripts/build-cuda.sh)
#   scripts/gpu-check.sh                                       # builds for this GPU first
#   DEVICE=cpu scripts/gpu-check.sh                            # no GPU: the same plumbing, the
#                                                              # "device" engines on the CPU's
#                                                              # generic path, small loads
#
# Exit 0 when every comparison passed. Needs python3 (stdlib only) and curl.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
DEVICE=${DEVICE:-cuda}
WORK=${GPU_CHECK_DIR:-/tmp/trident-gpu-check}
start=$(date +%s)
mkdir -p "$WORK"
log() { echo "gpu-check: $*" >&2; }
case $DEVICE in cuda|cpu) ;; *) echo "gpu-check: DEVICE must be cuda or cpu" >&2; exit 2 ;; esac

# --- binary -------------------------------------------------------------------------------------
gpu_name=none driver=none
if [ "$DEVICE" = cuda ]; then
  command -v nvidia-smi >/dev/null || { echo "gpu-check: no nvidia-smi: no NVIDIA driver here (try DEVICE=cpu)" >&2; exit 1; }
  gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
  driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1)
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
  cuda_root=$(scripts/cuda-toolchain.sh)
  # The runtime libraries of the pinned toolkit; the driver is the machine's own.
  export LD_LIBRARY_PATH="$cuda_root/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  if [ -z "${TRIDENT_BIN:-}" ]; then
    log "building for sm_$cap"
    CUDA_COMPUTE_CAP=$cap scripts/build-cuda.sh --out "$WORK/trident" >&2
    TRIDENT_BIN=$WORK/trident
  fi
  log "$gpu_name, driver $driver, compute capability $cap"
elif [ -z "${TRIDENT_BIN:-}" ]; then
  cargo build --release --quiet --bin trident
  TRIDENT_BIN=${CARGO_TARGET_DIR:-target}/release/trident
fi
BIN=$TRIDENT_BIN
"$BIN" --version >&2

# --- models ---------------------------------------------------------------------------------------
scripts/fetch-models.sh >/dev/null
gguf=$(ls "$root"/models/chat/*.gguf | head -1)
[ -s "$WORK/chat-bf16/model.safetensors" ] || "$BIN" fixture dequantize --gguf "$gguf" --out "$WORK/chat-bf16" --dtype bf16
[ -s "$WORK/rerank/model.safetensors" ] || "$BIN" fixture cross-encoder --from "$root/models/embedding" --out "$WORK/rerank"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
declare -A port
# Tensor parallelism needs two GPUs (or runs on CPU ranks with DEVICE=cpu).
gpus=1
[ "$DEVICE" = cuda ] && gpus=$(nvidia-smi -L | grep -c '^GPU ' || true)
tp=0
{ [ "$DEVICE" = cpu ] || [ "$gpus" -ge 2 ]; } && tp=1
port[chat_tp]=$(free_port)
models=(chat_st chat_gguf embed rerank)
for m in "${models[@]}"; do for side in ref dev; do port[${m}_$side]=$(free_port); done; done
entry() { # id path type dtype side
  local dev='"device": "cpu"'
  [ "$5" = dev ] && [ "$DEVICE" = cuda ] && dev='"device": "cuda", "gpus": [0], "gpu_memory_utilization": 0.2'
  printf '"%s": {"path": "%s", "type": "%s", "port": %s, "dtype": "%s", "max_num_seqs": 64, "max_model_len": 2048, %s}' \
    "$1" "$2" "$3" "${port[$1]}" "$4" "$dev"
}
{
  echo '{"models": {'
  sep=
  for side in ref dev; do
    for spec in "chat_st $WORK/chat-bf16 chat bf16" "chat_gguf $gguf chat auto" \
                "embed $root/models/embedding embedding auto" "rerank $WORK/rerank rerank auto"; do
      read -r m path type dtype <<<"$spec"
      # The CPU reference runs f32 (its bf16 mode rounds more than the device path does).
      [ $side = ref ] && dtype=float32
      printf '%s%s\n' "$sep" "$(entry "${m}_$side" "$path" "$type" "$dtype" $side)"
      sep=,
    done
  done
  if [ $tp = 1 ]; then
    dev='"device": "cpu"'
    [ "$DEVICE" = cuda ] && dev='"device": "cuda", "gpus": [0, 1], "gpu_memory_utilization": 0.2'
    printf ',"chat_tp": {"path": "%s", "type": "chat", "port": %s, "dtype": "bf16", "max_num_seqs": 64, "max_model_len": 2048, "tensor_parallel_size": 2, %s}\n' \
      "$WORK/chat-bf16" "${port[chat_tp]}" "$dev"
  fi
  echo '}}'
} >"$WORK/models.json"
"$BIN" check-config --gpus --config "$WORK/models.json" >&2

# --- engines ------------------------------------------------------------------------------------
wait_ready() { # engine-id: up to 5 minutes, else its log and exit
  for _ in $(seq 1200); do
    curl -sf "http://127.0.0.1:${port[$1]}/health" >/dev/null && return 0
    sleep 0.25
  done
  echo "gpu-check: engine $1 not ready; its log:" >&2; tail -20 "$WORK/$1.log" >&2; exit 1
}
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
for m in "${models[@]}"; do
  for side in ref dev; do
    id=${m}_$side generic=0
    [ $side = dev ] && [ "$DEVICE" = cpu ] && generic=1
    TRIDENT_GENERIC_PATH=$generic "$BIN" engine --config "$WORK/models.json" --model "$id" \
      --host 127.0.0.1 2>"$WORK/$id.log" &
    pids+=($!)
  done
done
for m in "${models[@]}"; do
  for side in ref dev; do
    wait_ready "${m}_$side"
  done
done
if [ $tp = 1 ]; then
  "$BIN" engine --config "$WORK/models.json" --model chat_tp --host 127.0.0.1 2>"$WORK/chat_tp.log" &
  pids+=($!)
  wait_ready chat_tp
fi
log "engines ready after $(( $(date +%s) - start ))s"

# --- same inputs on both sides --------------------------------------------------------------------
ports_json=$(for k in "${!port[@]}"; do printf '"%s": %s,' "$k" "${port[$k]}"; done)
checks=$(python3 - "{${ports_json%,}}" "$tp" <<'PY'
import json, math, sys, urllib.request
ports = json.loads(sys.argv[1])
def post(id, path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{ports[id]}{path}", json.dumps(body).encode(),
                                 {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.load(r)
texts = ["Hi", "The quick brown fox jumps over the lazy dog.", "GPUs run many threads at once.",
         "A longer sentence, with punctuation; numbers like 12345 and words that split into pieces."]
out, ok = {}, True
emb = {s: [d["embedding"] for d in post(f"embed_{s}", "/v1/embeddings", {"model": f"embed_{s}", "input": texts})["data"]]
       for s in ("ref", "dev")}
cos = min(sum(a * b for a, b in zip(x, y)) / math.sqrt(sum(a * a for a in x) * sum(b * b for b in y))
          for x, y in zip(emb["ref"], emb["dev"]))
out["embeddings_min_cosine"] = round(cos, 6); ok &= cos >= 0.995
docs = texts[1:] + ["Paris is the capital of France.", "Foxes are quick animals."]
sc = {}
for s in ("ref", "dev"):
    r = post(f"rerank_{s}", "/v1/rerank", {"model": f"rerank_{s}", "query": "what do foxes do?", "documents": docs})
    sc[s] = {x["index"]: x["relevance_score"] for x in r["results"]}
d = max(abs(sc["ref"][i] - sc["dev"][i]) for i in sc["ref"])
out["rerank_max_abs_diff"] = round(d, 6); ok &= d <= 0.02
prompts = ["What is the capital of France?", "Write one sentence about the sea.", "Count from one to five."]
for m in ("chat_st", "chat_gguf"):
    same, prefix = 0, []
    for p in prompts:
        t = {s: post(f"{m}_{s}", "/v1/chat/completions", {"model": f"{m}_{s}", "temperature": 0, "max_tokens": 24,
                     "messages": [{"role": "user", "content": p}]})["choices"][0]["message"]["content"] for s in ("ref", "dev")}
        ok &= bool(t["dev"].strip())
        same += t["ref"] == t["dev"]
        n = next((i for i, (a, b) in enumerate(zip(t["ref"], t["dev"])) if a != b), min(len(t["ref"]), len(t["dev"])))
        prefix.append(n / max(1, len(t["ref"])))
    # Greedy text parts ways after a near-tie (the paths round differently; the logits are
    # compared tightly in tests/device_paths.rs), so only gross breakage fails here: every
    # reply must be non-empty and at least one must mostly agree with the CPU's.
    out[f"{m}_identical_greedy"] = f"{same}/{len(prompts)}"
    out[f"{m}_common_prefix"] = [round(x, 3) for x in prefix]
    ok &= max(prefix) >= 0.5
if "chat_tp" in ports and sys.argv[2] == "1":
    # The same bf16 model split over two ranks must answer as the unsplit one on the device.
    same = 0
    for p in prompts:
        t = [post(m, "/v1/chat/completions", {"model": m, "temperature": 0, "max_tokens": 24,
                  "messages": [{"role": "user", "content": p}]})["choices"][0]["message"]["content"]
             for m in ("chat_st_dev", "chat_tp")]
        same += t[0] == t[1]
    out["tp2_identical_greedy"] = f"{same}/{len(prompts)}"
    ok &= same >= len(prompts) - 1
out["ok"] = bool(ok)
print(json.dumps(out))
PY
)
log "comparisons: $checks"

# --- throughput on the device side ----------------------------------------------------------------
if [ "$DEVICE" = cuda ]; then n1=16 n32=128 toks=128 ereq=200 rreq=40; else n1=2 n32=4 toks=8 ereq=4 rreq=2; fi
field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
bench_chat() { # engine-id concurrency requests
  "$BIN" bench chat --url "http://127.0.0.1:${port[$1]}" --model "$1" --concurrency "$2" \
    --requests "$3" --prompt-tokens 64 --max-tokens "$toks" --warmup 1 --json | field output_tok_per_s
}
st1=$(bench_chat chat_st_dev 1 "$n1"); st32=$(bench_chat chat_st_dev 32 "$n32")
gg1=$(bench_chat chat_gguf_dev 1 "$n1"); gg32=$(bench_chat chat_gguf_dev 32 "$n32")
emb=$("$BIN" bench embeddings --url "http://127.0.0.1:${port[embed_dev]}" --model embed_dev --concurrency 4 \
       --requests "$ereq" --inputs-per-request 32 --words 100 --json | field inputs_per_s)
tp_json='"skipped: needs two GPUs"'
if [ $tp = 1 ]; then
  tp1=$(bench_chat chat_tp 1 "$n1"); tp32=$(bench_chat chat_tp 32 "$n32")
  tp_json=$(printf '{"decode_tok_s_1_stream": %s, "decode_tok_s_32_streams": %s, "vs_tp1_1_stream": %s, "vs_tp1_32_streams": %s}' \
    "$tp1" "$tp32" "$(python3 -c "print(round($tp1 / $st1, 3))")" "$(python3 -c "print(round($tp32 / $st32, 3))")")
fi
rr=$("$BIN" bench rerank --url "http://127.0.0.1:${port[rerank_dev]}" --model rerank_dev --concurrency 4 \
      --requests "$rreq" --documents 100 --words 100 --json | field pairs_per_s)

printf '{"device": "%s", "gpu": "%s", "driver": "%s", "checks": %s, "chat_bf16_safetensors": {"decode_tok_s_1_stream": %s, "decode_tok_s_32_streams": %s}, "chat_gguf_q4_1": {"decode_tok_s_1_stream": %s, "decode_tok_s_32_streams": %s}, "chat_bf16_tp2": %s, "embeddings_per_s_32x100_words": %s, "rerank_pairs_per_s_100_docs": %s, "seconds": %s}\n' \
  "$DEVICE" "$gpu_name" "$driver" "$checks" "$st1" "$st32" "$gg1" "$gg32" "$tp_json" "$emb" "$rr" "$(( $(date +%s) - start ))"
echo "$checks" | grep -q '"ok": true'
