//! Server-sent events on the client side of `trident bench chat`: turns the byte chunks of a
//! `text/event-stream` body into the `data` of each complete event, whatever server sent it
//! (trident's engine or gateway, or a peer such as llama-server) and however the transport
//! split it. Follows the WHATWG event-stream rules the benchmarks meet: lines end in LF or
//! CRLF, a blank line ends an event, `:` lines are comments (keep-alive pings), several
//! `data:` lines join with LF, other fields (`event:`, `id:`) are ignored.

/// Incremental event-stream parser: feed it chunks, take complete events' data.
#[derive(Debug, Default)]
pub struct SseEvents {
    /// Bytes after the last complete line (may end inside a UTF-8 sequence).
    pending: Vec<u8>,
    /// `data:` lines of the event being read.
    data: Vec<String>,
}

impl SseEvents {
    /// Adds a chunk of the body; returns the data of every event it completed, in order.
    /// Text is decoded per complete line, so a character split between chunks stays whole.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(chunk);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(n) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let mut line = &self.pending[start..start + n];
            start += n + 1;
            if let Some(l) = line.strip_suffix(b"\r") {
                line = l;
            }
            if line.is_empty() {
                if !self.data.is_empty() {
                    events.push(self.data.join("\n"));
                    self.data.clear();
                }
                continue;
            }
            let line = String::from_utf8_lossy(line);
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_ref(), ""),
            };
            if field == "data" {
                self.data.push(value.to_string());
            }
        }
        self.pending.drain(..start);
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` split at every given offset; returns all events.
    fn feed(body: &[u8], cuts: &[usize]) -> Vec<String> {
        let mut p = SseEvents::default();
        let mut out = Vec::new();
        let mut from = 0;
        for &c in cuts.iter().chain([body.len()].iter()) {
            out.extend(p.push(&body[from..c]));
            from = c;
        }
        out
    }

    #[test]
    fn events_split_anywhere_come_out_whole() {
        let body = "data: {\"a\":1}\n\ndata: [DONE]\n\n".as_bytes();
        for cut in 0..=body.len() {
            assert_eq!(feed(body, &[cut]), ["{\"a\":1}", "[DONE]"], "cut at {cut}");
        }
    }

    #[test]
    fn a_character_split_between_chunks_is_not_mangled() {
        // "é" is two bytes; a chunk boundary between them must not turn it into U+FFFD.
        let body = "data: {\"c\":\"caf\u{e9}\"}\n\n".as_bytes();
        let cut = body.iter().position(|&b| b == 0xc3).expect("test input") + 1;
        let events = feed(body, &[cut]);
        assert_eq!(events, ["{\"c\":\"caf\u{e9}\"}"]);
        let v: serde_json::Value = serde_json::from_str(&events[0]).expect("valid JSON");
        assert_eq!(v["c"], "caf\u{e9}");
    }

    #[test]
    fn crlf_comments_other_fields_and_multiline_data() {
        let body = b": ping\r\n\r\nevent: message\r\nid: 7\r\ndata: one\r\ndata:two\r\n\r\n:\n\n";
        assert_eq!(feed(body, &[3, 20]), ["one\ntwo"]);
    }

    #[test]
    fn an_unfinished_event_is_held_back() {
        let mut p = SseEvents::default();
        assert!(p.push(b"data: {\"a\":").is_empty());
        assert!(p.push(b"1}\n").is_empty());
        assert_eq!(p.push(b"\n"), ["{\"a\":1}"]);
    }
}
