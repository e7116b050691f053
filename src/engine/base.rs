//! The base model an adapter is applied to, described the same way whatever it was read from.
//!
//! Sources: an Ollama model name, answered by the server's `/api/show` or, when no server answers,
//! read from the local model store (manifest -> GGUF blob); a GGUF file (only its header is read); a
//! Hugging Face model directory with `config.json` (tensor shapes derived from the hyper-parameters the
//! way llama.cpp's converter lays them out). Every source fills [`BaseModel`]; `resolve` picks the
//! source for what the user typed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use crate::engine::arch::{self, Arch};
use crate::error::{Error, Result};
use crate::formats::gguf::{self, GgmlType};
use crate::remote::ollama::{self, ModelName};

/// A tensor of the base model as llama.cpp names and shapes it.
#[derive(Clone, Debug, PartialEq)]
pub struct BaseTensor {
    /// ggml order (`ne[0]` = input width for a weight matrix).
    pub ne: Vec<u64>,
    /// Known when the source lists tensors (GGUF, the store, `/api/show`), not for `config.json`.
    pub(crate) ty: Option<GgmlType>,
}

/// What is known of a base model from whichever source described it (a GGUF header, `config.json`,
/// Ollama's store or `/api/show`): architecture, hyper-parameters and tensor shapes, enough to
/// validate an adapter without reading any weights.
#[derive(Clone, Debug)]
pub struct BaseModel {
    /// Where the description came from, for messages.
    pub(crate) source: PathBuf,
    /// `general.architecture`.
    pub arch: String,
    /// `general.name` or the config's `_name_or_path`.
    pub(crate) name: Option<String>,
    pub(crate) block_count: u64,
    /// Attention heads (the largest value where layers differ, see `uniform_heads`).
    pub(crate) head_count: u64,
    pub(crate) head_count_kv: u64,
    /// Whether every layer has `head_count` / `head_count_kv` heads (Gemma 4 and the hybrid models
    /// give per-layer arrays).
    pub(crate) uniform_heads: bool,
    /// Linear-attention head layout of hybrid models (Qwen3.5).
    pub linear_attn: Option<arch::LinearAttn>,
    /// The last this many layers reuse an earlier layer's keys and values (Gemma 4's
    /// `shared_kv_layers`): their k/v projections, where present, are never used.
    pub shared_kv_layers: u64,
    pub(crate) vocab_size: Option<u64>,
    /// GGUF tensor name -> shape (and type where known).
    pub tensors: BTreeMap<String, BaseTensor>,
    /// Whether `tensors` was listed by the source, or derived from hyper-parameters (`config.json`,
    /// or a server that does not list tensors).
    pub(crate) exact_tensors: bool,
    /// The GGUF file, when the base is one (the merge needs its bytes).
    pub(crate) gguf_path: Option<PathBuf>,
    /// `gguf`, or what Ollama reports for a model imported otherwise (`safetensors`, MLX...); `None`
    /// for a `config.json` description, which only describes shapes.
    pub(crate) format: Option<String>,
    /// `general.size_label` / Ollama's `parameter_size`, e.g. `3B`, `3.2B`.
    pub(crate) size_label: Option<String>,
    /// `general.file_type` / Ollama's `quantization_level`, e.g. `Q4_K_M`.
    pub(crate) quantization: Option<String>,
    /// Tensor types the source names that this tool does not know, `tensor: type`.
    pub(crate) unknown_types: Vec<String>,
}

/// A head count given once or per layer.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Heads {
    /// The largest count (layers without attention count 0).
    max: u64,
    /// Whether all layers with attention have `max` heads.
    uniform: bool,
}

impl Heads {
    /// `None` unless `values` are counts, at least one of them positive, none above `MAX_HEADS`.
    fn of(values: Option<Vec<u64>>) -> Option<Heads> {
        let values = values?;
        let max = values.iter().copied().max().filter(|&m| m > 0 && m <= MAX_HEADS)?;
        Some(Heads {
            max,
            uniform: values.iter().all(|&n| n == max || n == 0),
        })
    }
}

/// Hyper-parameters from which tensor shapes are derived when the source lists none.
#[derive(Default)]
struct Dims {
    layers: u64,
    hidden: u64,
    heads: u64,
    kv_heads: u64,
    head_dim: u64,
    ffn: u64,
    vocab: u64,
    tied: bool,
    /// Per layer, where layers differ (Gemma 4, Qwen3.5); empty when all are `Attention` with the
    /// values above.
    kinds: Vec<LayerKind>,
    /// Qwen3.5's Gated DeltaNet sizes.
    linear: Option<LinearDims>,
    /// Qwen3.5's q_proj also yields the output gate: twice the rows.
    q_gate: bool,
    /// Gemma 4's per-layer input width (`hidden_size_per_layer_input`), 0 without.
    per_layer_input: u64,
    /// Gemma 4's `num_kv_shared_layers`.
    shared_kv_layers: u64,
    /// Mixture-of-experts: experts per sparse layer (0: dense) and each expert's MLP width.
    experts: u64,
    expert_ffn: u64,
    /// The shared expert's width (0: none), and whether it has a sigmoid gate (Qwen3.5-MoE's
    /// `shared_expert_gate`; Llama 4's has none).
    shared_ffn: u64,
    shared_gate: bool,
    /// Which layers are sparse (empty: every layer, when `experts` > 0).
    sparse: Vec<bool>,
}

/// Bounds on the hyper-parameters of any source, as for `config.json`: a damaged or hostile
/// description must not ask for absurd tables (tensor shapes are derived per layer).
const MAX_LAYERS: u64 = 4096;
const MAX_HEADS: u64 = 4096;
const MAX_DIM: u64 = 1 << 20;
const MAX_VOCAB: u64 = 1 << 24;
const MAX_EXPERTS: u64 = 4096;

/// 1 to 4 dimensions, none 0, whose product fits 64 bits (as a GGUF reader requires).
fn plausible_shape(ne: &[u64]) -> bool {
    (1..=4).contains(&ne.len()) && !ne.contains(&0) && ne.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).is_some()
}

/// `value` of field `key` within `1..=max`, or a message saying what was found.
fn bounded(key: &str, value: u64, max: u64) -> std::result::Result<u64, String> {
    if (1..=max).contains(&value) {
        Ok(value)
    } else {
        Err(format!("`{key}` is {value}; expected a count from 1 to {max}"))
    }
}

