#!/usr/bin/env bash
# Makes `docker compose` (v2) and `docker buildx` (BuildKit) available to the e2e test on a
# host that only has Debian bookworm's docker.io + docker-compose v1 (bookworm ships neither
# plugin). Debian trixie packages both as static binaries (docker-compose 2.x, docker-buildx);
# they are fetched with apt-get against a private sources list and state directory (the
# system's apt configuration is not touched), unpacked with dpkg -x, and exposed through a
# private DOCKER_CONFIG/cli-plugins directory. Prints the DOCKER_CONFIG to use; prints
# nothing and exits 1 when the plugins cannot be had (callers then fall back to compose v1
# and the engine's builtin BuildKit client).
set -euo pipefail
cache=${TRIDENT_CACHE:-$HOME/.cache/trident}/docker/plugins
cfg="$cache/config"
if [ -x "$cfg/cli-plugins/docker-compose" ] && [ -x "$cfg/cli-plugins/docker-buildx" ]; then
  echo "$cfg"; exit 0
fi
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
apt="$cache/apt"
mkdir -p "$apt/lists/partial" "$apt/archives/partial" "$cfg/cli-plugins"
echo "deb $mirror trixie main" >"$apt/sources.list"
opts=(-o "Dir::Etc::sourcelist=$apt/sources.list" -o Dir::Etc::sourceparts=/dev/null
      -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache::archives=$apt/archives"
      -o APT::Sandbox::User=root -qq)
apt-get "${opts[@]}" update >&2 || exit 1
(cd "$apt" && apt-get "${opts[@]}" download docker-compose docker-buildx >&2) || exit 1
for deb in "$apt"/docker-compose_2*.deb "$apt"/docker-buildx_*.deb; do
  [ -f "$deb" ] || exit 1
  x=$(mktemp -d "$apt/x.XXXXXX")
  dpkg -x "$deb" "$x"
  cp "$x"/usr/libexec/docker/cli-plugins/* "$cfg/cli-plugins/"
  rm -rf "$x"
done
# A v1-era ~/.docker/config.json may name credential helpers; the private config has none.
[ -f "$cfg/config.json" ] || echo '{}' >"$cfg/config.json"
echo "$cfg"
