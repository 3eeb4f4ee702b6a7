//! The gateway's SSE relay: an engine's stream cut into frames (at each NUL byte of the
//! input, so frames can be empty or one byte), then ended by a failure. Whatever the engine
//! sent, a client's SSE parser (the WHATWG rules below) must see the engine's events,
//! the half-written one closed, and then the error event whole, as the last event.

#![no_main]

use libfuzzer_sys::fuzz_target;
use trident::api::ApiError;
use trident::gateway::relay::SseTail;

#[global_allocator]
static ALLOC: trident_fuzz::CappedAlloc = trident_fuzz::CappedAlloc;

/// The `data` of every dispatched event of an SSE byte stream (lines end in CRLF, LF or CR;
/// an event ends at a blank line; an unterminated event at the end is dropped).
fn events(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut data: Option<Vec<u8>> = None;
    let mut line = Vec::new();
    let mut i = 0;
    while i < stream.len() {
        let b = stream[i];
        i += 1;
        if b != b'\r' && b != b'\n' {
            line.push(b);
            continue;
        }
        if b == b'\r' && stream.get(i) == Some(&b'\n') {
            i += 1;
        }
        if line.is_empty() {
            if let Some(mut d) = data.take() {
                d.pop(); // the newline after the last data line
                out.push(d);
            }
        } else if line[0] != b':' {
            let (field, value) = match line.iter().position(|&c| c == b':') {
                Some(p) => {
                    let v = &line[p + 1..];
                    (&line[..p], v.strip_prefix(b" ").unwrap_or(v))
                }
                None => (&line[..], &[][..]),
            };
            if field == b"data" {
                let d = data.get_or_insert_with(Vec::new);
                d.extend_from_slice(value);
                d.push(b'\n');
            }
        }
        line.clear();
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut tail = SseTail::default();
    let mut sent = Vec::new();
    for frame in data.split(|&b| b == 0) {
        tail.remember(frame);
        sent.extend_from_slice(frame);
    }
    let err = ApiError::upstream_timeout("fuzz");
    let event = tail.error_event(&err);
    let mut closed = sent.clone();
    closed.extend_from_slice(b"\n\n");
    let mut want = events(&closed);
    want.push(err.to_json().into_bytes());
    sent.extend_from_slice(&event);
    assert_eq!(events(&sent), want);
});
