"""Turns the logs scripts/bench/report.sh collected into report.json and report.md.

Usage: report.py DIR   (reads DIR/logs/NAME.log and NAME.status, writes DIR/report.{json,md})

Each row is one figure with a goal: trident's value, the value it is compared with (a peer,
or trident's own baseline), their ratio per round and whether every round meets the goal.
A benchmark that did not run leaves its rows with the reason instead of figures."""
import datetime, json, os, re, sys

OUT = sys.argv[1]


def log(name):
    """(round, item) for each line of a benchmark's output: a dict for JSON, else the text."""
    path = os.path.join(OUT, "logs", name + ".log")
    if not os.path.exists(path):
        return []
    items, rnd = [], 1
    for line in open(path, errors="replace"):
        line = line.strip()
        m = re.match(r"== round (\d+)", line)
        if m:
            rnd = int(m.group(1))
        if line.startswith("{"):
            try:
                obj = json.loads(line)
                # batching.sh names the round in each line instead of a marker.
                items.append((obj.get("round", rnd) if isinstance(obj, dict) else rnd, obj))
                continue
            except ValueError:
                pass
        items.append((rnd, line))
    return items


def status(name):
    path = os.path.join(OUT, "logs", name + ".status")
    return open(path).read().strip() if os.path.exists(path) else "not run"


ROWS = []


def row(bench, figure, unit, trident, other, other_name, goal=None, ratio=None, goal_text=None):
    """trident/other: per-round values (None where missing); goal: (op, bound) on the ratio,
    or ("abs<=", bound) on trident's value itself; ratio: per-round override."""
    rounds = max(len(trident), len(other))
    if ratio is None:
        ratio = [t / o if t is not None and o else None
                 for t, o in zip(pad(trident, rounds), pad(other, rounds))]
    met = None
    if goal and any(v is not None for v in (trident if goal[0] == "abs<=" else ratio)):
        op, bound = goal
        vals = [v for v in (trident if op == "abs<=" else ratio) if v is not None]
        ok = [v >= bound if op == ">=" else v <= bound for v in vals]
        met = "yes" if all(ok) else "no" if not any(ok) else "partly"
    ROWS.append({"bench": bench, "figure": figure, "unit": unit, "trident": trident,
                 "compared_with": other_name, "other": other, "ratio": ratio,
                 "goal": goal_text or (f"{goal[0].replace('>=', '≥ ').replace('<=', '≤ ')}{goal[1]}×"
                                       if goal and goal[0] != "abs<=" else "—"),
                 "met": met, "note": None})


def pad(v, n):
    return list(v) + [None] * (n - len(v))


def not_run(bench, figures):
    why = status(bench)
    for f in figures:
        ROWS.append({"bench": bench, "figure": f, "trident": [], "other": [], "ratio": [],
                     "compared_with": None, "goal": None, "met": None, "note": why})


def by_round(items, pred):
    out = {}
    for r, x in items:
        if isinstance(x, dict) and pred(x):
            out.setdefault(r, x)
    return [out.get(r) for r in sorted(set(r for r, _ in items))] if out else []


def field(objs, f):
    return [f(o) if o is not None and "failed" not in o and "missing" not in o else None for o in objs]


def decode_tok_s(report):
    return 1000 / report["tpot_ms"]["p50"] if report["tpot_ms"]["p50"] else None


# chat.sh: trident 1 and 16 streams, llama.cpp (binding) single-stream decode.
items = log("chat")
c1 = by_round(items, lambda x: x.get("concurrency") == 1)
c16 = by_round(items, lambda x: x.get("concurrency") == 16)
if c1 and c16:
    row("chat", "16 streams aggregate vs 1-stream decode", "tok/s",
        field(c16, lambda x: x["output_tok_per_s"]), field(c1, decode_tok_s), "trident, 1 stream", (">=", 4))
    row("chat", "ITL p99 vs ITL p50, 16 streams", "ms",
        field(c16, lambda x: x["itl_ms"]["p99"]), field(c16, lambda x: x["itl_ms"]["p50"]),
        "trident ITL p50", ("<=", 3))
    peer = by_round(items, lambda x: x.get("peer") == "llama.cpp")
    if any(p and "missing" not in p for p in peer):
        row("chat", "1-stream decode vs llama.cpp (llama-cpp-python)", "tok/s",
            field(c1, decode_tok_s), field(peer, lambda x: x["decode_tok_per_s"]), "llama.cpp")
    else:
        not_run("chat", ["1-stream decode vs llama.cpp (llama-cpp-python)"])
        ROWS[-1]["note"] = "peer not installed"
