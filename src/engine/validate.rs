//! Does this adapter fit this base? Every check that can be made before converting or uploading,
//! with errors (the adapter cannot be used on this base), warnings (it can, but probably should not)
//! and the list of what was checked, so a user sees what passed and not only what failed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::engine::arch::{self, Site};
use crate::engine::base::BaseModel;
use crate::error::Error;
use crate::formats::gguf::GgmlType;
use crate::formats::peft::{Adapter, Analysis, LoraModule};

/// One error or warning: what it is about, what is wrong, what to do.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    /// What it is about: `base`, a field of adapter_config.json, a module or tensor name.
    pub subject: String,
    /// What is wrong, or what to look out for, in one sentence.
    pub message: String,
    /// What to do about it.
    pub(crate) hint: String,
    /// About the adapter alone (a PEFT feature or flaw, whatever the base) or the base alone (its
    /// format, architecture or tensor types): no other pairing would do, so a refusal for it is
    /// "unsupported" rather than "mismatch".
    #[serde(skip)]
    pub(crate) alone: bool,
}

fn finding(subject: impl Into<String>, message: impl Into<String>, hint: impl Into<String>) -> Finding {
    Finding {
        subject: subject.into(),
        message: message.into(),
        hint: hint.into(),
        alone: false,
    }
}

/// A [`finding`] about the adapter alone or the base alone (see [`Finding::alone`]).
fn finding_alone(subject: impl Into<String>, message: impl Into<String>, hint: impl Into<String>) -> Finding {
    Finding {
        alone: true,
        ..finding(subject, message, hint)
    }
}

/// "`first`" or "`first` and N more", for messages about a list of names (empty for none).
pub(crate) fn first_and_more(names: &[impl AsRef<str>]) -> String {
    match names {
        [] => String::new(),
        [one] => format!("`{}`", one.as_ref()),
        [first, rest @ ..] => format!("`{}` and {} more", first.as_ref(), rest.len()),
    }
}

/// "s" for a count other than one.
pub(crate) fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// What [`validate`] found; the adapter can be used with the base when `errors` is empty. Serialized,
/// without `modules`, as `validate --json`'s report.
#[derive(Debug, Serialize)]
pub struct Validation {
    pub(crate) adapter: PathBuf,
    pub(crate) base: String,
    pub(crate) arch: String,
    /// What was checked and passed, in words.
    pub checks: Vec<String>,
    /// What rules out both a GGUF adapter and a merge: the adapter cannot be used with this base.
    pub errors: Vec<Finding>,
    /// What rules out a GGUF adapter (`convert`, `--mode adapter`) but merges (DoRA).
    pub(crate) merge_only: Vec<Finding>,
    /// What rules out merging but a GGUF adapter carries (activated LoRA).
    pub(crate) adapter_only: Vec<Finding>,
    /// What fits but is probably not what was meant (a base below 4 bits, another model than the
    /// adapter was trained on, a resized vocabulary ...).
    pub warnings: Vec<Finding>,
    /// Notices from reading the adapter (tensors skipped per PEFT's own rules).
    pub notices: Vec<String>,
    /// One line: "32 layers, 224 tensors, all shapes match llama3.2:3b", or what failed.
    pub(crate) summary: String,
    /// Every LoRA pair with the base tensor it adapts (complete only when there are no errors).
    #[serde(skip)]
    pub modules: Vec<Target>,
    /// Embedding / output weights replaced, with the GGUF tensor each replaces (merge only).
    #[serde(skip)]
    pub(crate) replacements: Vec<(String, crate::formats::peft::Replacement)>,
}

/// A LoRA pair and the base tensor it adapts.
#[derive(Clone, Debug)]
pub struct Target {
    /// The PEFT module; for one part of a row-split module (Granite 4's `input_linear`),
    /// `out_features` is that part's height.
    pub module: LoraModule,
    /// GGUF base tensor name.
    pub tensor: String,
    /// First row of the module's lora_B that belongs to this tensor (0 unless split).
    pub b_row_offset: usize,
    /// Step between this tensor's rows in lora_B: 1, or the number of parts for a split whose
    /// parts interleave (gpt-oss's gate/up rows alternate).
    pub(crate) b_row_stride: usize,
    /// lora_A and lora_B change roles (see `arch::FusedLayout::peft_swaps`): `module`'s in and
    /// out features are already the real ones, and its lora_A's columns face the outputs.
    pub swapped: bool,
}

/// What the per-pair checks collect for the summary.
#[derive(Default)]
struct Tally {
    shape_errors: Vec<Finding>,
    layers: BTreeSet<u32>,
    low_bit: BTreeSet<String>,
    types: BTreeSet<String>,
    kv_shared: BTreeSet<u32>,
    /// Tower modules (paths) the base has no tensors for.
    towers_left_out: Vec<String>,
    /// Experts adapted (in any layer).
    experts: BTreeSet<u32>,
    /// Whether PEFT laid this adapter's fused-expert pairs out with lora_A facing the outputs, as
    /// the first pair whose shapes fit only one way shows (`None`: none does).
    fused_swapped: Option<bool>,
}

impl Validation {
    pub(crate) fn ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// The errors that rule out one way of using the adapter: a GGUF adapter (`merging` false) or
    /// a merge into the base.
    pub(crate) fn errors_for(&self, merging: bool) -> impl Iterator<Item = &Finding> {
        let other = if merging { &self.adapter_only } else { &self.merge_only };
        self.errors.iter().chain(other)
    }
}

/// Types below 4 bits per weight: a LoRA applied on top of them loses much of its effect.
fn below_q4(t: GgmlType) -> bool {
    matches!(
        t.name().as_str(),
        "Q2_K" | "Q3_K" | "IQ2_XXS" | "IQ2_XS" | "IQ2_S" | "IQ3_XXS" | "IQ3_S" | "IQ1_S" | "IQ1_M" | "TQ1_0" | "TQ2_0"
    )
}

