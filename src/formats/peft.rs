//! Hugging Face PEFT LoRA adapters on disk: `adapter_config.json` + `adapter_model.safetensors`.
//!
//! [`Adapter::open`] reads the config and the safetensors header (the weights are read later, one
//! tensor at a time, into the caller's buffers); [`Adapter::analyze`] pairs lora_A/lora_B tensors into modules with
//! PEFT's own scale rules, and lists everything a GGUF LoRA adapter cannot carry, each with the reason
//! and what to do. Nothing here knows about GGUF or architectures beyond where a module sits.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use serde::Serialize;
use serde_json::Value as Json;

use crate::engine::arch::{self, Site};
use crate::error::{Error, Result};

/// The name of the config PEFT's `save_pretrained` writes into an adapter folder.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The largest rank (and layer number) a config may give: real ranks are at most a few thousand.
const MAX_RANK: u64 = 1 << 16;
const MAX_LAYER: u64 = 1 << 16;
/// The name of the weights file in an adapter folder: the only weights format read (a pickled
/// `adapter_model.bin` is refused, with how to re-save it).
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
const PICKLE_FILE: &str = "adapter_model.bin";

/// How to turn a pickled adapter into safetensors, for the refusal message.
const PICKLE_HINT: &str = "ollama-tools reads only safetensors (a pickle can run code when loaded and needs PyTorch). \
Re-save it next to the .bin with: python -c \"import torch, safetensors.torch as st; \
st.save_file({k: v.contiguous() for k, v in torch.load('adapter_model.bin', map_location='cpu', weights_only=True).items()}, \
'adapter_model.safetensors', metadata={'format': 'pt'})\"";

/// The fields of `adapter_config.json` that decide what the adapter does. Unknown fields are ignored:
/// PEFT adds new ones every release.
#[derive(Clone, Debug, Default)]
pub struct LoraConfig {
    /// The adapter kind (`LORA`); only LoRA has a GGUF form, [`Adapter::analyze`] refuses the others.
    pub peft_type: Option<String>,
    pub(crate) task_type: Option<String>,
    /// The model it was trained on, as PEFT wrote it: a Hub id or a local path.
    pub base_model_name_or_path: Option<String>,
    pub(crate) revision: Option<String>,
    pub(crate) peft_version: Option<String>,
    /// The rank of modules `rank_pattern` does not match; 1 to 65536.
    pub r: Option<u64>,
    pub(crate) lora_alpha: Option<f64>,
    pub(crate) use_rslora: bool,
    /// DoRA: a magnitude vector rescales each adapted weight. A merge applies it; llama.cpp's LoRA
    /// cannot, so it rules out a GGUF adapter.
    pub use_dora: bool,
    pub(crate) fan_in_fan_out: bool,
    /// Pattern -> rank (PEFT takes the first pattern, in file order, that matches).
    pub(crate) rank_pattern: Patterns<u64>,
    /// Pattern -> alpha.
    pub(crate) alpha_pattern: Patterns<f64>,
    /// As written: a list of names, a regex string, or absent.
    pub(crate) target_modules: Option<Json>,
    /// Modules trained in full and saved whole beside the pairs (a classifier head, or the embeddings
    /// of a resized vocabulary).
    pub modules_to_save: Vec<String>,
    pub(crate) layers_to_transform: Option<Vec<u64>>,
    /// PEFT `target_parameters`: raw parameters wrapped with LoRA (fused MoE experts, routers).
    pub(crate) target_parameters: Vec<String>,
    /// Activated LoRA (PEFT 0.18+): the token ids after which the adapter applies.
    pub alora_invocation_tokens: Vec<u32>,
    /// PEFT's trainable tokens: module name (`embed_tokens` for the list form) -> vocabulary rows.
    pub trainable_token_indices: Vec<(String, Vec<u32>)>,
    /// PEFT's `bias` setting, `none` when absent; as written, since trained biases are refused by
    /// their tensors whatever it says.
    pub bias: String,
    /// Fields set to a value that changes what the adapter computes in a way GGUF cannot carry.
    unsupported: Vec<Problem>,
}

/// Something that keeps an adapter from converting: what, why, and what the user can do.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Problem {
    /// The config field or tensor name concerned.
    pub subject: String,
    /// What is wrong, in one sentence.
    pub why: String,
    /// What the user can do about it.
    pub hint: String,
}

fn problem(subject: impl Into<String>, why: impl Into<String>, hint: impl Into<String>) -> Problem {
    Problem {
        subject: subject.into(),
        why: why.into(),
        hint: hint.into(),
    }
}

impl LoraConfig {
    /// Parses `adapter_config.json` text. Only malformed JSON or wrongly typed fields are errors here;
    /// features we cannot convert are collected for [`Adapter::analyze`] so `inspect` can show them all.
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let root = parse_json(path, text)?;
        let obj = root
            .as_object()
            .ok_or_else(|| Error::invalid(path, "expected a JSON object"))?;
        refuse_non_peft(path, obj)?;
        let f = Fields { path, obj };
        // Read in this order: the first wrongly typed field is the one reported.
        Ok(LoraConfig {
            peft_type: f.string("peft_type")?,
            task_type: f.string("task_type")?,
            base_model_name_or_path: f.string("base_model_name_or_path")?,
            revision: f.string("revision")?,
            peft_version: f.string("peft_version")?,
            r: f.present("r").map(|v| f.rank("r", v)).transpose()?,
            lora_alpha: f.present("lora_alpha").map(|v| f.number("lora_alpha", v)).transpose()?,
            use_rslora: f.flag("use_rslora")?,
            use_dora: f.flag("use_dora")?,
            fan_in_fan_out: f.flag("fan_in_fan_out")?,
            rank_pattern: Patterns::parse(path, "rank_pattern", f.map("rank_pattern")?, |k, v| f.rank(k, v))?,
            alpha_pattern: Patterns::parse(path, "alpha_pattern", f.map("alpha_pattern")?, |k, v| f.positive(k, v))?,
            target_modules: f.present("target_modules").cloned(),
            modules_to_save: f.names("modules_to_save", "a list of module names")?,
            layers_to_transform: f.layers()?,
            target_parameters: f.names("target_parameters", "a list of parameter names")?,
            bias: f.string("bias")?.unwrap_or_else(|| "none".into()),
            alora_invocation_tokens: f.invocation_tokens()?,
            trainable_token_indices: f.trainable_tokens()?,
            // Features that change what the adapter computes. Checked here, reported by analyze().
            unsupported: unsupported_features(obj),
        })
    }

    /// The configured rank of a module: its `rank_pattern` entry, else `r`.
    pub fn rank_for(&self, module_path: &str) -> Option<u64> {
        self.rank_pattern.lookup(module_path).or(self.r)
    }

    /// The alpha of a module: its `alpha_pattern` entry, else `lora_alpha`.
    pub fn alpha_for(&self, module_path: &str) -> Option<f64> {
        self.alpha_pattern.lookup(module_path).or(self.lora_alpha)
    }

    /// PEFT's scaling for a module: `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub fn scale(&self, rank: u64, alpha: f64) -> f64 {
        if self.use_rslora {
            alpha / (rank as f64).sqrt()
        } else {
            alpha / rank as f64
        }
    }
}

/// `text` as JSON, or the error saying why not (naming a Git LFS pointer as such).
fn parse_json(path: &Path, text: &str) -> Result<Json> {
    serde_json::from_str(text).map_err(|e| {
        let mut err = Error::invalid(path, format!("not valid JSON: {e}"));
        if text.starts_with("version https://git-lfs") {
            err = Error::invalid(path, "this is a Git LFS pointer, not the file itself")
                .with_hint("run `git lfs pull` in the repository, or download the file from the Hub");
        }
        err
    })
}

/// Refuses a config without `peft_type`, saying what it is instead where that shows (MLX-LM,
/// transformers).
fn refuse_non_peft(path: &Path, obj: &serde_json::Map<String, Json>) -> Result<()> {
    if obj.get("peft_type").is_some() {
        return Ok(());
    }
    let why = if obj.contains_key("lora_parameters") || obj.contains_key("fine_tune_type") {
        "this is an MLX-LM adapter config, not a PEFT one"
    } else if obj.contains_key("model_type") || obj.contains_key("architectures") {
        "this is a transformers model config.json, not a PEFT adapter config"
    } else {
        "no `peft_type`: not a PEFT adapter config"
    };
    Err(Error::invalid(path, why).with_hint(
        "point ollama-tools at the folder PEFT's save_pretrained() wrote (adapter_config.json + adapter_model.safetensors)",
    ))
}

