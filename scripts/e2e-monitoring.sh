#!/usr/bin/env bash
# Monitoring on live data (docs/MONITORING.md): the appliance from source and Debian's real
# Prometheus, both on free loopback ports (no Docker, no fixed port), then every PromQL
# expression of every dashboard panel and every alert rule through Prometheus' HTTP API.
#
#  1. `trident serve` (the built binary) with the repository's models on 127.0.0.1:<free>,
#     engines on free ports, an API key (Prometheus scrapes /metrics with it as a Bearer)
#  2. `prometheus` scraping it every 2 s, loading monitoring/prometheus/alerts.yml
#  3. mixed load: chat (streamed and not), embeddings, rerank, bad requests of each kind, a
#     wrong key, an unknown model; then SIGKILL of the embedding engine (its pid from
#     /system/info), a request while it is down, its restart, more load
#     and `trident top --once` on the gateway while the load runs
#  4. every panel target of monitoring/grafana/dashboards/*.json (`$model`, `$instance` = .*,
#     `$__rate_interval` = 1m): a query error fails; no series fails unless the panel is on
#     the may-be-empty list below (with the reason)
#  5. every alert rule Prometheus loaded: health ok, the expression evaluates, each selector
#     in it has series (may-be-empty: GPU families on a CPU build), and the engine kill put
#     TridentEngineRestarted into pending or firing
#
# Needs: the `prometheus` Debian package (promtool and prometheus), python3, curl. The last
# line is `e2e-monitoring: N passed, M failed` (.ci/run adds it to its summary).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/trident/target}
bin=${TRIDENT_BIN:-$CARGO_TARGET_DIR/debug/trident}
prom=${PROMETHEUS_BIN:-prometheus}
work=$(mktemp -d)
passed=0 failed=0
pids=()

cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  [ "${KEEP:-0}" = 1 ] && echo "e2e-monitoring: kept $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT

ok() { passed=$((passed + 1)); echo "  ok   $*"; }
bad() { failed=$((failed + 1)); echo "  FAIL $*"; }
summary() { echo "e2e-monitoring: $passed passed, $failed failed"; }
fatal() { bad "$*"; summary; exit 1; }
step() { echo "==> $*"; }

command -v "$prom" >/dev/null || fatal "no $prom binary (apt-get install prometheus)"
if [ ! -x "$bin" ]; then
  step "building trident"
  cargo build --quiet --bin trident || fatal "cargo build"
fi
scripts/fetch-models.sh >/dev/null 2>&1 || fatal "scripts/fetch-models.sh"
python3 monitoring/grafana/dashboards.py --check && ok "dashboards match dashboards.py" \
  || bad "dashboards differ from monitoring/grafana/dashboards.py"

# --- 1. the appliance ------------------------------------------------------------------------
step "trident serve on a free loopback port"
key=e2e-monitoring-$RANDOM$RANDOM
printf '%s' "$key" >"$work/key"
# The repository's models; rerank admits one request running and one waiting, so a burst
# gets 429s (the shedding alert's series).
python3 - "$work/models.json" <<'PY'
import json, sys
m = json.load(open("config/models.json"))
m["models"]["rerank"]["max_concurrent_requests"] = 1
json.dump(m, open(sys.argv[1], "w"))
PY
TRIDENT_METRICS_PUBLIC=false TRIDENT_LOG=warn "$bin" serve --config "$work/models.json" \
  --host 127.0.0.1 --port 0 --addr-file "$work/addr" --ephemeral-engine-ports \
  --api-key "$key" --restart-backoff-ms 200 >"$work/serve.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 600); do [ -s "$work/addr" ] && break; sleep 0.2; done
[ -s "$work/addr" ] || fatal "gateway did not start: $(tail -5 "$work/serve.log")"
gw="http://$(cat "$work/addr")"
auth=(-H "Authorization: Bearer $key")
t0=$SECONDS
until curl -sf -m 2 "$gw/ready" >/dev/null; do
  (( SECONDS - t0 > 300 )) && fatal "not ready after 300 s: $(curl -s "$gw/ready")"
  sleep 0.5
done
ok "appliance ready at $gw in $((SECONDS - t0)) s"

# --- 2. Prometheus ---------------------------------------------------------------------------
step "Prometheus scraping it"
pport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: 2s
  evaluation_interval: 2s
  external_labels: {appliance: trident}
rule_files: ["$root/monitoring/prometheus/alerts.yml"]
scrape_configs:
  - job_name: trident
    metrics_path: /metrics
    authorization: {type: Bearer, credentials_file: "$work/key"}
    static_configs: [{targets: ["${gw#http://}"]}]
EOF
promtool check config "$work/prometheus.yml" >/dev/null || fatal "promtool check config"
"$prom" --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$pport" --log.level=warn >"$work/prometheus.log" 2>&1 &
pids+=($!)
pb="http://127.0.0.1:$pport"
t0=$SECONDS
until curl -sf -m 2 "$pb/api/v1/query" --data-urlencode 'query=up{job="trident"} == 1' \
      | grep -q '"value"'; do
  (( SECONDS - t0 > 60 )) && fatal "target not up: $(curl -s "$pb/api/v1/targets" | head -c 600)"
  sleep 0.5
