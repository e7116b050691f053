//! Ollama Modelfiles: the `PARAMETER` table, values typed the way Ollama types them, and a renderer
//! whose output Ollama's Modelfile reader (`parser/parser.go`) reads back exactly.
//!
//! The reader has no escape sequences: a value is bare text, `"text"` or `"""text"""`, and it ends at
//! the first line break where the text read so far (trimmed) is a complete quoted value. It also
//! silently drops every character Go's `strconv.IsPrint` rejects (controls other than tab and line
//! breaks, format characters such as U+200D, spaces other than U+0020, private-use and unassigned code
//! points). So [`quote`] proves each quoting by replaying those rules and refuses what no quoting can
//! carry, instead of writing a Modelfile that silently means something else.

use std::sync::LazyLock;

use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value as JValue};
use serde_json::{Map, Number, Value};

/// Ollama's PARAMETER names and their types, as api.Options / api.Runner declare them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// Go `int`: `strconv.ParseInt(v, 10, 64)`.
    Int,
    /// Go `float32`: `strconv.ParseFloat(v, 32)`.
    Float,
    /// Go `bool` / `*bool`: `strconv.ParseBool`.
    Bool,
    /// Go `string`: taken as given.
    Str,
    /// Go `[]string`: every occurrence appends one string.
    StrList,
}

/// The options current Ollama accepts, in its documentation's order.
const PARAMS: &[(&str, ParamKind)] = &[
    ("num_keep", ParamKind::Int),
    ("seed", ParamKind::Int),
    ("num_predict", ParamKind::Int),
    ("top_k", ParamKind::Int),
    ("top_p", ParamKind::Float),
    ("min_p", ParamKind::Float),
    ("typical_p", ParamKind::Float),
    ("repeat_last_n", ParamKind::Int),
    ("temperature", ParamKind::Float),
    ("repeat_penalty", ParamKind::Float),
    ("presence_penalty", ParamKind::Float),
    ("frequency_penalty", ParamKind::Float),
    ("stop", ParamKind::StrList),
    ("num_ctx", ParamKind::Int),
    ("num_batch", ParamKind::Int),
    ("num_gpu", ParamKind::Int),
    ("main_gpu", ParamKind::Int),
    ("use_mmap", ParamKind::Bool),
    ("num_thread", ParamKind::Int),
];

/// Options Ollama removed in 2025. Current `ollama create` skips some with a warning and refuses the
/// others as unknown, so they are refused here and dropped from what a server reports.
const REMOVED: &[&str] = &[
    "tfs_z",
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
    "penalize_newline",
    "numa",
    "low_vram",
    "f16_kv",
    "logits_all",
    "vocab_only",
    "use_mlock",
];

/// The type Ollama gives the PARAMETER `name`; `None` when current Ollama does not accept it.
pub fn param_kind(name: &str) -> Option<ParamKind> {
    PARAMS.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
}