impl Dims {
    /// Every size within bounds and non-zero, so derived shapes are real and their products fit.
    fn check(&self) -> std::result::Result<(), String> {
        bounded("block_count", self.layers, MAX_LAYERS)?;
        bounded("attention heads", self.heads, MAX_HEADS)?;
        bounded("key/value heads", self.kv_heads, MAX_HEADS)?;
        bounded("head size", self.head_dim, MAX_DIM)?;
        bounded("hidden size", self.hidden, MAX_DIM)?;
        bounded("feed-forward size", self.ffn, MAX_DIM)?;
        bounded("vocabulary size", self.vocab, MAX_VOCAB)?;
        if self.experts > 0 {
            bounded("expert count", self.experts, MAX_EXPERTS)?;
            bounded("expert feed-forward size", self.expert_ffn, MAX_DIM)?;
        }
        Ok(())
    }

    /// Whether layer `i` is a sparse MoE layer.
    fn is_sparse(&self, i: u64) -> bool {
        self.experts > 0 && self.sparse.get(i as usize).copied().unwrap_or(true)
    }

    /// A plain attention layer with the model-wide sizes.
    fn attention_layer(&self) -> LayerKind {
        LayerKind::Attention {
            head_dim: self.head_dim,
            kv_heads: self.kv_heads,
            k: true,
            v: true,
            ffn: self.ffn,
        }
    }
}

/// What one decoder layer holds.
#[derive(Clone, Copy, Debug, PartialEq)]
enum LayerKind {
    /// Softmax attention with this head size and MLP width. `k` / `v` are false where the layer
    /// has no such projection: Gemma 4's KV-shared layers reuse an earlier layer's keys and values,
    /// and its `attention_k_eq_v` full layers take the values from k_proj.
    Attention {
        head_dim: u64,
        kv_heads: u64,
        k: bool,
        v: bool,
        ffn: u64,
    },
    /// Linear attention (Gated DeltaNet).
    Linear,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct LinearDims {
    k_heads: u64,
    v_heads: u64,
    k_head_dim: u64,
    v_head_dim: u64,
}

/// The tensors llama.cpp's converter writes for `arch` with these hyper-parameters (the weights a
/// LoRA can touch).
fn derive_tensors(arch: &Arch, d: &Dims) -> BTreeMap<String, BaseTensor> {
    let mut tensors = BTreeMap::new();
    let mut add = |name: String, ne: &[u64]| {
        tensors.insert(
            name,
            BaseTensor {
                ne: ne.to_vec(),
                ty: None,
            },
        );
    };
    add("token_embd.weight".into(), &[d.hidden, d.vocab]);
    if !d.tied {
        add("output.weight".into(), &[d.hidden, d.vocab]);
    }
    if d.per_layer_input > 0 {
        add(
            "per_layer_model_proj.weight".into(),
            &[d.hidden, d.layers * d.per_layer_input],
        );
    }
    for i in 0..d.layers {
        let kind = d.kinds.get(i as usize).copied().unwrap_or_else(|| d.attention_layer());
        let sparse = d.is_sparse(i);
        for (_, stem) in arch.layer_stems() {
            // A sparse layer's MLP is its experts (below), not a dense gate/up/down.
            if sparse && matches!(stem, "ffn_gate" | "ffn_up" | "ffn_down") {
                continue;
            }
            if let Some(ne) = layer_tensor_shape(arch, d, kind, stem) {
                add(format!("blk.{i}.{stem}.weight"), &ne);
            }
        }
        if sparse {
            let (h, f, n) = (d.hidden, d.expert_ffn, d.experts);
            add(format!("blk.{i}.ffn_gate_inp.weight"), &[h, n]);
            add(format!("blk.{i}.ffn_gate_exps.weight"), &[h, f, n]);
            add(format!("blk.{i}.ffn_up_exps.weight"), &[h, f, n]);
            add(format!("blk.{i}.ffn_down_exps.weight"), &[f, h, n]);
            if d.shared_ffn > 0 {
                let s = d.shared_ffn;
                add(format!("blk.{i}.ffn_gate_shexp.weight"), &[h, s]);
                add(format!("blk.{i}.ffn_up_shexp.weight"), &[h, s]);
                add(format!("blk.{i}.ffn_down_shexp.weight"), &[s, h]);
            }
            if d.shared_gate {
                add(format!("blk.{i}.ffn_gate_inp_shexp.weight"), &[h, 1]);
            }
        }
    }
    tensors
}

/// The ggml shape of `blk.N.{stem}.weight` in a layer of `kind`, `None` where such a layer has none.
fn layer_tensor_shape(arch: &Arch, d: &Dims, kind: LayerKind, stem: &str) -> Option<[u64; 2]> {
    let h = d.hidden;
    let ffn = match kind {
        LayerKind::Attention { ffn, .. } => ffn,
        LayerKind::Linear => d.ffn,
    };
    let shared = match stem {
        "ffn_gate" => Some([h, ffn]),
        "ffn_up" if arch.name == "phi3" => Some([h, 2 * ffn]),
        "ffn_up" => Some([h, ffn]),
        "ffn_down" => Some([ffn, h]),
        "inp_gate" if d.per_layer_input > 0 => Some([h, d.per_layer_input]),
        "proj" if d.per_layer_input > 0 => Some([d.per_layer_input, h]),
        _ => None,
    };
    if shared.is_some() {
        return shared;
    }
    match kind {
        LayerKind::Attention {
            head_dim,
            kv_heads,
            k,
            v,
            ..
        } => {
            let (q, kvw) = (d.heads * head_dim, kv_heads * head_dim);
            match stem {
                "attn_q" => Some([h, if d.q_gate { 2 * q } else { q }]),
                "attn_k" if k => Some([h, kvw]),
                "attn_v" if v => Some([h, kvw]),
                "attn_qkv" if arch.name == "phi3" => Some([h, q + 2 * kvw]),
                "attn_output" => Some([q, h]),
                _ => None,
            }
        }
        LayerKind::Linear => {
            let l = d.linear?;
            let (key, value) = (l.k_heads * l.k_head_dim, l.v_heads * l.v_head_dim);
            match stem {
                "attn_qkv" => Some([h, 2 * key + value]),
                "attn_gate" => Some([h, value]),
                "ssm_alpha" | "ssm_beta" => Some([h, l.v_heads]),
                "ssm_out" => Some([value, h]),
                _ => None,
            }
        }
    }
}

/// Gated DeltaNet heads from GGUF `ssm.group_count` (key heads), `ssm.time_step_rank` (value
/// heads) and `ssm.inner_size` (value heads x head size); `None` unless all three make sense.
fn linear_attn(k_heads: Option<u64>, v_heads: Option<u64>, inner: Option<u64>) -> Option<arch::LinearAttn> {
    match (k_heads, v_heads, inner) {
        (Some(k), Some(v), Some(inner))
            if (1..=MAX_HEADS).contains(&k)
                && (1..=MAX_HEADS).contains(&v)
                && inner <= MAX_DIM * 16
                && inner % v == 0 =>
        {
            Some(arch::LinearAttn {
                k_heads: k as usize,
                v_heads: v as usize,
                v_head_dim: (inner / v) as usize,
            })
        }
        _ => None,
    }
}

/// An integer field of a `config.json` within `1..=max`, `None` when absent or null.
fn cfg_u64(cfg: &Json, key: &str, max: u64) -> std::result::Result<Option<u64>, String> {
    match cfg.get(key).filter(|v| !v.is_null()) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if (1..=max).contains(&n) => Ok(Some(n)),
            _ => Err(format!(
                "config.json field `{key}` must be an integer from 1 to {max}, found {v}"
            )),
        },
    }
}

