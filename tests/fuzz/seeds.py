#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/seed-*).

Small real inputs, one per shape each target reads: a valid request of every route, a tiny
complete GGUF (one llama layer, F32, gpt2 tokenizer metadata), a safetensors file, SSE
streams, and bundle archives in bundle_tar's entry format. Run it again after changing a
format; inputs the fuzzers found (crash-*, regression inputs) are kept beside the seeds.
"""

import hashlib
import json
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def js(v):
    return json.dumps(v, separators=(",", ":"))


# --- chat_request -----------------------------------------------------------------------
weather = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
chats = {
    "plain": {"model": "chat", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16},
    "sampling": {
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "temperature": 0.7, "top_p": 0.9, "top_k": 40, "seed": 7, "presence_penalty": 0.5,
        "frequency_penalty": -0.5, "repetition_penalty": 1.1, "stop": ["\n", "END"], "n": 1,
        "max_completion_tokens": 32, "stream": True, "stream_options": {"include_usage": True},
    },
    "parts": {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]},
    "tools": {
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Nice\"}}</tool_call>"},
        ],
        "tools": [weather], "tool_choice": "auto", "parallel_tool_calls": False,
    },
    "tool_required": {"messages": [{"role": "user", "content": "{\"name\": \"get_weather\", \"parameters\": {}}"}],
                      "tools": [weather], "tool_choice": "required"},
    "tool_named": {"messages": [{"role": "user", "content": "x"}], "tools": [weather],
                   "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
    "json_schema": {"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema",
                    "json_schema": {"name": "p", "schema": {"type": "object", "properties": {"n": {"type": "integer"}}}}}},
    "json_object": {"messages": [{"role": "developer", "content": "x"}], "response_format": {"type": "json_object"}},
    "guided": {"messages": [{"role": "user", "content": "x"}], "guided_regex": "[a-z]+", "add_generation_prompt": False},
    "choice": {"messages": [{"role": "user", "content": "x"}], "guided_choice": ["yes", "no"]},
    "grammar": {"messages": [{"role": "user", "content": "x"}], "guided_grammar": "start: \"a\" | \"b\""},
}
for name, body in chats.items():
    write("chat_request", name, js(body))

# --- api_requests (first byte: route) ----------------------------------------------------
api = [
    (0, "completion", {"model": "chat", "prompt": "Once upon", "max_tokens": 8, "temperature": 0, "stop": "."}),
    (0, "completion_list", {"prompt": ["one"], "guided_json": {"type": "object"}, "echo": False}),
    (1, "embed", {"model": "embedding", "input": "hello", "dimensions": 128, "encoding_format": "base64"}),
    (1, "embed_many", {"model": "embedding", "input": ["a", "b"], "truncate": False}),
    (1, "embed_tokens", {"model": "embedding", "input": [[101, 2023, 102], [101, 102]], "encoding_format": "float"}),
    (2, "rerank", {"model": "rerank", "query": "q", "documents": ["a", {"text": "b"}], "top_n": 1, "return_documents": True}),
    (3, "rerank_tei", {"query": "q", "texts": ["a", "bb"], "raw_scores": True, "return_text": True}),
    (3, "rerank_v1", {"query": "q", "documents": ["a"]}),
    (4, "score", {"model": "rerank", "text_1": "q", "text_2": ["a", "b"]}),
    (4, "score_nn", {"text_1": ["q", "r"], "text_2": ["a", "b"]}),
    (5, "tokenize", {"prompt": "hello", "add_special_tokens": False, "return_token_strs": True}),
    (5, "tokenize_chat", {"messages": [{"role": "user", "content": "hi"}], "add_generation_prompt": True}),
    (6, "detokenize", {"model": "chat", "tokens": [1, 2, 3]}),
    (7, "probe", {"model": "chat", "stream": True, "messages": []}),
]
for route, name, body in api:
    write("api_requests", name, bytes([route]) + js(body).encode())


# --- gguf_header ---------------------------------------------------------------------------
def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def kv(key, ty, value):
    out = gstr(key) + struct.pack("<I", ty)
    if ty == 4:
        out += struct.pack("<I", value)
    elif ty == 6:
        out += struct.pack("<f", value)
    elif ty == 8:
        out += gstr(value)
    elif ty == 9:  # array of strings or i32
        inner, items = value
        out += struct.pack("<IQ", inner, len(items))
        for it in items:
            out += gstr(it) if inner == 8 else struct.pack("<i", it)
    return out


def gguf(kvs, tensors, align=32):
    """GGUF v3: tensors are (name, dims innermost first); all F32, packed in order."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs))
    for k in kvs:
        out += kv(*k)
    offset, blobs = 0, []
    for name, dims in tensors:
        n = 1
        for d in dims:
            n *= d
        out += gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", 0, offset)
        blob = struct.pack("<%df" % n, *[((i % 7) - 3) / 8 for i in range(n)])
        blob += b"\0" * (-len(blob) % align)
        blobs.append(blob)
        offset += len(blob)
    out += b"\0" * (-len(out) % align)
    return out + b"".join(blobs)


