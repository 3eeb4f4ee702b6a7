# Shared steps of scripts/bench/*.sh (sourced, not run): a private copy of the release
# binary (the target directory may be shared between checkouts) and one engine started
# from a models file, stopped when the script exits.

# bench_binary WORKDIR: builds the release binary and prints the path of a private copy.
bench_binary() {
  scripts/fetch-models.sh >/dev/null
  cargo build --release --quiet
  cp "$CARGO_TARGET_DIR/release/trident" "$1/trident"
  echo "$1/trident"
}

# bench_engine BIN MODELS_JSON MODEL_ID PORT LOG: starts the engine, stops it on exit, and
# returns once /health answers 200 (a model is ready only after a warm-up forward pass).
bench_engine() {
  "$1" engine --config "$2" --model "$3" --host 127.0.0.1 2>"$5" &
  BENCH_ENGINE_PID=$!
  trap 'kill $BENCH_ENGINE_PID 2>/dev/null || true' EXIT
  bench_ready "$3" "$4" "$5"
}

# bench_ready MODEL_ID PORT LOG: waits (60 s at most) until /health on PORT answers 200.
bench_ready() {
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$2/health" >/dev/null && return 0
    sleep 0.1
  done
  echo "engine $1 not ready on :$2 (log: $3)" >&2
  return 1
}
