"""Cohere's embed and rerank APIs with the official `cohere` Python client, against a trident
gateway at argv[1] serving the embedding model argv[2] and the rerank model argv[3].
Prints what the client parsed as JSON (used by tests/api/embed_clients.rs).

Usage: python3 tests/cohere_client.py http://127.0.0.1:PORT EMBED_MODEL RERANK_MODEL
"""

import json
import sys

import cohere

base, embed_model, rerank_model = sys.argv[1], sys.argv[2], sys.argv[3]
TEXTS = ["trident serves embeddings", "a second, somewhat longer text about vector databases"]
TYPES = ["float", "int8", "uint8", "binary", "ubinary", "base64"]
QUERY = "where do the engines run?"
DOCS = ["bananas are yellow", "the engines run as child processes of the supervisor"]

v2 = cohere.ClientV2(base_url=base, api_key="unused")
e2 = v2.embed(model=embed_model, texts=TEXTS, input_type="search_document",
              embedding_types=TYPES)
inputs = v2.embed(model=embed_model, input_type="search_query", embedding_types=["float"],
                  inputs=[{"content": [{"type": "text", "text": TEXTS[0]}]}])
r2 = v2.rerank(model=rerank_model, query=QUERY, documents=DOCS, top_n=2)

v1 = cohere.Client(base_url=base, api_key="unused")
floats = v1.embed(model=embed_model, texts=TEXTS, input_type="search_query")
by_type = v1.embed(model=embed_model, texts=TEXTS, input_type="classification",
                   embedding_types=["int8", "ubinary"], truncate="END")
r1 = v1.rerank(model=rerank_model, query=QUERY, documents=DOCS, return_documents=True)

try:
    v2.embed(model=embed_model, texts=TEXTS, input_type="search_query", embedding_types=["int4"])
    refused = None
except cohere.errors.BadRequestError as e:
    refused = {"status_code": e.status_code, "body": e.body}

emb = e2.embeddings
print(json.dumps({
    "v2": {
        "type": type(e2).__name__,
        "id": e2.id,
        "texts": e2.texts,
        "version": e2.meta.api_version.version,
        "input_tokens": e2.meta.billed_units.input_tokens,
        "float": emb.float_,
        "int8": emb.int8,
        "uint8": emb.uint8,
        "binary": emb.binary,
        "ubinary": emb.ubinary,
        "base64": emb.base64,
    },
    "v2_inputs": {"float": inputs.embeddings.float_, "texts": inputs.texts},
    "v1_floats": {"type": type(floats).__name__, "response_type": floats.response_type,
                  "embeddings": floats.embeddings, "texts": floats.texts,
                  "version": floats.meta.api_version.version},
    "v1_by_type": {"type": type(by_type).__name__, "response_type": by_type.response_type,
                   "int8": by_type.embeddings.int8, "ubinary": by_type.embeddings.ubinary,
                   "float": by_type.embeddings.float_},
    "rerank_v2": [{"index": r.index, "relevance_score": r.relevance_score} for r in r2.results],
    "rerank_v1": [{"index": r.index, "relevance_score": r.relevance_score,
                   "text": r.document.text if r.document else None} for r in r1.results],
    "refused": refused,
}))
