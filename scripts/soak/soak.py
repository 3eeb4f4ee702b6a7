#!/usr/bin/env python3
"""Soak load for scripts/soak.sh: mixed chat/embedding/rerank traffic against a running
gateway, 1% of clients hanging up mid-request, with process RSS/fd samples of the
supervisor and its engines. Standard library only (runs on an air-gapped box)."""

import argparse
import http.client
import json
import os
import random
import sys
import threading
import time
from urllib.parse import urlparse

WORDS = ("the appliance serves chat embedding and rerank models behind one gateway with "
         "metrics dashboards offline bundles and a supervisor that restarts hung engines").split()


def text(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def requests_for(rng):
    """(route, path, body, streamed) for one request of the mix."""
    r = rng.random()
    if r < 0.30:
        return ("chat-stream", "/v1/chat/completions",
                {"model": "chat", "stream": True, "max_tokens": 24,
                 "messages": [{"role": "user", "content": text(rng, 20)}]}, True)
    if r < 0.50:
        return ("chat", "/v1/chat/completions",
                {"model": "chat", "max_tokens": 16,
                 "messages": [{"role": "user", "content": text(rng, 20)}]}, False)
    if r < 0.80:
        return ("embeddings", "/v1/embeddings",
                {"model": "embedding", "input": [text(rng, 30) for _ in range(rng.randint(1, 16))]},
                False)
    return ("rerank", "/v1/rerank",
            {"model": "rerank", "query": text(rng, 8),
             "documents": [text(rng, 40) for _ in range(rng.randint(2, 20))]}, False)


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.latency = {}   # (minute, route) -> [seconds]
        self.status = {}    # status -> count
        self.aborted = 0
        self.transport_errors = 0

    def add(self, minute, route, status, secs):
        with self.lock:
            self.latency.setdefault((minute, route), []).append(secs)
            self.status[status] = self.status.get(status, 0) + 1


def client(url, key, stop_at, start, abort_ratio, stats, seed):
    rng = random.Random(seed)
    u = urlparse(url)
    conn = None
    while time.time() < stop_at:
        route, path, body, streamed = requests_for(rng)
        abort = rng.random() < abort_ratio
        t0 = time.time()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
            conn.request("POST", path, json.dumps(body),
                         {"content-type": "application/json", "authorization": f"Bearer {key}"})
            if abort:
                # Hang up mid-request: before the answer, or after the first bytes of a stream.
                if streamed:
                    resp = conn.getresponse()
                    resp.read(64)
                conn.close()
                conn = None
                with stats.lock:
                    stats.aborted += 1
                continue
            resp = conn.getresponse()
            resp.read()
            stats.add(int((t0 - start) // 60), route, resp.status, time.time() - t0)
            if resp.getheader("connection", "").lower() == "close":
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException):
            with stats.lock:
                stats.transport_errors += 1
            if conn is not None:
                conn.close()
            conn = None
            time.sleep(0.2)


def children(pid):
    """Direct children of `pid` (the engines of a supervisor)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                out.append(int(d))
        except (OSError, IndexError, ValueError):
            pass
    return out


def sample(pid):
    """{pid: {"name", "rss_kib", "fds"}} for the supervisor and each engine."""
    procs = {}
    for p in [pid] + children(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
            with open(f"/proc/{p}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            name = "supervisor"
            if b"--model" in argv:
                name = "engine " + argv[argv.index(b"--model") + 1].decode()
            procs[p] = {"name": name, "rss_kib": int(status["VmRSS"].split()[0]),
                        "fds": len(os.listdir(f"/proc/{p}/fd"))}
        except (OSError, KeyError, ValueError, IndexError):
            pass
    return procs


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--duration", type=float, default=1200)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--abort-ratio", type=float, default=0.01)
    ap.add_argument("--warmup", type=float, default=60)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    stats = Stats()
    start = time.time()
    stop_at = start + a.warmup + a.duration
    threads = [threading.Thread(target=client, daemon=True,
                                args=(a.url, a.key, stop_at, start, a.abort_ratio, stats, i))
               for i in range(a.clients)]
    for t in threads:
        t.start()
    print(f"soak: warm-up {a.warmup:.0f} s, then {a.duration:.0f} s with {a.clients} clients",
          file=sys.stderr)
    time.sleep(a.warmup)
    first = sample(a.pid)
    timeline = [(round(time.time() - start), first)]
    while time.time() < stop_at:
        time.sleep(min(60, max(0.1, stop_at - time.time())))
        s = sample(a.pid)
        timeline.append((round(time.time() - start), s))
        with stats.lock:
            done = sum(stats.status.values())
            errors = sum(n for st, n in stats.status.items() if st >= 500)
        rss = sum(p["rss_kib"] for p in s.values()) / 1024
        print(f"soak: {time.time() - start:6.0f} s  {done} requests, {errors} 5xx, "
              f"{stats.aborted} aborted, total RSS {rss:.0f} MiB", file=sys.stderr)
    for t in threads:
        t.join(timeout=130)
    time.sleep(5)  # let aborted work drain before the last sample
    last = sample(a.pid)

    problems = []
    rows = []
    for p, s0 in sorted(first.items(), key=lambda kv: kv[1]["name"]):
        s1 = last.get(p)
        if s1 is None:
            problems.append(f"{s0['name']} (pid {p}) is gone")
            continue
        growth = {k: (s1[k] - s0[k]) / max(s0[k], 1) for k in ("rss_kib", "fds")}
        rows.append({"process": s0["name"], "pid": p, "start": s0, "end": s1,
                     "rss_growth": growth["rss_kib"], "fd_growth": growth["fds"]})
        if growth["rss_kib"] >= 0.05:
            problems.append(f"{s0['name']}: RSS grew {growth['rss_kib']:.1%}")
        # A pooled keep-alive connection more or less is churn, not a leak: fds must grow by
        # more than 5% *and* more than two.
        if growth["fds"] >= 0.05 and s1["fds"] - s0["fds"] > 2:
            problems.append(f"{s0['name']}: open fds grew {growth['fds']:.1%}")
    fivexx = {st: n for st, n in stats.status.items() if st >= 500}
    if fivexx:
        problems.append(f"5xx answers: {fivexx}")
    if stats.transport_errors:
        problems.append(f"{stats.transport_errors} transport errors")
    minutes = []
    for (m, route), xs in sorted(stats.latency.items()):
        minutes.append({"minute": m, "route": route, "requests": len(xs),
                        "p50_ms": round(pct(xs, 0.5) * 1000, 1),
                        "p99_ms": round(pct(xs, 0.99) * 1000, 1)})
    report = {"duration_s": a.duration, "clients": a.clients, "abort_ratio": a.abort_ratio,
              "status": {str(k): v for k, v in sorted(stats.status.items())},
              "aborted": stats.aborted, "transport_errors": stats.transport_errors,
              "processes": rows, "minutes": minutes,
              "timeline": [{"t": t, "procs": list(s.values())} for t, s in timeline],
              "problems": problems}
    with open(a.out, "w") as f:
        json.dump(report, f, indent=1)

    print("\nprocess               RSS start → end (MiB)   growth   fds start → end")
    for r in rows:
        print(f"{r['process']:<20} {r['start']['rss_kib'] / 1024:8.1f} → {r['end']['rss_kib'] / 1024:8.1f}"
              f"   {r['rss_growth']:+7.1%}   {r['start']['fds']:4d} → {r['end']['fds']:4d}")
    print(f"\nanswers by status: {report['status']}; aborted by the client: {stats.aborted}")
    print("\nminute  route         requests   p50 ms   p99 ms")
    for m in minutes:
        print(f"{m['minute']:6d}  {m['route']:<12} {m['requests']:9d} {m['p50_ms']:8.1f} {m['p99_ms']:8.1f}")
    print(f"\nsoak: report in {a.out}")
    if problems:
        print("soak: FAILED: " + "; ".join(problems))
        sys.exit(1)
    print("soak: OK (RSS and fd growth < 5%, no 5xx, every process alive)")


if __name__ == "__main__":
    main()
