//! The chat engine on the real SmolLM2-135M-Instruct Q4_1 GGUF: greedy answers, streaming
//! equals non-streaming, concurrent streams equal solo answers, stop strings, max_tokens,
//! seeds, errors, client disconnects, tokenize/detokenize, and the official `openai`
//! Python client (when installed). Without the model file the tests print a notice and
//! pass vacuously (`scripts/fetch-models.sh` provides it).

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::OnceCell;

use crate::common::chat::{metric_value, root, sse_data, start_engine, Engine};

const GGUF: &str = "models/chat/SmolLM2-135M-Instruct.Q4_1.gguf";

fn models_json() -> String {
    json!({"models": {"chat": {"path": GGUF, "type": "chat", "port": 1, "max_model_len": 2048,
        "max_num_seqs": 16, "device": "cpu", "aliases": ["smollm2"]}}})
    .to_string()
}

fn have_model() -> bool {
    let ok = root().join(GGUF).exists();
    if !ok {
        eprintln!("SKIPPED: {GGUF} not found (run scripts/fetch-models.sh)");
    }
    ok
}

static CHAT: OnceCell<Engine> = OnceCell::const_new();

/// The engine shared by the tests of this module.
pub(crate) async fn engine() -> Option<&'static Engine> {
    if !have_model() {
        return None;
    }
    Some(
        CHAT.get_or_init(|| async {
            start_engine(&models_json(), "chat", Duration::from_secs(120)).await
        })
        .await,
    )
}

pub(crate) fn question(q: &str) -> Value {
    json!([{"role": "user", "content": q}])
}

pub(crate) async fn post(base: &str, path: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.expect("JSON body"))
}

/// Non-streamed chat completion: (content, finish_reason, usage).
pub(crate) async fn chat(base: &str, mut body: Value) -> (String, String, Value) {
    body["stream"] = json!(false);
    let (status, v) = post(base, "/v1/chat/completions", body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    let c = &v["choices"][0];
    assert_eq!(c["message"]["role"], "assistant");
    (
        c["message"]["content"]
            .as_str()
            .expect("content")
            .to_string(),
        c["finish_reason"]
            .as_str()
            .expect("finish_reason")
            .to_string(),
        v["usage"].clone(),
    )
}

/// Streamed chat completion with usage: (content, finish_reason, usage).
pub(crate) async fn chat_stream(base: &str, mut body: Value) -> (String, String, Value) {
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = sse_data(&r.text().await.expect("body"));
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("chunk JSON"))
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let mut text = String::new();
    let mut finish = None;
    let mut usage = Value::Null;
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], chunks[0]["id"]);
        if let Some(choice) = c["choices"].get(0) {
            assert!(finish.is_none(), "content after the finish chunk");
            if let Some(t) = choice["delta"]["content"].as_str() {
                text.push_str(t);
            }
            if let Some(f) = choice["finish_reason"].as_str() {
                finish = Some(f.to_string());
            }
        } else {
            usage = c["usage"].clone();
        }
    }
    (text, finish.expect("a finish chunk"), usage)
}

fn greedy(q: &str, max_tokens: usize) -> Value {
    json!({"model": "chat", "messages": question(q), "temperature": 0, "max_tokens": max_tokens})
}