/// Qwen3.5's layers: `layer_types` ("linear_attention" / "full_attention"), else every
/// `full_attention_interval`-th layer (default 4) is full attention, as llama.cpp's converter reads it.
fn qwen35_dims(d: &mut Dims, cfg: &Json) -> std::result::Result<(), String> {
    let need = |key: &str| cfg_u64(cfg, key, 1 << 16)?.ok_or_else(|| format!("config.json field `{key}` is missing"));
    d.linear = Some(LinearDims {
        k_heads: need("linear_num_key_heads")?,
        v_heads: need("linear_num_value_heads")?,
        k_head_dim: need("linear_key_head_dim")?,
        v_head_dim: need("linear_value_head_dim")?,
    });
    d.q_gate = true;
    let attention = d.attention_layer();
    let every = cfg_u64(cfg, "full_attention_interval", 1 << 16)?.unwrap_or(4);
    let full = layer_types(cfg, d.layers, "full_attention", |i| (i + 1) % every == 0)?;
    d.kinds = full
        .into_iter()
        .map(|f| if f { attention } else { LayerKind::Linear })
        .collect();
    Ok(())
}

/// Gemma 4's layers, as transformers' Gemma4TextConfig resolves them: full-attention layers (from
/// `layer_types`, by default every sixth and the last) use `global_head_dim` (default 512) and,
/// with `attention_k_eq_v`, `num_global_key_value_heads` and no v_proj; `per_layer_config` (newer
/// configs) overrides both per layer. The last `num_kv_shared_layers` layers have no k/v
/// projections and, with `use_double_wide_mlp`, twice the MLP width.
fn gemma4_dims(d: &mut Dims, cfg: &Json) -> std::result::Result<(), String> {
    let flag = |key: &str| cfg.get(key).and_then(Json::as_bool).unwrap_or(false);
    if flag("enable_moe_block") {
        return Err("this Gemma 4 has a mixture-of-experts block (26B-A4B), which ollama-tools does not handle".into());
    }
    let n = d.layers;
    let global_head_dim = cfg_u64(cfg, "global_head_dim", 1 << 16)?.unwrap_or(512);
    let global_kv = cfg_u64(cfg, "num_global_key_value_heads", 1 << 16)?;
    let k_eq_v = flag("attention_k_eq_v");
    d.shared_kv_layers = cfg
        .get("num_kv_shared_layers")
        .and_then(Json::as_u64)
        .unwrap_or(0)
        .min(n);
    d.per_layer_input = cfg
        .get("hidden_size_per_layer_input")
        .and_then(Json::as_u64)
        .unwrap_or(0);
    if d.per_layer_input > 1 << 16 {
        return Err(format!(
            "config.json `hidden_size_per_layer_input` {} is out of range",
            d.per_layer_input
        ));
    }
    let full = layer_types(cfg, n, "full_attention", |i| (i + 1) % 6 == 0 || i + 1 == n)?;
    let overrides = cfg.get("per_layer_config").and_then(Json::as_object);
    let layer_override = |i: u64, key: &str| -> std::result::Result<Option<u64>, String> {
        let Some(map) = overrides else { return Ok(None) };
        let entry = map
            .iter()
            .find(|(k, _)| k.parse::<u64>().ok() == Some(i))
            .map(|(_, v)| v);
        entry.map_or(Ok(None), |e| cfg_u64(e, key, 1 << 16))
    };
    d.kinds = (0..n)
        .map(|i| {
            let is_full = full[i as usize];
            let shared = i >= n - d.shared_kv_layers;
            let head_dim = layer_override(i, "head_dim")?.unwrap_or(if is_full { global_head_dim } else { d.head_dim });
            let kv_default = match global_kv {
                Some(g) if is_full && k_eq_v => g,
                _ => d.kv_heads,
            };
            let kv_heads = layer_override(i, "num_key_value_heads")?.unwrap_or(kv_default);
            let ffn = if shared && flag("use_double_wide_mlp") {
                2 * d.ffn
            } else {
                d.ffn
            };
            Ok(LayerKind::Attention {
                head_dim,
                kv_heads,
                k: !shared,
                v: !(shared || (is_full && k_eq_v)),
                ffn,
            })
        })
        .collect::<std::result::Result<_, String>>()?;
    Ok(())
}

/// A Granite 4 (`GraniteMoeHybridForCausalLM`) is GGUF arch `granite` only when every layer is
/// attention and there are no experts (llama.cpp's GraniteHybridModel converter); its shared MLP
/// must be `intermediate_size` wide, the width llama.cpp gives `ffn_*`.
fn granite4_dense(cfg: &Json, d: &Dims) -> std::result::Result<(), String> {
    let attention = layer_types(cfg, d.layers, "attention", |_| false)?;
    if cfg.get("layer_types").is_none() || attention.contains(&false) {
        return Err(
            "this Granite 4 has Mamba-2 layers (a hybrid, GGUF arch `granitehybrid`), which ollama-tools does \
                    not handle; only the all-attention Granite 4 models (e.g. granite-4.0-micro) are supported"
                .into(),
        );
    }
    if cfg.get("num_local_experts").and_then(Json::as_u64).unwrap_or(0) > 0 {
        return Err("this Granite 4 has experts (GGUF arch `granitemoe`), which ollama-tools does not handle".into());
    }
    match cfg_u64(cfg, "shared_intermediate_size", 1 << 20)? {
        Some(w) if w != d.ffn => Err(format!(
            "config.json `shared_intermediate_size` {w} differs from `intermediate_size` {}: llama.cpp sizes the MLP by the latter",
            d.ffn
        )),
        _ => Ok(()),
    }
}