/// The problems of config fields set to a value GGUF cannot carry (layer replication, Arrow
/// routing, initialisations that change the base); empty when there are none.
fn unsupported_features(obj: &serde_json::Map<String, Json>) -> Vec<Problem> {
    let mut unsupported = Vec::new();
    let set = |key: &str| {
        obj.get(key).is_some_and(|v| {
            !v.is_null() && v != &Json::Bool(false) && v != &serde_json::json!([]) && v != &serde_json::json!({})
        })
    };
    for (key, why) in [
        (
            "layer_replication",
            "layer_replication changes the model's layer stack, which llama.cpp cannot reproduce",
        ),
        (
            "arrow_config",
            "Arrow routing mixes several LoRAs per token; GGUF LoRA is one static adapter",
        ),
    ] {
        if set(key) {
            unsupported.push(problem(
                key,
                why,
                "merge it with PEFT (merge_and_unload) and convert the merged model instead",
            ));
        }
    }
    if let Some(Json::String(init)) = obj.get("init_lora_weights") {
        let lower = init.to_ascii_lowercase();
        if ["pissa", "olora", "corda", "loftq"]
            .iter()
            .any(|m| lower.starts_with(m))
        {
            unsupported.push(problem(
                "init_lora_weights",
                format!("`{init}` initialisation changes the base weights, so this adapter only fits that modified base"),
                "re-save with PEFT's save_pretrained(..., path_initial_model_for_weight_conversion=...) to get a plain LoRA",
            ));
        }
    }
    unsupported
}

/// The fields of an `adapter_config.json` object, read strictly: each reader refuses a wrong type
/// or an out-of-range number, naming the field. Absent and `null` fields read as their default.
struct Fields<'a> {
    path: &'a Path,
    obj: &'a serde_json::Map<String, Json>,
}

impl<'a> Fields<'a> {
    /// The error for field `key` holding `got` where `want` belongs.
    fn wrong(&self, key: &str, want: &str, got: &Json) -> Error {
        Error::invalid(self.path, format!("field `{key}` must be {want}, found {got}"))
    }

    /// Field `key`, `None` when absent or null.
    fn present(&self, key: &str) -> Option<&'a Json> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    /// A string field; `None` when absent.
    fn string(&self, key: &str) -> Result<Option<String>> {
        match self.present(key) {
            None => Ok(None),
            Some(Json::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.wrong(key, "a string", v)),
        }
    }

    /// A true/false field; false when absent.
    fn flag(&self, key: &str) -> Result<bool> {
        match self.present(key) {
            None => Ok(false),
            Some(Json::Bool(b)) => Ok(*b),
            Some(v) => Err(self.wrong(key, "true or false", v)),
        }
    }

    /// `v` as a whole number within `min..=max`, or the error naming `key` and `what` it must be.
    fn int_in(&self, key: &str, v: &Json, (min, max): (u64, u64), what: &str) -> Result<u64> {
        // PEFT writes ints, but hand-written configs carry `16.0`: whole floats are accepted, and only
        // within range, so `1e300` is not read as u64::MAX.
        let n = v.as_u64().or_else(|| {
            v.as_f64()
                .filter(|f| f.fract() == 0.0 && (0.0..=max as f64).contains(f))
                .map(|f| f as u64)
        });
        n.filter(|n| (min..=max).contains(n))
            .ok_or_else(|| self.wrong(key, &format!("{what} from {min} to {max}"), v))
    }

    /// `v` as a rank: a whole number from 1 to [`MAX_RANK`].
    fn rank(&self, key: &str, v: &Json) -> Result<u64> {
        self.int_in(key, v, (1, MAX_RANK), "a positive rank, a whole number")
    }

    /// `v` as a number.
    fn number(&self, key: &str, v: &Json) -> Result<f64> {
        v.as_f64().ok_or_else(|| self.wrong(key, "a number", v))
    }

    /// `v` as a positive, finite number (an alpha).
    fn positive(&self, key: &str, v: &Json) -> Result<f64> {
        self.number(key, v).and_then(|a| {
            if a > 0.0 && a.is_finite() {
                Ok(a)
            } else {
                Err(self.wrong(key, "a positive number", v))
            }
        })
    }

    /// An object field's entries in file order; empty when absent.
    fn map(&self, key: &str) -> Result<Vec<(String, Json)>> {
        match self.present(key) {
            None => Ok(vec![]),
            Some(Json::Object(m)) => Ok(m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
            Some(v) => Err(self.wrong(key, "an object", v)),
        }
    }

    /// A list of names (entries that are not strings are skipped); empty when absent, refused as
    /// not `want` when not a list.
    fn names(&self, key: &str, want: &str) -> Result<Vec<String>> {
        match self.present(key) {
            None => Ok(vec![]),
            Some(Json::Array(items)) => Ok(items.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()),
            Some(v) => Err(self.wrong(key, want, v)),
        }
    }

    /// `layers_to_transform`: a list of layer numbers or a single one; `None` when absent.
    fn layers(&self) -> Result<Option<Vec<u64>>> {
        let key = "layers_to_transform";
        let layer = |v: &Json| self.int_in(key, v, (0, MAX_LAYER), "a layer number");
        Ok(match self.present(key) {
            None => None,
            Some(Json::Array(items)) => Some(items.iter().map(layer).collect::<Result<_>>()?),
            Some(v) => Some(vec![layer(v)?]),
        })
    }

    /// `v` as a list of token ids (each within u32), for field `key`.
    fn token_list(&self, key: &str, v: &Json) -> Result<Vec<u32>> {
        let items = v.as_array().ok_or_else(|| self.wrong(key, "a list of token ids", v))?;
        items
            .iter()
            .map(|v| {
                self.int_in(key, v, (0, u64::from(u32::MAX)), "a token id")
                    .map(|n| n as u32)
            })
            .collect()
    }

    /// `alora_invocation_tokens`; empty when absent.
    fn invocation_tokens(&self) -> Result<Vec<u32>> {
        let key = "alora_invocation_tokens";
        self.present(key).map_or(Ok(vec![]), |v| self.token_list(key, v))
    }

    /// `trainable_token_indices`: a list of ids (for `embed_tokens`) or an object of module name ->
    /// ids; empty when absent.
    fn trainable_tokens(&self) -> Result<Vec<(String, Vec<u32>)>> {
        let key = "trainable_token_indices";
        match self.present(key) {
            None => Ok(vec![]),
            Some(v @ Json::Array(_)) => Ok(vec![("embed_tokens".to_string(), self.token_list(key, v)?)]),
            Some(Json::Object(m)) => m
                .iter()
                .map(|(k, v)| Ok((k.clone(), self.token_list(key, v)?)))
                .collect(),
            Some(v) => Err(self.wrong(key, "a list of token ids or an object of them", v)),
        }
    }
}

/// `rank_pattern` / `alpha_pattern`: module-name patterns with their values, in file order,
/// compiled once.
#[derive(Clone, Debug, Default)]
pub(crate) struct Patterns<T> {
    entries: Vec<(String, regex::Regex, T)>,
}

impl<T: Copy> Patterns<T> {
    fn parse(
        path: &Path,
        field: &str,
        items: Vec<(String, Json)>,
        value: impl Fn(&str, &Json) -> Result<T>,
    ) -> Result<Self> {
        let mut entries = Vec::with_capacity(items.len());
        for (pattern, v) in items {
            // PEFT's rule (`get_pattern_key`): `re.match(rf"(.*\.)?({key})$", module_name)`, i.e. the
            // pattern matches the end of the module name at a dot boundary.
            let re = regex::Regex::new(&format!(r"^(?:.*\.)?(?:{pattern})$")).map_err(|e| {
                Error::invalid(
                    path,
                    format!("{field} pattern `{pattern}` is not a valid regular expression: {e}"),
                )
            })?;
            let v = value(&format!("{field}.{pattern}"), &v)?;
            entries.push((pattern, re, v));
        }
        Ok(Patterns { entries })
    }

    /// The value of the first pattern, in file order, that matches `module_path`.
    pub(crate) fn lookup(&self, module_path: &str) -> Option<T> {
        self.entries
            .iter()
            .find(|(_, re, _)| re.is_match(module_path))
            .map(|(_, _, v)| *v)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, T)> {
        self.entries.iter().map(|(p, _, v)| (p.as_str(), *v))
    }
}

/// As a JSON object in file order (the order decides which pattern applies).
impl<T: Copy + Serialize> Serialize for Patterns<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

/// One tensor of the safetensors file.
#[derive(Clone, Debug)]
pub struct RawTensor {
    /// The safetensors key, as PEFT wrote it (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`).
    pub key: String,
    pub(crate) dtype: Dtype,
    pub(crate) shape: Vec<usize>,
    /// Byte range inside the memory map.
    range: (usize, usize),
}

impl RawTensor {
    pub(crate) fn len(&self) -> usize {
        self.shape.iter().product()
    }
    /// Whether a dimension is 0.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub(crate) fn byte_len(&self) -> usize {
        self.range.1 - self.range.0
    }
}

