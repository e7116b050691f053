//! PEFT LoRA adapter(s) -> one GGUF LoRA adapter that llama.cpp applies exactly as PEFT does.
//!
//! llama.cpp computes `W x + (alpha / rank) * B (A x)` with one `alpha` per file and `rank` read from
//! each tensor's shape. PEFT's per-module scale (`alpha/r`, rsLoRA's `alpha/sqrt(r)`, `rank_pattern`,
//! `alpha_pattern`), adapter weights, `--scale` and stacking all reduce to one factor per LoRA pair;
//! we choose the file alpha that makes most factors exactly 1, and multiply the rest into lora_B in
//! f32 before rounding to the output type. Stacking concatenates ranks:
//! `s1·B1A1 + s2·B2A2 = [s1·B1 | s2·B2] @ [A1; A2]`.
//!
//! The work is streamed: a plan from the headers, one pass over the weights for statistics
//! (non-finite values, f16 range), then one pass that writes each tensor to a temporary file that is
//! renamed into place at the end. At most one output tensor is in memory at a time.

use std::collections::BTreeMap;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use half::{bf16, f16, slice::HalfFloatSliceExt};
use safetensors::Dtype;

use crate::engine::arch::{self, Arch, Site};
use crate::engine::base::BaseModel;
use crate::engine::output::{persist, temp_beside};
use crate::engine::pipeline;
use crate::engine::validate::{Finding, Target, first_and_more, plural, validate};
use crate::error::{Error, Result};
use crate::formats::gguf::{self, GgmlType, TensorSpec, Value};
use crate::formats::peft::{self, Adapter, RawTensor};
use crate::progress::Progress;

#[cfg(target_endian = "big")]
compile_error!("GGUF and safetensors are little-endian; this code writes memory as is");

/// Requested tensor type of the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutType {
    /// f16, except f32 for a tensor whose values f16 cannot hold (overflow, or all in f16's subnormal range).
    #[default]
    Auto,
    /// f16 throughout; a tensor with values beyond f16's range (65504) is refused.
    F16,
    /// bf16 throughout: f32's range, 8 bits of precision.
    Bf16,
    /// f32 throughout: exact, twice the size of f16.
    F32,
}

/// One adapter to convert, with its weight when several are stacked.
pub struct Input {
    /// The PEFT adapter.
    pub adapter: Adapter,
    /// Its delta is multiplied by this (1 for one adapter).
    pub weight: f64,
}

/// How to convert.
#[derive(Clone, Debug)]
pub struct Options {
    /// The tensor type written.
    pub outtype: OutType,
    /// Multiplies the whole effect (0.5 = half strength).
    pub scale: f64,
    /// `general.name`; defaults to the adapter folder names.
    pub name: Option<String>,
    /// Replace an existing output file.
    pub force: bool,
    /// Treat validation warnings as errors.
    pub strict: bool,
    /// The plan is for a merge into the base, not a GGUF adapter (what each can apply differs).
    pub merging: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            outtype: OutType::Auto,
            scale: 1.0,
            name: None,
            force: false,
            strict: false,
            merging: false,
        }
    }
}

/// What was written.
#[derive(Debug, serde::Serialize)]
pub struct Summary {
    /// The file written.
    pub output: PathBuf,
    /// The base architecture the tensors are named for.
    pub arch: String,
    /// The `adapter.lora.alpha` written.
    pub alpha: f32,
    /// LoRA pairs written.
    pub pairs: usize,
    /// Pairs whose scale did not fit the file alpha and was folded into lora_B.
    pub folded: usize,
    /// Tensor type name -> count.
    pub types: BTreeMap<String, usize>,
    /// The file's size.
    pub bytes: u64,
    /// What the user was told on the way.
    pub notices: Vec<String>,
}

/// How one source tensor goes into an output tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Layout {
    /// lora_A of a linear layer: rows stacked, `[r_k, in]` at row offset.
    RowsA,
    /// lora_B (linear or embedding): `[out, r_k]` at column offset, times the factor, rows permuted.
    ColsB,
    /// lora_embedding_A: llama.cpp wants it transposed, `[vocab, r_k]` at column offset.
    TransposedA,
}

#[derive(Clone, Debug)]
struct Part {
    input: usize,
    tensor: usize,
    rank: usize,
    /// Multiplier folded into this part (1.0 for lora_A).
    factor: f64,
    /// The expert block it fills (0 but in a stacked expert pair).
    expert: usize,
    /// Its first rank within its expert block (parts stacked on one tensor follow each other).
    at: usize,
    /// Where it is in the source tensor: lora_A's rows `src_first..src_first + rank`, lora_B's
    /// columns `src_first + k * src_stride` (a fused-experts pair holds every expert; else 0, 1).
    src_first: usize,
    src_stride: usize,
    /// The source holds this part transposed: lora_A's rows are the source's columns
    /// `src_first + k * src_stride`, lora_B's columns its rows (Llama 4's fused experts, where
    /// PEFT's lora_B serves as lora_a and its lora_A as lora_b).
    transposed: bool,
}

pub(crate) struct OutTensor {
    pub(crate) spec: TensorSpec,
    pub(crate) layout: Layout,
    /// numpy shape `[rows, cols]`.
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    parts: Vec<Part>,
    /// Source row of each output row (lora_B: llama's Q/K order, Qwen3.5's V heads).
    row_perm: Option<Vec<usize>>,
    /// Source column of each output column (lora_A: Qwen3.5's V heads on out_proj's input).
    col_perm: Option<Vec<usize>>,
    /// The base tensor this pair adapts (`spec.name` without `.lora_a` / `.lora_b`).
    pub(crate) base: String,
    /// Expert blocks: 1, or a stacked expert tensor's expert count (lora_a ggml `[in, r, n]`,
    /// lora_b `[r, out, n]`, what llama.cpp's `build_lora_mm_id` multiplies per expert).
    pub(crate) experts: usize,
}