/// The sparse MoE layers as transformers' configs describe them: Mixtral's `num_local_experts`
/// experts of `intermediate_size` in every layer; Qwen3-MoE's `num_experts` of
/// `moe_intermediate_size` in every `decoder_sparse_step`-th layer not in `mlp_only_layers`.
fn moe_dims(d: &mut Dims, cfg: &Json, model_type: &str) -> std::result::Result<(), String> {
    let need =
        |key: &str, max: u64| cfg_u64(cfg, key, max)?.ok_or_else(|| format!("config.json field `{key}` is missing"));
    if model_type == "mixtral" || model_type == "gpt_oss" {
        d.experts = need("num_local_experts", MAX_EXPERTS)?;
        d.expert_ffn = d.ffn;
        return Ok(());
    }
    d.experts = need("num_experts", MAX_EXPERTS)?;
    d.expert_ffn = need("moe_intermediate_size", MAX_DIM)?;
    d.shared_ffn = cfg_u64(cfg, "shared_expert_intermediate_size", MAX_DIM)?.unwrap_or(0);
    d.shared_gate = d.shared_ffn > 0;
    let step = cfg_u64(cfg, "decoder_sparse_step", MAX_LAYERS)?.unwrap_or(1);
    let dense: Vec<u64> = cfg
        .get("mlp_only_layers")
        .and_then(Json::as_array)
        .map_or(vec![], |l| l.iter().filter_map(Json::as_u64).collect());
    d.sparse = (0..d.layers)
        .map(|i| !dense.contains(&i) && (i + 1) % step == 0)
        .collect();
    Ok(())
}

/// Llama 4: `num_local_experts` experts of `intermediate_size` and a shared expert as wide, in
/// every `interleave_moe_layer_step`-th layer (llama.cpp's rule; the converter writes only the
/// step); the dense layers' MLP is `intermediate_size_mlp` wide.
fn llama4_dims(d: &mut Dims, cfg: &Json) -> std::result::Result<(), String> {
    let need =
        |key: &str, max: u64| cfg_u64(cfg, key, max)?.ok_or_else(|| format!("config.json field `{key}` is missing"));
    d.experts = need("num_local_experts", MAX_EXPERTS)?;
    (d.expert_ffn, d.shared_ffn) = (d.ffn, d.ffn);
    d.ffn = need("intermediate_size_mlp", MAX_DIM)?;
    let step = cfg_u64(cfg, "interleave_moe_layer_step", MAX_LAYERS)?.unwrap_or(1);
    d.sparse = (0..d.layers).map(|i| (i + 1) % step == 0).collect();
    Ok(())
}

/// Which layers are of type `wanted` by the config's `layer_types`, else by `default`.
fn layer_types(
    cfg: &Json,
    n: u64,
    wanted: &str,
    default: impl Fn(u64) -> bool,
) -> std::result::Result<Vec<bool>, String> {
    let Some(types) = cfg.get("layer_types").and_then(Json::as_array) else {
        return Ok((0..n).map(default).collect());
    };
    if types.len() as u64 != n {
        return Err(format!(
            "config.json `layer_types` has {} entries for {n} layers",
            types.len()
        ));
    }
    types
        .iter()
        .map(|t| {
            t.as_str()
                .map(|t| t == wanted)
                .ok_or_else(|| format!("config.json `layer_types` holds {t}, not a layer type name"))
        })
        .collect()
}

/// llama.cpp's `llama_ftype` name for a `general.file_type` value (`15` is `Q4_K_M`); `None` for a
/// number not in this table.
pub fn file_type_name(ftype: u64) -> Option<&'static str> {
    Some(match ftype {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        _ => return None,
    })
}

/// What the user typed as `--base`: an existing file or folder, else an Ollama model name, asked of
/// the server at `OLLAMA_HOST` and, when no server answers, read from the local store.
pub(crate) fn resolve(spec: &str) -> Result<BaseModel> {
    let path = Path::new(spec);
    if path.exists() {
        return BaseModel::load(path);
    }
    let looks_like_path =
        spec.starts_with(['.', '/', '~']) || spec.ends_with(".gguf") || spec.ends_with(".json") || spec.contains('\\');
    let name = match ModelName::parse(spec) {
        Some(name) if !looks_like_path => name,
        _ => {
            return Err(Error::invalid(path, "no such file or folder")
                .with_hint(
                    "--base takes a GGUF file, a Hugging Face model folder with config.json, or an Ollama model name",
                )
                .with_kind(crate::ErrorKind::NotFound));
        }
    };
    let client = ollama::Client::new(&ollama::host());
    match client.show(spec) {
        Ok(show) => BaseModel::from_show(&name, &show, client.base()),
        Err(ollama::ApiError::Unreachable { url, err }) => {
            let store = ollama::store_dir();
            BaseModel::from_store(&name, &store).map_err(|e| match e {
                Error::Invalid { msg, .. } | Error::Refused { msg, .. } if !name.manifest_path(&store).exists() => Error::Refused {
                    path: PathBuf::from(spec),
                    msg: format!("no Ollama server answers at {url} ({err}), and {msg}"),
                    hint: Some(
                        "start Ollama (`ollama serve`) or point OLLAMA_HOST at it; or set OLLAMA_MODELS to the model store; \
                         or pass the model's GGUF file"
                            .into(),
                    ),
                    kind: crate::ErrorKind::Server,
                },
                other => other,
            })
        }
        Err(ollama::ApiError::Status {
            url,
            status: 404,
            message,
        }) => Err(Error::Refused {
            path: PathBuf::from(spec),
            msg: format!("the Ollama server at {url} says: {message}"),
            hint: Some(format!(
                "pull it first (`ollama pull {spec}`), or check the name with `ollama list`"
            )),
            kind: crate::ErrorKind::NotFound,
        }),
        Err(e) => Err(Error::Refused {
            path: PathBuf::from(spec),
            msg: e.to_string(),
            hint: None,
            kind: e.kind(),
        }),
    }
}

