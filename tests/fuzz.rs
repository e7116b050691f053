//! Mutation fuzzing on the stable toolchain, inside `cargo test`: every parser of outside input gets
//! a fixed, deterministic budget of mutated seeds (`tests/fuzz/seeds`). Each execution must return
//! (Ok or Err) without panicking, and its peak allocation must stay within 64 x its input + 16 MiB.
//! A panic writes the input under `target/tmp/fuzz-crashes/` and fails with that path.
//!
//! `OLLAMA_TOOLS_FUZZ=N` multiplies every budget by N for a longer run; `OLLAMA_TOOLS_FUZZ_SEED=S`
//! changes the generator's seed. Crashes found here are kept as named regression tests at the end.

#[path = "common/modelfile_parser.rs"]
mod modelfile_parser;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use ollama_tools::commands::fetch;
use ollama_tools::engine::{base, quant};
use ollama_tools::formats::gguf::{self, GgmlType};
use ollama_tools::formats::modelfile::{self, Message, Modelfile, Parameters};
use ollama_tools::formats::peft;
use ollama_tools::remote::{hub, ollama};

// ---------------------------------------------------------------------------------------------
// Allocation accounting: per thread (the test harness runs targets in parallel), live and peak bytes.
// ---------------------------------------------------------------------------------------------

struct Counted;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn track(grow: usize, shrink: usize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get().saturating_add(grow).saturating_sub(shrink);
        live.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are updated.
unsafe impl GlobalAlloc for Counted {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        track(layout.size(), 0);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        track(layout.size(), 0);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track(0, layout.size());
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        track(new_size, layout.size());
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counted = Counted;

/// Runs `f` and returns the most it had allocated at once beyond what was live before.
fn peak_of(f: impl FnOnce()) -> usize {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    f();
    PEAK.with(Cell::get).saturating_sub(base)
}

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------

/// xorshift64*: deterministic, no crate.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Inputs stay small: the point is structure, and the allocation bound scales with the input.
const MAX_INPUT: usize = 16 << 10;

const INTERESTING_BYTES: [u8; 6] = [0, 0xff, 0x7f, 0x80, 1, b'"'];
const INTERESTING_WORDS: [u64; 10] = [
    0,
    1,
    0x7f,
    0xff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 32,
    1 << 40,
    i64::MAX as u64,
    u64::MAX,
];
/// Text fragments for the JSON and text formats: numbers at the edges, structure, odd characters.
const TOKENS: [&str; 18] = [
    "1e300",
    "-1",
    "0",
    "4294967296",
    "18446744073709551616",
    "1.5",
    "null",
    "[]",
    "{}",
    "\"\"",
    "\n",
    "\"\"\"",
    "\\",
    "\u{200d}",
    "\r\n",
    "PARAMETER ",
    "nan",
    "9007199254740993",
];

/// One to four mutations of `seed`: bit flips, interesting bytes, truncation, a length field set
/// to an edge value, a chunk duplicated, a token inserted.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(b.len() + 1);
        match rng.below(7) {
            0 if at < b.len() => b[at] ^= 1 << rng.below(8),
            1 if at < b.len() => b[at] = *rng.pick(&INTERESTING_BYTES),
            2 => b.truncate(at),
            3 if at + 8 <= b.len() => {
                let w = rng.pick(&INTERESTING_WORDS).to_le_bytes();
                let width = *rng.pick(&[2usize, 4, 8]);
                b[at..at + width].copy_from_slice(&w[..width]);
            }
            4 if at < b.len() => {
                let len = 1 + rng.below((b.len() - at).min(64));
                let chunk = b[at..at + len].to_vec();
                let to = rng.below(b.len() + 1);
                b.splice(to..to, chunk);
            }
            5 => {
                let end = (at + rng.below(8)).min(b.len());
                b.splice(at..end, rng.pick(&TOKENS).bytes());
            }
            _ if at < b.len() => b[at] = rng.next() as u8,
            _ => b.push(rng.next() as u8),
        }
    }
    b.truncate(MAX_INPUT);
    b
}

fn seed_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/seeds")
        .join(name)
}

