//! The base model an adapter is applied to, described the same way whatever it was read from.
//!
//! Sources today: a GGUF file (the file Ollama stores as a model blob; only its header is read) and a
//! Hugging Face model directory with `config.json` (tensor shapes derived from the hyper-parameters
//! the way llama.cpp's converter lays them out). Every source fills [`BaseModel`], so consumers never
//! care where it came from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use crate::arch::{self, Arch};
use crate::error::{Error, Result};
use crate::gguf::{self, GgmlType};

/// A tensor of the base model as llama.cpp names and shapes it.
#[derive(Clone, Debug, PartialEq)]
pub struct BaseTensor {
    /// ggml order (`ne[0]` = input width for a weight matrix).
    pub ne: Vec<u64>,
    /// Known for GGUF sources only.
    pub ty: Option<GgmlType>,
}

#[derive(Clone, Debug)]
pub struct BaseModel {
    /// Where the description came from, for messages.
    pub source: PathBuf,
    /// `general.architecture`.
    pub arch: String,
    /// `general.name` or the config's `_name_or_path`.
    pub name: Option<String>,
    pub block_count: u64,
    pub head_count: u64,
    pub head_count_kv: u64,
    pub vocab_size: Option<u64>,
    /// GGUF tensor name -> shape (and type where known).
    pub tensors: BTreeMap<String, BaseTensor>,
    /// The GGUF file, when the base is one (the merge needs its bytes).
    pub gguf_path: Option<PathBuf>,
}

/// transformers' config-class defaults for fields a `config.json` may leave out.
fn hf_default(arch: &str, key: &str) -> Option<u64> {
    match (arch, key) {
        ("gemma" | "gemma2" | "gemma3", "head_dim") => Some(256),
        ("gemma3", "vocab_size") => Some(262_208),
        ("gemma3", "hidden_size") => Some(2304),
        ("gemma3", "intermediate_size") => Some(9216),
        ("gemma3", "num_hidden_layers") => Some(26),
        ("gemma3", "num_attention_heads") => Some(8),
        ("gemma3", "num_key_value_heads") => Some(4),
        _ => None,
    }
}

impl BaseModel {
    /// Reads a base from a GGUF file or from a directory (or file) holding a Hugging Face `config.json`.
    pub fn load(path: &Path) -> Result<Self> {
        if path.is_dir() {
            let cfg = path.join("config.json");
            if cfg.is_file() {
                return Self::from_hf_config(&cfg);
            }
            return Err(Error::invalid(path, "directory has no config.json")
                .with_hint("pass a base model GGUF file, or a Hugging Face model directory that holds config.json"));
        }
        if path.file_name().is_some_and(|n| n == "config.json") {
            return Self::from_hf_config(path);
        }
        Self::from_gguf(path)
    }

