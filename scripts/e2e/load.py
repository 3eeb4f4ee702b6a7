#!/usr/bin/env python3
"""Mixed load for scripts/e2e-multihost.sh: `--clients` threads send chat, embedding and
rerank requests for `--seconds`; writes every failure (status, route, send time) and a
summary line as JSON. Standard library only."""

import argparse
import http.client
import json
import threading
import time
from urllib.parse import urlparse

BODIES = [
    ("/v1/chat/completions", {"model": "chat", "max_tokens": 8,
                              "messages": [{"role": "user", "content": "Say hello."}]}),
    ("/v1/embeddings", {"model": "embedding", "input": ["a sentence to embed", "and another"]}),
    ("/v1/rerank", {"model": "rerank", "query": "what is a gateway",
                    "documents": ["a gateway fronts engines", "bananas are yellow"]}),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    u = urlparse(a.url)
    lock = threading.Lock()
    results = []
    start = time.time()

    def client(i):
        n = i
        while time.time() < start + a.seconds:
            path, body = BODIES[n % len(BODIES)]
            n += 1
            t0 = time.time()
            try:
                c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
                c.request("POST", path, json.dumps(body), {
                    "content-type": "application/json", "authorization": f"Bearer {a.key}"})
                r = c.getresponse()
                r.read()
                status = r.status
                c.close()
            except (OSError, http.client.HTTPException):
                status = 0
            with lock:
                results.append({"route": path, "status": status, "sent_at": t0,
                                "ms": (time.time() - t0) * 1000})

    threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failures = [r for r in results if r["status"] != 200]
    ms = sorted(r["ms"] for r in results)
    p50 = ms[len(ms) // 2] if ms else 0
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))] if ms else 0
    summary = (f"{len(results)} requests, {len(failures)} failed, "
               f"p50 {p50:.0f} ms, p99 {p99:.0f} ms")
    with open(a.out, "w") as f:
        json.dump({"started_at": start, "failed": len(failures), "failures": failures,
                   "summary": summary}, f)
    print(summary)


if __name__ == "__main__":
    main()