fn seed(name: &str) -> Vec<u8> {
    std::fs::read(seed_path(name)).unwrap_or_else(|e| panic!("seed {name}: {e}"))
}

fn budget(n: usize) -> usize {
    let factor = std::env::var("OLLAMA_TOOLS_FUZZ")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    n * factor
}

fn rng_for(target: &str) -> Rng {
    let base: u64 = std::env::var("OLLAMA_TOOLS_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    Rng::new(
        target
            .bytes()
            .fold(base, |h, b| h.wrapping_mul(31).wrapping_add(b.into())),
    )
}

/// Runs `check` on the seeds and then on `runs` mutations of them. A panic, or a peak allocation
/// above 64 x input + 16 MiB, saves the input and fails naming the file.
fn fuzz(target: &str, seeds: &[Vec<u8>], runs: usize, check: impl Fn(&[u8])) {
    let mut rng = rng_for(target);
    let inputs = seeds.iter().cloned().chain((0..budget(runs)).map(|_| {
        let s = rng.pick(seeds).clone();
        mutate(&mut rng, &s)
    }));
    for (i, input) in inputs.enumerate() {
        let mut outcome = Ok(());
        let peak = peak_of(|| outcome = catch_unwind(AssertUnwindSafe(|| check(&input))));
        let limit = 64 * input.len() + (16 << 20);
        let failure = match outcome {
            Err(e) => Some(format!("panicked: {}", panic_text(&*e))),
            Ok(()) if peak > limit => Some(format!("allocated {peak} bytes at once (limit {limit})")),
            Ok(()) => None,
        };
        if let Some(failure) = failure {
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-crashes");
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("{target}-{i}.bin"));
            std::fs::write(&path, &input).unwrap();
            panic!(
                "fuzz target {target}, execution {i}: {failure}; input saved to {}",
                path.display()
            );
        }
    }
}