/// `ORG/NAME` when `path` lies in a Hugging Face cache (`.../models--ORG--NAME/snapshots/<sha>/...`).
pub fn hub_cache_repo(path: &str) -> Option<String> {
    let seg = path.split(['/', '\\']).find_map(|s| s.strip_prefix("models--"))?;
    let (org, name) = seg.split_once("--")?;
    (!org.is_empty() && !name.is_empty()).then(|| format!("{org}/{name}"))
}

/// The Hub repo id in a `base_model_name_or_path`: `ORG/NAME` as written, or recovered from a local
/// Hugging Face cache path. `None` for other local paths and for bare names.
pub fn hub_repo_id(base: &str) -> Option<String> {
    if let Some(id) = hub_cache_repo(base) {
        return Some(id);
    }
    let (org, name) = base.split_once('/')?;
    let ok = |s: &str| {
        !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) && !s.starts_with('.')
    };
    (ok(org) && ok(name)).then(|| base.to_string())
}

/// An opened PEFT adapter: parsed config, safetensors header, and the open weights file.
pub struct Adapter {
    /// What the user passed, for messages.
    pub(crate) path: PathBuf,
    pub(crate) config_path: PathBuf,
    pub(crate) weights_path: PathBuf,
    pub(crate) config: LoraConfig,
    pub(crate) file_size: u64,
    /// The safetensors header's `__metadata__` (PEFT writes `format: pt`), when present.
    pub metadata: Option<HashMap<String, String>>,
    /// In file order.
    pub tensors: Vec<RawTensor>,
    /// Tensors are read with positioned reads into the caller's buffers, not through a map: resident
    /// memory then stays at the buffers whatever the file's size.
    file: File,
}

impl std::fmt::Debug for Adapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adapter")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// Finds `adapter_config.json` and `adapter_model.safetensors` from a folder or either file.
fn locate(path: &Path) -> Result<(PathBuf, PathBuf)> {
    let not_found = |p: &Path, what: &str| {
        Error::invalid(p, format!("{what} not found"))
            .with_hint(
                "pass the adapter folder PEFT's save_pretrained() wrote, holding adapter_config.json and adapter_model.safetensors",
            )
            .with_kind(crate::ErrorKind::NotFound)
    };
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let dir = if path.is_dir() {
        path.to_path_buf()
    } else if path.is_file() {
        match ext {
            "bin" | "pt" | "pth" => {
                return Err(Error::refused(
                    path,
                    "this is a pickled PyTorch adapter, not safetensors",
                    PICKLE_HINT,
                ));
            }
            "gguf" => {
                return Err(Error::invalid(path, "this is already a GGUF file").with_hint(
                    "convert takes a PEFT adapter folder; a GGUF adapter can be used by llama.cpp/Ollama as it is",
                ));
            }
            "json" => {
                let weights = path.with_file_name(WEIGHTS_FILE);
                return Ok((path.to_path_buf(), weights));
            }
            _ => {
                let config = path.with_file_name(CONFIG_FILE);
                if !config.is_file() {
                    return Err(not_found(&config, CONFIG_FILE));
                }
                return Ok((config, path.to_path_buf()));
            }
        }
    } else {
        // The real reason (no such file, a symlink loop, no permission), not a bare "not found".
        let err = std::fs::metadata(path)
            .err()
            .unwrap_or_else(|| std::io::Error::other("neither a file nor a folder"));
        return Err(Error::io(path, err).with_hint(
            "pass the adapter folder PEFT's save_pretrained() wrote, holding adapter_config.json and adapter_model.safetensors",
        ));
    };
    let config = dir.join(CONFIG_FILE);
    let weights = dir.join(WEIGHTS_FILE);
    if !config.is_file() {
        return Err(not_found(&config, CONFIG_FILE));
    }
    Ok((config, weights))
}

/// Positioned read of exactly `buf.len()` bytes (no shared file cursor, so threads can share the file).
#[cfg(unix)]
pub(crate) fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
pub(crate) fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

fn safetensors_error(path: &Path, e: safetensors::SafeTensorError, file_size: u64) -> Error {
    use safetensors::SafeTensorError as E;
    let msg = match &e {
        E::HeaderTooSmall if file_size == 0 => "the file is empty".to_string(),
        E::MetadataIncompleteBuffer | E::InvalidHeaderLength | E::HeaderTooSmall => {
            format!("not a complete safetensors file ({e}; {file_size} bytes on disk)")
        }
        _ => format!("not a valid safetensors file: {e}"),
    };
    Error::invalid(path, msg).with_hint("the download may be incomplete or the file damaged: fetch it again")
}

impl Adapter {
    /// Opens an adapter from its folder, its `adapter_config.json`, or its `.safetensors` file.
    pub fn open(path: &Path) -> Result<Self> {
        let (config_path, weights_path) = locate(path)?;
        let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let config = LoraConfig::parse(&config_path, &text)?;
        if !weights_path.is_file() {
            let pickle = weights_path.with_file_name(PICKLE_FILE);
            if pickle.is_file() {
                return Err(Error::refused(
                    &pickle,
                    "the adapter weights are a pickled PyTorch file, not safetensors",
                    PICKLE_HINT,
                ));
            }
            return Err(Error::invalid(&weights_path, "adapter weights not found")
                .with_hint("the folder needs adapter_model.safetensors next to adapter_config.json")
                .with_kind(crate::ErrorKind::NotFound));
        }
        let file = File::open(&weights_path).map_err(|e| Error::io(&weights_path, e))?;
        let file_size = file.metadata().map_err(|e| Error::io(&weights_path, e))?.len();
        let mut head = [0u8; 24];
        let n = std::io::Read::read(&mut &file, &mut head).unwrap_or(0);
        if head[..n].starts_with(b"version https://git-lfs") {
            return Err(
                Error::invalid(&weights_path, "this is a Git LFS pointer, not the weights")
                    .with_hint("run `git lfs pull` in the repository, or download the file from the Hub"),
            );
        }
        // The safetensors crate validates a header against the whole file, so it gets a map of the
        // file; only the header's pages are touched, and the map is gone before any tensor is read.
        // SAFETY: read-only map, dropped at the end of this statement; a concurrent truncation could
        // only fault on header pages being parsed.
        let (header_len, meta) = {
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&weights_path, e))?;
            SafeTensors::read_metadata(&mmap).map_err(|e| safetensors_error(&weights_path, e, file_size))?
        };
        let data_start = 8 + header_len;
        let mut tensors: Vec<RawTensor> = meta
            .tensors()
            .into_iter()
            .map(|(key, info)| RawTensor {
                key,
                dtype: info.dtype,
                shape: info.shape.clone(),
                range: (data_start + info.data_offsets.0, data_start + info.data_offsets.1),
            })
            .collect();
        tensors.sort_by_key(|t| t.range.0);
        Ok(Adapter {
            path: path.to_path_buf(),
            config_path,
            weights_path,
            config,
            file_size,
            metadata: meta.metadata().clone(),
            tensors,
            file,
        })
    }

    /// Reads the raw little-endian bytes of a tensor into `buf` (resized to fit).
    pub fn read_raw(&self, t: &RawTensor, buf: &mut Vec<u8>) -> Result<()> {
        self.sized(t, buf, t.byte_len(), 0)?;
        self.read_into(t, buf)
    }

    /// Makes `buf` `n` elements long; running out of memory is an error naming the tensor, not an
    /// abort (a tensor's size is checked against the file, which may be large or sparse).
    fn sized<T: Clone>(&self, t: &RawTensor, buf: &mut Vec<T>, n: usize, fill: T) -> Result<()> {
        buf.clear();
        buf.try_reserve_exact(n).map_err(|_| {
            let bytes = n.saturating_mul(std::mem::size_of::<T>());
            Error::invalid(
                &self.weights_path,
                format!(
                    "tensor `{}` needs {bytes} bytes of memory, which are not available",
                    t.key
                ),
            )
        })?;
        buf.resize(n, fill);
        Ok(())
    }

    fn read_into(&self, t: &RawTensor, buf: &mut [u8]) -> Result<()> {
        debug_assert_eq!(buf.len(), t.byte_len());
        self.read_at(t, buf, 0)
    }

    /// Reads `buf.len()` bytes of tensor `t` from byte `at` within it.
    fn read_at(&self, t: &RawTensor, buf: &mut [u8], at: usize) -> Result<()> {
        read_exact_at(&self.file, buf, (t.range.0 + at) as u64).map_err(|e| {
            Error::io(
                &self.weights_path,
                std::io::Error::new(e.kind(), format!("reading tensor `{}`: {e}", t.key)),
            )
        })
    }

    /// Reads a tensor as f32 into `out`; `halves` is the read buffer for 16-bit types. Reading into
    /// typed buffers keeps them aligned for `half`'s SIMD slice conversions.
    pub fn read_f32(&self, t: &RawTensor, halves: &mut Vec<u16>, out: &mut Vec<f32>) -> Result<()> {
        self.read_rows_f32(t, 0..t.shape.first().copied().unwrap_or(1), halves, out)
    }

    /// Reads rows `rows` (of the first dimension) of a tensor as f32 into `out`, so a full embedding
    /// copy streams in blocks like the base it replaces.
    pub(crate) fn read_rows_f32(
        &self,
        t: &RawTensor,
        rows: std::ops::Range<usize>,
        halves: &mut Vec<u16>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        use half::slice::HalfFloatSliceExt;
        if !matches!(t.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            let msg = format!(
                "tensor `{}` is {:?}, not a float type LoRA weights are stored in",
                t.key, t.dtype
            );
            return Err(Error::invalid(&self.weights_path, msg));
        }
        let row_len = t.shape.iter().skip(1).product::<usize>();
        let (n, first) = (rows.len() * row_len, rows.start * row_len);
        debug_assert!(rows.end * row_len <= t.len());
        self.sized(t, out, n, 0.0)?;
        if t.dtype == Dtype::F32 {
            return self.read_at(t, bytemuck::cast_slice_mut(out), first * 4);
        }
        self.sized(t, halves, n, 0)?;
        self.read_at(t, bytemuck::cast_slice_mut(halves), first * 2)?;
        if t.dtype == Dtype::F16 {
            bytemuck::cast_slice::<u16, half::f16>(halves).convert_to_f32_slice(out);
        } else {
            bytemuck::cast_slice::<u16, half::bf16>(halves).convert_to_f32_slice(out);
        }
        Ok(())
    }

    /// Pairs lora_A/lora_B tensors into modules with their PEFT scale, and lists every problem.
    pub fn analyze(&self) -> Analysis {
        analyze(self)
    }
}

