#!/usr/bin/env bash
# Three hosts on one Docker engine: two engine hosts (`trident serve --role engines`, the
# default models, TLS with a CA made here, an API key) and a gateway host (`--role gateway`,
# every model an upstream on both engine hosts, the CA and the key from files) on a private
# bridge network. Drives mixed load through the gateway, then:
#   1. stops one engine host under load (docker stop: it drains): no request fails, /ready
#      says degraded, and the gateway serves from both again once it is started;
#   2. cuts it off the network under load (docker network disconnect): requests routed to it
#      before it is marked down fail with 504 after the request timeout (10 s here; counted,
#      not hidden), then none; it comes back when reconnected;
#   3. the real Prometheus (Debian package, where installed) scrapes all three hosts.
# Uses the image scripts/e2e-docker.sh built (trident:latest; built here when missing).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
t_begin=$SECONDS
passed=0
IMAGE=${E2E_IMAGE:-trident:latest}
net=trident-mh-$$
work=$(mktemp -d "${TMPDIR:-/tmp}/trident-mh.XXXXXX")
chmod 755 "$work"
KEY=sk-mh-client-$$ HOSTKEY=sk-mh-host-$$
names=(mh-$$-engine-a mh-$$-engine-b mh-$$-gateway)
PORT=${E2E_MH_PORT:-18400}
base="http://127.0.0.1:$PORT"

