//! The per-tensor type mix of a quantization scheme (`q4_k_m`, `q5_k_s`, `q8_0` ...), decided exactly
//! as `llama-quantize` decides it without an importance matrix, so that `merge --quantize` writes the
//! file llama.cpp's quantizer would write from the same merged weights.
//!
//! Written from llama.cpp's `src/llama-quant.cpp` (as vendored by llama-cpp-python 0.3.36):
//! `tensor_allows_quantization` (what is never quantized: 1-d tensors, norms, routers ...),
//! `llama_tensor_get_type_impl` (which tensors get more bits on which layers), `tensor_type_fallback`
//! (rows that do not divide into blocks) and `init_quantize_state_counters`. Several decisions
//! depend on counters llama.cpp advances tensor by tensor (the n-th `attn_v` seen, the n-th
//! `ffn_down`), so the tensors are visited in llama.cpp's order: its loader's map sorts them by
//! block number (non-block tensors first), then by name.
//!
//! Only what the supported schemes reach is carried over; the IQ schemes and the ones that need an
//! importance matrix are refused when the scheme is parsed.

use crate::formats::gguf::{GgmlType, Header};

/// A `llama-quantize` file type this tool writes (spelt as llama.cpp's `LLAMA_FTYPE_MOSTLY_*`, so
/// the rules below read like its source). The type a scheme names is what most tensors get; tensors
/// llama-quantize never quantizes (1-d, norms, routers ...) keep theirs, the output matrix usually
/// gets Q6_K, and which tensors get more bits also depends on the architecture, the layer count and
/// the expert count, as in llama.cpp. Bits per weight include the blocks' scales.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// f32 for every tensor llama-quantize quantizes.
    F32,
    /// f16 for every tensor llama-quantize quantizes.
    F16,
    /// bf16 for every tensor llama-quantize quantizes.
    BF16,
    /// Q4_0: 4.5 bits per weight.
    Q4_0,
    /// Q4_1: 5 bits per weight.
    Q4_1,
    /// Q5_0: 5.5 bits per weight.
    Q5_0,
    /// Q5_1: 6 bits per weight.
    Q5_1,
    /// Q8_0: 8.5 bits per weight, the output matrix included.
    Q8_0,
    /// Q2_K (2.625 bits per weight), with Q3_K or Q4_K for attn_v and Q3_K for attn_output and ffn_down.
    Q2_K,
    /// Q3_K (3.44 bits per weight), the small mix: Q3_K nearly throughout.
    Q3_K_S,
    /// Q3_K, the medium mix: Q4_K or Q5_K for attn_v, attn_output and ffn_down.
    Q3_K_M,
    /// Q3_K, the large mix: Q5_K for attn_v, attn_output and ffn_down.
    Q3_K_L,
    /// Q4_K (4.5 bits per weight), with Q5_K for the first layers' attn_v and ffn_down.
    Q4_K_S,
    /// Q4_K, with Q6_K for half the layers' attn_v and ffn_down.
    Q4_K_M,
    /// Q5_K (5.5 bits per weight), the small mix: Q5_K nearly throughout.
    Q5_K_S,
    /// Q5_K, with Q6_K for half the layers' attn_v and ffn_down.
    Q5_K_M,
    /// Q6_K: 6.5625 bits per weight.
    Q6_K,
    /// MXFP4 (4.25 bits per weight) for stacked expert tensors, Q8_0 for everything else.
    MXFP4_MOE,
}

/// Every scheme with its name and `LLAMA_FTYPE_*` value (`general.file_type`, llama.h).
const SCHEMES: [(Scheme, &str, u32); 18] = [
    (Scheme::F32, "f32", 0),
    (Scheme::F16, "f16", 1),
    (Scheme::Q4_0, "q4_0", 2),
    (Scheme::Q4_1, "q4_1", 3),
    (Scheme::Q8_0, "q8_0", 7),
    (Scheme::Q5_0, "q5_0", 8),
    (Scheme::Q5_1, "q5_1", 9),
    (Scheme::Q2_K, "q2_k", 10),
    (Scheme::Q3_K_S, "q3_k_s", 11),
    (Scheme::Q3_K_M, "q3_k_m", 12),
    (Scheme::Q3_K_L, "q3_k_l", 13),
    (Scheme::Q4_K_S, "q4_k_s", 14),
    (Scheme::Q4_K_M, "q4_k_m", 15),
    (Scheme::Q5_K_S, "q5_k_s", 16),
    (Scheme::Q5_K_M, "q5_k_m", 17),
    (Scheme::Q6_K, "q6_k", 18),
    (Scheme::BF16, "bf16", 32),
    (Scheme::MXFP4_MOE, "mxfp4_moe", 38),
];

