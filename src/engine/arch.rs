//! Architecture tables: which Hugging Face module becomes which GGUF tensor, per llama.cpp
//! architecture (`general.architecture`), and which layout changes llama.cpp's own model converter
//! makes that a LoRA must follow.
//!
//! Checked against llama.cpp's tensor map (`gguf-py/gguf/tensor_mapping.py`) and its model
//! converter: every supported architecture names its per-layer tensors `blk.{i}.{stem}.weight`.

/// One architecture llama.cpp runs and we can write adapters for.
#[derive(Debug)]
pub struct Arch {
    /// `general.architecture` in GGUF.
    pub(crate) name: &'static str,
    /// Hugging Face `config.json` `model_type` values (top level or `text_config`) that llama.cpp's
    /// converter turns into this architecture (Mistral becomes `llama`).
    pub(crate) hf_model_types: &'static [&'static str],
    /// The models it covers, for messages and docs.
    pub(crate) models: &'static str,
    /// HF module name inside a decoder layer -> GGUF tensor stem inside `blk.{i}.`, in groups.
    pub(crate) layer_modules: &'static [&'static [(&'static str, &'static str)]],
    /// HF module name directly under the decoder -> GGUF tensor name without `.weight`
    /// (besides `embed_tokens` and `lm_head`).
    pub(crate) model_modules: &'static [(&'static str, &'static str)],
    /// llama.cpp's `llama` converter interleaves the rows of q_proj/k_proj per head for its RoPE
    /// (see [`permute_rows`]); LoRA must do the same to lora_B.
    pub(crate) permute_qk: bool,
    /// Base tensors (GGUF names without `.weight`) that llama.cpp's runtime multiplies without
    /// applying LoRA: an adapter on them can only be merged.
    pub(crate) merge_only: &'static [&'static str],
    /// Qwen3.5's converter reorders linear-attention V heads from grouped to tiled order (see
    /// [`v_head_order`]); LoRA follows on lora_B's rows or lora_A's columns.
    pub(crate) reorder_v_heads: bool,
    /// The multimodal towers' linear modules, for bases that carry a tower (see [`TowerModule`]).
    pub(crate) towers: &'static [TowerModule],
    /// Mixture-of-experts: HF module inside `experts.{e}.` -> GGUF stem of the 3-D tensor that
    /// stacks every expert's weight (`blk.{i}.{stem}.weight`, ggml `[in, out, n_expert]`).
    pub(crate) experts: &'static [(&'static str, &'static str)],
    /// Mixture-of-experts as fused 3-D parameters (transformers 5, PEFT `target_parameters`):
    /// parameter -> the stacked expert tensors its rows go to (equal consecutive parts).
    pub(crate) fused_experts: &'static [(&'static str, &'static [&'static str])],
    /// The fused `gate_up_proj` alternates gate and up (gpt-oss: `[..., ::2]` / `[..., 1::2]`),
    /// rather than gate then up.
    pub(crate) interleaved_gate_up: bool,
    /// How the fused expert parameters are stored, which decides how PEFT lays out their LoRA.
    pub(crate) fused_layout: FusedLayout,
    /// HF modules whose weight llama.cpp's converter splits by rows into equal consecutive parts,
    /// one GGUF tensor stem per part: their LoRA becomes one pair per part, sharing lora_A.
    pub(crate) row_splits: &'static [(&'static str, &'static [&'static str])],
}

/// The layout of transformers' fused expert parameters (`gate_up_proj`, `down_proj`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FusedLayout {
    /// `[n, out, in]`, used as `F.linear(x, W[e])` (Qwen3-MoE, Qwen3.5-MoE, Mixtral).
    OutIn,
    /// `[n, in, out]`, used as `x @ W[e]`, and the experts class says so with `is_transposed`
    /// (gpt-oss, in transformers 5).
    InOutMarked,
    /// `[n, in, out]` without `is_transposed` (Llama 4).
    InOut,
}

impl FusedLayout {
    /// Whether PEFT `version` (None: before 0.18, which did not record it) gives a fused
    /// parameter of this layout a lora_A that faces the expert's *outputs* (`[r * n, out]`, with
    /// lora_B `[in, r * n]`; the linear delta of expert e is then A_e^T B_e^T). PEFT has written
    /// three layouts (tuners/lora/layer.py, ParamWrapper): before 0.19.0 lora_A takes the middle
    /// dimension; 0.19.0 takes the last one when the class is marked `is_transposed`; from 0.19.1
    /// the last one when it is not.
    pub(crate) fn peft_swaps(self, version: Option<&str>) -> bool {
        let v = version.map(parse_version).unwrap_or_default();
        match self {
            FusedLayout::OutIn => v < (0, 19, 1),
            FusedLayout::InOutMarked => v == (0, 19, 0),
            FusedLayout::InOut => v >= (0, 19, 1),
        }
    }
}

/// `0.19.1.dev0` -> (0, 19, 1); parts that are not numbers read as 0.
fn parse_version(v: &str) -> (u32, u32, u32) {
    let mut n = v.split('.').map(|p| {
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().unwrap_or(0)
    });
    (n.next().unwrap_or(0), n.next().unwrap_or(0), n.next().unwrap_or(0))
}

const STANDARD: &[(&str, &str)] = &[
    ("q_proj", "attn_q"),
    ("k_proj", "attn_k"),
    ("v_proj", "attn_v"),
    ("o_proj", "attn_output"),
    ("gate_proj", "ffn_gate"),
    ("up_proj", "ffn_up"),
    ("down_proj", "ffn_down"),
];

/// Phi-3 fuses q/k/v into `qkv_proj` and gate/up into `gate_up_proj`; llama.cpp keeps both fused
/// (`attn_qkv`; `ffn_up` of twice the width, gate first), so the LoRA maps one to one.
const PHI3: &[(&str, &str)] = &[
    ("qkv_proj", "attn_qkv"),
    ("o_proj", "attn_output"),
    ("gate_up_proj", "ffn_up"),
    ("down_proj", "ffn_down"),
];

/// Gemma 4 (as Gemma 3n): the per-layer-input gate and projection, besides the standard ones.
const PER_LAYER_INPUT: &[(&str, &str)] = &[("per_layer_input_gate", "inp_gate"), ("per_layer_projection", "proj")];

