#!/usr/bin/env bash
# Soak test (not in CI): the appliance from source on the default models (config/models.json),
# DURATION seconds of mixed chat (streamed and not), embedding and rerank load from CLIENTS
# concurrent clients, 1% of them hanging up mid-request. Reports RSS and open fds of the
# supervisor and every engine at the start (after a warm-up minute) and at the end (goal:
# growth < 5%), error counts by status, and p50/p99 latency per route and minute. Writes
# $WORK/soak.json and exits 1 when a goal is missed (growth >= 5%, any 5xx, a dead process).
#   [DURATION=1200] [CLIENTS=8] [ABORT_RATIO=0.01] [WARMUP=60] [SOAK_BIN=path] scripts/soak.sh
# (SOAK_BIN: a trident binary to soak instead of a fresh release build.)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/trident/target}
WORK=${SOAK_DIR:-/tmp/trident-soak}
PORT=${SOAK_PORT:-18100}
mkdir -p "$WORK"
. scripts/lib/bench.sh

if [ -n "${SOAK_BIN:-}" ]; then BIN=$SOAK_BIN; else BIN=$(bench_binary "$WORK"); fi
KEY="soak-$(date +%s)"
echo "soak: starting the appliance on :$PORT (log: $WORK/serve.log)" >&2
TRIDENT_API_KEYS=$KEY "$BIN" serve --host 127.0.0.1 --port "$PORT" --config config/models.json \
  --ephemeral-engine-ports 2>"$WORK/serve.log" &
SERVE_PID=$!
trap 'kill $SERVE_PID 2>/dev/null || true; wait $SERVE_PID 2>/dev/null || true' EXIT
for _ in $(seq 1200); do
  curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null && break
  kill -0 $SERVE_PID 2>/dev/null || { echo "soak: trident serve exited; see $WORK/serve.log" >&2; exit 1; }
  sleep 0.25
done
curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null || { echo "soak: not ready" >&2; exit 1; }
python3 scripts/soak/soak.py --url "http://127.0.0.1:$PORT" --key "$KEY" --pid "$SERVE_PID" \
  --duration "${DURATION:-1200}" --clients "${CLIENTS:-8}" --abort-ratio "${ABORT_RATIO:-0.01}" \
  --warmup "${WARMUP:-60}" --out "$WORK/soak.json"