fn panic_text(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| e.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

fn text(input: &[u8]) -> String {
    String::from_utf8_lossy(input).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Targets
// ---------------------------------------------------------------------------------------------

/// Reads a GGUF file as every reader does: header, base description, each tensor's bytes decoded;
/// a header that reads is written again, and that copy must read back to the same bytes.
fn gguf_file(bytes: &[u8], dir: &Path) {
    let path = dir.join("f.gguf");
    std::fs::write(&path, bytes).unwrap();
    for key in ["general.architecture", "tokenizer.ggml.tokens", "general.type"] {
        let _ = gguf::kv_in_prefix(bytes, bytes.len() as u64, key);
        let _ = gguf::kv_in_prefix(bytes, 1 << 40, key);
    }
    let _ = base::BaseModel::from_gguf(&path);
    let Ok(h) = gguf::read_header(&path) else { return };
    let file = std::fs::File::open(&path).unwrap();
    let (mut raw, mut values) = (Vec::new(), Vec::new());
    for t in &h.tensors {
        if gguf::read_tensor_data(&file, &h, t, &mut raw).is_ok() && quant::can_dequantize(t.ty) {
            values.resize(t.ne.iter().product::<u64>() as usize, 0.0);
            quant::dequantize(t.ty, &raw, &mut values).unwrap();
        }
    }
    let specs: Vec<gguf::TensorSpec> = h
        .tensors
        .iter()
        .map(|t| gguf::TensorSpec {
            name: t.name.clone(),
            ne: t.ne.clone(),
            ty: t.ty,
        })
        .collect();
    let kvs: Vec<_> = h
        .kvs
        .iter()
        .filter(|(k, _)| k != "general.alignment")
        .cloned()
        .collect();
    let Some(first) = write_header(&kvs, &specs) else {
        return;
    };
    let again = dir.join("again.gguf");
    std::fs::write(&again, &first).unwrap();
    let h2 = gguf::read_header(&again).expect("a header the writer wrote reads back");
    assert_eq!(
        write_header(&h2.kvs, &specs).as_ref(),
        Some(&first),
        "re-written header differs"
    );
}

/// The header (and zeroed data) the writer makes for `kvs` and `specs`, `None` when it refuses them.
fn write_header(kvs: &[(String, gguf::Value)], specs: &[gguf::TensorSpec]) -> Option<Vec<u8>> {
    let mut w = gguf::Writer::new(Vec::new(), kvs, specs).ok()?;
    for s in specs {
        w.write_tensor(&vec![0u8; s.byte_size().ok()? as usize]).unwrap();
    }
    Some(w.finish().unwrap())
}

/// Opens a PEFT adapter whose safetensors file is `bytes`, analyzes it and reads every tensor.
fn safetensors_adapter(bytes: &[u8], dir: &Path) {
    std::fs::write(dir.join(peft::WEIGHTS_FILE), bytes).unwrap();
    let Ok(adapter) = peft::Adapter::open(dir) else { return };
    let analysis = adapter.analyze();
    let _ = peft::Report::new(&adapter, &analysis);
    let (mut raw, mut halves, mut out) = (Vec::new(), Vec::new(), Vec::new());
    for t in &adapter.tensors {
        let _ = adapter.read_raw(t, &mut raw);
        let _ = adapter.read_f32(t, &mut halves, &mut out);
    }
}

fn adapter_config(bytes: &[u8]) {
    let Ok(cfg) = peft::LoraConfig::parse(Path::new("adapter_config.json"), &text(bytes)) else {
        return;
    };
    for module in ["model.layers.0.self_attn.q_proj", "model.embed_tokens", "lm_head"] {
        let (r, a) = (cfg.rank_for(module), cfg.alpha_for(module));
        if let (Some(r), Some(a)) = (r, a) {
            let _ = cfg.scale(r, a);
        }
    }
    if let Some(base) = &cfg.base_model_name_or_path {
        let _ = peft::hub_repo_id(base);
        let _ = fetch::suggest_base(base);
    }
}

/// Every ggml type id with random bytes: decoding must give Ok or Err whatever the bytes and lengths.
fn dequantize(bytes: &[u8]) {
    let Some((&ty, rest)) = bytes.split_first() else { return };
    let ty = GgmlType(u32::from(ty % 48));
    let block = quant::block_len(ty).max(1);
    let bytes_per = quant::block_bytes(ty).max(1);
    let blocks = rest.len() / bytes_per;
    // Mostly the right output length, sometimes not.
    let n = if rest.len() % 7 == 0 {
        blocks * block + 1
    } else {
        blocks * block
    };
    let mut out = vec![0f32; n];
    let _ = quant::dequantize(ty, rest, &mut out);
    let _ = quant::dequantize(ty, &rest[..blocks * bytes_per], &mut out[..blocks * block]);
    if quant::can_quantize(ty) && out.iter().all(|v| v.is_finite()) {
        let mut q = vec![0u8; blocks * bytes_per];
        quant::quantize(ty, &out[..blocks * block], &mut q).unwrap();
    }
}

fn ollama_show(bytes: &[u8]) {
    let Ok(show) = serde_json::from_slice::<ollama::Show>(bytes) else {
        return;
    };
    let name = ollama::ModelName::parse("tiny:latest").unwrap();
    let _ = base::BaseModel::from_show(&name, &show, "http://127.0.0.1:1");
    let _ = show.license_text();
    show_parameters(show.parameters.as_bytes());
}

/// A manifest in a model store whose model layer is the GGUF seed.
fn ollama_manifest(bytes: &[u8], store: &Path) {
    let name = ollama::ModelName::parse("tiny").unwrap();
    let manifest = name.manifest_path(store);
    std::fs::create_dir_all(manifest.parent().unwrap()).unwrap();
    std::fs::write(&manifest, bytes).unwrap();
    let _ = base::BaseModel::from_store(&name, store);
    if let Ok(m) = serde_json::from_slice::<ollama::Manifest>(bytes) {
        for layer in m.layers.iter().chain(&m.config) {
            let _ = ollama::blob_path(store, &layer.digest);
            let _ = ollama::ModelName::parse(&layer.media_type);
        }
    }
    let _ = ollama::ModelName::parse(&text(bytes));
    let _ = ollama::host_from(&text(bytes));
}

/// Parameters as `/api/show` prints them; when a Modelfile can carry them, they read back equal.
fn show_parameters(bytes: &[u8]) {
    let Ok(params) = Parameters::from_show_text(&text(bytes)) else {
        return;
    };
    // Names Ollama does not know are kept as the server wrote them, and would be refused on reading.
    if params.to_json().keys().all(|k| modelfile::param_kind(k).is_some()) {
        round_trip(&Modelfile {
            from: "m".into(),
            parameters: params,
            ..Default::default()
        });
    }
}

/// Modelfile text read by an independent port of Ollama's parser, rendered by ours, read again:
/// what a Modelfile carries must come back unchanged.
fn modelfile(bytes: &[u8]) {
    let Ok(cmds) = modelfile_parser::parse(&text(bytes)) else {
        return;
    };
    if let Some(mf) = from_commands(&cmds) {
        round_trip(&mf);
    }
}

/// The Modelfile that parsed commands describe; `None` when a parameter is one we refuse.
fn from_commands(cmds: &[(String, String)]) -> Option<Modelfile> {
    let mut mf = Modelfile::default();
    for (name, args) in cmds {
        let value = Some(args.clone());
        match name.as_str() {
            "model" => mf.from = args.clone(),
            "adapter" => mf.adapter = value,
            "template" => mf.template = value,
            "system" => mf.system = value,
            "license" => mf.license = value,
            "renderer" => mf.renderer = value,
            "parser" => mf.parser = value,
            "requires" | "draft" => {}
            "message" => {
                let (role, content) = args.split_once(": ").unwrap_or((args.as_str(), ""));
                mf.messages.push(Message {
                    role: role.into(),
                    content: content.into(),
                });
            }
            param => mf.parameters.push(param, args).ok()?,
        }
    }
    Some(mf)
}

fn round_trip(mf: &Modelfile) {
    let Ok(written) = mf.render(None, "Modelfile") else {
        return;
    };
    let cmds = modelfile_parser::parse(&written)
        .unwrap_or_else(|e| panic!("rendered Modelfile does not parse: {e}\n{written}"));
    let back = from_commands(&cmds).unwrap_or_else(|| panic!("rendered parameters are refused\n{written}"));
    let fields = |m: &Modelfile| {
        (
            m.from.clone(),
            m.adapter.clone(),
            m.template.clone(),
            m.system.clone(),
            m.license.clone(),
        )
    };
    assert_eq!(fields(&back), fields(mf), "{written}");
    assert_eq!(
        (&back.renderer, &back.parser, &back.messages),
        (&mf.renderer, &mf.parser, &mf.messages),
        "{written}"
    );
    assert_eq!(back.parameters, mf.parameters, "{written}");
}

/// A Hub answer (a model's info or a tree listing): every string in it is a file list entry, a
/// repo id, a subfolder.
fn hub_json(bytes: &[u8]) {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return;
    };
    let mut strings = Vec::new();
    collect_strings(&json, &mut strings);
    let strings: Vec<String> = strings.into_iter().take(256).collect();
    for sub in [
        None,
        Some("."),
        Some("lora"),
        Some("gguf/tiny-Q8_0.GGUF"),
        strings.first().map(String::as_str),
    ] {
        if let Ok(found) = hub::candidates("org/tiny-lora", &strings, sub) {
            for c in &found {
                let _ = (c.files(), c.to_string());
            }
        }
    }
    for s in strings.iter().take(16) {
        let _ = (
            fetch::slug(s),
            fetch::suggest_base(s),
            peft::hub_repo_id(s),
            peft::hub_cache_repo(s),
        );
    }
    let _ = hub::Settings::from_vars(|k| strings.iter().find(|s| s.len() % 3 == k.len() % 3).cloned());
}

fn collect_strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|i| collect_strings(i, out)),
        serde_json::Value::Object(map) => map.iter().for_each(|(k, v)| {
            out.push(k.clone());
            collect_strings(v, out);
        }),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Tests: budgets (debug build): about a second or two per target on one core.