done
ok "Prometheus target up (Bearer key)"

# --- 3. load ---------------------------------------------------------------------------------
post() { curl -s -o /dev/null -w '%{http_code}' -m 120 "${auth[@]}" -H 'Content-Type: application/json' "$gw$1" -d "$2"; }
expect() { local want=$1 got; shift; got=$(post "$@"); [ "$got" = "$want" ] && ok "POST $1 → $got" || bad "POST $1 → $got (want $want)"; }
load() {
  local jobs
  for i in 1 2 3; do
    jobs=()
    curl -sN -m 120 "${auth[@]}" -H 'Content-Type: application/json' "$gw/v1/chat/completions" \
      -d "{\"model\":\"chat\",\"stream\":true,\"max_tokens\":24,\"messages\":[{\"role\":\"user\",\"content\":\"Count to ten, take $i.\"}]}" \
      >"$work/stream" &
    jobs+=($!)
    post /v1/embeddings "{\"model\":\"embedding\",\"user\":\"monitoring\",\"input\":[\"a first text $i\",\"a second, longer text about monitoring $i\"]}" >/dev/null &
    jobs+=($!)
    post /v1/rerank "{\"model\":\"rerank\",\"query\":\"what is a gauge\",\"documents\":[\"a gauge goes up and down\",\"a counter only grows\",\"bread $i\"]}" >/dev/null &
    jobs+=($!)
    post /v1/chat/completions "{\"model\":\"chat\",\"max_tokens\":8,\"messages\":[{\"role\":\"user\",\"content\":\"Hi $i\"}]}" >/dev/null &
    jobs+=($!)
    wait "${jobs[@]}"
  done
}
step "mixed load"
load
grep -q 'data: \[DONE\]' "$work/stream" && ok "chat stream ends with [DONE]" || bad "chat stream: $(tail -c 300 "$work/stream")"
expect 200 /v1/embeddings '{"model":"embedding","input":"one more"}'
expect 400 /v1/embeddings '{"model":"embedding","input":[]}'
expect 400 /v1/rerank '{"model":"rerank","query":"q","documents":[]}'
expect 400 /v1/chat/completions '{"model":"chat","max_tokens":1000000,"messages":[{"role":"user","content":"x"}]}'
expect 400 /v1/embeddings '{"model":"embedding","input":'
expect 404 /v1/embeddings '{"model":"no-such-model","input":"x"}'
docs=$(python3 -c 'import json; print(json.dumps(["document number %d about gauges and counters" % i for i in range(64)]))')
burst=()
for i in $(seq 1 8); do
  post /v1/rerank "{\"model\":\"rerank\",\"query\":\"counters $i\",\"documents\":$docs}" >"$work/burst.$i" &
  burst+=($!)
done
wait "${burst[@]}"
grep -q 429 "$work"/burst.* && ok "rerank burst over max_concurrent_requests → 429s ($(cat "$work"/burst.* | tr '\n' ' '))" \
  || bad "rerank burst: no 429 ($(cat "$work"/burst.* | tr '\n' ' '))"
code=$(curl -s -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer wrong' -H 'Content-Type: application/json' "$gw/v1/embeddings" -d '{"model":"embedding","input":"x"}')
[ "$code" = 401 ] && ok "wrong key → 401" || bad "wrong key → $code"

step "engine kill (embedding)"
pid=$(curl -s "${auth[@]}" "$gw/system/info" | python3 -c 'import json,sys; print(next(e["pid"] for e in json.load(sys.stdin)["engines"] if e["model"]=="embedding"))')
[ -n "$pid" ] && kill -9 "$pid" && ok "SIGKILL embedding engine pid $pid" || fatal "no embedding engine pid"
# While it is down (or restarting) the gateway answers 503 (or 502 mid-request).
code=$(post /v1/embeddings '{"model":"embedding","input":"while down"}')
case $code in 5??|200) ok "request during the restart → $code";; *) bad "request during the restart → $code";; esac
t0=$SECONDS
until curl -s "${auth[@]}" "$gw/system/info" | python3 -c 'import json,sys; e=[e for e in json.load(sys.stdin)["engines"] if e["model"]=="embedding"][0]; sys.exit(0 if e["state"]=="ready" and e["restarts"]>=1 else 1)' 2>/dev/null; do
  (( SECONDS - t0 > 120 )) && fatal "embedding not back after the kill"
  sleep 0.5
done
ok "embedding engine restarted and ready in $((SECONDS - t0)) s"
load &
loadpid=$!
# `trident top` on the same gateway, while the second round of load runs.
step "trident top --once"
if "$bin" top --once --url "$gw/metrics" --api-key "$key" --interval-secs 1 >"$work/top" 2>&1 \
   && python3 - "$work/top" <<'PY'
import sys
lines = open(sys.argv[1]).read().splitlines()
assert lines[1].split()[:3] == ["MODEL", "KIND", "STATE"], lines
rows = {l.split()[0]: l.split() for l in lines[2:]}
for m in ("chat", "embedding", "rerank"):
    assert rows[m][2] == "ready", rows