/// The refusal for an adapter that failed validation, every finding listed.
pub(crate) fn refuse(adapter: &Adapter, base: &BaseModel, findings: &[Finding]) -> Error {
    let n = findings.len();
    let mut msg = format!(
        "does not fit {} ({n} problem{}):",
        base.source.display(),
        if n == 1 { "" } else { "s" }
    );
    for f in findings.iter().take(12) {
        msg.push_str(&format!(
            "\n  - {}: {}\n    what to do: {}",
            f.subject, f.message, f.hint
        ));
    }
    if n > 12 {
        msg.push_str(&format!(
            "\n  ... and {} more (run `ollama-tools validate` for all)",
            n - 12
        ));
    }
    Error::Refused {
        path: adapter.path.clone(),
        msg,
        hint: None,
        kind: crate::ErrorKind::Mismatch,
    }
}

/// The kind of a refusal for `findings` (those with `warnings` appended under `--strict`): a
/// mismatch, unless every error is about the adapter alone or the base alone, so that no other
/// pairing would do: then it is unsupported.
fn refusal_kind(findings: &[Finding], warnings: &[Finding]) -> crate::ErrorKind {
    let mut errors = findings.iter().filter(|f| !warnings.contains(f)).peekable();
    if errors.peek().is_some() && errors.all(|f| f.alone) {
        crate::ErrorKind::Unsupported
    } else {
        crate::ErrorKind::Mismatch
    }
}

/// The name of an adapter for `general.name`: its folder.
pub(crate) fn adapter_label(adapter: &Adapter) -> String {
    let dir = adapter.config_path.parent().unwrap_or(Path::new("."));
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    dir.file_name()
        .map_or_else(|| "adapter".to_string(), |n| n.to_string_lossy().into_owned())
}

/// Converts `inputs` for `base` into the GGUF LoRA adapter `output`.
pub fn convert(
    inputs: &[Input],
    base: &BaseModel,
    output: &Path,
    opts: &Options,
    progress: &dyn Progress,
) -> Result<Summary> {
    let mut plan = prepare(inputs, base, output, opts)?;
    let arch = base.arch.clone();
    if let Some(spec) = base.arch_spec() {
        refuse_merge_only(spec, &plan, inputs)?;
    }
    leave_out_towers(&mut plan, inputs, opts.strict)?;

    // Pass 1: statistics, so bad values are refused and tensor types fixed before anything is written.
    let total_bytes: u64 = plan
        .tensors
        .iter()
        .flat_map(|t| &t.parts)
        .map(|p| src(inputs, p).1.byte_len() as u64)
        .sum();
    progress.stage("checking", total_bytes);
    let stats = scan(inputs, &plan.tensors, progress)?;
    progress.finish();
    for (t, stats) in plan.tensors.iter_mut().zip(stats) {
        t.spec.ty = choose_type(t, &stats, opts.outtype, output, &mut plan.notices)?;
    }

    // Pass 2.
    progress.stage("writing", total_bytes);
    let kvs = metadata(inputs, base, opts, plan.alpha, &plan.tensors);
    let bytes = write(inputs, &plan.tensors, &kvs, output, opts.force, progress)?;
    progress.finish();

    let mut types = BTreeMap::new();
    for t in &plan.tensors {
        *types.entry(t.spec.ty.name()).or_insert(0) += 1;
    }
    for n in &plan.notices {
        progress.notice(n);
    }
    Ok(Summary {
        output: output.to_path_buf(),
        arch,
        alpha: plan.alpha,
        pairs: plan.tensors.len() / 2,
        folded: plan.folded,
        types,
        bytes,
        notices: plan.notices,
    })
}

/// A GGUF adapter for a tensor llama.cpp multiplies without LoRA would load and do nothing.
fn refuse_merge_only(arch: &Arch, plan: &Plan, inputs: &[Input]) -> Result<()> {
    let names: Vec<&str> = plan
        .tensors
        .iter()
        .filter_map(|t| t.spec.name.strip_suffix(".lora_a"))
        .filter(|n| arch.is_merge_only(n))
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    Err(Error::Refused {
        path: inputs[0].adapter.path.clone(),
        msg: format!(
            "adapts {}, which llama.cpp's `{}` runtime multiplies without applying any LoRA: \
             as a GGUF adapter it would load and change nothing",
            first_and_more(&names),
            arch.name
        ),
        hint: Some("merge it into the base instead: `ollama-tools merge`, or create-from-base (which merges on Ollama 0.34.1+)".into()),
        kind: crate::ErrorKind::Unsupported,
    })
}

