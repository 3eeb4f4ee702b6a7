//! The one integration-test binary: each module starts real servers in-process on
//! 127.0.0.1:0 (helpers in `common`, chat engines and SSE parsing in `common::chat`) and
//! talks HTTP to them. Model tests use the real weights laid out by
//! `scripts/fetch-models.sh`.

mod chat;
mod clients;
mod common;
mod compatibility;
mod devices;
mod embed_apis;
mod embed_clients;
mod embeddings;
mod errors;
mod faults;
mod gateway;
mod prefix_cache;
mod reasoning;
mod rerank;
mod structured;
mod tensor_parallel;
mod tools;