else:
    not_run("chat", ["16 streams aggregate vs 1-stream decode", "ITL p99 vs ITL p50, 16 streams"])

# batching.sh: trident and llama-server at 1 and 16 streams with the same client.
items = log("batching")
run = lambda s, c: by_round(items, lambda x: x.get("server") == s and x.get("concurrency") == c)
t16, p16, t1, p1 = run("trident", 16), run("llama-server", 16), run("trident", 1), run("llama-server", 1)
if t16 and p16 and not any(x is None or "failed" in x for x in t16 + p16):
    name = "llama-server --parallel 16"
    row("batching", "16 streams aggregate vs llama-server", "tok/s",
        field(t16, lambda x: x["output_tok_per_s"]), field(p16, lambda x: x["output_tok_per_s"]), name, (">=", 1.5))
    row("batching", "ITL p99, 16 streams, vs llama-server (lower is better)", "ms",
        field(t16, lambda x: x["itl_ms"]["p99"]), field(p16, lambda x: x["itl_ms"]["p99"]), name, ("<=", 1),
        goal_text="lower")
    row("batching", "TTFT p50, 16 streams, vs llama-server", "ms",
        field(t16, lambda x: x["ttft_ms"]["p50"]), field(p16, lambda x: x["ttft_ms"]["p50"]), name)
    row("batching", "1 stream output vs llama-server", "tok/s",
        field(t1, lambda x: x["output_tok_per_s"]), field(p1, lambda x: x["output_tok_per_s"]), name)
    errs = sum(x.get("errors", 0) for x in t16 + p16 + t1 + p1 if x)
    if errs:
        ROWS[-4]["note"] = f"{errs} failed requests in these runs (see logs/batching.log)"
else:
    not_run("batching", ["16 streams aggregate vs llama-server", "ITL p99, 16 streams, vs llama-server"])
if t16 and t1 and not any(x is None or "failed" in x for x in t16 + t1):
    # chat.sh's two runs send prompts of different lengths; here both send the same ones.
    row("batching", "16 streams aggregate vs 1 stream, same prompts", "tok/s",
        field(t16, lambda x: x["output_tok_per_s"]), field(t1, lambda x: x["output_tok_per_s"]),
        "trident, 1 stream", (">=", 4))

# prefix.sh: text lines "TTFT p50 cached: X ms …" / "TTFT p50 uncached: Y ms …".
items = log("prefix")
ttft = {}
for r, x in items:
    m = isinstance(x, str) and re.match(r"TTFT p50 (cached|uncached):\s+([\d.]+) ms", x)
    if m:
        ttft.setdefault(m.group(1), {})[r] = float(m.group(2))
if ttft.get("cached") and ttft.get("uncached"):
    rs = sorted(ttft["uncached"])
    row("prefix", "TTFT p50, ~1,000-token system prompt cached vs uncached", "ms",
        [ttft["cached"].get(r) for r in rs], [ttft["uncached"][r] for r in rs], "trident, cache off", ("<=", 0.2))
else:
    not_run("prefix", ["TTFT p50, ~1,000-token system prompt cached vs uncached"])