/// A GGUF adapter reaches the language model only (llama.cpp loads towers from a separate mmproj,
/// which takes no adapter), so pairs on the tower a base carries are dropped here; `merge` keeps them.
fn leave_out_towers(plan: &mut Plan, inputs: &[Input], strict: bool) -> Result<()> {
    let towers: Vec<&str> = plan
        .tensors
        .iter()
        .filter_map(|t| t.spec.name.strip_suffix(".lora_a"))
        .filter(|n| arch::is_tower_tensor(n))
        .collect();
    if towers.is_empty() {
        return Ok(());
    }
    let what = format!(
        "{} LoRA pair{} on the base's multimodal tower ({})",
        towers.len(),
        plural(towers.len()),
        first_and_more(&towers)
    );
    let hint =
        "merge the adapter into the base instead (`ollama-tools merge`, or create-from-base), which applies them";
    if strict || plan.tensors.len() == 2 * towers.len() {
        let why = if strict { "--strict" } else { "nothing else to convert" };
        return Err(Error::refused(
            &inputs[0].adapter.path,
            format!("{what} cannot go into a GGUF adapter ({why})"),
            hint,
        )
        // Under --strict this is a warning made an error; otherwise nothing else is left to convert.
        .with_kind(if strict {
            crate::ErrorKind::Mismatch
        } else {
            crate::ErrorKind::Unsupported
        }));
    }
    plan.tensors.retain(|t| !arch::is_tower_tensor(&t.spec.name));
    plan.notices.push(format!(
        "warning: {what} left out: a GGUF adapter reaches the language model only ({hint})"
    ));
    Ok(())
}

/// What every command that writes from adapters checks first (options, the output, the base's
/// architecture, the adapters against the base), and then the plan.
pub(crate) fn prepare(inputs: &[Input], base: &BaseModel, output: &Path, opts: &Options) -> Result<Plan> {
    check_scale(opts.scale)?;
    if let Some(i) = inputs.iter().find(|i| !(i.weight.is_finite() && i.weight != 0.0)) {
        return Err(Error::Usage(format!(
            "adapter weight must be a non-zero finite number, got {} for {}",
            i.weight,
            i.adapter.path.display()
        )));
    }
    if inputs.is_empty() {
        return Err(Error::Usage("no adapter given".into()));
    }
    let mut sources: Vec<&Path> = inputs
        .iter()
        .flat_map(|i| [i.adapter.weights_path.as_path(), i.adapter.config_path.as_path()])
        .collect();
    sources.extend(base.gguf_path.as_deref());
    check_output(output, "-o", opts.force, &sources)?;
    let arch = base.arch_spec().ok_or_else(|| {
        Error::refused(
            &base.source,
            format!("base architecture `{}` is not supported", base.arch),
            format!("supported: {}", arch::supported_list()),
        )
    })?;
    plan(inputs, base, arch, opts)
}

/// `--scale`: zero would silently change nothing, NaN and Inf would write a broken model.
pub(crate) fn check_scale(scale: f64) -> Result<()> {
    if scale.is_finite() && scale != 0.0 {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "--scale must be a non-zero finite number, got {scale}"
    )))
}

