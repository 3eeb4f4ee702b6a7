//! Chat templates: the model's Jinja template (from `chat_template.jinja`,
//! `tokenizer_config.json` or GGUF metadata, via `DecoderInfo::chat_template`) rendered with
//! minijinja the way Hugging Face renders it: Python string methods (pycompat),
//! `raise_exception`, `strftime_now`, `trim_blocks`/`lstrip_blocks`, and the variables
//! `messages`, `tools`, `add_generation_prompt`, `bos_token`, `eos_token`. A model without a
//! template gets ChatML.

use minijinja::{Environment, Error, ErrorKind, Value};

/// ChatML, used when the model ships no template.
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Why a template could not be compiled or rendered.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The model's template does not compile.
    #[error("the model's chat template is invalid: {0}")]
    Invalid(String),
    /// The template refused the conversation (`raise_exception`) or failed on it.
    #[error("{0}")]
    Render(String),
}

/// A compiled chat template with the model's special tokens.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    fallback: bool,
}

fn raise_exception(msg: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

fn strftime_now(format: String) -> String {
    // Templates ask for today's date (Llama 3.1); UTC, with the common directives.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let month = MONTHS[(m - 1) as usize];
    format
        .replace("%Y", &y.to_string())
        .replace("%m", &format!("{m:02}"))
        .replace("%d", &format!("{d:02}"))
        .replace("%B", month)
        .replace("%b", &month[..3])
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

impl ChatTemplate {
    /// Compiles `source`, or ChatML when `None`.
    pub fn new(
        source: Option<&str>,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        let fallback = source.is_none();
        env.add_template_owned("chat", source.unwrap_or(CHATML).to_string())
            .map_err(|e| TemplateError::Invalid(e.to_string()))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.unwrap_or_default(),
            eos_token: eos_token.unwrap_or_default(),
            fallback,
        })
    }

    /// True when the model had no template and ChatML is used.
    pub fn is_fallback(&self) -> bool {
        self.fallback
    }

    /// Renders a conversation (messages as JSON objects with string `content`); `kwargs`
    /// (a request's `chat_template_kwargs`) adds variables, never replacing the ones above.
    pub fn render(
        &self,
        messages: &[serde_json::Value],
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
        kwargs: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Result<String, TemplateError> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| TemplateError::Invalid(e.to_string()))?;
        let ctx = minijinja::context! {
            messages => Value::from_serialize(messages),
            tools => tools.map(Value::from_serialize),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
            ..kwargs.map(Value::from_serialize).unwrap_or_default()
        };
        tmpl.render(ctx).map_err(|e| {
            // A template's own refusal carries its message; other failures their kind.
            let msg = match e.kind() {
                ErrorKind::InvalidOperation => e.detail().unwrap_or("invalid conversation"),
                _ => return TemplateError::Render(format!("chat template failed: {}", e.kind())),
            };
            TemplateError::Render(msg.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LLAMA3: &str = r#"{% set loop_messages = messages %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) and message['role'] != 'system' %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"#;

    const STRIPPY: &str = "{% for m in messages %}[{{ m.role.upper() }}]{{ m.content.strip() }}{% if not loop.last %}{{ '\n' }}{% endif %}{% endfor %}{% if tools %} tools={{ tools | length }}{% endif %}{% if add_generation_prompt %}{{ eos_token }}{% endif %}";

    #[test]
    fn chatml_fallback() {
        let t = ChatTemplate::new(None, None, None).unwrap();
        assert!(t.is_fallback());
        let msgs = [
            json!({"role": "system", "content": "Be brief."}),
            json!({"role": "user", "content": "Hi"}),
        ];
        assert_eq!(
            t.render(&msgs, None, true, None).unwrap(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert!(!t
            .render(&msgs, None, false, None)
            .unwrap()
            .ends_with("assistant\n"));
    }

    #[test]
    fn llama3_style_template_with_bos_and_raise_exception() {
        let t = ChatTemplate::new(Some(LLAMA3), Some("<|begin_of_text|>".into()), None).unwrap();
        let out = t
            .render(
                &[json!({"role": "user", "content": "  Hello \n"})],
                None,
                true,
                None,
            )
            .unwrap();
        assert_eq!(
            out,
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        let err = t
            .render(
                &[
                    json!({"role": "user", "content": "a"}),
                    json!({"role": "user", "content": "b"}),
                ],
                None,
                true,
                None,
            )
            .unwrap_err();
        assert!(
            matches!(err, TemplateError::Render(ref m) if m.contains("must alternate")),
            "{err}"
        );
    }

    #[test]
    fn python_string_methods_tools_and_eos() {
        let t = ChatTemplate::new(Some(STRIPPY), None, Some("</s>".into())).unwrap();
        let tools = json!([{"type": "function", "function": {"name": "f"}}]);
        let out = t
            .render(
                &[
                    json!({"role": "user", "content": "  x  "}),
                    json!({"role": "assistant", "content": "y\n"}),
                ],
                Some(&tools),
                true,
                None,
            )
            .unwrap();
        assert_eq!(out, "[USER]x\n[ASSISTANT]y tools=1</s>");
    }

    #[test]
    fn template_kwargs_add_variables_but_never_replace_the_conversation() {
        let t = ChatTemplate::new(
            Some("{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}{{ messages | length }}"),
            None,
            None,
        )
        .unwrap();
        let msgs = [json!({"role": "user", "content": "x"})];
        let kw = |v: serde_json::Value| v.as_object().unwrap().clone();
        assert_eq!(t.render(&msgs, None, true, None).unwrap(), "1");
        assert_eq!(
            t.render(
                &msgs,
                None,
                true,
                Some(&kw(json!({"enable_thinking": false})))
            )
            .unwrap(),
            "<think></think>1"
        );
        assert_eq!(
            t.render(&msgs, None, true, Some(&kw(json!({"messages": []}))))
                .unwrap(),
            "1"
        );
    }

    #[test]
    fn broken_template_is_an_error_and_dates_are_civil() {
        assert!(matches!(
            ChatTemplate::new(Some("{% for %}"), None, None),
            Err(TemplateError::Invalid(_))
        ));
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        let t = ChatTemplate::new(Some("{{ strftime_now('%d %B %Y') }}"), None, None).unwrap();
        let today = t.render(&[], None, false, None).unwrap();
        assert!(
            !today.contains('%') && today.split(' ').count() == 3,
            "{today}"
        );
    }
}
