//! PEFT LoRA adapter(s) merged into the base model's GGUF, each touched tensor re-quantized to its own
//! type: what `llama-export-lora` + `llama-quantize` do, in one streaming pass that keeps the base's
//! quantization (Ollama 0.34.1 and later no longer create models with an adapter layer).
//!
//! For every tensor an adapter touches: dequantize the base rows to f32, add llama.cpp's own delta
//! `alpha / rank * lora_b @ lora_a` (the same lora_a / lora_b `convert` writes, so every scale rule,
//! the Q/K row order and the embedding layout carry over), quantize back. Every other tensor and every
//! metadata value is copied as is. Work is split into row blocks of a few megabytes, computed on all
//! cores and written in order, so memory stays at a few blocks whatever the model's size.
//!
//! With `--quantize TYPE` every tensor instead gets the type llama-quantize's mix gives it ([`quant_mix`]):
//! untouched tensors whose type changes go through the same row blocks (dequantize, quantize), without a delta.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::engine::base::BaseModel;
use crate::engine::convert::{self, Input, Layout, Plan};
use crate::engine::output::{self, DirectWriter};
use crate::engine::pipeline;
use crate::engine::quant;
use crate::engine::quant_mix::{self, Scheme};
use crate::error::{Error, Result};
use crate::formats::gguf::{self, GgmlType, TensorSpec, Value};
use crate::formats::peft::Replacement;
use crate::progress::{Progress, check_cancelled};

/// The type touched tensors are written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum MergedType {
    /// The base tensor's own type (Q8_0 for a type this tool cannot re-quantize).
    #[default]
    Keep,
    /// f16, whatever the base tensor's type.
    F16,
    /// Q8_0, whatever the base tensor's type (f16 for rows that do not divide into its 32-value blocks).
    #[value(name = "q8_0")]
    Q8_0,
}

/// How to merge.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Type of the merged tensors (their own, f16 or q8_0).
    pub merged_type: MergedType,
    /// Quantize the whole model with llama-quantize's mix for this scheme (instead of keeping the
    /// base's types); excludes `merged_type`.
    pub quantize: Option<Scheme>,
    /// Multiplies the adapters' effect.
    pub scale: f64,
    /// Replace an existing output file.
    pub force: bool,
    /// Treat validation warnings as errors.
    pub strict: bool,
    /// A Jinja chat template written as `tokenizer.chat_template` (a fine-tune's own).
    pub chat_template: Option<String>,
}

/// What was written.
#[derive(Debug, serde::Serialize)]
pub struct Summary {
    /// The file written.
    pub output: PathBuf,
    /// The base GGUF read.
    pub base: PathBuf,
    /// Tensors the adapters changed.
    pub merged: usize,
    /// Tensors no adapter touches, converted to another type (--quantize).
    pub converted: usize,
    /// Tensors copied unchanged.
    pub copied: usize,
    /// The --quantize scheme, when one was asked for.
    pub quantize: Option<String>,
    /// Type name of the merged tensors -> count.
    pub merged_types: std::collections::BTreeMap<String, usize>,
    /// The file's size.
    pub bytes: u64,
    /// The base file's size.
    pub base_bytes: u64,
    /// What the user was told on the way.
    pub notices: Vec<String>,
}

/// About 256 K values per job: 1 MiB of f32, so that a job's rows stay in a core's L2 cache from
/// dequantizing through the delta, the value check and quantizing (14% less CPU than 16 MiB jobs on
/// an 8-layer 8B Q4_K_M merge, `BENCH_LAYERS=8 benches/merge.sh`).
const BLOCK_VALUES: usize = 1 << 18;

/// One unit of work, in output order.
enum Job {
    /// An untouched tensor, copied from the base file.
    Copy { tensor: usize },
    /// Rows `start..end` of a tensor written in another type: a touched one (with its pair), or an
    /// untouched one converted for --quantize (without).
    Rows {
        tensor: usize,
        pair: Option<usize>,
        start: usize,
        end: usize,
    },
}

/// A base tensor to merge into.
struct Pair {
    /// Its LoRA pair, an index into the source's pairs (none for a tensor only replaced).
    lora: Option<usize>,
    /// Target type of the merged tensor.
    ty: GgmlType,
}

enum Piece {
    Copy,
    Bytes(Vec<u8>),
}

/// Merges `inputs` into the GGUF of `base` (which must have one), writing `output`.
pub fn merge(
    inputs: &[Input],
    base: &BaseModel,
    output: &Path,
    opts: &Options,
    progress: &dyn Progress,
) -> Result<Summary> {
    let base_path = base_gguf(base)?;
    let convert_opts = convert::Options {
        scale: opts.scale,
        force: opts.force,
        strict: opts.strict,
        merging: true,
        ..Default::default()
    };
    let plan = convert::prepare(inputs, base, output, &convert_opts)?;
    let provenance = Provenance {
        adapters: inputs
            .iter()
            .map(|i| {
                let cfg = i.adapter.config_path.to_string_lossy().into_owned();
                crate::formats::peft::hub_cache_repo(&cfg).unwrap_or_else(|| convert::adapter_label(&i.adapter))
            })
            .collect(),
        revisions: inputs
            .iter()
            .map(|i| i.adapter.config.revision.clone().unwrap_or_default())
            .collect(),
        weights: inputs.iter().map(|i| i.weight as f32).collect(),
    };
    merge_with(
        &Source::Peft { inputs, plan },
        &base_path,
        provenance,
        output,
        opts,
        progress,
    )
}

