//! Structured output on the real SmolLM2 chat engine: `response_format` json_schema and
//! json_object, vLLM's `guided_choice` / `guided_regex` / `structured_outputs`, streamed and
//! not, alone and batched with free-text streams; every output is parsed and checked with a
//! JSON Schema validator. Bad specifications are 400s naming the parameter.

use serde_json::{json, Value};

use crate::chat::{chat, chat_stream, engine, post, question};

fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 24},
            "age": {"type": "integer", "minimum": 0, "maximum": 130},
            "city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]}
        },
        "required": ["name", "age", "city"],
        "additionalProperties": false
    })
}

fn assert_valid(schema: &Value, text: &str) {
    let v: Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
    let validator = jsonschema::validator_for(schema).expect("schema compiles");
    let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{text} violates the schema: {errors:?}");
}

fn with_schema(q: &str, schema: &Value, max_tokens: usize) -> Value {
    json!({"model": "chat", "messages": question(q), "temperature": 0, "max_tokens": max_tokens,
           "response_format": {"type": "json_schema",
                               "json_schema": {"name": "person", "schema": schema, "strict": true}}})
}

#[tokio::test]
async fn json_schema_output_validates_streamed_and_not() {
    let Some(e) = engine().await else { return };
    let schema = person_schema();
    let body = with_schema(
        "Describe a person who lives in a big city, as JSON.",
        &schema,
        96,
    );
    let (text, finish, _) = chat(&e.base, body.clone()).await;
    assert_eq!(
        finish, "stop",
        "the grammar ends the object, then end-of-sequence: {text}"
    );
    assert_valid(&schema, &text);
    let (streamed, _, _) = chat_stream(&e.base, body).await;
    assert_eq!(
        streamed, text,
        "greedy streaming equals non-streaming under a constraint"
    );
    // Free text for the same prompt is not this JSON: the constraint changed the output.
    let (free, _, _) = chat(
        &e.base,
        json!({"model": "chat", "messages": question("Describe a person who lives in a big city, as JSON."),
               "temperature": 0, "max_tokens": 96}),
    )
    .await;
    assert_ne!(free, text);
}

#[tokio::test]
async fn json_object_choice_regex_and_vllm_forms() {
    let Some(e) = engine().await else { return };
    let base = |extra: Value| {
        let mut b = json!({"model": "chat", "messages": question("Is the sky blue? Answer."),
                           "temperature": 0.8, "seed": 7, "max_tokens": 48});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let (t, _, _) = chat(
        &e.base,
        base(json!({"response_format": {"type": "json_object"}})),
    )
    .await;
    assert!(
        serde_json::from_str::<Value>(&t).is_ok_and(|v| v.is_object()),
        "{t:?}"
    );
    let (t, _, _) = chat(
        &e.base,
        base(json!({"guided_choice": ["yes", "no", "maybe"]})),
    )
    .await;
    assert!(["yes", "no", "maybe"].contains(&t.as_str()), "{t:?}");
    let (t, _, _) = chat(&e.base, base(json!({"guided_regex": "[0-9]{3}-[0-9]{4}"}))).await;
    assert!(
        t.len() == 8
            && t.as_bytes()[3] == b'-'
            && t.chars().filter(char::is_ascii_digit).count() == 7,
        "{t:?}"
    );
    let (t, _, _) = chat(
        &e.base,
        base(json!({"structured_outputs": {"choice": ["red", "blue"]}})),
    )
    .await;
    assert!(["red", "blue"].contains(&t.as_str()), "{t:?}");
    let schema = json!({"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99},
                        "minItems": 2, "maxItems": 4});
    let (t, finish, _) = chat(
        &e.base,
        base(json!({"guided_json": schema.to_string(), "max_tokens": 64})),
    )
    .await;
    assert_eq!(finish, "stop", "{t:?}");
    assert_valid(&schema, &t);
    // /v1/completions takes the same fields.
    let (status, v) = post(
        &e.base,
        "/v1/completions",
        json!({"model": "chat", "prompt": "The answer is", "max_tokens": 8, "guided_choice": ["A", "B"]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(
        ["A", "B"].contains(&v["choices"][0]["text"].as_str().unwrap()),
        "{v}"
    );
}

#[tokio::test]
async fn constrained_and_free_streams_batch_together() {
    let Some(e) = engine().await else { return };
    let schema = person_schema();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let base = e.base.clone();
        let schema = schema.clone();
        tasks.push(tokio::spawn(async move {
            let q = format!("Person number {i}, as JSON.");
            if i % 2 == 0 {
                let (t, _, _) = chat_stream(&base, with_schema(&q, &schema, 96)).await;
                (true, t)
            } else {
                let b = json!({"model": "chat", "messages": question(&q), "temperature": 0, "max_tokens": 24});
                let (t, _, _) = chat_stream(&base, b).await;
                (false, t)
            }
        }));
    }
    for t in tasks {
        let (constrained, text) = t.await.unwrap();
        if constrained {
            assert_valid(&schema, &text);
        } else {
            assert!(!text.is_empty());
        }
    }
}

#[tokio::test]
async fn bad_specifications_are_400_naming_the_parameter() {
    let Some(e) = engine().await else { return };
    let m = question("hi");
    for (body, param) in [
        (
            json!({"model": "chat", "messages": m, "response_format": {"type": "xml"}}),
            "response_format",
        ),
        (
            json!({"model": "chat", "messages": m, "response_format": {"type": "json_schema"}}),
            "response_format",
        ),
        (
            json!({"model": "chat", "messages": m, "guided_regex": "([0-9"}),
            "guided_regex",
        ),
        (
            json!({"model": "chat", "messages": m, "guided_choice": []}),
            "guided_choice",
        ),
        (
            json!({"model": "chat", "messages": m, "guided_json": {"type": "no-such-type"}}),
            "guided_json",
        ),
        (
            json!({"model": "chat", "messages": m, "guided_choice": ["a"], "guided_regex": "b"}),
            "guided_choice",
        ),
        (
            json!({"model": "chat", "messages": m, "structured_outputs": {"json": {}, "regex": "a"}}),
            "structured_outputs",
        ),
    ] {
        let (status, v) = post(&e.base, "/v1/chat/completions", body.clone()).await;
        assert_eq!(status, 400, "{body} -> {v}");
        assert_eq!(v["error"]["param"], param, "{body} -> {v}");
    }
    // Null and "text" mean free text.
    for rf in [Value::Null, json!({"type": "text"})] {
        let (status, v) = post(
            &e.base,
            "/v1/chat/completions",
            json!({"model": "chat", "messages": m, "max_tokens": 2, "response_format": rf}),
        )
        .await;
        assert_eq!(status, 200, "{v}");
    }
}
