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
}