/// Merges a ready GGUF LoRA adapter (checked against `base` first) into the GGUF of `base`.
pub fn merge_gguf_adapter(
    adapter: &Path,
    base: &BaseModel,
    output: &Path,
    opts: &Options,
    progress: &dyn Progress,
) -> Result<Summary> {
    let base_path = base_gguf(base)?;
    convert::check_output(output, "-o", opts.force, &[adapter, base_path.as_path()])?;
    convert::check_scale(opts.scale)?;
    let checked = crate::engine::validate::check_gguf_adapter(adapter, base)?;
    let file = File::open(adapter).map_err(|e| Error::io(adapter, e))?;
    let label = adapter
        .file_name()
        .map_or_else(|| "adapter".into(), |n| n.to_string_lossy().into_owned());
    let provenance = Provenance {
        adapters: vec![label],
        revisions: vec![String::new()],
        weights: vec![1.0],
    };
    merge_with(
        &Source::Gguf {
            adapter: checked,
            file,
            scale: opts.scale as f32,
        },
        &base_path,
        provenance,
        output,
        opts,
        progress,
    )
}

fn base_gguf(base: &BaseModel) -> Result<PathBuf> {
    base.gguf_path.clone().ok_or_else(|| {
        Error::refused(
            &base.source,
            "merging needs the base model's GGUF file, and this base description has none",
            "pass the GGUF file as --base (or --base-gguf), or an Ollama model whose blob is in the local store",
        )
    })
}

/// Where the LoRA pairs come from: PEFT adapters through convert's plan (every scale rule, the Q/K
/// row order and the embedding layout already applied), or a GGUF LoRA adapter as llama.cpp reads it.
enum Source<'a> {
    Peft {
        inputs: &'a [Input],
        plan: Plan,
    },
    Gguf {
        adapter: crate::engine::validate::GgufAdapter,
        file: File,
        scale: f32,
    },
}

/// One LoRA pair, by the indexes of its two matrices in the source.
struct LoraPair {
    /// The base tensor it adapts.
    name: String,
    a: usize,
    b: usize,
}

impl Source<'_> {
    fn pairs(&self) -> Vec<LoraPair> {
        match self {
            Source::Peft { plan, .. } => plan
                .tensors
                .chunks(2)
                .enumerate()
                .map(|(k, ab)| LoraPair {
                    name: ab[0].base.clone(),
                    a: 2 * k,
                    b: 2 * k + 1,
                })
                .collect(),
            Source::Gguf { adapter, .. } => adapter
                .pairs
                .iter()
                .map(|(name, a, b)| LoraPair {
                    name: name.clone(),
                    a: *a,
                    b: *b,
                })
                .collect(),
        }
    }

    /// Embedding / output weights replaced: (base tensor, adapter input, what).
    fn replacements(&self) -> Vec<(String, usize, Replacement)> {
        match self {
            Source::Peft { plan, .. } => plan.replacements.clone(),
            Source::Gguf { .. } => vec![],
        }
    }

    fn notices(&self) -> Vec<String> {
        match self {
            Source::Peft { plan, .. } => plan.notices.clone(),
            Source::Gguf { .. } => vec![],
        }
    }

    /// Fills `s.lora_a` / `s.lora_b` (row-major, numpy order) for `pair` and says how to apply them.
    fn load(&self, pair: &LoraPair, s: &mut WorkerState) -> Result<Loaded> {
        match self {
            Source::Peft { inputs, plan } => {
                let (a, b) = (&plan.tensors[pair.a], &plan.tensors[pair.b]);
                convert::assemble(inputs, a, &mut s.halves, &mut s.scratch, &mut s.lora_a)?;
                convert::assemble(inputs, b, &mut s.halves, &mut s.scratch, &mut s.lora_b)?;
                let magnitude = &plan.magnitudes[pair.a / 2];
                if let Some(m) = magnitude {
                    convert::assemble(inputs, m, &mut s.halves, &mut s.scratch, &mut s.magnitude)?;
                }
                Ok(Loaded {
                    rank: b.cols,
                    factor: plan.alpha / b.cols as f32,
                    transposed: a.layout == Layout::TransposedA,
                    experts: b.experts,
                    dora: magnitude.is_some(),
                })
            }
            Source::Gguf { adapter, file, scale } => {
                let h = &adapter.header;
                for (index, out) in [(pair.a, &mut s.lora_a), (pair.b, &mut s.lora_b)] {
                    let t = &h.tensors[index];
                    let size = t.ty.byte_size(&t.ne).ok_or_else(|| {
                        Error::invalid(&adapter.path, format!("`{}`: type {} has no known size", t.name, t.ty))
                    })? as usize;
                    s.raw.resize(size, 0);
                    crate::formats::peft::read_exact_at(file, &mut s.raw, h.data_offset + t.offset)
                        .map_err(|e| Error::io(&adapter.path, e))?;
                    out.resize(t.ne.iter().product::<u64>() as usize, 0.0);
                    quant::dequantize(t.ty, &s.raw, out)
                        .map_err(|e| Error::invalid(&adapter.path, format!("`{}`: {e}", t.name)))?;
                }
                let b = &h.tensors[pair.b];
                Ok(Loaded {
                    rank: b.ne[0] as usize,
                    factor: adapter.scale(b.ne[0]) * scale,
                    transposed: pair.name == "token_embd.weight",
                    experts: b.ne.get(2).map_or(1, |&n| n as usize),
                    dora: false,
                })
            }
        }
    }
}

/// A loaded LoRA pair: `factor * lora_b @ lora_a` per expert block (rank = lora_a's rows per block),
/// lora_a stored transposed for the token embedding (`factor * lora_a @ lora_b^T`).
#[derive(Clone, Copy, Default)]
struct Loaded {
    rank: usize,
    factor: f32,
    transposed: bool,
    experts: usize,
    /// Rows are then rescaled to their DoRA magnitude (`WorkerState::magnitude`).
    dora: bool,
}

/// What the merged file records about where it came from (`ollama_tools.merged.*`).
struct Provenance {
    adapters: Vec<String>,
    revisions: Vec<String>,
    weights: Vec<f32>,
}