/// Which half of a LoRA pair a tensor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Half {
    A,
    B,
}

/// What a safetensors key holds.
#[derive(Debug, PartialEq)]
enum KeyKind {
    Lora {
        module: String,
        half: Half,
        embedding: bool,
        adapter_name: Option<String>,
    },
    LoraBias,
    /// A DoRA magnitude vector of `module`.
    Dora {
        module: String,
    },
    /// A full tensor (modules_to_save copy, a bias, a classifier head...).
    Full,
}

/// Parses a PEFT state-dict key, e.g.
/// `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` or `...lora_embedding_B.default`.
fn parse_key(key: &str) -> KeyKind {
    let key = key.strip_prefix("base_model.model.").unwrap_or(key);
    let parts: Vec<&str> = key.split('.').collect();
    let Some(i) = parts.iter().position(|p| {
        matches!(
            *p,
            "lora_A" | "lora_B" | "lora_embedding_A" | "lora_embedding_B" | "lora_magnitude_vector"
        )
    }) else {
        return KeyKind::Full;
    };
    let module = parts[..i].join(".");
    if parts[i] == "lora_magnitude_vector" {
        return KeyKind::Dora { module };
    }
    let embedding = parts[i].starts_with("lora_embedding");
    let half = if parts[i].ends_with('A') { Half::A } else { Half::B };
    match &parts[i + 1..] {
        [.., "bias"] => KeyKind::LoraBias,
        [] | ["weight"] => KeyKind::Lora {
            module,
            half,
            embedding,
            adapter_name: None,
        },
        [name] | [name, "weight"] => KeyKind::Lora {
            module,
            half,
            embedding,
            adapter_name: Some(name.to_string()),
        },
        _ => KeyKind::Full,
    }
}

/// A complete LoRA pair with PEFT's scale.
#[derive(Clone, Debug)]
pub struct LoraModule {
    /// Module name in the HF model, e.g. `model.layers.0.self_attn.q_proj`.
    pub(crate) path: String,
    pub(crate) site: Site,
    /// Embedding LoRA (`lora_embedding_A/B`): A is `[r, vocab]`, B `[hidden, r]`.
    pub(crate) embedding: bool,
    /// Indices into [`Adapter::tensors`].
    pub(crate) a: usize,
    pub(crate) b: usize,
    pub(crate) rank: u64,
    /// Input width of the adapted weight (vocab size for an embedding).
    pub in_features: u64,
    /// Output height of the adapted weight (hidden size for an embedding).
    pub out_features: u64,
    pub(crate) alpha: f64,
    /// `alpha / rank` or `alpha / sqrt(rank)`.
    pub(crate) scale: f64,
    /// Experts a fused 3-D parameter's pair covers (`target_parameters`): lora_A `[rank * experts,
    /// in]` holds expert e's rows at `e * rank`, lora_B `[out, rank * experts]` its columns at
    /// `e + k * experts` (PEFT's ParamWrapper). 1 for every other pair.
    pub(crate) experts: u64,
    /// DoRA: the index of its magnitude vector (`[out_features]`) in [`Adapter::tensors`].
    pub(crate) magnitude: Option<usize>,
}

/// Weights an adapter replaces instead of adding a low-rank delta: a full copy of the embeddings or
/// the output projection (`modules_to_save`, or saved because the vocabulary was resized), or some
/// of their rows (PEFT's trainable tokens, whose `trainable_tokens_delta` holds the new rows).
#[derive(Clone, Debug)]
pub(crate) struct Replacement {
    /// [`Site::Embedding`] or [`Site::Output`].
    pub(crate) site: Site,
    /// Index into [`Adapter::tensors`]: `[vocab, hidden]`, or `[rows.len(), hidden]`.
    pub(crate) tensor: usize,
    /// The vocabulary rows it replaces, in its own row order; `None`: all of them.
    pub(crate) rows: Option<Vec<u32>>,
}

/// The result of pairing and checking an adapter's tensors.
#[derive(Debug, Default)]
pub struct Analysis {
    /// Every complete LoRA pair that passed its checks, sorted by where it sits in the model.
    pub modules: Vec<LoraModule>,
    /// Everything that keeps the adapter from converting.
    pub(crate) problems: Vec<Problem>,
    /// What only a merge into the base can apply (DoRA): refusals in adapter mode.
    pub(crate) merge_only: Vec<Problem>,
    /// What only a GGUF adapter can carry (activated LoRA): refusals in merge mode.
    pub(crate) adapter_only: Vec<Problem>,
    /// Embedding and output weights the adapter replaces (merge only).
    pub(crate) replacements: Vec<Replacement>,
    /// Things done that the user should know about (tensors skipped per PEFT's own rules).
    pub(crate) notices: Vec<String>,
    /// Module paths of the LoRA pairs (also in `modules`) on a multimodal model's vision or audio
    /// tower: not part of the language model's GGUF, so whether they can be used depends on the
    /// base (see `validate`).
    pub(crate) towers: Vec<String>,
}

/// LoRA pairs by module path and whether they are embedding LoRA: the indices of lora_A and lora_B
/// in [`Adapter::tensors`], as found.
type Pairs = BTreeMap<(String, bool), [Option<usize>; 2]>;

/// A step of the analysis: its result, or the problem that keeps the tensor or pair from converting.
type Checked<T> = std::result::Result<T, Problem>;

