//! An independent reader of Ollama Modelfiles (tests only): a port of the state machine in Ollama's
//! `parser/parser.go` and of what `ollama create` builds from it (`Modelfile.CreateRequest`). It shares
//! no code with `ollama_tools::formats::modelfile`, so a quoting bug there cannot hide behind the same bug here.
#![allow(dead_code)]

use std::sync::LazyLock;

use serde_json::{Map, Value, json};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Nil,
    Name,
    Value,
    Parameter,
    Message,
    Comment,
}

/// Go's `strconv.IsPrint` fails for the Unicode categories C (controls, format, private use,
/// unassigned; surrogates cannot occur in a Rust string) and Z (separators), except the ASCII space.
static NOT_PRINT: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(r"^[\p{Cc}\p{Cf}\p{Co}\p{Cn}\p{Zs}\p{Zl}\p{Zp}]$").unwrap());

pub fn is_print(r: char) -> bool {
    r == ' ' || !NOT_PRINT.is_match(r.encode_utf8(&mut [0u8; 4]))
}

fn is_alpha(r: char) -> bool {
    r.is_ascii_alphabetic()
}

fn is_number(r: char) -> bool {
    r.is_ascii_digit()
}

fn is_space(r: char) -> bool {
    r == ' ' || r == '\t'
}

fn is_newline(r: char) -> bool {
    r == '\r' || r == '\n'
}

fn is_valid_command(s: &str) -> bool {
    matches!(
        s.to_lowercase().as_str(),
        "from"
            | "license"
            | "template"
            | "system"
            | "adapter"
            | "draft"
            | "renderer"
            | "parser"
            | "parameter"
            | "message"
            | "requires"
    )
}

fn is_valid_role(s: &str) -> bool {
    s == "system" || s == "user" || s == "assistant"
}

/// Go's strings.TrimSpace: Unicode White_Space at both ends.
fn trim_space(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace())
}

/// parser.go's unquote, byte for byte.
fn unquote(s: &str) -> (String, bool) {
    let b = s.as_bytes();
    if b.len() >= 3 && &b[..3] == b"\"\"\"" {
        if b.len() >= 6 && &b[b.len() - 3..] == b"\"\"\"" {
            return (s[3..s.len() - 3].to_string(), true);
        }
        return (String::new(), false);
    }
    if !b.is_empty() && b[0] == b'"' {
        if b.len() >= 2 && b[b.len() - 1] == b'"' {
            return (s[1..s.len() - 1].to_string(), true);
        }
        return (String::new(), false);
    }
    (s.to_string(), true)
}

/// parseRuneForState: the next state and the rune to keep (`'\0'` for none).
fn parse_rune(r: char, cs: State) -> Result<(State, char), &'static str> {
    const INVALID: &str = "command must be one of \"from\", \"license\", \"template\", \"system\", \"adapter\", \
                           \"draft\", \"renderer\", \"parser\", \"parameter\", \"message\", or \"requires\"";
    Ok(match cs {
        State::Nil => {
            if r == '#' {
                (State::Comment, '\0')
            } else if is_space(r) || is_newline(r) {
                (State::Nil, '\0')
            } else {
                (State::Name, r)
            }
        }
        State::Name => {
            if is_alpha(r) {
                (State::Name, r)
            } else if is_space(r) {
                (State::Value, '\0')
            } else {
                return Err(INVALID);
            }
        }
        State::Value => {
            if is_newline(r) || is_space(r) {
                (State::Nil, r)
            } else {
                (State::Value, r)
            }
        }
        State::Parameter => {
            if is_alpha(r) || is_number(r) || r == '_' {
                (State::Parameter, r)
            } else if is_space(r) {
                (State::Value, '\0')
            } else {
                return Err("unexpected EOF");
            }
        }
        State::Message => {
            if is_alpha(r) {
                (State::Message, r)
            } else if is_space(r) {
                (State::Value, '\0')
            } else {
                return Err("unexpected EOF");
            }
        }
        State::Comment => {
            if is_newline(r) {
                (State::Nil, '\0')
            } else {
                (State::Comment, '\0')
            }
        }
    })
}