# embeddings.sh: trident (1 × 12 words, 32 × 100 words) and sentence-transformers.
items = log("embeddings")
one = by_round(items, lambda x: x.get("inputs_per_request") == 1)
batch = by_round(items, lambda x: x.get("inputs_per_request") == 32)
peer = by_round(items, lambda x: x.get("peer") == "sentence-transformers")
peer_ok = any(p and "missing" not in p for p in peer)
if batch:
    if peer_ok:
        row("embeddings", "MiniLM 32 × 100 words vs sentence-transformers", "inputs/s",
            field(batch, lambda x: x["inputs_per_s"]), field(peer, lambda x: x["sentences_per_s"]),
            "sentence-transformers", (">=", 2.5))
    else:
        not_run("embeddings", ["MiniLM 32 × 100 words vs sentence-transformers"])
        ROWS[-1]["note"] = "peer not installed"
    row("embeddings", "single short query p50 over HTTP (peer: in-process)", "ms",
        field(one, lambda x: x["latency_ms"]["p50"]),
        field(peer, lambda x: x["single_query_p50_ms"]) if peer_ok else [], "sentence-transformers",
        ("abs<=", 1.5), goal_text="≤ 1.5 ms")
else:
    not_run("embeddings", ["MiniLM 32 × 100 words vs sentence-transformers", "single short query p50 over HTTP"])

# encoders-large.sh: XLM-R large (bge-m3 / bge-reranker-v2-m3 shape, random weights).
items = log("encoders-large")
emb = by_round(items, lambda x: x.get("model") == "large" and x.get("inputs_per_request") == 32)
emb_peer = by_round(items, lambda x: x.get("peer") == "sentence-transformers")
rr = by_round(items, lambda x: x.get("model") == "large-rerank" and "pairs_per_s" in x)
rr_peer = by_round(items, lambda x: x.get("peer") == "sentence-transformers CrossEncoder")
if emb and any(p and "inputs_per_s" in p for p in emb_peer):
    row("encoders-large", "XLM-R large 32 × 256 tokens vs sentence-transformers", "inputs/s",
        field(emb, lambda x: x["inputs_per_s"]), field(emb_peer, lambda x: x["inputs_per_s"]),
        "sentence-transformers", (">=", 2))
else:
    not_run("encoders-large", ["XLM-R large 32 × 256 tokens vs sentence-transformers"])
if rr and any(p and "pairs_per_s" in p for p in rr_peer):
    row("encoders-large", "XLM-R large cross-encoder, 256-token pairs, vs CrossEncoder", "pairs/s",
        field(rr, lambda x: x["pairs_per_s"]), field(rr_peer, lambda x: x["pairs_per_s"]),
        "CrossEncoder", (">=", 2))
else:
    not_run("encoders-large", ["XLM-R large cross-encoder, 256-token pairs, vs CrossEncoder"])

# structured.sh: free text vs JSON Schema at 1 and 16 streams.
items, mode, cur = log("structured"), {}, None
for r, x in items:
    m = isinstance(x, str) and re.match(r"== round (\d+), (\d+) stream\(s\): (free text|JSON Schema)", x)
    if m:
        cur = (int(m.group(2)), m.group(3))
    elif isinstance(x, dict) and "concurrency" in x:
        mode.setdefault(cur, {})[r] = x
for c in (1, 16):
    free, schema = mode.get((c, "free text"), {}), mode.get((c, "JSON Schema"), {})
    fig = f"constrained (JSON Schema) vs free decode, {c} stream{'s' if c > 1 else ''}"
    if free and schema:
        rs = sorted(free)
        val = decode_tok_s if c == 1 else (lambda x: x["output_tok_per_s"])
        row("structured", fig, "tok/s", [val(schema[r]) if r in schema else None for r in rs],
            [val(free[r]) for r in rs], "trident, free text", (">=", 0.9))
    else:
        not_run("structured", [fig])