/// [`Adapter::analyze`]: the config's own problems, then every tensor sorted and every pair checked,
/// problems grouped by reason (a non-LoRA adapter stops at its `peft_type`).
fn analyze(adapter: &Adapter) -> Analysis {
    let cfg = &adapter.config;
    let mut out = Analysis {
        problems: cfg.unsupported.clone(),
        ..Default::default()
    };
    if let Some(p) = not_lora(cfg) {
        out.problems.push(p);
        // Nothing else about a non-LoRA adapter matters to a LoRA conversion.
        return out;
    }
    check_lora_fields(cfg, &mut out);
    let (pairs, mut magnitudes) = sort_tensors(adapter, &mut out);
    for ((module, embedding), halves) in pairs {
        match lora_module(adapter, module, embedding, halves, &mut magnitudes, &mut out) {
            Ok(Some(m)) => out.modules.push(m),
            Ok(None) => {}
            Err(p) => out.problems.push(p),
        }
    }
    for (module, i) in magnitudes {
        out.problems.push(problem(
            &adapter.tensors[i].key,
            format!("a DoRA magnitude vector for `{module}`, which has no LoRA pair"),
            "the file is incomplete: save the adapter again",
        ));
    }
    if cfg.fan_in_fan_out && !out.modules.is_empty() {
        out.notices.push(
            "fan_in_fan_out is true, but it only concerns GPT-2 style Conv1D layers: PEFT ignores it on the Linear \
             layers of these models, and so does the conversion (lora_A/lora_B are stored [r, in] / [out, r] either way)"
                .into(),
        );
    }
    out.modules.sort_by(|a, b| a.site.cmp(&b.site));
    out.problems = group_problems(std::mem::take(&mut out.problems));
    out
}

/// The problem with an adapter whose `peft_type` is not `LORA` (only LoRA has a GGUF form); `None`
/// for a LoRA adapter.
fn not_lora(cfg: &LoraConfig) -> Option<Problem> {
    let other = match cfg.peft_type.as_deref() {
        Some("LORA") => return None,
        other => other,
    };
    Some(problem(
        "peft_type",
        format!(
            "peft_type is {}, and only LORA adapters have a GGUF form",
            other.map_or_else(|| "missing".to_string(), |t| format!("`{t}`"))
        ),
        match other {
            Some("PROMPT_TUNING" | "PREFIX_TUNING" | "P_TUNING" | "MULTITASK_PROMPT_TUNING" | "CPT") => {
                "soft prompts are extra inputs, not weight changes: llama.cpp and Ollama cannot apply them; retrain as LoRA"
            }
            None => {
                "this config does not say what kind of adapter it is; PEFT LoRA configs have \"peft_type\": \"LORA\""
            }
            _ => {
                "llama.cpp and Ollama apply LoRA adapters only; merge this adapter into the base with PEFT (merge_and_unload) and convert the merged model"
            }
        },
    ))
}

/// Records what a LoRA config's own fields rule out: a missing rank or alpha (problems), DoRA
/// (merge only), activated LoRA (adapter only).
fn check_lora_fields(cfg: &LoraConfig, out: &mut Analysis) {
    if cfg.r.is_none_or(|r| r == 0) {
        out.problems.push(problem(
            "r",
            "the rank `r` is missing or zero",
            "the config must say the rank PEFT trained with",
        ));
    }
    if !cfg.lora_alpha.is_some_and(|a| a > 0.0 && a.is_finite()) {
        out.problems.push(problem(
            "lora_alpha",
            format!(
                "lora_alpha must be a positive number, found {}",
                cfg.lora_alpha.map_or("none".into(), |a| a.to_string())
            ),
            "set lora_alpha to the value used in training (PEFT's default is 8)",
        ));
    }
    if cfg.use_dora {
        out.merge_only.push(problem(
            "use_dora",
            "DoRA rescales every output row of the merged weight by a learned magnitude over its norm, which \
             llama.cpp cannot apply at run time",
            "merge it into the base instead: `ollama-tools merge`, or `create-from-base` (auto mode merges)",
        ));
    }
    if !cfg.alora_invocation_tokens.is_empty() {
        out.adapter_only.push(problem(
            "alora_invocation_tokens",
            "activated LoRA applies only from its invocation tokens on, so it cannot be merged into the weights",
            "use it as a GGUF adapter (`ollama-tools convert`): llama.cpp's server activates it; Ollama 0.34.1 and \
             later cannot load adapters",
        ));
    }
}

/// The tensors sorted into LoRA pairs and DoRA magnitudes (module path -> index), replacements taken
/// by [`replacement`]; a problem recorded for any other tensor, several named adapters, or none.
fn sort_tensors(adapter: &Adapter, out: &mut Analysis) -> (Pairs, BTreeMap<String, usize>) {
    let cfg = &adapter.config;
    let merge_hint = "merge it with PEFT (merge_and_unload) and convert the merged model, or retrain without it";
    let mut pairs = Pairs::new();
    let mut magnitudes = BTreeMap::new();
    let mut adapter_names = std::collections::BTreeSet::new();
    for (i, t) in adapter.tensors.iter().enumerate() {
        match parse_key(&t.key) {
            KeyKind::Lora {
                module,
                half,
                embedding,
                adapter_name,
            } => {
                adapter_names.insert(adapter_name);
                if usable_lora_tensor(t, out) {
                    pairs.entry((module, embedding)).or_default()[half as usize] = Some(i);
                }
            }
            KeyKind::LoraBias => out.problems.push(problem(
                &t.key,
                "a LoRA bias (`lora_bias=True`) has no place in a GGUF LoRA adapter",
                merge_hint,
            )),
            KeyKind::Dora { module } if cfg.use_dora => {
                magnitudes.insert(module, i);
            }
            KeyKind::Dora { .. } => out.problems.push(problem(
                &t.key,
                "a DoRA magnitude vector, and adapter_config.json does not say `use_dora: true`",
                "the config and the weights disagree: save the adapter again with PEFT",
            )),
            KeyKind::Full if replacement(cfg, &t.key, i, out) => {}
            KeyKind::Full => out
                .problems
                .push(problem(&t.key, full_tensor_why(cfg, &t.key), merge_hint)),
        }
    }
    if adapter_names.len() > 1 {
        out.problems.push(problem(
            "tensors",
            format!(
                "the file holds several named adapters ({:?})",
                adapter_names.iter().flatten().collect::<Vec<_>>()
            ),
            "save each adapter on its own with PEFT's save_pretrained(selected_adapters=[...])",
        ));
    }
    if adapter.tensors.is_empty() {
        out.problems.push(problem(
            "adapter_model.safetensors",
            "the file holds no tensors",
            "the adapter was saved before training or saving failed: save it again with save_pretrained()",
        ));
    }
    (pairs, magnitudes)
}

/// Whether a lora_A/lora_B tensor is 2-D, so it can be paired; records the problem when it is not,
/// and when its dtype is not a float type.
fn usable_lora_tensor(t: &RawTensor, out: &mut Analysis) -> bool {
    if !matches!(t.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
        out.problems.push(problem(
            &t.key,
            format!("dtype {:?} is not a float type LoRA weights are stored in", t.dtype),
            "re-save the adapter in float32, float16 or bfloat16",
        ));
    }
    if t.shape.len() != 2 {
        out.problems.push(problem(
            &t.key,
            format!("expected a 2-D tensor, found shape {:?}", t.shape),
            "this is not a LoRA weight PEFT writes for linear or embedding layers",
        ));
        return false;
    }
    true
}

/// Why a full tensor (not a LoRA weight, nor a replacement) cannot go into a GGUF LoRA adapter.
fn full_tensor_why(cfg: &LoraConfig, key: &str) -> &'static str {
    let saved = cfg
        .modules_to_save
        .iter()
        .any(|m| key.contains(&format!(".{m}.")) || key.contains("modules_to_save"));
    if saved {
        "a full copy of a module (`modules_to_save`): a GGUF LoRA adapter can only add low-rank deltas, not replace weights"
    } else if key.ends_with("bias") {
        "a bias tensor (bias training): a GGUF LoRA adapter cannot carry biases"
    } else {
        "not a LoRA weight: a GGUF LoRA adapter can only carry lora_A/lora_B pairs"
    }
}

/// The module a pair adapts, with PEFT's scale and its DoRA magnitude (taken out of `magnitudes`);
/// `Ok(None)` outside layers_to_transform (noticed), the problem for a pair that cannot convert.
fn lora_module(
    adapter: &Adapter,
    module: String,
    embedding: bool,
    halves: [Option<usize>; 2],
    magnitudes: &mut BTreeMap<String, usize>,
    out: &mut Analysis,
) -> Checked<Option<LoraModule>> {
    let cfg = &adapter.config;
    let (a, b) = complete_pair(adapter, &module, halves)?;
    let (ta, tb) = (&adapter.tensors[a], &adapter.tensors[b]);
    let (rank, in_features, out_features) = pair_dims(ta, tb)?;
    let fused = fused_experts(&module, &cfg.target_parameters);
    let site = pair_site(&module, fused.as_ref(), &ta.key)?;
    if matches!(site, Site::Tower { .. }) {
        out.towers.push(module.clone());
    }
    if let Some(notice) = outside_layers(cfg, &module, &site) {
        out.notices.push(notice);
        return Ok(None);
    }
    let (module, rank, experts) = per_expert(cfg, fused, module, rank, &ta.key)?;
    check_configured_rank(cfg, &module, rank, &ta.key)?;
    let alpha = cfg.alpha_for(&module).unwrap_or(f64::NAN);
    let magnitude = magnitudes.remove(&module);
    if let Some(p) = dora_problem(adapter, &module, magnitude, out_features) {
        return Err(p);
    }
    Ok(Some(LoraModule {
        magnitude,
        scale: cfg.scale(rank, alpha),
        path: module,
        site,
        embedding,
        a,
        b,
        rank,
        in_features,
        out_features,
        alpha,
        experts,
    }))
}