fn valid_names() -> String {
    PARAMS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

/// A parameter Ollama would not accept, or a server answer that cannot be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamError {
    /// A `--parameter` without `=`, or with nothing before it.
    #[error("--parameter {arg:?} is not NAME=VALUE; write it like --parameter temperature=0.7")]
    NotKeyValue {
        /// The argument as given.
        arg: String,
    },
    /// A name current Ollama does not know.
    #[error("unknown parameter {name:?}; Ollama accepts: {}", valid_names())]
    Unknown {
        /// The parameter name.
        name: String,
    },
    /// A name Ollama removed in 2025.
    #[error("Ollama no longer accepts the parameter {name} (removed from its options in 2025); leave it out")]
    Removed {
        /// The parameter name.
        name: String,
    },
    /// A value Ollama's parser would refuse for the parameter's type.
    #[error("parameter {name}: {value:?} is not {expected}; {hint}")]
    BadValue {
        /// The parameter name.
        name: String,
        /// The value as given.
        value: String,
        /// What the type takes, in words ("a whole number").
        expected: &'static str,
        /// How to write such a value.
        hint: &'static str,
    },
    /// NaN or an infinity, which JSON cannot carry.
    #[error(
        "parameter {name}: {value:?} is not a finite number; JSON (and so Ollama's API) cannot carry NaN or \
         infinity, give a number like 0.7"
    )]
    NonFinite {
        /// The parameter name.
        name: String,
        /// The value as given.
        value: String,
    },
    /// A line of `/api/show`'s `parameters` text that does not parse.
    #[error("line {line} of the parameters Ollama reported ({text:?}) cannot be read: {reason}")]
    ShowText {
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// What a kind expects, and what to do instead, for [`ParamError::BadValue`].
fn expectation(kind: ParamKind) -> (&'static str, &'static str) {
    match kind {
        ParamKind::Int => (
            "a whole number",
            "write it in decimal digits, like 4096 (no suffixes such as k, no decimal point)",
        ),
        ParamKind::Float => (
            "a 32-bit floating-point number",
            "write it in decimal, like 0.7 or 1e-3, within ±3.4e38",
        ),
        ParamKind::Bool => (
            "a boolean",
            "write true or false (Ollama also reads 1/0, t/f, TRUE/FALSE)",
        ),
        ParamKind::Str | ParamKind::StrList => ("text", "give the text as is"),
    }
}

/// Parameters in first-seen order; values typed as JSON (numbers, bools, strings; `stop` = array of
/// strings), as `/api/create` takes them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Parameters(Map<String, Value>);

impl Parameters {
    /// `KEY=VALUE` from the command line (`--parameter`): the name is checked against Ollama's table,
    /// the value parsed as Ollama's `FormatParams` would (Go strconv rules). `stop` may be given several
    /// times and appends; any other name given twice keeps the last value.
    pub fn push_arg(&mut self, arg: &str) -> Result<(), ParamError> {
        match arg.split_once('=') {
            Some((name, value)) if !name.is_empty() => self.push(name, value),
            _ => Err(ParamError::NotKeyValue { arg: arg.to_string() }),
        }
    }

    /// Same as [`push_arg`](Self::push_arg) with name and value separate. The value is not trimmed:
    /// a stop string may be whitespace.
    pub fn push(&mut self, name: &str, value: &str) -> Result<(), ParamError> {
        let kind = known_kind(name)?;
        let typed = parse_typed(name, kind, value)?;
        self.insert(name, kind, typed);
        Ok(())
    }

    fn insert(&mut self, name: &str, kind: ParamKind, value: Value) {
        if kind == ParamKind::StrList {
            match self.0.get_mut(name) {
                Some(Value::Array(list)) => list.push(value),
                _ => {
                    self.0.insert(name.to_string(), Value::Array(vec![value]));
                }
            }
        } else {
            self.0.insert(name.to_string(), value);
        }
    }

    /// Reads the `parameters` text of Ollama's `/api/show` answer: one `name<spaces>value` per line,
    /// values printed with Go's `%#v` (strings Go-quoted, numbers like `0.6`, `4096`, `1e+06`,
    /// `true`/`false`); a list parameter appears on several lines. Known names are typed by the table
    /// (an int printed as float text is turned back into an int). Names Ollama removed are dropped
    /// (current `ollama create` would refuse or ignore them). Unknown names are kept as given, since
    /// the server wrote them; one that appears on several lines becomes a list.
    pub fn from_show_text(text: &str) -> Result<Self, ParamError> {
        let mut out = Parameters::default();
        let mut seen_unknown: Vec<String> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let trimmed = line.trim();
            if trimmed.is_empty() {
                continue;
            }
            let bad = |reason: String| ParamError::ShowText {
                line: i + 1,
                text: line.to_string(),
                reason,
            };
            let (name, raw) = match trimmed.split_once([' ', '\t']) {
                Some((n, r)) => (n, r.trim_start()),
                None => return Err(bad("a name without a value".into())),
            };
            if REMOVED.contains(&name) {
                continue;
            }
            let value = read_go_value(raw).map_err(bad)?;
            match param_kind(name) {
                Some(kind) => {
                    let typed = retype(kind, value).map_err(bad)?;
                    out.insert(name, kind, typed);
                }
                None => {
                    // Several lines for one unknown name: the server printed a list.
                    if seen_unknown.iter().any(|n| n == name) {
                        match out.0.get_mut(name) {
                            Some(Value::Array(list)) => list.push(value),
                            Some(prev) => *prev = Value::Array(vec![prev.take(), value]),
                            None => {}
                        }
                    } else {
                        seen_unknown.push(name.to_string());
                        out.0.insert(name.to_string(), value);
                    }
                }
            }
        }
        Ok(out)
    }

    /// The params layer of a local manifest (the `application/vnd.ollama.image.params` blob, a JSON
    /// object). Ints stored as integral floats become ints, a lone `stop` string becomes a list, names
    /// Ollama removed are dropped; everything else is kept as stored.
    pub fn from_json(map: &Map<String, Value>) -> Self {
        let mut out = Parameters::default();
        for (name, value) in map {
            if REMOVED.contains(&name.as_str()) {
                continue;
            }
            let value = match (param_kind(name), value) {
                (Some(ParamKind::StrList), Value::String(_)) => Value::Array(vec![value.clone()]),
                (Some(ParamKind::Int), Value::Number(n)) => {
                    integral(n).map_or_else(|| value.clone(), |i| Value::Number(i.into()))
                }
                _ => value.clone(),
            };
            out.0.insert(name.clone(), value);
        }
        out
    }

    /// Per-key replacement: every key in `over` replaces the whole value here (so a user's `stop` list
    /// replaces the base model's rather than adding to it). Keys new to `self` go last.
    pub fn overlay(&mut self, over: &Parameters) {
        for (k, v) in &over.0 {
            self.0.insert(k.clone(), v.clone());
        }
    }

    /// Whether no parameter is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value of `name` as `/api/create` takes it (`stop` is an array).
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    /// The `parameters` object of `/api/create`.
    pub fn to_json(&self) -> Map<String, Value> {
        self.0.clone()
    }

    /// `(name, value text)` pairs as Modelfile PARAMETER lines carry them: one pair per list element,
    /// numbers printed so that Go's strconv parses back the same value.
    fn lines(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (name, value) in &self.0 {
            let kind = param_kind(name);
            match value {
                Value::Array(items) => {
                    for item in items {
                        if let Some(text) = value_text(kind, item) {
                            out.push((name.clone(), text));
                        }
                    }
                }
                other => {
                    if let Some(text) = value_text(kind, other) {
                        out.push((name.clone(), text));
                    }
                }
            }
        }
        out
    }
}

