#!/usr/bin/env bash
# User-space instructions per proxied request, trident's gateway against nginx, counted by
# valgrind's callgrind: a figure that does not move with the machine's noise (wall-clock CPU
# time on these shared machines varies by a third between runs), for before/after
# comparisons of gateway changes and as a second view of proxy.sh's CPU-per-request ratio.
#
#   scripts/bench/proxy-instructions.sh [path/to/trident] [more trident binaries…]
#
# Each proxy runs alone under callgrind with one worker (nginx: `master_process off`, and
# otherwise the peer script's configuration; the gateway: TRIDENT_GATEWAY_THREADS=1) in front
# of the same mock engine; wrk (1 thread, 4 connections, the POST of proxy.sh) warms it for
# BENCH_WARM seconds, the counters are zeroed, wrk runs BENCH_SECONDS more, and the counters
# are dumped: instructions / completed requests. PROFILE_DIR keeps the callgrind files
# (callgrind_annotate, or the per-function summary this script prints with TOP=N).
# Needs valgrind, nginx and wrk (apt-get install -y valgrind nginx-light wrk).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ $# -gt 0 ] || set -- "${CARGO_TARGET_DIR:-$HOME/.cache/trident/target}/release/trident"
warm=${BENCH_WARM:-3} dur=${BENCH_SECONDS:-6} top=${TOP:-0}
for tool in valgrind callgrind_control nginx wrk; do
  command -v "$tool" >/dev/null || { echo "proxy-instructions: $tool is missing" >&2; exit 1; }
done
work=$(mktemp -d)
keep=${PROFILE_DIR:-$work}
mkdir -p "$keep"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 600); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done; echo "not up: $1" >&2; return 1; }
cat >"$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"model": "bench", "input": "hello world"}'
wrk.headers["Content-Type"] = "application/json"
LUA

backend=$(free_port)
"$1" mock-engine --port "$backend" --kind embedding --model bench --behaviour tokens=1 2>/dev/null &
pids+=($!)
wait_http "http://127.0.0.1:$backend/health"

# Self instructions per function of a callgrind file, top N (callgrind_annotate of Debian's
# valgrind 3.19 lumps a Rust binary's functions together).
summary() { # file requests n
  python3 - "$@" <<'PY'
import collections, sys
path, n, top = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cost, fn, after = collections.Counter(), None, False
for line in open(path, errors="replace"):
    if line.startswith("fn="):
        fn, after = line[3:].strip(), False
    elif line.startswith("calls="):
        after = True
    elif line[:1].isdigit() or line[:1] in "+-*":
        parts = line.split()
        if len(parts) >= 2 and not after:
            cost[fn] += int(parts[1])
        after = False
total = sum(cost.values())
for f, c in cost.most_common(top):
    print(f"  {c / total * 100:5.2f}% {c // n:7d}  {f[:140]}")
PY
}

# measure NAME URL PID OUTPREFIX: prints "NAME instructions/request"
declare -A IPR
measure() {
  local name=$1 url=$2 pid=$3 prefix=$4 out n f ir
  wrk -t1 -c4 -d"${warm}s" -s "$work/post.lua" "$url/v1/embeddings" >/dev/null
  callgrind_control -z "$pid" >/dev/null
  out=$(wrk -t1 -c4 -d"${dur}s" -s "$work/post.lua" "$url/v1/embeddings")
  callgrind_control -d "$pid" >/dev/null
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  for _ in $(seq 50); do f=$(ls "$prefix".*.1 2>/dev/null | head -1); [ -n "$f" ] && break; sleep 0.1; done
  [ -n "$f" ] || { echo "proxy-instructions: no callgrind dump for $name" >&2; exit 1; }
  sleep 0.5
  ir=$(awk '/^summary:|^totals:/ {print $2; exit}' "$f")
  IPR[$name]=$((ir / n))
  printf '%-12s %8d instructions/request (%d requests)\n' "$name" "${IPR[$name]}" "$n"
  [ "$top" -gt 0 ] && summary "$f" "$n" "$top"
  return 0
}

cg=(valgrind --tool=callgrind --compress-strings=no --compress-pos=no)
echo "== proxy-instructions: callgrind, wrk -c4, ${dur}s after ${warm}s warm-up"

port=$(free_port)
sed -e 's/daemon on;/daemon off; master_process off;/' <<CONF >"$work/nginx.conf"
worker_processes 1; pid $work/nginx.pid; error_log $work/error.log; daemon on;
events { worker_connections 4096; }
http { access_log off;
  upstream up { server 127.0.0.1:$backend; keepalive 64; }
  server { listen 127.0.0.1:$port;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";
                 proxy_buffering off; proxy_read_timeout 600s; } } }
CONF
"${cg[@]}" --callgrind-out-file="$keep/nginx.%p" nginx -c "$work/nginx.conf" 2>"$work/nginx.vg" &
vg=$!
pids+=($vg)
wait_http "http://127.0.0.1:$port/health"
measure nginx "http://127.0.0.1:$port" "$vg" "$keep/nginx"
kill "$vg"; wait "$vg" 2>/dev/null || true

cat >"$work/models.json" <<JSON
{"models": {"bench": {"type": "embedding", "upstream": "http://127.0.0.1:$backend"}}}
JSON
i=0
for bin in "$@"; do
  i=$((i + 1)); name="trident#$i"
  port=$(free_port)
  TRIDENT_GATEWAY_THREADS=1 "${cg[@]}" --callgrind-out-file="$keep/trident-$i.%p" "$bin" serve \
    --config "$work/models.json" --host 127.0.0.1 --port "$port" 2>"$work/serve-$i.log" &
  vg=$!
  pids+=($vg)
  wait_http "http://127.0.0.1:$port/ready"
  echo "$name: $bin"
  measure "$name" "http://127.0.0.1:$port" "$vg" "$keep/trident-$i"
  kill "$vg"; wait "$vg" 2>/dev/null || true
  awk -v t="${IPR[$name]}" -v g="${IPR[nginx]}" -v n="$name" 'BEGIN {printf "%s / nginx: %.2f\n", n, t / g}'
done
