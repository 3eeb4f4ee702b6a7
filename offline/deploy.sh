#!/usr/bin/env bash
# The appliance's ./deploy.sh, run with what this bundle carries: its image (from
# images/IMAGES), its models directory (mounted at /app/models) and its trident binary (for
# `status`, `logs` and the readiness wait). Every command and flag of ./deploy.sh works:
#
#   ./scripts/deploy.sh start [--monitoring] [--nginx]   (never pulls: nothing is needed online)
#   ./scripts/deploy.sh status | logs | stop | clean --force
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
app=$(awk '$4 == "appliance" { print $1; exit }' "$here/images/IMAGES" 2>/dev/null || true)
[ -n "$app" ] || { echo "deploy.sh: images/IMAGES names no appliance image; is this a trident-offline bundle?" >&2; exit 1; }
export TRIDENT_IMAGE=${TRIDENT_IMAGE:-$app}
if [ -d "$here/models" ]; then
  export TRIDENT_MODELS_DIR=${TRIDENT_MODELS_DIR:-$here/models}
fi
if [ -z "${TRIDENT_BIN:-}" ] && [ -x "$here/bin/trident" ] && "$here/bin/trident" --version >/dev/null 2>&1; then
  export TRIDENT_BIN=$here/bin/trident
fi
exec "$here/deploy.sh" "$@"