fn merge_with(
    source: &Source,
    base_path: &Path,
    provenance: Provenance,
    output: &Path,
    opts: &Options,
    progress: &dyn Progress,
) -> Result<Summary> {
    let plan = plan_merge(source, base_path, &provenance, opts)?;
    let tmp = output::temp_beside(output)?;
    let base_file = File::open(base_path).map_err(|e| Error::io(base_path, e))?;
    let mut merger = Merger {
        source,
        lora_pairs: &plan.lora_pairs,
        pairs: &plan.pairs,
        replaced: &plan.replaced_rows,
        column_scales: HashMap::new(),
        targets: &plan.targets,
        header: &plan.header,
        base_file: &base_file,
        base_path,
    };
    merger.column_scales = merger.column_scales()?;
    let bytes = write_merged(&plan, &merger, &tmp, output, progress)?;
    output::persist(tmp, output, opts.force)?;
    for n in &plan.notices {
        progress.notice(n);
    }
    Ok(plan.summary(output, base_path, bytes, opts))
}

/// Everything a merge writes, decided from the headers before any tensor is read.
struct MergePlan {
    /// The base's header, with the vocabulary and tied embeddings as the merged file has them.
    header: gguf::Header,
    lora_pairs: Vec<LoraPair>,
    /// The base tensors the adapters touch, with their merged types.
    pairs: Vec<Pair>,
    pair_of: HashMap<usize, usize>,
    /// Per base tensor: the replacements (copies, trainable tokens) of its rows, with their adapter.
    replaced_rows: HashMap<usize, Vec<(usize, Replacement)>>,
    /// Every tensor's type in the merged file.
    targets: Vec<GgmlType>,
    jobs: Vec<Job>,
    specs: Vec<TensorSpec>,
    kvs: Vec<(String, Value)>,
    notices: Vec<String>,
}

/// Reads the base's header and decides every tensor's type and job and the merged file's metadata;
/// refuses a base or a type change this tool cannot write.
fn plan_merge(source: &Source, base_path: &Path, provenance: &Provenance, opts: &Options) -> Result<MergePlan> {
    let mut header = gguf::read_header(base_path).map_err(|e| Error::invalid(base_path, e.to_string()))?;
    let mut notices = source.notices();
    let lora_pairs = source.pairs();
    let replacements = replacements(source, &lora_pairs, &mut header, &mut notices);
    let vocab = resize_vocab(&mut header, &replacements, source, base_path)?;

    check_base_tensors(&header, base_path)?;
    // The type every tensor is written in: the base's, or the --quantize mix's.
    let out_types = output_types(&header, opts, base_path)?;
    // Which base tensors the adapters touch, and what type each becomes.
    let by_name: HashMap<&str, usize> = header
        .tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    let touched = lora_pairs.iter().enumerate().map(|(k, lp)| (lp.name.as_str(), Some(k)));
    let replaced = replacements.iter().map(|r| (r.0.as_str(), None));
    let (pairs, pair_of) = touched_tensors(
        touched.chain(replaced),
        &by_name,
        &header,
        &out_types,
        opts,
        base_path,
        &mut notices,
    )?;
    let replaced_rows = replacements
        .into_iter()
        .fold(HashMap::<_, Vec<_>>::new(), |mut m, (name, input, r)| {
            m.entry(by_name[name.as_str()]).or_default().push((input, r));
            m
        });
    // The final type of each tensor, and the jobs that write them, in file order.
    let targets: Vec<GgmlType> = (0..header.tensors.len())
        .map(|i| pair_of.get(&i).map_or(out_types[i], |&p| pairs[p].ty))
        .collect();
    check_conversions(&header, &targets, &pair_of, base_path)?;
    notices.extend(requantize_notice(&header, &targets, opts.quantize));
    let jobs = plan_jobs(&header, &targets, &pair_of);
    let specs = header
        .tensors
        .iter()
        .zip(&targets)
        .map(|(t, &ty)| TensorSpec {
            name: t.name.clone(),
            ne: t.ne.clone(),
            ty,
        })
        .collect();
    let mut kvs = metadata(&header, provenance, opts);
    if let Some((new, added, dir)) = &vocab {
        let arch = header.get_str("general.architecture").unwrap_or_default().to_string();
        crate::formats::vocab::resize(&mut kvs, &arch, *new, added, dir)?;
        notices.push(format!(
            "the vocabulary is resized to {new} tokens as the adapter's embeddings are; its tokenizer names the new ones"
        ));
    }
    Ok(MergePlan {
        header,
        lora_pairs,
        pairs,
        pair_of,
        replaced_rows,
        targets,
        jobs,
        specs,
        kvs,
        notices,
    })
}

impl MergePlan {
    /// What was written, for the report.
    fn summary(self, output: &Path, base_path: &Path, bytes: u64, opts: &Options) -> Summary {
        let mut merged_types = std::collections::BTreeMap::new();
        for p in &self.pairs {
            *merged_types.entry(p.ty.name()).or_insert(0) += 1;
        }
        // Tensors converted to another type without an adapter touching them (--quantize).
        let converted = (0..self.header.tensors.len())
            .filter(|i| !self.pair_of.contains_key(i) && self.targets[*i] != self.header.tensors[*i].ty)
            .count();
        Summary {
            output: output.to_path_buf(),
            base: base_path.to_path_buf(),
            merged: self.pairs.len(),
            converted,
            copied: self.header.tensors.len() - self.pairs.len() - converted,
            quantize: opts.quantize.map(|q| q.name().to_string()),
            merged_types,
            bytes,
            base_bytes: std::fs::metadata(base_path).map(|m| m.len()).unwrap_or(0),
            notices: self.notices,
        }
    }
}