/// transformers' config-class defaults for fields a `config.json` may leave out.
fn hf_default(arch: &str, key: &str) -> Option<u64> {
    match (arch, key) {
        ("gemma" | "gemma2" | "gemma3" | "gemma4", "head_dim") => Some(256),
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

    pub(crate) fn arch_spec(&self) -> Option<&'static Arch> {
        arch::by_name(&self.arch)
    }

    /// What the LoRA layout transforms (`Arch::reorder`) need to know; head counts only where every
    /// layer has the same.
    pub fn geometry(&self) -> arch::Geometry {
        let uniform = |n: u64| (self.uniform_heads && n > 0).then_some(n);
        arch::Geometry {
            head_count: uniform(self.head_count),
            head_count_kv: uniform(self.head_count_kv),
            linear_attn: self.linear_attn,
        }
    }

    /// From a GGUF file's header (the weights are not read); refuses a GGUF that is a LoRA adapter.
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
        let block_count = get_u64("block_count").ok_or_else(|| {
            Error::invalid(
                path,
                format!("GGUF metadata `{arch}.block_count` is missing or not an integer"),
            )
        })?;
        bounded(&format!("{arch}.block_count"), block_count, MAX_LAYERS)
            .map_err(|msg| Error::invalid(path, format!("GGUF metadata {msg}")))?;
        let q_heads = gguf_heads(path, &header, &arch, "attention.head_count")?
            .ok_or_else(|| Error::invalid(path, format!("GGUF metadata `{arch}.attention.head_count` is missing")))?;
        let kv_heads = gguf_heads(path, &header, &arch, "attention.head_count_kv")?.unwrap_or(q_heads);
        let shared_kv_layers = get_u64("attention.shared_kv_layers").unwrap_or(0);
        let linear_attn = linear_attn(
            get_u64("ssm.group_count"),
            get_u64("ssm.time_step_rank"),
            get_u64("ssm.inner_size"),
        );
        let tensors = gguf_tensors(&header);
        let vocab_size = get_u64("vocab_size")
            .or_else(|| {
                header
                    .get("tokenizer.ggml.tokens")
                    .and_then(gguf::Value::array_len)
                    .map(|n| n as u64)
            })
            .or_else(|| tensors.get("token_embd.weight").and_then(|t| t.ne.get(1).copied()));
        let unknown_types = header
            .tensors
            .iter()
            .filter(|t| !t.ty.is_known())
            .map(|t| format!("{}: {}", t.name, t.ty))
            .collect();
        Ok(BaseModel {
            source: path.to_path_buf(),
            name: header.get_str("general.name").map(str::to_string),
            arch,
            block_count,
            head_count: q_heads.max,
            head_count_kv: kv_heads.max,
            uniform_heads: q_heads.uniform && kv_heads.uniform,
            linear_attn,
            shared_kv_layers,
            vocab_size,
            tensors,
            exact_tensors: true,
            gguf_path: Some(path.to_path_buf()),
            format: Some("gguf".into()),
            size_label: header.get_str("general.size_label").map(str::to_string),
            quantization: header
                .get("general.file_type")
                .and_then(gguf::Value::as_u64)
                .map(|t| file_type_name(t).map_or_else(|| format!("file type {t}"), str::to_string)),
            unknown_types,
        })
    }

    /// From a Hugging Face `config.json`: tensor shapes derived from the hyper-parameters the way
    /// llama.cpp's converter lays them out.
    pub(crate) fn from_hf_config(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let root: Json =
            serde_json::from_str(&text).map_err(|e| Error::invalid(path, format!("not valid JSON: {e}")))?;
        // Multimodal wrappers (Gemma 3) keep the decoder's hyper-parameters in `text_config`.
        let cfg = root.get("text_config").filter(|v| v.is_object()).unwrap_or(&root);
        let (arch, model_type) = hf_arch(path, &root, cfg)?;
        let dims = hf_dims(path, arch, model_type, &root, cfg)?;
        Ok(BaseModel {
            source: path.to_path_buf(),
            arch: arch.name.to_string(),
            name: root.get("_name_or_path").and_then(Json::as_str).map(str::to_string),
            block_count: dims.layers,
            head_count: dims.heads,
            head_count_kv: dims.kv_heads,
            uniform_heads: dims.kinds.iter().all(|k| match k {
                LayerKind::Attention { kv_heads, .. } => *kv_heads == dims.kv_heads,
                LayerKind::Linear => true,
            }),
            shared_kv_layers: dims.shared_kv_layers,
            linear_attn: dims.linear.map(|l| arch::LinearAttn {
                k_heads: l.k_heads as usize,
                v_heads: l.v_heads as usize,
                v_head_dim: l.v_head_dim as usize,
            }),
            vocab_size: Some(dims.vocab),
            tensors: derive_tensors(arch, &dims),
            exact_tensors: false,
            gguf_path: None,
            format: None,
            size_label: None,
            quantization: root
                .get("torch_dtype")
                .or_else(|| cfg.get("torch_dtype"))
                .and_then(Json::as_str)
                .map(str::to_string),
            unknown_types: vec![],
        })
    }

    /// From a server's `/api/show` (verbose): hyper-parameters from `model_info`, tensors as listed
    /// (derived from the hyper-parameters when the server lists none).
    pub fn from_show(name: &ModelName, show: &ollama::Show, server: &str) -> Result<Self> {
        let source = PathBuf::from(name.to_string());
        let arch = show
            .model_info
            .get("general.architecture")
            .and_then(Json::as_str)
            .unwrap_or(&show.details.family)
            .to_string();
        let info = ModelInfo {
            info: &show.model_info,
            arch: &arch,
            source: &source,
            server,
        };
        let gguf = show.details.format.is_empty() || show.details.format == "gguf";
        let block_count = info.int("block_count").unwrap_or(0);
        let q_heads = info
            .heads("attention.head_count")?
            .unwrap_or(Heads { max: 0, uniform: true });
        if gguf {
            // Up front, so that validate does not pass a base that convert then refuses.
            info.check_layout(block_count, q_heads)?;
        }
        let kv_heads = info.heads("attention.head_count_kv")?.unwrap_or(q_heads);
        let (head_count, head_count_kv) = (q_heads.max, kv_heads.max);
        let shared_kv_layers = info.int("attention.shared_kv_layers").unwrap_or(0);
        let linear_attn = linear_attn(
            info.int("ssm.group_count"),
            info.int("ssm.time_step_rank"),
            info.int("ssm.inner_size"),
        );
        let (mut tensors, unknown_types) = info.listed_tensors(&show.tensors)?;
        let vocab_size = info
            .int("vocab_size")
            .or_else(|| {
                show.model_info
                    .get("tokenizer.ggml.tokens")
                    .and_then(Json::as_array)
                    .map(|a| a.len() as u64)
            })
            .or_else(|| tensors.get("token_embd.weight").and_then(|t| t.ne.get(1).copied()));
        let exact_tensors = !tensors.is_empty();
        if !exact_tensors && gguf {
            tensors = info.derived_tensors(block_count, (head_count, head_count_kv), vocab_size)?;
        }
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Ok(BaseModel {
            source,
            name: show
                .model_info
                .get("general.name")
                .and_then(Json::as_str)
                .map(str::to_string),
            arch,
            block_count,
            head_count,
            head_count_kv,
            uniform_heads: q_heads.uniform && kv_heads.uniform,
            linear_attn,
            shared_kv_layers,
            vocab_size,
            tensors,
            exact_tensors,
            gguf_path: None,
            format: Some(if show.details.format.is_empty() {
                "gguf".into()
            } else {
                show.details.format.clone()
            }),
            size_label: non_empty(&show.details.parameter_size),
            quantization: non_empty(&show.details.quantization_level),
            unknown_types,
        })
    }

    /// From the local model store: the manifest's model layer is a GGUF blob, whose header is read.
    pub fn from_store(name: &ModelName, store: &Path) -> Result<Self> {
        let manifest_path = name.manifest_path(store);
        let text = match std::fs::read_to_string(&manifest_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::invalid(
                    &manifest_path,
                    format!("the model store {} has no `{name}`", store.display()),
                )
                .with_kind(crate::ErrorKind::NotFound));
            }
            Err(e) => return Err(Error::io(&manifest_path, e)),
        };
        let manifest: ollama::Manifest = serde_json::from_str(&text)
            .map_err(|e| Error::invalid(&manifest_path, format!("not an Ollama manifest: {e}")))?;
        let layer = manifest.layers.iter().find(|l| l.media_type == ollama::MODEL_LAYER).ok_or_else(|| {
            Error::refused(
                &manifest_path,
                format!("`{name}` has no GGUF model layer ({})", ollama::MODEL_LAYER),
                "models imported from safetensors and run by the MLX runner take neither an adapter nor a GGUF merge",
            )
        })?;
        let blob = ollama::blob_path(store, &layer.digest).ok_or_else(|| {
            Error::invalid(
                &manifest_path,
                format!("layer digest `{}` is not sha256:<64 hex>", layer.digest),
            )
        })?;
        if !blob.is_file() {
            return Err(Error::invalid(
                &blob,
                format!("the store's manifest for `{name}` names this blob, which is missing"),
            )
            .with_hint(format!("pull the model again: `ollama pull {name}`"))
            .with_kind(crate::ErrorKind::NotFound));
        }
        let mut base = Self::from_gguf(&blob)?;
        base.source = PathBuf::from(name.to_string());
        Ok(base)
    }
}