H, FF, V = 8, 16, 6
tokens = ["a", "b", "ab", "<|im_start|>", "<|im_end|>", "Ġ"]
meta = [
    ("general.architecture", 8, "llama"),
    ("llama.embedding_length", 4, H),
    ("llama.attention.head_count", 4, 2),
    ("llama.attention.head_count_kv", 4, 1),
    ("llama.feed_forward_length", 4, FF),
    ("llama.block_count", 4, 1),
    ("llama.context_length", 4, 32),
    ("llama.rope.freq_base", 6, 10000.0),
    ("tokenizer.ggml.model", 8, "gpt2"),
    ("tokenizer.ggml.pre", 8, "qwen2"),
    ("tokenizer.ggml.tokens", 9, (8, tokens)),
    ("tokenizer.ggml.token_type", 9, (5, [1, 1, 1, 3, 3, 1])),
    ("tokenizer.ggml.merges", 9, (8, ["a b"])),
    ("tokenizer.ggml.eos_token_id", 4, 4),
    ("tokenizer.chat_template", 8, "{% for m in messages %}{{ m.content }}{% endfor %}"),
]
kvd = H // 2
layer = [
    ("blk.0.attn_norm.weight", [H]), ("blk.0.attn_q.weight", [H, H]), ("blk.0.attn_k.weight", [H, kvd]),
    ("blk.0.attn_v.weight", [H, kvd]), ("blk.0.attn_output.weight", [H, H]), ("blk.0.ffn_norm.weight", [H]),
    ("blk.0.ffn_gate.weight", [H, FF]), ("blk.0.ffn_up.weight", [H, FF]), ("blk.0.ffn_down.weight", [FF, H]),
]
full = [("token_embd.weight", [H, V])] + layer + [("output_norm.weight", [H])]
write("gguf_header", "llama_tiny", gguf(meta, full))
write("gguf_header", "qwen2_untied", gguf(
    [("general.architecture", 8, "qwen2")] + [(k.replace("llama.", "qwen2."), t, v) for k, t, v in meta[1:]],
    full + [("output.weight", [H, V]), ("blk.0.attn_q.bias", [H])]))
write("gguf_header", "header_only", gguf(meta[:7], [("token_embd.weight", [H, V])])[:400])