/// The llama.cpp architecture a Hugging Face model id most likely has, guessed from the name after its
/// last `/` (case-insensitive); `None` when no known family's name is in it.
pub fn family_of(id: &str) -> Option<&'static str> {
    let id = id.to_ascii_lowercase();
    let name = id.rsplit('/').next().unwrap_or(&id);
    // First match wins: newer names before the older ones they contain.
    const TABLE: &[(&str, &str)] = &[
        ("qwen3.5-35b-a3b", "qwen35moe"),
        ("qwen3.5-122b-a10b", "qwen35moe"),
        ("qwen3.5-397b-a17b", "qwen35moe"),
        ("qwen3.5", "qwen35"),
        ("qwen3_5", "qwen35"),
        ("qwen35", "qwen35"),
        ("qwen3-30b-a3b", "qwen3moe"),
        ("qwen3-235b-a22b", "qwen3moe"),
        ("qwen3-coder-30b-a3b", "qwen3moe"),
        ("qwen3", "qwen3"),
        ("qwen2", "qwen2"),
        ("qwen1.5", "qwen2"),
        ("gemma-4", "gemma4"),
        ("gemma4", "gemma4"),
        ("gemma-3", "gemma3"),
        ("gemma3", "gemma3"),
        ("gemma-2", "gemma2"),
        ("gemma2", "gemma2"),
        ("gemma", "gemma"),
        ("phi-3", "phi3"),
        ("phi3", "phi3"),
        ("phi-4", "phi3"),
        ("phi-2", "phi2"),
        ("gpt-oss", "gpt-oss"),
        ("smollm3", "smollm3"),
        ("olmo-2", "olmo2"),
        ("olmo-3", "olmo2"),
        ("olmo2", "olmo2"),
        ("olmo3", "olmo2"),
        ("granite", "granite"),
        ("ministral-3", "mistral3"),
        ("mistral3", "mistral3"),
        ("mistral-small-3.1", "mistral3"),
        ("mistral-small-3.2", "mistral3"),
        ("llama-4", "llama4"),
        ("llama4", "llama4"),
        ("llama", "llama"),
        ("mistral", "llama"),
        ("mixtral", "llama"),
        ("falcon", "falcon"),
        ("gpt2", "gpt2"),
    ];
    TABLE.iter().find(|(k, _)| name.contains(k)).map(|(_, a)| *a)
}

/// Parameter count in billions from a name or label: `Llama-3.2-3B-Instruct` -> 3, `gemma-3-270m` -> 0.27,
/// `3.2B` -> 3.2. The last such token wins (`Qwen2.5-Coder-7B` -> 7, not the version).
fn size_of(s: &str) -> Option<f64> {
    let mut found = None;
    for token in s.split(['-', '_', '/', ' ', ':']) {
        let t = token.to_ascii_lowercase();
        let (num, mult) = match t.chars().last() {
            Some('b') => (&t[..t.len() - 1], 1.0),
            Some('m') => (&t[..t.len() - 1], 1e-3),
            _ => continue,
        };
        if let Ok(v) = num.parse::<f64>()
            && v > 0.0
        {
            found = Some(v * mult);
        }
    }
    found
}

/// Checks `adapter` against `base`: architecture, tensor names and shapes, ranks, types. Never fails:
/// what rules the pair out is in [`Validation::errors`].
pub fn validate(adapter: &Adapter, base: &BaseModel) -> Validation {
    let analysis = adapter.analyze();
    let mut v = Validation {
        adapter: adapter.path.clone(),
        base: base.source.display().to_string(),
        arch: base.arch.clone(),
        checks: vec![],
        errors: findings(&analysis.problems),
        merge_only: findings(&analysis.merge_only),
        adapter_only: findings(&analysis.adapter_only),
        warnings: vec![],
        notices: analysis.notices.clone(),
        summary: String::new(),
        modules: vec![],
        replacements: vec![],
    };
    let base_id = adapter.config.base_model_name_or_path.clone().unwrap_or_default();
    let Some(arch) = check_base(&mut v, base) else {
        return finish(v, base, 0);
    };
    let tally = check_pairs(&mut v, arch, base, adapter, &analysis, &base_id);
    note_pairs(&mut v, arch, &tally.kv_shared);
    report_shape_errors(&mut v, &tally.shape_errors);
    if v.errors.is_empty() {
        record_fit(&mut v, arch, base, &analysis.modules, &tally);
    }
    // Warnings: it fits, but probably is not what the user wants.
    warn_low_bit(&mut v, &tally.low_bit);
    check_towers(&mut v, &tally.towers_left_out, base);
    check_identity(&mut v, base, &base_id);
    check_vocab(&mut v, adapter, &analysis.modules, base);
    finish(v, base, tally.layers.len())
}

/// The analysis' problems as findings.
fn findings(problems: &[crate::formats::peft::Problem]) -> Vec<Finding> {
    problems
        .iter()
        .map(|p| finding_alone(&p.subject, &p.why, &p.hint))
        .collect()
}

/// Checks the base itself (GGUF, tensor types this tool knows) and records what it is; its
/// architecture, or `None` (the error recorded) when ollama-tools does not support it.
fn check_base(v: &mut Validation, base: &BaseModel) -> Option<&'static arch::Arch> {
    let base_name = base.source.display();
    match base.format.as_deref() {
        Some(f) if f != "gguf" => v.errors.push(finding_alone(
            "base",
            format!("{base_name} is a {f} model, not GGUF: Ollama applies adapters only to GGUF models, and only a GGUF base can be merged"),
            "use a GGUF build of the model, e.g. one from the Ollama library",
        )),
        _ => {}
    }
    if !base.unknown_types.is_empty() {
        v.errors.push(finding_alone(
            "base",
            format!(
                "tensor types this tool can neither apply an adapter to nor re-quantize: {}",
                base.unknown_types.join(", ")
            ),
            "use a build of the base model with common types (F16, Q8_0, Q4_K_M ...)",
        ));
    }
    let Some(arch) = base.arch_spec() else {
        v.errors.push(finding_alone(
            "base",
            format!("base architecture `{}` is not supported", base.arch),
            format!("supported: {}", arch::supported_list()),
        ));
        return None;
    };
    v.checks.push(format!(
        "base {base_name} ({}): architecture `{}`, {} layers{}{}",
        base.format
            .as_deref()
            .map_or("described by config.json".to_string(), |f| format!(
                "{} model",
                f.to_uppercase()
            )),
        arch.name,
        base.block_count,
        base.size_label.as_ref().map_or(String::new(), |s| format!(", {s}")),
        base.quantization.as_ref().map_or(String::new(), |q| format!(", {q}")),
    ));
    if !base.exact_tensors {
        v.checks
            .push("tensor shapes derived from the base's hyper-parameters (the source lists no tensors)".into());
    }
    Some(arch)
}