/// Writes the merged GGUF into `tmp` in one streaming pass (workers merge row blocks, this thread
/// writes them in file order); returns its size.
fn write_merged(
    plan: &MergePlan,
    merger: &Merger,
    tmp: &tempfile::NamedTempFile,
    output: &Path,
    progress: &dyn Progress,
) -> Result<u64> {
    let io_err = |e| Error::io(output, e);
    let direct = DirectWriter::new(tmp.path(), tmp.as_file().try_clone().map_err(io_err)?);
    let mut writer = gguf::Writer::new(direct, &plan.kvs, &plan.specs).map_err(io_err)?;
    let total: u64 = plan.specs.iter().filter_map(|s| s.byte_size().ok()).sum();
    progress.stage("merging", total);
    let mut copy_buf = vec![0u8; 8 << 20];
    pipeline::ordered(
        &plan.jobs,
        WorkerState::default,
        |state, job| match job {
            Job::Copy { .. } => Ok(Piece::Copy),
            Job::Rows {
                tensor,
                pair,
                start,
                end,
            } => merger.rows(state, *tensor, *pair, *start, *end).map(Piece::Bytes),
        },
        |job, piece| {
            check_cancelled(progress)?;
            match (job, piece?) {
                (Job::Copy { tensor }, _) => merger.copy_tensor(*tensor, &mut copy_buf, &mut writer, output, progress),
                (Job::Rows { tensor, end, .. }, Piece::Bytes(bytes)) => {
                    writer.write_part(&bytes).map_err(io_err)?;
                    progress.advance(bytes.len() as u64);
                    let t = &plan.header.tensors[*tensor];
                    if *end == t.ne[1..].iter().product::<u64>() as usize {
                        writer.end_tensor().map_err(io_err)?;
                    }
                    Ok(())
                }
                (Job::Rows { .. }, Piece::Copy) => unreachable!("row jobs give bytes"),
            }
        },
    )?;
    let bytes = writer.finish().and_then(DirectWriter::finish).map_err(io_err)?;
    progress.finish();
    Ok(bytes)
}

/// Per-worker scratch: the LoRA of the tensor it last worked on (blocks of one tensor come in a
/// row, so each worker assembles a tensor's lora_a / lora_b once), and buffers.
#[derive(Default)]
struct WorkerState {
    pair: Option<usize>,
    /// How to apply the pair loaded.
    loaded: Loaded,
    lora_a: Vec<f32>,
    lora_b: Vec<f32>,
    /// DoRA magnitude per row of the loaded pair's tensor.
    magnitude: Vec<f32>,
    halves: Vec<u16>,
    scratch: Vec<f32>,
    raw: Vec<u8>,
    rows: Vec<f32>,
}

struct Merger<'a> {
    source: &'a Source<'a>,
    lora_pairs: &'a [LoraPair],
    pairs: &'a [Pair],
    /// Per base tensor index: what replaces (some of) its rows, by adapter input.
    replaced: &'a HashMap<usize, Vec<(usize, Replacement)>>,
    /// Per LoRA pair with DoRA on the embeddings: its column factors (see `column_scales`).
    column_scales: HashMap<usize, Vec<f32>>,
    /// The type each tensor is written in.
    targets: &'a [GgmlType],
    header: &'a gguf::Header,
    base_file: &'a File,
    base_path: &'a Path,
}