/// llama-quantize's aliases: a K type without a size letter is its `_m` scheme.
const ALIASES: [(&str, Scheme); 3] = [
    ("q3_k", Scheme::Q3_K_M),
    ("q4_k", Scheme::Q4_K_M),
    ("q5_k", Scheme::Q5_K_M),
];

/// The version of the quantized block formats llama-quantize records (`GGML_QNT_VERSION`).
pub(crate) const QUANTIZATION_VERSION: u32 = 2;

impl Scheme {
    /// Parses a scheme name as llama-quantize spells it (any case); IQ / TQ schemes and the ones that
    /// need an importance matrix are refused with the reason.
    pub(crate) fn parse(text: &str) -> Result<Scheme, String> {
        let lower = text.trim().to_ascii_lowercase();
        if let Some(&(s, _, _)) = SCHEMES.iter().find(|(_, n, _)| *n == lower) {
            return Ok(s);
        }
        if let Some(&(_, s)) = ALIASES.iter().find(|(n, _)| *n == lower) {
            return Ok(s);
        }
        Err(refusal(&lower).unwrap_or_else(|| format!("`{text}` is not a quantization type; {}", supported_list())))
    }

    pub(crate) fn name(self) -> &'static str {
        SCHEMES.iter().find(|(s, _, _)| *s == self).map_or("", |e| e.1)
    }

    /// `general.file_type` of a file written with this scheme (`LLAMA_FTYPE_MOSTLY_*`).
    pub(crate) fn file_type(self) -> u32 {
        SCHEMES.iter().find(|(s, _, _)| *s == self).map_or(0, |e| e.2)
    }

    /// `llama_ftype_get_default_type`: the type of every quantizable tensor no rule changes.
    fn default_type(self) -> GgmlType {
        match self {
            Scheme::F32 => GgmlType::F32,
            Scheme::F16 => GgmlType::F16,
            Scheme::BF16 => GgmlType::BF16,
            Scheme::Q4_0 => GgmlType::Q4_0,
            Scheme::Q4_1 => GgmlType::Q4_1,
            Scheme::Q5_0 => GgmlType::Q5_0,
            Scheme::Q5_1 => GgmlType::Q5_1,
            Scheme::Q8_0 => GgmlType::Q8_0,
            Scheme::Q2_K => GgmlType::Q2_K,
            Scheme::Q3_K_S | Scheme::Q3_K_M | Scheme::Q3_K_L => GgmlType::Q3_K,
            Scheme::Q4_K_S | Scheme::Q4_K_M => GgmlType::Q4_K,
            Scheme::Q5_K_S | Scheme::Q5_K_M => GgmlType::Q5_K,
            Scheme::Q6_K => GgmlType::Q6_K,
            Scheme::MXFP4_MOE => GgmlType::MXFP4,
        }
    }
}

impl std::fmt::Display for Scheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name().to_ascii_uppercase())
    }
}

fn supported_list() -> String {
    let names: Vec<&str> = SCHEMES.iter().map(|e| e.1).collect();
    format!("supported: {}", names.join(", "))
}

/// Why a scheme llama-quantize knows is not written here, or `None` for an unknown name.
fn refusal(name: &str) -> Option<String> {
    let hint = "merge to f16 (--quantize f16) and run llama-quantize with --imatrix on the result";
    if name.starts_with("iq") {
        return Some(format!(
            "{name} is an IQ type: IQ quantization needs an importance matrix (imatrix) computed by running \
             the model on sample text, and this tool computes none and has no IQ quantizers; {hint}"
        ));
    }
    if name == "q2_k_s" {
        return Some(format!(
            "q2_k_s needs an importance matrix (llama-quantize refuses it without --imatrix), and this tool \
             computes none; use q2_k, or {hint}"
        ));
    }
    if matches!(name, "tq1_0" | "tq2_0" | "q1_0" | "q2_0" | "nvfp4") {
        return Some(format!(
            "{name} is a ternary / sub-2-bit type for models trained for it, which this tool does not write; {}",
            supported_list()
        ));
    }
    None
}

