"""Writes random-weight XLM-R large models shaped like the seed's bge-m3 and
bge-reranker-v2-m3 (24 layers, hidden 1024, 16 heads, intermediate 4096, vocab 250002,
8194 positions: 568M parameters), in the Hugging Face layout both trident and
sentence-transformers load. No weights are reachable offline, so the throughput figures of
scripts/bench/encoders-large.sh are measured on these.

  ~/.cache/trident-peers/venv/bin/python scripts/bench/xlmr_large_fixture.py OUT_DIR
      -> OUT_DIR/embedding  (XLMRobertaModel; CLS pooling + normalisation, like bge-m3)
         OUT_DIR/reranker   (XLMRobertaForSequenceClassification, 1 label)

Weights follow Hugging Face's init (normal, std 0.02; LayerNorm weight 1, bias 0) with
small random biases and LayerNorm offsets so those paths are exercised too; every tensor
is drawn from its own seed, so both models share the same encoder body. f32 on disk
(~2.3 GB each), written tensor by tensor without holding the model in memory.

The tokenizer is a Unigram model (the kind XLM-R's sentencepiece is) over the filler words
of trident's benchmarks, so a text of N filler words is N + 2 tokens for both tokenizers
(N + 4 for a pair); the rest of the 250,002 ids are placeholder pieces."""
import hashlib, json, os, struct, sys

import numpy as np

H, LAYERS, HEADS, INTER, VOCAB, POSITIONS = 1024, 24, 16, 4096, 250002, 8194
STD = 0.02

# trident::bench::filler_text and scripts/bench/rerank_peer.py's list, then
# ../shared/peers/embed_peer.py's (which capitalises the first word and ends with ".").
BENCH_WORDS = ("the model serves requests quickly while batches grow under load and latency stays "
               "low for every client that waits on an answer from engine gateway appliance runs "
               "offline in data centre with GPUs memory tokens vectors search documents ranking "
               "question reply stream metrics dashboard container image bundle network secure "
               "simple").split()
PEER_WORDS = ("the of and to in is that for it as was with be by on not this are or from at which "
              "but have an they you were her she there been one all we their has would when if so "
              "no out what up into can more said time about other than them some could these two "
              "may first then do any like now over such our even most made after also did many "
              "before must through back years where much your way down should because each just "
              "those people how too little state good very make world still own see men work long "
              "get here between").split()


def tokenizer_json():
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    pieces, seen = [], set(specials)

    def add(p, score):
        if p not in seen:
            seen.add(p)
            pieces.append([p, score])

    for w in BENCH_WORDS + PEER_WORDS:
        add("▁" + w, -5.0)
        add("▁" + w.capitalize(), -6.0)
    for c in ".,?!;:'\"-()":
        add(c, -7.0)
    add("▁", -8.0)
    for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789":
        add(c, -10.0)
    i = 0
    while len(pieces) < VOCAB - len(specials) - 1:
        add(f"▁⟨{i}⟩", -20.0)
        i += 1
    vocab = [[s, 0.0] for s in specials] + pieces + [["<mask>", 0.0]]
    assert len(vocab) == VOCAB

    def added(i, c):
        return {"id": i, "content": c, "single_word": False, "lstrip": c == "<mask>",
                "rstrip": False, "normalized": False, "special": True}

    tok = lambda t: {"SpecialToken": {"id": t, "type_id": 0}}
    seq = lambda s: {"Sequence": {"id": s, "type_id": 0}}
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [added(i, s) for i, s in enumerate(specials)] + [added(VOCAB - 1, "<mask>")],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFKC"}, {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}]},
        "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always",
                          "split": True},
        "post_processor": {"type": "TemplateProcessing",
                           "single": [tok("<s>"), seq("A"), tok("</s>")],
                           "pair": [tok("<s>"), seq("A"), tok("</s>"), tok("</s>"), seq("B"), tok("</s>")],
                           "special_tokens": {"<s>": {"id": "<s>", "ids": [0], "tokens": ["<s>"]},
                                              "</s>": {"id": "</s>", "ids": [2], "tokens": ["</s>"]}}},
        "decoder": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True},
        "model": {"type": "Unigram", "unk_id": 3, "vocab": vocab, "byte_fallback": False},
    }