/// Qwen3.5's Gated DeltaNet linear attention (`linear_attn.*`), besides the standard modules of its
/// gated full-attention layers (q_proj carries the output gate, kept fused in `attn_q`).
const LINEAR_ATTN: &[(&str, &str)] = &[
    ("in_proj_qkv", "attn_qkv"),
    ("in_proj_z", "attn_gate"),
    ("in_proj_a", "ssm_alpha"),
    ("in_proj_b", "ssm_beta"),
    ("out_proj", "ssm_out"),
];

/// Granite 4's shared MLP (`shared_mlp.*`): `output_linear` is the down projection; its fused
/// `input_linear` is a row split (gate rows first, as HF chunks it), see [`GRANITE4_SPLITS`].
const SHARED_MLP: &[(&str, &str)] = &[("output_linear", "ffn_down")];

/// llama.cpp's converter (GraniteMoeModel) splits `shared_mlp.input_linear` into `ffn_gate` and
/// `ffn_up` for a Granite 4 without experts.
const GRANITE4_SPLITS: &[(&str, &[&str])] = &[("input_linear", &["ffn_gate", "ffn_up"])];

/// Expert projections as separate modules (`mlp.experts.{e}.gate_proj`, Mixtral's
/// `block_sparse_moe.experts.{e}.w1/w2/w3`): llama.cpp's converters stack them along the last ggml
/// dimension, expert `e` taking the rows `e * out .. (e + 1) * out` of the 3-D tensor.
const EXPERTS: &[(&str, &str)] = &[
    ("gate_proj", "ffn_gate_exps"),
    ("up_proj", "ffn_up_exps"),
    ("down_proj", "ffn_down_exps"),
    ("w1", "ffn_gate_exps"),
    ("w3", "ffn_up_exps"),
    ("w2", "ffn_down_exps"),
];

/// transformers 5's fused experts (Qwen3-MoE, Mixtral): `mlp.experts.gate_up_proj` `[n, 2 * ff, hidden]`
/// holds gate then up (llama.cpp's converter splits it by halves), `down_proj` `[n, hidden, ff]`.
/// PEFT's `target_parameters` LoRA on them works per expert in the `nn.Linear` orientation.
/// Llama 4 and gpt-oss store them transposed (`[n, hidden, 2 * ff]`, `[n, ff, hidden]`); the
/// split of gate_up's outputs into gate then up is the same for Llama 4.
const FUSED_EXPERTS: &[(&str, &[&str])] = &[
    ("gate_up_proj", &["ffn_gate_exps", "ffn_up_exps"]),
    ("down_proj", &["ffn_down_exps"]),
];

/// Qwen3.5-MoE's shared expert beside the routed ones, and its sigmoid gate (a `[1, hidden]` linear).
const SHARED_EXPERT: &[(&str, &str)] = &[
    ("shared_expert.gate_proj", "ffn_gate_shexp"),
    ("shared_expert.up_proj", "ffn_up_shexp"),
    ("shared_expert.down_proj", "ffn_down_shexp"),
    ("shared_expert_gate", "ffn_gate_inp_shexp"),
];

/// Llama 4's sparse block (`feed_forward.*`): the router is an `nn.Linear` (a plain LoRA target),
/// and the shared expert has no gate of its own.
const LLAMA4_MOE: &[(&str, &str)] = &[
    ("router", "ffn_gate_inp"),
    ("shared_expert.gate_proj", "ffn_gate_shexp"),
    ("shared_expert.up_proj", "ffn_up_shexp"),
    ("shared_expert.down_proj", "ffn_down_shexp"),
];

/// The router of a sparse MoE block (`mlp.gate`, Mixtral's `block_sparse_moe.gate`): a plain linear.
const ROUTER: &[(&str, &str)] = &[("gate", "ffn_gate_inp")];

/// gpt-oss: attention without the MLP's dense projections (every layer is sparse), and its router
/// `mlp.router`. Its attention sinks are a 1-D parameter PEFT cannot wrap.
const GPT_OSS: &[(&str, &str)] = &[
    ("q_proj", "attn_q"),
    ("k_proj", "attn_k"),
    ("v_proj", "attn_v"),
    ("o_proj", "attn_output"),
    ("router", "ffn_gate_inp"),
];

/// A linear module of a multimodal tower and the GGUF tensors it becomes in a base that carries the
/// tower. Ollama's own GGUFs keep vision and audio towers beside the language model (`v.*`, `a.*`,
/// `mm.*`); llama.cpp writes them to a separate mmproj file, which is never a merge base. Names
/// from Ollama's converters (`convert/convert_*.go`: `Replacements()` and `Tensors()`), with
/// llama.cpp's mmproj names as the alternative where they differ; no tower linear weight is
/// permuted or transposed on the way, only Qwen's fused `qkv` is split into thirds by Ollama.
#[derive(Debug)]
pub(crate) struct TowerModule {
    /// Module path without the leading `model.`, `{N}` standing for a block number.
    pub(crate) hf: &'static str,
    /// Alternative namings; each lists the tensors (without `.weight`) whose rows, in order, make up
    /// the weight: one tensor, or several for a split. The first alternative the base has wins.
    pub(crate) gguf: &'static [&'static [&'static str]],
}

const fn tower(hf: &'static str, gguf: &'static [&'static [&'static str]]) -> TowerModule {
    TowerModule { hf, gguf }
}

/// Gemma 3's SigLIP tower (Ollama: `attn_output`, `mlp.fc1/fc2`; llama.cpp: `attn_out`, `ffn_up/down`).
const GEMMA3_TOWER: &[TowerModule] = &[
    tower(
        "vision_tower.vision_model.encoder.layers.{N}.self_attn.q_proj",
        &[&["v.blk.{N}.attn_q"]],
    ),
    tower(
        "vision_tower.vision_model.encoder.layers.{N}.self_attn.k_proj",
        &[&["v.blk.{N}.attn_k"]],
    ),
    tower(
        "vision_tower.vision_model.encoder.layers.{N}.self_attn.v_proj",
        &[&["v.blk.{N}.attn_v"]],
    ),
    tower(
        "vision_tower.vision_model.encoder.layers.{N}.self_attn.out_proj",
        &[&["v.blk.{N}.attn_output"], &["v.blk.{N}.attn_out"]],
    ),
    tower(
        "vision_tower.vision_model.encoder.layers.{N}.mlp.fc1",
        &[&["v.blk.{N}.mlp.fc1"], &["v.blk.{N}.ffn_up"]],
    ),
    tower(
        "vision_tower.vision_model.encoder.layers.{N}.mlp.fc2",
        &[&["v.blk.{N}.mlp.fc2"], &["v.blk.{N}.ffn_down"]],
    ),
];

