//! Tool calling: `tools`, `tool_choice` and `parallel_tool_calls` of a chat request, the
//! model's tool-call text parsed back into `message.tool_calls`, and the grammar that makes
//! `tool_choice: "required"` or a named function binding (through the structured-output
//! engine, `constraint`).
//!
//! The wire format is the Hermes / Qwen2.5 / Qwen3 one, `<tool_call>{"name": …,
//! "arguments": {…}}</tool_call>`, which those templates render and describe to the model; a
//! Llama 3.x template's bare `{"name": …, "parameters": {…}}` is read too.

use serde_json::{json, Value};

use super::constraint::ConstraintSpec;
use crate::api::ApiError;

/// What the request allows.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    None,
    Auto,
    Required,
    Named(String),
}

/// One declared function.
#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    pub name: String,
    pub parameters: Value,
}

/// The tool part of a chat request.
#[derive(Debug, Clone, PartialEq)]
pub struct Tools {
    pub functions: Vec<Function>,
    pub choice: ToolChoice,
    pub parallel: bool,
}

/// Reads `tools` / `tool_choice` / `parallel_tool_calls`; `None` when no tool may be called.
pub fn parse(
    tools: Option<&Value>,
    tool_choice: Option<&Value>,
    parallel: Option<bool>,
) -> Result<Option<Tools>, ApiError> {
    let bad = |p: &str, m: String| ApiError::invalid_param(p, m);
    let list = match tools {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return Err(bad("tools", "'tools' must be a list".into())),
    };
    let mut functions = Vec::new();
    for (i, t) in list.iter().enumerate() {
        let f = t
            .get("function")
            .filter(|_| t.get("type").and_then(Value::as_str).unwrap_or("function") == "function")
            .ok_or_else(|| {
                bad(
                    &format!("tools[{i}]"),
                    format!("tools[{i}] must be {{\"type\": \"function\", \"function\": {{…}}}}"),
                )
            })?;
        let name = f
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty() && n.len() <= 64)
            .ok_or_else(|| {
                bad(
                    &format!("tools[{i}].function.name"),
                    format!("tools[{i}].function.name must be a name of 1-64 characters"),
                )
            })?;
        let parameters = match f.get("parameters") {
            None | Some(Value::Null) => json!({"type": "object"}),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(_) => {
                return Err(bad(
                    &format!("tools[{i}].function.parameters"),
                    format!("tools[{i}].function.parameters must be a JSON Schema object"),
                ))
            }
        };
        functions.push(Function {
            name: name.to_string(),
            parameters,
        });
    }
    let choice = match tool_choice {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) if s == "none" => ToolChoice::None,
        Some(Value::String(s)) if s == "auto" => ToolChoice::Auto,
        Some(Value::String(s)) if s == "required" => ToolChoice::Required,
        Some(v @ Value::Object(_)) => {
            let name = v
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| bad("tool_choice", "'tool_choice' must name a function: {\"type\": \"function\", \"function\": {\"name\": …}}".into()))?;
            if !functions.iter().any(|f| f.name == name) {
                return Err(bad(
                    "tool_choice",
                    format!("'tool_choice' names '{name}', which is not in 'tools'"),
                ));
            }
            ToolChoice::Named(name.to_string())
        }
        Some(_) => {
            return Err(bad(
                "tool_choice",
                "'tool_choice' must be 'none', 'auto', 'required' or a function".into(),
            ))
        }
    };
    if functions.is_empty() {
        return match choice {
            ToolChoice::Required | ToolChoice::Named(_) => Err(bad(
                "tool_choice",
                "'tool_choice' requires a tool call, but 'tools' is empty".into(),
            )),
            _ => Ok(None),
        };
    }
    if choice == ToolChoice::None {
        return Ok(None);
    }
    Ok(Some(Tools {
        functions,
        choice,
        parallel: parallel.unwrap_or(true),
    }))
}

impl Tools {
    /// The grammar that forces one call (`required`: to any declared function, or to the named
    /// one); `None` for `auto`, where the model may answer or call as it likes.
    pub fn forcing_grammar(&self) -> Option<ConstraintSpec> {
        let allowed: Vec<&Function> = match &self.choice {
            ToolChoice::Required => self.functions.iter().collect(),
            ToolChoice::Named(n) => self.functions.iter().filter(|f| &f.name == n).collect(),
            _ => return None,
        };
        let calls: Vec<Value> = allowed
            .iter()
            .map(|f| {
                json!({"type": "object",
                       "properties": {"name": {"const": f.name}, "arguments": f.parameters},
                       "required": ["name", "arguments"], "additionalProperties": false})
            })
            .collect();
        let schema = if calls.len() == 1 {
            calls[0].clone()
        } else {
            json!({"anyOf": calls})
        };
        // One call: a small model asked for "one or more" keeps calling until max_tokens.
        Some(ConstraintSpec::Lark(format!(
            "start: \"<tool_call>\\n\" body \"\\n</tool_call>\"\nbody: %json {schema}"
        )))
    }
}

/// One parsed call, as OpenAI returns it (`arguments` is a JSON string).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: CalledFunction,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CalledFunction {
    pub name: String,
    pub arguments: String,
}

