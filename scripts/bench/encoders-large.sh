#!/usr/bin/env bash
# Seed-sized encoders (issue 16): trident's engine over HTTP vs sentence-transformers, back
# to back on the same random-weight XLM-R large files (bge-m3 / bge-reranker-v2-m3 shape,
# scripts/bench/xlmr_large_fixture.py) with the same thread count:
#   * embeddings: requests of 32 inputs x 256 tokens (SentenceTransformer, batch 32): inputs/s;
#   * rerank: requests of 1 query x 32 documents, 256 tokens per pair (CrossEncoder,
#     batch 32): pairs/s.
# First checks that the texts are 256 tokens for both tokenizers and that trident's vectors
# and scores match the peer's (cosine, largest score difference); prints one JSON line per
# measurement and the ratios of each round.
#   [THREADS=2] [ROUNDS=2] [DTYPE=auto] [BATCHES=2] [LARGE_MODELS=~/.cache/trident/models-large] \
#     scripts/bench/encoders-large.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/trident/target}
THREADS=${THREADS:-2}
BATCHES=${BATCHES:-2}
PY=${PEER_PYTHON:-$HOME/.cache/trident-peers/venv/bin/python}
MODELS=${LARGE_MODELS:-$HOME/.cache/trident/models-large}
WORK=${LARGE_BENCH_DIR:-/tmp/encoders-large-bench}
EPORT=${LARGE_BENCH_PORT:-18014}
RPORT=$((EPORT + 1))
TOKENS=256
mkdir -p "$WORK"
. scripts/lib/bench.sh

if ! "$PY" -c 'import sentence_transformers' 2>/dev/null; then
  echo '{"peer": "sentence-transformers", "missing": "not installed (../shared/peers/setup.sh)"}'
  exit 1
fi
# ~2.3 GB per model, written once (~2 min).
"$PY" scripts/bench/xlmr_large_fixture.py "$MODELS"
BIN=$(bench_binary "$WORK")
cat > "$WORK/models.json" <<JSON
{"models": {
  "large": {"path": "$MODELS/embedding", "type": "embedding", "port": $EPORT,
            "device": "cpu", "threads": $THREADS, "dtype": "${DTYPE:-auto}"},
  "large-rerank": {"path": "$MODELS/reranker", "type": "rerank", "port": $RPORT,
                   "device": "cpu", "threads": $THREADS, "dtype": "${DTYPE:-auto}"}}}
JSON
# Both engines stay up (idle while the other side measures); one trap stops both.
"$BIN" engine --config "$WORK/models.json" --model large --host 127.0.0.1 2>"$WORK/embed.log" &
E1=$!
"$BIN" engine --config "$WORK/models.json" --model large-rerank --host 127.0.0.1 2>"$WORK/rerank.log" &
E2=$!
trap 'kill $E1 $E2 2>/dev/null || true' EXIT
bench_ready large "$EPORT" "$WORK/embed.log"
bench_ready large-rerank "$RPORT" "$WORK/rerank.log"

# ratio NAME TRIDENT_JSON PEER_JSON TRIDENT_FIELD PEER_FIELD ROUND: one JSON line.
ratio() {
  python3 - "$@" <<'PY'
import json, sys
name, t, p, tf, pf, rnd = sys.argv[1:]
t, p = json.loads(t), json.loads(p)
ok = pf in p and p[pf] and tf in t
print(json.dumps({"round": int(rnd), "ratio": name,
                  "value": round(t[tf] / p[pf], 3) if ok else None}))
PY
}

dtype=$(curl -s "http://127.0.0.1:$EPORT/v1/models" | grep -o '"dtype":"[a-z0-9]*"' || true)
for round in $(seq "${ROUNDS:-2}"); do
  CHECK=(); [ "$round" = 1 ] && CHECK=(--check)
  echo "== round $round: embeddings, trident ($dtype, $THREADS threads), $BATCHES x 32 x $TOKENS tokens"
  t=$("$BIN" bench embeddings --url "http://127.0.0.1:$EPORT" --model large --concurrency 1 \
    --requests "$BATCHES" --inputs-per-request 32 --words $((TOKENS - 2)) --warmup 0 --json)
  echo "$t"
  echo "== round $round: embeddings, sentence-transformers ($THREADS threads)"
  p=$("$PY" scripts/bench/encoders_large_peer.py embed --model "$MODELS/embedding" --batch 32 \
    --tokens $TOKENS --n $((32 * BATCHES)) --threads "$THREADS" \
    ${CHECK:+--check "http://127.0.0.1:$EPORT" --check-model large} 2>"$WORK/peer.err" ||
    echo '{"peer": "sentence-transformers", "failed": "see '"$WORK"'/peer.err"}')
  echo "$p"
  ratio embeddings_32x256 "$t" "$p" inputs_per_s inputs_per_s "$round"

  echo "== round $round: rerank, trident ($dtype, $THREADS threads), $BATCHES x 32 pairs x $TOKENS tokens"
  t=$("$BIN" bench rerank --url "http://127.0.0.1:$RPORT" --model large-rerank --concurrency 1 \
    --requests "$BATCHES" --documents 32 --query-words 8 --words $((TOKENS - 12)) --warmup 0 --json)
  echo "$t"
  echo "== round $round: rerank, sentence-transformers CrossEncoder ($THREADS threads)"
  p=$("$PY" scripts/bench/encoders_large_peer.py rerank --model "$MODELS/reranker" --documents 32 \
    --tokens $TOKENS --requests "$BATCHES" --threads "$THREADS" \
    ${CHECK:+--check "http://127.0.0.1:$RPORT" --check-model large-rerank} 2>"$WORK/peer.err" ||
    echo '{"peer": "sentence-transformers CrossEncoder", "failed": "see '"$WORK"'/peer.err"}')
  echo "$p"
  ratio rerank_pairs "$t" "$p" pairs_per_s pairs_per_s "$round"
done