/// The output may be written: it does not exist (or `--force`), it is not one of the inputs, and
/// it is not a device, socket or directory that a rename would replace. Checked before any work.
pub(crate) fn check_output(output: &Path, flag: &str, force: bool, inputs: &[&Path]) -> Result<()> {
    let refuse = |msg: &str, hint: &str| {
        Err(Error::Refused {
            path: output.to_path_buf(),
            msg: msg.into(),
            hint: Some(hint.into()),
            kind: crate::ErrorKind::Usage,
        })
    };
    let Ok(meta) = std::fs::symlink_metadata(output) else {
        return Ok(());
    };
    let same = |p: &&Path| match (std::fs::canonicalize(output), std::fs::canonicalize(p)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if inputs.iter().any(same) {
        return refuse(
            "is one of the inputs; writing there would destroy what is being read",
            &format!("choose another {flag}"),
        );
    }
    if !meta.is_file() && !meta.file_type().is_symlink() {
        return refuse(
            "exists and is not a regular file (a directory, device or socket)",
            &format!("choose another {flag}"),
        );
    }
    if !force {
        return refuse(
            "already exists",
            &format!("pass --force to replace it, or choose another {flag}"),
        );
    }
    Ok(())
}

/// The output tensors, the file alpha, and what the user should be told, from the headers alone.
/// `tensors` holds, per adapted base tensor, its lora_a then its lora_b.
pub(crate) struct Plan {
    pub(crate) tensors: Vec<OutTensor>,
    pub(crate) alpha: f32,
    /// Pairs whose factor was folded into lora_B.
    folded: usize,
    pub(crate) notices: Vec<String>,
    /// Per pair (`tensors` two by two): the DoRA magnitude of each of its rows, in the base
    /// tensor's row order, for a DoRA module (merge only).
    pub(crate) magnitudes: Vec<Option<OutTensor>>,
    /// Base tensors whose weights, or some of whose rows, an adapter (`usize`: its input) replaces.
    pub(crate) replacements: Vec<(String, usize, crate::formats::peft::Replacement)>,
}

/// Pairs every adapter's modules with the base's tensors (refusing what llama.cpp would not load),
/// stacks modules that adapt the same tensor, and folds each part's scale against one file alpha.
pub(crate) fn plan(inputs: &[Input], base: &BaseModel, arch: &Arch, opts: &Options) -> Result<Plan> {
    let Targets {
        by_tensor,
        replacements,
        notices,
    } = gather_targets(inputs, base, opts)?;
    check_alora_stack(inputs)?;
    let (mut tensors, mut magnitudes) = (Vec::new(), Vec::new());
    for ((site, name), targets) in &by_tensor {
        let pair = out_pair(inputs, base, arch, opts, site, name, targets)?;
        magnitudes.push(magnitude(&pair[1], targets)?);
        tensors.extend(pair);
    }
    let alpha = file_alpha(&tensors)?;
    let folded = fold_factors(&mut tensors, alpha)?;
    Ok(Plan {
        tensors,
        alpha,
        folded,
        notices,
        magnitudes,
        replacements,
    })
}

/// What the inputs' validations give a plan: their pairs by base tensor, their replacements, and
/// what the user should be told.
struct Targets {
    /// Keyed by site, then tensor: a row-split module adapts several tensors, and every expert of
    /// a layer's projection goes into one stacked pair. `usize`: the input.
    by_tensor: BTreeMap<(Site, String), Vec<(usize, Target)>>,
    replacements: Vec<(String, usize, crate::formats::peft::Replacement)>,
    notices: Vec<String>,
}

/// Validates every input against the base and gathers what fits; refuses the first input with
/// errors (with `strict`, warnings too) or with nothing to convert.
fn gather_targets(inputs: &[Input], base: &BaseModel, opts: &Options) -> Result<Targets> {
    let mut out = Targets {
        by_tensor: BTreeMap::new(),
        replacements: Vec::new(),
        notices: Vec::new(),
    };
    for (i, input) in inputs.iter().enumerate() {
        let v = validate(&input.adapter, base);
        let mut errors: Vec<_> = v.errors_for(opts.merging).cloned().collect();
        if opts.strict {
            errors.extend(v.warnings.iter().cloned());
        }
        if !errors.is_empty() {
            let kind = refusal_kind(&errors, &v.warnings);
            return Err(refuse(&input.adapter, base, &errors).with_kind(kind));
        }
        if v.modules.is_empty() && v.replacements.is_empty() {
            return Err(Error::refused(
                &input.adapter.weights_path,
                "no LoRA weights to convert",
                "check that this is the adapter you trained",
            ));
        }
        out.notices.extend(v.notices);
        out.notices.extend(
            v.warnings
                .iter()
                .map(|w| format!("warning: {}: {} ({})", w.subject, w.message, w.hint)),
        );
        out.replacements
            .extend(v.replacements.into_iter().map(|(name, r)| (name, i, r)));
        for t in v.modules {
            out.by_tensor
                .entry((group_site(&t.module.site), t.tensor.clone()))
                .or_default()
                .push((i, t));
        }
    }
    Ok(out)
}

/// The file alpha: the most common factor magnitude of lora_b tensors whose parts share one, so those
/// need no folding (for a plain adapter, exactly lora_alpha); refused when f32 cannot carry it.
fn file_alpha(tensors: &[OutTensor]) -> Result<f32> {
    let mut votes: Vec<(f64, usize)> = Vec::new();
    for t in tensors.iter().filter(|t| t.layout == Layout::ColsB) {
        let f = t.parts[0].factor.abs();
        if t.parts.iter().all(|p| p.factor.abs() == f) {
            match votes.iter_mut().find(|(v, _)| *v == f) {
                Some((_, n)) => *n += 1,
                None => votes.push((f, 1)),
            }
        }
    }
    let alpha_f64 = votes.iter().max_by_key(|(_, n)| *n).map_or_else(
        || {
            tensors
                .iter()
                .find(|t| t.layout == Layout::ColsB)
                .map_or(1.0, |t| t.parts[0].factor.abs())
        },
        |(v, _)| *v,
    );
    // llama.cpp computes alpha / rank in f32: keep alpha well inside f32's normal range.
    if !(1e-20..=1e20).contains(&alpha_f64) {
        return Err(Error::Usage(format!(
            "the adapter's scale works out to alpha = {alpha_f64:e}, which a GGUF adapter's f32 alpha cannot carry reliably; \
             check lora_alpha / alpha_pattern in adapter_config.json and --scale / the adapter weights"
        )));
    }
    Ok(alpha_f64 as f32)
}

/// Divides every lora_b part's factor by the file alpha; the number of pairs still folding a factor
/// into lora_b, refused when one is too far from the alpha to fold.
fn fold_factors(tensors: &mut [OutTensor], alpha: f32) -> Result<usize> {
    let mut folded = 0;
    for t in tensors.iter_mut().filter(|t| t.layout == Layout::ColsB) {
        let mut any = false;
        for p in &mut t.parts {
            p.factor /= f64::from(alpha);
            // Within f32 rounding of the stored alpha counts as exact: folding would change nothing.
            if (p.factor - 1.0).abs() < 1e-6 {
                p.factor = 1.0;
            } else {
                any = true;
            }
            if !(p.factor.is_finite() && p.factor.abs() < 1e30) {
                return Err(Error::Usage(format!(
                    "`{}` needs a scale {:e} times the file's alpha {alpha}: the modules' scales are too far apart to fold; \
                     check alpha_pattern / rank_pattern and the adapter weights",
                    t.spec.name, p.factor
                )));
            }
        }
        folded += usize::from(any);
    }
    Ok(folded)
}

/// The DoRA magnitudes of the rows of `lora_b`'s base tensor, laid out (reordered, split) as
/// `lora_b`'s rows are; `None` without DoRA. A DoRA module's magnitude holds for its own delta
/// alone, so it cannot share its tensor with another adapter's module.
fn magnitude(lora_b: &OutTensor, targets: &[(usize, Target)]) -> Result<Option<OutTensor>> {
    let Some((input, t)) = targets.iter().find(|(_, t)| t.module.magnitude.is_some()) else {
        return Ok(None);
    };
    if targets.len() > 1 {
        return Err(Error::Usage(format!(
            "`{}` gets a DoRA module and another adapter's module: DoRA rescales by the norm of its own merged \
             weight, so it cannot be stacked; merge the DoRA adapter alone",
            lora_b.base
        )));
    }
    let part = Part {
        input: *input,
        tensor: t.module.magnitude.unwrap_or_default(),
        rank: 1,
        factor: 1.0,
        expert: 0,
        at: 0,
        src_first: 0,
        src_stride: 1,
        transposed: false,
    };
    Ok(Some(OutTensor {
        spec: TensorSpec {
            name: format!("{}.dora_magnitude", lora_b.base),
            ne: vec![1, lora_b.rows as u64],
            ty: GgmlType::F32,
        },
        layout: Layout::ColsB,
        rows: lora_b.rows,
        cols: 1,
        parts: vec![part],
        row_perm: lora_b.row_perm.clone(),
        col_perm: None,
        base: lora_b.base.clone(),
        experts: 1,
    }))
}

/// One GGUF adapter carries one set of invocation tokens, which then gates all of its pairs: an
/// activated LoRA stacks only with activated LoRAs of the same tokens.
fn check_alora_stack(inputs: &[Input]) -> Result<()> {
    let tokens: Vec<&Vec<u32>> = inputs
        .iter()
        .map(|i| &i.adapter.config.alora_invocation_tokens)
        .collect();
    if tokens.iter().all(|t| *t == tokens[0]) {
        return Ok(());
    }
    Err(Error::Usage(
        "an activated LoRA (alora_invocation_tokens) can only be stacked with activated LoRAs of the same \
         invocation tokens: one GGUF adapter gates all its pairs by one token sequence; convert them separately"
            .into(),
    ))
}

/// The key pairs are grouped by: an expert's projection counts as its layer's stacked tensor.
fn group_site(site: &Site) -> Site {
    match site {
        Site::Expert { layer, module, .. } => Site::Expert {
            layer: *layer,
            expert: 0,
            module: module.clone(),
        },
        other => other.clone(),
    }
}

fn expert_of(site: &Site) -> usize {
    match site {
        Site::Expert { expert, .. } => *expert as usize,
        _ => 0,
    }
}

/// The parts of a pair's lora_a and lora_b: every module's ranks stacked within its expert block
/// (one block unless the base tensor stacks experts), and the block width `r` they share. lora_B's
/// factors are what llama.cpp's alpha / r must reproduce; alpha is folded in later.
fn stack_parts(
    inputs: &[Input],
    opts: &Options,
    targets: &[(usize, Target)],
    experts: usize,
) -> (Vec<Part>, Vec<Part>, usize) {
    let mut used = vec![0usize; experts];
    let (mut parts_a, mut parts_b) = (Vec::new(), Vec::new());
    for (i, t) in targets {
        let m = &t.module;
        let rank = m.rank as usize;
        // A fused-experts pair (PEFT's ParamWrapper) holds every expert: A's rows expert-major,
        // B's columns expert-minor.
        let n = m.experts as usize;
        for k in 0..n {
            let expert = if n > 1 { k } else { expert_of(&m.site) };
            let at = used[expert];
            used[expert] += rank;
            let part = |tensor, factor, src_first, src_stride| Part {
                input: *i,
                tensor,
                rank,
                factor,
                expert,
                at,
                src_first,
                src_stride,
                transposed: t.swapped,
            };
            let factor = m.scale * inputs[*i].weight * opts.scale;
            if t.swapped {
                parts_a.push(part(m.b, 1.0, k, n));
                parts_b.push(part(m.a, factor, k * rank, 1));
            } else {
                parts_a.push(part(m.a, 1.0, k * rank, 1));
                parts_b.push(part(m.b, factor, k, n));
            }
        }
    }
    let r = used.iter().copied().max().unwrap_or(0);
    for p in &mut parts_b {
        p.factor *= r as f64;
    }
    (parts_a, parts_b, r)
}

/// The lora_a and lora_b written for base tensor `name` from the modules that adapt it: their
/// ranks stacked (per expert block for a stacked expert tensor, each block as wide as the widest,
/// the rest zeros), each part's scale to be folded against the file alpha, and llama.cpp's layout.
fn out_pair(
    inputs: &[Input],
    base: &BaseModel,
    arch: &Arch,
    opts: &Options,
    site: &Site,
    name: &str,
    targets: &[(usize, Target)],
) -> Result<[OutTensor; 2]> {
    let experts = match site {
        Site::Expert { .. } | Site::FusedExperts { .. } => base
            .tensors
            .get(name)
            .and_then(|t| t.ne.get(2))
            .map_or(1, |&n| n as usize),
        _ => 1,
    };
    let (parts_a, parts_b, r) = stack_parts(inputs, opts, targets, experts);
    let first = &targets[0].1;
    let (out_features, in_features) = (first.module.out_features as usize, first.module.in_features as usize);
    let embedding = matches!(site, Site::Embedding);
    let reorder = if embedding {
        arch::Reorder::default()
    } else {
        arch.reorder(site, &base.geometry(), out_features, in_features)
            .map_err(|why| {
                Error::invalid(
                    &base.source,
                    format!("the LoRA of `{name}` cannot follow llama.cpp's layout: {why}"),
                )
            })?
    };
    let stack = |mut ne: Vec<u64>| {
        if experts > 1 {
            ne.push(experts as u64);
        }
        ne
    };
    let (a_layout, a_rows, a_cols, a_ne) = if embedding {
        (Layout::TransposedA, in_features, r, vec![r as u64, in_features as u64])
    } else {
        (
            Layout::RowsA,
            experts * r,
            in_features,
            stack(vec![in_features as u64, r as u64]),
        )
    };
    let tensor = |suffix: &str, ne, layout, rows, cols, parts, row_perm, col_perm| OutTensor {
        spec: TensorSpec {
            name: format!("{name}.{suffix}"),
            ne,
            ty: GgmlType::F32,
        },
        layout,
        rows,
        cols,
        parts,
        row_perm,
        col_perm,
        base: name.to_string(),
        experts,
    };
    Ok([
        tensor("lora_a", a_ne, a_layout, a_rows, a_cols, parts_a, None, reorder.a_cols),
        tensor(
            "lora_b",
            stack(vec![r as u64, out_features as u64]),
            Layout::ColsB,
            experts * out_features,
            r,
            parts_b,
            row_source(reorder.b_rows, first.b_row_offset, first.b_row_stride, out_features),
            None,
        ),
    ])
}

/// lora_B's source row of each output row: `reorder` within this tensor's share of rows, which
/// starts at `offset` and takes every `stride`-th row (a row-split module); `None` for all rows in
/// order.
fn row_source(reorder: Option<Vec<usize>>, offset: usize, stride: usize, rows: usize) -> Option<Vec<usize>> {
    match reorder {
        Some(perm) => Some(perm.into_iter().map(|r| offset + r * stride).collect()),
        None if offset > 0 || stride > 1 => Some((0..rows).map(|r| offset + r * stride).collect()),
        None => None,
    }
}

/// The output type of a tensor, from its parts' statistics (already scaled by nothing: the factors
/// are applied here).
fn choose_type(
    t: &OutTensor,
    stats: &[Stats],
    outtype: OutType,
    output: &Path,
    notices: &mut Vec<String>,
) -> Result<GgmlType> {
    let max_abs = t
        .parts
        .iter()
        .zip(stats)
        .map(|(p, s)| s.max_abs * p.factor.abs())
        .fold(0.0, f64::max);
    // Judged per part: a stacked part with a tiny weight must not hide behind a large one.
    let min_rms = t
        .parts
        .iter()
        .zip(stats)
        .filter(|(_, s)| s.max_abs > 0.0)
        .map(|(p, s)| (s.sum_sq / s.count.max(1) as f64).sqrt() * p.factor.abs())
        .fold(f64::INFINITY, f64::min);
    if !max_abs.is_finite() || max_abs > f64::from(f32::MAX) {
        return Err(Error::Refused {
            path: output.to_path_buf(),
            msg: format!("`{}` would hold values beyond f32 range after scaling", t.spec.name),
            hint: Some("use a smaller --scale or adapter weight".into()),
            kind: crate::ErrorKind::Usage,
        });
    }
    Ok(match outtype {
        OutType::F32 => GgmlType::F32,
        OutType::Bf16 => GgmlType::BF16,
        OutType::F16 if max_abs > F16_MAX => {
            return Err(Error::Refused {
                path: output.to_path_buf(),
                msg: format!(
                    "`{}` has values up to {max_abs:.4e}, beyond f16's range (65504)",
                    t.spec.name
                ),
                hint: Some("use --outtype auto (f32 where needed) or --outtype f32".into()),
                kind: crate::ErrorKind::Usage,
            });
        }
        OutType::F16 => GgmlType::F16,
        OutType::Auto if max_abs > F16_MAX || min_rms < F16_MIN_NORMAL => {
            notices.push(format!(
                "`{}` written as f32: its values (max {max_abs:.3e}, rms {min_rms:.3e}) would not survive f16",
                t.spec.name
            ));
            GgmlType::F32
        }
        OutType::Auto => GgmlType::F16,
    })
}

/// Pass 2: workers assemble and encode tensors (round-robin, at most one finished tensor waiting per
/// worker, so memory stays at a few tensors); this thread writes them in table order into a
/// temporary file beside `output`, renamed into place at the end. Returns the file's size.
fn write(
    inputs: &[Input],
    tensors: &[OutTensor],
    kvs: &[(String, Value)],
    output: &Path,
    force: bool,
    progress: &dyn Progress,
) -> Result<u64> {
    let specs: Vec<TensorSpec> = tensors.iter().map(|t| t.spec.clone()).collect();
    let tmp = temp_beside(output)?;
    // Errors name the output, not the hidden temporary file beside it.
    let io_err = |e| Error::io(output, e);
    let mut writer =
        gguf::Writer::new(BufWriter::with_capacity(1 << 20, tmp.as_file()), kvs, &specs).map_err(io_err)?;

    pipeline::ordered(
        tensors,
        || (Vec::new(), Vec::new(), Vec::new(), Vec::new()),
        |(raw, halves, buf, assembled), t| match passthrough(inputs, t) {
            Some((adapter, src)) => adapter.read_raw(src, raw).map(|()| Encoded::Raw(std::mem::take(raw))),
            None => assemble(inputs, t, halves, buf, assembled).map(|()| encode(std::mem::take(assembled), t.spec.ty)),
        },
        |t, data| {
            if progress.cancelled() {
                return Err(Error::Cancelled);
            }
            writer.write_tensor(data?.bytes()).map_err(io_err)?;
            progress.advance(t.parts.iter().map(|p| src(inputs, p).1.byte_len() as u64).sum());
            Ok(())
        },
    )?;
    writer.finish().map_err(io_err)?;
    let bytes = tmp.as_file().metadata().map_err(io_err)?.len();
    persist(tmp, output, force)?;
    Ok(bytes)
}

const F16_MAX: f64 = 65504.0;
/// Below this f16 has no more than the absolute precision of its subnormals.
const F16_MIN_NORMAL: f64 = 6.103_515_625e-5;

fn src<'a>(inputs: &'a [Input], p: &Part) -> (&'a Adapter, &'a RawTensor) {
    let adapter = &inputs[p.input].adapter;
    (adapter, &adapter.tensors[p.tensor])
}

