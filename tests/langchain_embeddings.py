"""LangChain's `OpenAIEmbeddings` against a trident embedding engine at argv[1] (…/v1)
serving argv[2]. Prints what it saw as JSON (used by tests/api/embed_clients.rs).

* `check_embedding_ctx_length=False` sends strings: the vectors must equal /v1/embeddings'.
* The default (`True`) tokenises with tiktoken's cl100k_base and sends the token ids, which
  trident refuses by default with a 400 naming `input`. tiktoken downloads cl100k_base from
  the internet the first time; where it cannot, the script says so and sends cl100k-style
  ids through the official `openai` client instead, which must get the same 400.

Usage: python3 tests/langchain_embeddings.py http://127.0.0.1:PORT/v1 MODEL
"""

import json
import sys

import openai
from langchain_openai import OpenAIEmbeddings

base, model = sys.argv[1], sys.argv[2]
DOCS = ["LangChain talks to trident", "a second document about retrieval"]
QUERY = "who talks to trident?"

plain = OpenAIEmbeddings(model=model, base_url=base, api_key="unused",
                         check_embedding_ctx_length=False)
documents = plain.embed_documents(DOCS)
query = plain.embed_query(QUERY)


def refusal(e: openai.BadRequestError) -> dict:
    err = (e.body or {}) if isinstance(e.body, dict) else {}
    err = err.get("error", err)
    return {"status_code": e.status_code, "param": err.get("param"), "code": err.get("code"),
            "message": err.get("message")}


default_path = None
try:
    import tiktoken
    tiktoken.get_encoding("cl100k_base")
    tiktoken_ok = True
except Exception as e:  # no network: the file cannot be fetched
    tiktoken_ok = False
    print(f"SKIPPED: LangChain's default path needs tiktoken's cl100k_base file ({type(e).__name__}); "
          "sending cl100k-style token ids with the openai client instead", file=sys.stderr)

if tiktoken_ok:
    try:
        OpenAIEmbeddings(model=model, base_url=base, api_key="unused").embed_documents(DOCS)
        default_path = {"status_code": 200}
    except openai.BadRequestError as e:
        default_path = refusal(e)

client = openai.OpenAI(base_url=base, api_key="unused")
# "hello world" in cl100k_base, as LangChain would send it (a list of token lists).
try:
    client.embeddings.create(model=model, input=[[15339, 1917]])
    ids = {"status_code": 200}
except openai.BadRequestError as e:
    ids = refusal(e)

print(json.dumps({"documents": documents, "query": query, "docs": DOCS, "query_text": QUERY,
                  "tiktoken": tiktoken_ok, "default_path": default_path, "ids": ids}))