/// Gemma 4's vision and audio towers (the same names in Ollama and llama.cpp; PEFT may name the
/// inner `.linear` of a clippable linear, which [`Arch::tower_targets`] strips).
const GEMMA4_TOWERS: &[TowerModule] = &[
    tower(
        "vision_tower.encoder.layers.{N}.self_attn.q_proj",
        &[&["v.blk.{N}.attn_q"]],
    ),
    tower(
        "vision_tower.encoder.layers.{N}.self_attn.k_proj",
        &[&["v.blk.{N}.attn_k"]],
    ),
    tower(
        "vision_tower.encoder.layers.{N}.self_attn.v_proj",
        &[&["v.blk.{N}.attn_v"]],
    ),
    tower(
        "vision_tower.encoder.layers.{N}.self_attn.o_proj",
        &[&["v.blk.{N}.attn_out"]],
    ),
    tower(
        "vision_tower.encoder.layers.{N}.mlp.gate_proj",
        &[&["v.blk.{N}.ffn_gate"]],
    ),
    tower("vision_tower.encoder.layers.{N}.mlp.up_proj", &[&["v.blk.{N}.ffn_up"]]),
    tower(
        "vision_tower.encoder.layers.{N}.mlp.down_proj",
        &[&["v.blk.{N}.ffn_down"]],
    ),
    tower("embed_vision.embedding_projection", &[&["mm.input_projection"]]),
    tower("audio_tower.layers.{N}.self_attn.q_proj", &[&["a.blk.{N}.attn_q"]]),
    tower("audio_tower.layers.{N}.self_attn.k_proj", &[&["a.blk.{N}.attn_k"]]),
    tower("audio_tower.layers.{N}.self_attn.v_proj", &[&["a.blk.{N}.attn_v"]]),
    tower("audio_tower.layers.{N}.self_attn.post", &[&["a.blk.{N}.attn_out"]]),
    tower(
        "audio_tower.layers.{N}.feed_forward1.ffw_layer_1",
        &[&["a.blk.{N}.ffn_up"]],
    ),
    tower(
        "audio_tower.layers.{N}.feed_forward1.ffw_layer_2",
        &[&["a.blk.{N}.ffn_down"]],
    ),
    tower(
        "audio_tower.layers.{N}.feed_forward2.ffw_layer_1",
        &[&["a.blk.{N}.ffn_up_1"]],
    ),
    tower(
        "audio_tower.layers.{N}.feed_forward2.ffw_layer_2",
        &[&["a.blk.{N}.ffn_down_1"]],
    ),
    tower(
        "audio_tower.layers.{N}.lconv1d.linear_start",
        &[&["a.blk.{N}.conv_pw1"]],
    ),
    tower("audio_tower.layers.{N}.lconv1d.linear_end", &[&["a.blk.{N}.conv_pw2"]]),
    tower("audio_tower.output_proj", &[&["mm.a.fc"]]),
    tower("embed_audio.embedding_projection", &[&["mm.a.input_projection"]]),
];

/// Mistral 3's Pixtral tower and projector. Ollama keeps the vision q/k rows in HF order (its
/// runtime rotates halves); llama.cpp's mmproj permutes them, but an mmproj is never a merge base.
const PIXTRAL_TOWER: &[TowerModule] = &[
    tower(
        "vision_tower.transformer.layers.{N}.attention.q_proj",
        &[&["v.blk.{N}.attn_q"]],
    ),
    tower(
        "vision_tower.transformer.layers.{N}.attention.k_proj",
        &[&["v.blk.{N}.attn_k"]],
    ),
    tower(
        "vision_tower.transformer.layers.{N}.attention.v_proj",
        &[&["v.blk.{N}.attn_v"]],
    ),
    tower(
        "vision_tower.transformer.layers.{N}.attention.o_proj",
        &[&["v.blk.{N}.attn_output"], &["v.blk.{N}.attn_out"]],
    ),
    tower(
        "vision_tower.transformer.layers.{N}.feed_forward.gate_proj",
        &[&["v.blk.{N}.ffn_gate"]],
    ),
    tower(
        "vision_tower.transformer.layers.{N}.feed_forward.up_proj",
        &[&["v.blk.{N}.ffn_up"]],
    ),
    tower(
        "vision_tower.transformer.layers.{N}.feed_forward.down_proj",
        &[&["v.blk.{N}.ffn_down"]],
    ),
    tower("multi_modal_projector.linear_1", &[&["mm.linear_1"], &["mm.1"]]),
    tower("multi_modal_projector.linear_2", &[&["mm.linear_2"], &["mm.2"]]),
    tower(
        "multi_modal_projector.patch_merger.merging_layer",
        &[&["mm.patch_merger.merging_layer"], &["mm.patch_merger"]],
    ),
];

/// Qwen3.5's vision tower: Ollama splits the fused `attn.qkv` into q, k, v (thirds of the rows);
/// llama.cpp keeps `attn_qkv`.
const QWEN35_TOWER: &[TowerModule] = &[
    tower(
        "visual.blocks.{N}.attn.qkv",
        &[
            &["v.blk.{N}.attn_q", "v.blk.{N}.attn_k", "v.blk.{N}.attn_v"],
            &["v.blk.{N}.attn_qkv"],
        ],
    ),
    tower("visual.blocks.{N}.attn.proj", &[&["v.blk.{N}.attn_out"]]),
    tower(
        "visual.blocks.{N}.mlp.linear_fc1",
        &[&["v.blk.{N}.mlp.linear_fc1"], &["v.blk.{N}.ffn_up"]],
    ),
    tower(
        "visual.blocks.{N}.mlp.linear_fc2",
        &[&["v.blk.{N}.mlp.linear_fc2"], &["v.blk.{N}.ffn_down"]],
    ),
    tower("visual.merger.linear_fc1", &[&["v.merger.linear_fc1"], &["mm.0"]]),
    tower("visual.merger.linear_fc2", &[&["v.merger.linear_fc2"], &["mm.2"]]),
];