/// What pass 1 learns about one source tensor.
#[derive(Clone, Copy, Debug, Default)]
struct Stats {
    max_abs: f64,
    sum_sq: f64,
    count: usize,
}

/// Statistics of every part of every output tensor, computed on all cores; refuses non-finite values.
fn scan(inputs: &[Input], tensors: &[OutTensor], progress: &dyn Progress) -> Result<Vec<Vec<Stats>>> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = pipeline::worker_count(tensors.len());
    type Done = Vec<(usize, Vec<Stats>)>;
    let results: Vec<Result<Done>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let (mut halves, mut buf) = (Vec::new(), Vec::new());
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(t) = tensors.get(i) else { return Ok(done) };
                        if progress.cancelled() {
                            return Err(Error::Cancelled);
                        }
                        let mut per_part = Vec::with_capacity(t.parts.len());
                        for p in &t.parts {
                            let (adapter, raw) = src(inputs, p);
                            adapter.read_f32(raw, &mut halves, &mut buf)?;
                            let s = stats(&buf).ok_or_else(|| {
                                Error::invalid(
                                    &adapter.weights_path,
                                    format!("tensor `{}` holds NaN or infinite values", raw.key),
                                )
                                .with_hint("the training diverged or the file is damaged; use an earlier checkpoint")
                            })?;
                            progress.advance(raw.byte_len() as u64);
                            per_part.push(s);
                        }
                        done.push((i, per_part));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("scan worker panicked"))
            .collect()
    });
    let mut out = vec![Vec::new(); tensors.len()];
    for r in results {
        for (i, s) in r? {
            out[i] = s;
        }
    }
    Ok(out)
}