fn known_kind(name: &str) -> Result<ParamKind, ParamError> {
    match param_kind(name) {
        Some(kind) => Ok(kind),
        None if REMOVED.contains(&name) => Err(ParamError::Removed { name: name.to_string() }),
        None => Err(ParamError::Unknown { name: name.to_string() }),
    }
}

/// Parses `value` as Ollama's `FormatParams` does for `kind`.
fn parse_typed(name: &str, kind: ParamKind, value: &str) -> Result<Value, ParamError> {
    let bad = || {
        let (expected, hint) = expectation(kind);
        ParamError::BadValue {
            name: name.to_string(),
            value: value.to_string(),
            expected,
            hint,
        }
    };
    match kind {
        // Rust's i64 parser takes exactly what ParseInt(v, 10, 64) takes: optional sign, ASCII digits.
        ParamKind::Int => value.parse::<i64>().map(|i| Value::Number(i.into())).map_err(|_| bad()),
        ParamKind::Float => {
            // Rust's f32 parser accepts Go's decimal syntax (and inf/nan, refused below); Go's hex
            // floats are not accepted, which only costs an error message.
            let f = value.parse::<f32>().map_err(|_| bad())?;
            if !f.is_finite() {
                let lower = value.to_ascii_lowercase();
                return if lower.contains("inf") || lower.contains("nan") {
                    Err(ParamError::NonFinite {
                        name: name.to_string(),
                        value: value.to_string(),
                    })
                } else {
                    Err(bad()) // finite text beyond f32's range: ParseFloat reports ErrRange
                };
            }
            Ok(float32_json(f))
        }
        ParamKind::Bool => match value {
            "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(Value::Bool(true)),
            "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(Value::Bool(false)),
            _ => Err(bad()),
        },
        ParamKind::Str | ParamKind::StrList => Ok(Value::String(value.to_string())),
    }
}

/// A float32 as Go's encoding/json writes it: the shortest decimal that reads back the same float32.
fn float32_json(f: f32) -> Value {
    // The shortest f32 text read as f64 serializes back to that same short text.
    let short: f64 = f.to_string().parse().unwrap_or(f64::from(f));
    Number::from_f64(short).map_or(Value::Null, Value::Number)
}

fn integral(n: &Number) -> Option<i64> {
    if let Some(i) = n.as_i64() {
        return Some(i);
    }
    let f = n.as_f64()?;
    (f.fract() == 0.0 && f.abs() < 9.2e18).then_some(f as i64)
}

