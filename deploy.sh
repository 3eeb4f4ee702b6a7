#!/usr/bin/env bash
# Runs the trident appliance with docker compose (v2 plugin, or v1 docker-compose).
#
#   ./deploy.sh start   [--monitoring] [--nginx] [--gpu] [--pull] [--no-wait]
#   ./deploy.sh stop
#   ./deploy.sh restart [--monitoring] [--nginx] [--gpu]
#   ./deploy.sh status  [--json]                 (trident status: containers + per-model state)
#   ./deploy.sh logs    [-f] [-n N] [SERVICE…]   (trident logs)
#   ./deploy.sh clean   [--force] [--images]     (containers, network, volumes; asks first)
#   ./deploy.sh key                              (the API key the appliance generated)
#   ./deploy.sh reload                           (apply the edited config/models.json)
#   ./deploy.sh restart-model MODEL              (rolling restart of one model's replicas)
#
# start/restart run a preflight first (daemon, compose, ports, disk, images, config, NVIDIA
# runtime when a model wants a GPU) and print every problem it finds, not just the first.
# start never pulls: images must be present (scripts/build.sh, or `trident bundle load` /
# scripts/load_images.sh offline); --pull allows pulling missing third-party images.
# Settings: .env (see .env.example). Profiles: --monitoring/--nginx or COMPOSE_PROFILES.
set -euo pipefail

root=$(cd "$(dirname "$0")" && pwd)
TRIDENT_ROOT=$root
export TRIDENT_ROOT
# shellcheck source=scripts/lib/docker.sh
. "$root/scripts/lib/docker.sh"

usage() { sed -n '2,20s/^# \{0,1\}//p' "$0"; }
die() { echo "deploy.sh: $*" >&2; exit 1; }
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# .env: read KEY=VALUE lines (no shell evaluation) for the variables this script itself uses;
# compose reads the same file for interpolation.
load_env() {
  local f="$root/.env" line key val
  [ -f "$f" ] || return 0
  while IFS= read -r line || [ -n "$line" ]; do
    [[ $line =~ ^[[:space:]]*([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] || continue
    key=${BASH_REMATCH[1]} val=${BASH_REMATCH[2]}
    val=${val%\"}; val=${val#\"}; val=${val%\'}; val=${val#\'}
    [ -z "${!key+x}" ] && export "$key=$val"
  done <"$f"
  return 0
}
load_env

cmd=${1:-}; [ $# -gt 0 ] && shift
force=0 wait=1 pull=0 images=0 json=() passthrough=()
profiles=()
[ -n "${COMPOSE_PROFILES:-}" ] && IFS=, read -r -a profiles <<<"$COMPOSE_PROFILES"
while [ $# -gt 0 ]; do
  case $1 in
    --force|-y) force=1 ;;
    --monitoring) profiles+=(monitoring) ;;
    --nginx) profiles+=(nginx) ;;
    --profile) profiles+=("${2:?--profile needs a name}"); shift ;;
    --gpu) export TRIDENT_GPU=1 ;;
    --pull) pull=1 ;;
    --no-wait) wait=0 ;;
    --images) images=1 ;;
    --json) json=(--json) ;;
    -h|--help) usage; exit 0 ;;
    *) passthrough+=("$1") ;;
  esac
  shift