# proxy.sh: wrk lines "NAME c=N p50=… req/s=… [cpu/req=…us]"; nginx and trident alternate twice.
items = log("proxy")
wrk = {}
for _, x in items:
    m = isinstance(x, str) and re.match(r"(\w+)\s+c=(\d+)\s+p50=([\d.]+)(us|ms|s)\s+req/s=([\d.]+)\s*(?:cpu/req=([\d.]+)us)?", x)
    if m:
        scale = {"us": 1, "ms": 1e3, "s": 1e6}[m.group(4)]
        wrk.setdefault((m.group(1), int(m.group(2))), []).append(
            {"p50_us": float(m.group(3)) * scale, "rps": float(m.group(5)),
             "cpu_us": float(m.group(6)) if m.group(6) else None})
if wrk.get(("trident", 32)) and wrk.get(("nginx", 32)):
    g32, n32 = wrk[("trident", 32)], wrk[("nginx", 32)]
    row("proxy", "gateway req/s at concurrency 32 vs nginx", "req/s",
        [x["rps"] for x in g32], [x["rps"] for x in n32], "nginx", (">=", 0.9))
    row("proxy", "gateway CPU per request at concurrency 32 vs nginx", "µs",
        [x["cpu_us"] for x in g32], [x["cpu_us"] for x in n32], "nginx", ("<=", 1.2))
    direct = wrk.get(("direct", 1), [{}])[0].get("p50_us")
    g1, n1 = wrk.get(("trident", 1), []), wrk.get(("nginx", 1), [])
    if direct is not None and g1 and n1:
        row("proxy", "added p50 at concurrency 1 vs nginx's (over the direct backend)", "µs",
            [x["p50_us"] - direct for x in g1], [x["p50_us"] - direct for x in n1], "nginx", ("<=", 1.5))
else:
    not_run("proxy", ["gateway req/s at concurrency 32 vs nginx", "gateway CPU per request vs nginx",
                      "added p50 at concurrency 1 vs nginx's"])

# rerank.sh (only when listed in BENCHES): no goal, shown for reference.
items = log("rerank")
t = by_round(items, lambda x: "pairs_per_s" in x and "model" in x)
peer = [x for _, x in items if isinstance(x, dict) and "pairs_per_s" in x and "model" not in x]
if t and peer:
    row("rerank", "pairs/s vs sentence-transformers CrossEncoder", "pairs/s",
        field(t, lambda x: x["pairs_per_s"]), [p["pairs_per_s"] for p in peer], "CrossEncoder")


def fmt(vals):
    v = [x for x in vals if x is not None]
    if not v:
        return "—"
    f = lambda x: f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}" if abs(x) < 100 else f"{x:.0f}"
    lo, hi = min(v), max(v)
    return f(lo) if f(lo) == f(hi) else f"{f(lo)}–{f(hi)}"


md = ["| benchmark | figure | trident | compared with | ratio | goal | met |",
      "|---|---|---|---|---|---|---|"]
for r in ROWS:
    if r["note"] and not r["trident"]:
        md.append(f"| {r['bench']} | {r['figure']} | — | {r['note']} | — | — | — |")
        continue
    unit = f" {r['unit']}" if r.get("unit") else ""
    other = f"{r['compared_with']}: {fmt(r['other'])}{unit}" if any(x is not None for x in r["other"]) else r["compared_with"] or "—"
    ratio = fmt(r["ratio"]) + "×" if any(x is not None for x in r["ratio"]) else "—"
    note = f" ({r['note']})" if r["note"] else ""
    md.append(f"| {r['bench']} | {r['figure']} | {fmt(r['trident'])}{unit} | {other} | {ratio} | {r['goal']} | {r['met'] or '—'}{note} |")

rounds = os.environ.get("ROUNDS", "2")
header = (f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} CPUs, "
          f"{rounds} rounds per figure (ranges are min–max over rounds; ratios are per round).\n")
open(os.path.join(OUT, "report.md"), "w").write(header + "\n" + "\n".join(md) + "\n")
json.dump({"generated": datetime.datetime.now(datetime.timezone.utc).isoformat(), "cpus": os.cpu_count(),
           "rounds": int(rounds), "rows": ROWS}, open(os.path.join(OUT, "report.json"), "w"), indent=1)