/// Types a value read from `/api/show` text by the table.
fn retype(kind: ParamKind, value: Value) -> Result<Value, String> {
    match (kind, &value) {
        (ParamKind::Int, Value::Number(n)) => integral(n)
            .map(|i| Value::Number(i.into()))
            .ok_or_else(|| format!("{n} is not a whole number")),
        // Ollama holds a float32: a value beyond its range could not have come from a server, and
        // would be written as a PARAMETER that `ollama create` refuses (ParseFloat's ErrRange).
        (ParamKind::Float, Value::Number(n)) => match n.as_f64() {
            Some(f) if f.abs() <= f64::from(f32::MAX) => Ok(float32_json(f as f32)),
            _ => Err(format!(
                "{n} is beyond the range of a 32-bit float, which Ollama gives this parameter"
            )),
        },
        (ParamKind::Bool, Value::Bool(_)) | (ParamKind::Str | ParamKind::StrList, Value::String(_)) => Ok(value),
        _ => Err(format!(
            "{value} does not have the type Ollama gives this parameter ({kind:?})"
        )),
    }
}

/// One value as Go's `%#v` prints it: a Go-quoted string, `true`/`false`, or a number.
fn read_go_value(raw: &str) -> Result<Value, String> {
    if raw.starts_with('"') {
        return go_unquote(raw).map(Value::String);
    }
    match raw {
        "true" => return Ok(Value::Bool(true)),
        "false" => return Ok(Value::Bool(false)),
        _ => {}
    }
    if let Ok(i) = raw.parse::<i64>() {
        return Ok(Value::Number(i.into()));
    }
    match raw.parse::<f64>() {
        Ok(f) if f.is_finite() => Ok(Number::from_f64(f).map_or(Value::Null, Value::Number)),
        // `%#v` of NaN or ±Inf: JSON could not have carried it, so this is not a server's params layer.
        Ok(_) => Err(format!("{raw} is not a finite number")),
        // Not Go syntax we know: keep the text, the server wrote it.
        Err(_) => Ok(Value::String(raw.to_string())),
    }
}

/// Go's `strconv.Unquote` for a double-quoted literal.
fn go_unquote(s: &str) -> Result<String, String> {
    let inner = s
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .filter(|_| s.len() >= 2)
        .ok_or_else(|| format!("{s} is not a complete Go string literal"))?;
    let mut bytes = Vec::with_capacity(inner.len());
    let mut chars = inner.chars();
    let hex = |chars: &mut std::str::Chars, n: usize| -> Result<u32, String> {
        let digits: String = chars.by_ref().take(n).collect();
        if digits.len() != n || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!("bad escape in {s}: expected {n} hex digits"));
        }
        u32::from_str_radix(&digits, 16).map_err(|e| e.to_string())
    };
    while let Some(c) = chars.next() {
        match c {
            '"' => return Err(format!("unescaped quote inside {s}")),
            '\n' => return Err(format!("line break inside {s}")),
            '\\' => {
                let e = chars.next().ok_or_else(|| format!("{s} ends in a lone backslash"))?;
                let simple = match e {
                    'a' => Some(0x07),
                    'b' => Some(0x08),
                    'f' => Some(0x0c),
                    'n' => Some(b'\n'),
                    'r' => Some(b'\r'),
                    't' => Some(b'\t'),
                    'v' => Some(0x0b),
                    '\\' => Some(b'\\'),
                    '"' => Some(b'"'),
                    _ => None,
                };
                if let Some(b) = simple {
                    bytes.push(b);
                    continue;
                }
                match e {
                    'x' => bytes.push(hex(&mut chars, 2)? as u8),
                    '0'..='7' => {
                        let rest: String = chars.by_ref().take(2).collect();
                        let digits = format!("{e}{rest}");
                        let v = u32::from_str_radix(&digits, 8)
                            .ok()
                            .filter(|v| digits.len() == 3 && *v <= 255)
                            .ok_or_else(|| format!("bad octal escape \\{digits} in {s}"))?;
                        bytes.push(v as u8);
                    }
                    'u' | 'U' => {
                        let v = hex(&mut chars, if e == 'u' { 4 } else { 8 })?;
                        let ch = char::from_u32(v).ok_or_else(|| format!("\\{e}{v:X} is not a character"))?;
                        bytes.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                    }
                    other => return Err(format!("unknown escape \\{other} in {s}")),
                }
            }
            c => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    String::from_utf8(bytes).map_err(|_| format!("{s} is not valid UTF-8 once unescaped"))
}

/// A JSON parameter value as the text a Modelfile PARAMETER line gives `FormatParams`; `None` for
/// null (nothing to write).
fn value_text(kind: Option<ParamKind>, v: &Value) -> Option<String> {
    Some(match v {
        Value::Null => return None,
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match (kind, integral(n)) {
            // ParseInt refuses "4096.0": an int parameter must be written as digits.
            (Some(ParamKind::Int), Some(i)) => i.to_string(),
            _ if n.is_i64() || n.is_u64() => n.to_string(),
            _ => go_float_text(n.as_f64().unwrap_or(0.0)),
        },
        other => other.to_string(),
    })
}

/// Shortest text Go's ParseFloat reads back as `f` (exponent form for very large or small values).
fn go_float_text(f: f64) -> String {
    let a = f.abs();
    if a == 0.0 || (1e-5..1e16).contains(&a) {
        format!("{f}")
    } else {
        format!("{f:e}")
    }
}

/// A chat message given to the model before the user's first turn (Modelfile `MESSAGE`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant` (a Modelfile takes no other; the API may).
    pub role: String,
    /// The text, verbatim.
    pub content: String,
}

