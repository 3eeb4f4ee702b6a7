#!/usr/bin/env python3
"""Writes the Grafana dashboards in monitoring/grafana/dashboards/ (file-provisioned).

The JSON files are generated so that the six dashboards share one layout, one datasource uid,
the same `$instance` / `$model` variables and bilingual titles ("English / 中文"). Edit this
file, run it (`python3 monitoring/grafana/dashboards.py`), commit both; `--check` exits 1
when a committed file differs from what this script writes (scripts/e2e-monitoring.sh and
tests/monitoring.rs keep the two honest). Every dashboard and panel is described in
docs/MONITORING.md; metric names come from src/metrics.rs.
"""

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards"
DS = {"type": "prometheus", "uid": "trident-prometheus"}
RI = "$__rate_interval"
# Label filters every query carries; gateway-side series ("what clients saw") and engine-side
# ones ("what the engine measured") are kept apart by `component`.
SEL = 'instance=~"$instance",model=~"$model"'
GW = 'component="gateway",' + SEL
EN = 'component="engine",' + SEL


def q(expr, legend="", instant=False):
    return {"expr": expr, "legend": legend, "instant": instant}


def pct(p, metric, by, sel):
    return f"histogram_quantile({p}, sum by (le, {by}) (rate({metric}_bucket{{{sel}}}[{RI}])))"


def quantiles(metric, by, sel, legend_prefix="", ps=(0.5, 0.95, 0.99)):
    return [
        q(pct(p, metric, by, sel), f"{legend_prefix}p{int(p * 100)} {{{{{by}}}}}")
        for p in ps
    ]