/// The indices of lora_A and lora_B, or the problem naming the half that is missing.
fn complete_pair(adapter: &Adapter, module: &str, [a, b]: [Option<usize>; 2]) -> Checked<(usize, usize)> {
    match (a, b) {
        (Some(a), Some(b)) => Ok((a, b)),
        (Some(i), None) | (None, Some(i)) => {
            let (has, lacks) = if a.is_some() {
                ("lora_A", "lora_B")
            } else {
                ("lora_B", "lora_A")
            };
            Err(problem(
                &adapter.tensors[i].key,
                format!("{has} of `{module}` has no {lacks}"),
                "the file is incomplete: save the adapter again",
            ))
        }
        (None, None) => unreachable!(),
    }
}

/// (rank, in_features, out_features) of a pair of 2-D tensors; the problem when a dimension is 0
/// or lora_B's rank is not lora_A's.
fn pair_dims(ta: &RawTensor, tb: &RawTensor) -> Checked<(u64, u64, u64)> {
    let (rank, in_features, out_features) = (ta.shape[0] as u64, ta.shape[1] as u64, tb.shape[0] as u64);
    if rank == 0 || in_features == 0 || out_features == 0 {
        return Err(problem(
            &ta.key,
            format!("empty LoRA pair: lora_A {:?}, lora_B {:?}", ta.shape, tb.shape),
            "the file is damaged or was edited: save the adapter again",
        ));
    }
    if tb.shape[1] as u64 != rank {
        return Err(problem(
            &tb.key,
            format!(
                "rank mismatch: lora_A {:?} has rank {rank}, lora_B {:?} has rank {}",
                ta.shape, tb.shape, tb.shape[1]
            ),
            "the file is damaged or was edited: save the adapter again",
        ));
    }
    Ok((rank, in_features, out_features))
}

/// Where a pair's module sits (a fused-experts parameter's site, else the module's); the problem
/// for a module no supported architecture has.
fn pair_site(module: &str, fused: Option<&Fused>, key_a: &str) -> Checked<Site> {
    let site = match fused {
        Some(f) => Some(f.site.clone()),
        None => arch::site_of(module),
    };
    site.ok_or_else(|| {
        problem(
            key_a,
            "LoRA on a module that is not part of a supported decoder (layers.N.self_attn.*, layers.N.mlp.*, layers.N.linear_attn.*, embed_tokens, lm_head) nor a multimodal tower",
            format!("ollama-tools converts adapters for: {}", arch::supported_list()),
        )
    })
}

/// The notice for a module on a layer that `layers_to_transform` leaves out, which PEFT does not
/// apply either; `None` for a module to keep.
fn outside_layers(cfg: &LoraConfig, module: &str, site: &Site) -> Option<String> {
    let (Some(layers), Site::Layer { layer, .. }) = (&cfg.layers_to_transform, site) else {
        return None;
    };
    (!layers.contains(&u64::from(*layer))).then(|| {
        format!(
            "skipped `{module}`: layer {layer} is not in layers_to_transform {layers:?}, so PEFT does not apply it either"
        )
    })
}

/// (module path, rank per expert, experts): a fused parameter's pair stacks every expert's rank under
/// the parameter's path, or is refused when the configured rank does not divide it; others are one.
fn per_expert(
    cfg: &LoraConfig,
    fused: Option<Fused>,
    module: String,
    rank: u64,
    key_a: &str,
) -> Checked<(String, u64, u64)> {
    let Some(f) = fused else {
        return Ok((module, rank, 1));
    };
    match f.split(cfg, rank) {
        Ok((r, n)) => Ok((f.param_path, r, n)),
        Err(why) => Err(problem(
            key_a,
            why,
            "check r / rank_pattern in adapter_config.json: PEFT gives lora_A r rows per expert",
        )),
    }
}

/// The problem when a pair's rank is not the configured one (r / rank_pattern), which would make
/// the scale alpha/r wrong.
fn check_configured_rank(cfg: &LoraConfig, module: &str, rank: u64, key_a: &str) -> Checked<()> {
    let configured = cfg.rank_for(module);
    if configured.is_some_and(|r| r != rank) {
        return Err(problem(
            key_a,
            format!(
                "tensor rank {rank} differs from the configured rank {} (r / rank_pattern), so the scale alpha/r would be wrong",
                configured.unwrap_or(0)
            ),
            "fix `r` or `rank_pattern` in adapter_config.json to the rank the adapter was trained with",
        ));
    }
    Ok(())
}

/// A PEFT `target_parameters` wrapper on a fused-experts module, resolved to its parameter.
struct Fused {
    /// `model.layers.3.mlp.experts.gate_up_proj`: what rank_pattern / alpha_pattern match.
    param_path: String,
    site: Site,
}

/// Fused expert parameters in the order transformers registers them: PEFT nests one wrapper per
/// targeted parameter, the first-registered innermost, so the keys of `gate_up_proj` carry one
/// `.base_layer` more than those of `down_proj` (`mlp.experts.base_layer.lora_A` /
/// `mlp.experts.lora_A`) when both are targeted.
/// gpt-oss also registers a bias after each (PEFT can wrap those too: they count for the nesting,
/// and are then refused as modules no architecture maps).
const FUSED_PARAMS: &[&str] = &["gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias"];

/// The parameter a wrapper on `module_path` (`...mlp.experts[.base_layer]*`) adapts, by how deep
/// it is nested among the parameters `targets` names (PEFT matches a target as the whole key or a
/// `.`-separated suffix of `<module>.<parameter>`).
fn fused_experts(module_path: &str, targets: &[String]) -> Option<Fused> {
    if targets.is_empty() {
        return None;
    }
    let mut module = module_path;
    let mut depth = 0;
    while let Some(inner) = module.strip_suffix(".base_layer") {
        module = inner;
        depth += 1;
    }
    let layer = arch::experts_layer(module)?;
    let matches = |key: &str| targets.iter().any(|t| key == t || key.ends_with(&format!(".{t}")));
    let targeted: Vec<&str> = FUSED_PARAMS
        .iter()
        .copied()
        .filter(|p| matches(&format!("{module}.{p}")))
        .collect();
    let param = *targeted.get(targeted.len().checked_sub(depth + 1)?)?;
    Some(Fused {
        param_path: format!("{module}.{param}"),
        site: Site::FusedExperts {
            layer,
            param: param.to_string(),
        },
    })
}

impl Fused {
    /// (rank per expert, experts) of a pair whose lora_A has `rows` rows: the configured rank
    /// divides them.
    fn split(&self, cfg: &LoraConfig, rows: u64) -> std::result::Result<(u64, u64), String> {
        let r = cfg.rank_for(&self.param_path).unwrap_or(0);
        if r == 0 || !rows.is_multiple_of(r) {
            return Err(format!(
                "lora_A of `{}` has {rows} rows, not a whole number of experts of the configured rank {r}",
                self.param_path
            ));
        }
        Ok((r, rows / r))
    }
}

