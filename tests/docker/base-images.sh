#!/usr/bin/env bash
# Produces, on an engine that can pull nothing, the base images that docker/Dockerfile,
# compose.yaml and the e2e test name in their FROM/image lines, under exactly those tags:
#
#   debian:bookworm-slim        debootstrap --variant=minbase from Debian's mirror, docker import
#   rust:1.95-slim-bookworm     the above + gcc/libc6-dev + this host's rustup toolchain
#                               (the one rust-toolchain.toml selects; none can be downloaded)
#   nginx:1.27-bookworm         stand-in: Debian's nginx package, laid out like the official image
#   prom/prometheus:v2.53.0     stand-in: Debian's prometheus package, official entrypoint/paths
#
# Images already present are kept (so repeat runs cost nothing). FORCE=1 rebuilds them.
# Tags are read from the environment so they stay in step with compose.yaml / the Dockerfile.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
here="$root/tests/docker"
cache=${TRIDENT_CACHE:-$HOME/.cache/trident}/docker
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_IMAGE=${DEBIAN_IMAGE:-debian:bookworm-slim}
RUST_IMAGE=${RUST_IMAGE:-rust:1.95-slim-bookworm}
NGINX_IMAGE=${NGINX_IMAGE:-nginx:1.27-bookworm}
PROMETHEUS_IMAGE=${PROMETHEUS_IMAGE:-prom/prometheus:v2.53.0}
docker=docker
TRIDENT_ROOT=$root
# shellcheck source=scripts/lib/docker.sh
. "$root/scripts/lib/docker.sh"
docker_build_cmd

log() { echo "base-images: $*" >&2; }
have() { [ "${FORCE:-0}" != 1 ] && $docker image inspect "$1" >/dev/null 2>&1; }

mkdir -p "$cache"

# --- debian:bookworm-slim --------------------------------------------------------------
if have "$DEBIAN_IMAGE"; then
  log "$DEBIAN_IMAGE present"
else
  tarball="$cache/bookworm-minbase.tar"
  if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null || {
      log "installing debootstrap"; apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
    rootfs=$(mktemp -d "$cache/rootfs.XXXXXX")
    trap 'rm -rf "$rootfs"' EXIT
    log "debootstrap bookworm (minbase) from $mirror"
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 \
      || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
    # Slim it the way the official -slim images are: no docs, man pages, apt lists or caches,
    # and dpkg told to keep it that way for later installs.
    rm -rf "$rootfs"/usr/share/{doc,man,info}/* "$rootfs"/var/lib/apt/lists/* \
      "$rootfs"/var/cache/apt/* "$rootfs"/var/log/*.log "$rootfs"/var/cache/debconf/*-old
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
CFG
    cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
APT::Install-Recommends "false";
CFG
    printf 'deb %s bookworm main\ndeb %s bookworm-updates main\n' "$mirror" "$mirror" \
      >"$rootfs/etc/apt/sources.list"
    tar -C "$rootfs" --numeric-owner -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"; trap - EXIT
  fi
  log "importing $tarball as $DEBIAN_IMAGE"
  $docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'CMD ["bash"]' "$tarball" "$DEBIAN_IMAGE" >/dev/null
fi

# --- rust:1.95-slim-bookworm -------------------------------------------------------------
if have "$RUST_IMAGE"; then
  log "$RUST_IMAGE present"
else
  rustc_path=$(cd "$root" && rustup which rustc)
  toolchain=$(readlink -f "$(dirname "$rustc_path")/..")
  want=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$root/rust-toolchain.toml")
  got=$("$toolchain/bin/rustc" -V | cut -d' ' -f2)
  [ "$got" = "$want" ] || { log "host toolchain is $got, rust-toolchain.toml wants $want"; exit 1; }
  ctx=$(mktemp -d "$cache/rustctx.XXXXXX")
  trap 'rm -rf "$ctx"' EXIT
  # Hard links where possible (same filesystem), copies otherwise; the docs are left out.
  mkdir -p "$ctx/toolchain"
  for d in bin lib libexec etc; do
    [ -e "$toolchain/$d" ] || continue
    cp -al "$toolchain/$d" "$ctx/toolchain/" 2>/dev/null || cp -a "$toolchain/$d" "$ctx/toolchain/"
  done
  cp "$(command -v rustup)" "$ctx/rustup"
  log "building $RUST_IMAGE from $DEBIAN_IMAGE + host toolchain $got ($toolchain)"
  "${DOCKER_BUILD[@]}" -q -f "$here/rust.Dockerfile" --build-arg "BASE=$DEBIAN_IMAGE" \
    --build-arg "RUST_VERSION=$got" -t "$RUST_IMAGE" "$ctx" >/dev/null
  rm -rf "$ctx"; trap - EXIT
fi

# --- stand-ins for images the compose profiles use ----------------------------------------
standin() { # tag dockerfile
  if have "$1"; then log "$1 present"; return; fi
  log "building stand-in $1 from Debian packages"
  "${DOCKER_BUILD[@]}" -q -f "$here/$2" --build-arg "BASE=$DEBIAN_IMAGE" -t "$1" "$here" >/dev/null
}
[ "${WITH_STANDINS:-1}" = 1 ] && {
  standin "$NGINX_IMAGE" nginx.Dockerfile
  standin "$PROMETHEUS_IMAGE" prometheus.Dockerfile
}
log "done"
