#!/usr/bin/env bash
# Runs the appliance from source on the default models: fetches the weights (cached under
# ~/.cache/trident), builds the release binary and serves the gateway on 127.0.0.1:8000
# (TRIDENT_HOST=0.0.0.0 needs an API key, e.g. `scripts/run.sh --api-key KEY`).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/trident/target}
scripts/fetch-models.sh
cargo build --release --quiet
export TRIDENT_HOST=${TRIDENT_HOST:-127.0.0.1}
exec "$CARGO_TARGET_DIR/release/trident" serve --config config/models.json "$@"