/// Splits the model's text into content and tool calls. Calls to functions that were not
/// declared, or that are not valid JSON, stay in the content.
pub fn extract(text: &str, tools: &Tools) -> (Option<String>, Vec<ToolCall>) {
    let known = |n: &str| tools.functions.iter().any(|f| f.name == n);
    let mut calls = Vec::new();
    let mut content = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("<tool_call>") {
        let after = &rest[start + "<tool_call>".len()..];
        let Some(end) = after.find("</tool_call>") else {
            break;
        };
        match call_of(after[..end].trim(), &known) {
            Some(c) => {
                content.push_str(&rest[..start]);
                calls.push(c);
            }
            None => {
                content.push_str(&rest[..start + "<tool_call>".len() + end + "</tool_call>".len()])
            }
        }
        rest = &after[end + "</tool_call>".len()..];
    }
    content.push_str(rest);
    // Llama 3.x: the whole answer is one JSON call.
    if calls.is_empty() {
        if let Some(c) = call_of(text.trim().trim_start_matches("<|python_tag|>"), &known) {
            return (None, vec![c]);
        }
    }
    let content = content.trim();
    (
        (!content.is_empty() || calls.is_empty()).then(|| content.to_string()),
        calls,
    )
}

fn call_of(json_text: &str, known: &dyn Fn(&str) -> bool) -> Option<ToolCall> {
    let v: Value = serde_json::from_str(json_text).ok()?;
    let name = v.get("name")?.as_str()?;
    if !known(name) {
        return None;
    }
    let args = v
        .get("arguments")
        .or_else(|| v.get("parameters"))
        .cloned()
        .unwrap_or(json!({}));
    let args = match args {
        Value::String(s) => s,
        other => other.to_string(),
    };
    Some(ToolCall {
        id: format!("call_{:024x}", rand::random::<u128>() >> 32),
        kind: "function",
        function: CalledFunction {
            name: name.to_string(),
            arguments: args,
        },
    })
}

/// Prepares messages for the template: an assistant message's `tool_calls[].function.arguments`
/// (a JSON string on the wire) becomes an object, as the reference templates expect.
pub fn arguments_as_objects(messages: &mut [Value]) {
    for m in messages {
        if let Some(Value::Array(calls)) = m.get_mut("tool_calls") {
            for c in calls {
                if let Some(args) = c.get_mut("function").and_then(|f| f.get_mut("arguments")) {
                    if let Value::String(s) = args {
                        if let Ok(v) = serde_json::from_str::<Value>(s) {
                            *args = v;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Value {
        json!([{"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
    }

    #[test]
    fn choices_parse_and_refuse() {
        let t = weather();
        assert_eq!(
            parse(Some(&t), None, None).unwrap().unwrap().choice,
            ToolChoice::Auto
        );
        assert!(parse(Some(&t), Some(&json!("none")), None)
            .unwrap()
            .is_none());
        assert_eq!(
            parse(
                Some(&t),
                Some(&json!({"type": "function", "function": {"name": "get_weather"}})),
                None
            )
            .unwrap()
            .unwrap()
            .choice,
            ToolChoice::Named("get_weather".into())
        );
        for (tools, choice, param) in [
            (json!("x"), json!("auto"), "tools"),
            (json!([{"type": "function"}]), json!("auto"), "tools[0]"),
            (
                t.clone(),
                json!({"type": "function", "function": {"name": "nope"}}),
                "tool_choice",
            ),
            (t.clone(), json!("sometimes"), "tool_choice"),
            (json!([]), json!("required"), "tool_choice"),
        ] {
            let e = parse(Some(&tools), Some(&choice), None).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{tools} {choice}");
        }
    }

    #[test]
    fn calls_are_extracted_from_hermes_and_llama_formats() {
        let tools = parse(Some(&weather()), None, None).unwrap().unwrap();
        let (content, calls) = extract(
            "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
            &tools,
        );
        assert_eq!(content.as_deref(), Some("Let me check."));
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].function.name, "get_weather");
        assert_eq!(
            serde_json::from_str::<Value>(&calls[0].function.arguments).unwrap(),
            json!({"city": "Paris"})
        );
        let (content, calls) = extract(
            "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Rome\"}}",
            &tools,
        );
        assert_eq!((content, calls.len()), (None, 1));
        // Unknown functions and broken JSON stay text.
        let text = "<tool_call>{\"name\": \"rm\", \"arguments\": {}}</tool_call> and <tool_call>{oops</tool_call>";
        let (content, calls) = extract(text, &tools);
        assert!(calls.is_empty());
        assert_eq!(content.as_deref(), Some(text));
    }

    #[test]
    fn forcing_grammar_names_the_function() {
        let tools = parse(Some(&weather()), Some(&json!("required")), Some(false))
            .unwrap()
            .unwrap();
        let Some(ConstraintSpec::Lark(g)) = tools.forcing_grammar() else {
            panic!()
        };
        assert!(
            g.contains("\"const\":\"get_weather\"") && g.contains("<tool_call>"),
            "{g}"
        );
        assert_eq!(g.matches("<tool_call>").count(), 1, "one call: {g}");
        let auto = parse(Some(&weather()), None, None).unwrap().unwrap();
        assert!(auto.forcing_grammar().is_none());
    }

    #[test]
    fn template_gets_argument_objects() {
        let mut m = vec![
            json!({"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
            "function": {"name": "f", "arguments": "{\"a\": 1}"}}]}),
        ];
        arguments_as_objects(&mut m);
        assert_eq!(
            m[0]["tool_calls"][0]["function"]["arguments"],
            json!({"a": 1})
        );
    }
}