impl Merger<'_> {
    /// Rows `start..end` of base tensor `tensor`, merged with `pair` if any, encoded in its target type.
    /// Copies base tensor `tensor` unchanged into `writer`, through `buf`.
    fn copy_tensor(
        &self,
        tensor: usize,
        buf: &mut [u8],
        writer: &mut gguf::Writer<DirectWriter>,
        output: &Path,
        progress: &dyn Progress,
    ) -> Result<()> {
        let io_err = |e| Error::io(output, e);
        let t = &self.header.tensors[tensor];
        let size = t.ty.byte_size(&t.ne).unwrap_or(0);
        // Positioned reads, as the workers use on the same handle: no shared cursor.
        let mut offset = self.header.data_offset + t.offset;
        for chunk_start in (0..size).step_by(buf.len()) {
            let n = (size - chunk_start).min(buf.len() as u64) as usize;
            crate::formats::peft::read_exact_at(self.base_file, &mut buf[..n], offset)
                .map_err(|e| Error::io(self.base_path, e))?;
            writer.write_part(&buf[..n]).map_err(io_err)?;
            progress.advance(n as u64);
            offset += n as u64;
        }
        writer.end_tensor().map_err(io_err)
    }

    fn rows(
        &self,
        s: &mut WorkerState,
        tensor: usize,
        pair: Option<usize>,
        start: usize,
        end: usize,
    ) -> Result<Vec<u8>> {
        let t = &self.header.tensors[tensor];
        let ty = self.targets[tensor];
        let cols = t.ne[0] as usize;
        let n = (end - start) * cols;
        let size_error = |ty: GgmlType| {
            Error::invalid(
                self.base_path,
                format!("`{}`: type {ty} cannot hold rows of {cols}", t.name),
            )
        };
        let lora = pair.and_then(|p| self.pairs[p].lora);
        self.merged_rows(s, tensor, lora, start, end)?;
        if let Some(k) = lora.filter(|_| s.loaded.dora) {
            match self.column_scales.get(&k) {
                Some(scales) => s.rows.chunks_exact_mut(cols).for_each(|row| {
                    row.iter_mut().zip(scales).for_each(|(v, f)| *v *= f);
                }),
                None => rescale_rows(&mut s.rows, &s.magnitude[start..end], cols),
            }
        }
        debug_assert_eq!(s.rows.len(), n);
        check_values(&s.rows, cols, start, ty, &t.name, self.base_path)?;
        let mut out = vec![
            0u8;
            ty.byte_size(&[cols as u64, (end - start) as u64])
                .ok_or_else(|| size_error(ty))? as usize
        ];
        quant::quantize(ty, &s.rows, &mut out)
            .map_err(|e| Error::invalid(self.base_path, format!("`{}`: {e}", t.name)))?;
        Ok(out)
    }

    /// Rows `start..end` of tensor `tensor` with the adapters' changes but DoRA's rescaling: the
    /// base's rows (or a full copy's), replaced rows, LoRA pair `lora`'s delta.
    fn merged_rows(
        &self,
        s: &mut WorkerState,
        tensor: usize,
        lora: Option<usize>,
        start: usize,
        end: usize,
    ) -> Result<()> {
        let t = &self.header.tensors[tensor];
        let cols = t.ne[0] as usize;
        let replaced = self.replaced.get(&tensor).map_or(&[][..], Vec::as_slice);
        if replaced.iter().any(|(_, r)| r.rows.is_none()) {
            // Every row comes from the adapter's copy (which may have more rows than the base).
            s.rows.clear();
            s.rows.resize((end - start) * cols, 0.0);
        } else {
            self.base_rows(s, t, start, end)?;
        }
        for (input, r) in replaced {
            self.replace(s, *input, r, start, end, cols)?;
        }
        match lora {
            Some(k) => self.add_pair(s, k, start, end, cols),
            None => Ok(()),
        }
    }

    /// DoRA on the token embeddings scales columns: `m_j / ||W[:, j] + ΔW[:, j]||`, a norm over the
    /// whole vocabulary (PEFT's DoraEmbeddingLayer), so it takes a pass over the merged embeddings
    /// before any row is written. Per LoRA pair of such a module: its column factors.
    fn column_scales(&self) -> Result<HashMap<usize, Vec<f32>>> {
        let mut out = HashMap::new();
        let mut s = WorkerState::default();
        for pair in self.pairs {
            let Some(k) = pair.lora else { continue };
            let tensor = self
                .header
                .tensors
                .iter()
                .position(|t| t.name == self.lora_pairs[k].name);
            let Some(tensor) = tensor.filter(|_| self.lora_pairs[k].name == "token_embd.weight") else {
                continue;
            };
            s.loaded = self.source.load(&self.lora_pairs[k], &mut s)?;
            s.pair = Some(k);
            if !s.loaded.dora {
                continue;
            }
            let t = &self.header.tensors[tensor];
            let (cols, rows) = (t.ne[0] as usize, t.ne[1] as usize);
            let mut sums = vec![0f64; cols];
            let step = (BLOCK_VALUES / cols.max(1)).max(1);
            for start in (0..rows).step_by(step) {
                self.merged_rows(&mut s, tensor, Some(k), start, (start + step).min(rows))?;
                for row in s.rows.chunks_exact(cols) {
                    sums.iter_mut()
                        .zip(row)
                        .for_each(|(a, &v)| *a += f64::from(v) * f64::from(v));
                }
            }
            let scales = sums
                .iter()
                .zip(&s.magnitude)
                .map(|(sum, &m)| (f64::from(m) / sum.sqrt()) as f32)
                .collect();
            out.insert(k, scales);
        }
        Ok(out)
    }

    /// Rows `start..end` of base tensor `t`, dequantized into `s.rows`.
    fn base_rows(&self, s: &mut WorkerState, t: &gguf::TensorInfo, start: usize, end: usize) -> Result<()> {
        let cols = t.ne[0] as usize;
        let row_bytes = t.ty.byte_size(&[t.ne[0]]).ok_or_else(|| {
            Error::invalid(
                self.base_path,
                format!("`{}`: type {} cannot hold rows of {cols}", t.name, t.ty),
            )
        })? as usize;
        s.raw.resize((end - start) * row_bytes, 0);
        crate::formats::peft::read_exact_at(
            self.base_file,
            &mut s.raw,
            self.header.data_offset + t.offset + (start * row_bytes) as u64,
        )
        .map_err(|e| Error::io(self.base_path, e))?;
        s.rows.resize((end - start) * cols, 0.0);
        quant::dequantize(t.ty, &s.raw, &mut s.rows)
            .map_err(|e| Error::invalid(self.base_path, format!("`{}`: {e}", t.name)))
    }

    /// Overwrites the rows `start..end` (in `s.rows`) that replacement `r` of adapter `input` holds:
    /// all of them from a full copy, or its trainable-token rows that fall in the range.
    fn replace(
        &self,
        s: &mut WorkerState,
        input: usize,
        r: &Replacement,
        start: usize,
        end: usize,
        cols: usize,
    ) -> Result<()> {
        let Source::Peft { inputs, .. } = self.source else {
            return Ok(());
        };
        let adapter = &inputs[input].adapter;
        let t = &adapter.tensors[r.tensor];
        let Some(rows) = &r.rows else {
            adapter.read_rows_f32(t, start..end, &mut s.halves, &mut s.scratch)?;
            s.rows.copy_from_slice(&s.scratch);
            return Ok(());
        };
        for (k, &row) in rows.iter().enumerate() {
            let row = row as usize;
            if (start..end).contains(&row) {
                adapter.read_rows_f32(t, k..k + 1, &mut s.halves, &mut s.scratch)?;
                s.rows[(row - start) * cols..][..cols].copy_from_slice(&s.scratch);
            }
        }
        Ok(())
    }

    /// Adds LoRA pair `k`'s delta to the rows `start..end`: one matrix product, or for a stacked
    /// expert tensor each expert's own over the rows of its block.
    fn add_pair(&self, s: &mut WorkerState, k: usize, start: usize, end: usize, cols: usize) -> Result<()> {
        if s.pair != Some(k) {
            s.loaded = self.source.load(&self.lora_pairs[k], s)?;
            s.pair = Some(k);
        }
        let Loaded {
            rank,
            factor,
            transposed,
            experts,
            ..
        } = s.loaded;
        let experts = experts.max(1);
        let (a_len, b_len) = (s.lora_a.len() / experts, s.lora_b.len() / experts);
        // lora_b (or the transposed embedding lora_a) has one row per adapted row.
        let height = if transposed { a_len } else { b_len } / rank.max(1);
        for e in 0..experts {
            let first = e * height;
            let (lo, hi) = (start.max(first), end.min(first + height));
            if lo < hi {
                let (a, b) = (&s.lora_a[e * a_len..][..a_len], &s.lora_b[e * b_len..][..b_len]);
                let dst = &mut s.rows[(lo - start) * cols..(hi - start) * cols];
                add_delta(rank, factor, transposed, a, b, lo - first, hi - first, cols, dst);
            }
        }
        Ok(())
    }
}