class Board:
    def __init__(self, uid, title_en, title_zh, desc, kind=None, tags=()):
        self.uid, self.title = uid, f"{title_en} / {title_zh}"
        self.desc, self.kind, self.tags = desc, kind, list(tags)
        self.panels, self.x, self.y, self.row_h = [], 0, 0, 0

    def row(self, en, zh):
        self._newline()
        self.panels.append(
            {
                "type": "row",
                "title": f"{en} / {zh}",
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.y += 1

    def _newline(self):
        if self.x:
            self.y += self.row_h
            self.x, self.row_h = 0, 0

    def panel(self, kind, en, zh, desc_en, desc_zh, targets, unit="short", w=8, h=8, **extra):
        if self.x + w > 24:
            self._newline()
        refs = "ABCDEFGH"
        p = {
            "type": kind,
            "title": f"{en} / {zh}",
            "description": f"{desc_en}\n\n{desc_zh}",
            "datasource": DS,
            "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {},
            "targets": [
                {
                    "datasource": DS,
                    "refId": refs[i],
                    "expr": t["expr"],
                    "legendFormat": t["legend"] or "__auto",
                    "range": not t["instant"],
                    "instant": t["instant"],
                }
                for i, t in enumerate(targets)
            ],
        }
        if kind == "timeseries":
            p["options"] = {
                "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                "tooltip": {"mode": "multi", "sort": "desc"},
            }
            p["fieldConfig"]["defaults"]["custom"] = {"fillOpacity": 10, "lineWidth": 1}
        if kind == "stat":
            p["options"] = {
                "colorMode": "background",
                "graphMode": "none",
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "textMode": "value_and_name",
            }
        for k, v in extra.items():
            if k == "thresholds":
                p["fieldConfig"]["defaults"]["thresholds"] = {
                    "mode": "absolute",
                    "steps": [{"color": c, "value": val} for val, c in v],
                }
                p["fieldConfig"]["defaults"]["color"] = {"mode": "thresholds"}
            elif k == "mappings":
                p["fieldConfig"]["defaults"]["mappings"] = v
            elif k in ("min", "max"):
                p["fieldConfig"]["defaults"][k] = v
            else:
                p[k] = v
        self.panels.append(p)
        self.x += w
        self.row_h = max(self.row_h, h)

    def ts(self, *a, **k):
        self.panel("timeseries", *a, **k)

    def stat(self, *a, **k):
        self.panel("stat", *a, **k)

    def json(self):
        for i, p in enumerate(self.panels, 1):
            p["id"] = i
        kind = f',kind="{self.kind}"' if self.kind else ""
        variables = [
            {
                "name": "instance",
                "label": "instance / 实例",
                "type": "query",
                "datasource": DS,
                "definition": "label_values(trident_model_ready, instance)",
                "query": {
                    "query": "label_values(trident_model_ready, instance)",
                    "refId": "instance",
                },
                "includeAll": True,
                "multi": True,
                "allValue": ".*",
                "refresh": 2,
                "sort": 1,
                "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            },
            {
                "name": "model",
                "label": "model / 模型",
                "type": "query",
                "datasource": DS,
                "definition": f'label_values(trident_model_ready{{instance=~"$instance"{kind}}}, model)',
                "query": {
                    "query": f'label_values(trident_model_ready{{instance=~"$instance"{kind}}}, model)',
                    "refId": "model",
                },
                "includeAll": True,
                "multi": True,
                "allValue": ".*",
                "refresh": 2,
                "sort": 1,
                "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            },
        ]
        return {
            "id": None,
            "uid": self.uid,
            "title": self.title,
            "description": self.desc,
            "tags": ["trident"] + self.tags,
            "timezone": "browser",
            "schemaVersion": 39,
            "version": 1,
            "editable": False,
            "refresh": "10s",
            "time": {"from": "now-1h", "to": "now"},
            "graphTooltip": 1,
            "annotations": {"list": []},
            "links": [
                {
                    "type": "dashboards",
                    "tags": ["trident"],
                    "asDropdown": True,
                    "title": "trident",
                    "includeVars": True,
                    "keepTime": True,
                }
            ],
            "templating": {"list": variables},
            "panels": self.panels,
        }


READY_MAP = [
    {
        "type": "value",
        "options": {
            "0": {"text": "NOT READY / 未就绪", "color": "red", "index": 0},
            "1": {"text": "READY / 就绪", "color": "green", "index": 1},
        },
    }
]


def overview():
    b = Board(
        "trident-overview",
        "trident overview",
        "总览",
        "Every model's state, traffic, errors, p95 latency and saturation at a glance.",
        tags=["overview"],
    )
    b.row("State", "状态")
    b.stat(
        "Models ready", "模型就绪",
        "1 while the gateway has a ready replica of the model (its readiness probe answered a forward pass).",
        "网关有就绪副本（就绪探针完成一次前向计算）时为 1。",
        [q(f'max by (model, kind) (trident_model_ready{{{GW}}})', "{{model}} ({{kind}})")],
        w=12, h=5, mappings=READY_MAP, thresholds=[(None, "red"), (1, "green")],
    )
    b.stat(
        "Scrape", "采集",
        "1 when Prometheus' last scrape of the gateway's /metrics succeeded.",
        "Prometheus 最近一次抓取网关 /metrics 成功时为 1。",
        [q('up{job="trident",instance=~"$instance"}', "{{instance}}")],
        w=4, h=5, mappings=[{"type": "value", "options": {"0": {"text": "DOWN", "color": "red"}, "1": {"text": "UP", "color": "green"}}}],
        thresholds=[(None, "red"), (1, "green")],
    )
    b.stat(
        "Engine restarts (1 h)", "引擎重启（1 小时）",
        "Engine processes the supervisor restarted in the last hour, per model.",
        "最近一小时内监督进程重启的引擎次数（按模型）。",
        [q(f'sum by (model) (round(increase(trident_engine_restarts_total{{{GW}}}[1h])))', "{{model}}")],
        w=8, h=5, thresholds=[(None, "green"), (1, "orange"), (3, "red")],
    )
    b.row("Traffic and errors", "流量与错误")
    b.ts(
        "Requests / s by model", "每秒请求（按模型）",
        "Requests the gateway answered per second, by model (every status).",
        "网关每秒应答的请求数（按模型，含所有状态码）。",
        [q(f'sum by (model) (rate(trident_requests_total{{{GW}}}[{RI}]))', "{{model}}")],
        unit="reqps",
    )
    b.ts(
        "Error ratio (5xx)", "错误率（5xx）",
        "Share of the gateway's answers that were 5xx, by model. Alert TridentHighErrorRatio at 5 %.",
        "网关应答中 5xx 的比例（按模型）。超过 5% 触发 TridentHighErrorRatio。",
        [q(
            f'(sum by (model) (rate(trident_requests_total{{{GW},status=~"5.."}}[{RI}])) or (0 * sum by (model) (rate(trident_requests_total{{{GW}}}[{RI}]))))'
            f' / sum by (model) (rate(trident_requests_total{{{GW}}}[{RI}]))',
            "{{model}}",
        )],
        unit="percentunit", min=0,
    )
    b.ts(
        "p95 latency", "P95 延迟",
        "95th percentile of request duration at the gateway, by model (streams: until the last byte).",
        "网关侧请求耗时的第 95 百分位（按模型；流式请求计到最后一个字节）。",
        [q(pct(0.95, "trident_request_duration_seconds", "model", GW), "{{model}}")],
        unit="s",
    )
    b.row("Saturation", "饱和度")
    b.ts(
        "Queue depth", "队列深度",
        "Inputs (encoders) or sequences (chat) waiting in each engine's queue.",
        "各引擎队列中等待的输入（编码器）或序列（对话）。",
        [q(f'sum by (model) (trident_queue_depth{{{EN}}})', "{{model}}")],
    )
    b.ts(
        "KV cache usage", "KV 缓存占用",
        "Fraction of the chat engine's KV budget reserved by running sequences. Alert at 90 %.",
        "对话引擎 KV 预算被运行中序列占用的比例。超过 90% 告警。",
        [q(f'max by (model) (trident_kv_cache_usage_ratio{{{EN}}})', "{{model}}")],
        unit="percentunit", min=0, max=1,
    )
    b.ts(
        "Rejected / s by reason", "每秒拒绝（按原因）",
        "Requests refused before running, by reason (queue_full = 429, invalid, too_long, unauthorized, unavailable …), gateway and engines together.",
        "运行前被拒绝的请求（按原因：queue_full 即 429、invalid、too_long、unauthorized、unavailable 等），含网关与引擎。",
        [q(f'sum by (model, reason) (rate(trident_rejected_requests_total{{instance=~"$instance",model=~"$model"}}[{RI}]))', "{{model}} {{reason}}")],
        unit="reqps",
    )
    return b


def chat():
    b = Board(
        "trident-chat", "trident chat engine", "对话引擎",
        "Chat engines: latency of the first and following tokens, throughput, the scheduler's sequences and the KV cache.",
        kind="chat", tags=["engine"],
    )
    # Series with a `kind` label are narrowed to chat ("All" is `.*`); the chat-only
    # families (TTFT, ITL, sequences, KV) carry `model` alone.
    c = 'component="engine",' + SEL
    ck = 'component="engine",kind="chat",' + SEL
    gk = 'component="gateway",kind="chat",' + SEL
    b.row("Latency", "延迟")
    b.ts(
        "Time to first token (TTFT)", "首 token 时间（TTFT）",
        "From the request's arrival at the engine to its first generated token: queueing + prefill.",
        "从请求到达引擎到生成第一个 token：排队加预填充。",
        quantiles("trident_time_to_first_token_seconds", "model", c), unit="s",
    )
    b.ts(
        "Time per output token (TPOT)", "每输出 token 时间（TPOT）",
        "Mean time between generated tokens of a sequence (inter-token latency sum / count).",
        "同一序列相邻生成 token 的平均间隔（token 间延迟总和 / 次数）。",
        [q(
            f'sum by (model) (rate(trident_inter_token_latency_seconds_sum{{{c}}}[{RI}])) / sum by (model) (rate(trident_inter_token_latency_seconds_count{{{c}}}[{RI}]))',
            "mean {{model}}",
        )],
        unit="s",
    )
    b.ts(
        "Inter-token latency (ITL)", "token 间延迟（ITL）",
        "Percentiles of the time between two streamed tokens; p99 shows stalls from long prefills sharing a step.",
        "两个流式 token 之间时间的百分位；p99 反映与长预填充同批时的停顿。",
        quantiles("trident_inter_token_latency_seconds", "model", c), unit="s",
    )
    b.ts(
        "Chat request latency", "对话请求延迟",
        "Duration of chat requests at the gateway (streams: until the last byte).",
        "网关侧对话请求耗时（流式请求计到最后一个字节）。",
        quantiles("trident_request_duration_seconds", "model", gk), unit="s", w=12,
    )
    b.ts(
        "Queue wait", "排队等待",
        "Time a request waited in the engine's inbox before the scheduler admitted it.",
        "请求在被调度器接纳前于引擎收件箱中等待的时间。",
        quantiles("trident_queue_wait_seconds", "model", ck, ps=(0.5, 0.95)), unit="s", w=12,
    )
    b.row("Throughput", "吞吐")
    b.ts(
        "Tokens / s", "每秒 token",
        "Generated and prompt tokens processed per second.",
        "每秒生成的 token 与处理的提示 token。",
        [
            q(f'sum by (model) (rate(trident_generated_tokens_total{{{ck}}}[{RI}]))', "generated {{model}}"),
            q(f'sum by (model) (rate(trident_prompt_tokens_total{{{ck}}}[{RI}]))', "prompt {{model}}"),
        ],
        unit="short",
    )
    b.ts(
        "Requests / s by status", "每秒请求（按状态码）",
        "Chat requests the engine answered per second, by status code.",
        "引擎每秒应答的对话请求（按状态码）。",
        [q(f'sum by (model, status) (rate(trident_requests_total{{{ck}}}[{RI}]))', "{{model}} {{status}}")],
        unit="reqps",
    )
    b.ts(
        "Batch size and tokens per step", "每步批大小与 token 数",
        "Sequences per forward step (p50/p95) and mean tokens per step (decode tokens + prefill chunks).",
        "每次前向计算的序列数（p50/p95）及每步平均 token 数（解码 token 加预填充块）。",
        quantiles("trident_batch_size", "model", ck, "seqs ", ps=(0.5, 0.95))
        + [q(
            f'sum by (model) (rate(trident_batch_tokens_sum{{{ck}}}[{RI}])) / sum by (model) (rate(trident_batch_tokens_count{{{ck}}}[{RI}]))',
            "tokens/step {{model}}",
        )],
    )
    b.row("Scheduler and KV cache", "调度与 KV 缓存")
    b.ts(
        "Running, waiting and KV-held sequences", "运行、等待与受 KV 限制的序列",
        "Sequences decoding now, sequences waiting for a slot, and how many of those wait because the KV budget is reserved. trident reserves a sequence's worst case (prompt + max_tokens) when it admits it, so it never preempts a running sequence: KV pressure shows here instead of as preemptions.",
        "正在解码的序列、等待槽位的序列，以及其中因 KV 预算已被预留而等待的数量。trident 在接纳序列时按最坏情况（提示加 max_tokens）预留 KV，因此从不抢占运行中的序列：KV 压力体现在此处，而非抢占次数。",
        [
            q(f'sum by (model) (trident_running_sequences{{{c}}})', "running {{model}}"),
            q(f'sum by (model) (trident_waiting_sequences{{{c}}})', "waiting {{model}}"),
            q(f'sum by (model) (trident_kv_blocked_sequences{{{c}}})', "held back by KV {{model}}"),
        ],
        w=12,
    )
    b.ts(
        "KV cache usage", "KV 缓存占用",
        "Fraction of the KV budget reserved (worst case prompt + max_tokens per sequence).",
        "已预留的 KV 预算比例（每序列按提示加 max_tokens 的最坏情况）。",
        [q(f'max by (model) (trident_kv_cache_usage_ratio{{{c}}})', "{{model}}")],
        unit="percentunit", min=0, max=1, w=12,
    )
    b.ts(
        "Prefix cache hit ratio", "前缀缓存命中率",
        "Share of admitted prompt tokens whose KV came from the prefix cache instead of a prefill (hit tokens / looked-up prompt tokens). Shared system prompts and tool lists raise it; a model with prefix_cache off, or the device path, stays at 0.",
        "已接纳请求的提示 token 中，KV 取自前缀缓存而非预填充的比例（命中 token / 查询的提示 token）。共享的系统提示与工具列表会提高它；关闭 prefix_cache 的模型或设备路径保持为 0。",
        [
            q(f'sum by (model) (rate(trident_prefix_cache_hit_tokens_total{{{c}}}[{RI}])) / sum by (model) (rate(trident_prefix_cache_query_tokens_total{{{c}}}[{RI}]))', "hit ratio {{model}}"),
        ],
        unit="percentunit", min=0, max=1, w=12,
    )
    b.ts(
        "Prefix cache tokens and blocks", "前缀缓存 token 与块数",
        "Prompt tokens looked up and served from the prefix cache per second, and the KV blocks (16 tokens each) the cache holds; idle blocks are evicted, least recently used first, before a request would wait for KV.",
        "每秒查询与命中前缀缓存的提示 token，以及缓存持有的 KV 块数（每块 16 个 token）；在请求因 KV 而等待之前，会先按最近最少使用淘汰空闲块。",
        [
            q(f'sum by (model) (rate(trident_prefix_cache_query_tokens_total{{{c}}}[{RI}]))', "looked up/s {{model}}"),
            q(f'sum by (model) (rate(trident_prefix_cache_hit_tokens_total{{{c}}}[{RI}]))', "hit/s {{model}}"),
            q(f'sum by (model) (trident_prefix_cache_blocks{{{c}}})', "blocks {{model}}"),
        ],
        w=12,
    )
    b.ts(
        "Rejections by reason", "拒绝（按原因）",
        "Chat requests refused: queue_full (429), too_long (context exceeded), invalid, disconnected.",
        "被拒绝的对话请求：queue_full（429）、too_long（超出上下文）、invalid、disconnected。",
        [q(f'sum by (model, reason) (rate(trident_rejected_requests_total{{{SEL},kind="chat"}}[{RI}]))', "{{model}} {{reason}}")],
        unit="reqps", w=24,
    )
    return b


def encoder(kind, zh):
    b = Board(
        f"trident-{kind}", f"trident {kind} engine", f"{zh}引擎",
        f"{kind.capitalize()} engines: inputs and tokens per second, batching, queueing and latency.",
        kind=kind, tags=["engine"],
    )
    c = f'component="engine",kind="{kind}",' + SEL
    g = f'component="gateway",kind="{kind}",' + SEL
    b.row("Throughput", "吞吐")
    b.ts(
        "Inputs / s", "每秒输入",
        "Inputs (texts, or query–document pairs) run through the model per second.",
        "每秒经过模型的输入（文本，或查询–文档对）。",
        [q(f'sum by (model) (rate(trident_batch_size_sum{{{c}}}[{RI}]))', "{{model}}")],
    )
    b.ts(
        "Tokens / s", "每秒 token",
        "Input tokens processed per second.",
        "每秒处理的输入 token。",
        [q(f'sum by (model) (rate(trident_prompt_tokens_total{{{c}}}[{RI}]))', "{{model}}")],
    )
    b.ts(
        "Requests / s by route and status", "每秒请求（按路由与状态码）",
        "Requests the engine answered per second.",
        "引擎每秒应答的请求。",
        [q(f'sum by (route, status) (rate(trident_requests_total{{{c}}}[{RI}]))', "{{route}} {{status}}")],
        unit="reqps",
    )
    b.row("Batching", "批处理")
    b.ts(
        "Batch fill (inputs per batch)", "批填充（每批输入数）",
        "Inputs per model batch: p50, p95 and mean. Low values under load mean batches are cut by the token budget or arrive one by one.",
        "每个模型批次的输入数：p50、p95 与均值。负载下偏低说明批次受 token 预算限制或请求逐个到达。",
        quantiles("trident_batch_size", "model", c, ps=(0.5, 0.95))
        + [q(
            f'sum by (model) (rate(trident_batch_size_sum{{{c}}}[{RI}])) / sum by (model) (rate(trident_batch_size_count{{{c}}}[{RI}]))',
            "mean {{model}}",
        )],
        w=12,
    )
    b.ts(
        "Tokens per batch", "每批 token 数",
        "Tokens per model batch (padded): p50, p95 and mean.",
        "每个模型批次的 token 数（含填充）：p50、p95 与均值。",
        quantiles("trident_batch_tokens", "model", c, ps=(0.5, 0.95))
        + [q(
            f'sum by (model) (rate(trident_batch_tokens_sum{{{c}}}[{RI}])) / sum by (model) (rate(trident_batch_tokens_count{{{c}}}[{RI}]))',
            "mean {{model}}",
        )],
        w=12,
    )
    b.row("Queueing and latency", "排队与延迟")
    b.ts(
        "Queue depth", "队列深度",
        "Inputs waiting for a batch.",
        "等待组批的输入数。",
        [q(f'sum by (model) (trident_queue_depth{{{c}}})', "{{model}}")],
    )
    b.ts(
        "Queue wait", "排队等待",
        "Time an input waited before its batch ran.",
        "输入在其批次运行前等待的时间。",
        quantiles("trident_queue_wait_seconds", "model", c), unit="s",
    )
    b.ts(
        "Request latency", "请求延迟",
        "Duration at the gateway (what clients saw), by model.",
        "网关侧耗时（客户端所见），按模型。",
        quantiles("trident_request_duration_seconds", "model", g), unit="s",
    )
    b.ts(
        "Rejections by reason", "拒绝（按原因）",
        "Requests refused: queue_full (429), invalid, too_long, disconnected (client left before its batch).",
        "被拒绝的请求：queue_full（429）、invalid、too_long、disconnected（客户端在组批前离开）。",
        [q(f'sum by (model, reason) (rate(trident_rejected_requests_total{{{SEL},kind="{kind}"}}[{RI}]))', "{{model}} {{reason}}")],
        unit="reqps", w=24,
    )
    return b


def gateway():
    b = Board(
        "trident-gateway", "trident gateway", "网关",
        "The OpenAI-compatible gateway: per-route rates and latencies, error statuses, rejections, retries and ejections.",
        tags=["gateway"],
    )
    b.row("Routes", "路由")
    b.ts(
        "Requests / s by route", "每秒请求（按路由）",
        "Requests answered per second by route template and status.",
        "每秒应答的请求（按路由模板与状态码）。",
        [q(f'sum by (route, status) (rate(trident_requests_total{{{GW}}}[{RI}]))', "{{route}} {{status}}")],
        unit="reqps", w=12,
    )
    b.ts(
        "Latency by route (p50 / p95 / p99)", "按路由延迟（p50 / p95 / p99）",
        "Gateway request duration by route (streams: until the last byte).",
        "网关请求耗时（按路由；流式请求计到最后一个字节）。",
        quantiles("trident_request_duration_seconds", "route", GW), unit="s", w=12,
    )
    b.row("Errors and shedding", "错误与限流")
    b.ts(
        "Errors by status (429 / 503 / 504 / 5xx)", "错误（按状态码）",
        "4xx and 5xx answers per second by status: 429 admission full, 503 no ready replica or draining, 504 timeout, 502 engine failure.",
        "每秒 4xx/5xx 应答（按状态码）：429 准入已满，503 无就绪副本或排空中，504 超时，502 引擎故障。",
        [q(f'sum by (model, status) (rate(trident_requests_total{{{GW},status=~"[45].."}}[{RI}]))', "{{model}} {{status}}")],
        unit="reqps", w=12,
    )
    b.ts(
        "Rejected by reason", "拒绝（按原因）",
        "Gateway rejections: unauthorized (bad or missing API key), model_not_found, invalid, queue_full (429), unavailable (503).",
        "网关拒绝：unauthorized（API 密钥错误或缺失）、model_not_found、invalid、queue_full（429）、unavailable（503）。",
        [q(f'sum by (reason) (rate(trident_rejected_requests_total{{component="gateway",instance=~"$instance"}}[{RI}]))', "{{reason}}")],
        unit="reqps", w=12,
    )
    b.ts(
        "Ignored request fields", "被忽略的请求字段",
        "Top-level request fields the engines do not read (store, metadata, user, …), by model and field; past 64 names they count as 'other'. A new name here is a client feature the appliance silently does not provide.",
        "引擎未读取而忽略的顶层请求字段（store、metadata、user 等），按模型与字段；超过 64 个名称后记为 other。此处出现新名称，说明客户端用到了本设备未提供的功能。",
        [q(f'sum by (model, field) (rate(trident_ignored_request_fields_total{{instance=~"$instance"}}[{RI}]))', "{{model}} {{field}}")],
        unit="reqps", w=12,
    )
    b.row("Upstreams", "上游")
    b.ts(
        "Retries / s", "每秒重试",
        "Requests retried on another replica after a connection failure before any response byte.",
        "在收到任何响应字节前连接失败、改投其他副本的请求。",
        [q(f'sum by (model) (rate(trident_upstream_retries_total{{{GW}}}[{RI}]))', "{{model}}")],
        unit="reqps",
    )
    b.ts(
        "Ejections", "摘除",
        "Replicas taken out of rotation after consecutive failures, per interval.",
        "连续失败后被移出轮转的副本次数（每区间）。",
        [q(f'sum by (model) (increase(trident_upstream_ejections_total{{{GW}}}[{RI}]))', "{{model}}")],
    )
    b.ts(
        "In-flight requests", "处理中请求",
        "Requests the gateway holds right now (sampled at each scrape).",
        "网关当前持有的请求数（每次抓取时采样）。",
        [q('sum by (instance) (trident_gateway_inflight_requests{component="gateway",instance=~"$instance"})', "{{instance}}")],
    )
    b.ts(
        "Open connections", "打开的连接",
        "Client connections the gateway holds open (sampled at each scrape), and connections refused with 503 because max_connections were open.",
        "网关当前保持的客户端连接数（每次抓取时采样），以及因达到 max_connections 而以 503 拒绝的连接。",
        [
            q('sum by (instance) (trident_gateway_open_connections{component="gateway",instance=~"$instance"})', "open {{instance}}"),
            q(f'sum by (instance) (increase(trident_gateway_refused_connections_total{{component="gateway",instance=~"$instance"}}[{RI}]))', "refused {{instance}}"),
        ],
    )
    return b


def gpu():
    b = Board(
        "trident-gpu", "trident GPUs", "GPU 显卡",
        "Per-GPU utilisation, memory, temperature and power from the CUDA build's NVML metrics, and which model each GPU serves. Empty on a CPU build.",
        tags=["gpu"],
    )
    s = 'instance=~"$instance"'
    b.row("GPUs", "显卡")
    b.ts(
        "GPU utilisation", "GPU 利用率",
        "Fraction of time a kernel ran on the GPU (NVML).",
        "GPU 上有内核运行的时间比例（NVML）。",
        [q(f'max by (gpu) (trident_gpu_utilization_ratio{{{s}}})', "GPU {{gpu}}")],
        unit="percentunit", min=0, max=1, w=12,
    )
    b.ts(
        "GPU memory used", "GPU 显存占用",
        "Memory in use and memory size per GPU. Alert TridentGpuMemoryNearlyFull at 95 %.",
        "每块 GPU 的已用显存与总显存。超过 95% 触发 TridentGpuMemoryNearlyFull。",
        [
            q(f'max by (gpu) (trident_gpu_memory_used_bytes{{{s}}})', "used GPU {{gpu}}"),
            q(f'max by (gpu) (trident_gpu_memory_total_bytes{{{s}}})', "total GPU {{gpu}}"),
        ],
        unit="bytes", w=12,
    )
    b.ts(
        "GPU temperature", "GPU 温度",
        "Core temperature per GPU. Alert TridentGpuTooHot above 85 °C.",
        "每块 GPU 的核心温度。高于 85 °C 触发 TridentGpuTooHot。",
        [q(f'max by (gpu) (trident_gpu_temperature_celsius{{{s}}})', "GPU {{gpu}}")],
        unit="celsius",
    )
    b.ts(
        "GPU power", "GPU 功耗",
        "Power draw per GPU.",
        "每块 GPU 的功耗。",
        [q(f'max by (gpu) (trident_gpu_power_watts{{{s}}})', "GPU {{gpu}}")],
        unit="watt",
    )
    b.stat(
        "Models per GPU", "GPU 上的模型",
        "Which model's engine the GPU plan placed on each GPU.",
        "GPU 规划将哪些模型的引擎放在各块 GPU 上。",
        [q(f'max by (gpu, model) (trident_gpu_model_assigned{{{SEL}}})', "GPU {{gpu}}: {{model}}")],
    )
    return b


def host():
    b = Board(
        "trident-host", "trident host and processes", "主机与进程",
        "CPU, memory, file descriptors and threads of the gateway and of each engine process, and engine restarts.",
        tags=["host"],
    )
    s = 'job="trident",instance=~"$instance",model=~"$model"'
    b.row("Processes", "进程")
    b.ts(
        "CPU (cores)", "CPU（核）",
        "CPU time per second of the gateway (supervisor included) and of each engine process.",
        "网关（含监督进程）与各引擎进程每秒消耗的 CPU 时间。",
        [q(f'sum by (component, model) (rate(process_cpu_seconds_total{{{s}}}[{RI}]))', "{{component}} {{model}}")],
    )
    b.ts(
        "Resident memory", "常驻内存",
        "Resident set size per process (weights, KV cache, buffers).",
        "各进程的常驻内存（权重、KV 缓存、缓冲区）。",
        [q(f'sum by (component, model) (process_resident_memory_bytes{{{s}}})', "{{component}} {{model}}")],
        unit="bytes",
    )
    b.ts(
        "Open file descriptors", "打开的文件描述符",
        "Open fds as a share of each process's limit (connections, model files). Alert at 80 %.",
        "各进程打开的文件描述符占上限的比例（连接、模型文件）。超过 80% 告警。",
        [q(
            f'max by (component, model) (process_open_fds{{{s}}} / process_max_fds{{{s}}})',
            "{{component}} {{model}}",
        )],
        unit="percentunit", min=0,
    )
    b.ts(
        "Threads", "线程",
        "OS threads per process.",
        "各进程的操作系统线程数。",
        [q(f'sum by (component, model) (process_threads{{{s}}})', "{{component}} {{model}}")],
    )
    b.ts(
        "Process uptime", "进程运行时间",
        "Seconds since each process started; a drop is a restart.",
        "各进程启动以来的秒数；骤降即为重启。",
        [q(f'max by (component, model) (time() - process_start_time_seconds{{{s}}})', "{{component}} {{model}}")],
        unit="s",
    )
    b.ts(
        "Engine restarts", "引擎重启",
        "Restarts per engine in each interval, from the supervisor's counter.",
        "各引擎每区间的重启次数（来自监督进程计数器）。",
        [q(f'sum by (model) (increase(trident_engine_restarts_total{{{GW}}}[{RI}]))', "{{model}}")],
    )
    return b


BOARDS = {
    "trident.json": overview,
    "trident-chat.json": chat,
    "trident-embedding.json": lambda: encoder("embedding", "向量"),
    "trident-rerank.json": lambda: encoder("rerank", "重排序"),
    "trident-gateway.json": gateway,
    "trident-gpu.json": gpu,
    "trident-host.json": host,
}


def render(make):
    return json.dumps(make().json(), indent=2, ensure_ascii=False) + "\n"


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    for name, make in BOARDS.items():
        path, text = OUT / name, render(make)
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"dashboards out of date (run {sys.argv[0]}): {', '.join(stale)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