/// Head count `{arch}.{key}` of a GGUF header, given once or per layer (llama.cpp reads either);
/// `None` when absent, refused when not counts from 1 to [`MAX_HEADS`].
fn gguf_heads(path: &Path, header: &gguf::Header, arch: &str, key: &str) -> Result<Option<Heads>> {
    let full = format!("{arch}.{key}");
    let Some(v) = header.get(&full) else { return Ok(None) };
    let values = match v {
        gguf::Value::Array(items) => items.as_u64s(),
        single => single.as_u64().map(|n| vec![n]),
    };
    Heads::of(values).map(Some).ok_or_else(|| {
        Error::invalid(
            path,
            format!("GGUF metadata `{full}` is not a head count from 1 to {MAX_HEADS} or a list of them"),
        )
    })
}

/// The tensors a GGUF header lists, with their shapes and types.
fn gguf_tensors(header: &gguf::Header) -> BTreeMap<String, BaseTensor> {
    header
        .tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                BaseTensor {
                    ne: t.ne.clone(),
                    ty: Some(t.ty),
                },
            )
        })
        .collect()
}

/// The architecture of a `config.json` (`cfg`: its decoder part, `root`: the whole) and the
/// `model_type` that names it; refused when it names none or one ollama-tools does not support.
fn hf_arch<'a>(path: &Path, root: &'a Json, cfg: &'a Json) -> Result<(&'static Arch, &'a str)> {
    // The wrapper's own type first: llama.cpp's converter picks the architecture by the wrapper
    // class (Mistral 3's text_config says `mistral`, yet the GGUF is `mistral3`).
    let wrapper = root
        .get("model_type")
        .and_then(Json::as_str)
        .filter(|t| arch::by_hf_model_type(t).is_some());
    let model_type = wrapper
        .or_else(|| cfg.get("model_type").and_then(Json::as_str))
        .or_else(|| root.get("model_type").and_then(Json::as_str))
        .ok_or_else(|| Error::invalid(path, "config.json has no `model_type`"))?;
    let arch = arch::by_hf_model_type(model_type).ok_or_else(|| {
        Error::refused(
            path,
            format!("model_type `{model_type}` is not an architecture ollama-tools supports"),
            format!("supported: {}", arch::supported_list()),
        )
    })?;
    Ok((arch, model_type))
}