done
if [ ${#profiles[@]} -gt 0 ]; then
  COMPOSE_PROFILES=$(IFS=,; echo "${profiles[*]}"); export COMPOSE_PROFILES
fi

http_port=${TRIDENT_HTTP_PORT:-8000}
image=${TRIDENT_IMAGE:-trident:latest}
models_json="$root/config/models.json"

# A model placed on CUDA (device "cuda" or a gpus list) needs the GPU override and image.
wants_gpu() {
  [ "${TRIDENT_GPU:-0}" = 1 ] && return 0
  [ -f "$models_json" ] && grep -Eq '"device"[[:space:]]*:[[:space:]]*"cuda"|"gpus"[[:space:]]*:[[:space:]]*\[[[:space:]]*[0-9]' "$models_json"
}
if wants_gpu; then
  export TRIDENT_GPU=1
  [ -z "${TRIDENT_IMAGE:-}" ] && image=trident:latest-cuda && export TRIDENT_IMAGE=$image
fi
[ -n "${TRIDENT_MODELS_DIR:-}" ] && [ "${TRIDENT_MODELS_DIR_MOUNT:-1}" = 1 ] && export TRIDENT_MODELS_DIR_MOUNT=1

# `trident status|logs|healthcheck`: a host binary if there is one, else the image's own
# binary in a throwaway container (host network for the gateway's port, the Docker socket
# for the Engine API).
trident() {
  local bin=${TRIDENT_BIN:-}
  if [ "${TRIDENT_OPS_FROM_IMAGE:-0}" != 1 ]; then
    [ -z "$bin" ] && command -v trident >/dev/null 2>&1 && bin=$(command -v trident)
    [ -z "$bin" ] && [ -x "$root/target/release/trident" ] && bin=$root/target/release/trident
  fi
  if [ -n "$bin" ]; then
    # This script's TRIDENT_* variables (.env) are host-side names, not settings keys.
    local unset=() v
    for v in $(compgen -e); do [[ $v == TRIDENT_* ]] && unset+=(-u "$v"); done
    env "${unset[@]}" "$bin" "$@"
    return
  fi
  local sock=${DOCKER_HOST:-unix:///var/run/docker.sock}
  sock=${sock#unix://}
  local tty=(); [ -t 1 ] && tty=(-t)
  docker run --rm -i "${tty[@]}" --network host --read-only \
    -v "$sock:/var/run/docker.sock" --group-add "$(stat -c %g "$sock")" \
    -e COMPOSE_PROJECT_NAME="${COMPOSE_PROJECT_NAME:-trident}" \
    --entrypoint trident "$image" "$@"
}

port_in_use() { # port -> 0 if something listens on it
  if command -v ss >/dev/null 2>&1; then
    ss -Hltn "sport = :$1" 2>/dev/null | grep -q .
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}

# Published host ports of this project's running containers (those may be "in use" by us).
# Docker prints consecutive ports as one range (0.0.0.0:8000-8003->8000-8003/tcp).
own_ports() {
  docker ps --filter "label=com.docker.compose.project=${COMPOSE_PROJECT_NAME:-trident}" \
    --format '{{.Ports}}' 2>/dev/null | grep -oE ':[0-9]+(-[0-9]+)?->' | tr -d ':>' | sed 's/-$//' \
    | while IFS=- read -r from to; do seq "$from" "${to:-$from}"; done || true
}

profile_on() { [[ ",${COMPOSE_PROFILES:-}," == *",$1,"* ]]; }

preflight() {
  local problems=() p need_kb avail_kb dir img
  if ! command -v docker >/dev/null 2>&1; then
    problems+=("docker CLI not found (install Docker Engine)")
  elif ! docker info >/dev/null 2>&1; then
    problems+=("Docker daemon not reachable (is it running? are you in the docker group?)")
  fi
  compose_cmd 2>/dev/null || problems+=("neither 'docker compose' (v2) nor 'docker-compose' (v1) is installed")
  [ -f "$models_json" ] || problems+=("config/models.json missing")

  local ports=("$http_port")
  [ "${TRIDENT_MODEL_PORTS:-true}" = false ] \
    || ports+=("${TRIDENT_CHAT_PORT:-8001}" "${TRIDENT_EMBEDDING_PORT:-8002}" "${TRIDENT_RERANK_PORT:-8003}")
  profile_on nginx && ports+=("${NGINX_PORT:-80}")
  profile_on monitoring && ports+=("${PROMETHEUS_PORT:-9090}" "${GRAFANA_PORT:-3000}")
  local mine; mine=" $(own_ports | tr '\n' ' ') "
  for p in "${ports[@]}"; do
    if [[ $mine != *" $p "* ]] && port_in_use "$p"; then
      problems+=("port $p is already in use (set it in .env, see .env.example)")
    fi
  done

  need_kb=$(( ${TRIDENT_MIN_FREE_GB:-2} * 1024 * 1024 ))
  dir=$(docker info -f '{{.DockerRootDir}}' 2>/dev/null || echo /var/lib/docker)
  [ -d "$dir" ] || dir=/
  avail_kb=$(df -Pk "$dir" 2>/dev/null | awk 'NR==2 {print $4}')
  if [ -n "$avail_kb" ] && [ "$avail_kb" -lt "$need_kb" ]; then
    problems+=("only $(( avail_kb / 1024 )) MiB free under $dir, need ${TRIDENT_MIN_FREE_GB:-2} GiB (TRIDENT_MIN_FREE_GB)")
  fi

  if [ "${TRIDENT_GPU:-0}" = 1 ]; then
    if ! docker info -f '{{json .Runtimes}}' 2>/dev/null | grep -q nvidia \
       && ! docker info 2>/dev/null | grep -qi 'cdi.*nvidia'; then
      problems+=("a model is configured for CUDA but Docker has no NVIDIA runtime (install the NVIDIA Container Toolkit, or set device \"cpu\")")
    fi
  fi

  if docker info >/dev/null 2>&1; then
    if ! docker image inspect "$image" >/dev/null 2>&1; then
      local how="scripts/build.sh"; [ "${TRIDENT_GPU:-0}" = 1 ] && how="scripts/build.sh --cuda"
      problems+=("image $image not present: $how, or load the offline bundle")
    elif [ -f "$models_json" ]; then
      local out
      local mount=()
      [ -n "${TRIDENT_MODELS_DIR_MOUNT:-}" ] && mount=(-v "$TRIDENT_MODELS_DIR:/app/models:ro")
      if ! out=$(docker run --rm --network none --read-only -v "$root/config:/app/config:ro" \
                  "${mount[@]}" --entrypoint trident "$image" check-config 2>&1); then
        problems+=("config/models.json rejected by $image: $(echo "$out" | tail -5 | tr '\n' ' ')")
      fi
    fi
    if [ $pull = 0 ]; then
      local svc var def
      for svc in nginx:NGINX_IMAGE:nginx:1.27-bookworm prometheus:PROMETHEUS_IMAGE:prom/prometheus:v2.53.0 \
                 grafana:GRAFANA_IMAGE:grafana/grafana:11.1.0; do
        IFS=: read -r name var def rest <<<"$svc"
        def=${svc#*:*:}
        local prof=$name; [ "$name" != nginx ] && prof=monitoring
        profile_on "$prof" || continue
        img=${!var:-$def}
        docker image inspect "$img" >/dev/null 2>&1 \
          || problems+=("image $img ($name) not present and pulling is off (load it, or pass --pull)")
      done
    fi
  fi

  if [ ${#problems[@]} -gt 0 ]; then
    echo "deploy.sh: preflight found ${#problems[@]} problem(s):" >&2
    printf '  - %s\n' "${problems[@]}" >&2
    exit 1
  fi
  say "preflight ok (compose $COMPOSE_VERSION, image $image${COMPOSE_PROFILES:+, profiles $COMPOSE_PROFILES})"
}

# Grafana has no default admin password: with the monitoring profile and none in .env,
# generate one and keep it there (mode 0600).
grafana_password() {
  profile_on monitoring || return 0
  [ -n "${GRAFANA_ADMIN_PASSWORD:-}" ] && return 0
  local f="$root/.env" pw
  pw=$(od -An -N18 -tx1 /dev/urandom | tr -d ' \n')
  [ -f "$f" ] || (umask 077 && : >"$f")
  printf '\n# generated by deploy.sh\nGRAFANA_ADMIN_PASSWORD=%s\n' "$pw" >>"$f"
  chmod 600 "$f"
  export GRAFANA_ADMIN_PASSWORD=$pw
  say "generated a Grafana admin password (user ${GRAFANA_ADMIN_USER:-admin}) in .env"
}

compose() {
  compose_cmd
  compose_project_args
  "${COMPOSE[@]}" "${COMPOSE_ARGS[@]}" "$@"
}

wait_ready() {
  [ $wait = 1 ] || return 0
  local limit=${TRIDENT_START_TIMEOUT:-600} start=$SECONDS
  say "waiting for every model to be ready (up to ${limit}s)"
  until trident healthcheck --quiet --url "http://127.0.0.1:$http_port/ready" >/dev/null 2>&1; do
    if (( SECONDS - start > limit )); then
      trident status || true
      die "not ready after ${limit}s (./deploy.sh logs)"
    fi
    sleep 2
  done
  say "ready after $(( SECONDS - start ))s on :$http_port"
}

up() {
  local args=(up -d --no-build --remove-orphans)
  if [ "$COMPOSE_VERSION" = v2 ]; then
    [ $pull = 1 ] && args+=(--pull missing) || args+=(--pull never)
  fi
  compose "${args[@]}"
}

all_profiles() { COMPOSE_PROFILES=monitoring,nginx; export COMPOSE_PROFILES; }

case $cmd in
  start)
    preflight
    grafana_password
    up
    wait_ready
    ;;
  stop)
    compose_cmd
    all_profiles
    compose down --remove-orphans --timeout "${TRIDENT_STOP_TIMEOUT:-45}"
    ;;
  restart)
    preflight
    grafana_password
    compose restart --timeout "${TRIDENT_STOP_TIMEOUT:-45}"
    up
    wait_ready
    ;;
  status)
    trident status "${json[@]}" "${passthrough[@]}"
    ;;
  logs)
    trident logs "${passthrough[@]}"
    ;;
  key)
    # The key file the appliance generated on first start (TRIDENT_GENERATE_API_KEY) in
    # its state volume; keys set in .env (TRIDENT_API_KEYS) are used instead when present.
    [ -n "${TRIDENT_API_KEYS:-}" ] && say "TRIDENT_API_KEYS is set in .env: those keys are the ones accepted"
    compose exec -T trident cat /app/state/api_key 2>/dev/null | grep -v '^#' \
      || die "no generated key (is the appliance running? ./deploy.sh start; keys set in .env are not generated)"
    ;;
  reload)
    # Added, removed and changed models only; the others keep serving (trident reload).
    compose exec -T trident trident reload --wait-secs "${TRIDENT_RELOAD_WAIT:-600}" \
      "${json[@]}" "${passthrough[@]}"
    ;;
  restart-model)
    [ ${#passthrough[@]} -ge 1 ] || die "restart-model needs a model id (see ./deploy.sh status)"
    compose exec -T trident trident restart "${json[@]}" "${passthrough[@]}"
    ;;
  clean)
    compose_cmd
    if [ $force = 0 ]; then
      what="containers, network and volumes (Prometheus/Grafana data) of project ${COMPOSE_PROJECT_NAME:-trident}"
      [ $images = 1 ] && what="$what, and the trident images"
      [ -t 0 ] || die "clean removes the $what; run it from a terminal or pass --force"
      read -r -p "Remove the $what? [y/N] " answer
      [[ $answer =~ ^[Yy] ]] || die "nothing removed"
    fi
    all_profiles
    compose down --volumes --remove-orphans --timeout "${TRIDENT_STOP_TIMEOUT:-45}"
    if [ $images = 1 ]; then
      docker image rm -f trident:latest trident:slim trident:latest-cuda 2>/dev/null || true
    fi
    rm -rf "${TRIDENT_CACHE:-$HOME/.cache/trident}/docker/context"
    say "clean"
    ;;
  ""|-h|--help|help) usage ;;
  *) usage >&2; exit 2 ;;
esac
