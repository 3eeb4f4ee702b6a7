"""Peer side of scripts/bench/encoders-large.sh: sentence-transformers on the same saved
XLM-R large models and the same texts trident's `bench embeddings` / `bench rerank` send
(the deterministic filler of rerank_peer.py), torch threads fixed.

  PY scripts/bench/encoders_large_peer.py embed --model DIR --batch 32 --tokens 256 --n 64 \
      [--check URL] --threads 2
  PY scripts/bench/encoders_large_peer.py rerank --model DIR --documents 32 --tokens 256 \
      --requests 2 [--check URL] --threads 2

Each prints one JSON object. The texts have `tokens` tokens each (specials included; for a
pair, query + document), which the script checks with the model's tokenizer before timing.
With --check URL it first compares with a trident engine on the first inputs: cosine of
the vectors (and, for scale, the cosine between two different inputs), or the largest
score difference (both sides apply the sigmoid) and the spread of the scores. Random
weights make every input's vector nearly the same and every score nearly equal, so it also
reports the checks that see the differences between inputs: the cosine after subtracting
the peer's mean vector from both sides (`centred_cosine_*`), and for scores their
correlation across documents and the largest difference as a share of their spread."""
import argparse, json, os, sys, time, urllib.request

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rerank_peer import document_text, filler_text, query_text  # noqa: E402

QUERY_WORDS = 8


def post(url, path, body):
    req = urllib.request.Request(url.rstrip("/") + path, data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=600))


def cos(a, b):
    import numpy as np
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def centred(ours, theirs):
    """Both sides minus the peer's mean vector: what tells the inputs apart."""
    import numpy as np
    o, t = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    mu = o.mean(axis=0)
    return o - mu, t - mu


def embed(a, torch):
    from sentence_transformers import SentenceTransformer
    m = SentenceTransformer(a.model, device="cpu")
    words = a.tokens - 2
    texts = [filler_text(i, words) for i in range(a.n)]
    counts = {len(m.tokenizer(t)["input_ids"]) for t in texts}
    out = {"peer": "sentence-transformers", "torch": torch.__version__,
           "threads": torch.get_num_threads(), "batch": a.batch, "inputs": a.n,
           "tokens_per_input": sorted(counts)}
    if counts != {a.tokens}:
        out["failed"] = f"texts of {words} words are {sorted(counts)} tokens, not {a.tokens}"
        return out
    m.encode(texts[:2], batch_size=2)
    if a.check:
        k = 8
        ours = m.encode(texts[:k], batch_size=k)
        res = post(a.check, "/v1/embeddings", {"model": a.check_model, "input": texts[:k]})
        theirs = [d["embedding"] for d in sorted(res["data"], key=lambda d: d["index"])]
        out["trident_tokens_per_input"] = res["usage"]["prompt_tokens"] / k
        out["cosine_vs_trident_min"] = min(cos(x, y) for x, y in zip(ours, theirs))
        out["cosine_between_inputs"] = cos(ours[0], ours[1])
        co, ct = centred(ours, theirs)
        out["centred_cosine_vs_trident_min"] = min(cos(x, y) for x, y in zip(co, ct))
        out["centred_cosine_between_inputs"] = cos(co[0], co[1])
    t = time.perf_counter()
    m.encode(texts, batch_size=a.batch)
    dt = time.perf_counter() - t
    out.update(seconds=dt, inputs_per_s=a.n / dt, tokens_per_s=a.n * a.tokens / dt)
    return out


def rerank(a, torch):
    from sentence_transformers import CrossEncoder
    m = CrossEncoder(a.model, device="cpu")
    words = a.tokens - QUERY_WORDS - 4

    def request(i):
        return query_text(i, QUERY_WORDS), [document_text(i, j, a.documents, words)
                                            for j in range(a.documents)]

    q0, d0 = request(0)
    counts = {len(x) for x in m.tokenizer([q0] * len(d0), d0)["input_ids"]}
    out = {"peer": "sentence-transformers CrossEncoder", "torch": torch.__version__,
           "threads": torch.get_num_threads(), "batch_size": a.documents, "requests": a.requests,
           "documents": a.documents, "pair_tokens": sorted(counts)}
    if counts != {a.tokens}:
        out["failed"] = f"pairs are {sorted(counts)} tokens, not {a.tokens}"
        return out
    score = lambda q, docs: m.predict([(q, d) for d in docs], batch_size=a.documents,
                                      show_progress_bar=False)
    score(q0, d0[:2])
    if a.check:
        k = 8
        ours = score(q0, d0[:k])
        res = post(a.check, "/v1/rerank", {"model": a.check_model, "query": q0, "documents": d0[:k]})
        theirs = {r["index"]: r["relevance_score"] for r in res["results"]}
        out["max_abs_diff_vs_trident"] = max(abs(float(ours[i]) - theirs[i]) for i in range(k))
        out["score_range"] = [float(min(ours)), float(max(ours))]
        import numpy as np
        mine = np.asarray([float(v) for v in ours]); other = np.asarray([theirs[i] for i in range(k)])
        out["score_correlation"] = float(np.corrcoef(mine, other)[0, 1])
        out["max_abs_diff_over_spread"] = out["max_abs_diff_vs_trident"] / float(np.ptp(mine))
    t = time.perf_counter()
    for i in range(a.requests):
        score(*request(i))
    dt = time.perf_counter() - t
    out.update(seconds=dt, pairs_per_s=a.requests * a.documents / dt)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["embed", "rerank"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--documents", type=int, default=32)
    ap.add_argument("--requests", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--check")
    ap.add_argument("--check-model", default="large")
    a = ap.parse_args()
    import torch
    torch.set_num_threads(a.threads)
    print(json.dumps(embed(a, torch) if a.mode == "embed" else rerank(a, torch)))


if __name__ == "__main__":
    sys.exit(main())
