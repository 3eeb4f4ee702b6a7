#!/usr/bin/env bash
# End-to-end test of the offline bundle on the real Docker engine (docs: offline/README.md):
#
#  1. trident:slim (scripts/build.sh --skip-models; cached when scripts/e2e-docker.sh ran first)
#  2. `trident bundle keygen`, then `pack --sign --part-size` (images through the Engine API,
#     models as files); timed, peak RSS measured
#  3. `docker rmi` the appliance image; copy the parts to a "site" directory
#  4. one flipped byte: `verify` fails and names the part and the file; restored: it passes
#     (and its MB/s against sha256sum on the same parts)
#  5. `load` with the public key, in a network namespace with no interfaces (`unshare -n`),
#     timed; a rerun writes and loads nothing
#  6. `./scripts/deploy.sh start` on a compose network with `internal: true` (no way out);
#     chat, embeddings and rerank answer on :8000 inside the appliance's network namespace
#  7. `bundle inventory` → a delta with one changed file → `pack --base` → loads on top
#  8. `./scripts/deploy.sh clean --force`
#
# The last lines are "e2e-offline: N passed, M failed" and the figures.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
t_begin=$SECONDS
passed=0
export COMPOSE_PROJECT_NAME=${E2E_OFFLINE_PROJECT:-trident-offline-e2e}
export PROGRESS=${PROGRESS:-plain}
work=$(mktemp -d "${TMPDIR:-/tmp}/trident-offline-e2e.XXXXXX")
figures=()

step() { printf '\n\033[1m=== %s\033[0m (%ss)\n' "$*" "$((SECONDS - t_begin))"; }
ok() { passed=$((passed + 1)); echo "  ok: $*"; }
fail() {
  echo "  FAILED: $*" >&2
  for c in $(docker ps -aq --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME"); do
    docker logs --tail 40 "$c" >&2 2>&1 || true
  done
  echo "e2e-offline: $passed passed, 1 failed"
  exit 1
}
cleanup() {
  local rc=$?
  if [ -x "$work/site/trident-offline/deploy.sh" ]; then
    (cd "$work/site/trident-offline" && ./scripts/deploy.sh clean --force >/dev/null 2>&1) || true
  fi
  [ "${E2E_KEEP:-0}" = 1 ] || rm -rf "$work"
  exit $rc
}
trap cleanup EXIT

# peak_rss_mb OUTFILE CMD... : runs CMD, stores its peak RSS (MiB) and wall seconds in OUTFILE.
measure() {
  local out=$1; shift
  /usr/bin/time -f '%M %e' -o "$out" "$@"
}
rss_mb() { awk '{printf "%d", $1 / 1024}' "$1"; }
secs() { awk '{print $2}' "$1"; }

# --- tools and the image ---------------------------------------------------------------------
step "docker, base images, trident binary and trident:slim"
docker info >/dev/null 2>&1 || fail "Docker daemon not reachable"
if ! docker compose version >/dev/null 2>&1 || ! docker buildx version >/dev/null 2>&1; then
  if cfg=$(tests/docker/cli-plugins.sh); then export DOCKER_CONFIG=$cfg; fi
fi
[ -x /usr/bin/time ] || { apt-get install -y -qq time >/dev/null 2>&1 || fail "GNU time is needed (apt-get install time)"; }
tests/docker/base-images.sh >/dev/null || fail "base images"
QUIET=1 scripts/fetch-models.sh || fail "scripts/fetch-models.sh"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/trident/target}
# The test build's binary (scripts/test.sh built it already: `cargo test` unifies the
# dev-dependencies' features, so a plain `cargo build` would recompile most crates);
# E2E_RELEASE=1 for figures.
if [ "${E2E_RELEASE:-0}" = 1 ]; then
  cargo build --release --quiet --bin trident || fail "cargo build --release"
  bin=$CARGO_TARGET_DIR/release/trident
else
  cargo test --quiet --no-run --test bundle 2>/dev/null || fail "cargo test --no-run"
  bin=$CARGO_TARGET_DIR/debug/trident
fi
if ! docker image inspect trident:slim >/dev/null 2>&1; then
  scripts/build.sh --skip-models --tag trident:slim >"$work/build.log" 2>&1 \
    || { tail -n 40 "$work/build.log"; fail "scripts/build.sh --skip-models"; }
fi
slim_id=$(docker image inspect -f '{{.Id}}' trident:slim)
ok "trident:slim present ($slim_id)"