/// What a Modelfile says: everything `ollama create -f` reads.
#[derive(Clone, Debug, Default)]
pub struct Modelfile {
    /// Model name or absolute GGUF path.
    pub from: String,
    /// Absolute GGUF adapter path.
    pub adapter: Option<String>,
    /// PARAMETER lines.
    pub parameters: Parameters,
    /// TEMPLATE: the Go template of the prompt; `None` keeps what Ollama gives the FROM model.
    pub template: Option<String>,
    /// SYSTEM: the default system message.
    pub system: Option<String>,
    /// LICENSE text.
    pub license: Option<String>,
    /// MESSAGE lines, in order.
    pub messages: Vec<Message>,
    /// RENDERER / PARSER exist in current Ollama for models with built-in renderers.
    pub renderer: Option<String>,
    /// PARSER: the built-in output parser (see `renderer`).
    pub parser: Option<String>,
}

/// The built-in template; a user template gets the same context and filters.
pub(crate) const BUILTIN_TEMPLATE: &str = include_str!("../../templates/Modelfile");

/// Why a Modelfile could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The template itself does not parse; `detail` names the file and line.
    #[error("Modelfile template {template} cannot be used: {detail}")]
    Syntax {
        /// The template's name, as passed to [`Modelfile::render`].
        template: String,
        /// minijinja's message.
        detail: String,
    },
    /// A value the template quoted cannot be carried by a Modelfile.
    #[error("{template} line {line}: {source}")]
    Quote {
        /// The template's name, as passed to [`Modelfile::render`].
        template: String,
        /// The template line that quoted it (0 when minijinja does not say).
        line: usize,
        /// Why the value cannot be quoted.
        #[source]
        source: QuoteError,
    },
    /// Any other failure while rendering (undefined variable, bad filter argument...).
    #[error("rendering Modelfile template {template} failed: {detail}")]
    Render {
        /// The template's name, as passed to [`Modelfile::render`].
        template: String,
        /// minijinja's message.
        detail: String,
    },
    /// A message whose role a Modelfile MESSAGE cannot carry.
    #[error(
        "message {index} has role {role:?}, but a Modelfile MESSAGE takes only system, user or assistant; \
         send it through the API instead (leave out --out-modelfile)"
    )]
    MessageRole {
        /// 1-based position in [`Modelfile::messages`].
        index: usize,
        /// The role.
        role: String,
    },
    /// A parameter name a PARAMETER line cannot carry (only letters, digits and `_`).
    #[error(
        "parameter name {name:?} cannot be written to a Modelfile (PARAMETER names are letters, digits and \
         _); leave it out or send it through the API (leave out --out-modelfile)"
    )]
    ParameterName {
        /// The parameter name.
        name: String,
    },
}

