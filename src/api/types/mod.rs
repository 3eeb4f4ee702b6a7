//! OpenAI-compatible request and response types, one file per endpoint family.
//! Requests accept unknown fields (clients send extras such as `user`); validation of
//! values happens in the handlers so that errors name the parameter.

pub mod chat;
pub mod cohere;
pub mod completions;
pub mod embeddings;
pub mod models;
pub mod quantize;
pub mod rerank;
pub mod tei;
pub mod tokenize;

/// The top-level fields of a request that its type does not name (a trailing flattened
/// map collects them): counted as ignored, or refused by [`refuse_unsupported`].
pub type OtherFields = serde_json::Map<String, serde_json::Value>;

/// Fields OpenAI or vLLM define for text generation whose meaning these engines do not
/// implement. Sent with a value that would change the answer, they are a 400 naming them,
/// never silently ignored; `null` (and the neutral values below) pass.
pub const UNSUPPORTED_GENERATION_FIELDS: &[&str] = &[
    "functions",
    "function_call",
    "audio",
    "modalities",
    "web_search_options",
    "prompt_logprobs",
    "use_beam_search",
    "truncate_prompt_tokens",
    "best_of",
    "suffix",
];

/// 400 naming the first field of [`UNSUPPORTED_GENERATION_FIELDS`] sent with a value that
/// changes meaning (`n` is the request's choice count: `best_of` equal to it is neutral).
pub fn refuse_unsupported(other: &OtherFields, n: usize) -> Result<(), crate::api::ApiError> {
    use serde_json::Value;
    for &name in UNSUPPORTED_GENERATION_FIELDS {
        let Some(v) = other.get(name) else { continue };
        let neutral = match (name, v) {
            (_, Value::Null) => true,
            ("modalities", Value::Array(a)) => a.iter().all(|m| m == "text"),
            ("use_beam_search", Value::Bool(b)) => !b,
            ("best_of", Value::Number(b)) => b.as_u64().is_some_and(|b| b <= 1 || b == n as u64),
            ("suffix", Value::String(t)) => t.is_empty(),
            _ => false,
        };
        if !neutral {
            let hint = match name {
                "functions" | "function_call" => " (use 'tools' and 'tool_choice')",
                "prompt_logprobs" | "best_of" | "use_beam_search" => {
                    " (generated-token 'logprobs' and 'n' are supported)"
                }
                _ => "",
            };
            return Err(crate::api::ApiError::invalid_param(
                name,
                format!("'{name}' is not supported by this server{hint}"),
            ));
        }
    }
    Ok(())
}

/// `null` means "not set" wherever OpenAI's API accepts it (`"stream": null` is common in
/// client libraries): the field's default, not a type error.
pub fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + serde::Deserialize<'de>,
{
    Ok(<Option<T> as serde::Deserialize>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod null_tests {
    #[test]
    fn null_means_not_set() {
        let r: super::chat::ChatCompletionRequest = serde_json::from_str(
            r#"{"model": "m", "messages": [], "stream": null, "ignore_eos": null, "response_format": null}"#,
        )
        .unwrap();
        assert!(!r.stream && !r.ignore_eos);
        let r: super::embeddings::EmbeddingRequest =
            serde_json::from_str(r#"{"model": "e", "input": "x", "encoding_format": null}"#)
                .unwrap();
        assert_eq!(r.encoding_format, Default::default());
        // A wrong type is still an error.
        assert!(serde_json::from_str::<super::chat::ChatCompletionRequest>(
            r#"{"messages": [], "stream": "yes"}"#
        )
        .is_err());
    }

    #[test]
    fn only_unnamed_fields_are_other_and_meaning_changers_are_refused() {
        let r: super::chat::ChatCompletionRequest = serde_json::from_str(
            r#"{"messages": [], "user": "u", "min_p": 0.1, "guided_json": {}, "functions": [{}], "store": false}"#,
        )
        .unwrap();
        let mut keys: Vec<&str> = r.other.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["functions", "store", "user"]);
        let e = super::refuse_unsupported(&r.other, 1).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("functions"));
        let ok: super::OtherFields = serde_json::from_str(
            r#"{"modalities": ["text"], "best_of": 2, "suffix": "", "audio": null, "use_beam_search": false}"#,
        )
        .unwrap();
        assert!(super::refuse_unsupported(&ok, 2).is_ok());
        for bad in [
            r#"{"best_of": 3}"#,
            r#"{"suffix": "x"}"#,
            r#"{"modalities": ["audio"]}"#,
        ] {
            let o: super::OtherFields = serde_json::from_str(bad).unwrap();
            assert!(super::refuse_unsupported(&o, 2).is_err(), "{bad}");
        }
    }
}