#[tokio::test]
async fn greedy_answer_to_two_plus_two_contains_4() {
    let Some(e) = engine().await else { return };
    let (text, finish, usage) = chat(&e.base, greedy("What is 2+2?", 48)).await;
    assert!(text.contains('4'), "{text:?}");
    assert_eq!(finish, "stop");
    let (p, c) = (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    );
    assert!(p > 5 && c > 0 && c <= 48);
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), p + c);
    // The prompt count matches /tokenize on the same messages.
    let (status, t) = post(
        &e.base,
        "/tokenize",
        json!({"messages": question("What is 2+2?")}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(t["count"].as_u64().unwrap(), p);
    assert_eq!(t["max_model_len"], 2048);
    // The request shows up in the chat metrics.
    let text = reqwest::get(format!("{}/metrics", e.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "trident_time_to_first_token_seconds_count",
        "trident_inter_token_latency_seconds_count",
        "trident_generated_tokens_total",
        "trident_prompt_tokens_total",
        "trident_batch_size_count",
    ] {
        let v = metric_value(&text, name, &["model=\"chat\""]).unwrap_or(0.0);
        assert!(v >= 1.0, "{name} = {v}");
    }
    for name in [
        "trident_running_sequences",
        "trident_waiting_sequences",
        "trident_kv_cache_usage_ratio",
    ] {
        assert!(
            metric_value(&text, name, &["model=\"chat\""]).is_some(),
            "{name} missing"
        );
    }
    let models: Value = reqwest::get(format!("{}/v1/models", e.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["max_model_len"], 2048);
    assert_eq!(models["data"][0]["type"], "chat");
}

#[tokio::test]
async fn greedy_streaming_text_equals_non_streaming_text() {
    let Some(e) = engine().await else { return };
    let body = greedy("Name three colours of the rainbow.", 40);
    let (a, fa, ua) = chat(&e.base, body.clone()).await;
    let (b, fb, ub) = chat_stream(&e.base, body).await;
    assert!(!a.is_empty());
    assert_eq!(a, b);
    assert_eq!(fa, fb);
    assert_eq!(ua, ub);
}

#[tokio::test]
async fn eight_concurrent_greedy_streams_equal_their_solo_answers() {
    let Some(e) = engine().await else { return };
    let questions = [
        "What is the capital of France?",
        "Write one sentence about cats.",
        "What is 3 times 5?",
        "Say hello in Spanish.",
    ];
    let mut solo = Vec::new();
    for q in questions {
        solo.push(chat(&e.base, greedy(q, 24)).await.0);
    }
    let started = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let base = e.base.clone();
            let q = questions[i % questions.len()];
            tokio::spawn(async move { chat_stream(&base, greedy(q, 24)).await.0 })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), solo[i % questions.len()], "stream {i}");
    }
    eprintln!("8 concurrent streams took {:?}", started.elapsed());
}

#[tokio::test]
async fn stop_strings_and_max_tokens_are_honoured() {
    let Some(e) = engine().await else { return };
    let q = "Describe the sea in two sentences.";
    let (full, _, _) = chat(&e.base, greedy(q, 40)).await;
    let chars: Vec<(usize, char)> = full.char_indices().collect();
    assert!(chars.len() > 20, "{full:?}");
    // A stop string that straddles a word boundary (so very likely two tokens), taken
    // from the answer itself; the text stops right before its first occurrence.
    let stop = full
        .match_indices(' ')
        .filter(|(i, _)| *i >= 8)
        .find_map(|(i, _)| full.get(i - 2..i + 3))
        .expect("a stop string around a space");
    let cut = full.find(stop).unwrap();
    let mut body = greedy(q, 40);
    body["stop"] = json!(["zzzz-not-there", stop]);
    let (text, finish, _) = chat(&e.base, body.clone()).await;
    assert_eq!(text, full[..cut]);
    assert_eq!(finish, "stop");
    let (streamed, finish, _) = chat_stream(&e.base, body).await;
    assert_eq!(streamed, full[..cut]);
    assert_eq!(finish, "stop");
    // max_tokens: the text is a prefix of the long answer and the reason is length.
    let (short, finish, usage) = chat(&e.base, greedy(q, 3)).await;
    assert_eq!(finish, "length");
    assert_eq!(usage["completion_tokens"], 3);
    assert!(
        full.starts_with(&short) && short.len() < full.len(),
        "{short:?}"
    );
    let mut body = greedy(q, 1000);
    body.as_object_mut().unwrap().remove("max_tokens");
    body["max_completion_tokens"] = json!(2);
    let (_, finish, usage) = chat(&e.base, body).await;
    assert_eq!(
        (finish.as_str(), usage["completion_tokens"].as_u64()),
        ("length", Some(2))
    );
}

#[tokio::test]
async fn same_seed_same_text() {
    let Some(e) = engine().await else { return };
    let body = |seed: u64| {
        json!({"messages": question("Tell me a short story."), "temperature": 1.0,
               "top_p": 0.95, "seed": seed, "max_tokens": 24})
    };
    let a = chat(&e.base, body(7)).await.0;
    let b = chat(&e.base, body(7)).await.0;
    assert_eq!(a, b);
    let mut differs = false;
    for seed in [8, 9, 10] {
        differs |= chat(&e.base, body(seed)).await.0 != a;
    }
    assert!(differs, "three other seeds all gave {a:?}");
}