/// The base tensors the adapters change (by LoRA pair `Some(k)`, or by a replacement only), each
/// with its type; and the index of each tensor's entry.
fn touched_tensors<'a>(
    touched: impl Iterator<Item = (&'a str, Option<usize>)>,
    by_name: &HashMap<&str, usize>,
    header: &gguf::Header,
    out_types: &[GgmlType],
    opts: &Options,
    base_path: &Path,
    notices: &mut Vec<String>,
) -> Result<(Vec<Pair>, HashMap<usize, usize>)> {
    let mut pairs: Vec<Pair> = Vec::new();
    let mut pair_of: HashMap<usize, usize> = HashMap::new();
    for (name, k) in touched {
        let &i = by_name
            .get(name)
            .ok_or_else(|| Error::invalid(base_path, format!("tensor `{name}` is missing")))?;
        if let Some(&p) = pair_of.get(&i) {
            pairs[p].lora = pairs[p].lora.or(k);
            continue;
        }
        let wanted = match opts.merged_type {
            _ if opts.quantize.is_some() => out_types[i],
            MergedType::Keep => header.tensors[i].ty,
            MergedType::F16 => GgmlType::F16,
            MergedType::Q8_0 => GgmlType::Q8_0,
        };
        let ty = merged_type(&header.tensors[i], wanted, base_path, notices)?;
        pair_of.insert(i, pairs.len());
        pairs.push(Pair { lora: k, ty });
    }
    Ok((pairs, pair_of))
}

/// The source's replacements of embedding / output weights, with the base untied (see `untie`)
/// where the adapters change one of a tied model's two uses; trainable-token rows of the
/// embeddings then go to both (PEFT ties them).
fn replacements(
    source: &Source,
    lora_pairs: &[LoraPair],
    header: &mut gguf::Header,
    notices: &mut Vec<String>,
) -> Vec<(String, usize, Replacement)> {
    let mut replacements = source.replacements();
    let token_rows = |r: &&(String, usize, Replacement)| r.0 == "token_embd.weight" && r.2.rows.is_some();
    let whole = replacements.iter().filter(|r| !token_rows(r)).map(|r| r.0.as_str());
    if let Some(n) = untie(header, lora_pairs.iter().map(|p| p.name.as_str()).chain(whole)) {
        notices.push(n);
        let rows: Vec<_> = replacements
            .iter()
            .filter(token_rows)
            .map(|r| ("output.weight".to_string(), r.1, r.2.clone()))
            .collect();
        replacements.extend(rows);
    }
    replacements
}

/// The vocabulary size of a resized vocabulary, from the adapter's full copies of the embeddings /
/// output projection, with the tokens it adds; the base's embedding and output tensors take the
/// new row count (every row then comes from the copies). `None` when the vocabulary keeps its size.
fn resize_vocab(
    header: &mut gguf::Header,
    replacements: &[(String, usize, Replacement)],
    source: &Source,
    base_path: &Path,
) -> Result<Option<(usize, crate::formats::vocab::Added, PathBuf)>> {
    let Source::Peft { inputs, .. } = source else {
        return Ok(None);
    };
    let Some(old) = header
        .tensors
        .iter()
        .find(|t| t.name == "token_embd.weight")
        .map(|t| t.ne[1] as usize)
    else {
        return Ok(None);
    };
    let full: Vec<(&str, usize, usize)> = replacements
        .iter()
        .filter(|r| r.2.rows.is_none())
        .map(|(name, input, r)| (name.as_str(), *input, inputs[*input].adapter.tensors[r.tensor].shape[0]))
        .collect();
    let Some(&(_, input, new)) = full.iter().find(|f| f.2 != old) else {
        return Ok(None);
    };
    // Gemma 4's per-layer token embeddings are indexed by token too, and PEFT's copies never hold them.
    if let Some(t) = header.tensors.iter().find(|t| t.name.ends_with("_token_embd.weight")) {
        return Err(Error::refused(
            base_path,
            format!(
                "the adapter resizes the vocabulary to {new} tokens, and the base's `{}` (looked up by token as well) \
                 would keep {old} rows",
                t.name
            ),
            "a fine-tune that adds tokens to this model cannot be merged by ollama-tools; retrain without new tokens",
        ));
    }
    for t in header
        .tensors
        .iter_mut()
        .filter(|t| t.name == "token_embd.weight" || t.name == "output.weight")
    {
        if !full.iter().any(|f| f.0 == t.name && f.2 == new) {
            return Err(Error::refused(
                base_path,
                format!(
                    "the adapter resizes the vocabulary to {new} tokens, and has no full copy of `{}` of that size to fill it",
                    t.name
                ),
                "save the adapter with both embed_tokens and lm_head (PEFT: save_embedding_layers=True)",
            ));
        }
        t.ne[1] = new as u64;
    }
    let dir = inputs[input]
        .adapter
        .config_path
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let added = crate::formats::vocab::added_tokens(&dir, old, new)?;
    Ok(Some((new, added, dir)))
}

/// Gives a base whose output projection is its token embeddings (no `output.weight`) an output
/// tensor of its own when the adapters change either: PEFT's model changes only the one it adapts.
/// The new tensor starts as the embeddings' own bytes (the same data offset), so it is copied or
/// merged like any other; llama.cpp uses `output.weight` when a file has it.
fn untie<'a>(header: &mut gguf::Header, touched: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let has = |name: &str| header.tensors.iter().any(|t| t.name == name);
    if has("output.weight")
        || !touched
            .into_iter()
            .any(|n| n == "token_embd.weight" || n == "output.weight")
    {
        return None;
    }
    let embd = header.tensors.iter().find(|t| t.name == "token_embd.weight")?.clone();
    let bytes = embd.ty.byte_size(&embd.ne).unwrap_or(0);
    header.tensors.push(gguf::TensorInfo {
        name: "output.weight".into(),
        ..embd
    });
    Some(format!(
        "the base ties its output projection to the token embeddings, and the adapter changes one of them: the \
         merged model gets its own output.weight ({:.1} MB more), as PEFT's model computes",
        bytes as f64 / 1e6
    ))
}