/// Max |x| and sum of squares, or `None` if any value is not finite. Eight independent lanes let the
/// compiler vectorise; a NaN poisons the sum and an infinity the maximum, so one check at the end
/// suffices (with an exact recount when only the sum overflowed).
fn stats(values: &[f32]) -> Option<Stats> {
    const LANES: usize = 8;
    let (mut max, mut sum) = ([0f32; LANES], 0f64);
    for chunk in values.chunks(4096) {
        let mut sq = [0f32; LANES];
        let mut lanes = chunk.chunks_exact(LANES);
        for c in &mut lanes {
            for i in 0..LANES {
                let a = c[i].abs();
                max[i] = if a > max[i] { a } else { max[i] };
                sq[i] += c[i] * c[i];
            }
        }
        for &v in lanes.remainder() {
            max[0] = max[0].max(v.abs());
            sq[0] += v * v;
        }
        sum += sq.iter().map(|&x| f64::from(x)).sum::<f64>();
    }
    let max_abs = f64::from(max.iter().fold(0f32, |m, &x| m.max(x)));
    if !(sum.is_finite() && max_abs.is_finite()) {
        if !values.iter().all(|v| v.is_finite()) {
            return None;
        }
        sum = values.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    }
    Some(Stats {
        max_abs,
        sum_sq: sum,
        count: values.len(),
    })
}