// ---------------------------------------------------------------------------------------------

#[test]
fn fuzz_gguf_reader() {
    let dir = tempfile::tempdir().unwrap();
    fuzz("gguf", &[seed("tiny.gguf")], 3000, |b| gguf_file(b, dir.path()));
}

#[test]
fn fuzz_safetensors_adapter() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        seed_path("adapter/adapter_config.json"),
        dir.path().join(peft::CONFIG_FILE),
    )
    .unwrap();
    fuzz("safetensors", &[seed("adapter/adapter_model.safetensors")], 3000, |b| {
        safetensors_adapter(b, dir.path())
    });
}

#[test]
fn fuzz_adapter_config() {
    fuzz(
        "adapter_config",
        &[seed("adapter/adapter_config.json")],
        4000,
        adapter_config,
    );
}

#[test]
fn fuzz_dequantize() {
    let mut rng = Rng::new(3);
    // One seed per type id: the id byte, then four blocks' worth of random bytes.
    let seeds: Vec<Vec<u8>> = (0..48u8)
        .map(|ty| {
            let len = 4 * quant::block_bytes(GgmlType(ty.into())).max(8);
            std::iter::once(ty).chain((0..len).map(|_| rng.next() as u8)).collect()
        })
        .collect();
    fuzz("dequantize", &seeds, 3000, dequantize);
}

