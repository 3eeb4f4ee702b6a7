#!/usr/bin/env bash
# Gateway overhead vs nginx, back to back, in front of the same backend (the mock engine
# answering a small fixed JSON): p50 latency at concurrency 1 and requests/s at
# concurrency 32, measured with wrk, plus the proxy's own CPU time per request (user +
# system, from /proc/PID/stat around each run) and its CPU use during the run (100% = one
# core busy: the proxy was the bottleneck). Also times a cold start of `trident serve` with
# the default CPU models to /ready (BENCH_COLD=0 skips it). Needs nginx and wrk
# (apt-get install -y nginx-light wrk).
#
# What is held equal, so the two proxies are compared like for like:
# * workers: nginx runs PROXY_WORKERS worker processes (the peer script's
#   `worker_processes`, 1) and the gateway as many event-loop threads
#   (TRIDENT_GATEWAY_THREADS); neither writes an access log; both keep idle keep-alive
#   connections to the backend (nginx `keepalive 64`, the gateway's per-worker upstream pool).
# * cores: the proxy under test runs on PROXY_CPUS (default: the last core), wrk and the
#   mock engine on CLIENT_CPUS (default: every other core), the same for both proxies; wrk
#   uses one thread per client core.
# * order: nginx and the gateway alternate, each measured twice (BENCH_SECONDS each).
#
#   scripts/bench/proxy.sh [path/to/trident]   (default: the release build)
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-${CARGO_TARGET_DIR:-$HOME/.cache/trident/target}/release/trident}
dur=${BENCH_SECONDS:-10}
workers=${PROXY_WORKERS:-1}
last=$(($(nproc) - 1))
proxy_cpus=${PROXY_CPUS:-$last}
client_cpus=${CLIENT_CPUS:-$([ "$last" -gt 0 ] && echo "0-$((last - 1))" || echo 0)}
client_threads=$(taskset -c "$client_cpus" nproc)
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 500); do curl -sf -o /dev/null "$1" && return 0; sleep 0.02; done; echo "not up: $1" >&2; return 1; }

backend=$(free_port); nginx_port=$(free_port); gw_port=$(free_port)
taskset -c "$client_cpus" "$bin" mock-engine --port "$backend" --kind embedding --model bench --behaviour tokens=1 2>/dev/null &
pids+=($!)
wait_http "http://127.0.0.1:$backend/health"
nginx_pid=$(taskset -c "$proxy_cpus" "${PEERS_DIR:-../shared/peers}/nginx_proxy.sh" "$nginx_port" "$backend")
pids+=("$nginx_pid")
nginx_workers=$(pgrep -P "$nginx_pid" | tr '\n' ' ')
[ "$(wc -w <<<"$nginx_workers")" -eq "$workers" ] ||
  { echo "nginx runs $(wc -w <<<"$nginx_workers") workers, PROXY_WORKERS=$workers: set them equal" >&2; exit 1; }
cat >"$work/models.json" <<JSON
{"models": {"bench": {"type": "embedding", "upstream": "http://127.0.0.1:$backend"}}}
JSON
TRIDENT_GATEWAY_THREADS=$workers taskset -c "$proxy_cpus" "$bin" serve --config "$work/models.json" --host 127.0.0.1 --port "$gw_port" 2>"$work/serve.log" &
gw_pid=$!
pids+=("$gw_pid")
for _ in $(seq 500); do curl -sf -o /dev/null "http://127.0.0.1:$gw_port/ready" && break; sleep 0.02; done

cat >"$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"model": "bench", "input": "hello world"}'
wrk.headers["Content-Type"] = "application/json"
LUA

# CPU ticks (user + system) used so far by the given processes.
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }

# wrk's latency figure ("52.10us", "1.02ms", "1.50s") in microseconds.
us() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /ms$/) n *= 1e3; else if (v ~ /[0-9]s$/) n *= 1e6; print n }'; }

