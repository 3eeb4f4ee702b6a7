#!/usr/bin/env bash
# End-to-end test of the container layer on a real Docker engine that can pull nothing:
#
#  1. base images made locally (tests/docker/base-images.sh: debootstrap → debian:bookworm-slim,
#     host toolchain → rust:1.95-slim-bookworm, Debian-package stand-ins for nginx/Prometheus)
#  2. scripts/build.sh builds docker/Dockerfile (slim, then with models)
#  3. `docker compose up -d` from the repository root; wait for /ready; the generated API key
#     (./deploy.sh key: mode 0600, never in the logs, 401 without it); capabilities dropped;
#     chat, embeddings and rerank through :8000 with the key, and the seed's commands on the
#     models' own published ports (:8001 chat, :8002 embeddings, :8003 rerank; model_ports)
#  4. ./deploy.sh status (exit 0, three models ready) and logs; ./deploy.sh reload of an edited
#     models.json and restart-model; ./deploy.sh restart
#  5. profile nginx: the same calls (and an SSE stream) through nginx
#  6. profile monitoring: Prometheus scrapes the appliance (target up, a trident_ series)
#  7. ./deploy.sh stop and clean --force
#
# Runs under its own compose project (trident-e2e) so it never touches a real deployment,
# but on the real ports (8000, 8001-8003, nginx 80 — E2E_NGINX_PORT, Prometheus 9090). The last line is a
# summary with the figures (image size without models, cold start to ready, duration).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
t_begin=$SECONDS
passed=0
export COMPOSE_PROJECT_NAME=${E2E_PROJECT:-trident-e2e}
export TRIDENT_HTTP_PORT=${E2E_PORT:-8000}
export TRIDENT_CHAT_PORT=${E2E_CHAT_PORT:-8001}
export TRIDENT_EMBEDDING_PORT=${E2E_EMBEDDING_PORT:-8002}
export TRIDENT_RERANK_PORT=${E2E_RERANK_PORT:-8003}
export NGINX_PORT=${E2E_NGINX_PORT:-80}
export PROMETHEUS_PORT=${E2E_PROMETHEUS_PORT:-9090}
export TRIDENT_IMAGE=${E2E_IMAGE:-trident:latest}
export TRIDENT_OPS_FROM_IMAGE=1   # deploy.sh status/logs: the image's own binary
export PROGRESS=${PROGRESS:-plain}
base="http://127.0.0.1:$TRIDENT_HTTP_PORT"
slim_mb=? full_mb=? cold=? log_dir=$(mktemp -d "${TMPDIR:-/tmp}/trident-e2e.XXXXXX")

