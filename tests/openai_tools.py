"""A two-turn tool loop and structured output with the official openai client, against a
trident chat engine at argv[1] (…/v1). Prints what it saw as JSON for the Rust test to check."""
import json
import sys

from openai import OpenAI

client = OpenAI(base_url=sys.argv[1], api_key="unused")
tools = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 32}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}]
messages = [{"role": "user", "content": "What is the weather in Paris?"}]
first = client.chat.completions.create(
    model="chat", messages=messages, tools=tools, tool_choice="required",
    temperature=0, max_tokens=64)
msg = first.choices[0].message
call = msg.tool_calls[0]
args = json.loads(call.function.arguments)

# The second turn: the assistant's call and the tool's result go back, the model answers.
messages.append({"role": "assistant", "content": None, "tool_calls": [call.model_dump()]})
messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp_c": 21, "sky": "clear"})})
second = client.chat.completions.create(
    model="chat", messages=messages, tools=tools, tool_choice="none", temperature=0, max_tokens=24)

# Streamed, the call arrives as tool_calls deltas.
stream = client.chat.completions.create(
    model="chat", messages=messages[:1], tools=tools, tool_choice="required",
    temperature=0, max_tokens=64, stream=True)
streamed_args, streamed_name, streamed_finish = "", None, None
for chunk in stream:
    if not chunk.choices:
        continue
    d = chunk.choices[0].delta
    for tc in d.tool_calls or []:
        streamed_name = tc.function.name or streamed_name
        streamed_args += tc.function.arguments or ""
    streamed_finish = chunk.choices[0].finish_reason or streamed_finish

# Structured output through the client's own parameter.
structured = client.chat.completions.create(
    model="chat", messages=[{"role": "user", "content": "Give a city and its country as JSON."}],
    response_format={"type": "json_schema", "json_schema": {"name": "place", "strict": True, "schema": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 24},
                                         "country": {"type": "string", "maxLength": 24}},
        "required": ["city", "country"], "additionalProperties": False}}},
    temperature=0, max_tokens=64)

print(json.dumps({
    "finish_reason": first.choices[0].finish_reason,
    "content": msg.content,
    "name": call.function.name,
    "arguments": args,
    "call_id": call.id,
    "second_finish": second.choices[0].finish_reason,
    "second_content": second.choices[0].message.content,
    "streamed_name": streamed_name,
    "streamed_arguments": json.loads(streamed_args),
    "streamed_finish": streamed_finish,
    "structured": json.loads(structured.choices[0].message.content),
}))
