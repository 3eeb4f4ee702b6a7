//! OpenAI-compatible request and response types, one file per endpoint family.
//! Requests accept unknown fields (clients send extras such as `user`); validation of
//! values happens in the handlers so that errors name the parameter.

pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod models;
pub mod rerank;
pub mod tokenize;