/// What the mix needs to know of the model (llama.cpp reads it from the same keys).
#[derive(Clone, Debug, Default)]
pub(crate) struct Model {
    pub(crate) arch: String,
    /// `block_count`: llama.cpp's `n_layer_all`, the layer count of the `ffn_*` rules.
    pub(crate) n_layer_all: i64,
    /// Blocks without the next-token-prediction ones (`n_layer()`, for the 70B rule).
    pub(crate) n_layer: i64,
    pub(crate) n_expert: i64,
    pub(crate) n_head: i64,
    pub(crate) n_head_kv: i64,
}

impl Model {
    pub(crate) fn from_header(h: &Header) -> Model {
        let arch = h.get_str("general.architecture").unwrap_or_default().to_string();
        // A per-layer array (Deci) counts by its first layer, as llama.cpp's n_head() does.
        let key = |k: &str| {
            h.get(&format!("{arch}.{k}")).and_then(|v| {
                v.as_u64()
                    .or_else(|| v.as_array().and_then(|a| a.as_u64s()).and_then(|v| v.first().copied()))
            })
        };
        let n_layer_all = key("block_count").unwrap_or(0) as i64;
        let n_head = key("attention.head_count").unwrap_or(0) as i64;
        Model {
            n_layer: n_layer_all - key("nextn_predict_layers").unwrap_or(0) as i64,
            n_layer_all,
            n_expert: key("expert_count").unwrap_or(0) as i64,
            n_head,
            n_head_kv: key("attention.head_count_kv").map_or(n_head, |v| v as i64),
            arch,
        }
    }

    fn n_gqa(&self) -> i64 {
        if self.n_head_kv == 0 {
            0
        } else {
            self.n_head / self.n_head_kv
        }
    }

    /// llama.cpp's `LLM_TYPE_70B` (set per arch in `load_arch_hparams`): its attn_v gets Q5_K.
    fn is_70b(&self) -> bool {
        match self.arch.as_str() {
            "llama" => self.n_expert != 8 && self.n_layer == 80 && self.n_head != self.n_head_kv,
            "qwen2" | "deci" | "olmo" => self.n_layer == 80,
            "jais2" => self.n_layer == 68,
            _ => false,
        }
    }
}

/// One tensor as the mix sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tensor<'a> {
    pub(crate) name: &'a str,
    /// ggml order: `ne[0]` is the row length.
    pub(crate) ne: &'a [u64],
    pub(crate) ty: GgmlType,
}

/// The type llama-quantize gives each tensor (same order as `tensors`): for tensors it does not
/// quantize, their own type. Errs where llama.cpp would (an expert model's FFN tensor without a block
/// number).
pub(crate) fn plan(scheme: Scheme, model: &Model, tensors: &[Tensor]) -> Result<Vec<GgmlType>, String> {
    let mut state = State::new(model, tensors);
    let mut out: Vec<GgmlType> = tensors.iter().map(|t| t.ty).collect();
    for i in llama_order(tensors) {
        out[i] = state.tensor_type(scheme, &tensors[i])?;
    }
    Ok(out)
}

/// Indexes of `tensors` in llama.cpp's loader order (`weight_name_comparer`): by block number, the
/// tensors outside blocks first, then by name.
fn llama_order(tensors: &[Tensor]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&a, &b| {
        let key = |i: usize| (block_of(tensors[i].name).unwrap_or(-1), tensors[i].name);
        key(a).cmp(&key(b))
    });
    order
}

/// The block number of `blk.N.…` (what `sscanf(name, "blk.%d.", …)` assigns).
fn block_of(name: &str) -> Option<i64> {
    let rest = name.strip_prefix("blk.")?.trim_start();
    let digits = rest
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || (i == 0 && matches!(c, '+' | '-'))))
        .map_or(rest.len(), |(i, _)| i);
    rest[..digits].parse().ok()
}