# --- pack ------------------------------------------------------------------------------------
step "trident bundle keygen + pack --sign --part-size 64MiB"
"$bin" bundle keygen --output "$work/site-key" >/dev/null
measure "$work/pack.time" "$bin" bundle pack --tag e2e --output "$work/dist" --sign "$work/site-key.key" \
  --part-size 64MiB --no-extra-images --json >"$work/pack.json" 2>"$work/pack.log" \
  || { cat "$work/pack.log"; fail "bundle pack"; }
python3 - "$work/pack.json" <<'PY' || fail "pack result"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["result"] == "ok" and r["signed"] and len(r["parts"]) >= 2, r
assert all(":" not in p["name"] for p in r["parts"]), r
PY
grep -q '"event":"phase_done","phase":"export"' "$work/pack.log" || fail "no JSON progress events for the export"
bundle_mb=$(python3 -c "import json,sys; print(round(json.load(open(sys.argv[1]))['size']/1e6, 1))" "$work/pack.json")
figures+=("pack: ${bundle_mb} MB in $(ls "$work"/dist/*.tar.gz.0* | wc -l) parts, $(secs "$work/pack.time") s, peak RSS $(rss_mb "$work/pack.time") MiB")
ok "packed $bundle_mb MB, signed, split, JSON progress"
measure "$work/pack-nomodels.time" "$bin" bundle pack --tag e2e-nomodels --output "$work/dist-nomodels" \
  --skip-models --no-extra-images --json >"$work/pack-nomodels.json" 2>/dev/null || fail "bundle pack --skip-models"
nomodels_mb=$(python3 -c "import json,sys; print(round(json.load(open(sys.argv[1]))['size']/1e6, 1))" "$work/pack-nomodels.json")
figures+=("pack --skip-models: ${nomodels_mb} MB, $(secs "$work/pack-nomodels.time") s")
rm -rf "$work/dist-nomodels"
ok "without models: $nomodels_mb MB"
"$bin" bundle inspect "$work/dist/trident-offline-e2e-amd64.tar.gz.sha256" >"$work/inspect.txt" || fail "inspect"
grep -q 'trident:slim' "$work/inspect.txt" && grep -q 'models/embedding' "$work/inspect.txt" || { cat "$work/inspect.txt"; fail "inspect lists no image or model"; }
ok "inspect shows the image and the models"

# --- the target: no appliance image, the parts copied ------------------------------------------
step "docker rmi trident:slim; copy the bundle to the site"
docker image rm -f trident:slim >/dev/null
docker image inspect "$slim_id" >/dev/null 2>&1 && docker image rm -f "$slim_id" >/dev/null 2>&1 || true
docker image inspect trident:slim >/dev/null 2>&1 && fail "trident:slim still present"
mkdir -p "$work/site/incoming"
cp "$work"/dist/trident-offline-e2e-* "$work/site/incoming/"
cp "$work/site-key.pub" "$work/site/"
rm -rf "$work/dist"
sidecar=$work/site/incoming/trident-offline-e2e-amd64.tar.gz.sha256
ok "appliance image removed; $(ls "$work/site/incoming" | wc -l) files copied"

