#!/usr/bin/env bash
# Builds the trident image.
#
#   scripts/build.sh [--tag T] [--skip-models] [--no-cache] [--cuda] [--compute-cap N]
#                    [--progress auto|plain|tty]
#
# models/ normally holds symlinks into ~/.cache/trident/models (scripts/fetch-models.sh), which a
# Docker build context cannot follow. So the image is built from a staged context: the source
# files the Dockerfile needs plus models/ with every symlink resolved, hard-linked where the
# filesystem allows (no copy), at a fixed path so BuildKit transfers only what changed.
# --cuda builds docker/Dockerfile.cuda, which packages a binary built here by
# scripts/build-cuda.sh (or TRIDENT_CUDA_BIN) with the CUDA runtime libraries of
# scripts/cuda-toolchain.sh; compute capability from --compute-cap or CUDA_COMPUTE_CAP (90).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
TRIDENT_ROOT=$root
# shellcheck source=scripts/lib/docker.sh
. "$root/scripts/lib/docker.sh"

tag=${TRIDENT_IMAGE:-}
skip_models=0 no_cache=() cuda=0 compute_cap=${CUDA_COMPUTE_CAP:-90} progress=${PROGRESS:-auto}
usage() { sed -n '2,14s/^# \{0,1\}//p' "$0"; }
while [ $# -gt 0 ]; do
  case $1 in
    --tag) tag=${2:?--tag needs a value}; shift ;;
    --tag=*) tag=${1#*=} ;;
    --skip-models) skip_models=1 ;;
    --no-cache) no_cache=(--no-cache) ;;
    --cuda) cuda=1 ;;
    --compute-cap) compute_cap=${2:?--compute-cap needs a value}; shift ;;
    --progress) progress=${2:?}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "build.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$tag" ]; then
  tag=trident:latest; [ $cuda = 1 ] && tag=trident:latest-cuda
fi
step() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

docker info >/dev/null 2>&1 || { echo "build.sh: the Docker daemon is not reachable" >&2; exit 1; }
docker_build_cmd

# --- stage the build context ------------------------------------------------------------------
ctx=${TRIDENT_BUILD_CONTEXT:-${TRIDENT_CACHE:-$HOME/.cache/trident}/docker/context}
step "staging build context in $ctx"
rm -rf "$ctx"; mkdir -p "$ctx"
link_or_copy() { # src dst-dir : hard links if possible (keeps mtimes: cargo stays incremental)
  cp -al "$1" "$2/" 2>/dev/null || cp -a "$1" "$2/"
}
for f in Cargo.toml Cargo.lock src config .dockerignore; do
  [ -e "$root/$f" ] || { echo "build.sh: $f missing in $root" >&2; exit 1; }
  link_or_copy "$root/$f" "$ctx"
done
mkdir -p "$ctx/models"
if [ $skip_models = 0 ]; then
  models=${TRIDENT_MODELS_DIR:-$root/models}
  have_models() { find -L "$models" -mindepth 1 -maxdepth 1 ! -name README.md 2>/dev/null | grep -q .; }
  if ! have_models && [ -z "${TRIDENT_MODELS_DIR:-}" ]; then
    step "models/ is empty: fetching the default models (scripts/fetch-models.sh)"
    "$root/scripts/fetch-models.sh"
  fi
  have_models || { echo "build.sh: no models in $models (use --skip-models to build without)" >&2; exit 1; }
  for m in "$models"/*; do
    [ "$(basename "$m")" = README.md ] && continue
    [ -e "$m" ] || { echo "build.sh: $m is a dangling symlink (run scripts/fetch-models.sh)" >&2; exit 1; }
    # -L resolves symlinks (top-level and nested); -l hard links the resolved files.
    cp -rlL "$m" "$ctx/models/" 2>/dev/null || { rm -rf "$ctx/models/$(basename "$m")"; cp -rL --preserve=timestamps "$m" "$ctx/models/"; }
  done
  step "models: $(cd "$ctx/models" && ls | tr '\n' ' ')($(du -shL "$ctx/models" | cut -f1))"
fi

# --- CUDA: the host-built binary and the runtime libraries -------------------------------------
if [ $cuda = 1 ]; then
  cuda_root=$("$root/scripts/cuda-toolchain.sh")
  mkdir -p "$ctx/bin" "$ctx/cuda/lib"
  if [ -n "${TRIDENT_CUDA_BIN:-}" ]; then
    install -m 0755 "$TRIDENT_CUDA_BIN" "$ctx/bin/trident"
  else
    step "building the CUDA binary (scripts/build-cuda.sh, sm_$compute_cap)"
    CUDA_COMPUTE_CAP=$compute_cap "$root/scripts/build-cuda.sh" --out "$ctx/bin/trident" >&2
  fi
  [ "${STRIP_DEBUG:-1}" = 1 ] && objcopy --strip-debug "$ctx/bin/trident"
  # What the binary links (cudart, cuBLAS + cuBLASLt, cuRAND, NVRTC + its builtins, NCCL for
  # tensor parallelism), never the stand-in libcuda: the container runtime brings the host's
  # driver.
  for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 \
             libnvrtc.so.13 libnvrtc-builtins.so.13.0 libnccl.so.2; do
    link_or_copy "$cuda_root/lib/$lib" "$ctx/cuda/lib"
  done
  # The shared .dockerignore admits only the CPU build's inputs; this context has two more.
  # (Rewritten, not appended: the staged copy is a hard link to the repository's file.)
  { cat "$root/.dockerignore"; printf '!bin/\n!cuda/\n'; } >"$ctx/.dockerignore.new"
  mv "$ctx/.dockerignore.new" "$ctx/.dockerignore"
fi

# --- build --------------------------------------------------------------------------------------
args=(--progress "$progress" -t "$tag" "${no_cache[@]}"
      --label "org.opencontainers.image.revision=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)"
      --label "org.opencontainers.image.version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)")
for a in RUST_IMAGE RUNTIME_IMAGE CARGO_PROFILE STRIP_DEBUG; do
  [ -n "${!a:-}" ] && args+=(--build-arg "$a=${!a}")
done
if [ $cuda = 1 ]; then
  args+=(-f "$root/docker/Dockerfile.cuda" --label "trident.cuda.compute-cap=$compute_cap")
else
  args+=(-f "$root/docker/Dockerfile")
fi
# A TLS-intercepting proxy's CA bundle, for cargo's downloads inside the build (as a secret:
# not in the context, not in any layer).
ca=${TRIDENT_BUILD_CA_BUNDLE:-${SSL_CERT_FILE:-${CURL_CA_BUNDLE:-}}}
[ -n "$ca" ] && [ -s "$ca" ] && args+=(--secret "id=ca-bundle,src=$ca")
target=full; [ $skip_models = 1 ] && target=slim
args+=(--target "$target")
step "building $tag (target $target) with: ${DOCKER_BUILD[*]}"
start=$(date +%s)
"${DOCKER_BUILD[@]}" "${args[@]}" "$ctx"
size=$(docker image inspect -f '{{.Size}}' "$tag")
step "built $tag in $(( $(date +%s) - start ))s, $(( size / 1000000 )) MB"