step() { printf '\n\033[1m=== %s\033[0m (%ss)\n' "$*" "$((SECONDS - t_begin))"; }
ok() { passed=$((passed + 1)); echo "  ok: $*"; }
fail() {
  echo "  FAILED: $*" >&2
  for c in "${names[@]}"; do echo "--- $c ---" >&2; docker logs --tail 40 "$c" >&2 2>&1 || true; done
  echo "e2e-multihost: $passed passed, 1 failed"
  exit 1
}
cleanup() {
  local rc=$?
  [ -n "${prom_pid:-}" ] && kill "$prom_pid" 2>/dev/null || true
  if [ "${E2E_KEEP:-0}" != 1 ]; then
    docker rm -f "${names[@]}" >/dev/null 2>&1 || true
    docker network rm "$net" >/dev/null 2>&1 || true
    rm -rf "$work"
  fi
  exit $rc
}
trap cleanup EXIT
api() { curl -sS -m 60 -H "authorization: Bearer $KEY" "$@"; }
ready_state() { curl -s -m 5 "$base/ready" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(",".join(sorted({m["state"] for m in r["models"].values()})))' 2>/dev/null || echo none; }
wait_state() { # state seconds
  for _ in $(seq $(($2 * 4))); do [ "$(ready_state)" = "$1" ] && return 0; sleep 0.25; done
  return 1
}
load() { # seconds clients out.json: mixed requests, statuses and latencies
  python3 scripts/e2e/load.py --url "$base" --key "$KEY" --seconds "$1" --clients "$2" --out "$3"
}

step "image and certificates"
docker image inspect "$IMAGE" >/dev/null 2>&1 || scripts/build.sh --tag "$IMAGE" >"$work/build.log" 2>&1 \
  || { tail -n 30 "$work/build.log"; fail "scripts/build.sh"; }
ok "image $IMAGE"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=trident e2e CA" \
  -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=engine" -keyout "$work/engine.key" \
  -out "$work/engine.csr" 2>/dev/null
printf 'subjectAltName=DNS:engine-a,DNS:engine-b\n' >"$work/san.ext"
openssl x509 -req -in "$work/engine.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
  -days 2 -extfile "$work/san.ext" -out "$work/engine.pem" 2>/dev/null
echo "$HOSTKEY" >"$work/host.key"
chmod 644 "$work"/*.pem "$work"/*.key
ok "a CA and the engine hosts' certificate (engine-a, engine-b)"

step "three hosts on a private bridge network"
docker network create "$net" >/dev/null
for i in 0 1; do
  alias=$([ $i = 0 ] && echo engine-a || echo engine-b)
  docker run -d --name "${names[$i]}" --network "$net" --network-alias "$alias" \
    -v "$work:/certs:ro" -e TRIDENT_API_KEYS="$HOSTKEY" -e TRIDENT_METRICS_PORT=9100 \
    -e TRIDENT_TLS_CERT_FILE=/certs/engine.pem -e TRIDENT_TLS_KEY_FILE=/certs/engine.key \
    "$IMAGE" serve --role engines >/dev/null
done
cat >"$work/models.json" <<JSON
{"models": {
  "chat": {"type": "chat", "upstream": ["https://engine-a:8000", "https://engine-b:8000"],
           "upstream_api_key_file": "/certs/host.key"},
  "embedding": {"type": "embedding", "upstream": ["https://engine-a:8000", "https://engine-b:8000"],
                "upstream_api_key_file": "/certs/host.key"},
  "rerank": {"type": "rerank", "upstream": ["https://engine-a:8000", "https://engine-b:8000"],
             "upstream_api_key_file": "/certs/host.key"}}}
JSON
chmod 644 "$work/models.json"
docker run -d --name "${names[2]}" --network "$net" -p "127.0.0.1:$PORT:8000" \
  -v "$work:/certs:ro" -e TRIDENT_API_KEYS="$KEY" -e TRIDENT_METRICS_PORT=9100 \
  -e TRIDENT_UPSTREAM_CA_FILE=/certs/ca.pem -e TRIDENT_FIRST_BYTE_TIMEOUT_SECS=10 \
  -e TRIDENT_REQUEST_TIMEOUT_SECS=10 \
  "$IMAGE" serve --role gateway --config /certs/models.json >/dev/null
wait_state ready 180 || fail "the gateway host is not ready: $(curl -s "$base/ready")"
ok "gateway host ready after $((SECONDS - t_begin)) s: every model on both engine hosts"
replicas=$(api "$base/system/info" | python3 -c 'import json,sys; print(sum(1 for e in json.load(sys.stdin)["engines"] if e.get("url","").startswith("https://")))')
[ "$replicas" = 6 ] || fail "expected 6 remote replicas (3 models x 2 hosts), got $replicas"
ok "6 remote replicas over https"

step "mixed load through the gateway"
load 10 4 "$work/l0.json" || fail "load: $(cat "$work/l0.json")"
ok "$(python3 -c 'import json; r=json.load(open("'"$work/l0.json"'")); print(r["summary"])')"
ip() { docker inspect -f "{{(index .NetworkSettings.Networks \"$net\").IPAddress}}" "$1"; }
for i in 0 1; do
  n=$(curl -s "http://$(ip "${names[$i]}"):9100/metrics" | awk '/^trident_requests_total\{/ && /component="gateway"/ && /status="200"/ { s += $NF } END { print s + 0 }')
  [ "${n%.*}" -gt 0 ] || fail "${names[$i]} served nothing"
  ok "${names[$i]} served $n requests"
done

step "case 1: an engine host stopped under load (docker stop drains it)"
load 25 4 "$work/l1.json" & lp=$!
sleep 5
docker stop -t 20 "${names[1]}" >/dev/null
stopped=$SECONDS
wait_state degraded 20 || fail "/ready not degraded after the stop: $(curl -s "$base/ready")"
ok "/ready degraded $((SECONDS - stopped)) s after the stop"
wait $lp || true
python3 - "$work/l1.json" <<'PY' || fail "requests failed while a host stopped: $(cat "$work/l1.json")"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["failed"] == 0, r
PY
ok "no request failed: $(python3 -c 'import json; print(json.load(open("'"$work/l1.json"'"))["summary"])')"
docker start "${names[1]}" >/dev/null
started=$SECONDS
wait_state ready 180 || fail "not ready again after the restart: $(curl -s "$base/ready")"
ok "both hosts serve again $((SECONDS - started)) s after docker start"

step "case 2: an engine host cut off the network under load"
load 40 4 "$work/l2.json" & lp=$!
sleep 5
docker network disconnect "$net" "${names[1]}"
cut=$SECONDS
wait_state degraded 30 || fail "/ready not degraded after the cut: $(curl -s "$base/ready")"
ok "/ready degraded $((SECONDS - cut)) s after the cut"
wait $lp || true
read -r failed late summary < <(python3 - "$work/l2.json" "$((cut - t_begin))" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
# Requests sent more than the probe window after the cut that failed would mean the gateway
# kept routing to the lost host; the others must be the gateway's 504 (not a client timeout).
late = [x for x in r["failures"] if x["sent_at"] > r["started_at"] + 5 + 25]
late += [x for x in r["failures"] if x["status"] != 504]
print(r["failed"], len(late), r["summary"].replace(" ", "_"))
PY
)
[ "$late" = 0 ] || fail "requests still failing long after the cut: $(cat "$work/l2.json")"
ok "$failed requests routed to the cut-off host before it was marked down got 504 after the 10 s request timeout; none later (${summary//_/ })"
docker network connect --alias engine-b "$net" "${names[1]}"
joined=$SECONDS
wait_state ready 60 || fail "not ready again after reconnecting: $(curl -s "$base/ready")"
ok "the host is back $((SECONDS - joined)) s after docker network connect"

step "Prometheus scrapes all three hosts"
if command -v prometheus >/dev/null; then
  cat >"$work/prometheus.yml" <<YML
global: {scrape_interval: 1s}
scrape_configs:
  - job_name: trident
    static_configs:
      - targets: ["$(ip "${names[0]}"):9100", "$(ip "${names[1]}"):9100", "$(ip "${names[2]}"):9100"]
YML
  prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
    --web.listen-address=127.0.0.1:19490 >"$work/prom.log" 2>&1 & prom_pid=$!
  up=0
  for _ in $(seq 60); do
    up=$(curl -s -G --data-urlencode 'query=sum(up{job="trident"})' http://127.0.0.1:19490/api/v1/query \
      | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(int(float(r[0]["value"][1])) if r else 0)' 2>/dev/null || echo 0)
    [ "$up" = 3 ] && break
    sleep 1
  done
  [ "$up" = 3 ] || fail "Prometheus sees $up of 3 hosts up"
  ok "Prometheus: up == 1 for the gateway and both engine hosts"
else
  echo "  (prometheus not installed: scrape check skipped)"
fi
echo "e2e-multihost: $passed passed, 0 failed (duration $((SECONDS - t_begin)) s)"