/// Every LoRA pair against the base's tensors (what llama.cpp's loader checks, and more), and every
/// replacement: what fits is kept in `v`, what does not recorded; the tally of both.
fn check_pairs(
    v: &mut Validation,
    arch: &arch::Arch,
    base: &BaseModel,
    adapter: &Adapter,
    analysis: &Analysis,
    base_id: &str,
) -> Tally {
    let mut tally = Tally {
        fused_swapped: analysis
            .modules
            .iter()
            .find_map(|m| fused_fit(arch, base, m).and_then(|fit| fit.only())),
        ..Tally::default()
    };
    for m in &analysis.modules {
        for target in map_module(v, &mut tally, arch, base, adapter, m, base_id) {
            check_target(v, &mut tally, base, adapter, target, base_id);
        }
    }
    for r in &analysis.replacements {
        check_replacement(v, base, adapter, r);
    }
    tally
}

/// Notices about the pairs: skipped on KV-shared layers, kept only for a merge (no run-time LoRA
/// in llama.cpp), on the multimodal towers (which `convert` leaves out).
fn note_pairs(v: &mut Validation, arch: &arch::Arch, kv_shared: &BTreeSet<u32>) {
    if !kv_shared.is_empty() {
        v.notices.push(format!(
            "skipped the k_proj/v_proj LoRA of layers {}: these layers reuse an earlier layer's keys and values \
             (KV sharing), so neither transformers nor llama.cpp uses their own k/v projections",
            layer_list(kv_shared)
        ));
    }
    for t in &v.modules {
        if arch.is_merge_only(&t.tensor) {
            v.notices.push(format!(
                "`{}` ({}) can only be merged: llama.cpp applies no LoRA to it at run time, so `convert` refuses it",
                t.module.path, t.tensor
            ));
        }
    }
    let tower_targets: Vec<&str> = v
        .modules
        .iter()
        .map(|t| t.tensor.as_str())
        .filter(|n| arch::is_tower_tensor(n))
        .collect();
    if !tower_targets.is_empty() {
        v.notices.push(format!(
            "{} LoRA pair{} on the multimodal towers map to the tower this base GGUF carries ({}): `merge` applies \
             them; a GGUF adapter (`convert`) reaches the language model only and leaves them out",
            tower_targets.len(),
            plural(tower_targets.len()),
            first_and_more(&tower_targets),
        ));
    }
}

/// Records the first shape error in full, with how many more there are: one wrong base makes them
/// all wrong.
fn report_shape_errors(v: &mut Validation, shape_errors: &[Finding]) {
    if let Some(first) = shape_errors.first() {
        let mut f = first.clone();
        if shape_errors.len() > 1 {
            f.message
                .push_str(&format!(" ({} more tensors do not fit either)", shape_errors.len() - 1));
        }
        v.errors.push(f);
    }
}