/// llama.cpp's broad tensor categories (`tensor_get_category`), in its order of tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Category {
    TokenEmbd,
    AttnQ,
    AttnV,
    AttnK,
    AttnQkv,
    AttnKvB,
    AttnOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Output,
    Other,
}

fn category(name: &str) -> Category {
    if name == "output.weight" {
        return Category::Output;
    }
    if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        return Category::TokenEmbd;
    }
    let rules = [
        ("attn_qkv.weight", Category::AttnQkv),
        ("attn_kv_b.weight", Category::AttnKvB),
        ("attn_v.weight", Category::AttnV),
        ("attn_k.weight", Category::AttnK),
        ("attn_q.weight", Category::AttnQ),
        ("attn_output.weight", Category::AttnOutput),
        ("ffn_up", Category::FfnUp),
        ("ffn_gate", Category::FfnGate),
        ("ffn_down", Category::FfnDown),
    ];
    rules
        .iter()
        .find(|(part, _)| name.contains(part))
        .map_or(Category::Other, |&(_, c)| c)
}

/// attn_v-like tensors, which llama.cpp counts and treats together (so attn_qkv never reaches its
/// own, later, rule).
fn is_attn_v(c: Category) -> bool {
    matches!(c, Category::AttnV | Category::AttnQkv | Category::AttnKvB)
}

/// `ggml_n_dims`: trailing dimensions of 1 do not count.
fn n_dims(ne: &[u64]) -> usize {
    ne.iter().rposition(|&d| d > 1).map_or(1, |i| i + 1)
}

/// Name parts `tensor_allows_quantization` never quantizes (besides norms, routers and the rest below).
const NEVER: [&str; 30] = [
    "ffn_gate_inp.weight",
    "ffn_gate_tid2eid.weight",
    "altup",
    "laurel",
    "per_layer_model_proj",
    "ssm_conv1d",
    "shortconv.conv.weight",
    "indexer.k_proj.weight",
    "indexer.q_proj.weight",
    "time_mix_first.weight",
    "time_mix_w0.weight",
    "time_mix_w1.weight",
    "time_mix_w2.weight",
    "time_mix_v0.weight",
    "time_mix_v1.weight",
    "time_mix_v2.weight",
    "time_mix_a0.weight",
    "time_mix_a1.weight",
    "time_mix_a2.weight",
    "time_mix_g1.weight",
    "time_mix_g2.weight",
    "time_mix_decay_w1.weight",
    "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight",
    "attn_rel_b.weight",
    ".position_embd",
    "sam.pos_embd",
    "sam.neck.",
    "sam.net_",
    ".rel_pos",
];

/// More multimodal / audio parts, and GLM-5-next's own.
const NEVER_MORE: [&str; 4] = [".patch_embd", ".patch_merger", "a.rvq.codebook", "mm.a.code_embd"];
const NEVER_GLM5_NEXT: [&str; 14] = [
    "hc_",
    "indexer.attn_q_b",
    "indexer.attn_k",
    "indexer.proj",
    "indexer_compressor_gate",
    "indexer_compressor_ape",
    "ssm_f_a.weight",
    "ssm_f_b.weight",
    "ssm_g_a.weight",
    "ssm_g_b.weight",
    "ssm_beta.weight",
    "attn_kv_a_mqa.weight",
    "attn_k_b.weight",
    "attn_v_b.weight",
];

/// `tensor_allows_quantization` with llama-quantize's default parameters.
fn allows_quantization(arch: &str, t: &Tensor) -> bool {
    let name = t.name;
    if n_dims(t.ne) < 2 || !name.ends_with("weight") || name.contains("_norm.weight") {
        return false;
    }
    if name == "position_embd.weight" || name == "token_types.weight" {
        return false;
    }
    let glm5 = if arch == "glm5-next" { &NEVER_GLM5_NEXT[..] } else { &[] };
    !NEVER
        .iter()
        .chain(NEVER_MORE.iter())
        .chain(glm5)
        .any(|p| name.contains(p))
}

/// `use_more_bits`: the first and last eighth of the layers, and every third one between.
fn use_more_bits(i_layer: i64, n_layers: i64) -> bool {
    i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2
}

/// llama.cpp's `quantize_state_impl`: the counters of tensors seen so far.
struct State<'a> {
    model: &'a Model,
    n_attention_wv: i64,
    i_attention_wv: i64,
    i_ffn_down: i64,
    i_ffn_gate: i64,
    i_ffn_up: i64,
    tied_embeddings: bool,
}