impl Modelfile {
    /// Renders with minijinja from `template_source`, or the built-in `templates/Modelfile` when
    /// `None`; `template_name` names the template in error messages (pass the file's path).
    ///
    /// Context: `from`, `adapter`, `template`, `system`, `license`, `renderer`, `parser` (strings, or
    /// none when absent), `parameters` (a list of `{name, value}`, one entry per `stop` string, values
    /// as text Ollama's `FormatParams` reads back to the same value), `messages` (a list of
    /// `{role, content}`). The filter `quote` applies [`quote`] and fails the render with its message.
    /// No autoescape; `trim_blocks` and `lstrip_blocks` are on (block tags on their own lines leave no
    /// blank lines) and the template's trailing newline is kept; an undefined variable is an error.
    pub fn render(&self, template_source: Option<&str>, template_name: &str) -> Result<String, RenderError> {
        for (index, m) in self.messages.iter().enumerate() {
            // parser.go's isValidMessageRole: anything else is a parse error in `ollama create`.
            if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
                return Err(RenderError::MessageRole {
                    index: index + 1,
                    role: m.role.clone(),
                });
            }
        }
        let params = self.parameters.lines();
        for (name, _) in &params {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(RenderError::ParameterName { name: name.clone() });
            }
        }
        let ctx = JValue::from_pairs([
            ("from", JValue::from(self.from.clone())),
            ("adapter", JValue::from(self.adapter.clone())),
            ("renderer", JValue::from(self.renderer.clone())),
            ("parser", JValue::from(self.parser.clone())),
            (
                "parameters",
                JValue::from(
                    params
                        .into_iter()
                        .map(|(n, v)| JValue::from_pairs([("name", n), ("value", v)]))
                        .collect::<Vec<_>>(),
                ),
            ),
            ("template", JValue::from(self.template.clone())),
            ("system", JValue::from(self.system.clone())),
            ("license", JValue::from(self.license.clone())),
            (
                "messages",
                JValue::from(
                    self.messages
                        .iter()
                        .map(|m| JValue::from_pairs([("role", m.role.clone()), ("content", m.content.clone())]))
                        .collect::<Vec<_>>(),
                ),
            ),
        ]);

        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(true)
            .build()
            .map_err(|e| RenderError::Render {
                template: template_name.to_string(),
                detail: e.to_string(),
            })?;
        env.set_syntax(syntax);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        // SemiStrict: `{% if adapter %}` works, a misspelt `{{ sytem }}` fails instead of printing nothing.
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        env.add_filter("quote", quote_filter);

        let source = template_source.unwrap_or(BUILTIN_TEMPLATE);
        let tmpl = env
            .template_from_named_str(template_name, source)
            .map_err(|e| RenderError::Syntax {
                template: template_name.to_string(),
                detail: e.to_string(),
            })?;
        tmpl.render(ctx).map_err(|e| {
            let quote_err = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<QuoteError>())
                .cloned();
            match quote_err {
                Some(source) => RenderError::Quote {
                    template: template_name.to_string(),
                    line: e.line().unwrap_or(0),
                    source,
                },
                None => RenderError::Render {
                    template: template_name.to_string(),
                    detail: e.to_string(),
                },
            }
        })
    }
}

fn quote_filter(value: &JValue) -> Result<String, minijinja::Error> {
    let text = if let Some(s) = value.as_str() {
        s.to_string()
    } else if value.is_none() || value.is_undefined() {
        return Err(minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            "quote was given no value; guard optional fields with {% if field is not none %}",
        ));
    } else {
        value.to_string()
    };
    quote(&text)
        .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string()).with_source(e))
}

/// A value Ollama's Modelfile grammar cannot carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    /// A character Ollama's reader drops (not printable, not a tab or line break).
    #[error(
        "the value {preview} contains {escaped} (U+{code:04X}) at line {line}, column {column}, which \
         Ollama's Modelfile reader silently drops, so a Modelfile cannot carry this value; remove that \
         character, or send the value through the API instead (leave out --out-modelfile)",
        escaped = ch.escape_unicode(), code = *ch as u32
    )]
    Unprintable {
        /// The character.
        ch: char,
        /// 1-based line of the value it is on (`\r\n` counts once).
        line: usize,
        /// 1-based column, in characters.
        column: usize,
        /// The value's first 40 characters, escaped and quoted.
        preview: String,
    },
    /// Line ends that would close both `"` and `"""` quoting early.
    #[error(
        "no Modelfile quoting can carry the value {preview}: in \"\"\" quotes Ollama's Modelfile reader would \
         end it at the end of line {triple_line} (the text up to there ends with \"\"\"), and in \" quotes \
         {single}. Change the text there (for example put a character after the closing quotes), or send the \
         value through the API instead (leave out --out-modelfile)"
    )]
    Unquotable {
        /// The value's first 40 characters, escaped and quoted.
        preview: String,
        /// 1-based line at whose end `"""` quoting would close.
        triple_line: usize,
        /// What `"` quoting would do, in words.
        single: String,
    },
}

