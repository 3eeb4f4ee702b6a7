#!/usr/bin/env bash
# Runs the appliance from source on the default models: fetches the weights (cached under
# ~/.cache/trident), builds the release binary and serves the gateway on :8000.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/trident/target}
scripts/fetch-models.sh
cargo build --release --quiet
exec "$CARGO_TARGET_DIR/release/trident" serve --config config/models.json "$@"