const fn dense(
    name: &'static str,
    hf_model_types: &'static [&'static str],
    models: &'static str,
    permute_qk: bool,
) -> Arch {
    Arch {
        name,
        hf_model_types,
        models,
        layer_modules: &[STANDARD],
        model_modules: &[],
        merge_only: &[],
        permute_qk,
        reorder_v_heads: false,
        row_splits: &[],
        towers: &[],
        experts: &[],
        fused_experts: &[],
        interleaved_gate_up: false,
        fused_layout: FusedLayout::OutIn,
    }
}

pub(crate) const ARCHS: &[Arch] = &[
    Arch {
        // Mixtral is `llama` with experts.
        layer_modules: &[STANDARD, ROUTER],
        experts: EXPERTS,
        fused_experts: FUSED_EXPERTS,
        ..dense(
            "llama",
            &["llama", "mistral", "mixtral"],
            "Llama 2/3/3.1/3.2/3.3, TinyLlama, CodeLlama, Mistral 7B, Mistral Nemo, Mixtral",
            true,
        )
    },
    dense("qwen2", &["qwen2"], "Qwen2, Qwen2.5", false),
    dense("qwen3", &["qwen3"], "Qwen3 (dense)", false),
    Arch {
        layer_modules: &[STANDARD, ROUTER],
        experts: EXPERTS,
        fused_experts: FUSED_EXPERTS,
        ..dense("qwen3moe", &["qwen3_moe"], "Qwen3 MoE (30B-A3B, 235B-A22B)", false)
    },
    dense("gemma", &["gemma"], "Gemma", false),
    dense("gemma2", &["gemma2"], "Gemma 2", false),
    Arch {
        towers: GEMMA3_TOWER,
        ..dense("gemma3", &["gemma3", "gemma3_text"], "Gemma 3 (text)", false)
    },
    Arch {
        layer_modules: &[PHI3],
        ..dense("phi3", &["phi3"], "Phi-3, Phi-3.5", false)
    },
    Arch {
        layer_modules: &[STANDARD, PER_LAYER_INPUT],
        model_modules: &[("per_layer_model_projection", "per_layer_model_proj")],
        // gemma4.cpp projects the per-layer inputs with a plain ggml_mul_mat (measured: a LoRA
        // there loads and changes nothing).
        merge_only: &["per_layer_model_proj"],
        towers: GEMMA4_TOWERS,
        ..dense("gemma4", &["gemma4", "gemma4_text"], "Gemma 4 (text)", false)
    },
    Arch {
        towers: PIXTRAL_TOWER,
        ..dense(
            "mistral3",
            &["mistral3", "ministral3"],
            "Ministral 3, Mistral Small 3.1/3.2 (text)",
            true,
        )
    },
    dense("smollm3", &["smollm3"], "SmolLM3", true),
    dense("olmo2", &["olmo2", "olmo3"], "OLMo 2, OLMo 3", false),
    Arch {
        layer_modules: &[STANDARD, SHARED_MLP],
        row_splits: GRANITE4_SPLITS,
        ..dense(
            "granite",
            &["granite", "granitemoehybrid"],
            "Granite 3.x, Granite 4 dense (no Mamba layers, no experts)",
            true,
        )
    },
    Arch {
        layer_modules: &[GPT_OSS],
        fused_experts: FUSED_EXPERTS,
        interleaved_gate_up: true,
        fused_layout: FusedLayout::InOutMarked,
        ..dense("gpt-oss", &["gpt_oss"], "gpt-oss (20B, 120B)", false)
    },
    Arch {
        // Dense MLP layers between the sparse ones (`interleave_moe_layer_step`); llama.cpp's
        // converter keeps q/k as they are (`undo_permute = False`).
        layer_modules: &[STANDARD, LLAMA4_MOE],
        fused_experts: FUSED_EXPERTS,
        fused_layout: FusedLayout::InOut,
        ..dense(
            "llama4",
            &["llama4", "llama4_text"],
            "Llama 4 (Scout, Maverick; text)",
            false,
        )
    },
    Arch {
        layer_modules: &[STANDARD, LINEAR_ATTN, ROUTER, SHARED_EXPERT],
        experts: EXPERTS,
        fused_experts: FUSED_EXPERTS,
        reorder_v_heads: true,
        towers: QWEN35_TOWER,
        ..dense(
            "qwen35moe",
            &["qwen3_5_moe", "qwen3_5_moe_text"],
            "Qwen3.5 MoE (35B-A3B, 122B-A10B, 397B-A17B)",
            false,
        )
    },
    Arch {
        layer_modules: &[STANDARD, LINEAR_ATTN],
        reorder_v_heads: true,
        towers: QWEN35_TOWER,
        ..dense("qwen35", &["qwen3_5", "qwen3_5_text"], "Qwen3.5 (dense)", false)
    },
];
/// The table entry for a GGUF architecture name (`general.architecture`); `None` for one this tool
/// has no table for, which it refuses.
pub fn by_name(name: &str) -> Option<&'static Arch> {
    ARCHS.iter().find(|a| a.name == name)
}

/// The table entry for a Hugging Face `model_type`.
pub(crate) fn by_hf_model_type(model_type: &str) -> Option<&'static Arch> {
    ARCHS.iter().find(|a| a.hf_model_types.contains(&model_type))
}