/// Characters Ollama's reader keeps: Go's `strconv.IsPrint` (Unicode L, M, N, P, S and U+0020), plus
/// tab and line breaks, which it keeps through its own paths. Everything else is dropped silently.
static DROPPED: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(r"[^\p{L}\p{M}\p{N}\p{P}\p{S} \t\r\n]").expect("static pattern"));

/// Quotes a value so Ollama's Modelfile parser reads back exactly `value`: bare when possible, else
/// `"value"` or `"""value"""` (multi-line values try `"""` first), each candidate proved by replaying
/// the parser. Err when the grammar cannot carry the value: a character the reader drops, or line
/// ends that would close every quoting early.
pub fn quote(value: &str) -> Result<String, QuoteError> {
    if let Some(m) = DROPPED.find(value) {
        let (line, column) = line_col(value, m.start());
        let ch = value[m.start()..].chars().next().unwrap_or('\u{0}');
        return Err(QuoteError::Unprintable {
            ch,
            line,
            column,
            preview: preview(value),
        });
    }
    if value.is_empty() {
        return Ok("\"\"".into());
    }
    let single = format!("\"{value}\"");
    let triple = format!("\"\"\"{value}\"\"\"");
    let multi_line = value.contains(['\n', '\r']);
    let bare_ok = !multi_line && !value.starts_with('"') && value.trim() == value;
    let candidates: Vec<&str> = if multi_line {
        vec![&triple, &single]
    } else if bare_ok {
        vec![value, &single, &triple]
    } else {
        vec![&single, &triple]
    };
    for c in candidates {
        if matches!(read_back(c), ReadBack::Value(ref v) if v == value) {
            return Ok(c.to_string());
        }
    }
    let triple_line = match read_back(&triple) {
        ReadBack::EndsEarly { at } => line_col(value, at.saturating_sub(3)).0,
        _ => 0, // unreachable in practice: `"""v"""` only fails by ending early
    };
    let single = match read_back(&single) {
        ReadBack::EndsEarly { at } => format!(
            "it would end at the end of line {} (the text up to there ends with \")",
            line_col(value, at.saturating_sub(1)).0
        ),
        ReadBack::Unterminated => "it would never close (the value starts with \"\")".into(),
        ReadBack::Value(_) => "it would read back different text (the value starts and ends with \"\")".into(),
    };
    Err(QuoteError::Unquotable {
        preview: preview(value),
        triple_line,
        single,
    })
}

/// What the value state of Ollama's reader makes of `candidate` followed by a newline.
enum ReadBack {
    /// The value ended at that final newline, with this text.
    Value(String),
    /// The value ended at the line break at byte `at` of `candidate`, before the end.
    EndsEarly { at: usize },
    /// The value was still open at the final newline (it would swallow the following lines).
    Unterminated,
}

/// Replays parser.go's stateValue on `candidate` + "\n": at a space or tab the rune is always kept; at
/// a line break the value ends if `unquote(TrimSpace(buffer))` succeeds, else the break is kept.
/// `candidate` holds only characters the reader keeps (checked by the caller), so the buffer is the
/// candidate's prefix and Go's TrimSpace equals `str::trim` on it.
fn read_back(candidate: &str) -> ReadBack {
    let end = candidate.len();
    for (i, r) in candidate.char_indices().chain(std::iter::once((end, '\n'))) {
        if (r == '\n' || r == '\r')
            && let Some(v) = unquote(candidate[..i].trim())
        {
            return if i == end {
                ReadBack::Value(v.to_string())
            } else {
                ReadBack::EndsEarly { at: i }
            };
        }
    }
    ReadBack::Unterminated
}

/// parser.go's unquote: `"""x"""` (at least 6 bytes), `"x"` (at least 2), or bare text; `None` when
/// a quoted value is not closed yet.
fn unquote(s: &str) -> Option<&str> {
    if s.starts_with("\"\"\"") {
        return (s.len() >= 6 && s.ends_with("\"\"\"")).then(|| &s[3..s.len() - 3]);
    }
    if s.starts_with('"') {
        return (s.len() >= 2 && s.ends_with('"')).then(|| &s[1..s.len() - 1]);
    }
    Some(s)
}

