#!/usr/bin/env bash
# End-to-end check of the CUDA image on a machine with no GPU and no registry:
#
#   scripts/e2e-cuda-image.sh
#
# Makes debian:bookworm-slim locally if absent (tests/docker/base-images.sh), builds
# docker/Dockerfile.cuda through `scripts/build.sh --cuda --skip-models` (the binary from
# scripts/build-cuda.sh, TRIDENT_CUDA_BIN to reuse one), then inside the image: the binary
# finds every CUDA library but the driver's (which the NVIDIA runtime mounts from the host);
# with the build's stand-in libcuda.so.1 mounted it prints its version, accepts the shipped
# config, and refuses a `cuda` model because no GPU is there. Uses only `docker run`, no
# ports. Ends with "e2e-cuda-image: N passed, M failed" (counted by .ci/run).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
tag=${TRIDENT_CUDA_E2E_TAG:-trident-e2e:cuda}
cd "$root"
log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

passed=0 failed=0
check() { # name command… : one counted check
  local name=$1; shift
  if "$@"; then passed=$((passed + 1)); echo "e2e-cuda-image: ok   $name"
  else failed=$((failed + 1)); echo "e2e-cuda-image: FAIL $name"; fi
}
finish() { echo "e2e-cuda-image: $passed passed, $failed failed"; [ "$failed" = 0 ]; }

docker info >/dev/null 2>&1 || { echo "e2e-cuda-image: no Docker engine" >&2; exit 1; }
base=${RUNTIME_IMAGE:-debian:bookworm-slim}
if ! docker image inspect "$base" >/dev/null 2>&1; then
  log "making the base images (tests/docker/base-images.sh)"
  tests/docker/base-images.sh
fi
cuda_root=$(scripts/cuda-toolchain.sh)

start=$(date +%s)
built() { scripts/build.sh --cuda --skip-models --tag "$tag" --progress plain >/tmp/e2e-cuda-build.$$ 2>&1 \
            || { tail -30 /tmp/e2e-cuda-build.$$ >&2; rm -f /tmp/e2e-cuda-build.$$; return 1; }
          rm -f /tmp/e2e-cuda-build.$$; }
check "scripts/build.sh --cuda builds docker/Dockerfile.cuda" built
log "image built in $(( $(date +%s) - start ))s"
docker image inspect "$tag" >/dev/null 2>&1 || { finish; exit 1; }

run() { docker run --rm --network none --read-only "$@"; }
stub=(-v "$cuda_root/lib/stubs:/opt/stub-driver:ro" -e LD_LIBRARY_PATH=/opt/stub-driver)

only_driver_missing() {
  local out
  out=$(run --entrypoint ldd "$tag" /usr/local/bin/trident 2>&1 | grep 'not found' || true)
  [ "$out" = "$(printf '\tlibcuda.so.1 => not found')" ] || { echo "$out" >&2; return 1; }
}
check "the image has every CUDA library but the driver's" only_driver_missing
version() { run "${stub[@]}" "$tag" --version | grep -q '^trident '; }
check "trident --version (stand-in driver)" version
non_root() { [ "$(docker image inspect -f '{{.Config.User}}' "$tag")" = 10001:10001 ]; }
check "runs as uid 10001" non_root
shipped_config() { run "${stub[@]}" "$tag" check-config --no-paths >/dev/null; }
check "check-config accepts the shipped config/models.json" shipped_config
refuses_cuda() {
  local dir out
  dir=$(mktemp -d)
  printf '{"models": {"gpu-chat": {"path": "/app/models", "type": "chat", "port": 8001, "device": "cuda"}}}\n' \
    >"$dir/models.json"
  chmod -R a+rX "$dir"
  if out=$(run "${stub[@]}" -v "$dir:/cfg:ro" "$tag" check-config --gpus --config /cfg/models.json 2>&1); then
    echo "accepted a cuda model without a GPU: $out" >&2; rm -rf "$dir"; return 1
  fi
  rm -rf "$dir"
  echo "$out" | grep -q '"gpu-chat"' || { echo "$out" >&2; return 1; }
}
check "check-config --gpus refuses a cuda model without a GPU" refuses_cuda
log "image size: $(( $(docker image inspect -f '{{.Size}}' "$tag") / 1000000 )) MB"
finish