# --- safetensors_header ------------------------------------------------------------------
def safetensors(tensors):
    header, data = {"__metadata__": {"format": "pt"}}, b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = js(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


write("safetensors_header", "bert_tiny", safetensors([
    ("embeddings.word_embeddings.weight", "F32", [4, 2], struct.pack("<8f", *range(8))),
    ("embeddings.LayerNorm.weight", "F16", [2], b"\x00\x3c\x00\x3c"),
    ("pooler.dense.bias", "BF16", [2], b"\x80\x3f\x80\x3f"),
    ("position_ids", "I64", [1, 2], struct.pack("<2q", 0, 1)),
    ("scalar", "F32", [], struct.pack("<f", 1.0)),
]))
write("safetensors_header", "empty", safetensors([]))

# --- sse_relay (NUL separates frames) --------------------------------------------------------
chunk = js({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "Hi"}}]})
write("sse_relay", "chat_stream", f"data: {chunk}\n\n\0data: {chunk}\n\n\0: keep-alive\n\n\0data: [DONE]\n\n")
write("sse_relay", "half_event", f"data: {chunk}\n\n\0data: {chunk[:20]}")
write("sse_relay", "crlf_split", "data: a\r\n\0\r\0\nevent: x\rdata: b\r\0")
write("sse_relay", "one_byte_frames", "\0".join("data: x\n\ndata: y\n"))
write("sse_relay", "empty", "")


# --- bundle_tar ----------------------------------------------------------------------------
def entry(kind, name, body=b""):
    name = name.encode()
    return bytes([ord(kind), len(name)]) + name + struct.pack("<H", len(body)) + body


def bundle(files, extra=b"", sign=False, sizes=None):
    entries = [{"path": p, "size": len(b), "sha256": hashlib.sha256(b).hexdigest(), "mode": 0o644} for p, b in files]
    for e, size in zip(entries, sizes or []):
        e["size"] = size
    manifest = {
        "schema": 1, "kind": "trident-offline-bundle",
        "appliance": {"version": "0.1.0", "tag": "0.1.0", "git_sha": "abc", "arch": "amd64"},
        "created": "2026-12-01T00:00:00Z",
        "images": [{"ref": "trident:slim", "id": "sha256:1", "appliance": True}],
        "models": [{"ids": ["chat"], "path": "models/chat", "files": entries[:1]}],
        "files": entries[1:],
    }
    m = json.dumps(manifest, indent=2).encode() + b"\n"
    sums = "".join(f"{e['sha256']}  {e['path']}\n" for e in entries).encode()
    out = entry("5", "trident-offline/") + entry("0", "trident-offline/manifest.json", m)
    if sign:
        out += entry("0", "trident-offline/manifest.sig", b"\0" * 64)
    out += entry("0", "trident-offline/SHA256SUMS", sums)
    out += entry("0", "trident-offline/images/IMAGES", b"trident:slim sha256:1 - appliance\n")
    for p, b in files:
        out += entry("0", "trident-offline/" + p, b)
    return out + extra


files = [("models/chat/a.gguf", b"GGUF"), ("deploy.sh", b"#!/bin/sh\n"), ("config/models.json", b"{}")]
write("bundle_tar", "valid", bundle(files))
write("bundle_tar", "signed", bundle(files, sign=True))
write("bundle_tar", "long_name", bundle(files[:1], entry("L", "././@LongLink", b"trident-offline/" + b"d/" * 60 + b"x\0")
                                        + entry("0", "x", b"1")))
write("bundle_tar", "link_and_pax", bundle(files[:1], entry("2", "trident-offline/l") + entry("x", "p", b"20 path=../../etc\n")))

# Seen reading the reader while writing bundle_tar, reproduced by the target: listed
# sizes whose total overflows u64 (a panic in `Manifest::carried_bytes`).
with open(os.path.join(ROOT, "bundle_tar", "crash-manifest-size-overflow"), "wb") as f:
    f.write(bundle(files, sizes=[1 << 63, 1 << 63]))

# Seen reading GgufFile::config while writing gguf_header, reproduced by the target: a
# 0-dimensional token_embd.weight (GGUF allows it) indexed as `dims()[0]`.
with open(os.path.join(ROOT, "gguf_header", "crash-scalar-token-embd"), "wb") as f:
    f.write(gguf(meta[:7], [("token_embd.weight", [])]))
