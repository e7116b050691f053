//! A fine-tune's own chat template: the Jinja template its tokenizer carries
//! (`tokenizer_config.json` `chat_template`, or `chat_template.jinja`), often the reason it added
//! tokens, and its Ollama (Go template) form where the format is a known one.
//!
//! The Go forms live in `templates/chat/`; a format is recognised by the markers its turns are
//! written with, the way Ollama's own converter recognises chat templates by name.

use std::path::Path;

use serde_json::Value as Json;

use crate::error::{Error, Result};

/// Which chat template a model created from an adapter gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Choice {
    /// The base model's (with a notice when the adapter carries its own).
    #[default]
    Base,
    /// The adapter tokenizer's: written into the merged GGUF as `tokenizer.chat_template`, and
    /// given to Ollama in its Go form.
    Adapter,
}

/// A known chat format: its name, the markers that identify it in a Jinja template, its Go form
/// for Ollama and the stop sequences that end a turn.
struct Format {
    name: &'static str,
    markers: &'static [&'static str],
    go: &'static str,
    stop: &'static [&'static str],
}

const FORMATS: &[Format] = &[
    Format {
        name: "Llama 3",
        markers: &["<|start_header_id|>", "<|eot_id|>"],
        go: include_str!("../../templates/chat/llama3.gotmpl"),
        stop: &["<|eot_id|>"],
    },
    Format {
        name: "ChatML",
        markers: &["<|im_start|>", "<|im_end|>"],
        go: include_str!("../../templates/chat/chatml.gotmpl"),
        stop: &["<|im_end|>"],
    },
    Format {
        name: "Gemma",
        markers: &["<start_of_turn>", "<end_of_turn>"],
        go: include_str!("../../templates/chat/gemma.gotmpl"),
        stop: &["<end_of_turn>"],
    },
    Format {
        name: "Phi-3",
        markers: &["<|user|>", "<|assistant|>", "<|end|>"],
        go: include_str!("../../templates/chat/phi3.gotmpl"),
        stop: &["<|end|>"],
    },
];

/// The Ollama form of a Jinja chat template.
#[derive(Debug, PartialEq)]
pub(crate) struct Mapped {
    /// The format's name, for messages.
    pub(crate) format: &'static str,
    /// The Go template (Modelfile `TEMPLATE`).
    pub(crate) go: &'static str,
    /// Modelfile `PARAMETER stop` values.
    pub(crate) stop: &'static [&'static str],
}

/// The chat template of the tokenizer saved in `dir` (`None` without one). transformers keeps it
/// in `chat_template.jinja` (since 4.43), or in `tokenizer_config.json`'s `chat_template`, a string
/// or a list of named templates (the `default` one is taken).
pub(crate) fn read(dir: &Path) -> Result<Option<String>> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return std::fs::read_to_string(&jinja)
            .map(Some)
            .map_err(|e| Error::io(&jinja, e));
    }
    let config = dir.join("tokenizer_config.json");
    if !config.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&config).map_err(|e| Error::io(&config, e))?;
    let json: Json =
        serde_json::from_str(&text).map_err(|e| Error::invalid(&config, format!("not valid JSON: {e}")))?;
    Ok(match &json["chat_template"] {
        Json::String(s) => Some(s.clone()),
        Json::Array(named) => named
            .iter()
            .find(|t| t["name"] == "default")
            .or_else(|| named.first())
            .and_then(|t| t["template"].as_str())
            .map(str::to_string),
        _ => None,
    })
}

/// The refusal of `--chat-template adapter` for an adapter whose tokenizer has no chat template.
pub(crate) fn missing() -> Error {
    Error::Usage(
        "--chat-template adapter: the adapter has no chat template (tokenizer_config.json `chat_template` or \
         chat_template.jinja beside it)"
            .into(),
    )
}

/// The Go form of `jinja` when it writes its turns in a known format; `None` otherwise.
pub(crate) fn to_ollama(jinja: &str) -> Option<Mapped> {
    FORMATS
        .iter()
        .find(|f| f.markers.iter().all(|m| jinja.contains(m)))
        .map(|f| Mapped {
            format: f.name,
            go: f.go,
            stop: f.stop,
        })
}

/// The known formats' names, for messages.
pub(crate) fn known_formats() -> String {
    FORMATS.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_recognised_by_their_markers() {
        let qwen = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}";
        assert_eq!(to_ollama(qwen).map(|m| m.format), Some("ChatML"));
        let llama = "<|start_header_id|>{{ role }}<|end_header_id|>\n\n{{ content }}<|eot_id|>";
        assert_eq!(
            to_ollama(llama).map(|m| (m.format, m.stop)),
            Some(("Llama 3", &["<|eot_id|>"][..]))
        );
        assert_eq!(
            to_ollama("<start_of_turn>user ... <end_of_turn>").map(|m| m.format),
            Some("Gemma")
        );
        assert_eq!(to_ollama("[INST] {{ m }} [/INST]"), None);
    }

    #[test]
    fn the_template_is_read_from_either_file() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read(d.path()).unwrap(), None);
        std::fs::write(
            d.path().join("tokenizer_config.json"),
            r#"{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}"#,
        )
        .unwrap();
        assert_eq!(read(d.path()).unwrap().as_deref(), Some("D"));
        std::fs::write(d.path().join("chat_template.jinja"), "J").unwrap();
        assert_eq!(read(d.path()).unwrap().as_deref(), Some("J"));
    }
}