step() { printf '\n\033[1m=== %s\033[0m (%ss)\n' "$*" "$((SECONDS - t_begin))"; }
ok() { passed=$((passed + 1)); echo "  ok: $*"; }
summary() {
  echo "e2e-docker: image without models ${slim_mb} MB (with default models ${full_mb} MB);" \
       "cold start to ready inside the container ${cold} s; e2e duration $((SECONDS - t_begin)) s"
}
fail() {
  echo "  FAILED: $*" >&2
  echo "--- appliance logs (last 60 lines) ---" >&2
  docker ps -a --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" >&2 || true
  for c in $(docker ps -aq --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME"); do
    docker logs --tail 60 "$c" >&2 2>&1 || true
  done
  echo "e2e-docker: $passed passed, 1 failed"
  summary
  exit 1
}
models_edited=0
cleanup() {
  local rc=$?
  [ "$models_edited" = 1 ] && cp "$log_dir/models.json.orig" config/models.json
  if [ "${E2E_KEEP:-0}" != 1 ]; then
    compose --profile nginx --profile monitoring down -v --remove-orphans -t 10 >/dev/null 2>&1 || true
  fi
  rm -rf "$log_dir"
  exit $rc
}
trap cleanup EXIT

# JSON assertions in Python (stdin = response body; the expression must be truthy).
jcheck() { # description python-expression-on-`r`
  python3 -c "import json,sys,math; r=json.load(sys.stdin); assert ($2), r" 2>"$log_dir/jcheck" \
    || fail "$1: $(tail -c 600 "$log_dir/jcheck")"
  ok "$1"
}
key=  # the appliance's generated API key, read once it is up
post() { # url json -> body on stdout; fails on non-2xx
  curl -sS --fail-with-body -m 180 -H 'content-type: application/json' \
    -H "authorization: Bearer $key" -d "$2" "$1"
}

# --- tools ---------------------------------------------------------------------------------------
step "docker engine and compose"
docker info >/dev/null 2>&1 || fail "Docker daemon not reachable"
if ! docker compose version >/dev/null 2>&1 || ! docker buildx version >/dev/null 2>&1; then
  if cfg=$(tests/docker/cli-plugins.sh); then
    export DOCKER_CONFIG=$cfg
  fi
fi
TRIDENT_ROOT=$root
# shellcheck source=scripts/lib/docker.sh
. scripts/lib/docker.sh
compose_cmd || fail "no compose"
compose_project_args
compose() { "${COMPOSE[@]}" "${COMPOSE_ARGS[@]}" "$@"; }
echo "  compose $COMPOSE_VERSION: $("${COMPOSE[@]}" version | head -1)"
ok "docker $(docker version -f '{{.Server.Version}}'), compose $COMPOSE_VERSION"
for p in "$TRIDENT_HTTP_PORT" "$NGINX_PORT" "$PROMETHEUS_PORT"; do
  ss -Hltn "sport = :$p" 2>/dev/null | grep -q . && fail "port $p is in use (E2E_PORT / E2E_NGINX_PORT / E2E_PROMETHEUS_PORT)"
done
compose --profile nginx --profile monitoring down -v --remove-orphans -t 10 >/dev/null 2>&1 || true

step "base images (built locally; nothing can be pulled)"
tests/docker/base-images.sh || fail "base images"
ok "base images present: $(docker images --format '{{.Repository}}:{{.Tag}}' | sort | tr '\n' ' ')"

step "models"
QUIET=1 scripts/fetch-models.sh || fail "scripts/fetch-models.sh"
ok "default models linked under models/"

# --- build ---------------------------------------------------------------------------------------
step "scripts/build.sh --skip-models"
scripts/build.sh --skip-models --tag trident:slim >"$log_dir/build-slim.log" 2>&1 \
  || { tail -n 60 "$log_dir/build-slim.log"; fail "scripts/build.sh --skip-models"; }
grep -E '==>|Finished|Compiling trident' "$log_dir/build-slim.log" || true
slim_mb=$(( $(docker image inspect -f '{{.Size}}' trident:slim) / 1000000 ))
ok "trident:slim built, ${slim_mb} MB"
step "scripts/build.sh (with the default models)"
scripts/build.sh --tag "$TRIDENT_IMAGE" >"$log_dir/build.log" 2>&1 \
  || { tail -n 60 "$log_dir/build.log"; fail "scripts/build.sh"; }
grep -E '==>|Finished|Compiling trident' "$log_dir/build.log" || true
full_mb=$(( $(docker image inspect -f '{{.Size}}' "$TRIDENT_IMAGE") / 1000000 ))
ok "$TRIDENT_IMAGE built, ${full_mb} MB"
user=$(docker image inspect -f '{{.Config.User}}' "$TRIDENT_IMAGE")
[ -n "$user" ] && [ "${user%%:*}" != 0 ] && [ "${user%%:*}" != root ] || fail "image runs as root ($user)"
docker image inspect -f '{{json .Config.Healthcheck}}' "$TRIDENT_IMAGE" | grep -q healthcheck \
  || fail "image has no 'trident healthcheck' HEALTHCHECK"
ok "image runs as $user with HEALTHCHECK trident healthcheck"

# --- up ------------------------------------------------------------------------------------------
wait_ready() { # limit-seconds [expected-restart-count] -> sets READY_SECS: seconds from container start to /ready 200
  local limit=$1 id started t0
  id=$(compose ps -q trident)
  [ -n "$id" ] || fail "no trident container"
  t0=$SECONDS
  until [ "$(curl -s -o /dev/null -w '%{http_code}' -m 5 "$base/ready")" = 200 ]; do
    (( SECONDS - t0 > limit )) && { curl -s -m 5 "$base/ready" >&2 || true; fail "not ready after ${limit}s"; }
    [ "$(docker inspect -f '{{.RestartCount}}' "$id")" = "${2:-0}" ] || fail "the container crashed and was restarted"
    [ "$(docker inspect -f '{{.State.Status}}' "$id")" = running ] || fail "container $(docker inspect -f '{{.State.Status}}' "$id")"
    sleep 0.2
  done
  started=$(docker inspect -f '{{.State.StartedAt}}' "$id")
  READY_SECS=$(python3 -c "import datetime as d,sys; s=sys.argv[1]; s=s[:26].rstrip('Z')+'+00:00' if '.' in s else s.replace('Z','+00:00'); print(f'{d.datetime.now(d.timezone.utc).timestamp()-d.datetime.fromisoformat(s).timestamp():.1f}')" "$started")
}

step "docker compose up -d (repository root)"
if [ "$COMPOSE_VERSION" = v2 ]; then
  docker compose up -d                    # exactly what a user types (project from the env)
else
  compose up -d
fi
wait_ready 600
cold=$READY_SECS
ok "ready ${cold}s after the container started"
curl -sf -m 5 "$base/health" >/dev/null || fail "/health"
ok "/health 200"
for i in $(seq 1 30); do
  h=$(docker inspect -f '{{.State.Health.Status}}' "$(compose ps -q trident)")
  [ "$h" = healthy ] && break
  sleep 1
done
[ "$h" = healthy ] || fail "Docker health status is '$h' (HEALTHCHECK trident healthcheck)"
ok "container healthy by its own HEALTHCHECK"
ro=$(docker inspect -f '{{.HostConfig.ReadonlyRootfs}}' "$(compose ps -q trident)")
[ "$ro" = true ] || fail "root filesystem is not read-only"
ok "read-only root filesystem"
caps=$(docker inspect -f '{{.HostConfig.CapDrop}} {{.HostConfig.SecurityOpt}}' "$(compose ps -q trident)")
[[ $caps == *ALL* && $caps == *no-new-privileges* ]] || fail "capabilities not dropped: $caps"
ok "cap_drop ALL and no-new-privileges"

step "the generated API key"
key=$(./deploy.sh key) || fail "./deploy.sh key"
[ "${#key}" -ge 40 ] || fail "generated key too short: ${#key} characters"
mode=$(compose exec -T trident stat -c %a /app/state/api_key) || fail "stat of the key file"
[ "$mode" = 600 ] || fail "key file mode $mode, want 600"
docker logs "$(compose ps -q trident)" 2>&1 | grep -qF "$key" && fail "the key is in the appliance's log"
code=$(curl -s -o /dev/null -w '%{http_code}' -m 10 -H 'content-type: application/json' \
  -d '{"model":"embedding","input":"a"}' "$base/v1/embeddings")
[ "$code" = 401 ] || fail "a request without the key got $code, want 401"
[ "$(curl -s -o /dev/null -w '%{http_code}' -m 5 "$base/metrics")" = 401 ] || fail "/metrics without the key is not 401"
ok "key generated (mode 600, not logged); 401 without it, /metrics included"

api_checks() { # base-url label
  local b=$1 label=$2
  post "$b/v1/chat/completions" '{"model":"chat","messages":[{"role":"user","content":"Say hello."}],"max_tokens":8,"temperature":0}' \
    >"$log_dir/chat.json" || fail "$label chat: $(cat "$log_dir/chat.json")"
  jcheck "$label chat completion" \
    "isinstance(r['choices'][0]['message']['content'], str) and len(r['choices'][0]['message']['content']) > 0 and r['usage']['completion_tokens'] >= 1" \
    <"$log_dir/chat.json"
  post "$b/v1/embeddings" '{"model":"embedding","input":["The cat sits on the mat.","A kitten rests on a rug."]}' \
    >"$log_dir/emb.json" || fail "$label embeddings: $(cat "$log_dir/emb.json")"
  jcheck "$label embeddings (2 x 384, unit norm)" \
    "len(r['data']) == 2 and all(len(d['embedding']) == 384 and abs(math.sqrt(sum(x*x for x in d['embedding'])) - 1) < 1e-3 for d in r['data'])" \
    <"$log_dir/emb.json"
  post "$b/v1/rerank" '{"model":"rerank","query":"What is the capital of France?","documents":["Bananas are yellow and rich in potassium.","Paris is the capital and largest city of France."]}' \
    >"$log_dir/rerank.json" || fail "$label rerank: $(cat "$log_dir/rerank.json")"
  jcheck "$label rerank (the relevant document first)" \
    "len(r['results']) == 2 and r['results'][0]['index'] == 1 and r['results'][0]['relevance_score'] > r['results'][1]['relevance_score']" \
    <"$log_dir/rerank.json"
}

step "chat, embeddings and rerank through :$TRIDENT_HTTP_PORT"
api_checks "$base" ":$TRIDENT_HTTP_PORT"

step "the seed's commands on the models' own ports (:$TRIDENT_CHAT_PORT, :$TRIDENT_EMBEDDING_PORT, :$TRIDENT_RERANK_PORT)"
# As the seed's guide writes them: each model's port, the Bearer key, no "model" needed.
post "http://127.0.0.1:$TRIDENT_CHAT_PORT/v1/chat/completions" \
  '{"messages":[{"role":"user","content":"Say hello."}],"max_tokens":8,"temperature":0}' \
  >"$log_dir/pchat.json" || fail ":$TRIDENT_CHAT_PORT chat: $(cat "$log_dir/pchat.json")"
jcheck ":$TRIDENT_CHAT_PORT/v1/chat/completions" \
  "len(r['choices'][0]['message']['content']) > 0" <"$log_dir/pchat.json"
post "http://127.0.0.1:$TRIDENT_EMBEDDING_PORT/v1/embeddings" '{"input":["The cat sits on the mat."]}' \
  >"$log_dir/pemb.json" || fail ":$TRIDENT_EMBEDDING_PORT embeddings: $(cat "$log_dir/pemb.json")"
jcheck ":$TRIDENT_EMBEDDING_PORT/v1/embeddings (384 dims)" "len(r['data'][0]['embedding']) == 384" <"$log_dir/pemb.json"
post "http://127.0.0.1:$TRIDENT_RERANK_PORT/v1/rerank" \
  '{"query":"What is the capital of France?","documents":["Bananas are yellow.","Paris is the capital of France."]}' \
  >"$log_dir/prr.json" || fail ":$TRIDENT_RERANK_PORT rerank: $(cat "$log_dir/prr.json")"
jcheck ":$TRIDENT_RERANK_PORT/v1/rerank (the relevant document first)" "r['results'][0]['index'] == 1" <"$log_dir/prr.json"
code=$(curl -s -o /dev/null -w '%{http_code}' -m 10 -H 'content-type: application/json' \
  -d '{"input":"a"}' "http://127.0.0.1:$TRIDENT_EMBEDDING_PORT/v1/embeddings")
[ "$code" = 401 ] || fail "a model port without the key got $code, want 401"
code=$(curl -s -o "$log_dir/p404.json" -w '%{http_code}' -m 10 -H 'content-type: application/json' \
  -H "authorization: Bearer $key" -d '{"model":"embedding","input":"a"}' \
  "http://127.0.0.1:$TRIDENT_CHAT_PORT/v1/embeddings")
[ "$code" = 404 ] && grep -q "serves only the model 'chat'" "$log_dir/p404.json" \
  || fail "another model on the chat port: $code $(cat "$log_dir/p404.json")"
ok "401 without the key; another model on a model's port is 404 naming the port's model"

step "./deploy.sh status and logs"
./deploy.sh status >"$log_dir/status.txt" 2>&1 || { cat "$log_dir/status.txt"; fail "deploy.sh status exited non-zero"; }
cat "$log_dir/status.txt"
ok "deploy.sh status exit 0"
./deploy.sh status --json >"$log_dir/status.json" || fail "deploy.sh status --json"
jcheck "status: three models ready, appliance healthy" \
  "r['healthy'] and len([m for m in r['gateway']['models'] if m['state'] == 'ready']) == 3 and any(c['service'] == 'trident' and c['health'] == 'healthy' and c['state'] == 'running' for c in r['containers'])" \
  <"$log_dir/status.json"
./deploy.sh logs -n 20 trident >"$log_dir/logs.txt" 2>&1 || fail "deploy.sh logs"
grep -q '^trident *| ' "$log_dir/logs.txt" || { cat "$log_dir/logs.txt"; fail "deploy.sh logs printed no 'trident |' line"; }
ok "deploy.sh logs ($(wc -l <"$log_dir/logs.txt") lines)"

step "./deploy.sh reload and restart-model (config/models.json edited on the host)"
cp config/models.json "$log_dir/models.json.orig"
models_edited=1
python3 - <<'PY'
import json
p = "config/models.json"
m = json.load(open(p))
m["models"]["embedding"]["aliases"].append("e2e-embedding")
open(p, "w").write(json.dumps(m))
PY
chat_pid_before=$(curl -sf -m 5 -H "authorization: Bearer $key" "$base/system/info" \
  | python3 -c 'import json,sys; print([e["pid"] for e in json.load(sys.stdin)["engines"] if e["model"] == "chat"][0])')
./deploy.sh reload >"$log_dir/reload.txt" 2>&1 || { cat "$log_dir/reload.txt"; fail "deploy.sh reload"; }
grep -q 'changed: *embedding' "$log_dir/reload.txt" && grep -q 'unchanged: *chat, rerank' "$log_dir/reload.txt" \
  || { cat "$log_dir/reload.txt"; fail "reload report"; }
post "$base/v1/embeddings" '{"model":"e2e-embedding","input":"a"}' >"$log_dir/emb2.json" \
  || fail "the reloaded alias does not route: $(cat "$log_dir/emb2.json")"
chat_pid=$(curl -sf -m 5 -H "authorization: Bearer $key" "$base/system/info" \
  | python3 -c 'import json,sys; print([e["pid"] for e in json.load(sys.stdin)["engines"] if e["model"] == "chat"][0])')
[ "$chat_pid" = "$chat_pid_before" ] || fail "reload restarted the unchanged chat engine ($chat_pid_before -> $chat_pid)"
ok "reload: the edited model restarted with its new alias, the others untouched"
cp "$log_dir/models.json.orig" config/models.json
models_edited=0
./deploy.sh reload >/dev/null 2>&1 || fail "deploy.sh reload (restoring models.json)"
./deploy.sh restart-model rerank >"$log_dir/rr.txt" 2>&1 || { cat "$log_dir/rr.txt"; fail "deploy.sh restart-model"; }
grep -q '^restarted rerank: replica 0 in' "$log_dir/rr.txt" || { cat "$log_dir/rr.txt"; fail "restart-model report"; }
wait_ready 120
ok "restart-model rerank: $(cat "$log_dir/rr.txt")"

step "./deploy.sh restart"
id_before=$(compose ps -q trident)
./deploy.sh restart --no-wait
wait_ready 300
[ "$(compose ps -q trident)" = "$id_before" ] || fail "restart replaced the container"
restarted=$(docker inspect -f '{{.State.StartedAt}}' "$id_before")
ok "restarted in place (started $restarted) and ready again"
[ "$(./deploy.sh key 2>/dev/null)" = "$key" ] || fail "the generated key changed across the restart"
ok "the generated key survives the restart"
api_checks "$base" "after restart:"

# --- nginx ---------------------------------------------------------------------------------------
step "profile nginx: through :$NGINX_PORT"
compose --profile nginx up -d --no-build
nb="http://127.0.0.1:$NGINX_PORT"
for i in $(seq 1 50); do curl -sf -m 2 "$nb/health" >/dev/null && break; sleep 0.2; done
curl -sf -m 5 "$nb/health" >/dev/null || fail "nginx did not come up"
api_checks "$nb" "nginx"
curl -sS -N -m 120 -D "$log_dir/sse.headers" -H 'content-type: application/json' \
  -H "authorization: Bearer $key" \
  -d '{"model":"chat","messages":[{"role":"user","content":"Count to five."}],"max_tokens":12,"stream":true}' \
  "$nb/v1/chat/completions" >"$log_dir/sse.txt" || fail "nginx SSE request"
grep -qi '^content-type: text/event-stream' "$log_dir/sse.headers" || fail "SSE content type lost: $(cat "$log_dir/sse.headers")"
grep -qi '^content-length' "$log_dir/sse.headers" && fail "nginx buffered the stream (content-length set)"
events=$(grep -c '^data: {' "$log_dir/sse.txt" || true)
[ "$events" -ge 2 ] && tail -n 3 "$log_dir/sse.txt" | grep -q '^data: \[DONE\]' || fail "SSE through nginx: $(head -c 400 "$log_dir/sse.txt")"
ok "SSE stream through nginx: $events events, ends with [DONE]"
[ "$(curl -s -o /dev/null -w '%{http_code}' "$nb/metrics")" = 404 ] || fail "nginx exposes /metrics"
ok "nginx hides /metrics"

# --- monitoring ----------------------------------------------------------------------------------
step "profile monitoring: Prometheus scrapes the appliance"
docker run --rm --entrypoint promtool -v "$root/monitoring/prometheus:/cfg:ro" \
  "${PROMETHEUS_IMAGE:-prom/prometheus:v2.53.0}" check config /cfg/prometheus.yml >/dev/null \
  || fail "promtool check config"
ok "promtool check config"
compose --profile monitoring up -d --no-build prometheus
pb="http://127.0.0.1:$PROMETHEUS_PORT"
t0=$SECONDS
until curl -sf -m 5 "$pb/api/v1/targets" 2>/dev/null \
      | python3 -c "import json,sys; t=json.load(sys.stdin)['data']['activeTargets']; sys.exit(0 if any(x['labels']['job']=='trident' and x['health']=='up' for x in t) else 1)" 2>/dev/null; do
  (( SECONDS - t0 > 90 )) && fail "Prometheus target trident not up: $(curl -s "$pb/api/v1/targets" | head -c 800)"
  sleep 1
done
ok "Prometheus target job=trident health=up"
t0=$SECONDS
until curl -sf -m 5 "$pb/api/v1/query" --data-urlencode 'query=count({__name__=~"trident_.+",job="trident"})' \
      >"$log_dir/q.json" && python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['data']['result']; sys.exit(0 if r and float(r[0]['value'][1]) > 0 else 1)" "$log_dir/q.json" 2>/dev/null; do
  (( SECONDS - t0 > 60 )) && fail "no trident_ series in Prometheus: $(cat "$log_dir/q.json")"
  sleep 1
done
curl -sf -m 5 "$pb/api/v1/query" --data-urlencode 'query=trident_requests_total' >"$log_dir/q2.json"
jcheck "Prometheus has trident_requests_total series" "len(r['data']['result']) >= 1" <"$log_dir/q2.json"

# --- stop / clean --------------------------------------------------------------------------------
step "./deploy.sh stop and clean --force"
./deploy.sh stop
[ -z "$(docker ps -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME")" ] || fail "containers still running after stop"
ok "stopped"
./deploy.sh clean </dev/null >/dev/null 2>&1 && fail "clean without --force and without a terminal must refuse"
ok "clean refuses without --force"
./deploy.sh clean --force
[ -z "$(docker ps -aq --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME")" ] || fail "containers left after clean"
[ -z "$(docker volume ls -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME")" ] || fail "volumes left after clean"
ok "clean removed containers and volumes"

echo
echo "e2e-docker: $passed passed, 0 failed"
summary
