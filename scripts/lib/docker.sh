# Shared by scripts/build.sh, deploy.sh and scripts/e2e-docker.sh (sourced, not run).
# Finds a BuildKit-capable `docker build` and a compose implementation (v2 plugin or v1).

# docker_build_cmd: sets DOCKER_BUILD=(…) to a command that builds with BuildKit, or fails.
#  1. `docker buildx` present: plain `docker build` is BuildKit.
#  2. a docker CLI older than 23 (e.g. Debian bookworm's /usr/bin/docker 20.10) has BuildKit
#     built in behind DOCKER_BUILDKIT=1.
docker_build_cmd() {
  if docker buildx version >/dev/null 2>&1; then
    DOCKER_BUILD=(docker build)
    return 0
  fi
  local c v
  while read -r c; do
    v=$("$c" version --format '{{.Client.Version}}' 2>/dev/null) || continue
    if [ "${v%%.*}" -lt 23 ] 2>/dev/null; then
      DOCKER_BUILD=(env DOCKER_BUILDKIT=1 "$c" build)
      return 0
    fi
  done < <(type -ap docker; [ -x /usr/bin/docker ] && echo /usr/bin/docker)
  echo "error: no BuildKit-capable docker build: install the buildx plugin (docker-buildx)" >&2
  return 1
}

# compose_cmd: sets COMPOSE=(…) to `docker compose` (v2) or `docker-compose` (v1), or fails.
# TRIDENT_COMPOSE=v1|v2 forces one.
compose_cmd() {
  local want=${TRIDENT_COMPOSE:-}
  if [ "$want" != v1 ] && docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose); COMPOSE_VERSION=v2; return 0
  fi
  if [ "$want" != v2 ] && command -v docker-compose >/dev/null 2>&1; then
    COMPOSE=(docker-compose); COMPOSE_VERSION=v1
    return 0
  fi
  echo "error: neither 'docker compose' (v2) nor 'docker-compose' (v1) found" >&2
  return 1
}

# compose_project_args: sets COMPOSE_ARGS to -p and the -f arguments for compose.yaml plus the overrides in use
# (compose/gpu.yaml when TRIDENT_GPU=1, compose/models-dir.yaml when TRIDENT_MODELS_DIR is
# set for the container, then the files in TRIDENT_COMPOSE_OVERRIDES). v1 rejects the top-level `name:` key, so it gets a copy without
# it, with the project directory pinned to the repository root.
compose_project_args() {
  local base="$TRIDENT_ROOT/compose.yaml"
  if [ "${COMPOSE_VERSION:-}" = v1 ]; then
    local v1dir=${TRIDENT_CACHE:-$HOME/.cache/trident}/docker
    mkdir -p "$v1dir"
    sed '/^name:/d' "$base" >"$v1dir/compose.v1.yaml"
    base="$v1dir/compose.v1.yaml"
    COMPOSE_ARGS=(-p "${COMPOSE_PROJECT_NAME:-trident}" --project-directory "$TRIDENT_ROOT" -f "$base")
  else
    COMPOSE_ARGS=(-p "${COMPOSE_PROJECT_NAME:-trident}" -f "$base")
  fi
  [ "${TRIDENT_GPU:-0}" = 1 ] && COMPOSE_ARGS+=(-f "$TRIDENT_ROOT/compose/gpu.yaml")
  [ -n "${TRIDENT_MODELS_DIR_MOUNT:-}" ] && COMPOSE_ARGS+=(-f "$TRIDENT_ROOT/compose/models-dir.yaml")
  # Site-specific overrides (comma-separated compose files), applied last.
  local extra
  if [ -n "${TRIDENT_COMPOSE_OVERRIDES:-}" ]; then
    IFS=, read -r -a extra <<<"$TRIDENT_COMPOSE_OVERRIDES"
    for f in "${extra[@]}"; do COMPOSE_ARGS+=(-f "$f"); done
  fi
  return 0
}
