#!/usr/bin/env bash
# Runs every cargo-fuzz target of tests/fuzz for a bounded time (docs/ARCHITECTURE.md,
# "Fuzz targets"): scripts/fuzz.sh [SECONDS_PER_TARGET] (default 60).
#
# Needs a nightly toolchain (libFuzzer's coverage instrumentation); without one it says so
# and skips. cargo-fuzz is installed once under ~/.cache/trident/tools. Targets build without
# a sanitizer (the code under test is safe Rust: the aim is panics, overflows, hangs and huge
# allocations) in release mode with debug assertions and overflow checks on. Each target
# starts from its seeds in tests/fuzz/corpus/<target> (read-only) plus a working corpus
# cached under ~/.cache/trident/fuzz, which keeps what earlier runs found; a crash is saved
# under ~/.cache/trident/fuzz/artifacts/<target>/ and its path printed.
#
# The last line is "fuzz: N passed, M failed" (one per target); the exit status is non-zero
# when a target failed or the build did.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
cache=${TRIDENT_CACHE:-$HOME/.cache/trident}
tools=$cache/tools
target_dir=$cache/target-fuzz
work=$cache/fuzz
fuzz_dir=tests/fuzz
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
export PATH=$tools/bin:$PATH

summary() { echo "fuzz: $1 passed, $2 failed"; }

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: no nightly toolchain (rustup toolchain install nightly); fuzzing skipped"
  summary 0 0
  exit 0
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz into $tools" >&2
  if ! cargo install cargo-fuzz --locked --root "$tools" >&2; then
    echo "fuzz: cargo-fuzz could not be installed (offline?); fuzzing skipped"
    summary 0 0
    exit 0
  fi
fi

flags=(--fuzz-dir "$fuzz_dir" --sanitizer none --release --debug-assertions
       --codegen-units 16 --target-dir "$target_dir")
mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir "$fuzz_dir")
t0=$SECONDS
if ! cargo +nightly fuzz build "${flags[@]}"; then
  echo "fuzz: the targets did not build"
  summary 0 "${#targets[@]}"
  exit 1
fi
echo "fuzz: built ${#targets[@]} targets in $((SECONDS - t0))s" >&2
bin_dir=$target_dir/$(rustc +nightly -vV | sed -n 's/^host: //p')/release

passed=0 failed=0
for t in "${targets[@]}"; do
  corpus=$work/corpus/$t artifacts=$work/artifacts/$t log=$work/logs/$t.log
  mkdir -p "$corpus" "$artifacts" "$(dirname "$log")"
  dict=()
  [ -f "$fuzz_dir/dict/$t.dict" ] && dict=(-dict="$fuzz_dir/dict/$t.dict")
  before=$(ls "$artifacts")
  # -timeout: one input running 10 s is a hang; -rss_limit_mb: memory actually used (single
  # huge allocations abort in the targets' allocator, tests/fuzz/src/lib.rs).
  rc=0
  timeout $((secs + 300)) "$bin_dir/$t" "$corpus" "$fuzz_dir/corpus/$t" "${dict[@]}" \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1 || rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  if [ "$rc" = 0 ]; then
    passed=$((passed + 1))
    echo "fuzz: $t ok (${runs:-?} inputs in ${secs}s, corpus $(ls "$corpus" | wc -l))"
  else
    failed=$((failed + 1))
    tail -n 40 "$log"
    echo "fuzz: $t FAILED (exit $rc; log $log)"
    for f in $(comm -13 <(echo "$before") <(ls "$artifacts")); do
      echo "fuzz: reproducer $artifacts/$f ($bin_dir/$t $artifacts/$f)"
    done
  fi
done
summary "$passed" "$failed"
[ "$failed" = 0 ]