/// The hyper-parameters of a `config.json` (`cfg`: its decoder part), per layer where layers differ;
/// refused when a field is missing, out of bounds or inconsistent.
fn hf_dims(path: &Path, arch: &Arch, model_type: &str, root: &Json, cfg: &Json) -> Result<Dims> {
    // A field the config leaves out takes its transformers config-class default where that
    // default is a number (Gemma 3's text_config omits several); bounds keep a damaged config
    // from asking for absurd tables.
    let get = |key: &str, max: u64| -> Result<Option<u64>> {
        let value = cfg_u64(cfg, key, max).map_err(|msg| Error::invalid(path, msg))?;
        Ok(value.or_else(|| hf_default(arch.name, key)))
    };
    let need = |key: &str, max: u64| {
        get(key, max)?.ok_or_else(|| Error::invalid(path, format!("config.json field `{key}` is missing")))
    };
    const DIM: u64 = MAX_DIM;
    let hidden = need("hidden_size", DIM)?;
    let n_layer = need("num_hidden_layers", MAX_LAYERS)?;
    let n_head = need("num_attention_heads", MAX_HEADS)?;
    let n_kv = get("num_key_value_heads", MAX_HEADS)?.unwrap_or(n_head);
    let head_dim = get("head_dim", DIM)?.unwrap_or(hidden / n_head);
    if head_dim == 0 {
        return Err(Error::invalid(
            path,
            format!("config.json: hidden_size {hidden} gives {n_head} attention heads no width"),
        )
        .with_hint("the config needs `head_dim`, or a hidden_size that is a multiple of num_attention_heads"));
    }
    // MoE configs may give only the experts' width (Qwen3.5-MoE): every layer is sparse then.
    let ffn = match get("intermediate_size", DIM)? {
        Some(f) => f,
        None => need("moe_intermediate_size", DIM)?,
    };
    let vocab = need("vocab_size", 1 << 24)?;
    let tied_default = arch.name.starts_with("gemma");
    let tied = cfg
        .get("tie_word_embeddings")
        .or_else(|| root.get("tie_word_embeddings"))
        .and_then(Json::as_bool)
        .unwrap_or(tied_default);

    let mut dims = Dims {
        layers: n_layer,
        hidden,
        heads: n_head,
        kv_heads: n_kv,
        head_dim,
        ffn,
        vocab,
        tied,
        ..Dims::default()
    };
    per_layer_dims(&mut dims, arch, model_type, cfg).map_err(|msg| Error::invalid(path, msg))?;
    dims.check()
        .map_err(|msg| Error::invalid(path, format!("config.json: {msg}")))?;
    Ok(dims)
}

/// Fills in what differs between layers (attention kinds, experts) for the architectures whose
/// layers differ; the message when the config does not describe a model ollama-tools handles.
fn per_layer_dims(d: &mut Dims, arch: &Arch, model_type: &str, cfg: &Json) -> std::result::Result<(), String> {
    match (arch.name, model_type) {
        ("qwen35", _) => qwen35_dims(d, cfg),
        ("qwen35moe", _) => qwen35_dims(d, cfg).and_then(|()| moe_dims(d, cfg, "qwen3_5_moe")),
        ("gemma4", _) => gemma4_dims(d, cfg),
        ("llama4", _) => llama4_dims(d, cfg),
        (_, "qwen3_moe" | "mixtral" | "gpt_oss") => moe_dims(d, cfg, model_type),
        (_, "granitemoehybrid") => granite4_dense(cfg, d),
        _ => Ok(()),
    }
}

/// A server's `model_info` for architecture `arch`, as [`BaseModel::from_show`] reads it: errors
/// name the model (`source`) and the server.
struct ModelInfo<'a> {
    info: &'a serde_json::Map<String, Json>,
    arch: &'a str,
    source: &'a Path,
    server: &'a str,
}