/// Reads a Modelfile into `(command, args)` pairs: command lowercased (`model` for FROM, the
/// parameter's name for PARAMETER), args as Ollama reads them (`role: content` for MESSAGE).
pub fn parse(text: &str) -> Result<Vec<(String, String)>, String> {
    // unicode.BOMOverride drops a leading byte-order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut cmds: Vec<(String, String)> = Vec::new();
    let mut cmd_name = String::new();
    let mut curr = State::Nil;
    let mut line = 1;
    let mut b = String::new();
    let mut role = String::new();

    for r in text.chars() {
        if is_newline(r) {
            line += 1;
        }
        let (mut next, r) = match parse_rune(r, curr) {
            Ok(x) => x,
            Err("unexpected EOF") => return Err(format!("unexpected EOF: {b}")),
            Err(e) => return Err(format!("(line {line}): {e}")),
        };
        if next != curr {
            match curr {
                State::Name => {
                    if !is_valid_command(&b) {
                        return Err(format!("(line {line}): invalid command {b:?}"));
                    }
                    let s = b.to_lowercase();
                    match s.as_str() {
                        "from" => cmd_name = "model".into(),
                        "parameter" => next = State::Parameter,
                        "message" => {
                            next = State::Message;
                            cmd_name = s;
                        }
                        _ => cmd_name = s,
                    }
                }
                State::Parameter => cmd_name = b.clone(),
                State::Message => {
                    if !is_valid_role(&b) {
                        return Err(format!(
                            "(line {line}): message role must be one of \"system\", \"user\", or \"assistant\""
                        ));
                    }
                    role = b.clone();
                }
                State::Comment | State::Nil => {}
                State::Value => {
                    let (s, ok) = unquote(trim_space(&b));
                    if !ok || is_space(r) {
                        b.push(r);
                        continue;
                    }
                    let s = if role.is_empty() {
                        s
                    } else {
                        format!("{}: {s}", std::mem::take(&mut role))
                    };
                    cmds.push((cmd_name.clone(), s));
                }
            }
            b.clear();
            curr = next;
        }
        if is_print(r) {
            b.push(r);
        }
    }

    match curr {
        State::Comment | State::Nil => {}
        State::Value => {
            let (s, ok) = unquote(trim_space(&b));
            if !ok {
                return Err(format!("unexpected EOF: {b}"));
            }
            let s = if role.is_empty() { s } else { format!("{role}: {s}") };
            cmds.push((cmd_name.clone(), s));
        }
        _ => return Err(format!("unexpected EOF: {b}")),
    }
    if !cmds.iter().any(|(n, _)| n == "model") {
        return Err("no FROM line".into());
    }
    Ok(cmds)
}

#[derive(Clone, Copy)]
enum Kind {
    Int,
    Float,
    Bool,
    List,
}

/// This reader's own copy of Ollama's option table.
fn kind_of(name: &str) -> Option<Kind> {
    Some(match name {
        "num_keep" | "seed" | "num_predict" | "top_k" | "repeat_last_n" | "num_ctx" | "num_batch" | "num_gpu"
        | "main_gpu" | "num_thread" => Kind::Int,
        "temperature" | "top_p" | "min_p" | "typical_p" | "repeat_penalty" | "presence_penalty"
        | "frequency_penalty" => Kind::Float,
        "use_mmap" => Kind::Bool,
        "stop" => Kind::List,
        _ => return None,
    })
}

/// `ollama create` warns about and skips these.
const DEPRECATED: &[&str] = &[
    "penalize_newline",
    "low_vram",
    "f16_kv",
    "logits_all",
    "vocab_only",
    "use_mlock",
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
];

/// The `/api/create` fields `ollama create` derives from the commands: `from`, `adapters` (paths,
/// where the CLI sends digests; the last ADAPTER wins as in the CLI), `parameters` typed by
/// FormatParams (`stop` collected into a list), `template`, `system`, `license` (always a list, as the
/// CLI sends it), `renderer`, `parser`, `requires`, `messages`.
pub fn create_request(cmds: &[(String, String)]) -> Result<Value, String> {
    let mut req = Map::new();
    let mut params = Map::new();
    let mut licenses = Vec::new();
    let mut messages = Vec::new();
    for (name, args) in cmds {
        match name.as_str() {
            "model" => {
                req.insert("from".into(), json!(args));
            }
            "adapter" => {
                req.insert("adapters".into(), json!([args]));
            }
            "template" | "system" | "renderer" | "parser" | "requires" => {
                req.insert(name.clone(), json!(args));
            }
            "license" => licenses.push(json!(args)),
            "message" => {
                let (role, content) = args.split_once(": ").unwrap_or((args.as_str(), ""));
                messages.push(json!({"role": role, "content": content}));
            }
            "draft" => return Err("DRAFT is not used by these tests".into()),
            param => {
                if DEPRECATED.contains(&param) {
                    continue;
                }
                let kind = kind_of(param).ok_or_else(|| format!("unknown parameter '{param}'"))?;
                let value = match kind {
                    Kind::Int => json!(args.parse::<i64>().map_err(|_| format!("invalid int value [{args}]"))?),
                    Kind::Float => {
                        let f = args
                            .parse::<f32>()
                            .map_err(|_| format!("invalid float value [{args}]"))?;
                        if !f.is_finite() {
                            return Err(format!("{param}: {args} cannot be sent as JSON"));
                        }
                        // encoding/json writes a float32 as its shortest decimal.
                        json!(format!("{f}").parse::<f64>().unwrap())
                    }
                    Kind::Bool => json!(match args.as_str() {
                        "1" | "t" | "T" | "TRUE" | "true" | "True" => true,
                        "0" | "f" | "F" | "FALSE" | "false" | "False" => false,
                        _ => return Err(format!("invalid bool value [{args}]")),
                    }),
                    Kind::List => {
                        let list = params.entry(param.to_string()).or_insert_with(|| json!([]));
                        list.as_array_mut().unwrap().push(json!(args));
                        continue;
                    }
                };
                params.insert(param.to_string(), value);
            }
        }
    }
    if !params.is_empty() {
        req.insert("parameters".into(), Value::Object(params));
    }
    if !licenses.is_empty() {
        req.insert("license".into(), Value::Array(licenses));
    }
    if !messages.is_empty() {
        req.insert("messages".into(), Value::Array(messages));
    }
    Ok(Value::Object(req))
}
