//! Tool calling on the real SmolLM2 chat engine: `tool_choice` required / named (enforced by
//! the grammar engine) come back as `message.tool_calls` with `finish_reason: "tool_calls"`,
//! streamed as `tool_calls` deltas; the second turn (the assistant's call and a `role: tool`
//! result) renders and answers; and the official `openai` client runs the whole loop.

use serde_json::{json, Value};

use crate::chat::{engine, post, question};
use crate::common::chat::{root, sse_data};

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 32}},
                       "required": ["city"], "additionalProperties": false}}},
           {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object",
        "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}}, "required": ["zone"],
        "additionalProperties": false}}}])
}

#[tokio::test]
async fn required_and_named_tool_calls_come_back_as_tool_calls() {
    let Some(e) = engine().await else { return };
    for (choice, want) in [
        (json!("required"), None),
        (
            json!({"type": "function", "function": {"name": "get_time"}}),
            Some("get_time"),
        ),
    ] {
        let body = json!({"model": "chat", "messages": question("What is the weather in Paris?"),
                          "tools": weather_tools(), "tool_choice": choice, "temperature": 0, "max_tokens": 64});
        let (status, v) = post(&e.base, "/v1/chat/completions", body).await;
        assert_eq!(status, 200, "{v}");
        let c = &v["choices"][0];
        assert_eq!(c["finish_reason"], "tool_calls", "{v}");
        assert!(c["message"]["content"].is_null(), "{v}");
        let call = &c["message"]["tool_calls"][0];
        assert_eq!(call["type"], "function");
        assert!(call["id"].as_str().unwrap().starts_with("call_"));
        let name = call["function"]["name"].as_str().unwrap();
        if let Some(w) = want {
            assert_eq!(name, w);
        }
        let args: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        match name {
            "get_weather" => assert!(args["city"].is_string(), "{args}"),
            "get_time" => assert!(
                ["UTC", "CET"].contains(&args["zone"].as_str().unwrap()),
                "{args}"
            ),
            other => panic!("unknown function {other}"),
        }
    }
}

#[tokio::test]
async fn streamed_tool_calls_and_the_second_turn() {
    let Some(e) = engine().await else { return };
    let body = json!({"model": "chat", "messages": question("Weather in Rome?"), "tools": weather_tools(),
                      "tool_choice": "required", "parallel_tool_calls": false, "temperature": 0,
                      "max_tokens": 64, "stream": true});
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", e.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let events = sse_data(&r.text().await.unwrap());
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let deltas: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert_eq!(
        deltas.len(),
        1,
        "one call (parallel_tool_calls false): {chunks:?}"
    );
    assert_eq!(deltas[0]["index"], 0);
    let finish: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
        .collect();
    assert_eq!(finish, ["tool_calls"]);
    let call = deltas[0].clone();

    // Turn two: the call (arguments as the JSON string OpenAI sends) and the tool's answer.
    let mut call_msg = call.clone();
    call_msg.as_object_mut().unwrap().remove("index");
    let messages = json!([
        {"role": "user", "content": "Weather in Rome?"},
        {"role": "assistant", "content": null, "tool_calls": [call_msg]},
        {"role": "tool", "tool_call_id": call["id"], "content": "{\"temp_c\": 24}"}
    ]);
    let (status, v) = post(&e.base, "/v1/chat/completions",
        json!({"model": "chat", "messages": messages, "tools": weather_tools(), "max_tokens": 16, "temperature": 0})).await;
    assert_eq!(status, 200, "{v}");
    assert!(
        v["choices"][0]["message"]["content"].is_string()
            || v["choices"][0]["message"]["tool_calls"].is_array(),
        "{v}"
    );

    // Bad tool requests are 400s naming the parameter.
    for (extra, param) in [
        (
            json!({"tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            "tool_choice",
        ),
        (
            json!({"tool_choice": "required", "response_format": {"type": "json_object"}}),
            "tool_choice",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": ""}}]}),
            "tools[0].function.name",
        ),
    ] {
        let mut b = json!({"model": "chat", "messages": question("x"), "tools": weather_tools()});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        let (status, v) = post(&e.base, "/v1/chat/completions", b).await;
        assert_eq!(
            (status, v["error"]["param"].as_str()),
            (400, Some(param)),
            "{v}"
        );
    }
}

#[tokio::test]
async fn openai_python_client_runs_a_tool_loop_and_structured_output() {
    let Some(e) = engine().await else { return };
    let Some(python) = crate::common::chat::openai_python() else {
        return;
    };
    let out = tokio::process::Command::new(&python)
        .arg(root().join("tests/openai_tools.py"))
        .arg(format!("{}/v1", e.base))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("script prints JSON");
    assert_eq!(v["finish_reason"], "tool_calls", "{v}");
    assert!(v["content"].is_null(), "{v}");
    assert_eq!(v["name"], "get_weather");
    assert!(v["arguments"]["city"].is_string(), "{v}");
    assert!(v["second_content"].is_string(), "{v}");
    assert_eq!(v["streamed_name"], "get_weather");
    assert!(v["streamed_arguments"]["city"].is_string(), "{v}");
    assert_eq!(v["streamed_finish"], "tool_calls");
    assert!(
        v["structured"]["city"].is_string() && v["structured"]["country"].is_string(),
        "{v}"
    );
}