assert rows["chat"][-1].endswith("%"), rows["chat"]
PY
then ok "trident top --once: a ready row per model"; sed 's/^/       /' "$work/top"
else bad "trident top --once: $(cat "$work/top")"; fi
wait "$loadpid"
# Two scrapes after the last request, so rates see it.
sleep 5

# --- 4 and 5. every query --------------------------------------------------------------------
step "every dashboard panel and alert rule through $pb"
python3 - "$pb" "$root/monitoring/grafana/dashboards" >"$work/queries.out" <<'PY'
import glob, json, os, re, sys, time, urllib.parse, urllib.request
pb, dash_dir = sys.argv[1], sys.argv[2]

# Panels that may legitimately return no series here, and why (docs/MONITORING.md).
MAY_BE_EMPTY_DASHBOARDS = {
    "trident-gpu": "GPU families are filled by the CUDA build from NVML; this is a CPU build",
}
MAY_BE_EMPTY_METRICS = {
    "trident_gpu_": "GPU families: CUDA build only",
}
VARS = {"$__rate_interval": "1m", "$__interval": "10s", "$__range": "5m",
        "$instance": ".*", "$model": ".*"}

def query(expr):
    url = pb + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:
        body = json.load(e)
    if body.get("status") != "success":
        return None, body.get("error", "?")
    return body["data"]["result"], None

passed = failed = 0
def report(ok, msg):
    global passed, failed
    if ok: passed += 1
    else: failed += 1
    print(("  ok   " if ok else "  FAIL ") + msg)

for path in sorted(glob.glob(os.path.join(dash_dir, "*.json"))):
    d = json.load(open(path, encoding="utf-8"))
    def panels(v):
        for p in v.get("panels", []):
            yield p
            yield from panels(p)
    for p in panels(d):
        if p["type"] == "row":
            continue
        title = p["title"].rsplit(" / ", 1)[0]
        for t in p["targets"]:
            expr = t["expr"]
            for k in sorted(VARS, key=len, reverse=True):
                expr = expr.replace(k, VARS[k])
            res, err = query(expr)
            where = f'{d["uid"]}: "{title}" [{t["refId"]}]'
            if err:
                report(False, f"{where}: query error {err}: {expr}")
            elif res:
                report(True, f"{where}: {len(res)} series")
            elif d["uid"] in MAY_BE_EMPTY_DASHBOARDS:
                report(True, f"{where}: empty, allowed ({MAY_BE_EMPTY_DASHBOARDS[d['uid']]})")
            else:
                report(False, f"{where}: no series: {expr}")
    for v in d["templating"]["list"]:
        q = v["query"]["query"]
        m = re.match(r'label_values\((.*), *(\w+)\)$', q)
        sel = m.group(1)
        for k in VARS:
            sel = sel.replace(k, VARS[k])
        res, err = query(f"count by ({m.group(2)}) ({sel})")
        report(not err and bool(res), f'{d["uid"]}: variable ${v["name"]} resolves to {len(res or [])} value(s)')

with urllib.request.urlopen(pb + "/api/v1/rules", timeout=10) as r:
    groups = json.load(r)["data"]["groups"]
rules = [r for g in groups for r in g["rules"]]
report(len(rules) >= 9, f"Prometheus loaded {len(rules)} alert rules")
selector = re.compile(r'\b(trident_\w+|process_\w+|up)\b(\{[^}]*\})?')
for r in rules:
    name, expr = r["name"], r["query"]
    report(r.get("health") in ("ok", "unknown") and not r.get("lastError"),
           f'alert {name}: health {r.get("health")} {r.get("lastError", "")}')
    res, err = query(expr)
    report(err is None, f"alert {name}: evaluates ({len(res or [])} series now{', error ' + str(err) if err else ''})")
    for m in selector.finditer(expr):
        sel = m.group(0)
        if any(m.group(1).startswith(p) for p in MAY_BE_EMPTY_METRICS):
            report(True, f"alert {name}: {sel} empty allowed (GPU families: CUDA build only)")
            continue
        res, err = query(f"count({sel})")
        report(not err and bool(res), f"alert {name}: selector {sel} has series")
restarted = [r for r in rules if r["name"] == "TridentEngineRestarted"]
states = [a["state"] for r in restarted for a in r.get("alerts", []) if a["labels"].get("model") == "embedding"]
report(any(s in ("pending", "firing") for s in states),
       f"engine kill: TridentEngineRestarted for embedding is {states or 'inactive'}")
print(f"queries: {passed} passed, {failed} failed")
PY
cat "$work/queries.out"
qp=$(sed -n 's/^queries: \([0-9]*\) passed, \([0-9]*\) failed$/\1/p' "$work/queries.out")
qf=$(sed -n 's/^queries: \([0-9]*\) passed, \([0-9]*\) failed$/\2/p' "$work/queries.out")
if [ -z "$qp" ]; then bad "query evaluation did not finish"; else passed=$((passed + qp)); failed=$((failed + qf)); fi
summary
[ "$failed" = 0 ]
