"""Streams one chat completion from a trident chat engine with the official `openai`
client and prints what it received as JSON (used by tests/api/chat.rs).

Usage: python3 tests/openai_stream.py http://127.0.0.1:PORT/v1
"""

import json
import sys

from openai import OpenAI


def main() -> None:
    client = OpenAI(base_url=sys.argv[1], api_key="unused")
    stream = client.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "What is 2+2?"}],
        temperature=0,
        max_tokens=32,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, role, finish, usage = "", None, None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
        for choice in chunk.choices:
            role = role or choice.delta.role
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    print(json.dumps({"text": text, "role": role, "finish_reason": finish, "completion_tokens": usage}))


if __name__ == "__main__":
    main()