/// 1-based line and column (in characters) of byte `at`; `\r\n`, `\r` and `\n` each end a line.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at.min(text.len())];
    let mut line = 1;
    let mut column = 1;
    let mut prev_cr = false;
    for c in before.chars() {
        match c {
            '\n' if prev_cr => {}
            '\n' | '\r' => {
                line += 1;
                column = 1;
            }
            _ => column += 1,
        }
        prev_cr = c == '\r';
    }
    (line, column)
}

/// The value's start, escaped, for error messages.
fn preview(value: &str) -> String {
    const MAX: usize = 40;
    let head: String = value.chars().take(MAX).collect();
    let more = if value.chars().count() > MAX { "..." } else { "" };
    format!("\"{}\"{more}", head.escape_debug())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unquote_follows_parser_go() {
        assert_eq!(unquote("\"\"\"\"\"\""), Some(""));
        assert_eq!(unquote("\"\"\"\"\""), None); // five quotes: a triple opener, not closed
        assert_eq!(unquote("\"\"\"\""), None);
        assert_eq!(unquote("\"\""), Some(""));
        assert_eq!(unquote("\""), None);
        assert_eq!(unquote("a\""), Some("a\""));
    }

    #[test]
    fn quoting_choices() {
        assert_eq!(quote("llama3.2").unwrap(), "llama3.2");
        assert_eq!(quote("a b").unwrap(), "a b");
        assert_eq!(quote("").unwrap(), "\"\"");
        assert_eq!(quote(" a").unwrap(), "\" a\"");
        assert_eq!(quote("\"a\"").unwrap(), "\"\"a\"\"");
        assert_eq!(quote("\"\"x").unwrap(), "\"\"\"\"\"x\"\"\"");
        assert_eq!(quote("a\nb").unwrap(), "\"\"\"a\nb\"\"\"");
        // A line ending in """ also ends in ": neither quoting survives it.
        assert!(quote("a\"\"\"\nb").is_err());
    }

    #[test]
    fn refusals_name_the_problem() {
        let e = quote("a\u{200d}b").unwrap_err().to_string();
        assert!(e.contains("U+200D") && e.contains("line 1, column 2"), "{e}");
        let e = quote("x\"\"\"\ny\"\nz").unwrap_err();
        assert!(matches!(e, QuoteError::Unquotable { triple_line: 1, .. }), "{e:?}");
        assert!(e.to_string().contains("end of line 1"), "{e}");
    }

    #[test]
    fn line_col_counts_crlf_once() {
        assert_eq!(line_col("a\r\nb\rc\nd", 7), (4, 1));
        assert_eq!(line_col("ab", 1), (1, 2));
    }

    #[test]
    fn floats_print_as_go_reads_them() {
        assert_eq!(go_float_text(0.6), "0.6");
        assert_eq!(go_float_text(1e30), "1e30");
        assert_eq!(go_float_text(1.5e-7), "1.5e-7");
        assert_eq!(float32_json(0.6), serde_json::json!(0.6));
        assert_eq!(
            value_text(Some(ParamKind::Int), &serde_json::json!(4096.0)).unwrap(),
            "4096"
        );
    }

    #[test]
    fn go_unquote_escapes() {
        assert_eq!(
            go_unquote(r#""a\n\t\"\\\x41\u00e9\U0001f600\101""#).unwrap(),
            "a\n\t\"\\Aé😀A"
        );
        assert!(go_unquote(r#""\q""#).is_err());
        assert!(go_unquote(r#""\ud800""#).is_err());
        assert!(go_unquote("\"").is_err());
    }

    /// Found by fuzzing: `temperature 1e300` from a server was kept, and rendered as a PARAMETER
    /// line that `ollama create` refuses; a float is a float32, rounded as Ollama holds it.
    #[test]
    fn show_text_floats_are_float32() {
        let e = Parameters::from_show_text("temperature       1e300")
            .unwrap_err()
            .to_string();
        assert!(e.contains("1e+300 is beyond the range of a 32-bit float"), "{e}");
        let p = Parameters::from_show_text("top_p 0.123456789012").unwrap();
        assert_eq!(p.get("top_p"), Some(&serde_json::json!(0.12345679)));
    }
}