impl ModelInfo<'_> {
    /// The error for an answer that does not describe a usable base.
    fn bad(&self, msg: String) -> Error {
        Error::invalid(
            self.source,
            format!("{msg} (from the Ollama server at {})", self.server),
        )
    }

    /// Integer field `{arch}.{key}`; `None` when absent or not an integer.
    fn int(&self, key: &str) -> Option<u64> {
        self.info.get(&format!("{}.{key}", self.arch)).and_then(Json::as_u64)
    }

    /// Head count `{arch}.{key}`, given once or per layer; `None` when absent, refused when not
    /// counts from 1 to [`MAX_HEADS`].
    fn heads(&self, key: &str) -> Result<Option<Heads>> {
        let arch = self.arch;
        let values: Option<Vec<u64>> = match self.info.get(&format!("{arch}.{key}")) {
            None | Some(Json::Null) => return Ok(None),
            Some(Json::Array(items)) => items.iter().map(Json::as_u64).collect(),
            Some(v) => v.as_u64().map(|n| vec![n]),
        };
        Heads::of(values).map(Some).ok_or_else(|| {
            self.bad(format!(
                "`{arch}.{key}` is not a head count from 1 to {MAX_HEADS} or a list of them"
            ))
        })
    }

    /// Refuses a GGUF model whose block count is out of bounds or whose attention head count is
    /// unknown (`q_heads.max` 0).
    fn check_layout(&self, block_count: u64, q_heads: Heads) -> Result<()> {
        let arch = self.arch;
        bounded(&format!("{arch}.block_count"), block_count, MAX_LAYERS)
            .map_err(|msg| self.bad(format!("{msg} (missing or not an integer reads as 0)")))?;
        if q_heads.max == 0 {
            return Err(self
                .bad(format!(
                    "`{arch}.attention.head_count` is missing: the base's attention layout is unknown"
                ))
                .with_hint("pass the model's GGUF file as --base"));
        }
        Ok(())
    }

    /// The tensors the server lists, and those of a type this tool does not know (`tensor: type`);
    /// refused when a shape is not 1 to 4 non-zero dimensions.
    fn listed_tensors(&self, listed: &[ollama::ShowTensor]) -> Result<(BTreeMap<String, BaseTensor>, Vec<String>)> {
        if let Some(t) = listed.iter().find(|t| !plausible_shape(&t.shape)) {
            return Err(self.bad(format!(
                "tensor `{}` has shape {:?}; expected 1 to 4 non-zero dimensions",
                t.name, t.shape
            )));
        }
        let mut unknown_types = Vec::new();
        let tensors = listed
            .iter()
            .map(|t| {
                let ty = GgmlType::from_name(&t.ty);
                if ty.is_none() {
                    unknown_types.push(format!("{}: {}", t.name, t.ty));
                }
                (
                    t.name.clone(),
                    BaseTensor {
                        ne: t.shape.clone(),
                        ty,
                    },
                )
            })
            .collect();
        Ok((tensors, unknown_types))
    }

    /// The tensors of a GGUF model the server lists none of, derived from `model_info` (none where it
    /// says too little); refused for architectures whose layers differ, and for sizes out of bounds.
    fn derived_tensors(
        &self,
        block_count: u64,
        (head_count, head_count_kv): (u64, u64),
        vocab_size: Option<u64>,
    ) -> Result<BTreeMap<String, BaseTensor>> {
        let arch = self.arch;
        if matches!(arch, "qwen35" | "qwen35moe" | "gemma4" | "llama4") {
            return Err(self
                .bad(format!(
                    "the server lists no tensors, and the layers of `{arch}` models differ from one another"
                ))
                .with_hint(
                    "use an Ollama that answers /api/show with verbose tensors, or pass the model's GGUF file as --base",
                ));
        }
        let (Some(arch_spec), Some(hidden), Some(vocab)) =
            (arch::by_name(arch), self.int("embedding_length"), vocab_size)
        else {
            return Ok(BTreeMap::new());
        };
        let dims = Dims {
            layers: block_count,
            hidden,
            heads: head_count,
            kv_heads: head_count_kv,
            head_dim: self.int("attention.key_length").unwrap_or(hidden / head_count),
            ffn: self.int("feed_forward_length").unwrap_or(0),
            vocab,
            // Unknown without a tensor list: assume tied, so an embedding or lm_head LoRA is
            // refused rather than handed to llama.cpp on a guess.
            tied: true,
            experts: self.int("expert_count").unwrap_or(0),
            expert_ffn: self
                .int("expert_feed_forward_length")
                .or(self.int("feed_forward_length"))
                .unwrap_or(0),
            ..Dims::default()
        };
        dims.check().map_err(|msg| {
            self.bad(format!(
                "the server lists no tensors, and their shapes cannot be derived from model_info: {msg}"
            ))
        })?;
        Ok(derive_tensors(arch_spec, &dims))
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
        assert!(
            !base.tensors.contains_key("output.weight"),
            "tied embeddings have no output tensor"
        );
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
        assert_eq!(
            (base.arch.as_str(), base.head_count, base.head_count_kv, base.vocab_size),
            ("gemma3", 8, 4, Some(262_208))
        );
        assert_eq!(base.tensors["blk.0.attn_q.weight"].ne, vec![2560, 8 * 256]);
        assert!(
            !base.tensors.contains_key("output.weight"),
            "Gemma ties embeddings by default"
        );
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
        assert!(
            err.contains("num_hidden_layers") && err.contains("from 1 to 4096"),
            "{err}"
        );
    }

    #[test]
    fn per_layer_head_counts_in_gguf() {
        use crate::formats::gguf::{Array, TensorSpec, Value, Writer};
        let write = |kv: Value| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("b.gguf");
            let kvs = vec![
                ("general.architecture".to_string(), Value::String("llama".into())),
                ("llama.block_count".to_string(), Value::U32(2)),
                ("llama.attention.head_count".to_string(), Value::U32(4)),
                ("llama.attention.head_count_kv".to_string(), kv),
            ];
            let specs = [TensorSpec {
                name: "token_embd.weight".into(),
                ne: vec![8, 4],
                ty: GgmlType::F32,
            }];
            let mut w = Writer::new(std::fs::File::create(&path).unwrap(), &kvs, &specs).unwrap();
            w.write_tensor(&[0u8; 128]).unwrap();
            w.finish().unwrap();
            (dir, BaseModel::load(&path))
        };
        let (_d, same) = write(Value::Array(Array::U32(vec![2, 2])));
        let same = same.unwrap();
        assert_eq!((same.head_count_kv, same.geometry().head_count_kv), (2, Some(2)));
        // Layers without attention (0) do not make the counts differ.
        let (_d, hybrid) = write(Value::Array(Array::U32(vec![0, 2])));
        assert_eq!(hybrid.unwrap().geometry().head_count_kv, Some(2));
        // Differing counts (Gemma 4) load; the Q/K order, which needs one count, is then unknown.
        let (_d, differ) = write(Value::Array(Array::U32(vec![2, 1])));
        let differ = differ.unwrap();
        assert_eq!((differ.head_count_kv, differ.geometry().head_count_kv), (2, None));
        let (_d, bad) = write(Value::Array(Array::String(["x"].into_iter().collect())));
        let err = bad.unwrap_err().to_string();
        assert!(
            err.contains("head_count_kv") && err.contains("not a head count"),
            "{err}"
        );
    }

    #[test]
    fn unsupported_model_type_lists_the_supported_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), r#"{"model_type":"gpt2","n_embd":768}"#).unwrap();
        let err = BaseModel::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("`gpt2`") && err.contains("qwen2 (Qwen2, Qwen2.5)"),
            "{err}"
        );
    }

    fn show(info: serde_json::Value, tensors: serde_json::Value) -> Result<BaseModel> {
        let show: ollama::Show = serde_json::from_value(serde_json::json!({
            "details": {"format": "gguf", "family": "llama"}, "model_info": info, "tensors": tensors
        }))
        .unwrap();
        BaseModel::from_show(&ModelName::parse("m").unwrap(), &show, "http://127.0.0.1:1")
    }

    /// A show answer without tensors used to derive 100,000,000 layers of shapes (memory without
    /// bound); counts are bounded as for config.json, and zero sizes refused up front.
    #[test]
    fn absurd_show_answers_are_refused_up_front() {
        let info = |layers: u64, heads: Option<u64>, ffn: u64| {
            let mut v = serde_json::json!({"general.architecture": "llama", "llama.block_count": layers,
                "llama.embedding_length": 64, "llama.feed_forward_length": ffn, "llama.vocab_size": 100});
            if let Some(h) = heads {
                v["llama.attention.head_count"] = h.into();
            }
            v
        };
        let err = show(info(100_000_000, Some(4), 128), serde_json::json!([]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`llama.block_count` is 100000000; expected a count from 1 to 4096"),
            "{err}"
        );
        let err = show(info(2, None, 128), serde_json::json!([])).unwrap_err().to_string();
        assert!(err.contains("`llama.attention.head_count` is missing"), "{err}");
        let err = show(info(2, Some(0), 128), serde_json::json!([]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("head_count` is not a head count from 1 to 4096"), "{err}");
        // No feed_forward_length: derived MLP shapes would be [64, 0].
        let err = show(info(2, Some(4), 0), serde_json::json!([]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot be derived") && err.contains("feed-forward size` is 0"),
            "{err}"
        );
        let t = serde_json::json!([{"name": "blk.0.attn_q.weight", "type": "F16", "shape": [64, 0]}]);
        let err = show(info(2, Some(4), 128), t).unwrap_err().to_string();
        assert!(err.contains("`blk.0.attn_q.weight` has shape [64, 0]"), "{err}");
        assert_eq!(
            show(info(2, Some(4), 128), serde_json::json!([])).unwrap().tensors["blk.1.ffn_up.weight"].ne,
            [64, 128]
        );
    }

    #[test]
    fn hf_config_whose_heads_have_no_width_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"model_type":"llama","hidden_size":2,"num_hidden_layers":1,"num_attention_heads":4,
                "intermediate_size":128,"vocab_size":100}"#,
        )
        .unwrap();
        let err = BaseModel::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("gives 4 attention heads no width"), "{err}");
    }
}