impl<'a> State<'a> {
    /// `init_quantize_state_counters`: the attn_v-like tensors counted, untied if `output.weight` exists.
    fn new(model: &'a Model, tensors: &[Tensor]) -> Self {
        State {
            model,
            n_attention_wv: tensors.iter().filter(|t| is_attn_v(category(t.name))).count() as i64,
            i_attention_wv: 0,
            i_ffn_down: 0,
            i_ffn_gate: 0,
            i_ffn_up: 0,
            tied_embeddings: !tensors.iter().any(|t| category(t.name) == Category::Output),
        }
    }

    /// `llama_tensor_get_type`: kept, the scheme's float type, or the mix's choice with its fallback.
    fn tensor_type(&mut self, scheme: Scheme, t: &Tensor) -> Result<GgmlType, String> {
        if !allows_quantization(&self.model.arch, t) {
            return Ok(t.ty);
        }
        let default = scheme.default_type();
        if crate::engine::quant::block_len(default) == 1 {
            return Ok(default);
        }
        let chosen = self.mix_type(scheme, default, t)?;
        Ok(fallback(t.ne[0], chosen))
    }

    /// `llama_tensor_get_type_impl`, the branches the supported schemes reach.
    fn mix_type(&mut self, scheme: Scheme, default: GgmlType, t: &Tensor) -> Result<GgmlType, String> {
        let name = t.name;
        let cat = category(name);
        let arch = self.model.arch.as_str();
        if arch == "glm5-next"
            && ["attn_q_a", "attn_q_b", "nextn.eh_proj"]
                .iter()
                .any(|p| name.contains(p))
        {
            return Ok(GgmlType::Q8_0);
        }
        if cat == Category::Output || (self.tied_embeddings && cat == Category::TokenEmbd) {
            return Ok(output_type(scheme, default, arch, t.ne[0]));
        }
        if scheme == Scheme::MXFP4_MOE {
            return Ok(mxfp4_moe_type(arch, cat, t.ne));
        }
        Ok(match cat {
            Category::TokenEmbd => default,
            c if is_attn_v(c) => self.attn_v_type(scheme, default),
            Category::AttnK if self.model.n_expert == 8 => GgmlType::Q8_0,
            Category::FfnDown => {
                let (i, n) = self.layer(self.i_ffn_down, name)?;
                self.i_ffn_down += 1;
                ffn_down_type(scheme, default, arch == "falcon", i, n)
            }
            Category::AttnOutput => attn_output_type(scheme, default, arch == "falcon", self.model.n_expert),
            Category::FfnGate => {
                // Only IQ3_XS changes these; the counter and llama.cpp's layer check still run.
                self.layer(self.i_ffn_gate, name)?;
                self.i_ffn_gate += 1;
                default
            }
            Category::FfnUp => {
                self.layer(self.i_ffn_up, name)?;
                self.i_ffn_up += 1;
                default
            }
            _ => default,
        })
    }

    /// attn_v, attn_qkv, attn_kv_b: more bits on some layers, Q8_0 for 8-expert models.
    fn attn_v_type(&mut self, scheme: Scheme, default: GgmlType) -> GgmlType {
        let (i, n) = (self.i_attention_wv, self.n_attention_wv);
        let mut ty = match scheme {
            Scheme::Q2_K if self.model.n_gqa() >= 4 => GgmlType::Q4_K,
            Scheme::Q2_K => GgmlType::Q3_K,
            Scheme::Q3_K_M if i < 2 => GgmlType::Q5_K,
            Scheme::Q3_K_M => GgmlType::Q4_K,
            Scheme::Q3_K_L => GgmlType::Q5_K,
            Scheme::Q4_K_M | Scheme::Q5_K_M if use_more_bits(i, n) => GgmlType::Q6_K,
            Scheme::Q4_K_S if i < 4 => GgmlType::Q5_K,
            _ => default,
        };
        // 70B: 8 heads share each attn_v, so it is 8x smaller than attn_q and more bits cost little.
        if self.model.is_70b() && matches!(ty, GgmlType::Q3_K | GgmlType::Q4_K) {
            ty = GgmlType::Q5_K;
        }
        if self.model.n_expert == 8 {
            ty = GgmlType::Q8_0;
        }
        self.i_attention_wv += 1;
        ty
    }

