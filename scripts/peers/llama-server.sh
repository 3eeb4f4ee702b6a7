#!/usr/bin/env bash
# llama.cpp's own HTTP server (continuous batching) as the peer for trident's chat engine.
# Built once from the llama.cpp sources vendored in the llama-cpp-python sdist (pinned
# version and sha256; cmake and ninja from PyPI in a private venv; no other network) into
#   ${TRIDENT_PEERS_HOME:-$HOME/.cache/trident/peers}/llama-server-$VERSION/llama-server
# A second call finds the binary and does nothing.
#
#   scripts/peers/llama-server.sh build
#       builds if needed (~6 min on 2 cores) and prints the binary's path
#   scripts/peers/llama-server.sh start PORT FILE.gguf [extra llama-server flags…]
#       builds if needed, starts `llama-server --parallel $PARALLEL --cont-batching` with
#       $THREADS threads (default 2) and a context of $CTX tokens (default 32768, shared by
#       the slots), waits for /health and prints its pid (stop it with: kill PID);
#       the server's log goes to $LLAMA_SERVER_LOG (default /tmp/llama-server-PORT.log);
#       REPACK=1 turns weight repacking back on (see below)
set -euo pipefail
VERSION=0.3.36
SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
HOME_DIR=${TRIDENT_PEERS_HOME:-$HOME/.cache/trident/peers}
DIR=$HOME_DIR/llama-server-$VERSION
BIN=$DIR/llama-server

say() { echo "llama-server.sh: $*" >&2; }

build() {
  [ -x "$BIN" ] && return 0
  mkdir -p "$HOME_DIR/dl"
  local sdist=$HOME_DIR/dl/llama_cpp_python-$VERSION.tar.gz
  if [ ! -f "$sdist" ]; then
    say "downloading the llama-cpp-python $VERSION sdist (77 MB) from PyPI"
    # --no-binary for this package only: its build tools may come as wheels.
    python3 -m pip download -q --no-deps --no-binary llama-cpp-python \
      "llama-cpp-python==$VERSION" -d "$HOME_DIR/dl" >&2
  fi
  echo "$SHA256  $sdist" | sha256sum -c --quiet - >&2 || { say "sha256 mismatch: $sdist"; exit 1; }
  local tools=$HOME_DIR/build-tools
  if [ ! -x "$tools/bin/cmake" ] || [ ! -x "$tools/bin/ninja" ]; then
    say "installing cmake and ninja into $tools"
    python3 -m venv "$tools"
    "$tools/bin/pip" install -q cmake ninja >&2
  fi
  local src=$HOME_DIR/src-$VERSION
  if [ ! -d "$src/vendor/llama.cpp/tools/server" ]; then
    say "unpacking the sdist"
    rm -rf "$src" "$src.tmp" && mkdir -p "$src.tmp"
    tar -xzf "$sdist" -C "$src.tmp" --strip-components=1
    mv "$src.tmp" "$src"
  fi
  say "configuring llama.cpp (vendored in llama-cpp-python $VERSION)"
  PATH=$tools/bin:$PATH cmake -S "$src/vendor/llama.cpp" -B "$src/build" -G Ninja \
    -DGGML_NATIVE=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF -DCMAKE_BUILD_TYPE=Release >"$src/configure.log" 2>&1 \
    || { tail -20 "$src/configure.log" >&2; exit 1; }
  say "building llama-server with ${BUILD_JOBS:-2} jobs (~6 min on 2 cores; ninja prints [done/total])"
  PATH=$tools/bin:$PATH cmake --build "$src/build" --target llama-server -j "${BUILD_JOBS:-2}" >&2
  mkdir -p "$DIR"
  cp "$src/build/bin/llama-server" "$BIN.tmp" && mv "$BIN.tmp" "$BIN"
  say "built $BIN"
}

start() {
  local port=${1:?PORT} gguf=${2:?FILE.gguf}
  shift 2
  build
  local log=${LLAMA_SERVER_LOG:-/tmp/llama-server-$port.log}
  # Weight repacking is off unless REPACK=1: on a CPU with AMX, GGML_NATIVE builds the AMX
  # kernels, which are the only repack for Q4_1, and they crash with SIGSEGV in
  # ggml_backend_amx_mul_mat where the kernel does not grant AMX tile state (seen on the
  # project's shared build machines). Without repacking the plain AVX kernels run.
  local repack=--no-repack
  [ "${REPACK:-0}" = 1 ] && repack=--repack
  "$BIN" -m "$gguf" --host 127.0.0.1 --port "$port" -t "${THREADS:-2}" -tb "${THREADS:-2}" \
    --parallel "${PARALLEL:-16}" -c "${CTX:-32768}" --cont-batching --no-webui "$repack" "$@" \
    >"$log" 2>&1 &
  local pid=$!
  for _ in $(seq 600); do
    if curl -sf "http://127.0.0.1:$port/health" >/dev/null; then
      echo "$pid"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill "$pid" 2>/dev/null || true
  say "llama-server not ready on :$port (log: $log)"
  tail -5 "$log" >&2
  exit 1
}

case "${1:-}" in
  build) build && echo "$BIN" ;;
  start) shift && start "$@" ;;
  *) sed -n "2,15p" "$0" >&2 && exit 2 ;;
esac
