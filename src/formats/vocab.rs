//! A merged model's vocabulary when the adapter resized it: the tokens a fine-tune added (or the
//! rows it dropped), from the tokenizer files transformers saved beside the adapter, written into
//! the GGUF's tokenizer metadata the way llama.cpp's converter writes them (`tokenizer.ggml.*`).
//!
//! llama.cpp sizes `token_embd` and `output` by the number of `tokenizer.ggml.tokens` and refuses a
//! file where they differ, or where two tokens have the same text (src/llama-vocab.cpp), so the
//! token list must match the new row count exactly.

use std::path::Path;

use serde_json::Value as Json;

use crate::error::{Error, Result};
use crate::formats::gguf::{Array, Value};

/// llama.cpp's token types (`llama_token_type`).
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
/// The score llama.cpp's converter gives added tokens in vocabularies that have scores.
const ADDED_SCORE: f32 = -1000.0;
/// The tokenizer files that name added tokens, read in this order of precedence.
pub(crate) const TOKEN_FILES: [&str; 3] = ["tokenizer.json", "tokenizer_config.json", "added_tokens.json"];
/// Tokenizer files are JSON of a few megabytes; anything far larger is not one.
const MAX_FILE: u64 = 256 << 20;

/// The tokens of ids `from..` of a resized vocabulary, and the special-token ids the adapter's
/// tokenizer names.
#[derive(Debug, PartialEq)]
pub(crate) struct Added {
    /// `(text, special)` per id from the base's old size on.
    pub(crate) tokens: Vec<(String, bool)>,
    /// `tokenizer_config.json`'s `bos_token`, `eos_token`, ... as `(GGUF key suffix, text)`.
    pub(crate) specials: Vec<(&'static str, String)>,
}

/// Reads the tokens of ids `old..new` from the tokenizer files in `dir` (tokenizer.json's
/// `added_tokens`, else tokenizer_config.json's `added_tokens_decoder`, else added_tokens.json).
/// Ids none of them names become `[PAD{id}]`, as llama.cpp's converter pads.
pub(crate) fn added_tokens(dir: &Path, old: usize, new: usize) -> Result<Added> {
    let mut named: Vec<Option<(String, bool)>> = vec![None; new.saturating_sub(old)];
    let mut put = |id: u64, text: &str, special: bool| {
        if let Some(slot) = (id as usize).checked_sub(old).and_then(|i| named.get_mut(i)) {
            slot.get_or_insert((text.to_string(), special));
        }
    };
    let tokenizer = read_json(&dir.join("tokenizer.json"))?;
    for t in tokenizer
        .iter()
        .flat_map(|t| t["added_tokens"].as_array().into_iter().flatten())
    {
        if let (Some(id), Some(text)) = (t["id"].as_u64(), t["content"].as_str()) {
            put(id, text, t["special"].as_bool().unwrap_or(false));
        }
    }
    let config = read_json(&dir.join("tokenizer_config.json"))?;
    for (id, t) in config
        .iter()
        .flat_map(|c| c["added_tokens_decoder"].as_object().into_iter().flatten())
    {
        if let (Ok(id), Some(text)) = (id.parse(), t["content"].as_str()) {
            put(id, text, t["special"].as_bool().unwrap_or(false));
        }
    }
    for (text, id) in read_json(&dir.join("added_tokens.json"))?
        .iter()
        .flat_map(|j| j.as_object().into_iter().flatten())
    {
        if let Some(id) = id.as_u64() {
            put(id, text, false);
        }
    }
    let specials = ["bos", "eos", "unk", "pad"]
        .into_iter()
        .zip(["bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id"])
        .filter_map(|(name, key)| {
            let v = &config.as_ref()?[format!("{name}_token")];
            let text = v.as_str().or_else(|| v["content"].as_str())?;
            Some((key, text.to_string()))
        })
        .collect();
    let tokens = named
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or_else(|| (format!("[PAD{}]", old + i), false)))
        .collect();
    Ok(Added { tokens, specials })
}

