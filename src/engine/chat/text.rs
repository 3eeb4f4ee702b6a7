//! Text out of tokens, one token at a time: incremental detokenisation (multi-byte UTF-8
//! pieces come out whole, word-boundary spaces survive) and stop-string matching that never
//! emits a stop string, holding back text that could still become one.

use tokenizers::Tokenizer;

/// Tokens of the prompt tail used as context, so the first generated token keeps its
/// leading space (SentencePiece decoders strip it at the start of a text).
const CONTEXT_TOKENS: usize = 5;

/// Incremental detokeniser of one sequence (the prefix/read offset scheme: decode a
/// window twice and emit the difference once it no longer ends in a partial character).
pub struct Detokenizer {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl Detokenizer {
    /// Starts after `prompt`, using its last few tokens as context.
    pub fn new(prompt: &[u32]) -> Self {
        let ctx = &prompt[prompt.len().saturating_sub(CONTEXT_TOKENS)..];
        Detokenizer {
            ids: ctx.to_vec(),
            prefix_offset: 0,
            read_offset: ctx.len(),
        }
    }

    fn decode(tok: &Tokenizer, ids: &[u32]) -> String {
        tok.decode(ids, true).unwrap_or_default()
    }

    /// Adds one token; returns the text it completes (maybe empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        self.ids.push(id);
        let prefix = Self::decode(tok, &self.ids[self.prefix_offset..self.read_offset]);
        let full = Self::decode(tok, &self.ids[self.prefix_offset..]);
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') {
            let out = match full.strip_prefix(prefix.as_str()) {
                Some(rest) => rest.to_string(),
                None => full.get(prefix.len()..).unwrap_or_default().to_string(),
            };
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            out
        } else {
            String::new()
        }
    }

    /// Text of tokens still held (an incomplete character at the end of generation).
    pub fn flush(&mut self, tok: &Tokenizer) -> String {
        if self.read_offset == self.ids.len() {
            return String::new();
        }
        let prefix = Self::decode(tok, &self.ids[self.prefix_offset..self.read_offset]);
        let full = Self::decode(tok, &self.ids[self.prefix_offset..]);
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        full.get(prefix.len()..).unwrap_or_default().to_string()
    }
}

/// Matches stop strings across token boundaries.
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
    /// Keep the matched stop string in the output.
    include: bool,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
            include: false,
        }
    }

    /// The matched stop string is kept at the end of the text (vLLM's
    /// `include_stop_str_in_output`).
    pub fn including(mut self, include: bool) -> Self {
        self.include = include;
        self
    }

    /// Adds generated text; returns the text that is safe to emit and whether a stop
    /// string was found (then the text before it is returned and generation ends).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        if self.stops.is_empty() {
            return (text.to_string(), false);
        }
        self.held.push_str(text);
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()).map(|at| (at, s.len())))
            .min_by_key(|&(at, len)| (at, std::cmp::Reverse(len)));
        if let Some((at, len)) = first {
            let end = if self.include { at + len } else { at };
            let out = self.held[..end].to_string();
            self.held.clear();
            return (out, true);
        }
        let keep = self
            .stops
            .iter()
            .map(|s| longest_suffix_prefix(&self.held, s))
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        (out, false)
    }

    /// The held-back text, released when generation ends for another reason.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    let max = (stop.len() - 1).min(text.len());
    (1..=max)
        .rev()
        .find(|&k| {
            text.is_char_boundary(text.len() - k)
                && stop.is_char_boundary(k)
                && text.ends_with(&stop[..k])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(m: &mut StopMatcher, parts: &[&str]) -> (String, bool) {
        let mut out = String::new();
        for p in parts {
            let (t, stop) = m.push(p);
            out.push_str(&t);
            if stop {
                return (out, true);
            }
        }
        out.push_str(&m.flush());
        (out, false)
    }

    #[test]
    fn stop_string_across_pieces_is_never_emitted() {
        let mut kept = StopMatcher::new(vec!["END".into()]).including(true);
        assert_eq!(kept.push("abcEN"), ("abc".to_string(), false));
        assert_eq!(kept.push("Dxyz"), ("END".to_string(), true));
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("abc E"), ("abc ".to_string(), false));
        assert_eq!(m.push("N"), (String::new(), false));
        assert_eq!(m.push("Dxyz"), (String::new(), true));
    }

    #[test]
    fn held_text_is_released_when_it_stops_matching() {
        let mut m = StopMatcher::new(vec!["###".into(), "\n\n".into()]);
        assert_eq!(
            feed(&mut m, &["a#", "#b", "\n", "c"]),
            ("a##b\nc".into(), false)
        );
        let mut m = StopMatcher::new(vec!["###".into(), "\n\n".into()]);
        assert_eq!(feed(&mut m, &["a#", "#b\n", "\nc"]), ("a##b".into(), true));
    }

    #[test]
    fn earliest_stop_wins_and_multibyte_is_safe() {
        let mut m = StopMatcher::new(vec!["é!".into(), "b".into()]);
        assert_eq!(feed(&mut m, &["xé", "!ab"]), ("x".into(), true));
        let mut m = StopMatcher::new(vec!["日本".into()]);
        assert_eq!(feed(&mut m, &["い日", "い"]), ("い日い".into(), false));
    }

    #[test]
    fn suffix_prefix_lengths() {
        assert_eq!(longest_suffix_prefix("abcEN", "END"), 2);
        assert_eq!(longest_suffix_prefix("abc", "END"), 0);
        assert_eq!(longest_suffix_prefix("E", "END"), 1);
    }
}