/// DoRA's merge (PEFT `DoraLinearVariant.merge`): each row of `W + s B A` rescaled to its learned
/// magnitude, `m / ||W + s B A||` per output row. A zero row gives a non-finite factor, which the
/// value check then refuses.
fn rescale_rows(rows: &mut [f32], magnitude: &[f32], cols: usize) {
    for (row, &m) in rows.chunks_exact_mut(cols).zip(magnitude) {
        let norm = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt();
        let f = (f64::from(m) / norm) as f32;
        row.iter_mut().for_each(|v| *v *= f);
    }
}

/// What a touched base tensor becomes: checked (2-d, or a 3-d stack of experts; a type this tool
/// reads), and `wanted` where it can be written, else Q8_0 or F16.
fn merged_type(
    t: &gguf::TensorInfo,
    wanted: GgmlType,
    base_path: &Path,
    notices: &mut Vec<String>,
) -> Result<GgmlType> {
    let name = &t.name;
    if !matches!(t.ne.len(), 2 | 3) {
        return Err(Error::refused(
            base_path,
            format!(
                "`{name}` is a {}-d tensor {:?}; a LoRA adapts 2-d weight matrices (or 3-d stacks of experts)",
                t.ne.len(),
                t.ne
            ),
            "use the base model the adapter was made for",
        ));
    }
    if !quant::can_dequantize(t.ty) {
        return Err(Error::refused(
            base_path,
            format!("`{name}` is {}, which this tool cannot read to merge into", t.ty),
            "use a build of the base with F16, BF16, Q8_0, Q4_0/Q4_1/Q5_0/Q5_1, K-quant or MXFP4 tensors",
        ));
    }
    let fits = |ty: GgmlType| quant::can_quantize(ty) && (t.ne[0] as usize).is_multiple_of(quant::block_len(ty));
    if fits(wanted) {
        return Ok(wanted);
    }
    let fallback = if fits(GgmlType::Q8_0) {
        GgmlType::Q8_0
    } else {
        GgmlType::F16
    };
    notices.push(format!(
        "`{name}` written as {fallback}: {wanted} cannot be written for it"
    ));
    Ok(fallback)
}

/// The type each base tensor is written in when no adapter touches it: its own, or with --quantize
/// the one llama-quantize's mix gives it.
fn output_types(header: &gguf::Header, opts: &Options, base_path: &Path) -> Result<Vec<GgmlType>> {
    let Some(scheme) = opts.quantize else {
        return Ok(header.tensors.iter().map(|t| t.ty).collect());
    };
    if opts.merged_type != MergedType::Keep {
        return Err(Error::Usage(
            "--quantize sets the type of every tensor, merged ones too: leave out --merged-type".into(),
        ));
    }
    let tensors: Vec<quant_mix::Tensor> = header
        .tensors
        .iter()
        .map(|t| quant_mix::Tensor {
            name: &t.name,
            ne: &t.ne,
            ty: t.ty,
        })
        .collect();
    quant_mix::plan(scheme, &quant_mix::Model::from_header(header), &tensors).map_err(|msg| {
        Error::refused(
            base_path,
            format!("choosing the {scheme} type of each tensor as llama-quantize does: {msg}"),
            "use a base whose tensors follow llama.cpp's naming (blk.N.<name>)",
        )
    })
}

/// Untouched tensors that change type must be readable by this tool (and the new type writable).
fn check_conversions(
    header: &gguf::Header,
    targets: &[GgmlType],
    pair_of: &HashMap<usize, usize>,
    base_path: &Path,
) -> Result<()> {
    let unreadable = header.tensors.iter().enumerate().find(|&(i, t)| {
        !pair_of.contains_key(&i)
            && targets[i] != t.ty
            && !(quant::can_dequantize(t.ty) && quant::can_quantize(targets[i]))
    });
    match unreadable {
        Some((i, t)) => Err(Error::refused(
            base_path,
            format!(
                "`{}` is {}, which this tool cannot read to convert it to {}",
                t.name, t.ty, targets[i]
            ),
            "quantize from a base with F16, BF16, F32, Q8_0 or K-quant tensors (an F16 conversion of the model is best)",
        )),
        None => Ok(()),
    }
}

/// A word when --quantize re-quantizes tensors the base already holds quantized: as llama-quantize
/// with --allow-requantize, from their dequantized values, which costs more than quantizing once.
fn requantize_notice(header: &gguf::Header, targets: &[GgmlType], scheme: Option<Scheme>) -> Option<String> {
    let scheme = scheme?;
    let mut from: Vec<String> = header
        .tensors
        .iter()
        .zip(targets)
        .filter(|&(t, &ty)| t.ty != ty && quant::block_len(t.ty) > 1)
        .map(|(t, _)| t.ty.name())
        .collect();
    if from.is_empty() {
        return None;
    }
    let n = from.len();
    from.sort();
    from.dedup();
    Some(format!(
        "{n} tensors of the base are already quantized ({}) and are re-quantized to {scheme} from their \
         dequantized values (llama-quantize --allow-requantize does the same): quantizing from an F16 or BF16 \
         base loses less",
        from.join(", ")
    ))
}

/// The jobs in file order: whole tensors copied as they are, row blocks of the others.
fn plan_jobs(header: &gguf::Header, targets: &[GgmlType], pair_of: &HashMap<usize, usize>) -> Vec<Job> {
    let mut jobs = Vec::new();
    for (i, t) in header.tensors.iter().enumerate() {
        let pair = pair_of.get(&i).copied();
        if pair.is_none() && targets[i] == t.ty {
            jobs.push(Job::Copy { tensor: i });
            continue;
        }
        let (cols, rows) = (t.ne[0] as usize, t.ne[1..].iter().product::<u64>() as usize);
        // Zero-width tensors never get here (the reader refuses them); max(1) keeps it so.
        let step = (BLOCK_VALUES / cols.max(1)).max(1);
        for start in (0..rows).step_by(step) {
            jobs.push(Job::Rows {
                tensor: i,
                pair,
                start,
                end: (start + step).min(rows),
            });
        }
    }
    jobs
}

