#!/usr/bin/env bash
# Loads the bundle's container images into Docker without the trident binary (the bundle's
# own `bin/trident bundle load` does the same and more). Run from the extracted bundle:
#
#   tar -xzf trident-offline-*.tar.gz && cd trident-offline && ./scripts/load_images.sh
#
# 1. checks the sha256 of every file against SHA256SUMS (fails on the first bad file, naming it)
# 2. `docker load`s each image listed in images/IMAGES that is not already present
# 3. confirms each reference by tag: it must point at the config digest the bundle recorded
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
die() { echo "load_images.sh: $*" >&2; exit 1; }
say() { echo "==> $*" >&2; }

command -v docker >/dev/null 2>&1 || die "the docker CLI is not installed"
docker info >/dev/null 2>&1 || die "the Docker daemon is not reachable (is it running? are you in the docker group?)"
[ -f SHA256SUMS ] && [ -f images/IMAGES ] || die "run this from an extracted trident-offline bundle (SHA256SUMS, images/IMAGES)"

say "checking the sha256 of $(wc -l <SHA256SUMS) files (SHA256SUMS)"
if ! sha256sum --quiet --strict -c SHA256SUMS; then
  die "some files do not match SHA256SUMS (listed above): the bundle is damaged; copy it again"
fi

while read -r ref id file role; do
  [ -n "${ref:-}" ] || continue
  have=$(docker image inspect -f '{{.Id}}' "$ref" 2>/dev/null || true)
  if [ "$have" = "$id" ]; then
    say "$ref already loaded"
    continue
  fi
  if [ "$file" = "-" ]; then
    # A delta bundle leaves this image to the target: it must be here under some name.
    docker image inspect "$id" >/dev/null 2>&1 \
      || die "$ref ($id) is not in this delta bundle and not on this machine: load the full bundle first"
  else
    say "loading $ref from $file ($(du -h "$file" | cut -f1))"
    docker load -i "$file" >/dev/null
  fi
  have=$(docker image inspect -f '{{.Id}}' "$ref" 2>/dev/null || true)
  if [ "$have" != "$id" ]; then
    docker tag "$id" "$ref" 2>/dev/null || true
    have=$(docker image inspect -f '{{.Id}}' "$ref" 2>/dev/null || true)
  fi
  [ "$have" = "$id" ] || die "$ref points at '${have:-nothing}' after loading, expected $id"
  say "loaded $ref ($role)"
done <images/IMAGES
say "all images present; next: ./scripts/deploy.sh start"
