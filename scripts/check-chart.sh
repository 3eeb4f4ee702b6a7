#!/usr/bin/env bash
# The Helm chart (charts/trident, docs/KUBERNETES.md) checked offline: rendered with a
# Helm-subset renderer (charts/tools/render: Go text/template + sprig v3, built from Debian's
# Go packages; no helm binary exists here), every manifest validated with kubernetes-validate
# (strict, Kubernetes 1.31 and 1.37), and the values -> manifests mapping asserted by
# charts/tests/check_chart.py against trident's own sources. Also fails when the chart's
# copy of the Grafana dashboards or charts/trident/rendered/trident.yaml is stale.
#
#   scripts/check-chart.sh            # check; last line `check-chart: N passed, M failed`
#   scripts/check-chart.sh --write    # regenerate the dashboards copy, rendered/ and appVersion, then check
#
# Needs golang-go, golang-github-masterminds-sprig-dev and golang-gopkg-yaml.v2-dev (installed
# with apt-get when missing and running as root) and python3 with venv (kubernetes-validate
# from PyPI into a cached venv). Caches under ${TRIDENT_CACHE:-~/.cache/trident}.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${TRIDENT_CACHE:-$HOME/.cache/trident}
kv_version=1.37.0
write=()
case "${1:-}" in
  --write) write=(--write) ;;
  "") ;;
  *) echo "usage: $0 [--write]" >&2; exit 2 ;;
esac

fail() { echo "check-chart: $*" >&2; echo "check-chart: 0 passed, 1 failed"; exit 1; }

gopath=/usr/share/gocode
pkgs=()
command -v go >/dev/null 2>&1 || pkgs+=(golang-go)
[ -d "$gopath/src/github.com/Masterminds/sprig" ] || pkgs+=(golang-github-masterminds-sprig-dev)
[ -d "$gopath/src/gopkg.in/yaml.v2" ] || pkgs+=(golang-gopkg-yaml.v2-dev)
[ -x "$cache/k8s-venv/bin/python" ] || python3 -c 'import ensurepip' 2>/dev/null || pkgs+=(python3-venv)
if [ ${#pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}"; } >/dev/null \
      || fail "apt-get install ${pkgs[*]} failed"
  else
    fail "missing ${pkgs[*]} (install them with apt-get as root)"
  fi
fi

# The renderer, rebuilt only when its source changes (GOPATH mode: Debian's packages, offline).
src="$root/charts/tools/render/main.go"
hash=$( { sha256sum "$src"; go version; } | sha256sum | cut -c1-16)
render="$cache/chart-render/render-$hash"
if [ ! -x "$render" ]; then
  mkdir -p "$cache/chart-render"
  rm -f "$cache"/chart-render/render-*
  (cd "$root/charts/tools/render" && GOPATH=$gopath GO111MODULE=off GOFLAGS= \
     GOCACHE="$cache/chart-render/gocache" go build -o "$render.tmp" .) || fail "renderer build failed"
  mv "$render.tmp" "$render"
fi

venv="$cache/k8s-venv"
if ! "$venv/bin/python" -c "import kubernetes_validate.version as v, sys; sys.exit(v.__version__ != '$kv_version')" 2>/dev/null; then
  python3 -m venv "$venv" || fail "python3 -m venv failed"
  "$venv/bin/pip" install -q "kubernetes-validate==$kv_version" || fail "pip install kubernetes-validate==$kv_version failed"
fi

exec "$venv/bin/python" "$root/charts/tests/check_chart.py" --root "$root" --renderer "$render" "${write[@]}"
