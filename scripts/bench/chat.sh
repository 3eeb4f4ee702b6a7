#!/usr/bin/env bash
# Chat benchmark, trident's chat engine (SmolLM2-135M-Instruct Q4_1 GGUF) vs llama.cpp on the
# same file and thread count, back to back:
#   * single stream: decode tok/s (1 / TPOT) and TTFT for a ~128-token prompt;
#   * 16 concurrent streams: aggregate output tok/s;
#   * llama.cpp (llama-cpp-python): prefill and single-stream decode tok/s.
#   [THREADS=2] [ROUNDS=2] scripts/bench/chat.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/trident/target}
THREADS=${THREADS:-2}
PY=${PEER_PYTHON:-$HOME/.cache/trident-peers/venv/bin/python}
PEERS=${PEERS_DIR:-../shared/peers}
WORK=${CHAT_BENCH_DIR:-/tmp/chat-bench}
PORT=${CHAT_BENCH_PORT:-18011}
GGUF=$PWD/models/chat/SmolLM2-135M-Instruct.Q4_1.gguf
mkdir -p "$WORK"
. scripts/lib/bench.sh

BIN=$(bench_binary "$WORK")
cat > "$WORK/models.json" <<JSON
{"models": {"chat": {"path": "$GGUF", "type": "chat", "port": $PORT, "device": "cpu",
                     "threads": $THREADS, "max_model_len": 2048, "max_num_seqs": 16}}}
JSON
bench_engine "$BIN" "$WORK/models.json" chat "$PORT" "$WORK/engine.log"

for round in $(seq "${ROUNDS:-2}"); do
  echo "== round $round: trident ($THREADS threads)"
  "$BIN" bench chat --url "http://127.0.0.1:$PORT" --model chat \
    --concurrency 1 --requests 4 --prompt-tokens 128 --max-tokens 64 --json
  "$BIN" bench chat --url "http://127.0.0.1:$PORT" --model chat \
    --concurrency 16 --requests 32 --prompt-tokens 16 --max-tokens 64 --json
  echo "== round $round: llama.cpp ($THREADS threads)"
  if "$PY" -c 'import llama_cpp' 2>/dev/null; then
    THREADS=$THREADS "$PY" "$PEERS/gguf_peer.py" "$GGUF" --prompt-tokens 128 --decode-tokens 64
  else
    echo '{"peer": "llama.cpp", "missing": "llama-cpp-python not installed (../shared/peers/setup.sh)"}'
  fi
done