# Each run's figures, by "name c": p50 (us), req/s and CPU us per request, one per round.
declare -A P50 RPS CPU
run() { # name url connections threads [pids whose CPU time is the proxy's]
  local name=$1 url=$2 conns=$3 threads=$4
  shift 4
  local out t0 t1
  t0=$(ticks "$@")
  out=$(taskset -c "$client_cpus" wrk -t"$threads" -c"$conns" -d"${dur}s" --latency -s "$work/post.lua" "$url/v1/embeddings")
  t1=$(ticks "$@")
  local p50 rps n non2xx cpu="" per=""
  p50=$(awk '/ 50%/ {print $2}' <<<"$out")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  if [ $# -gt 0 ] && [ "${n:-0}" -gt 0 ]; then
    per=$(awk -v t=$((t1 - t0)) -v n="$n" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", t / hz / n * 1e6}')
    cpu=$(awk -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v d="$dur" \
      'BEGIN {printf "cpu/req=%sus cpu=%.0f%%", "'"$per"'", t / hz / d * 100}')
  fi
  P50["$name $conns"]+="$(us "$p50") " RPS["$name $conns"]+="$rps " CPU["$name $conns"]+="$per "
  printf '%-8s c=%-3s p50=%-10s req/s=%-10s %s %s\n' "$name" "$conns" "$p50" "$rps" "$cpu" "${non2xx:+non-2xx=$non2xx}"
}
# Per round: trident's figure over nginx's, as "r1 r2". $1: figure array name, $2: c, $3:
# subtract direct's p50 first (added latency).
ratios() {
  local -n f=$1
  local direct=0
  [ "${3:-}" = added ] && direct=${P50["direct $2"]%% *}
  paste -d' ' <(tr ' ' '\n' <<<"${f["trident $2"]}") <(tr ' ' '\n' <<<"${f["nginx $2"]}") |
    awk -v d="$direct" 'NF == 2 {printf "%.2f ", ($1 - d) / ($2 - d)}'
}
# The machine is shared and noisy: nginx and trident alternate, each measured twice.
echo "== proxy workers: $workers on cpus $proxy_cpus; wrk ($client_threads threads) and mock engine on cpus $client_cpus"
echo "== concurrency 1 (p50 latency), ${dur}s each"
run direct "http://127.0.0.1:$backend" 1 1
for _ in 1 2; do
  run nginx "http://127.0.0.1:$nginx_port" 1 1 $nginx_workers
  run trident "http://127.0.0.1:$gw_port" 1 1 "$gw_pid"
done
echo "== concurrency 32 (throughput), ${dur}s each"
run direct "http://127.0.0.1:$backend" 32 "$client_threads"
for _ in 1 2; do
  run nginx "http://127.0.0.1:$nginx_port" 32 "$client_threads" $nginx_workers
  run trident "http://127.0.0.1:$gw_port" 32 "$client_threads" "$gw_pid"
done
echo "== trident / nginx, round 1 and 2"
echo "req/s at c=32:         $(ratios RPS 32)"
echo "CPU per request, c=32: $(ratios CPU 32)"
echo "added p50 at c=1:      $(ratios P50 1 added)"

[ "${BENCH_COLD:-1}" = 0 ] && exit 0

echo "== cold start: trident serve with config/models.json to /ready"
port=$(free_port)
start=$(date +%s.%N)
"$bin" serve --config config/models.json --host 127.0.0.1 --port "$port" --ephemeral-engine-ports 2>"$work/cold.log" &
serve_pid=$!
pids+=("$serve_pid")
for _ in $(seq 3000); do curl -sf -o /dev/null "http://127.0.0.1:$port/ready" && break; sleep 0.01; done
end=$(date +%s.%N)
curl -sf "http://127.0.0.1:$port/ready" >/dev/null || { echo "not ready:"; tail -5 "$work/cold.log"; }
echo "cold start to /ready: $(echo "$end - $start" | bc) s"
kill "$serve_pid"; wait "$serve_pid" 2>/dev/null || true