/// The source tensor itself when the output tensor is exactly one unmodified source tensor of the
/// same type: the common case, written without touching the values.
fn passthrough<'a>(inputs: &'a [Input], t: &OutTensor) -> Option<(&'a Adapter, &'a RawTensor)> {
    let [p] = &t.parts[..] else { return None };
    let (adapter, raw) = src(inputs, p);
    let same_type = matches!(
        (raw.dtype, t.spec.ty),
        (Dtype::F32, GgmlType::F32) | (Dtype::F16, GgmlType::F16) | (Dtype::BF16, GgmlType::BF16)
    );
    let reordered = t.row_perm.is_some() || t.col_perm.is_some();
    // A row-split module's first part takes its rows in order, but not all of them.
    let whole = raw.len() == t.rows * t.cols && t.experts == 1;
    (same_type && whole && p.factor == 1.0 && !reordered && t.layout != Layout::TransposedA).then_some((adapter, raw))
}

/// Builds the output tensor in f32 from its parts.
pub(crate) fn assemble(
    inputs: &[Input],
    t: &OutTensor,
    halves: &mut Vec<u16>,
    buf: &mut Vec<f32>,
    out: &mut Vec<f32>,
) -> Result<()> {
    out.clear();
    out.resize(t.rows * t.cols, 0.0);
    for p in &t.parts {
        let (adapter, raw) = src(inputs, p);
        adapter.read_f32(raw, halves, buf)?;
        let f = p.factor as f32;
        match t.layout {
            Layout::RowsA if p.transposed => {
                let src_cols = raw.shape.get(1).copied().unwrap_or(1);
                let r = t.rows / t.experts;
                let dst = &mut out[(p.expert * r + p.at) * t.cols..][..p.rank * t.cols];
                for (k, row) in dst.chunks_exact_mut(t.cols).enumerate() {
                    let col = p.src_first + k * p.src_stride;
                    for (c, x) in row.iter_mut().enumerate() {
                        let c = t.col_perm.as_ref().map_or(c, |perm| perm[c]);
                        *x = buf[c * src_cols + col];
                    }
                }
            }
            Layout::RowsA => {
                // The expert's block of rows, this part's ranks within it.
                let r = t.rows / t.experts;
                let src = &buf[p.src_first * t.cols..][..p.rank * t.cols];
                let dst = &mut out[(p.expert * r + p.at) * t.cols..][..src.len()];
                match &t.col_perm {
                    None => dst.copy_from_slice(src),
                    Some(perm) => {
                        for (d, s) in dst.chunks_exact_mut(t.cols).zip(src.chunks_exact(t.cols)) {
                            for (x, &c) in d.iter_mut().zip(perm) {
                                *x = s[c];
                            }
                        }
                    }
                }
            }
            Layout::ColsB => {
                let out_rows = t.rows / t.experts;
                let src_cols = raw.shape.get(1).copied().unwrap_or(p.rank);
                let block = &mut out[p.expert * out_rows * t.cols..][..out_rows * t.cols];
                for (o, row) in block.chunks_exact_mut(t.cols).enumerate() {
                    let s = t.row_perm.as_ref().map_or(o, |perm| perm[o]);
                    for (j, d) in row[p.at..p.at + p.rank].iter_mut().enumerate() {
                        let k = p.src_first + j * p.src_stride;
                        // Transposed: the source's row k, column s.
                        let v = if p.transposed {
                            buf[k * src_cols + s]
                        } else {
                            buf[s * src_cols + k]
                        };
                        *d = v * f;
                    }
                }
            }
            Layout::TransposedA => {
                // Source is [r_k, vocab]; output row v takes column v.
                let vocab = t.rows;
                for (v, row) in out.chunks_exact_mut(t.cols).enumerate() {
                    for j in 0..p.rank {
                        row[p.at + j] = buf[j * vocab + v];
                    }
                }
            }
        }
    }
    Ok(())
}

