//! Reasoning models: the text a model writes between `<think>` and `</think>` is returned as
//! `reasoning_content`, the rest as `content`, for whole answers and token by token (a tag
//! split across tokens is held back until it is known to be one).
//!
//! A generation starts inside the reasoning when the rendered prompt already opened it (the
//! DeepSeek-R1 and QwQ templates end the generation prompt with `<think>`); otherwise a
//! `<think>` at the very start of the output opens it (Qwen3). An answer that never closes
//! its reasoning (cut by `max_tokens`) is all reasoning.

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

/// Whether a model's template writes reasoning tags (the `auto` parser's test).
pub fn template_reasons(template: Option<&str>) -> bool {
    template.is_some_and(|t| t.contains(CLOSE))
}

/// Whether a rendered prompt leaves the generation inside an open reasoning block.
pub fn prompt_opens(prompt: &str) -> bool {
    prompt.trim_end().ends_with(OPEN)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing but whitespace seen yet: a `<think>` may still open the reasoning.
    Start,
    Thinking,
    /// After `</think>`: leading whitespace of the answer is dropped.
    AnswerStart,
    Answer,
}

/// A piece of output split in two.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Split {
    pub reasoning: String,
    pub content: String,
}

/// The incremental splitter of one choice.
#[derive(Debug, Clone)]
pub struct Reasoning {
    state: State,
    held: String,
}

/// The length of the longest suffix of `text` that is a proper prefix of `tag`.
fn partial_tag(text: &str, tag: &str) -> usize {
    (1..tag.len())
        .rev()
        .find(|&n| {
            text.len() >= n
                && text.is_char_boundary(text.len() - n)
                && tag.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

impl Reasoning {
    /// A splitter for a generation whose prompt ends inside the reasoning (`opened`) or not.
    pub fn new(opened: bool) -> Self {
        Reasoning {
            state: if opened {
                State::Thinking
            } else {
                State::Start
            },
            held: String::new(),
        }
    }

    /// Splits the next piece of text; what might be the start of a tag is held back.
    pub fn push(&mut self, piece: &str) -> Split {
        self.held.push_str(piece);
        let mut out = Split::default();
        loop {
            match self.state {
                State::Start => {
                    let t = self.held.trim_start();
                    if let Some(rest) = t.strip_prefix(OPEN) {
                        self.held = rest.to_string();
                        self.state = State::Thinking;
                    } else if OPEN.starts_with(t) {
                        return out; // empty or a partial "<think"
                    } else {
                        self.state = State::Answer;
                    }
                }
                State::Thinking => match self.held.find(CLOSE) {
                    Some(at) => {
                        out.reasoning.push_str(&self.held[..at]);
                        self.held.drain(..at + CLOSE.len());
                        self.state = State::AnswerStart;
                    }
                    None => {
                        let keep = partial_tag(&self.held, CLOSE);
                        let cut = self.held.len() - keep;
                        out.reasoning.push_str(&self.held[..cut]);
                        self.held.drain(..cut);
                        return out;
                    }
                },
                State::AnswerStart => {
                    let t = self.held.trim_start();
                    if t.is_empty() {
                        self.held.clear();
                        return out;
                    }
                    self.held = t.to_string();
                    self.state = State::Answer;
                }
                State::Answer => {
                    out.content.push_str(&self.held);
                    self.held.clear();
                    return out;
                }
            }
        }
    }

    /// The end of the output: held text goes where it was heading.
    pub fn finish(&mut self) -> Split {
        let held = std::mem::take(&mut self.held);
        match self.state {
            State::Thinking => Split {
                reasoning: held,
                content: String::new(),
            },
            State::AnswerStart => Split::default(),
            State::Start | State::Answer => Split {
                reasoning: String::new(),
                content: held,
            },
        }
    }

    /// Splits a whole answer.
    pub fn split(opened: bool, text: &str) -> Split {
        let mut r = Reasoning::new(opened);
        let mut a = r.push(text);
        let b = r.finish();
        a.reasoning.push_str(&b.reasoning);
        a.content.push_str(&b.content);
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(opened: bool, text: &str) -> (String, String) {
        let s = Reasoning::split(opened, text);
        (s.reasoning, s.content)
    }

    /// Streams `text` one character at a time and joins the pieces.
    fn streamed(opened: bool, text: &str) -> (String, String) {
        let mut r = Reasoning::new(opened);
        let mut out = Split::default();
        for c in text.chars() {
            let s = r.push(&c.to_string());
            out.reasoning += &s.reasoning;
            out.content += &s.content;
        }
        let s = r.finish();
        (out.reasoning + &s.reasoning, out.content + &s.content)
    }

    #[test]
    fn reasoning_and_answer_are_split_whole_and_streamed() {
        let cases = [
            (
                false,
                "<think>\nLet me add.\n</think>\n\n4",
                ("\nLet me add.\n", "4"),
            ),
            (false, "  <think>a < b</think>yes", ("a < b", "yes")),
            (false, "No reasoning here.", ("", "No reasoning here.")),
            (false, "<thin>k", ("", "<thin>k")),
            (
                false,
                "The tag <think> late</think> stays",
                ("", "The tag <think> late</think> stays"),
            ),
            // The template opened the block (DeepSeek-R1): no opening tag in the output.
            (true, "step 1</think>\n\nanswer", ("step 1", "answer")),
            // Cut by max_tokens inside the reasoning: all of it is reasoning.
            (true, "still thinking </thi", ("still thinking </thi", "")),
            (false, "<think>unfinished", ("unfinished", "")),
            (false, "", ("", "")),
            (false, "<think></think>", ("", "")),
            (false, "<think>é</think>ü", ("é", "ü")),
        ];
        for (opened, text, (r, c)) in cases {
            let want = (r.to_string(), c.to_string());
            assert_eq!(split(opened, text), want, "whole: {text:?}");
            assert_eq!(streamed(opened, text), want, "streamed: {text:?}");
        }
    }

    #[test]
    fn a_partial_closing_tag_is_held_until_it_resolves() {
        let mut r = Reasoning::new(true);
        assert_eq!(r.push("a</th").reasoning, "a");
        let s = r.push("ink>b");
        assert_eq!((s.reasoning.as_str(), s.content.as_str()), ("", "b"));
        let mut r = Reasoning::new(true);
        r.push("a</th");
        assert_eq!(r.push("at").reasoning, "</that");
    }

    #[test]
    fn templates_and_prompts_are_recognised() {
        assert!(template_reasons(Some("{{ '<think>' }}...{{ '</think>' }}")));
        assert!(!template_reasons(Some("{{ messages }}")));
        assert!(!template_reasons(None));
        assert!(prompt_opens("<|Assistant|><think>\n"));
        assert!(!prompt_opens(
            "<|im_start|>assistant\n<think>\n\n</think>\n\n"
        ));
        assert!(!prompt_opens("<|im_start|>assistant\n"));
    }
}
