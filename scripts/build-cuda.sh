#!/usr/bin/env bash
# Builds the CUDA binary (`cargo build --release --features cuda`) on a machine without a GPU
# and checks that it links and starts:
#
#   scripts/build-cuda.sh [--clippy] [--out FILE]
#
# The toolchain comes from scripts/cuda-toolchain.sh (cached under ~/.cache/trident/cuda).
# CUDA_COMPUTE_CAP defaults to 90 (H100/H200); CARGO_TARGET_DIR defaults to
# ~/.cache/trident/target-cuda so the CPU build's target directory is left alone.
# Checks: the binary needs libcuda.so.1 (a real NEEDED entry, not dropped by --as-needed),
# `trident --version` runs against the stand-in driver, and `check-config` refuses a `cuda`
# model on this GPU-less machine with a message naming it. Ends with
# "build-cuda: N passed, M failed" (counted by .ci/run).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
clippy=0 out=
while [ $# -gt 0 ]; do
  case $1 in
    --clippy) clippy=1 ;;
    --out) out=${2:?--out needs a file}; shift ;;
    -h|--help) sed -n '2,13s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "build-cuda.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
  shift
done

cuda_env=$("$root/scripts/cuda-toolchain.sh" --env)
eval "$cuda_env"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${TRIDENT_CACHE:-$HOME/.cache/trident}/target-cuda}
cd "$root"

passed=0 failed=0
check() { # name command… : one counted check
  local name=$1; shift
  if "$@"; then passed=$((passed + 1)); echo "build-cuda: ok   $name"
  else failed=$((failed + 1)); echo "build-cuda: FAIL $name"; fi
}

start=$(date +%s)
check "cargo build --release --features cuda (sm_$CUDA_COMPUTE_CAP)" \
  cargo build --locked --release --features cuda --bin trident
echo "build-cuda: build took $(( $(date +%s) - start ))s"
if [ $clippy = 1 ]; then
  check "cargo clippy --features cuda" \
    cargo clippy --locked --release --features cuda --all-targets -- -D warnings
fi

bin=$CARGO_TARGET_DIR/release/trident
if [ -x "$bin" ]; then
  needs_libcuda() { readelf -d "$bin" | grep -q 'NEEDED.*\[libcuda\.so\.1\]'; }
  check "binary needs libcuda.so.1" needs_libcuda
  stub_ld="$CUDA_ROOT/lib/stubs:$CUDA_ROOT/lib"
  runs() { LD_LIBRARY_PATH=$stub_ld "$bin" --version | grep -q '^trident '; }
  check "trident --version with the stand-in driver" runs
  refuses_cuda() {
    local dir msg
    dir=$(mktemp -d)
    mkdir "$dir/m"
    printf '{"models": {"gpu-chat": {"path": "%s/m", "type": "chat", "port": 18431, "device": "cuda"}}}\n' \
      "$dir" >"$dir/models.json"
    msg=$(LD_LIBRARY_PATH=$stub_ld "$bin" check-config --gpus --config "$dir/models.json" 2>&1) && {
      echo "check-config accepted a cuda model without a GPU" >&2; rm -rf "$dir"; return 1; }
    rm -rf "$dir"
    echo "$msg" | grep -q 'gpu-chat' || { echo "$msg" >&2; return 1; }
  }
  check "check-config refuses a cuda model on a GPU-less machine" refuses_cuda
  if [ -n "$out" ]; then install -D -m 0755 "$bin" "$out"; fi
fi
echo "build-cuda: $passed passed, $failed failed"
[ $failed = 0 ]