def tensors(prefix, classifier):
    """(name, shape, kind) in checkpoint order; kind picks the init."""
    e = f"{prefix}embeddings"
    out = [(f"{e}.word_embeddings.weight", (VOCAB, H), "emb"),
           (f"{e}.position_embeddings.weight", (POSITIONS, H), "emb"),
           (f"{e}.token_type_embeddings.weight", (1, H), "emb"),
           (f"{e}.LayerNorm.weight", (H,), "gamma"), (f"{e}.LayerNorm.bias", (H,), "beta")]
    for l in range(LAYERS):
        n = f"{prefix}encoder.layer.{l}"
        for name, o, i in [("attention.self.query", H, H), ("attention.self.key", H, H),
                           ("attention.self.value", H, H), ("attention.output.dense", H, H),
                           ("intermediate.dense", INTER, H), ("output.dense", H, INTER)]:
            out += [(f"{n}.{name}.weight", (o, i), "w"), (f"{n}.{name}.bias", (o,), "bias")]
            if name == "attention.output.dense":
                out += [(f"{n}.attention.output.LayerNorm.weight", (H,), "gamma"),
                        (f"{n}.attention.output.LayerNorm.bias", (H,), "beta")]
        out += [(f"{n}.output.LayerNorm.weight", (H,), "gamma"), (f"{n}.output.LayerNorm.bias", (H,), "beta")]
    if classifier:
        out += [("classifier.dense.weight", (H, H), "w"), ("classifier.dense.bias", (H,), "bias"),
                ("classifier.out_proj.weight", (1, H), "w"), ("classifier.out_proj.bias", (1,), "bias")]
    return out


def values(name, shape, kind):
    # The seed ignores the "roberta." prefix so both models share the body's values.
    body = name.removeprefix("roberta.")
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(body.encode()).digest()[:8], "little"))
    if kind in ("emb", "w"):
        v = rng.standard_normal(shape, dtype=np.float32) * STD
        if body == "embeddings.word_embeddings.weight":
            v[1] = 0.0  # padding_idx, as nn.Embedding leaves it
    elif kind == "gamma":
        v = 1.0 + rng.standard_normal(shape, dtype=np.float32) * STD
    else:
        v = rng.standard_normal(shape, dtype=np.float32) * STD
    return np.ascontiguousarray(v, dtype="<f4")


def write_safetensors(path, specs):
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for name, shape, _ in specs:
        n = 4 * int(np.prod(shape))
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for name, shape, kind in specs:
            f.write(values(name, shape, kind).tobytes())
    os.replace(tmp, path)


def write_json(path, v):
    with open(path, "w") as f:
        json.dump(v, f, ensure_ascii=False, indent=1)


def write_model(d, classifier):
    os.makedirs(d, exist_ok=True)
    arch = "XLMRobertaForSequenceClassification" if classifier else "XLMRobertaModel"
    cfg = {"architectures": [arch], "model_type": "xlm-roberta", "vocab_size": VOCAB,
           "hidden_size": H, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
           "intermediate_size": INTER, "hidden_act": "gelu", "max_position_embeddings": POSITIONS,
           "type_vocab_size": 1, "layer_norm_eps": 1e-5, "pad_token_id": 1, "bos_token_id": 0,
           "eos_token_id": 2, "position_embedding_type": "absolute", "initializer_range": STD,
           "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
           "torch_dtype": "float32", "classifier_dropout": None}
    if classifier:
        cfg.update(num_labels=1, id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    write_json(os.path.join(d, "config.json"), cfg)
    write_json(os.path.join(d, "tokenizer.json"), tokenizer_json())
    write_json(os.path.join(d, "tokenizer_config.json"), {
        "tokenizer_class": "XLMRobertaTokenizer", "model_max_length": POSITIONS - 2,
        "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
        "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>"})
    write_json(os.path.join(d, "special_tokens_map.json"), {
        "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
        "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>"})
    if not classifier:
        # bge-m3's sentence-transformers modules: CLS pooling, then normalisation.
        write_json(os.path.join(d, "modules.json"), [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}])
        write_json(os.path.join(d, "sentence_bert_config.json"),
                   {"max_seq_length": POSITIONS - 2, "do_lower_case": False})
        os.makedirs(os.path.join(d, "1_Pooling"), exist_ok=True)
        write_json(os.path.join(d, "1_Pooling", "config.json"), {
            "word_embedding_dimension": H, "pooling_mode_cls_token": True,
            "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False})
        os.makedirs(os.path.join(d, "2_Normalize"), exist_ok=True)
    write_safetensors(os.path.join(d, "model.safetensors"),
                      tensors("roberta." if classifier else "", classifier))
    with open(os.path.join(d, ".complete"), "w") as f:
        f.write("xlmr-large random init v1\n")


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser("~/.cache/trident/models-large")
    for sub, cls in (("embedding", False), ("reranker", True)):
        d = os.path.join(out, sub)
        if not os.path.exists(os.path.join(d, ".complete")):
            write_model(d, cls)
            print(f"wrote {d}", file=sys.stderr)