/// "llama (Llama 2/3 ...), qwen2 (...)" for error messages.
pub(crate) fn supported_list() -> String {
    ARCHS
        .iter()
        .map(|a| format!("{} ({})", a.name, a.models))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where in the model a PEFT module sits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Site {
    /// A module inside decoder layer `layer`, e.g. `self_attn.q_proj` -> `("q_proj")`.
    Layer { layer: u32, module: String },
    /// One expert's projection in a sparse MoE block (`mlp.experts.3.gate_proj`).
    Expert { layer: u32, expert: u32, module: String },
    /// Every expert of a layer at once: a fused 3-D parameter (`mlp.experts.gate_up_proj`).
    FusedExperts { layer: u32, param: String },
    /// The input embedding (`embed_tokens`).
    Embedding,
    /// The output projection (`lm_head`).
    Output,
    /// Another module directly under the decoder (Gemma 4's `per_layer_model_projection`).
    Model { module: String },
    /// A module of a multimodal model's vision or audio tower or its projector (`path` without the
    /// leading `model.`): llama.cpp keeps these out of the language model's GGUF (`--mmproj` is a
    /// separate file); Ollama's own GGUFs carry them (see [`TowerModule`]).
    Tower { path: String },
}

/// Prefixes under which the text decoder sits in the HF models we support: `model.` for
/// `*ForCausalLM`, `model.language_model.` / `language_model.model.` for multimodal wrappers
/// (Gemma 3/4, Qwen3.5, Mistral 3).
const DECODER_PREFIXES: &[&str] = &[
    "model.language_model.",
    "language_model.model.",
    "model.",
    "language_model.",
    "",
];

/// Sub-blocks of a decoder layer that hold LoRA-able modules.
const LAYER_BLOCKS: &[&str] = &[
    "self_attn",
    "mlp",
    "linear_attn",
    "shared_mlp",
    "block_sparse_moe",
    "feed_forward",
];

/// First path components (after an optional `model.`) of multimodal towers and projectors:
/// Gemma 3/4, Mistral 3, LLaVA-style (`vision_tower`, `multi_modal_projector`, `audio_tower`,
/// `embed_vision`, `embed_audio`), Qwen-VL / Qwen3.5 (`visual`).
const TOWERS: &[&str] = &[
    "vision_tower",
    "audio_tower",
    "vision_model",
    "audio_model",
    "visual",
    "multi_modal_projector",
    "embed_vision",
    "embed_audio",
];

/// Finds the site of a PEFT module path (`model.layers.3.self_attn.q_proj`, without the
/// `base_model.model.` prefix). `None` for paths outside the text decoder that are not a known
/// multimodal tower either (GPT-2's `transformer.h.N`, classifier heads).
pub(crate) fn site_of(module_path: &str) -> Option<Site> {
    if module_path == "lm_head" || module_path == "language_model.lm_head" {
        return Some(Site::Output);
    }
    let under_model = module_path.strip_prefix("model.").unwrap_or(module_path);
    if TOWERS.contains(&under_model.split('.').next().unwrap_or("")) {
        return Some(Site::Tower {
            path: under_model.to_string(),
        });
    }
    for prefix in DECODER_PREFIXES {
        let Some(rest) = module_path.strip_prefix(prefix) else {
            continue;
        };
        let parts: Vec<&str> = rest.split('.').collect();
        match parts[..] {
            ["embed_tokens"] => return Some(Site::Embedding),
            [module] if !prefix.is_empty() && module != "norm" => {
                return Some(Site::Model {
                    module: module.to_string(),
                });
            }
            ["layers", idx, block, module] if LAYER_BLOCKS.contains(&block) => {
                if let Ok(layer) = idx.parse() {
                    return Some(Site::Layer {
                        layer,
                        module: module.to_string(),
                    });
                }
            }
            ["layers", idx, module] => {
                if let Ok(layer) = idx.parse() {
                    return Some(Site::Layer {
                        layer,
                        module: module.to_string(),
                    });
                }
            }
            ["layers", idx, block, "shared_expert", module] if LAYER_BLOCKS.contains(&block) => {
                if let Ok(layer) = idx.parse() {
                    return Some(Site::Layer {
                        layer,
                        module: format!("shared_expert.{module}"),
                    });
                }
            }
            ["layers", idx, block, "experts", e, module] if LAYER_BLOCKS.contains(&block) => {
                if let (Ok(layer), Ok(expert)) = (idx.parse(), e.parse()) {
                    return Some(Site::Expert {
                        layer,
                        expert,
                        module: module.to_string(),
                    });
                }
            }
            _ => {}
        }
    }
    None
}

impl Arch {
    /// The GGUF base tensor a site maps to, or `None` when this architecture has no such module.
    pub(crate) fn tensor_name(&self, site: &Site) -> Option<String> {
        match site {
            Site::Embedding => Some("token_embd.weight".into()),
            Site::Output => Some("output.weight".into()),
            Site::Layer { layer, module } => {
                let stem = self.layer_stems().find(|(m, _)| m == module)?.1;
                Some(format!("blk.{layer}.{stem}.weight"))
            }
            Site::Model { module } => {
                let name = self.model_modules.iter().find(|(m, _)| m == module)?.1;
                Some(format!("{name}.weight"))
            }
            Site::Expert { layer, module, .. } => {
                let stem = self.experts.iter().find(|(m, _)| m == module)?.1;
                Some(format!("blk.{layer}.{stem}.weight"))
            }
            Site::Tower { .. } | Site::FusedExperts { .. } => None,
        }
    }

    /// The tower tensors (with `.weight`) a tower module's rows go to in a base whose tensors
    /// satisfy `has`: the first naming in [`TowerModule::gguf`] the base has in full. `None` when
    /// the module is not in the table or the base has none of its namings.
    pub(crate) fn tower_targets(&self, path: &str, has: impl Fn(&str) -> bool) -> Option<Vec<String>> {
        // Gemma 4's clippable linears: PEFT may wrap the inner `.linear`, the weight is the same.
        let path = path.strip_suffix(".linear").unwrap_or(path);
        let (module, block) = self.towers.iter().find_map(|t| Some((t, block_of(t.hf, path)?)))?;
        module.gguf.iter().find_map(|naming| {
            let names: Vec<String> = naming
                .iter()
                .map(|n| format!("{}.weight", n.replace("{N}", &block)))
                .collect();
            names.iter().all(|n| has(n)).then_some(names)
        })
    }

    /// The GGUF base tensors a site maps to: one, or for a row-split module one per part, in row
    /// order (each part takes an equal share of lora_B's rows). `None` when there is no such module.
    pub(crate) fn targets(&self, site: &Site) -> Option<Vec<String>> {
        let (layer, splits, key) = match site {
            Site::Layer { layer, module } => (layer, self.row_splits, module),
            Site::FusedExperts { layer, param } => (layer, self.fused_experts, param),
            _ => return self.tensor_name(site).map(|name| vec![name]),
        };
        if let Some((_, stems)) = splits.iter().find(|(m, _)| m == key) {
            return Some(stems.iter().map(|stem| format!("blk.{layer}.{stem}.weight")).collect());
        }
        self.tensor_name(site).map(|name| vec![name])
    }

    /// Every (HF module, GGUF stem) of a decoder layer.
    pub(crate) fn layer_stems(&self) -> impl Iterator<Item = (&'static str, &'static str)> + '_ {
        self.layer_modules.iter().flat_map(|group| group.iter().copied())
    }

    /// Whether llama.cpp applies no LoRA to base tensor `name` at run time (see `merge_only`).
    pub(crate) fn is_merge_only(&self, name: &str) -> bool {
        self.merge_only.iter().any(|m| name.strip_suffix(".weight") == Some(m))
    }

    /// The HF module names this architecture maps, for messages.
    pub(crate) fn module_names(&self) -> Vec<&'static str> {
        let mut names: Vec<&str> = self
            .layer_stems()
            .chain(self.model_modules.iter().copied())
            .map(|m| m.0)
            .collect();
        names.extend(self.row_splits.iter().map(|(m, _)| *m));
        names.extend(self.experts.iter().map(|(m, _)| *m));
        names.extend(self.fused_experts.iter().map(|(m, _)| *m));
        names.extend(["embed_tokens", "lm_head"]);
        names
    }

    /// How llama.cpp's converter reorders the base tensor of `site`, which a LoRA must follow: a
    /// permutation of lora_B's rows (output features) and/or of lora_A's columns (input features).
    /// `Err` says why the geometry does not allow it.
    pub(crate) fn reorder(
        &self,
        site: &Site,
        g: &Geometry,
        out_features: usize,
        in_features: usize,
    ) -> Result<Reorder, String> {
        let Site::Layer { module, .. } = site else {
            return Ok(Reorder::default());
        };
        let mut r = Reorder::default();
        if self.permute_qk && (module == "q_proj" || module == "k_proj") {
            let heads = if module == "q_proj" {
                g.head_count
            } else {
                g.head_count_kv
            };
            let heads =
                heads.ok_or("the base's head counts differ between layers, so the Q/K row order cannot be rebuilt")?;
            r.b_rows = Some(
                permute_rows(out_features, heads as usize)
                    .ok_or_else(|| format!("{out_features} rows do not split into {heads} heads of even size"))?,
            );
        }
        if self.reorder_v_heads {
            let Some(la) = g.linear_attn else {
                return Ok(r);
            };
            let v_rows = la.v_heads * la.v_head_dim;
            let order = |len: usize, head_dim: usize| v_head_order(len, la.k_heads, la.v_heads, head_dim);
            let bad =
                |what: &str, n: usize| format!("{what} of {n} does not match the base's linear attention ({la:?})");
            match module.as_str() {
                "in_proj_qkv" => {
                    let qk = out_features
                        .checked_sub(v_rows)
                        .ok_or_else(|| bad("rows", out_features))?;
                    let v = order(v_rows, la.v_head_dim).ok_or_else(|| bad("rows", out_features))?;
                    r.b_rows = Some((0..qk).chain(v.into_iter().map(|i| qk + i)).collect());
                }
                "in_proj_z" => {
                    r.b_rows = Some(order(out_features, la.v_head_dim).ok_or_else(|| bad("rows", out_features))?)
                }
                "in_proj_a" | "in_proj_b" => {
                    r.b_rows = Some(order(out_features, 1).ok_or_else(|| bad("rows", out_features))?)
                }
                "out_proj" => {
                    r.a_cols = Some(order(in_features, la.v_head_dim).ok_or_else(|| bad("columns", in_features))?)
                }
                _ => {}
            }
        }
        Ok(r)
    }
}