#[tokio::test]
async fn completions_endpoint_streams_the_same_text() {
    let Some(e) = engine().await else { return };
    let body = json!({"model": "smollm2", "prompt": "The capital of France is", "temperature": 0, "max_tokens": 12});
    let (status, v) = post(&e.base, "/v1/completions", body.clone()).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], "smollm2");
    let text = v["choices"][0]["text"].as_str().unwrap().to_string();
    assert!(!text.is_empty());
    let mut sbody = body;
    sbody["stream"] = json!(true);
    let r = reqwest::Client::new()
        .post(format!("{}/v1/completions", e.base))
        .json(&sbody)
        .send()
        .await
        .unwrap();
    let events = sse_data(&r.text().await.unwrap());
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let streamed: String = events[..events.len() - 1]
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(streamed, text);
}

#[tokio::test]
async fn tokenize_and_detokenize_round_trip() {
    let Some(e) = engine().await else { return };
    let (status, t) = post(
        &e.base,
        "/tokenize",
        json!({"prompt": "Hello world, héllo 世界!", "return_token_strs": true}),
    )
    .await;
    assert_eq!(status, 200, "{t}");
    let tokens = t["tokens"].clone();
    assert_eq!(
        t["count"].as_u64().unwrap() as usize,
        tokens.as_array().unwrap().len()
    );
    assert_eq!(
        t["token_strs"].as_array().unwrap().len(),
        tokens.as_array().unwrap().len()
    );
    let (status, d) = post(&e.base, "/detokenize", json!({"tokens": tokens})).await;
    assert_eq!(status, 200);
    assert_eq!(d["prompt"], "Hello world, héllo 世界!");
    let (status, d) = post(&e.base, "/detokenize", json!({"tokens": [1, 99999999]})).await;
    assert_eq!(
        (status, d["error"]["param"].as_str()),
        (400, Some("tokens"))
    );
    let (status, _) = post(&e.base, "/tokenize", json!({})).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn invalid_requests_are_400_naming_the_parameter() {
    let Some(e) = engine().await else { return };
    let base = |extra: Value| {
        let mut b = json!({"messages": question("hi"), "max_tokens": 4});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let cases = [
        (json!({"messages": []}), "messages"),
        (
            json!({"messages": [{"role": "wizard", "content": "x"}]}),
            "messages[0].role",
        ),
        (
            json!({"messages": [{"role": "user", "content": 5}]}),
            "messages[0].content",
        ),
        (json!({"temperature": 2.5}), "temperature"),
        (json!({"top_p": 0}), "top_p"),
        (json!({"top_k": -3}), "top_k"),
        (json!({"presence_penalty": 3}), "presence_penalty"),
        (json!({"frequency_penalty": -2.5}), "frequency_penalty"),
        (json!({"repetition_penalty": 0}), "repetition_penalty"),
        (json!({"max_tokens": 0}), "max_tokens"),
        (json!({"max_tokens": -5}), "max_tokens"),
        (json!({"n": 0}), "n"),
        (json!({"n": 17}), "n"),
        (json!({"n": 129}), "n"),
        (json!({"functions": [{"name": "f"}]}), "functions"),
        (json!({"best_of": 3}), "best_of"),
        (json!({"modalities": ["text", "audio"]}), "modalities"),
        (json!({"chat_template_kwargs": "x"}), "chat_template_kwargs"),
        (json!({"stop": ["a", "b", "c", "d", "e"]}), "stop"),
        (json!({"stop": "s".repeat(257)}), "stop"),
        (json!({"temperature": "hot"}), "temperature"),
    ];
    for (extra, param) in cases {
        let (status, v) = post(&e.base, "/v1/chat/completions", base(extra.clone())).await;
        assert_eq!(status, 400, "{extra} → {v}");
        assert_eq!(v["error"]["param"], param, "{extra} → {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    // Prompt + max_tokens beyond max_model_len (2048): context_length_exceeded, not queued.
    let (status, v) = post(
        &e.base,
        "/v1/chat/completions",
        base(json!({"max_tokens": 2040})),
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("context_length_exceeded")),
        "{v}"
    );
    let long = "word ".repeat(3000);
    let (status, v) = post(
        &e.base,
        "/v1/completions",
        json!({"prompt": long, "max_tokens": 1}),
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("context_length_exceeded")),
        "{v}"
    );
    // Past max_model_len × 32 characters nothing is rendered or tokenised: the character
    // cap answers (its message names characters, not a token count).
    let huge = "x".repeat(2048 * 32 + 1);
    for (path, body, param) in [
        (
            "/v1/chat/completions",
            json!({"messages": question(&huge), "max_tokens": 1}),
            "messages",
        ),
        (
            "/v1/completions",
            json!({"prompt": huge, "max_tokens": 1}),
            "prompt",
        ),
    ] {
        let (status, v) = post(&e.base, path, body).await;
        assert_eq!(
            (
                status,
                v["error"]["code"].as_str(),
                v["error"]["param"].as_str()
            ),
            (400, Some("context_length_exceeded"), Some(param)),
            "{path}: {v}"
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("characters"),
            "{v}"
        );
    }
    let (status, v) = post(
        &e.base,
        "/v1/chat/completions",
        base(json!({"model": "nope"})),
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
}

#[tokio::test]
async fn disconnected_client_frees_its_sequence() {
    if !have_model() {
        return;
    }
    // An engine of its own, so the running-sequences gauge is this test's alone.
    let e = start_engine(&models_json(), "chat", Duration::from_secs(120)).await;
    let body = json!({"messages": question("Count from one to one thousand."), "max_tokens": 1500,
                      "ignore_eos": true, "stream": true});
    let mut r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", e.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    let mut got = 0;
    while got < 3 {
        got += r
            .chunk()
            .await
            .unwrap()
            .expect("stream still open")
            .len()
            .min(1);
    }
    let running = || metric_value(&e.metrics.render(), "trident_running_sequences", &[]);
    assert_eq!(running(), Some(1.0));
    let generated =
        || metric_value(&e.metrics.render(), "trident_generated_tokens_total", &[]).unwrap_or(0.0);
    drop(r);
    let deadline = Instant::now() + Duration::from_secs(20);
    while running() != Some(0.0) {
        assert!(
            Instant::now() < deadline,
            "sequence still running after the client left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = generated();
    assert!(after < 1500.0, "the sequence ran to the end: {after}");
    let text = e.metrics.render();
    assert_eq!(
        metric_value(
            &text,
            "trident_rejected_requests_total",
            &["reason=\"disconnected\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&text, "trident_kv_cache_usage_ratio", &[]),
        Some(0.0)
    );
}

#[tokio::test]
async fn openai_python_client_streams_a_chat_completion() {
    let Some(e) = engine().await else { return };
    let Some(python) = crate::common::chat::openai_python() else {
        return;
    };
    let script = root().join("tests/openai_stream.py");
    let out = tokio::process::Command::new(&python)
        .arg(&script)
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
    let (want, finish, usage) = chat(&e.base, greedy("What is 2+2?", 32)).await;
    assert_eq!(v["text"], want);
    assert_eq!(v["finish_reason"], finish);
    assert_eq!(v["completion_tokens"], usage["completion_tokens"]);
    assert_eq!(v["role"], "assistant");
}

#[tokio::test]
async fn chunked_prefill_matches_one_pass_and_a_full_queue_is_429() {
    if !have_model() {
        return;
    }
    // One sequence at a time, one waiting, and room to prefill a long prompt in one pass.
    let cfg = json!({"models": {"chat": {"path": GGUF, "type": "chat", "port": 1,
        "max_model_len": 2048, "max_num_seqs": 1, "max_queue": 1, "max_batch_tokens": 1024,
        "device": "cpu"}}})
    .to_string();
    let one_pass = start_engine(&cfg, "chat", Duration::from_secs(120)).await;
    let Some(shared) = engine().await else { return };
    let long = format!(
        "Summarise this text in one sentence: {}",
        "The river flows past the old mill and the children play on its banks every summer. "
            .repeat(20)
    );
    let body = greedy(&long, 16);
    let (status, t) = post(
        &shared.base,
        "/tokenize",
        json!({"messages": question(&long)}),
    )
    .await;
    assert_eq!(status, 200);
    let n = t["count"].as_u64().unwrap();
    assert!(
        n > 256,
        "the prompt ({n} tokens) must exceed the default 256-token step budget"
    );
    // The shared engine prefills it in chunks of at most 256 tokens.
    let (chunked, _, _) = chat(&shared.base, body.clone()).await;
    let (whole, _, _) = chat(&one_pass.base, body).await;
    assert_eq!(chunked, whole);
    // Full queue: 1 running + 1 waiting; the rest get 429 with Retry-After.
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let url = format!("{}/v1/chat/completions", one_pass.base);
            tokio::spawn(async move {
                let r = reqwest::Client::new()
                    .post(url)
                    .json(
                        &json!({"messages": question("Hi"), "max_tokens": 48, "ignore_eos": true}),
                    )
                    .send()
                    .await
                    .unwrap();
                let retry = r.headers().get("retry-after").is_some();
                let status = r.status().as_u16();
                let v: Value = r.json().await.unwrap();
                (status, retry, v)
            })
        })
        .collect();
    let mut ok = 0;
    let mut full = 0;
    for t in tasks {
        let (status, retry, v) = t.await.unwrap();
        match status {
            200 => ok += 1,
            429 => {
                assert!(retry, "429 without Retry-After");
                assert_eq!(v["error"]["code"], "queue_full");
                full += 1;
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert!(ok >= 1 && full >= 1 && ok <= 2, "ok {ok}, 429 {full}");
}

#[tokio::test]
async fn logit_bias_min_tokens_and_min_p_steer_generation() {
    let Some(e) = engine().await else { return };
    // A +100 bias makes one token the greedy choice, whatever the prompt.
    let (_, t) = post(&e.base, "/tokenize", json!({"prompt": " banana"})).await;
    let banana = t["tokens"][0].as_u64().unwrap();
    let (status, v) = post(
        &e.base,
        "/v1/completions",
        json!({"prompt": "The capital of France is", "max_tokens": 1, "temperature": 0,
               "logit_bias": {banana.to_string(): 100}}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let (_, d) = post(&e.base, "/detokenize", json!({"tokens": [banana]})).await;
    assert_eq!(v["choices"][0]["text"], d["prompt"], "{v}");
    // Without min_tokens the greedy answer ends early; with it, end-of-sequence waits.
    let (_, finish, usage) = chat(&e.base, greedy("What is 2+2?", 40)).await;
    assert_eq!(finish, "stop");
    let natural = usage["completion_tokens"].as_u64().unwrap();
    assert!(natural < 40, "{usage}");
    let mut body = greedy("What is 2+2?", 40);
    body["min_tokens"] = json!(40);
    let (_, finish, usage) = chat(&e.base, body).await;
    assert_eq!(
        (finish.as_str(), usage["completion_tokens"].as_u64()),
        ("length", Some(40)),
        "{usage}"
    );
    let mut body = greedy("What is 2+2?", 8);
    body["temperature"] = json!(0.8);
    body["min_p"] = json!(0.1);
    let (text, _, _) = chat(&e.base, body).await;
    assert!(!text.is_empty());
    for (extra, param) in [
        (json!({"logit_bias": {"x": 1}}), "logit_bias"),
        (json!({"logit_bias": {"5": 101}}), "logit_bias"),
        (json!({"logit_bias": {"99999999": 1}}), "logit_bias"),
        (json!({"logit_bias": [1]}), "logit_bias"),
        (json!({"min_tokens": -1}), "min_tokens"),
        (json!({"min_tokens": 9}), "min_tokens"),
        (json!({"min_p": 1.5}), "min_p"),
    ] {
        let mut body = greedy("hi", 8);
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, v) = post(&e.base, "/v1/chat/completions", body).await;
        assert_eq!(
            (status, v["error"]["param"].as_str()),
            (400, Some(param)),
            "{extra} → {v}"
        );
    }
}

#[tokio::test]
async fn stop_strings_can_stay_in_the_output_and_stop_token_ids_end_generation() {
    let Some(e) = engine().await else { return };
    let (text, _, _) = chat(&e.base, greedy("What is 2+2?", 48)).await;
    let at = text.find('4').expect("the greedy answer has a 4");
    let mut body = greedy("What is 2+2?", 48);
    body["stop"] = json!(["4"]);
    let (cut, finish, _) = chat(&e.base, body.clone()).await;
    assert_eq!((cut.as_str(), finish.as_str()), (&text[..at], "stop"));
    body["include_stop_str_in_output"] = json!(true);
    let (kept, finish, _) = chat(&e.base, body).await;
    assert_eq!((kept.as_str(), finish.as_str()), (&text[..=at], "stop"));
    // A token forced by logit_bias and listed in stop_token_ids ends generation at once;
    // like end-of-sequence it is not part of the text.
    let (_, t) = post(&e.base, "/tokenize", json!({"prompt": " banana"})).await;
    let banana = t["tokens"][0].as_u64().unwrap();
    let (status, v) = post(
        &e.base,
        "/v1/completions",
        json!({"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0,
               "logit_bias": {banana.to_string(): 100}, "stop_token_ids": [banana]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (
            v["choices"][0]["text"].as_str(),
            v["choices"][0]["finish_reason"].as_str(),
            v["usage"]["completion_tokens"].as_u64()
        ),
        (Some(""), Some("stop"), Some(1)),
        "{v}"
    );
    for ids in [json!([-1]), json!([99_999_999])] {
        let mut body = greedy("hi", 4);
        body["stop_token_ids"] = ids.clone();
        let (status, v) = post(&e.base, "/v1/chat/completions", body).await;
        assert_eq!(
            (status, v["error"]["param"].as_str()),
            (400, Some("stop_token_ids")),
            "{ids} → {v}"
        );
    }
}

#[tokio::test]
async fn logprobs_and_top_logprobs_on_chat_and_completions_streamed_too() {
    let Some(e) = engine().await else { return };
    let mut body = greedy("What is the capital of France?", 12);
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(5);
    let (status, v) = post(&e.base, "/v1/chat/completions", body.clone()).await;
    assert_eq!(status, 200, "{v}");
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    let items = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        items.len() as u64,
        v["usage"]["completion_tokens"].as_u64().unwrap()
            - u64::from(v["choices"][0]["finish_reason"] == "stop"),
        "one entry per generated token (the end-of-sequence token has none)"
    );
    let joined: String = items.iter().map(|t| t["token"].as_str().unwrap()).collect();
    assert_eq!(joined, content, "the tokens spell the answer");
    let mut mass = 0.0;
    for t in items {
        let lp = t["logprob"].as_f64().unwrap();
        let top = t["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 5);
        assert!(lp <= 0.0);
        // Greedy: the chosen token is the likeliest; alternatives come in order.
        assert_eq!(top[0]["token"], t["token"]);
        assert!((top[0]["logprob"].as_f64().unwrap() - lp).abs() < 1e-6);
        for w in top.windows(2) {
            assert!(w[0]["logprob"].as_f64() >= w[1]["logprob"].as_f64());
        }
        assert_eq!(
            t["bytes"].as_array().unwrap().len(),
            t["token"].as_str().unwrap().len()
        );
        mass += top
            .iter()
            .map(|c| c["logprob"].as_f64().unwrap().exp())
            .sum::<f64>();
    }
    assert!(
        mass / items.len() as f64 <= 1.0 + 1e-4,
        "probabilities sum past 1"
    );
    // Streamed: the same tokens, spread over the chunks.
    body["stream"] = json!(true);
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", e.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    let mut streamed = Vec::new();
    for d in sse_data(&resp.text().await.unwrap()) {
        if d == "[DONE]" {
            continue;
        }
        let c: Value = serde_json::from_str(&d).unwrap();
        if let Some(list) = c["choices"][0]["logprobs"]["content"].as_array() {
            streamed.extend(
                list.iter()
                    .map(|t| t["token"].as_str().unwrap().to_string()),
            );
        }
    }
    let want: Vec<String> = items
        .iter()
        .map(|t| t["token"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(streamed, want);
    // Legacy completions: `logprobs: N` with tokens, offsets and alternatives as a map.
    let (status, v) = post(
        &e.base,
        "/v1/completions",
        json!({"prompt": "The capital of France is", "max_tokens": 5, "temperature": 0, "logprobs": 3}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let lp = &v["choices"][0]["logprobs"];
    let tokens = lp["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 5);
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), 5);
    assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 3);
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap())
        .collect();
    assert_eq!(offsets[0], 0);
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]));
    // A completion without max_tokens stops at 16 tokens, as OpenAI's and vLLM's do.
    let (_, v) = post(
        &e.base,
        "/v1/completions",
        json!({"prompt": "Once upon a time", "temperature": 0, "ignore_eos": true}),
    )
    .await;
    assert_eq!(v["usage"]["completion_tokens"], 16, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    // Without logprobs the field stays null; out-of-range counts are 400s naming the field.
    let (_, v) = post(&e.base, "/v1/chat/completions", greedy("Hi", 2)).await;
    assert!(v["choices"][0]["logprobs"].is_null());
    for (path, b, param) in [
        (
            "/v1/chat/completions",
            json!({"messages": question("Hi"), "logprobs": true, "top_logprobs": 21}),
            "top_logprobs",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": question("Hi"), "top_logprobs": 2}),
            "top_logprobs",
        ),
        (
            "/v1/completions",
            json!({"prompt": "Hi", "logprobs": -1}),
            "logprobs",
        ),
    ] {
        let (status, v) = post(&e.base, path, b).await;
        assert_eq!(
            (status, v["error"]["param"].as_str()),
            (400, Some(param)),
            "{v}"
        );
    }
}

/// The choices of a non-streamed response: (index, text, finish_reason).
fn choices(v: &Value, chat: bool) -> Vec<(u64, String, String)> {
    v["choices"]
        .as_array()
        .expect("choices")
        .iter()
        .map(|c| {
            let text = if chat {
                &c["message"]["content"]
            } else {
                &c["text"]
            };
            (
                c["index"].as_u64().unwrap(),
                text.as_str().unwrap().to_string(),
                c["finish_reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// A streamed response's text per choice index, and its usage chunk.
async fn stream_choices(base: &str, path: &str, mut body: Value) -> (Vec<String>, Value) {
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let r = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let events = sse_data(&r.text().await.unwrap());
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let mut texts: Vec<String> = Vec::new();
    let mut finished = std::collections::HashSet::new();
    let mut usage = Value::Null;
    for e in &events[..events.len() - 1] {
        let c: Value = serde_json::from_str(e).unwrap();
        let Some(choice) = c["choices"].get(0) else {
            assert!(usage.is_null(), "two usage chunks");
            usage = c["usage"].clone();
            continue;
        };
        assert!(usage.is_null(), "a choice chunk after the usage chunk");
        let i = choice["index"].as_u64().unwrap() as usize;
        if texts.len() <= i {
            texts.resize(i + 1, String::new());
        }
        assert!(
            !finished.contains(&i),
            "choice {i} continued after its finish chunk"
        );
        let t = choice["delta"]["content"]
            .as_str()
            .or(choice["text"].as_str());
        texts[i].push_str(t.unwrap_or_default());
        if choice["finish_reason"].is_string() {
            finished.insert(i);
        }
    }
    assert_eq!(finished.len(), texts.len(), "every choice finished");
    (texts, usage)
}

#[tokio::test]
async fn n_choices_prompt_lists_token_prompts_and_echo() {
    let Some(e) = engine().await else { return };
    // Greedy n = 3: three copies of the one answer; the prompt is counted once.
    let one = greedy("Name a color.", 10);
    let (_, solo) = post(&e.base, "/v1/chat/completions", one.clone()).await;
    let mut three = one.clone();
    three["n"] = json!(3);
    let (status, v) = post(&e.base, "/v1/chat/completions", three.clone()).await;
    assert_eq!(status, 200, "{v}");
    let want = choices(&solo, true)[0].clone();
    let got = choices(&v, true);
    assert_eq!(got.len(), 3);
    for (i, c) in got.iter().enumerate() {
        assert_eq!((c.0, &c.1, &c.2), (i as u64, &want.1, &want.2));
    }
    assert_eq!(v["usage"]["prompt_tokens"], solo["usage"]["prompt_tokens"]);
    assert_eq!(
        v["usage"]["completion_tokens"].as_u64().unwrap(),
        3 * solo["usage"]["completion_tokens"].as_u64().unwrap()
    );
    // Streamed, the choices interleave by index; each one spells the same answer.
    let (texts, usage) = stream_choices(&e.base, "/v1/chat/completions", three).await;
    assert_eq!(texts, vec![want.1.clone(); 3]);
    assert_eq!(usage["total_tokens"], v["usage"]["total_tokens"]);
    // Sampled: the choices differ, and the same seed gives the same set again.
    let sampled = json!({"messages": question("Write a word."), "max_tokens": 8,
        "temperature": 1.2, "seed": 5, "n": 4});
    let (_, a) = post(&e.base, "/v1/chat/completions", sampled.clone()).await;
    let (_, b) = post(&e.base, "/v1/chat/completions", sampled).await;
    let a = choices(&a, true);
    assert_eq!(a, choices(&b, true), "same seed, same choices");
    let distinct: std::collections::HashSet<_> = a.iter().map(|c| &c.1).collect();
    assert!(
        distinct.len() > 1,
        "4 sampled choices were all equal: {a:?}"
    );

    // Completions: a list of prompts × n, numbered prompt by prompt.
    let comp = |prompt: Value, extra: Value| {
        let mut b = json!({"prompt": prompt, "max_tokens": 6, "temperature": 0});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let solo_text = |v: &Value| choices(v, false)[0].1.clone();
    let (_, fr) = post(
        &e.base,
        "/v1/completions",
        comp(json!("The capital of France is"), json!({})),
    )
    .await;
    let (_, de) = post(
        &e.base,
        "/v1/completions",
        comp(json!("Berlin is in"), json!({})),
    )
    .await;
    let (status, v) = post(
        &e.base,
        "/v1/completions",
        comp(
            json!(["The capital of France is", "Berlin is in"]),
            json!({"n": 2}),
        ),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let texts: Vec<String> = choices(&v, false).into_iter().map(|c| c.1).collect();
    assert_eq!(
        texts,
        vec![
            solo_text(&fr),
            solo_text(&fr),
            solo_text(&de),
            solo_text(&de)
        ]
    );
    assert_eq!(
        v["usage"]["prompt_tokens"].as_u64(),
        Some(
            fr["usage"]["prompt_tokens"].as_u64().unwrap()
                + de["usage"]["prompt_tokens"].as_u64().unwrap()
        )
    );
    // Token ids are a prompt too (the model's own vocabulary).
    let (_, tok) = post(
        &e.base,
        "/tokenize",
        json!({"prompt": "The capital of France is"}),
    )
    .await;
    let (status, v) = post(
        &e.base,
        "/v1/completions",
        comp(tok["tokens"].clone(), json!({})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(solo_text(&v), solo_text(&fr));
    // echo: the prompt comes first, non-streamed and streamed.
    let (_, v) = post(
        &e.base,
        "/v1/completions",
        comp(json!("The capital of France is"), json!({"echo": true})),
    )
    .await;
    assert_eq!(
        solo_text(&v),
        format!("The capital of France is{}", solo_text(&fr))
    );
    let (texts, _) = stream_choices(
        &e.base,
        "/v1/completions",
        comp(
            json!(["The capital of France is", "Berlin is in"]),
            json!({"echo": true}),
        ),
    )
    .await;
    assert_eq!(
        texts,
        vec![
            format!("The capital of France is{}", solo_text(&fr)),
            format!("Berlin is in{}", solo_text(&de))
        ]
    );
    // What cannot be done is a 400 naming the parameter.
    for (extra_prompt, extra, param) in [
        (json!([]), json!({}), "prompt"),
        (json!([1, "a"]), json!({}), "prompt"),
        (json!([[1, 2], [999999]]), json!({}), "prompt"),
        (json!("x"), json!({"echo": true, "logprobs": 1}), "echo"),
        (json!(["a", "a"]), json!({"n": 100}), "n"),
    ] {
        let (status, v) = post(
            &e.base,
            "/v1/completions",
            comp(extra_prompt.clone(), extra.clone()),
        )
        .await;
        assert_eq!(status, 400, "{extra_prompt} {extra} → {v}");
        assert_eq!(v["error"]["param"], param, "{extra_prompt} {extra} → {v}");
    }
}

#[tokio::test]
async fn unknown_fields_are_ignored_and_counted() {
    let Some(e) = engine().await else { return };
    let count = || {
        e.metrics
            .ignored_fields
            .with_label_values(&["chat", "store"])
            .get()
    };
    let before = count();
    let mut body = greedy("Hi", 2);
    body["store"] = json!(true);
    body["metadata"] = json!({"team": "rag"});
    body["modalities"] = json!(["text"]);
    let (status, v) = post(&e.base, "/v1/chat/completions", body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(count(), before + 1);
    // A hostile stream of made-up names cannot grow the label set without bound.
    for i in 0..100 {
        let mut b = greedy("Hi", 1);
        b[format!("x{i}")] = json!(1);
        b["weird name!"] = json!(1);
        post(
            &e.base,
            "/v1/completions",
            json!({"prompt": "a", "max_tokens": 1, format!("y{i}"): 1}),
        )
        .await;
        if i < 3 {
            post(&e.base, "/v1/chat/completions", b).await;
        }
    }
    let text = e.metrics.render();
    let series = text
        .lines()
        .filter(|l| l.starts_with("trident_ignored_request_fields_total{"))
        .count();
    assert!(series <= 64 + 1, "{series} series");
    assert!(text.contains(r#"field="other""#));
}