    pub fn arch_spec(&self) -> Option<&'static Arch> {
        arch::by_name(&self.arch)
    }

    pub fn from_gguf(path: &Path) -> Result<Self> {
        let header = gguf::read_header(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof => Error::invalid(path, e.to_string())
                .with_hint("--base takes a base model GGUF file or a Hugging Face model directory with config.json"),
            _ => Error::io(path, e),
        })?;
        let arch = header
            .get_str("general.architecture")
            .ok_or_else(|| Error::invalid(path, "GGUF has no general.architecture"))?
            .to_string();
        if header.get_str("general.type") == Some("adapter") {
            return Err(Error::invalid(path, "this GGUF is a LoRA adapter, not a base model")
                .with_hint("pass the model the adapter was trained for as --base"));
        }
        let get_u64 = |key: &str| header.get(&format!("{arch}.{key}")).and_then(gguf::Value::as_u64);
        // Head counts may be per-layer arrays (llama.cpp reads either); one value is all we can use.
        let heads = |key: &str| -> Result<Option<u64>> {
            let full = format!("{arch}.{key}");
            let Some(v) = header.get(&full) else { return Ok(None) };
            let mut values: Vec<Option<u64>> = match v {
                gguf::Value::Array(_, items) => items.iter().map(gguf::Value::as_u64).collect(),
                single => vec![single.as_u64()],
            };
            values.dedup();
            match values[..] {
                [Some(n)] => Ok(Some(n)),
                _ => Err(Error::invalid(path, format!("GGUF metadata `{full}` is not one head count for all layers ({v:?})"))
                    .with_hint("models with per-layer head counts are not supported")),
            }
        };
        let block_count = get_u64("block_count")
            .ok_or_else(|| Error::invalid(path, format!("GGUF metadata `{arch}.block_count` is missing or not an integer")))?;
        let head_count = heads("attention.head_count")?
            .ok_or_else(|| Error::invalid(path, format!("GGUF metadata `{arch}.attention.head_count` is missing")))?;
        let head_count_kv = heads("attention.head_count_kv")?.unwrap_or(head_count);
        let tensors: BTreeMap<_, _> =
            header.tensors.iter().map(|t| (t.name.clone(), BaseTensor { ne: t.ne.clone(), ty: Some(t.ty) })).collect();
        let vocab_size = get_u64("vocab_size")
            .or_else(|| header.get("tokenizer.ggml.tokens").and_then(gguf::Value::array_len).map(|n| n as u64))
            .or_else(|| tensors.get("token_embd.weight").and_then(|t| t.ne.get(1).copied()));
        Ok(BaseModel {
            source: path.to_path_buf(),
            name: header.get_str("general.name").map(str::to_string),
            arch,
            block_count,
            head_count,
            head_count_kv,
            vocab_size,
            tensors,
            gguf_path: Some(path.to_path_buf()),
        })
    }

    pub fn from_hf_config(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let root: Json = serde_json::from_str(&text)
            .map_err(|e| Error::invalid(path, format!("not valid JSON: {e}")))?;
        // Multimodal wrappers (Gemma 3) keep the decoder's hyper-parameters in `text_config`.
        let cfg = root.get("text_config").filter(|v| v.is_object()).unwrap_or(&root);
        let model_type = cfg
            .get("model_type")
            .or_else(|| root.get("model_type"))
            .and_then(Json::as_str)
            .ok_or_else(|| Error::invalid(path, "config.json has no `model_type`"))?;
        let arch = arch::by_hf_model_type(model_type).ok_or_else(|| {
            Error::refused(
                path,
                format!("model_type `{model_type}` is not an architecture ollama-tools supports"),
                format!("supported: {}", arch::supported_list()),
            )
        })?;
        // A field the config leaves out takes its transformers config-class default where that
        // default is a number (Gemma 3's text_config omits several); bounds keep a damaged config
        // from asking for absurd tables.
        let get = |key: &str, max: u64| -> Result<Option<u64>> {
            match cfg.get(key).filter(|v| !v.is_null()) {
                None => Ok(hf_default(arch.name, key)),
                Some(v) => match v.as_u64() {
                    Some(n) if (1..=max).contains(&n) => Ok(Some(n)),
                    _ => Err(Error::invalid(path, format!("config.json field `{key}` must be an integer from 1 to {max}, found {v}"))),
                },
            }
        };
        let need = |key: &str, max: u64| {
            get(key, max)?.ok_or_else(|| Error::invalid(path, format!("config.json field `{key}` is missing")))
        };
        const DIM: u64 = 1 << 20;
        let hidden = need("hidden_size", DIM)?;
        let n_layer = need("num_hidden_layers", 4096)?;
        let n_head = need("num_attention_heads", 4096)?;
        let n_kv = get("num_key_value_heads", 4096)?.unwrap_or(n_head);
        let head_dim = get("head_dim", DIM)?.unwrap_or(hidden / n_head);
        let ffn = need("intermediate_size", DIM)?;
        let vocab = need("vocab_size", 1 << 24)?;
        let tied_default = arch.name.starts_with("gemma");
        let tied = cfg
            .get("tie_word_embeddings")
            .or_else(|| root.get("tie_word_embeddings"))
            .and_then(Json::as_bool)
            .unwrap_or(tied_default);

        let (q, kv) = (n_head * head_dim, n_kv * head_dim);
        let mut tensors = BTreeMap::new();
        let mut add = |name: String, ne: [u64; 2]| {
            tensors.insert(name, BaseTensor { ne: ne.to_vec(), ty: None });
        };
        add("token_embd.weight".into(), [hidden, vocab]);
        if !tied {
            add("output.weight".into(), [hidden, vocab]);
        }
        for i in 0..n_layer {
            for (_, stem) in arch.layer_modules {
                let ne = match *stem {
                    "attn_q" => [hidden, q],
                    "attn_k" | "attn_v" => [hidden, kv],
                    "attn_qkv" => [hidden, q + 2 * kv],
                    "attn_output" => [q, hidden],
                    "ffn_gate" => [hidden, ffn],
                    "ffn_up" if arch.name == "phi3" => [hidden, 2 * ffn],
                    "ffn_up" => [hidden, ffn],
                    "ffn_down" => [ffn, hidden],
                    other => unreachable!("arch table stem {other} without a shape rule"),
                };
                add(format!("blk.{i}.{stem}.weight"), ne);
            }
        }
        Ok(BaseModel {
            source: path.to_path_buf(),
            arch: arch.name.to_string(),
            name: root.get("_name_or_path").and_then(Json::as_str).map(str::to_string),
            block_count: n_layer,
            head_count: n_head,
            head_count_kv: n_kv,
            vocab_size: Some(vocab),
            tensors,
            gguf_path: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_config_shapes_follow_llama_cpp_layout() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.json");
        // Llama-3.2-1B's published hyper-parameters.
        std::fs::write(
            &cfg,
            r#"{"model_type":"llama","hidden_size":2048,"num_hidden_layers":16,"num_attention_heads":32,
                "num_key_value_heads":8,"head_dim":64,"intermediate_size":8192,"vocab_size":128256,
                "tie_word_embeddings":true,"_name_or_path":"meta-llama/Llama-3.2-1B"}"#,
        )
        .unwrap();
        let base = BaseModel::load(dir.path()).unwrap();
        assert_eq!(base.arch, "llama");
        assert_eq!(base.block_count, 16);
        assert_eq!(base.tensors["blk.15.attn_k.weight"].ne, vec![2048, 512]);
        assert_eq!(base.tensors["blk.0.ffn_down.weight"].ne, vec![8192, 2048]);
        assert!(!base.tensors.contains_key("output.weight"), "tied embeddings have no output tensor");
        assert!(!base.tensors.contains_key("blk.16.attn_q.weight"));
    }

    #[test]
    fn gemma3_text_config_takes_transformers_defaults() {
        let dir = tempfile::tempdir().unwrap();
        // A multimodal Gemma 3 config whose text_config leaves out what Gemma3TextConfig defaults.
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"model_type":"gemma3","text_config":{"model_type":"gemma3_text","hidden_size":2560,
                "intermediate_size":10240,"num_hidden_layers":34}}"#,
        )
        .unwrap();
        let base = BaseModel::load(dir.path()).unwrap();
        assert_eq!((base.arch.as_str(), base.head_count, base.head_count_kv, base.vocab_size), ("gemma3", 8, 4, Some(262_208)));
        assert_eq!(base.tensors["blk.0.attn_q.weight"].ne, vec![2560, 8 * 256]);
        assert!(!base.tensors.contains_key("output.weight"), "Gemma ties embeddings by default");
    }

    #[test]
    fn absurd_hf_configs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"model_type":"llama","hidden_size":64,"num_hidden_layers":1000000000000,"num_attention_heads":4,
                "intermediate_size":128,"vocab_size":100}"#,
        )
        .unwrap();
        let err = BaseModel::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("num_hidden_layers") && err.contains("from 1 to 4096"), "{err}");
    }

    #[test]
    fn per_layer_head_counts_in_gguf() {
        use crate::gguf::{TensorSpec, Value, Writer};
        let write = |kv: Value| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("b.gguf");
            let kvs = vec![
                ("general.architecture".to_string(), Value::String("llama".into())),
                ("llama.block_count".to_string(), Value::U32(2)),
                ("llama.attention.head_count".to_string(), Value::U32(4)),
                ("llama.attention.head_count_kv".to_string(), kv),
            ];
            let specs = [TensorSpec { name: "token_embd.weight".into(), ne: vec![8, 4], ty: GgmlType::F32 }];
            let mut w = Writer::new(std::fs::File::create(&path).unwrap(), &kvs, &specs).unwrap();
            w.write_tensor(&[0u8; 128]).unwrap();
            w.finish().unwrap();
            (dir, BaseModel::load(&path))
        };
        let (_d, same) = write(Value::Array(4, vec![Value::U32(2), Value::U32(2)]));
        assert_eq!(same.unwrap().head_count_kv, 2);
        let (_d, differ) = write(Value::Array(4, vec![Value::U32(2), Value::U32(1)]));
        let err = differ.unwrap_err().to_string();
        assert!(err.contains("head_count_kv") && err.contains("not one head count"), "{err}");
    }

    #[test]
    fn unsupported_model_type_lists_the_supported_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), r#"{"model_type":"gpt2","n_embd":768}"#).unwrap();
        let err = BaseModel::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("`gpt2`") && err.contains("qwen2 (Qwen2, Qwen2.5)"), "{err}");
    }
}