/// The block number `path` has where `pattern` says `{N}` ("" without one), or `None` when the path
/// does not fit the pattern.
fn block_of(pattern: &str, path: &str) -> Option<String> {
    let (p, q): (Vec<&str>, Vec<&str>) = (pattern.split('.').collect(), path.split('.').collect());
    if p.len() != q.len() {
        return None;
    }
    let mut block = String::new();
    for (want, got) in p.iter().zip(&q) {
        if *want == "{N}" && !got.is_empty() && got.bytes().all(|b| b.is_ascii_digit()) {
            block = got.to_string();
        } else if want != got {
            return None;
        }
    }
    Some(block)
}

/// The decoder layer of a fused-experts module (`model.layers.3.mlp.experts` -> 3), for PEFT's
/// `target_parameters` wrappers, which are keyed by the module, not the parameter.
pub(crate) fn experts_layer(module_path: &str) -> Option<u32> {
    DECODER_PREFIXES.iter().find_map(|prefix| {
        let parts: Vec<&str> = module_path.strip_prefix(prefix)?.split('.').collect();
        match parts[..] {
            ["layers", idx, block, "experts"] if LAYER_BLOCKS.contains(&block) => idx.parse().ok(),
            _ => None,
        }
    })
}

/// Whether a GGUF tensor belongs to a multimodal tower or projector (Ollama's in-file towers).
pub(crate) fn is_tower_tensor(name: &str) -> bool {
    ["v.", "a.", "mm."].iter().any(|p| name.starts_with(p))
}

/// What the LoRA layout transforms (`Arch::reorder`) need to know of the base model; from
/// [`BaseModel::geometry`](crate::engine::base::BaseModel::geometry).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Geometry {
    /// Attention heads, when every layer has the same number.
    pub(crate) head_count: Option<u64>,
    /// Key/value heads, when every layer has the same number.
    pub(crate) head_count_kv: Option<u64>,
    /// Linear-attention (Gated DeltaNet) heads, for architectures that have them.
    pub linear_attn: Option<LinearAttn>,
}

/// Gated DeltaNet head layout (HF `linear_num_key_heads`, `linear_num_value_heads`,
/// `linear_value_head_dim`; GGUF `ssm.group_count`, `ssm.time_step_rank`, `ssm.inner_size` / heads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearAttn {
    pub(crate) k_heads: usize,
    /// Value heads (HF `linear_num_value_heads`, GGUF `ssm.time_step_rank`).
    pub v_heads: usize,
    pub(crate) v_head_dim: usize,
}

/// Source index of each output row of lora_B (`b_rows`) and of each output column of lora_A
/// (`a_cols`); `None` keeps the order.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Reorder {
    pub(crate) b_rows: Option<Vec<usize>>,
    pub(crate) a_cols: Option<Vec<usize>>,
}

/// Qwen3.5's V-head reorder over `len` = `v_heads * head_dim` features: HF groups V heads by K
/// head (`[k][v_per_k][d]`), llama.cpp tiles them (`[v_per_k][k][d]`); output feature
/// `(j * k_heads + g) * head_dim + d` takes source `(g * v_per_k + j) * head_dim + d`.
pub(crate) fn v_head_order(len: usize, k_heads: usize, v_heads: usize, head_dim: usize) -> Option<Vec<usize>> {
    if k_heads == 0 || !v_heads.is_multiple_of(k_heads) || len != v_heads * head_dim {
        return None;
    }
    let per_k = v_heads / k_heads;
    let mut src = Vec::with_capacity(len);
    for j in 0..per_k {
        for g in 0..k_heads {
            src.extend((0..head_dim).map(|d| (g * per_k + j) * head_dim + d));
        }
    }
    Some(src)
}

