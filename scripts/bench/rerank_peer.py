"""Peer for `trident bench rerank`: sentence-transformers' CrossEncoder on the same saved
cross-encoder directory and the same request texts (the bench's deterministic filler,
ported below), one query x N documents per request, back to back, torch threads fixed.

  ~/.cache/trident-peers/venv/bin/python scripts/bench/rerank_peer.py \
      --model /tmp/rerank-bench/minilm-cross --requests 20 --documents 100 --words 100 \
      --threads 2 [--compare http://127.0.0.1:8013] [--json]

With --compare it also sends request 0 to a trident engine's /v1/rerank and reports the
largest score difference (both sides apply the sigmoid).
"""
import argparse, json, os, statistics, sys, time, urllib.request

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = ["the", "model", "serves", "requests", "quickly", "while", "batches", "grow", "under",
         "load", "and", "latency", "stays", "low", "for", "every", "client", "that", "waits", "on",
         "an", "answer", "from", "engine", "gateway", "appliance", "runs", "offline", "in", "data",
         "centre", "with", "GPUs", "memory", "tokens", "vectors", "search", "documents", "ranking",
         "question", "reply", "stream", "metrics", "dashboard", "container", "image", "bundle",
         "network", "secure", "simple"]
M = (1 << 64) - 1


def filler_text(seed, words):
    """Port of trident::bench::filler_text (xorshift64 over a fixed word list)."""
    x = ((seed * 0x9E3779B97F4A7C15) & M) | 1
    out = []
    for _ in range(words):
        x ^= (x << 13) & M
        x ^= x >> 7
        x ^= (x << 17) & M
        out.append(WORDS[x % len(WORDS)])
    return " ".join(out)


def query_text(i, words):
    return filler_text((M >> 1) + i, words)


def document_text(i, j, documents, words):
    return filler_text(i * documents + j, words)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--documents", type=int, default=100)
    ap.add_argument("--words", type=int, default=100)
    ap.add_argument("--query-words", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--compare")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    import torch
    from sentence_transformers import CrossEncoder

    torch.set_num_threads(a.threads)
    model = CrossEncoder(a.model, device="cpu")

    def request(i):
        q = query_text(i, a.query_words)
        return q, [document_text(i, j, a.documents, a.words) for j in range(a.documents)]

    def score(i):
        q, docs = request(i)
        return model.predict([(q, d) for d in docs], batch_size=a.batch_size,
                             show_progress_bar=False)

    for i in range(a.warmup):
        score(i)
    lat = []
    c0 = time.process_time()
    t0 = time.perf_counter()
    for i in range(a.requests):
        t = time.perf_counter()
        score(i)
        lat.append((time.perf_counter() - t) * 1e3)
    secs = time.perf_counter() - t0
    cpu = time.process_time() - c0
    lat.sort()
    pct = lambda q: lat[min(len(lat) - 1, max(0, int(-(-q * len(lat) // 1)) - 1))]
    q0, docs0 = request(0)
    tok = model.tokenizer([q0] * len(docs0), docs0, truncation=True)
    report = {
        "peer": "sentence-transformers CrossEncoder", "threads": a.threads,
        "batch_size": a.batch_size, "requests": a.requests, "documents": a.documents,
        "words": a.words, "seconds": secs, "pairs_per_s": a.requests * a.documents / secs,
        "cpu_seconds": cpu, "pairs_per_cpu_second": a.requests * a.documents / cpu,
        "mean_pair_tokens": statistics.mean(len(x) for x in tok["input_ids"]),
        "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99),
                       "mean": statistics.mean(lat), "max": lat[-1]},
    }
    if a.compare:
        ours = score(0)
        body = json.dumps({"query": q0, "documents": docs0}).encode()
        req = urllib.request.Request(a.compare.rstrip("/") + "/v1/rerank", data=body,
                                     headers={"content-type": "application/json"})
        res = json.load(urllib.request.urlopen(req))
        theirs = {r["index"]: r["relevance_score"] for r in res["results"]}
        report["max_abs_diff_vs_trident"] = max(abs(float(ours[k]) - v) for k, v in theirs.items())
    if a.json:
        print(json.dumps(report))
    else:
        print(f"peer CrossEncoder (threads {a.threads}): {report['pairs_per_s']:.1f} pairs/s, "
              f"latency p50 {report['latency_ms']['p50']:.1f} ms, "
              f"mean pair {report['mean_pair_tokens']:.0f} tokens"
              + (f", max |diff| vs trident {report['max_abs_diff_vs_trident']:.2e}"
                 if a.compare else ""))


if __name__ == "__main__":
    sys.exit(main())