/// Every base tensor must have a known size, so the copy and the output table are exact (a crafted
/// or newer base can hold types this tool does not know).
fn check_base_tensors(header: &gguf::Header, base_path: &Path) -> Result<()> {
    match header.tensors.iter().find(|t| t.ty.byte_size(&t.ne).is_none()) {
        Some(t) => Err(Error::refused(
            base_path,
            format!(
                "tensor `{}` has type {}, whose size this tool does not know, so it cannot copy it",
                t.name, t.ty
            ),
            "use a build of the base with common types (F16, Q8_0, Q4_K_M ...)",
        )),
        None => Ok(()),
    }
}

/// The largest magnitude worth writing into a type with f16 scales (every type but F32 and BF16):
/// f16's own maximum. Real weights stay far below it; anything above comes from a diverged adapter
/// and would turn into Inf in the file.
const F16_MAX: f32 = 65504.0;

/// Refuses merged rows holding NaN, Inf, or values the target type cannot hold: the adapter
/// (or its scale) would otherwise write a broken model that loads and produces garbage.
fn check_values(rows: &[f32], cols: usize, start: usize, ty: GgmlType, name: &str, base_path: &Path) -> Result<()> {
    let limit = if matches!(ty, GgmlType::F32 | GgmlType::BF16) {
        f32::MAX
    } else {
        F16_MAX
    };
    // No short-circuit and no early exit within a chunk, so the scan vectorises; the position is
    // looked for only when a chunk has a bad value.
    let bad = |v: &f32| v.is_nan() | (v.abs() > limit);
    let mut chunks = rows.chunks(4096).enumerate();
    let Some((k, chunk)) = chunks.find(|(_, c)| c.iter().fold(false, |any, v| any | bad(v))) else {
        return Ok(());
    };
    let i = k * 4096 + chunk.iter().position(bad).unwrap_or(0);
    let what = if rows[i].is_finite() {
        format!("{:e}, beyond what {ty} can hold", rows[i])
    } else {
        rows[i].to_string()
    };
    Err(Error::refused(
        base_path,
        format!(
            "merging into `{name}` gives {what} at row {}: the adapter holds NaN/Inf or huge values",
            start + i / cols
        ),
        "check the adapter (a diverged training run?) with `ollama-tools inspect`, and --scale / the adapter weights",
    ))
}

/// Adds llama.cpp's delta for rows `start..end` to `rows` (`[end - start, cols]`, row-major):
/// `scale * lora_b @ lora_a` for a linear weight, and for the token embedding (whose lora_a is
/// stored transposed, `[vocab, rank]`) `scale * lora_a @ lora_b^T`. llama.cpp's scale is `alpha / rank`.
#[allow(clippy::too_many_arguments)]
fn add_delta(
    rank: usize,
    scale: f32,
    transposed: bool,
    lora_a: &[f32],
    lora_b: &[f32],
    start: usize,
    end: usize,
    cols: usize,
    rows: &mut [f32],
) {
    let m = end - start;
    // (left: [m, rank] row-major; right: [rank, cols] with strides).
    let (left, right, rs_right, cs_right) = if transposed {
        (&lora_a[start * rank..end * rank], lora_b, 1, rank as isize)
    } else {
        (&lora_b[start * rank..end * rank], lora_a, cols as isize, 1)
    };
    debug_assert_eq!(right.len(), rank * cols);
    // SAFETY: the pointers and strides describe `left` ([m, rank]), `right` ([rank, cols]) and `rows`
    // ([m, cols]) within their slices' bounds, checked by the slicing above and the lengths here.
    assert!(left.len() == m * rank && rows.len() == m * cols && right.len() == rank * cols);
    unsafe {
        matrixmultiply::sgemm(
            m,
            rank,
            cols,
            scale,
            left.as_ptr(),
            rank as isize,
            1,
            right.as_ptr(),
            rs_right,
            cs_right,
            1.0,
            rows.as_mut_ptr(),
            cols as isize,
            1,
        );
    }
}

/// The base's metadata as it is (its alignment aside: the writer aligns to 32, the default), plus
/// where the merge came from.
fn metadata(header: &gguf::Header, provenance: &Provenance, opts: &Options) -> Vec<(String, Value)> {
    let mut kvs: Vec<(String, Value)> = header
        .kvs
        .iter()
        .filter(|(k, _)| k != "general.alignment" && !k.starts_with("ollama_tools."))
        .cloned()
        .collect();
    let strings = |v: &[String]| Value::Array(gguf::Array::String(v.iter().collect()));
    kvs.push((
        "ollama_tools.version".into(),
        Value::String(env!("CARGO_PKG_VERSION").into()),
    ));
    kvs.push(("ollama_tools.merged.adapters".into(), strings(&provenance.adapters)));
    kvs.push(("ollama_tools.merged.revisions".into(), strings(&provenance.revisions)));
    kvs.push((
        "ollama_tools.merged.weights".into(),
        Value::Array(gguf::Array::F32(provenance.weights.clone())),
    ));
    kvs.push(("ollama_tools.merged.scale".into(), Value::F32(opts.scale as f32)));
    if let Some(t) = &opts.chat_template {
        set_kv(&mut kvs, "tokenizer.chat_template", Value::String(t.clone()));
    }
    if let Some(scheme) = opts.quantize {
        // What llama-quantize records: the file type (how loaders and Ollama name the quantization)
        // and the block format version.
        set_kv(&mut kvs, "general.file_type", Value::U32(scheme.file_type()));
        set_kv(
            &mut kvs,
            "general.quantization_version",
            Value::U32(quant_mix::QUANTIZATION_VERSION),
        );
    }
    kvs
}

/// Replaces `key`'s value where it is, or appends it.
fn set_kv(kvs: &mut Vec<(String, Value)>, key: &str, value: Value) {
    match kvs.iter_mut().find(|(k, _)| k == key) {
        Some(kv) => kv.1 = value,
        None => kvs.push((key.into(), value)),
    }
}
