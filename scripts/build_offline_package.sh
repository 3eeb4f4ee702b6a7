#!/usr/bin/env bash
# Builds the offline bundle for air-gapped servers (offline/README.md): the slim image, the
# release binary, then `trident bundle pack`.
#
#   scripts/build_offline_package.sh [--version V] [--output DIR] [any `trident bundle pack` flag…]
#   e.g. scripts/build_offline_package.sh --version 1.0 --output dist --sign vendor.key --part-size 2GiB
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
version="" output=dist pass=()
while [ $# -gt 0 ]; do
  case $1 in
    --version) version=${2:?--version needs a value}; shift ;;
    --output) output=${2:?--output needs a value}; shift ;;
    -h|--help) sed -n '2,6s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) pass+=("$1") ;;
  esac
  shift
done
step() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/trident/target}
step "models (scripts/fetch-models.sh)"
scripts/fetch-models.sh
step "release binary"
cargo build --release --bin trident
step "image trident:slim (scripts/build.sh --skip-models)"
scripts/build.sh --skip-models --tag trident:slim
step "trident bundle pack"
args=(--output "$output")
[ -n "$version" ] && args+=(--tag "$version")
exec "$CARGO_TARGET_DIR/release/trident" bundle pack "${args[@]}" "${pass[@]}"