/// For llama.cpp's `llama` layout: which source row each output row takes. llama.cpp's converter views
/// the `[n_head * head_dim, in]` weight as `[n_head, 2, head_dim/2, in]` and swaps the two middle axes,
/// turning Hugging Face's rotate-half order into interleaved pairs. Returns `None` when the row count
/// does not split into `n_head` heads of even size.
pub(crate) fn permute_rows(rows: usize, n_head: usize) -> Option<Vec<usize>> {
    if n_head == 0 || !rows.is_multiple_of(n_head) || !(rows / n_head).is_multiple_of(2) {
        return None;
    }
    let head_dim = rows / n_head;
    let half = head_dim / 2;
    let mut src = Vec::with_capacity(rows);
    for h in 0..n_head {
        for j in 0..half {
            for t in 0..2 {
                // Output index h*head_dim + 2j + t holds input [h, t, j].
                src.push(h * head_dim + t * half + j);
            }
        }
    }
    Some(src)
}

#[cfg(test)]
mod tests {
    #[test]
    fn peft_fused_expert_layouts_by_version() {
        use super::FusedLayout::*;
        let swaps = |layout: super::FusedLayout| {
            [
                None,
                Some("0.17.1"),
                Some("0.19.0"),
                Some("0.19.1.dev0"),
                Some("0.21.2"),
            ]
            .map(|v| layout.peft_swaps(v))
        };
        assert_eq!(swaps(OutIn), [true, true, true, false, false]);
        assert_eq!(swaps(InOutMarked), [false, false, true, false, false]);
        assert_eq!(swaps(InOut), [false, false, false, true, true]);
    }

    use super::*;

    #[test]
    fn sites_of_real_module_paths() {
        assert_eq!(
            site_of("model.layers.3.self_attn.q_proj"),
            Some(Site::Layer {
                layer: 3,
                module: "q_proj".into()
            })
        );
        assert_eq!(
            site_of("model.layers.0.mlp.down_proj"),
            Some(Site::Layer {
                layer: 0,
                module: "down_proj".into()
            })
        );
        assert_eq!(
            site_of("model.language_model.layers.7.self_attn.v_proj"),
            Some(Site::Layer {
                layer: 7,
                module: "v_proj".into()
            })
        );
        assert_eq!(site_of("model.embed_tokens"), Some(Site::Embedding));
        assert_eq!(site_of("lm_head"), Some(Site::Output));
        // Not the text decoder: GPT-2 blocks, a classifier.
        assert_eq!(site_of("transformer.h.0.attn.c_attn"), None);
        assert_eq!(site_of("score"), None);
    }

    #[test]
    fn tensor_names_per_arch() {
        let q = Site::Layer {
            layer: 2,
            module: "q_proj".into(),
        };
        assert_eq!(
            by_name("llama").unwrap().tensor_name(&q).unwrap(),
            "blk.2.attn_q.weight"
        );
        assert_eq!(by_name("phi3").unwrap().tensor_name(&q), None);
        let gu = Site::Layer {
            layer: 0,
            module: "gate_up_proj".into(),
        };
        assert_eq!(
            by_name("phi3").unwrap().tensor_name(&gu).unwrap(),
            "blk.0.ffn_up.weight"
        );
        assert_eq!(by_hf_model_type("mistral").unwrap().name, "llama");
        assert_eq!(by_hf_model_type("gemma3_text").unwrap().name, "gemma3");
        assert!(by_name("gpt2").is_none());
    }

    #[test]
    fn permutation_matches_the_numpy_reshape() {
        // Independent expectation written out by hand for 2 heads of head_dim 4:
        // rows [h0: a0 a1 b0 b1 | h1: c0 c1 d0 d1] (rotate-half halves a/b, c/d) become
        // [a0 b0 a1 b1 | c0 d0 c1 d1].
        assert_eq!(permute_rows(8, 2).unwrap(), vec![0, 2, 1, 3, 4, 6, 5, 7]);
        assert_eq!(permute_rows(6, 2), None);
        // One head of dim 6: halves [0 1 2] [3 4 5] interleave.
        assert_eq!(permute_rows(6, 1).unwrap(), vec![0, 3, 1, 4, 2, 5]);
    }

    fn geometry(heads: u64, kv: u64) -> Geometry {
        Geometry {
            head_count: Some(heads),
            head_count_kv: Some(kv),
            linear_attn: None,
        }
    }

    #[test]
    fn only_llama_permutes_and_with_kv_heads_for_k() {
        let llama = by_name("llama").unwrap();
        let site = |m: &str| Site::Layer {
            layer: 0,
            module: m.into(),
        };
        let g = geometry(32, 8);
        let rows = |arch: &Arch, m: &str, out: usize| arch.reorder(&site(m), &g, out, 4096).unwrap().b_rows;
        assert_eq!(rows(llama, "q_proj", 4096), permute_rows(4096, 32));
        assert_eq!(rows(llama, "k_proj", 1024), permute_rows(1024, 8));
        assert_eq!(rows(llama, "v_proj", 1024), None);
        assert_eq!(rows(by_name("qwen2").unwrap(), "q_proj", 4096), None);
        let uneven = Geometry { head_count: None, ..g };
        assert!(llama.reorder(&site("q_proj"), &uneven, 4096, 4096).is_err());
    }

    #[test]
    fn v_head_order_tiles_heads_grouped_by_key_head() {
        // 2 key heads, 4 value heads (2 per key head), head_dim 1: HF [g0v0 g0v1 g1v0 g1v1]
        // becomes [g0v0 g1v0 g0v1 g1v1].
        assert_eq!(v_head_order(4, 2, 4, 1).unwrap(), vec![0, 2, 1, 3]);
        // head_dim 2 moves whole heads.
        assert_eq!(v_head_order(8, 2, 4, 2).unwrap(), vec![0, 1, 4, 5, 2, 3, 6, 7]);
        // Equal head counts: the identity (the converter skips the reorder then).
        assert_eq!(v_head_order(6, 3, 3, 2).unwrap(), (0..6).collect::<Vec<_>>());
        assert_eq!(v_head_order(8, 3, 4, 2), None);
    }