#[test]
fn fuzz_ollama_show() {
    fuzz(
        "show",
        &[seed("show.json"), seed("show_no_tensors.json")],
        3000,
        ollama_show,
    );
}

#[test]
fn fuzz_ollama_manifest() {
    let store = tempfile::tempdir().unwrap();
    let blobs = store.path().join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::copy(
        seed_path("tiny.gguf"),
        blobs.join(format!("sha256-{}1", "0".repeat(63))),
    )
    .unwrap();
    fuzz("manifest", &[seed("manifest.json")], 3000, |b| {
        ollama_manifest(b, store.path())
    });
}

#[test]
fn fuzz_show_parameters() {
    fuzz("show_parameters", &[seed("show_parameters.txt")], 3000, show_parameters);
}

#[test]
fn fuzz_modelfile_round_trip() {
    fuzz("modelfile", &[seed("Modelfile")], 3000, modelfile);
}

#[test]
fn fuzz_hub_json() {
    fuzz(
        "hub",
        &[seed("hub_model_info.json"), seed("hub_tree.json")],
        3000,
        hub_json,
    );
}

#[test]
fn seeds_are_accepted() {
    // The seeds must reach deep: a fuzz run over seeds that are refused at once tests little.
    let dir = tempfile::tempdir().unwrap();
    gguf::read_header(&seed_path("tiny.gguf")).unwrap();
    base::BaseModel::from_gguf(&seed_path("tiny.gguf")).unwrap();
    std::fs::copy(seed_path("tiny.gguf"), dir.path().join("x.gguf")).unwrap();
    let adapter = peft::Adapter::open(&seed_path("adapter")).unwrap();
    assert_eq!(adapter.analyze().modules.len(), 2);
    let show: ollama::Show = serde_json::from_slice(&seed("show.json")).unwrap();
    base::BaseModel::from_show(&ollama::ModelName::parse("t").unwrap(), &show, "s").unwrap();
    let show: ollama::Show = serde_json::from_slice(&seed("show_no_tensors.json")).unwrap();
    let derived = base::BaseModel::from_show(&ollama::ModelName::parse("t").unwrap(), &show, "s").unwrap();
    assert!(derived.tensors.contains_key("blk.1.ffn_down.weight"));
    let cmds = modelfile_parser::parse(&text(&seed("Modelfile"))).unwrap();
    assert!(from_commands(&cmds).is_some());
    Parameters::from_show_text(&text(&seed("show_parameters.txt"))).unwrap();
    serde_json::from_slice::<ollama::Manifest>(&seed("manifest.json")).unwrap();
}

#[test]
fn allocation_counter_sees_allocations() {
    let peak = peak_of(|| drop(std::hint::black_box(vec![1u8; 3 << 20])));
    assert!(peak >= 3 << 20, "{peak}");
}

// Regressions: crashes the fuzzer found, with their minimized inputs.

/// A show parameter beyond float32 range was kept and rendered as a PARAMETER line Ollama refuses,
/// so the round trip panicked; it is refused when read now.
#[test]
fn regression_show_parameter_beyond_float32() {
    show_parameters(b"temperature 1e300");
    assert!(Parameters::from_show_text("temperature 1e300").is_err());
}