/// Records, for an adapter without errors, what was checked and passed: the pairs' layers, shapes,
/// experts, ranks and base types.
fn record_fit(v: &mut Validation, arch: &arch::Arch, base: &BaseModel, modules: &[LoraModule], tally: &Tally) {
    v.checks.push(format!(
        "{} LoRA pairs map to tensors of the `{}` architecture, in layers {} (the base has {})",
        v.modules.len(),
        arch.name,
        layer_list(&tally.layers),
        base.block_count
    ));
    v.checks
        .push("every lora_A input width and lora_B output height matches its base tensor".into());
    if !tally.experts.is_empty() {
        v.checks.push(expert_check(&tally.experts, &v.modules, base));
    }
    let ranks: BTreeSet<u64> = modules.iter().map(|m| m.rank).collect();
    v.checks
        .push(format!("ranks {ranks:?} match r / rank_pattern; alpha positive"));
    if !tally.types.is_empty() {
        v.checks.push(format!(
            "base tensor types {} take an adapter and can be re-quantized",
            tally.types.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
}

/// Warns when the adapted base tensors are quantized below 4 bits (`low_bit`: their type names).
fn warn_low_bit(v: &mut Validation, low_bit: &BTreeSet<String>) {
    if !low_bit.is_empty() {
        v.warnings.push(finding(
            "base",
            format!(
                "the adapted base tensors are quantized below 4 bits ({}): the adapter's effect degrades",
                low_bit.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
            "use a Q4_K_M or better build of the base",
        ));
    }
}

/// The base tensors module `m` adapts, each with its share of lora_B's rows; none (with the
/// reason recorded) when the architecture, the layer count or KV sharing rules it out.
fn map_module(
    v: &mut Validation,
    tally: &mut Tally,
    arch: &arch::Arch,
    base: &BaseModel,
    adapter: &Adapter,
    m: &LoraModule,
    base_id: &str,
) -> Vec<Target> {
    let key_a = &adapter.tensors[m.a].key;
    if matches!(&m.site, Site::Model { module } if module == "embed_tokens_per_layer") {
        v.errors.push(finding(
            key_a,
            "a LoRA on Gemma 4's per-layer token embeddings: llama.cpp applies no LoRA to them at run time, and \
             ollama-tools does not merge embedding LoRA into them",
            "retrain without embed_tokens_per_layer in target_modules, or merge the adapter with PEFT \
             (merge_and_unload) and convert the merged model with llama.cpp",
        ));
        return vec![];
    }
    if let Site::Tower { path } = &m.site {
        let Some(names) = arch.tower_targets(path, |n| base.tensors.contains_key(n)) else {
            tally.towers_left_out.push(m.path.clone());
            return vec![];
        };
        return split_rows(tally, m, names, key_a, base_id, false);
    }
    let Some(names) = arch.targets(&m.site) else {
        v.errors.push(finding(
            key_a,
            format!(
                "adapts `{}`, which the `{}` architecture does not have",
                m.path, arch.name
            ),
            format!("modules of `{}`: {}", arch.name, arch.module_names().join(", ")),
        ));
        return vec![];
    };
    if is_kv_shared(base, &m.site) {
        if let Site::Layer { layer, .. } = m.site {
            tally.kv_shared.insert(layer);
        }
        return vec![];
    }
    if let Site::Layer { layer, .. } | Site::Expert { layer, .. } | Site::FusedExperts { layer, .. } = m.site {
        if let Some(f) = beyond_layers(base, layer, &names[0], key_a, base_id) {
            v.errors.push(f);
            return vec![];
        }
        tally.layers.insert(layer);
    }
    // gpt-oss's fused gate_up_proj alternates gate and up rows; the others stack them.
    let interleaved =
        arch.interleaved_gate_up && matches!(&m.site, Site::FusedExperts { param, .. } if param == "gate_up_proj");
    let swapped = fused_fit(arch, base, m).map(|fit| {
        fit.only()
            .or(tally.fused_swapped)
            .unwrap_or_else(|| arch.fused_layout.peft_swaps(adapter.config.peft_version.as_deref()))
    });
    if swapped == Some(true) {
        let real = LoraModule {
            in_features: m.out_features,
            out_features: m.in_features,
            ..m.clone()
        };
        let mut targets = split_rows(tally, &real, names, key_a, base_id, interleaved);
        targets.iter_mut().for_each(|t| t.swapped = true);
        return targets;
    }
    split_rows(tally, m, names, key_a, base_id, interleaved)
}

/// The error for a module on layer `layer`, mapping to `tensor`, when the base has fewer layers;
/// `None` when the base has it.
fn beyond_layers(base: &BaseModel, layer: u32, tensor: &str, key_a: &str, base_id: &str) -> Option<Finding> {
    (u64::from(layer) >= base.block_count).then(|| {
        finding(
            key_a,
            format!(
                "maps to `{}`, but the base has {} layers (0-{})",
                tensor,
                base.block_count,
                base.block_count.saturating_sub(1)
            ),
            format!(
                "the base has {} layers; this adapter was trained on a deeper model{}",
                base.block_count,
                trained_for(base_id)
            ),
        )
    })
}

/// Which ways round a fused-experts pair fits its base tensors: lora_A facing the inputs
/// (`normal`), or the outputs (`swapped`). PEFT's layout depends on its version and on how the
/// transformers version at hand marks the experts class, so the shapes decide where they can.
struct FusedFit {
    normal: bool,
    swapped: bool,
}

impl FusedFit {
    /// Swapped or not, when exactly one way fits.
    fn only(&self) -> Option<bool> {
        (self.normal != self.swapped).then_some(self.swapped)
    }
}

/// How fused-experts module `m` fits the stacked base tensors it maps to (ggml `[in, out, n]`,
/// its rows split among them); `None` for other modules or an unknown base tensor.
fn fused_fit(arch: &arch::Arch, base: &BaseModel, m: &LoraModule) -> Option<FusedFit> {
    if !matches!(m.site, Site::FusedExperts { .. }) {
        return None;
    }
    let names = arch.targets(&m.site)?;
    let ne = &base.tensors.get(&names[0])?.ne;
    let (input, output) = (ne[0], ne.get(1)? * names.len() as u64);
    Some(FusedFit {
        normal: (m.in_features, m.out_features) == (input, output),
        swapped: (m.in_features, m.out_features) == (output, input),
    })
}

/// One target per tensor in `names`, each taking an equal share of lora_B's rows: consecutive, or
/// every n-th row when the parts interleave.
fn split_rows(
    tally: &mut Tally,
    m: &LoraModule,
    names: Vec<String>,
    key_a: &str,
    base_id: &str,
    interleaved: bool,
) -> Vec<Target> {
    let parts = names.len() as u64;
    if !m.out_features.is_multiple_of(parts) {
        tally.shape_errors.push(finding(
            key_a,
            format!(
                "`{}` has {} output rows, which llama.cpp splits into {}: they do not divide evenly",
                m.path,
                m.out_features,
                names.join(" and ")
            ),
            format!(
                "the adapter was trained for another model: pass the base it was trained on{}",
                trained_for(base_id)
            ),
        ));
        return vec![];
    }
    let height = m.out_features / parts;
    names
        .into_iter()
        .enumerate()
        .map(|(i, tensor)| Target {
            module: LoraModule {
                out_features: height,
                ..m.clone()
            },
            tensor,
            b_row_offset: if interleaved { i } else { i * height as usize },
            b_row_stride: if interleaved { parts as usize } else { 1 },
            swapped: false,
        })
        .collect()
}

/// Checks a replacement of the embeddings or the output projection against the base: as wide as
/// the base's hidden size, the base's whole vocabulary or rows within it, and keeps it.
fn check_replacement(v: &mut Validation, base: &BaseModel, adapter: &Adapter, r: &crate::formats::peft::Replacement) {
    let t = &adapter.tensors[r.tensor];
    let name = if r.site == Site::Output {
        "output.weight"
    } else {
        "token_embd.weight"
    };
    // A tied base's output projection is its embeddings.
    let Some(ne) = base
        .tensors
        .get(name)
        .or_else(|| base.tensors.get("token_embd.weight"))
        .map(|b| &b.ne)
    else {
        return v.errors.push(finding(
            &t.key,
            "the base has no token_embd.weight",
            "pass the base the adapter was trained on",
        ));
    };
    let (hidden, vocab) = (ne[0] as usize, ne.get(1).copied().unwrap_or(0) as usize);
    let rows = r.rows.as_ref().map_or(vocab, Vec::len);
    let problem = if !matches!(
        t.dtype,
        safetensors::Dtype::F32 | safetensors::Dtype::F16 | safetensors::Dtype::BF16
    ) {
        Some(format!("is {:?}, not a float type", t.dtype))
    } else if t.shape.len() != 2 || t.shape[1] != hidden {
        Some(format!("has shape {:?}; the base's {name} is {hidden} wide", t.shape))
    } else if t.shape[0] != rows && r.rows.is_some() {
        Some(format!(
            "holds {} rows, and trainable_token_indices names {rows} tokens",
            t.shape[0]
        ))
    } else if t.shape[0] != rows && !has_tokenizer(adapter) {
        Some(format!(
            "holds {} vocabulary rows and the base {vocab}: the vocabulary was resized (tokens added or removed), \
             and the adapter's folder has no tokenizer files (tokenizer.json, tokenizer_config.json, \
             added_tokens.json) that say what the new tokens are",
            t.shape[0]
        ))
    } else {
        r.rows
            .iter()
            .flatten()
            .find(|&&i| i as usize >= vocab)
            .map(|i| format!("names token {i}, beyond the base's vocabulary of {vocab}"))
    };
    match problem {
        Some(p) => v
            .errors
            .push(finding(&t.key, p, "pass the base the adapter was trained on")),
        None => v.replacements.push((name.to_string(), r.clone())),
    }
}

/// Whether the adapter's folder holds tokenizer files (the text of tokens a fine-tune added).
fn has_tokenizer(adapter: &Adapter) -> bool {
    let dir = adapter.config_path.parent().unwrap_or(Path::new("."));
    crate::formats::vocab::TOKEN_FILES.iter().any(|f| dir.join(f).is_file())
}

/// Checks one pair against its base tensor (presence, tied embeddings, shape, type) and keeps it.
fn check_target(v: &mut Validation, tally: &mut Tally, base: &BaseModel, adapter: &Adapter, t: Target, base_id: &str) {
    let (m, name) = (&t.module, &t.tensor);
    let key_a = &adapter.tensors[m.a].key;
    let tied = !base.tensors.contains_key("output.weight");
    // A tied base has no output weight: an lm_head LoRA then adapts a copy of the embeddings.
    let shape_of = if tied && m.site == Site::Output {
        "token_embd.weight"
    } else {
        name.as_str()
    };
    let Some(base_t) = base.tensors.get(shape_of) else {
        v.errors.push(finding(
            key_a,
            format!(
                "maps to `{name}`, which the base model {} does not have",
                base.source.display()
            ),
            format!(
                "the adapter was trained for a different model: pass the base it was trained on{}",
                trained_for(base_id)
            ),
        ));
        return;
    };
    if tied && matches!(m.site, Site::Output | Site::Embedding) {
        v.merge_only.push(tied_embedding(m.embedding, key_a));
    }
    let want = if m.embedding {
        [m.out_features, m.in_features]
    } else {
        [m.in_features, m.out_features]
    };
    if let Site::Expert { expert, .. } = m.site {
        if expert_fits(v, base_t, expert, want, key_a, name) {
            tally.experts.insert(expert);
            keep(v, tally, base_t, t);
        }
        return;
    }
    if let Site::FusedExperts { .. } = m.site {
        // Every expert at once: the base must hold exactly as many as the pair stacks.
        let n = m.experts;
        if !expert_fits(v, base_t, 0, want, key_a, name) {
            return;
        }
        if base_t.ne.get(2) != Some(&n) {
            v.errors.push(finding(
                key_a,
                format!("stacks {n} experts, and `{name}` holds {}", base_t.ne[2]),
                "the adapter was trained on another model (another expert count): pass the base it was trained on",
            ));
            return;
        }
        tally.experts.extend(0..n as u32);
        return keep(v, tally, base_t, t);
    }
    if base_t.ne[..] != want[..] {
        tally.shape_errors.push(finding(
            name,
            format!(
                "`{key_a}` (lora_A {:?}, lora_B {:?}) needs base tensor `{name}` with ggml shape {want:?}, but the base has {:?}",
                adapter.tensors[m.a].shape, adapter.tensors[m.b].shape, base_t.ne
            ),
            format!("the adapter was trained for another size or family of model: pass the base it was trained on{}", trained_for(base_id)),
        ));
        return;
    }
    keep(v, tally, base_t, t);
}

/// Why an embedding (`embedding`) or lm_head LoRA on a base with tied embeddings can only be
/// merged.
fn tied_embedding(embedding: bool, key_a: &str) -> Finding {
    // Measured in llama.cpp (tests/interop): with tied embeddings the output projection *is*
    // token_embd.weight, so the loader applies an embedding LoRA there too, in a layout that
    // aborts the process (GGML_ASSERT(ggml_can_mul_mat)); an lm_head LoRA has no tensor at all.
    // PEFT's model changes one of the two uses only: a merge writes them untied.
    finding(
        key_a,
        format!(
            "{} LoRA, and the base ties its output projection to the token embeddings: PEFT's model changes \
             only the {}, which a GGUF adapter cannot express",
            if embedding { "an embedding" } else { "an lm_head" },
            if embedding {
                "input embeddings"
            } else {
                "output projection"
            }
        ),
        "merge it (`ollama-tools merge`, or create-from-base): the merged model gets its own output.weight",
    )
}

/// "experts: 8 of the base's 128 adapted (0-7), ranks [16]".
fn expert_check(experts: &BTreeSet<u32>, modules: &[Target], base: &BaseModel) -> String {
    let per_layer = base
        .tensors
        .iter()
        .find(|(n, _)| n.ends_with("_exps.weight"))
        .and_then(|(_, t)| t.ne.get(2).copied());
    let ranks: BTreeSet<u64> = modules
        .iter()
        .filter(|t| matches!(t.module.site, Site::Expert { .. } | Site::FusedExperts { .. }))
        .map(|t| t.module.rank)
        .collect();
    format!(
        "experts: {} of the base's {} per layer adapted ({}), ranks {ranks:?}",
        experts.len(),
        per_layer.map_or("?".to_string(), |n| n.to_string()),
        layer_list(experts)
    )
}

/// Records a pair that fits its base tensor.
fn keep(v: &mut Validation, tally: &mut Tally, base_t: &crate::engine::base::BaseTensor, t: Target) {
    if let Some(ty) = base_t.ty {
        tally.types.insert(ty.name());
        if below_q4(ty) {
            tally.low_bit.insert(ty.name());
        }
    }
    v.modules.push(t);
}

/// Whether expert `expert` of a pair of shape `want` fits the stacked 3-D expert tensor (ggml
/// `[in, out, n_expert]`); the error is recorded when it does not.
fn expert_fits(
    v: &mut Validation,
    base_t: &crate::engine::base::BaseTensor,
    expert: u32,
    want: [u64; 2],
    key_a: &str,
    name: &str,
) -> bool {
    let hint =
        "the adapter was trained on another model (another size or expert count): pass the base it was trained on";
    match base_t.ne[..] {
        [i, o, n] if [i, o] == want && u64::from(expert) < n => true,
        [i, o, n] if [i, o] == want => {
            v.errors.push(finding(
                key_a,
                format!("adapts expert {expert}, and `{name}` holds {n} experts (0-{})", n - 1),
                hint,
            ));
            false
        }
        _ => {
            v.errors.push(finding(
                key_a,
                format!(
                    "an expert's pair needs `{name}` of ggml shape [{}, {}, n_expert], and the base has {:?}",
                    want[0], want[1], base_t.ne
                ),
                hint,
            ));
            false
        }
    }
}

/// LoRA on a vision or audio tower that the base has no tensors for: llama.cpp's converter writes
/// the towers to a separate `mmproj` file, so its language-model GGUF has none; Ollama's own GGUFs
/// carry them, under names [`arch::TowerModule`] knows for some modules only. Left out with a
/// warning (so `--strict` refuses).
fn check_towers(v: &mut Validation, towers: &[String], base: &BaseModel) {
    if towers.is_empty() {
        return;
    }
    let why = if base.tensors.keys().any(|k| arch::is_tower_tensor(k)) {
        "this base GGUF carries a vision/audio tower, but not under a name ollama-tools knows for these modules \
         (docs/ARCHITECTURES.md lists the known ones)"
    } else {
        "the base GGUF holds the language model only (llama.cpp keeps vision/audio towers in a separate mmproj file)"
    };
    v.warnings.push(finding(
        "vision/audio tower",
        format!(
            "{} LoRA pair{} on the multimodal towers ({}) left out: {why}; the language model is adapted, \
             images and audio are encoded as by the base",
            towers.len(),
            plural(towers.len()),
            first_and_more(towers),
        ),
        "nothing to do for text use; to keep the tower's training, merge into the Ollama library's build of the model \
         (it carries the tower), or merge with PEFT (merge_and_unload) and convert the whole model with llama.cpp \
         (text model and mmproj); --strict refuses",
    ));
}

/// A k/v projection of a layer that reuses an earlier layer's keys and values (Gemma 4).
fn is_kv_shared(base: &BaseModel, site: &Site) -> bool {
    let Site::Layer { layer, module } = site else {
        return false;
    };
    base.shared_kv_layers > 0
        && u64::from(*layer) >= base.block_count.saturating_sub(base.shared_kv_layers)
        && u64::from(*layer) < base.block_count
        && matches!(module.as_str(), "k_proj" | "v_proj")
}

fn trained_for(base_id: &str) -> String {
    if base_id.is_empty() {
        String::new()
    } else {
        format!(" (`{base_id}`, says its adapter_config.json)")
    }
}

fn layer_list(layers: &BTreeSet<u32>) -> String {
    match (layers.first(), layers.last()) {
        (Some(a), Some(b)) if layers.len() as u32 == b - a + 1 => format!("{a}-{b}"),
        (Some(_), Some(_)) => format!("{:?}", layers),
        _ => "(none)".into(),
    }
}

/// Family, size and 4-bit warnings from the adapter's `base_model_name_or_path`.
fn check_identity(v: &mut Validation, base: &BaseModel, base_id: &str) {
    if base_id.is_empty() {
        v.checks
            .push("adapter names no base model (base_model_name_or_path), so family and size were not compared".into());
        return;
    }
    let lower = base_id.to_ascii_lowercase();
    if lower.contains("bnb") || lower.contains("4bit") {
        v.warnings.push(finding(
            "base_model_name_or_path",
            format!("the adapter was trained on a 4-bit (bitsandbytes / QLoRA) copy of the base, `{base_id}`"),
            "expected for QLoRA: on the full-precision or GGUF base the result is close to, not exactly, what was trained",
        ));
    }
    match family_of(base_id) {
        Some(f) if f != base.arch => v.warnings.push(finding(
            "base_model_name_or_path",
            format!(
                "the adapter was trained on `{base_id}` (a {f} model), but the base is `{}`",
                base.arch
            ),
            "pass the base model the adapter was trained on",
        )),
        Some(f) => v
            .checks
            .push(format!("adapter's base `{base_id}` is a {f} model, like the base")),
        None => {}
    }
    let base_size = base
        .size_label
        .as_deref()
        .and_then(size_of)
        .or_else(|| base.name.as_deref().and_then(size_of));
    match (size_of(base_id), base_size) {
        (Some(a), Some(b)) if (a - b).abs() / a.max(b) > 0.3 => v.warnings.push(finding(
            "base_model_name_or_path",
            format!("the adapter was trained on `{base_id}` ({a}B parameters), but the base is a {b}B model"),
            "pass the base of the size the adapter was trained on",
        )),
        (Some(a), Some(b)) => v.checks.push(format!("sizes agree: adapter's base {a}B, base {b}B")),
        _ => {}
    }
}

/// The adapter's vocabulary, where its tensors show it, against the base's: an embedding or lm_head
/// LoRA, or the full embedding / lm_head PEFT saves when training resized the vocabulary.
fn check_vocab(v: &mut Validation, adapter: &Adapter, modules: &[LoraModule], base: &BaseModel) {
    let from_lora = modules.iter().find_map(|m| match m.site {
        Site::Embedding => Some(m.in_features),
        Site::Output => Some(m.out_features),
        Site::Layer { .. }
        | Site::Expert { .. }
        | Site::FusedExperts { .. }
        | Site::Model { .. }
        | Site::Tower { .. } => None,
    });
    let from_full = adapter.tensors.iter().find_map(|t| {
        let full = t.key.ends_with("embed_tokens.weight") || t.key.ends_with("lm_head.weight");
        (full && t.shape.len() == 2).then(|| t.shape[0] as u64)
    });
    let adapter_vocab = from_lora.or(from_full);
    match (adapter_vocab, base.vocab_size) {
        (Some(a), Some(b)) if a != b && from_lora.is_none() && has_tokenizer(adapter) => v.notices.push(format!(
            "the adapter resizes the vocabulary from {b} to {a} tokens: a merge takes the new tokens from the \
             tokenizer files beside it"
        )),
        (Some(a), Some(b)) if a != b => v.warnings.push(finding(
            "vocabulary",
            format!("the adapter's embedding / lm_head tensors cover {a} tokens, the base has {b}: tokens were added or removed in training"),
            "the base's tokenizer does not know the new tokens; use a base with the same vocabulary",
        )),
        (Some(a), Some(_)) => v.checks.push(format!("vocabulary of {a} tokens matches")),
        _ => v.checks.push("vocabulary not compared (the adapter has no embedding or lm_head tensors)".into()),
    }
}

fn finish(mut v: Validation, base: &BaseModel, layers: usize) -> Validation {
    v.summary = if v.errors.is_empty() {
        let only = match (v.merge_only.is_empty(), v.adapter_only.is_empty()) {
            (false, _) => "; it can only be merged (merge, create-from-base), not used as a GGUF adapter",
            (_, false) => "; it can only be used as a GGUF adapter (convert), not merged",
            _ => "",
        };
        format!(
            "{layers} layers, {} tensors, all shapes match {}{only}",
            v.modules.len() * 2,
            base.source.display()
        )
    } else {
        format!(
            "{} error{} against {}",
            v.errors.len(),
            if v.errors.len() == 1 { "" } else { "s" },
            base.source.display()
        )
    };
    v
}

/// A ready GGUF LoRA adapter, checked against a base the way llama.cpp checks it when loading.
pub struct GgufAdapter {
    pub(crate) path: PathBuf,
    pub(crate) header: crate::formats::gguf::Header,
    /// `adapter.lora.alpha`; 0 means llama.cpp applies each pair with scale 1.
    pub(crate) alpha: f32,
    /// Per adapted base tensor: its name and the indexes of its lora_a and lora_b in `header.tensors`.
    pub(crate) pairs: Vec<(String, usize, usize)>,
}

impl GgufAdapter {
    /// The factor llama.cpp multiplies `lora_b @ lora_a` by for a pair of rank `rank`.
    pub(crate) fn scale(&self, rank: u64) -> f32 {
        if self.alpha == 0.0 {
            1.0
        } else {
            self.alpha / rank as f32
        }
    }
}

/// What to pass instead of a file that is not a usable GGUF LoRA adapter.
const GGUF_ADAPTER_HINT: &str = "pass a GGUF LoRA adapter (from `ollama-tools convert` or llama.cpp's convert_lora_to_gguf.py), or the PEFT adapter folder";

/// Reads the GGUF LoRA adapter at `path` and checks it fits `base`: `general.type` is `adapter`, the
/// architecture is the base's, every lora_a has its lora_b, and each pair's shapes match the base
/// tensor as llama.cpp requires (for the token embedding, lora_a is stored transposed).
pub fn check_gguf_adapter(path: &Path, base: &BaseModel) -> crate::Result<GgufAdapter> {
    let header = crate::formats::gguf::read_header(path).map_err(|e| Error::invalid(path, e.to_string()))?;
    check_adapter_kind(path, &header, base)?;
    let alpha = adapter_alpha(path, &header)?;
    let pairs = adapter_pairs(path, &header, base)?;
    if pairs.is_empty() {
        return Err(Error::refused(
            path,
            "the adapter holds no LoRA tensor pairs",
            GGUF_ADAPTER_HINT,
        ));
    }
    Ok(GgufAdapter {
        path: path.to_path_buf(),
        header,
        alpha,
        pairs,
    })
}

/// Refuses a GGUF that is not a LoRA adapter (`general.type`, `adapter.type`), or one for another
/// architecture than `base`'s.
fn check_adapter_kind(path: &Path, header: &crate::formats::gguf::Header, base: &BaseModel) -> crate::Result<()> {
    match header.get_str("general.type") {
        Some("adapter") => {}
        other => {
            return Err(Error::refused(
                path,
                format!(
                    "not a GGUF LoRA adapter: general.type is {}",
                    other.map_or("not set".into(), |t| format!("`{t}`"))
                ),
                GGUF_ADAPTER_HINT,
            ));
        }
    }
    if let Some(t) = header.get_str("adapter.type").filter(|t| *t != "lora") {
        return Err(Error::refused(
            path,
            format!("adapter.type is `{t}`; only LoRA adapters are applied by llama.cpp and Ollama"),
            GGUF_ADAPTER_HINT,
        ));
    }
    let arch = header.get_str("general.architecture").unwrap_or_default();
    if arch != base.arch {
        return Err(Error::refused(
            path,
            format!(
                "the adapter is for `{arch}` models, and {} is `{}`",
                base.source.display(),
                base.arch
            ),
            "use the base model the adapter was made for",
        )
        .with_kind(crate::ErrorKind::Mismatch));
    }
    Ok(())
}

/// `adapter.lora.alpha` (0 when absent); refused unless finite and not negative.
fn adapter_alpha(path: &Path, header: &crate::formats::gguf::Header) -> crate::Result<f32> {
    let alpha = header.get("adapter.lora.alpha").and_then(|v| v.as_f64()).unwrap_or(0.0) as f32;
    if !(alpha.is_finite() && alpha >= 0.0) {
        return Err(Error::invalid(
            path,
            format!("adapter.lora.alpha is {alpha}; it must be a finite number >= 0"),
        )
        .with_hint(GGUF_ADAPTER_HINT));
    }
    Ok(alpha)
}

/// Per adapted base tensor: its name and the indexes of its lora_a and lora_b in the header, in
/// file order; refused at the first tensor that is not half of a pair fitting its base tensor.
fn adapter_pairs(
    path: &Path,
    header: &crate::formats::gguf::Header,
    base: &BaseModel,
) -> crate::Result<Vec<(String, usize, usize)>> {
    let index: std::collections::HashMap<&str, usize> = header
        .tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    let mut pairs = Vec::new();
    for (i, t) in header.tensors.iter().enumerate() {
        let Some(name) = t.name.strip_suffix(".lora_a") else {
            if !t.name.ends_with(".lora_b") {
                return Err(Error::refused(
                    path,
                    format!("tensor `{}` is neither a lora_a nor a lora_b", t.name),
                    GGUF_ADAPTER_HINT,
                ));
            }
            if !index.contains_key(format!("{}.lora_a", t.name.trim_end_matches(".lora_b")).as_str()) {
                return Err(
                    Error::invalid(path, format!("`{}` has no matching lora_a", t.name)).with_hint(GGUF_ADAPTER_HINT)
                );
            }
            continue;
        };
        let &b = index.get(format!("{name}.lora_b").as_str()).ok_or_else(|| {
            Error::invalid(path, format!("`{}` has no matching lora_b", t.name)).with_hint(GGUF_ADAPTER_HINT)
        })?;
        let bt = &header.tensors[b];
        let base_t = base.tensors.get(name).ok_or_else(|| {
            Error::refused(
                path,
                format!(
                    "`{}` adapts `{name}`, which {} does not have",
                    t.name,
                    base.source.display()
                ),
                "use the base model the adapter was made for",
            )
            .with_kind(crate::ErrorKind::Mismatch)
        })?;
        check_pair_fits(path, name, t, bt, &base_t.ne)?;
        pairs.push((name.to_string(), i, b));
    }
    Ok(pairs)
}

/// Refuses a lora_a `a` / lora_b `b` pair for base tensor `name` (ggml shape `bn`) unless both are
/// readable 2-d (3-d for experts) matrices whose shapes fit it as llama.cpp requires.
fn check_pair_fits(
    path: &Path,
    name: &str,
    a: &crate::formats::gguf::TensorInfo,
    b: &crate::formats::gguf::TensorInfo,
    bn: &[u64],
) -> crate::Result<()> {
    for x in [a, b] {
        if !matches!(x.ne.len(), 2 | 3) || !crate::engine::quant::can_dequantize(x.ty) {
            return Err(Error::refused(
                path,
                format!(
                    "`{}` is a {}-d {} tensor; a LoRA pair is two 2-d matrices (3-d for experts) of a readable type",
                    x.name,
                    x.ne.len(),
                    x.ty
                ),
                GGUF_ADAPTER_HINT,
            ));
        }
    }
    let (an, bbn): (&[u64], &[u64]) = (&a.ne, &b.ne);
    // llama.cpp's own checks (llama-adapter.cpp): a = [in, r], b = [r, out]; the token embedding
    // keeps lora_a transposed, a = [r, vocab], b = [r, hidden].
    // Every dimension non-zero: a rank or width of 0 would make the merge divide by zero.
    let nonzero = [bn, an, bbn].iter().all(|ne| ne.iter().all(|&d| d > 0));
    // A stacked expert tensor (ggml [in, out, n]) takes a = [in, r, n], b = [r, out, n].
    let same_stack = bn.len() == an.len() && bn.len() == bbn.len() && bn.get(2) == an.get(2) && bn.get(2) == bbn.get(2);
    let fits = nonzero
        && matches!(bn.len(), 2 | 3)
        && same_stack
        && if name == "token_embd.weight" {
            bn[0] == bbn[1] && bn[1] == an[1] && an[0] == bbn[0]
        } else {
            bn[0] == an[0] && bn[1] == bbn[1] && an[1] == bbn[0]
        };
    if !fits {
        return Err(Error::refused(
            path,
            format!(
                "`{name}` is {bn:?} in the base, and its lora_a {an:?} / lora_b {bbn:?} do not fit it (ggml order)"
            ),
            "the adapter was made for a different model; use its own base",
        )
        .with_kind(crate::ErrorKind::Mismatch));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_families_from_names() {
        assert_eq!(size_of("meta-llama/Llama-3.2-3B-Instruct"), Some(3.0));
        assert_eq!(size_of("google/gemma-3-270m-it"), Some(0.27));
        assert_eq!(size_of("Qwen/Qwen2.5-0.5B-Instruct"), Some(0.5));
        assert_eq!(size_of("3.2B"), Some(3.2));
        assert_eq!(size_of("unsloth/llama-3-8b-bnb-4bit"), Some(8.0));
        assert_eq!(size_of("mistralai/Mistral-7B-Instruct-v0.3"), Some(7.0));
        assert_eq!(size_of("gpt2"), None);
        assert_eq!(family_of("unsloth/tinyllama-bnb-4bit"), Some("llama"));
        assert_eq!(family_of("Qwen/Qwen2.5-0.5B-Instruct"), Some("qwen2"));
        assert_eq!(family_of("google/gemma-3-270m-it"), Some("gemma3"));
        assert_eq!(family_of("microsoft/Phi-3.5-mini-instruct"), Some("phi3"));
        assert_eq!(family_of("unsloth/Qwen3.5-9B"), Some("qwen35"));
        assert_eq!(family_of("Qwen/Qwen3-30B-A3B-Instruct-2507"), Some("qwen3moe"));
        assert_eq!(family_of("meta-llama/Llama-4-Scout-17B-16E-Instruct"), Some("llama4"));
        assert_eq!(family_of("google/gemma-4-E4B-it"), Some("gemma4"));
        assert_eq!(family_of("mistralai/Ministral-3-3B-Instruct-2512"), Some("mistral3"));
        assert_eq!(
            family_of("mistralai/Mistral-Small-3.1-24B-Instruct-2503"),
            Some("mistral3")
        );
        assert_eq!(family_of("mistralai/Mistral-Small-24B-Instruct-2501"), Some("llama"));
        assert_eq!(family_of("allenai/OLMo-2-1124-7B"), Some("olmo2"));
        assert_eq!(family_of("mistralai/Mistral-7B-v0.1"), Some("llama"));
        assert_eq!(family_of("some/model"), None);
    }
}
