"""Client libraries against a trident appliance: argv[1] is the gateway's base URL (no /v1),
argv[2] its API key, argv[3] which client ("openai", "langchain" or "llamaindex").
Prints one JSON object of what each case saw; the Rust test checks it."""
import base64
import json
import struct
import sys

base, key, which = sys.argv[1], sys.argv[2], sys.argv[3]
out = {}


def case(name):
    def wrap(f):
        try:
            out[name] = f()
        except Exception as e:  # recorded, and the Rust test fails on it
            out[name] = {"exception": f"{type(e).__name__}: {e}"}
        return f
    return wrap


if which == "openai":
    import openai
    from pydantic import BaseModel

    c = openai.OpenAI(base_url=base + "/v1", api_key=key)
    q = [{"role": "user", "content": "What is the capital of France?"}]

    @case("chat")
    def _():
        r = c.chat.completions.create(model="chat", messages=q, temperature=0, max_tokens=8)
        return {"content": r.choices[0].message.content, "finish": r.choices[0].finish_reason,
                "usage": r.usage.total_tokens}

    @case("stream")
    def _():
        text, finish, usage = "", None, None
        for ch in c.chat.completions.create(model="chat", messages=q, temperature=0, max_tokens=8,
                                            stream=True, stream_options={"include_usage": True}):
            if ch.choices:
                text += ch.choices[0].delta.content or ""
                finish = ch.choices[0].finish_reason or finish
            if ch.usage:
                usage = ch.usage.total_tokens
        return {"content": text, "finish": finish, "usage": usage}

    @case("n")
    def _():
        r = c.chat.completions.create(model="chat", messages=q, temperature=0, max_tokens=6, n=3)
        return {"contents": [ch.message.content for ch in r.choices],
                "indices": [ch.index for ch in r.choices]}

    @case("logprobs")
    def _():
        r = c.chat.completions.create(model="chat", messages=q, temperature=0, max_tokens=5,
                                      logprobs=True, top_logprobs=2)
        lp = r.choices[0].logprobs.content
        return {"tokens": [t.token for t in lp], "content": r.choices[0].message.content,
                "top": [len(t.top_logprobs) for t in lp], "max": max(t.logprob for t in lp)}

    class City(BaseModel):
        name: str
        country: str

    @case("parse")
    def _():
        parse = getattr(c.chat.completions, "parse", None) or c.beta.chat.completions.parse
        r = parse(model="chat", messages=q, temperature=0, max_tokens=48, response_format=City)
        p = r.choices[0].message.parsed
        return {"name": p.name, "country": p.country}

    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                       "required": ["city"], "additionalProperties": False}}}]

    @case("tool_loop")
    def _():
        m = [{"role": "user", "content": "What is the weather in Paris?"}]
        first = c.chat.completions.create(model="chat", messages=m, tools=tools,
                                          tool_choice="required", temperature=0, max_tokens=48)
        call = first.choices[0].message.tool_calls[0]
        m.append({"role": "assistant", "content": None, "tool_calls": [call.model_dump()]})
        m.append({"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'})
        second = c.chat.completions.create(model="chat", messages=m, tools=tools, temperature=0,
                                           max_tokens=16)
        return {"name": call.function.name, "args": json.loads(call.function.arguments),
                "finish": first.choices[0].finish_reason,
                "answer": second.choices[0].message.content}

    @case("embeddings")
    def _():
        f = c.embeddings.create(model="embedding", input=["a cat", "a dog"])
        b = c.embeddings.create(model="embedding", input=["a cat"], encoding_format="base64")
        raw = base64.b64decode(b.data[0].embedding) if isinstance(b.data[0].embedding, str) else None
        decoded = list(struct.unpack(f"<{len(raw) // 4}f", raw)) if raw else b.data[0].embedding
        d = c.embeddings.create(model="embedding", input="a cat", dimensions=64)
        return {"float": [e.embedding for e in f.data], "base64": decoded,
                "dims": len(d.data[0].embedding)}

    @case("errors")
    def _():
        seen = {}
        for name, call in [
            ("bad_request", lambda: c.chat.completions.create(model="chat", messages=q, temperature=5)),
            ("not_found", lambda: c.chat.completions.create(model="nope", messages=q)),
            ("unauthorized", lambda: openai.OpenAI(base_url=base + "/v1", api_key="wrong")
                .chat.completions.create(model="chat", messages=q)),
        ]:
            try:
                call()
                seen[name] = "no error"
            except openai.APIStatusError as e:
                seen[name] = [type(e).__name__, e.status_code]
        return seen

elif which == "langchain":
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel

    llm = ChatOpenAI(base_url=base + "/v1", api_key=key, model="chat", temperature=0, max_tokens=48)

    @case("invoke")
    def _():
        return {"content": llm.invoke("What is the capital of France?").content}

    class City(BaseModel):
        name: str
        country: str

    @case("structured")
    def _():
        r = llm.with_structured_output(City, method="json_schema").invoke(
            "Name a city and its country.")
        return {"name": r.name, "country": r.country}

    def get_weather(city: str) -> str:
        """Current weather of a city."""
        return "sunny"

    @case("bind_tools")
    def _():
        msg = llm.bind_tools([get_weather], tool_choice="get_weather", strict=True).invoke(
            "What is the weather in Paris?")
        return {"calls": [{"name": t["name"], "args": t["args"]} for t in msg.tool_calls],
                "content": msg.content, "invalid": [str(t) for t in msg.invalid_tool_calls],
                "raw": msg.additional_kwargs.get("tool_calls"),
                "finish": msg.response_metadata.get("finish_reason")}

elif which == "llamaindex":
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai_like import OpenAILike

    llm = OpenAILike(api_base=base + "/v1", api_key=key, model="chat", is_chat_model=True,
                     temperature=0, max_tokens=8)

    @case("chat")
    def _():
        r = llm.chat([ChatMessage(role="user", content="What is the capital of France?")])
        return {"content": r.message.content}

    @case("complete")
    def _():
        return {"text": llm.complete("What is the capital of France?").text}

print(json.dumps(out))