/// Takes tensor `i` as a replacement of the embeddings or the output projection when its key says
/// so (a full copy, PEFT's auto-saved base copy `.base_layer.weight`, trainable-token rows);
/// `false` for any other tensor. PEFT's `original_module` copy is the base's own: skipped.
fn replacement(cfg: &LoraConfig, full_key: &str, i: usize, out: &mut Analysis) -> bool {
    let key = full_key.strip_prefix("base_model.model.").unwrap_or(full_key);
    if let Some(module) = key.strip_suffix(".token_adapter.trainable_tokens_delta") {
        let Some(site @ (Site::Embedding | Site::Output)) = arch::site_of(module) else {
            return false;
        };
        let short = module.rsplit('.').next().unwrap_or(module);
        let rows = cfg
            .trainable_token_indices
            .iter()
            .find(|(m, _)| m == short || module.ends_with(&format!(".{m}")));
        match rows {
            Some((_, rows)) => out.replacements.push(Replacement {
                site,
                tensor: i,
                rows: Some(rows.clone()),
            }),
            None => out.problems.push(problem(
                full_key,
                format!("trainable-token rows for `{module}`, and trainable_token_indices does not name its tokens"),
                "the config and the weights disagree: save the adapter again with PEFT",
            )),
        }
        out.merge_only.push(problem(
            full_key,
            "trainable tokens replace rows of the embeddings, which a GGUF adapter cannot carry",
            "merge it (`ollama-tools merge`, or create-from-base)",
        ));
        return true;
    }
    let Some(module) = key.strip_suffix(".weight") else {
        return false;
    };
    if module.ends_with(".original_module") {
        return arch::site_of(module.trim_end_matches(".original_module")).is_some();
    }
    let module = module
        .trim_end_matches(".base_layer")
        .trim_end_matches(".modules_to_save");
    let Some(site @ (Site::Embedding | Site::Output)) = arch::site_of(module) else {
        return false;
    };
    if out.replacements.iter().any(|r| r.site == site && r.rows.is_none()) {
        return true; // the plain key and a `.modules_to_save` copy hold the same weights
    }
    out.replacements.push(Replacement {
        site,
        tensor: i,
        rows: None,
    });
    out.merge_only.push(problem(
        full_key,
        format!("a full copy of `{module}` (modules_to_save, or saved with a resized vocabulary) replaces the base's weights, which a GGUF adapter cannot carry"),
        "merge it (`ollama-tools merge`, or create-from-base)",
    ));
    true
}

/// What is wrong with a DoRA module's magnitude vector (`None`: it is absent for a plain LoRA, or
/// one `[out_features]` vector: per output row of a linear module, per hidden column of the
/// embeddings).
fn dora_problem(adapter: &Adapter, module: &str, magnitude: Option<usize>, out: u64) -> Option<Problem> {
    if !adapter.config.use_dora {
        return None;
    }
    let Some(i) = magnitude else {
        return Some(problem(
            module,
            "use_dora is true, and this module has no lora_magnitude_vector",
            "the file is incomplete: save the adapter again with PEFT",
        ));
    };
    let t = &adapter.tensors[i];
    (t.shape[..] != [out as usize]).then(|| {
        problem(
            &t.key,
            format!(
                "a DoRA magnitude vector of shape {:?}; `{module}` has {out} output rows",
                t.shape
            ),
            "the file is damaged or was edited: save the adapter again",
        )
    })
}

/// Merges problems with the same reason into one entry naming a few of the tensors, so a GPT-2
/// adapter yields one line, not 36.
fn group_problems(problems: Vec<Problem>) -> Vec<Problem> {
    const SHOWN: usize = 3;
    let mut grouped: Vec<(Problem, usize)> = Vec::new();
    for p in problems {
        match grouped.iter_mut().find(|(q, _)| q.why == p.why && q.hint == p.hint) {
            Some((q, n)) => {
                *n += 1;
                if *n <= SHOWN {
                    q.subject = format!("{}, {}", q.subject, p.subject);
                }
            }
            None => grouped.push((p, 1)),
        }
    }
    grouped
        .into_iter()
        .map(|(mut p, n)| {
            if n > SHOWN {
                p.subject = format!("{} and {} more", p.subject, n - SHOWN);
            }
            p
        })
        .collect()
}

/// `inspect`'s view of an adapter: everything a user wants to know before using it.
#[derive(Debug, Serialize)]
pub struct Report {
    pub(crate) adapter: PathBuf,
    pub(crate) config_file: PathBuf,
    pub(crate) weights_file: PathBuf,
    pub(crate) file_size: u64,
    pub(crate) peft_type: Option<String>,
    pub(crate) task_type: Option<String>,
    pub(crate) peft_version: Option<String>,
    pub(crate) base_model: Option<String>,
    pub(crate) r: Option<u64>,
    pub(crate) lora_alpha: Option<f64>,
    pub(crate) use_rslora: bool,
    pub(crate) use_dora: bool,
    pub(crate) fan_in_fan_out: bool,
    pub(crate) rank_pattern: Patterns<u64>,
    pub(crate) alpha_pattern: Patterns<f64>,
    pub(crate) target_modules: Option<Json>,
    /// One entry per module name and (rank, alpha): e.g. q_proj over layers 0-31 at rank 16.
    pub(crate) modules: Vec<ModuleGroup>,
    pub(crate) layers: Vec<u32>,
    /// Tensors in the safetensors file, of every kind.
    pub tensor_count: usize,
    pub(crate) parameter_count: u64,
    /// dtype name -> tensor count.
    pub(crate) dtypes: BTreeMap<String, usize>,
    /// Usable as a GGUF adapter (`convert`).
    pub convertible: bool,
    /// Usable merged into the base (`merge`, create-from-base).
    pub(crate) mergeable: bool,
    /// What keeps it from converting, grouped by reason.
    pub problems: Vec<Problem>,
    pub(crate) merge_only: Vec<Problem>,
    pub(crate) adapter_only: Vec<Problem>,
    /// What the adapter carries besides LoRA pairs, in words (DoRA, full copies, trainable tokens,
    /// activated LoRA).
    pub(crate) carries: Vec<String>,
    pub(crate) notices: Vec<String>,
    /// LoRA pairs on vision/audio towers (module paths), which the language model's GGUF lacks.
    pub(crate) towers: Vec<String>,
}

#[derive(Debug, Serialize, PartialEq)]
pub(crate) struct ModuleGroup {
    /// `q_proj`, `embed_tokens`, `lm_head`.
    pub(crate) module: String,
    pub(crate) layers: Vec<u32>,
    pub(crate) rank: u64,
    pub(crate) alpha: f64,
    pub(crate) scale: f64,
}

impl Report {
    /// The report on `adapter`, from its [`Adapter::analyze`].
    pub fn new(adapter: &Adapter, analysis: &Analysis) -> Self {
        let cfg = &adapter.config;
        let mut groups: BTreeMap<(String, u64, u64), ModuleGroup> = BTreeMap::new();
        let mut layers = std::collections::BTreeSet::new();
        for m in &analysis.modules {
            let (name, layer) = match &m.site {
                Site::Layer { layer, module } => (module.clone(), Some(*layer)),
                Site::Expert { layer, module, .. } => (format!("experts.{module}"), Some(*layer)),
                Site::FusedExperts { layer, param } => (format!("experts.{param}"), Some(*layer)),
                Site::Embedding => ("embed_tokens".to_string(), None),
                Site::Output => ("lm_head".to_string(), None),
                Site::Model { module } => (module.clone(), None),
                // Listed on their own (`towers`).
                Site::Tower { .. } => continue,
            };
            let g = groups
                .entry((name.clone(), m.rank, m.alpha.to_bits()))
                .or_insert_with(|| ModuleGroup {
                    module: name,
                    layers: vec![],
                    rank: m.rank,
                    alpha: m.alpha,
                    scale: m.scale,
                });
            // Experts of one layer come in a row (modules are sorted by site): the layer once.
            if let Some(l) = layer.filter(|l| g.layers.last() != Some(l)) {
                g.layers.push(l);
                layers.insert(l);
            }
        }
        let mut dtypes = BTreeMap::new();
        for t in &adapter.tensors {
            *dtypes.entry(format!("{:?}", t.dtype)).or_insert(0) += 1;
        }
        Report {
            adapter: adapter.path.clone(),
            config_file: adapter.config_path.clone(),
            weights_file: adapter.weights_path.clone(),
            file_size: adapter.file_size,
            peft_type: cfg.peft_type.clone(),
            task_type: cfg.task_type.clone(),
            peft_version: cfg.peft_version.clone(),
            base_model: cfg.base_model_name_or_path.clone(),
            r: cfg.r,
            lora_alpha: cfg.lora_alpha,
            use_rslora: cfg.use_rslora,
            use_dora: cfg.use_dora,
            fan_in_fan_out: cfg.fan_in_fan_out,
            rank_pattern: cfg.rank_pattern.clone(),
            alpha_pattern: cfg.alpha_pattern.clone(),
            target_modules: cfg.target_modules.clone(),
            modules: groups.into_values().collect(),
            layers: layers.into_iter().collect(),
            tensor_count: adapter.tensors.len(),
            parameter_count: adapter.tensors.iter().map(|t| t.len() as u64).sum(),
            dtypes,
            convertible: analysis.problems.is_empty() && analysis.merge_only.is_empty() && !analysis.modules.is_empty(),
            mergeable: analysis.problems.is_empty()
                && analysis.adapter_only.is_empty()
                && !(analysis.modules.is_empty() && analysis.replacements.is_empty()),
            problems: analysis.problems.clone(),
            merge_only: analysis.merge_only.clone(),
            adapter_only: analysis.adapter_only.clone(),
            carries: carries(adapter, analysis),
            notices: analysis.notices.clone(),
            towers: analysis.towers.clone(),
        }
    }
}