    /// `layer_info`: the counter for dense models; for expert models the block number in the name
    /// (Mixtral's experts are not stored in layer order).
    fn layer(&self, counter: i64, name: &str) -> Result<(i64, i64), String> {
        let n = self.model.n_layer_all;
        if self.model.n_expert <= 1 {
            return Ok((counter, n));
        }
        let i = block_of(name).ok_or_else(|| format!("cannot tell the layer of `{name}` (no `blk.N.` prefix)"))?;
        if i < 0 || i >= n {
            return Err(format!(
                "`{name}` is in layer {i}, outside the model's {n} layers (block_count)"
            ));
        }
        Ok((i, n))
    }
}

/// The output matrix (and a tied token embedding): Q6_K unless the scheme is Q8_0, Q8_0 where rows
/// do not divide into the scheme's blocks (or for Falcon).
fn output_type(scheme: Scheme, default: GgmlType, arch: &str, ne0: u64) -> GgmlType {
    let block = crate::engine::quant::block_len(default) as u64;
    if scheme == Scheme::MXFP4_MOE || arch == "falcon" || !ne0.is_multiple_of(block) {
        GgmlType::Q8_0
    } else if default != GgmlType::Q8_0 {
        GgmlType::Q6_K
    } else {
        default
    }
}

/// MXFP4_MOE: stacked experts in MXFP4, everything else Q8_0.
fn mxfp4_moe_type(arch: &str, cat: Category, ne: &[u64]) -> GgmlType {
    let expert_role = matches!(cat, Category::FfnUp | Category::FfnGate | Category::FfnDown);
    let stacked = ne.get(2).is_some_and(|&n| n > 1);
    if stacked && (arch != "bailingmoe3" || expert_role) {
        GgmlType::MXFP4
    } else {
        GgmlType::Q8_0
    }
}

fn ffn_down_type(scheme: Scheme, default: GgmlType, falcon: bool, i: i64, n: i64) -> GgmlType {
    let more = use_more_bits(i, n);
    match scheme {
        Scheme::Q2_K => GgmlType::Q3_K,
        Scheme::Q3_K_M if i < n / 16 => GgmlType::Q5_K,
        Scheme::Q3_K_M if !falcon || more => GgmlType::Q4_K,
        Scheme::Q3_K_M => GgmlType::Q3_K,
        Scheme::Q3_K_L if falcon => GgmlType::Q4_K,
        Scheme::Q3_K_L => GgmlType::Q5_K,
        Scheme::Q4_K_M if falcon && i < n / 16 => GgmlType::Q6_K,
        Scheme::Q4_K_M if falcon && more => GgmlType::Q5_K,
        Scheme::Q4_K_M if falcon => GgmlType::Q4_K,
        Scheme::Q4_K_M | Scheme::Q5_K_M if more => GgmlType::Q6_K,
        Scheme::Q4_K_S if !falcon && i < n / 8 => GgmlType::Q5_K,
        _ => default,
    }
}

fn attn_output_type(scheme: Scheme, default: GgmlType, falcon: bool, n_expert: i64) -> GgmlType {
    use Scheme::*;
    match (falcon, n_expert == 8, scheme) {
        (false, true, Q2_K | Q3_K_S | Q3_K_M | Q4_K_S | Q4_K_M) => GgmlType::Q5_K,
        (false, false, Q2_K) => GgmlType::Q3_K,
        (false, false, Q3_K_M) => GgmlType::Q4_K,
        (false, false, Q3_K_L) => GgmlType::Q5_K,
        (true, _, Q3_K_L) => GgmlType::Q4_K,
        _ => default,
    }
}