step "a flipped byte: verify names the part and the file"
part1=$(ls "$work"/site/incoming/*.tar.gz.001)
python3 - "$part1" <<'PY'
import sys
p = sys.argv[1]
with open(p, "r+b") as f:
    f.seek(5_000_000); b = f.read(1); f.seek(5_000_000); f.write(bytes([b[0] ^ 0x20]))
PY
if "$bin" bundle verify --key "$work/site/site-key.pub" "$sidecar" >"$work/verify-bad.txt" 2>&1; then
  fail "verify passed a damaged bundle"
fi
grep -q "part $(basename "$part1")" "$work/verify-bad.txt" || { cat "$work/verify-bad.txt"; fail "verify did not name the part"; }
grep -Eq "'(models|images|bin)/[^']+': sha256" "$work/verify-bad.txt" || { cat "$work/verify-bad.txt"; fail "verify did not name the file"; }
ok "verify failed: $(grep -m1 -o "part [^:]*" "$work/verify-bad.txt"), $(grep -m1 -Eo "'[^']+': sha256" "$work/verify-bad.txt")"
python3 - "$part1" <<'PY'
import sys
p = sys.argv[1]
with open(p, "r+b") as f:
    f.seek(5_000_000); b = f.read(1); f.seek(5_000_000); f.write(bytes([b[0] ^ 0x20]))
PY
measure "$work/verify.time" "$bin" bundle verify --key "$work/site/site-key.pub" "$sidecar" >"$work/verify.txt" \
  || { cat "$work/verify.txt"; fail "verify of the restored bundle"; }
grep -q 'result     OK' "$work/verify.txt" && grep -q '(the key given)' "$work/verify.txt" || { cat "$work/verify.txt"; fail "receipt"; }
(cd "$work/site/incoming" && measure "$work/sha.time" sha256sum -c --quiet "$(basename "$sidecar")") \
  || fail "sha256sum -c on the sidecar"
bytes=$(cat "$work"/site/incoming/*.tar.gz.0* | wc -c)
mbs() { awk -v b="$bytes" -v s="$(secs "$1")" 'BEGIN {printf "%.0f", b / 1e6 / (s > 0 ? s : 0.01)}'; }
v_mbs=$(mbs "$work/verify.time") s_mbs=$(mbs "$work/sha.time")
figures+=("verify: $(secs "$work/verify.time") s, ${v_mbs} MB/s vs sha256sum ${s_mbs} MB/s on the same parts ($(awk -v a="$v_mbs" -v b="$s_mbs" 'BEGIN {printf "%.2f", a / b}')x), peak RSS $(rss_mb "$work/verify.time") MiB")
ok "restored bundle verifies with the pinned key"

# --- load, with no network ---------------------------------------------------------------------
step "bundle load --key, in a network namespace without interfaces"
cd "$work/site"
measure "$work/load.time" unshare -n "$bin" bundle load --key site-key.pub --target trident-offline "$sidecar" \
  >"$work/load.txt" 2>&1 || { cat "$work/load.txt"; fail "bundle load"; }
cat "$work/load.txt" | tail -3
[ "$(docker image inspect -f '{{.Id}}' trident:slim 2>/dev/null)" = "$slim_id" ] || fail "trident:slim not loaded with its recorded id"
[ -x trident-offline/scripts/deploy.sh ] && [ -f trident-offline/models/embedding/model.safetensors ] || fail "bundle not extracted"
[ -z "$(ls -a | grep partial || true)" ] || fail "staging directory left behind"
figures+=("load: $(secs "$work/load.time") s, peak RSS $(rss_mb "$work/load.time") MiB")
ok "loaded: trident:slim is $slim_id again, files in place"
unshare -n "$bin" bundle load --json --key site-key.pub --target trident-offline "$sidecar" >"$work/load2.json" 2>/dev/null || fail "second load"
python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['load']; assert r['files_written']==0 and r['images_loaded']==[] and r['files_already_present']>10, r" "$work/load2.json" \
  || fail "rerun of load was not a no-op: $(cat "$work/load2.json")"
ok "a rerun writes nothing and loads nothing"

# --- start with no route out -------------------------------------------------------------------
step "./scripts/deploy.sh start on an internal network"
cd "$work/site/trident-offline"
cat >"$work/site/internal.yaml" <<'YAML'
networks:
  default:
    internal: true
YAML
export TRIDENT_COMPOSE_OVERRIDES=$work/site/internal.yaml TRIDENT_HTTP_PORT=${E2E_OFFLINE_PORT:-18000}
./scripts/deploy.sh start --no-wait >"$work/start.txt" 2>&1 || { cat "$work/start.txt"; fail "deploy.sh start"; }
cid=$(docker ps -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" --filter "label=com.docker.compose.service=trident")
[ -n "$cid" ] || fail "no trident container"
net=$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}' "$cid" | awk '{print $1}')
[ "$(docker network inspect -f '{{.Internal}}' "$net")" = true ] || fail "network $net is not internal"
pid=$(docker inspect -f '{{.State.Pid}}' "$cid")
in_app() { nsenter -t "$pid" -n "$@"; }
ok "appliance on network $net, which Docker keeps internal (no traffic in or out of the host)"
t0=$SECONDS
until [ "$(in_app curl -s -o /dev/null -w '%{http_code}' -m 5 http://127.0.0.1:8000/ready)" = 200 ]; do
  (( SECONDS - t0 > 300 )) && { in_app curl -s -m 5 http://127.0.0.1:8000/ready || true; fail "not ready after 300 s"; }
  [ "$(docker inspect -f '{{.State.Status}}' "$cid")" = running ] || fail "container $(docker inspect -f '{{.State.Status}}' "$cid")"
  sleep 0.5
done
figures+=("start to ready: $((SECONDS - t0)) s")
ok "ready in $((SECONDS - t0)) s"
key_args=()
k=$(./scripts/deploy.sh key 2>/dev/null) || k=""
[ -n "$k" ] && key_args=(-H "authorization: Bearer $k")
post() { in_app curl -sS --fail-with-body -m 120 "${key_args[@]}" -H 'content-type: application/json' -d "$2" "http://127.0.0.1:8000$1"; }
post /v1/chat/completions '{"model":"chat","messages":[{"role":"user","content":"Say hello."}],"max_tokens":8,"temperature":0}' >"$work/chat.json" \
  || fail "chat: $(cat "$work/chat.json")"
python3 -c "import json,sys; r=json.load(open(sys.argv[1])); assert r['choices'][0]['message']['content'] and r['usage']['completion_tokens']>=1, r" "$work/chat.json" || fail "chat answer"
ok "chat answers: $(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['choices'][0]['message']['content'][:40])" "$work/chat.json")"
post /v1/embeddings '{"model":"embedding","input":["The cat sits on the mat."]}' >"$work/emb.json" || fail "embeddings: $(cat "$work/emb.json")"
python3 -c "import json,sys; r=json.load(open(sys.argv[1])); assert len(r['data'][0]['embedding'])==384, r" "$work/emb.json" || fail "embedding answer"
ok "embeddings answer (384 dimensions)"
post /v1/rerank '{"model":"rerank","query":"capital of France","documents":["Bananas are yellow.","Paris is the capital of France."]}' >"$work/rr.json" \
  || fail "rerank: $(cat "$work/rr.json")"
python3 -c "import json,sys; r=json.load(open(sys.argv[1])); assert r['results'][0]['index']==1, r" "$work/rr.json" || fail "rerank order"
ok "rerank answers (the relevant document first)"

# --- a delta on top ------------------------------------------------------------------------------
step "bundle inventory → pack --base (one changed file) → load on top"
"$bin" bundle inventory --target "$work/site/trident-offline" >"$work/inv.json" || fail "inventory"
src=$work/src
mkdir -p "$src/scripts"
for f in config compose compose.yaml monitoring offline deploy.sh .env.example docker; do cp -r "$root/$f" "$src/"; done
cp -r "$root/scripts/lib" "$src/scripts/"
ln -s "$root/models" "$src/models"
echo "Site note: updated by a delta bundle." >>"$src/offline/README.md"
(cd "$work" && "$bin" bundle pack --root "$src" --tag e2e-delta --output "$work/delta" --base "$work/inv.json" \
   --sign "$work/site-key.key" --no-extra-images --json >"$work/delta.json" 2>"$work/delta.log") \
  || { cat "$work/delta.log"; fail "pack --base"; }
python3 -c "import json,sys; r=json.load(open(sys.argv[1])); assert r['delta'] and r['files']==1 and r['size']<200000, r" "$work/delta.json" \
  || fail "the delta carries more than the changed file: $(cat "$work/delta.json")"
delta_kb=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['size']//1000)" "$work/delta.json")
(cd "$work/site" && unshare -n "$bin" bundle load --key site-key.pub --target trident-offline \
   "$work/delta/trident-offline-e2e-delta-amd64.tar.gz" --json >"$work/delta-load.json" 2>/dev/null) || fail "loading the delta"
python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['load']; assert r['files_written']==1, r" "$work/delta-load.json" || fail "delta load: $(cat "$work/delta-load.json")"
grep -q "updated by a delta bundle" "$work/site/trident-offline/README.md" || fail "the changed file was not placed"
(cd "$work/site/trident-offline" && sha256sum -c --quiet SHA256SUMS) || fail "installed files no longer match SHA256SUMS"
figures+=("delta with one changed file: ${delta_kb} kB")
ok "delta (${delta_kb} kB, 1 file) loaded on top; SHA256SUMS holds"

# --- clean -----------------------------------------------------------------------------------------
step "./scripts/deploy.sh clean --force"
./scripts/deploy.sh clean --force >/dev/null 2>&1 || fail "deploy.sh clean --force"
[ -z "$(docker ps -aq --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME")" ] || fail "containers left"
ok "clean"

echo
echo "e2e-offline: $passed passed, 0 failed"
printf 'e2e-offline figures: %s\n' "${figures[@]}"
echo "e2e-offline: duration $((SECONDS - t_begin)) s"
