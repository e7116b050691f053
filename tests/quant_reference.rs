//! Checks `ollama_tools::engine::quant` against bytes and values written by independent implementations:
//! ggml itself (its `quantize_row_*_ref` / `dequantize_row_*`, and `llama_model_quantize`, through
//! llama-cpp-python) and the `gguf` Python package's numpy quantizers and dequantizers.
//!
//! Cases live in `$OLLAMA_TOOLS_QUANT_REF` (written by `tests/interop/test_quant_reference.py`, which
//! runs this test) or, when that is unset, in the small set committed under `tests/fixtures/quant/`.
//! A case is a directory holding any of:
//! - `input.f32`: little-endian f32 values;
//! - `TYPE.bin` (`Q4_K.bin`, `BF16.bin`, ...): what the reference made of `input.f32`, so our
//!   `quantize` must write the same bytes, at every instruction-set level this CPU can run
//!   (`quant::Simd::available()`, the scalar baseline included; when there is no `input.f32`, the
//!   bytes are only decoded);
//! - `TYPE.deq*.f32` (`Q4_K.deq.f32`, `Q4_K.deq-ggml.f32`): what a reference decoded `TYPE.bin` to, so
//!   our `dequantize` must give the same values, bit for bit.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ollama_tools::engine::quant;
use ollama_tools::formats::gguf::GgmlType;

fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(bytes.len() % 4, 0, "{}: not a whole number of f32", path.display());
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Every directory under `root` (itself included) that holds a `.bin` file.
fn case_dirs(root: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    if entries.iter().any(|p| p.extension().is_some_and(|x| x == "bin")) {
        out.push(root.to_path_buf());
    }
    for p in entries.iter().filter(|p| p.is_dir()) {
        case_dirs(p, out);
    }
}

#[derive(Default)]
struct Tally {
    checks: usize,
    values: usize,
    failures: Vec<String>,
    lines: Vec<String>,
    /// Type names checked each way.
    quantized: BTreeSet<String>,
    dequantized: BTreeSet<String>,
    /// Instruction-set levels the quantize checks ran at.
    levels: BTreeSet<quant::Simd>,
}

fn check_case(dir: &Path, root: &Path, tally: &mut Tally) {
    let name = dir.strip_prefix(root).unwrap_or(dir).display().to_string();
    let name = if name.is_empty() { ".".to_string() } else { name };
    let input = dir.join("input.f32");
    let input = input.exists().then(|| read_f32(&input));
    let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for bin in files.iter().filter(|p| p.extension().is_some_and(|x| x == "bin")) {
        let type_name = bin.file_stem().unwrap().to_str().unwrap();
        let ty = GgmlType::from_name(type_name).unwrap_or_else(|| panic!("{}: unknown type", bin.display()));
        assert!(
            quant::can_quantize(ty) && quant::can_dequantize(ty),
            "{name}: {ty} unsupported"
        );
        let expected = std::fs::read(bin).unwrap();
        let (qk, bs) = (quant::block_len(ty), quant::block_bytes(ty));
        let nblocks = expected.len() / bs;
        let mut line = format!("{name:<40} {type_name:<5} {nblocks:>6} blocks:");

        if let Some(x) = &input {
            assert_eq!(
                x.len(),
                nblocks * qk,
                "{name}: input.f32 and {type_name}.bin disagree on length"
            );
            for level in quant::Simd::available() {
                let mut ours = vec![0u8; expected.len()];
                quant::quantize_with(level, ty, x, &mut ours).unwrap();
                let bad: Vec<usize> = (0..nblocks)
                    .filter(|&b| ours[b * bs..][..bs] != expected[b * bs..][..bs])
                    .collect();
                tally.checks += 1;
                tally.values += x.len();
                tally.quantized.insert(type_name.to_string());
                tally.levels.insert(level);
                let equal = nblocks - bad.len();
                let _ = write!(line, " quantize@{} {equal}/{nblocks} blocks equal", level.name());
                if let Some(&b) = bad.first() {
                    tally.failures.push(format!(
                        "{name}: quantize {type_name} at {}: {} of {nblocks} blocks differ; first is block {b}\n  input    {:?}\n  expected {:02x?}\n  ours     {:02x?}",
                        level.name(),
                        bad.len(),
                        &x[b * qk..][..qk.min(16)],
                        &expected[b * bs..][..bs],
                        &ours[b * bs..][..bs],
                    ));
                }
            }
        }

        let deq_prefix = format!("{type_name}.deq");
        for deq in files.iter().filter(|p| {
            let f = p.file_name().unwrap().to_str().unwrap();
            f.starts_with(&deq_prefix) && f.ends_with(".f32")
        }) {
            let want = read_f32(deq);
            assert_eq!(want.len(), nblocks * qk, "{}: wrong length", deq.display());
            let mut ours = vec![0f32; want.len()];
            quant::dequantize(ty, &expected, &mut ours).unwrap();
            let same = |a: f32, b: f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
            let bad: Vec<usize> = (0..want.len()).filter(|&i| !same(ours[i], want[i])).collect();
            tally.checks += 1;
            tally.values += want.len();
            tally.dequantized.insert(type_name.to_string());
            let label = deq.file_name().unwrap().to_str().unwrap();
            let _ = write!(line, " {label} {}/{} equal", want.len() - bad.len(), want.len());
            if let Some(&i) = bad.first() {
                tally.failures.push(format!(
                    "{name}: dequantize {type_name} vs {label}: {} of {} values differ; first at {i}: expected {:e}, ours {:e}",
                    bad.len(),
                    want.len(),
                    want[i],
                    ours[i]
                ));
            }
        }
        tally.lines.push(line);
    }
}

/// Types the committed fixtures check both ways (quantize and dequantize).
const COMMITTED_TYPES: [&str; 13] = [
    "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "MXFP4",
];

#[test]
fn quant_reference() {
    let (root, from_env) = match std::env::var_os("OLLAMA_TOOLS_QUANT_REF") {
        Some(dir) => (PathBuf::from(dir), true),
        None => (
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quant"),
            false,
        ),
    };
    let mut dirs = Vec::new();
    case_dirs(&root, &mut dirs);
    assert!(!dirs.is_empty(), "no cases under {}", root.display());
    let mut tally = Tally::default();
    for dir in &dirs {
        check_case(dir, &root, &mut tally);
    }
    eprintln!(
        "quant reference cases from {} ({})",
        root.display(),
        if from_env {
            "OLLAMA_TOOLS_QUANT_REF"
        } else {
            "committed fixtures"
        }
    );
    for line in &tally.lines {
        eprintln!("  {line}");
    }
    let levels: Vec<_> = tally.levels.iter().map(|l| l.name()).collect();
    eprintln!(
        "{} checks over {} values (quantize at {}), {} failures",
        tally.checks,
        tally.values,
        levels.join(", "),
        tally.failures.len()
    );
    assert!(
        tally.failures.is_empty(),
        "mismatches against the references:\n{}",
        tally.failures.join("\n")
    );
    if !from_env {
        // The committed set covers every type both ways, at every level; a lost file should not
        // pass silently.
        assert_eq!(
            tally.levels.iter().copied().collect::<Vec<_>>(),
            quant::Simd::available()
        );
        assert!(
            tally.checks >= 30,
            "only {} checks ran: fixtures incomplete?",
            tally.checks
        );
        for ty in COMMITTED_TYPES {
            assert!(
                tally.quantized.contains(ty) && tally.dequantized.contains(ty),
                "the committed fixtures no longer check {ty} both ways"
            );
        }
    }
}