/// `tensor_type_fallback`: a type whose blocks the rows divide into (K types fall back to a 32-value
/// type of about as many bits), F16 where not even 32 divides them.
fn fallback(ne0: u64, ty: GgmlType) -> GgmlType {
    let fits = |t: GgmlType| ne0.is_multiple_of(crate::engine::quant::block_len(t) as u64);
    if fits(ty) {
        return ty;
    }
    let smaller = match ty {
        GgmlType::Q2_K | GgmlType::Q3_K => GgmlType::Q4_0,
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        other => other,
    };
    if fits(smaller) { smaller } else { GgmlType::F16 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t<'a>(name: &'a str, ne: &'a [u64]) -> Tensor<'a> {
        Tensor {
            name,
            ne,
            ty: GgmlType::F16,
        }
    }

    #[test]
    fn loader_order_is_by_block_then_name() {
        let names = [
            "blk.10.attn_v.weight",
            "output.weight",
            "blk.2.attn_v.weight",
            "blk.2.attn_k.weight",
        ];
        let ts: Vec<Tensor> = names.iter().map(|n| t(n, &[256, 256])).collect();
        let order: Vec<&str> = llama_order(&ts).into_iter().map(|i| names[i]).collect();
        assert_eq!(
            order,
            [
                "output.weight",
                "blk.2.attn_k.weight",
                "blk.2.attn_v.weight",
                "blk.10.attn_v.weight"
            ]
        );
    }

    #[test]
    fn use_more_bits_matches_llama_cpp_for_32_layers() {
        let more: Vec<i64> = (0..32).filter(|&i| use_more_bits(i, 32)).collect();
        assert_eq!(more, [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]);
    }

    #[test]
    fn fallbacks_for_rows_that_do_not_divide() {
        assert_eq!(fallback(96, GgmlType::Q4_K), GgmlType::Q5_0);
        assert_eq!(fallback(96, GgmlType::Q5_K), GgmlType::Q5_1);
        assert_eq!(fallback(96, GgmlType::Q6_K), GgmlType::Q8_0);
        assert_eq!(fallback(96, GgmlType::Q3_K), GgmlType::Q4_0);
        assert_eq!(fallback(100, GgmlType::Q6_K), GgmlType::F16);
        assert_eq!(fallback(100, GgmlType::Q8_0), GgmlType::F16);
        assert_eq!(fallback(512, GgmlType::Q4_K), GgmlType::Q4_K);
    }

    #[test]
    fn never_quantized() {
        for (name, ne) in [
            ("blk.0.attn_norm.weight", &[256u64][..]),
            ("blk.0.ffn_gate_inp.weight", &[256, 8][..]),
            ("blk.0.attn_q.bias", &[256, 2][..]),
            ("blk.0.attn_q.weight", &[256, 1][..]),
        ] {
            assert!(!allows_quantization("llama", &t(name, ne)), "{name}");
        }
        assert!(allows_quantization(
            "llama",
            &t("blk.0.ffn_gate_inp_shexp.weight", &[256, 8])
        ));
    }

    #[test]
    fn q4_k_m_mix_of_a_dense_model() {
        let model = Model {
            arch: "llama".into(),
            n_layer_all: 8,
            n_layer: 8,
            n_head: 4,
            n_head_kv: 2,
            ..Default::default()
        };
        let mut names = vec!["token_embd.weight".to_string()];
        for i in 0..8 {
            names.push(format!("blk.{i}.attn_v.weight"));
            names.push(format!("blk.{i}.ffn_down.weight"));
        }
        let ts: Vec<Tensor> = names.iter().map(|n| t(n, &[256, 256])).collect();
        let types = plan(Scheme::Q4_K_M, &model, &ts).unwrap();
        // Tied: the token embedding takes the output's Q6_K; layers 0, 3, 6, 7 get more bits.
        assert_eq!(types[0], GgmlType::Q6_K);
        let q6: Vec<usize> = (0..8).filter(|&i| types[1 + 2 * i] == GgmlType::Q6_K).collect();
        assert_eq!(q6, [0, 3, 6, 7]);
        assert_eq!(types[1 + 2], GgmlType::Q4_K);
    }

    #[test]
    fn refusals_say_why() {
        assert!(Scheme::parse("IQ4_XS").unwrap_err().contains("importance matrix"));
        assert!(Scheme::parse("q2_k_s").unwrap_err().contains("importance matrix"));
        assert!(Scheme::parse("q9").unwrap_err().contains("supported: f32"));
        assert_eq!(Scheme::parse("Q4_K").unwrap(), Scheme::Q4_K_M);
        assert_eq!(Scheme::Q4_K_M.file_type(), 15);
    }
}