/// What an adapter carries besides LoRA pairs, one line each.
fn carries(adapter: &Adapter, analysis: &Analysis) -> Vec<String> {
    let mut out = Vec::new();
    let dora = analysis.modules.iter().filter(|m| m.magnitude.is_some()).count();
    if dora > 0 {
        out.push(format!("DoRA magnitudes on {dora} modules"));
    }
    for r in &analysis.replacements {
        let t = &adapter.tensors[r.tensor];
        let module = if r.site == Site::Output {
            "lm_head"
        } else {
            "embed_tokens"
        };
        out.push(match &r.rows {
            None => format!("a full copy of {module} {:?} (`{}`)", t.shape, t.key),
            Some(rows) => format!("trainable tokens: {} rows of {module} (ids {rows:?})", rows.len()),
        });
    }
    let tokens = &adapter.config.alora_invocation_tokens;
    if !tokens.is_empty() {
        out.push(format!(
            "activated LoRA: applies from the invocation tokens {tokens:?} on"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_with_and_without_adapter_name() {
        let k = parse_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
        assert_eq!(
            k,
            KeyKind::Lora {
                module: "model.layers.0.self_attn.q_proj".into(),
                half: Half::A,
                embedding: false,
                adapter_name: None
            }
        );
        let k = parse_key("base_model.model.model.layers.0.mlp.down_proj.lora_B.default.weight");
        assert_eq!(
            k,
            KeyKind::Lora {
                module: "model.layers.0.mlp.down_proj".into(),
                half: Half::B,
                embedding: false,
                adapter_name: Some("default".into())
            }
        );
        let k = parse_key("base_model.model.model.embed_tokens.lora_embedding_A");
        assert_eq!(
            k,
            KeyKind::Lora {
                module: "model.embed_tokens".into(),
                half: Half::A,
                embedding: true,
                adapter_name: None
            }
        );
        assert_eq!(
            parse_key("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"),
            KeyKind::Dora {
                module: "model.layers.0.self_attn.q_proj".into()
            }
        );
        assert_eq!(
            parse_key("base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias"),
            KeyKind::LoraBias
        );
        assert_eq!(parse_key("base_model.model.lm_head.weight"), KeyKind::Full);
    }

    fn cfg(json: &str) -> LoraConfig {
        LoraConfig::parse(Path::new("adapter_config.json"), json).unwrap()
    }

    #[test]
    fn scale_rules_follow_peft() {
        let c = cfg(r#"{"peft_type":"LORA","r":16,"lora_alpha":32}"#);
        assert_eq!(c.scale(16, 32.0), 2.0);
        let c = cfg(r#"{"peft_type":"LORA","r":16,"lora_alpha":32,"use_rslora":true}"#);
        assert_eq!(c.scale(16, 32.0), 8.0);
        let c = cfg(r#"{"peft_type":"LORA","r":8,"lora_alpha":16,
                "rank_pattern":{"model.layers.0.self_attn.q_proj":4,"v_proj":2},
                "alpha_pattern":{"layers.1.mlp.down_proj":64}}"#);
        assert_eq!(c.rank_for("model.layers.0.self_attn.q_proj"), Some(4));
        assert_eq!(
            c.rank_for("model.layers.10.self_attn.q_proj"),
            Some(8),
            "layers.10 must not match layers.0 patterns"
        );
        assert_eq!(c.rank_for("model.layers.3.self_attn.v_proj"), Some(2));
        // A pattern matches at a dot boundary only: `v_proj` does not match `xv_proj`.
        assert_eq!(c.rank_for("model.layers.3.self_attn.xv_proj"), Some(8));
        assert_eq!(c.alpha_for("model.layers.1.mlp.down_proj"), Some(64.0));
        assert_eq!(c.alpha_for("model.layers.11.mlp.down_proj"), Some(16.0));
    }

    #[test]
    fn overlapping_patterns_first_in_file_order_wins() {
        // Both patterns match layer 0's q_proj: PEFT takes the first written, not the most specific.
        let c = cfg(r#"{"peft_type":"LORA","r":8,"lora_alpha":16,
                        "rank_pattern":{"q_proj":2,"model.layers.0.self_attn.q_proj":4}}"#);
        assert_eq!(c.rank_for("model.layers.0.self_attn.q_proj"), Some(2));
        let c = cfg(r#"{"peft_type":"LORA","r":8,"lora_alpha":16,
                        "rank_pattern":{"model.layers.0.self_attn.q_proj":4,"q_proj":2}}"#);
        assert_eq!(c.rank_for("model.layers.0.self_attn.q_proj"), Some(4));
        assert_eq!(c.rank_for("model.layers.1.self_attn.q_proj"), Some(2));
        // Alternation is a regex too.
        let c = cfg(r#"{"peft_type":"LORA","r":8,"lora_alpha":16,"alpha_pattern":{"q_proj|k_proj":4}}"#);
        assert_eq!(c.alpha_for("model.layers.3.self_attn.k_proj"), Some(4.0));
        assert_eq!(c.alpha_for("model.layers.3.self_attn.v_proj"), Some(16.0));
    }

    #[test]
    fn pattern_values_must_be_positive() {
        let p = Path::new("adapter_config.json");
        let e = LoraConfig::parse(
            p,
            r#"{"peft_type":"LORA","r":8,"lora_alpha":16,"rank_pattern":{"q_proj":0}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("rank_pattern.q_proj") && e.contains("positive rank"), "{e}");
        let e = LoraConfig::parse(
            p,
            r#"{"peft_type":"LORA","r":8,"lora_alpha":16,"alpha_pattern":{"q_proj":0}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("alpha_pattern.q_proj") && e.contains("positive number"),
            "{e}"
        );
        let e = LoraConfig::parse(
            p,
            r#"{"peft_type":"LORA","r":8,"lora_alpha":16,"rank_pattern":{"(q_proj":2}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not a valid regular expression"), "{e}");
    }

    #[test]
    fn hub_ids_from_base_model_field() {
        assert_eq!(
            hub_repo_id("meta-llama/Llama-3.2-1B").as_deref(),
            Some("meta-llama/Llama-3.2-1B")
        );
        assert_eq!(
            hub_repo_id("/content/llama3_model/models--meta-llama--Meta-Llama-3-8B/snapshots/8cde5ca8").as_deref(),
            Some("meta-llama/Meta-Llama-3-8B")
        );
        assert_eq!(hub_repo_id("/content/drive/base"), None);
        assert_eq!(hub_repo_id("./outputs"), None);
        assert_eq!(hub_repo_id("gpt2"), None);
        assert_eq!(hub_cache_repo("/home/u/my-adapter/adapter_config.json"), None);
    }

    #[test]
    fn foreign_configs_are_named() {
        let p = Path::new("adapter_config.json");
        let e = LoraConfig::parse(p, r#"{"model_type":"llama","hidden_size":1}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("transformers model config.json"), "{e}");
        let e = LoraConfig::parse(p, r#"{"lora_parameters":{"rank":8}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("MLX-LM"), "{e}");
        let e = LoraConfig::parse(p, r#"{"peft_type":"LORA","r":"eight"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("field `r` must be a positive rank, a whole number from 1 to 65536, found \"eight\""),
            "{e}"
        );
        let e = LoraConfig::parse(p, "{\"peft_type\": \"LORA\",")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not valid JSON"), "{e}");
    }

    /// `"r": 1e300` used to become rank 18446744073709551615; numbers are read strictly now.
    #[test]
    fn numbers_are_read_strictly_and_named() {
        let p = Path::new("adapter_config.json");
        let err = |json: &str| LoraConfig::parse(p, json).unwrap_err().to_string();
        let e = err(r#"{"peft_type":"LORA","r":1e300,"lora_alpha":16}"#);
        assert!(
            e.contains("field `r` must be a positive rank, a whole number from 1 to 65536, found 1e+300"),
            "{e}"
        );
        let e = err(r#"{"peft_type":"LORA","r":-8}"#);
        assert!(e.contains("found -8"), "{e}");
        let e = err(r#"{"peft_type":"LORA","r":8.5}"#);
        assert!(e.contains("found 8.5"), "{e}");
        let e = err(r#"{"peft_type":"LORA","r":8,"layers_to_transform":[1e20]}"#);
        assert!(
            e.contains("`layers_to_transform` must be a layer number from 0 to 65536, found 1e+20"),
            "{e}"
        );
        assert_eq!(cfg(r#"{"peft_type":"LORA","r":16.0}"#).r, Some(16));
    }
}