/// A JSON file, `None` when it does not exist.
fn read_json(path: &Path) -> Result<Option<Json>> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(None);
    };
    if meta.len() > MAX_FILE {
        return Err(Error::invalid(
            path,
            format!("{} bytes is too large for a tokenizer file", meta.len()),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::invalid(path, format!("not valid JSON: {e}")))
}

/// Resizes the GGUF tokenizer metadata in `kvs` to `new` tokens: drops the ids from `new` on, or
/// appends `added`'s tokens (CONTROL when special, else USER_DEFINED; `[PAD]` fillers UNUSED), with
/// the converter's score for added tokens where the vocabulary has scores; points the special ids
/// at the adapter tokenizer's tokens. Refuses a duplicate token text (llama.cpp would abort).
pub(crate) fn resize(kvs: &mut Vec<(String, Value)>, arch: &str, new: usize, added: &Added, file: &Path) -> Result<()> {
    let tokens = kvs
        .iter_mut()
        .find(|(k, _)| k == "tokenizer.ggml.tokens")
        .and_then(|(_, v)| match v {
            Value::Array(Array::String(s)) => Some(s),
            _ => None,
        })
        .ok_or_else(|| Error::invalid(file, "the base has no tokenizer.ggml.tokens to add the new tokens to"))?;
    let mut texts: Vec<String> = tokens.iter().map(str::to_string).collect();
    texts.truncate(new);
    texts.extend(added.tokens.iter().map(|(t, _)| t.clone()));
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = texts.iter().find(|t| !seen.insert(t.as_str())) {
        return Err(Error::invalid(
            file,
            format!("the new vocabulary holds the token `{dup}` twice, which llama.cpp refuses to load"),
        ));
    }
    *tokens = texts.iter().collect();
    for (key, value) in kvs.iter_mut() {
        match (key.as_str(), value) {
            ("tokenizer.ggml.token_type", Value::Array(Array::I32(types))) => {
                types.truncate(new);
                types.extend(
                    added
                        .tokens
                        .iter()
                        .map(|(t, special)| match (special, t.starts_with("[PAD")) {
                            (true, _) => CONTROL,
                            (false, true) => UNUSED,
                            _ => USER_DEFINED,
                        }),
                );
            }
            ("tokenizer.ggml.scores", Value::Array(Array::F32(scores))) => {
                scores.truncate(new);
                scores.resize(new, ADDED_SCORE);
            }
            (k, Value::U32(n)) if k == format!("{arch}.vocab_size") => *n = new as u32,
            _ => {}
        }
    }
    for (suffix, text) in &added.specials {
        if let Some(id) = texts.iter().position(|t| t == text) {
            let key = format!("tokenizer.ggml.{suffix}");
            match kvs.iter_mut().find(|(k, _)| *k == key) {
                Some(kv) => kv.1 = Value::U32(id as u32),
                None => kvs.push((key, Value::U32(id as u32))),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kvs(n: usize) -> Vec<(String, Value)> {
        let tokens: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
        vec![
            (
                "tokenizer.ggml.tokens".into(),
                Value::Array(Array::String(tokens.iter().collect())),
            ),
            ("tokenizer.ggml.token_type".into(), Value::Array(Array::I32(vec![1; n]))),
            ("tokenizer.ggml.scores".into(), Value::Array(Array::F32(vec![0.5; n]))),
            ("llama.vocab_size".into(), Value::U32(n as u32)),
        ]
    }

    fn get<'a>(kvs: &'a [(String, Value)], key: &str) -> &'a Value {
        &kvs.iter().find(|(k, _)| k == key).unwrap().1
    }

    #[test]
    fn growing_appends_typed_scored_tokens_and_shrinking_truncates() {
        let mut k = kvs(4);
        let added = Added {
            tokens: vec![("<a>".into(), true), ("b".into(), false), ("[PAD6]".into(), false)],
            specials: vec![("eos_token_id", "<a>".into())],
        };
        resize(&mut k, "llama", 7, &added, Path::new("x")).unwrap();
        assert_eq!(
            get(&k, "tokenizer.ggml.token_type"),
            &Value::Array(Array::I32(vec![1, 1, 1, 1, 3, 4, 5]))
        );
        assert_eq!(
            get(&k, "tokenizer.ggml.scores"),
            &Value::Array(Array::F32(vec![0.5, 0.5, 0.5, 0.5, -1000.0, -1000.0, -1000.0]))
        );
        assert_eq!(get(&k, "tokenizer.ggml.eos_token_id"), &Value::U32(4));
        assert_eq!(get(&k, "llama.vocab_size"), &Value::U32(7));
        let mut k = kvs(4);
        let none = Added {
            tokens: vec![],
            specials: vec![],
        };
        resize(&mut k, "llama", 2, &none, Path::new("x")).unwrap();
        assert_eq!(
            get(&k, "tokenizer.ggml.token_type"),
            &Value::Array(Array::I32(vec![1, 1]))
        );
        let dup = Added {
            tokens: vec![("t0".into(), false)],
            specials: vec![],
        };
        let err = resize(&mut kvs(4), "llama", 5, &dup, Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("`t0` twice"), "{err}");
    }

    #[test]
    fn added_tokens_come_from_the_tokenizer_files_and_gaps_are_padding() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("tokenizer.json"),
            r#"{"added_tokens": [{"id": 10, "content": "<x>", "special": true}, {"id": 3, "content": "old"}]}"#,
        )
        .unwrap();
        std::fs::write(d.path().join("added_tokens.json"), r#"{"<y>": 12}"#).unwrap();
        std::fs::write(
            d.path().join("tokenizer_config.json"),
            r#"{"eos_token": {"content": "<x>"}}"#,
        )
        .unwrap();
        let a = added_tokens(d.path(), 10, 13).unwrap();
        assert_eq!(
            a.tokens,
            [
                ("<x>".to_string(), true),
                ("[PAD11]".to_string(), false),
                ("<y>".to_string(), false)
            ]
        );
        assert_eq!(a.specials, [("eos_token_id", "<x>".to_string())]);
    }
}