/// A tensor's bytes, ready to write.
enum Encoded {
    /// Unchanged from the adapter file.
    Raw(Vec<u8>),
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

impl Encoded {
    fn bytes(&self) -> &[u8] {
        match self {
            Encoded::Raw(b) => b,
            Encoded::F32(v) => bytemuck::cast_slice(v),
            Encoded::F16(v) => bytemuck::cast_slice(v),
            Encoded::BF16(v) => bytemuck::cast_slice(v),
        }
    }
}

/// Rounds f32 values to the output type (round to nearest even).
fn encode(values: Vec<f32>, ty: GgmlType) -> Encoded {
    match ty {
        GgmlType::F32 => Encoded::F32(values),
        GgmlType::F16 => {
            let mut h = vec![f16::ZERO; values.len()];
            h.convert_from_f32_slice(&values);
            Encoded::F16(h)
        }
        GgmlType::BF16 => {
            let mut h = vec![bf16::ZERO; values.len()];
            h.convert_from_f32_slice(&values);
            Encoded::BF16(h)
        }
        other => unreachable!("convert writes F32/F16/BF16 only, not {other}"),
    }
}

/// The GGUF metadata: what llama.cpp requires, plus provenance under the GGUF naming convention's keys.
fn metadata(
    inputs: &[Input],
    base: &BaseModel,
    opts: &Options,
    alpha: f32,
    tensors: &[OutTensor],
) -> Vec<(String, Value)> {
    let s = |v: &str| Value::String(v.to_string());
    let name = opts.name.clone().unwrap_or_else(|| {
        let labels: Vec<String> = inputs.iter().map(|i| adapter_label(&i.adapter)).collect();
        labels.join(" + ")
    });
    // llama_ftype of the bulk of the data: MOSTLY_F16 = 1, ALL_F32 = 0, MOSTLY_BF16 = 32.
    let ftype = match opts.outtype {
        OutType::F32 => 0,
        OutType::Bf16 => 32,
        _ if tensors.iter().all(|t| t.spec.ty == GgmlType::F32) => 0,
        _ => 1,
    };
    let mut kvs = vec![
        ("general.architecture".to_string(), s(&base.arch)),
        ("general.type".to_string(), s("adapter")),
        ("general.name".to_string(), s(&name)),
        ("general.file_type".to_string(), Value::U32(ftype)),
        ("adapter.type".to_string(), s("lora")),
        ("adapter.lora.alpha".to_string(), Value::F32(alpha)),
    ];
    // Activated LoRA: llama.cpp reads the invocation tokens as an array of u32 (llama-adapter.cpp).
    if let Some(tokens) = inputs
        .iter()
        .map(|i| &i.adapter.config.alora_invocation_tokens)
        .find(|t| !t.is_empty())
    {
        kvs.push((
            "adapter.alora.invocation_tokens".to_string(),
            Value::Array(crate::formats::gguf::Array::U32(tokens.clone())),
        ));
    }
    let mut bases: Vec<String> = Vec::new();
    for i in inputs {
        if let Some(id) = i
            .adapter
            .config
            .base_model_name_or_path
            .as_deref()
            .and_then(peft::hub_repo_id)
            && !bases.contains(&id)
        {
            bases.push(id);
        }
    }
    if !bases.is_empty() {
        kvs.push(("general.base_model.count".to_string(), Value::U32(bases.len() as u32)));
        for (n, id) in bases.iter().enumerate() {
            let (org, model) = id.split_once('/').unwrap_or(("", id));
            kvs.push((format!("general.base_model.{n}.name"), s(model)));
            kvs.push((format!("general.base_model.{n}.organization"), s(org)));
            kvs.push((
                format!("general.base_model.{n}.repo_url"),
                s(&format!("https://huggingface.co/{id}")),
            ));
        }
    }
    // The adapter's own repository, when it sits in a Hugging Face cache snapshot.
    if let [only] = inputs
        && let Some(id) = only.adapter.config_path.to_str().and_then(peft::hub_cache_repo)
    {
        kvs.push((
            "general.source.repo_url".to_string(),
            s(&format!("https://huggingface.co/{id}")),
        ));
    }
    kvs
}