    #[test]
    fn qwen35_linear_attention_reorders_v_rows_and_out_proj_columns() {
        let q = by_name("qwen35").unwrap();
        let la = LinearAttn {
            k_heads: 2,
            v_heads: 4,
            v_head_dim: 1,
        };
        let g = Geometry {
            linear_attn: Some(la),
            ..geometry(4, 2)
        };
        let site = |m: &str| Site::Layer {
            layer: 0,
            module: m.into(),
        };
        // in_proj_qkv: q and k rows (2 + 2 here) stay, the 4 V rows are reordered.
        let r = q.reorder(&site("in_proj_qkv"), &g, 8, 16).unwrap();
        assert_eq!(r.b_rows.unwrap(), vec![0, 1, 2, 3, 4, 6, 5, 7]);
        assert_eq!(
            q.reorder(&site("in_proj_b"), &g, 4, 16).unwrap().b_rows.unwrap(),
            vec![0, 2, 1, 3]
        );
        let out = q.reorder(&site("out_proj"), &g, 16, 4).unwrap();
        assert_eq!((out.b_rows, out.a_cols.unwrap()), (None, vec![0, 2, 1, 3]));
        assert!(q.reorder(&site("in_proj_z"), &g, 5, 16).is_err());
        assert_eq!(q.reorder(&site("q_proj"), &g, 16, 16).unwrap(), Reorder::default());
    }

    #[test]
    fn tower_modules_take_the_naming_the_base_has() {
        let q = by_name("qwen35").unwrap();
        let ollama = |n: &str| n.starts_with("v.blk.12.attn_") && !n.contains("qkv");
        let llama_cpp = |n: &str| n == "v.blk.12.attn_qkv.weight";
        assert_eq!(
            q.tower_targets("visual.blocks.12.attn.qkv", ollama).unwrap(),
            vec![
                "v.blk.12.attn_q.weight",
                "v.blk.12.attn_k.weight",
                "v.blk.12.attn_v.weight"
            ]
        );
        assert_eq!(
            q.tower_targets("visual.blocks.12.attn.qkv", llama_cpp).unwrap(),
            vec!["v.blk.12.attn_qkv.weight"]
        );
        assert_eq!(q.tower_targets("visual.blocks.12.attn.qkv", |_| false), None);
        assert_eq!(q.tower_targets("visual.blocks.x.attn.qkv", |_| true), None);
        let g4 = by_name("gemma4").unwrap();
        let path = "vision_tower.encoder.layers.3.self_attn.o_proj.linear";
        assert_eq!(
            g4.tower_targets(path, |_| true).unwrap(),
            vec!["v.blk.3.attn_out.weight"]
        );
        let g3 = by_name("gemma3").unwrap();
        let fc1 = "vision_tower.vision_model.encoder.layers.0.mlp.fc1";
        assert_eq!(
            g3.tower_targets(fc1, |n| n.contains("ffn_up")).unwrap(),
            vec!["v.blk.0.ffn_up.weight"]
        );
        assert_eq!(by_name("llama").unwrap().tower_targets(fc1, |_| true), None);
    }

    #[test]
    fn expert_modules_map_to_the_stacked_expert_tensors() {
        let site = site_of("model.layers.2.mlp.experts.5.down_proj").unwrap();
        assert_eq!(
            site,
            Site::Expert {
                layer: 2,
                expert: 5,
                module: "down_proj".into()
            }
        );
        assert_eq!(
            by_name("qwen3moe").unwrap().tensor_name(&site).unwrap(),
            "blk.2.ffn_down_exps.weight"
        );
        let mixtral = site_of("model.layers.0.block_sparse_moe.experts.7.w3").unwrap();
        assert_eq!(
            by_hf_model_type("mixtral").unwrap().tensor_name(&mixtral).unwrap(),
            "blk.0.ffn_up_exps.weight"
        );
        let router = site_of("model.layers.0.mlp.gate").unwrap();
        assert_eq!(
            by_name("qwen3moe").unwrap().tensor_name(&router).unwrap(),
            "blk.0.ffn_gate_inp.weight"
        );
        assert_eq!(by_name("qwen3").unwrap().tensor_name(&site), None);
    }

    #[test]
    fn granite4_input_linear_splits_into_gate_and_up() {
        let g = by_hf_model_type("granitemoehybrid").unwrap();
        assert_eq!(g.name, "granite");
        let site = site_of("model.layers.3.shared_mlp.input_linear").unwrap();
        assert_eq!(
            g.targets(&site).unwrap(),
            vec!["blk.3.ffn_gate.weight", "blk.3.ffn_up.weight"]
        );
        let down = site_of("model.layers.3.shared_mlp.output_linear").unwrap();
        assert_eq!(g.targets(&down).unwrap(), vec!["blk.3.ffn_down.weight"]);
        assert_eq!(by_name("llama").unwrap().targets(&site), None);
    }

    #[test]
    fn towers_and_model_level_modules() {
        let tower = |p: &str| Some(Site::Tower { path: p.to_string() });
        assert_eq!(
            site_of("model.vision_tower.encoder.layers.0.self_attn.q_proj"),
            tower("vision_tower.encoder.layers.0.self_attn.q_proj")
        );
        assert_eq!(
            site_of("model.audio_tower.layers.3.self_attn.k_proj"),
            tower("audio_tower.layers.3.self_attn.k_proj")
        );
        assert_eq!(
            site_of("model.visual.blocks.0.attn.qkv"),
            tower("visual.blocks.0.attn.qkv")
        );
        assert_eq!(
            site_of("multi_modal_projector.linear_1"),
            tower("multi_modal_projector.linear_1")
        );
        assert_eq!(
            site_of("model.language_model.layers.2.linear_attn.in_proj_qkv"),
            Some(Site::Layer {
                layer: 2,
                module: "in_proj_qkv".into()
            })
        );
        assert_eq!(
            site_of("model.language_model.layers.5.per_layer_input_gate"),
            Some(Site::Layer {
                layer: 5,
                module: "per_layer_input_gate".into()
            })
        );
        let proj = site_of("model.language_model.per_layer_model_projection").unwrap();
        assert_eq!(
            by_name("gemma4").unwrap().tensor_name(&proj).unwrap(),
            "per_layer_model_proj.weight"
        );
        assert_eq!(by_name("llama").unwrap().tensor_name(&proj), None);
    }
}
