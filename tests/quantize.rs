//! `merge --quantize` and `create-from-base --quantize` through the built binary: the file type and
//! the mix's fallbacks on a tiny base, the refusals (IQ types, imatrix, conflicting options) and the
//! pass-through from create-from-base. That the mix and the bytes equal llama-quantize's is checked
//! against the real llama.cpp in tests/interop/test_quantize_interop.py.

mod common;
use common::*;
use ollama_tools::formats::gguf::{self, GgmlType, Value};
use predicates::str::contains;
use std::path::Path;

fn types(path: &Path) -> (gguf::Header, std::collections::HashMap<String, GgmlType>) {
    let h = gguf::read_header(path).unwrap();
    let types = h.tensors.iter().map(|t| (t.name.clone(), t.ty)).collect();
    (h, types)
}

fn u32_kv(h: &gguf::Header, key: &str) -> Option<u32> {
    match h.get(key) {
        Some(Value::U32(v)) => Some(*v),
        other => panic!("{key}: {other:?}"),
    }
}

#[test]
fn quantize_writes_the_mix_and_the_file_type() {
    let d = tempfile::tempdir().unwrap();
    let (base, _, adapter) = tiny_world(d.path(), "a");
    let out = d.path().join("q.gguf");
    bin()
        .arg("merge")
        .arg(&adapter)
        .args(["--base", base.to_str().unwrap(), "--quantize", "Q4_K_M", "-o"])
        .arg(&out)
        .assert()
        .success()
        .stdout(contains("4 tensors merged"))
        .stdout(contains("converted to the Q4_K_M mix"));
    let (h, ty) = types(&out);
    assert_eq!(u32_kv(&h, "general.file_type"), Some(15));
    assert_eq!(u32_kv(&h, "general.quantization_version"), Some(2));
    // Rows of 32 values: no whole 256-value K block, so llama.cpp's fallbacks: Q4_K -> Q5_0,
    // Q6_K (output, attn_v and ffn_down on the "more bits" layers: both of 2) -> Q8_0. Norms stay F32.
    assert_eq!(ty["blk.0.attn_norm.weight"], GgmlType::F32);
    assert_eq!(ty["blk.1.attn_q.weight"], GgmlType::Q5_0);
    assert_eq!(ty["token_embd.weight"], GgmlType::Q5_0);
    assert_eq!(ty["output.weight"], GgmlType::Q8_0);
    assert_eq!(ty["blk.1.attn_v.weight"], GgmlType::Q8_0);
    // ffn_down has rows of 48: not even a 32-value block, so F16.
    assert_eq!(ty["blk.0.ffn_down.weight"], GgmlType::F16);
}

#[test]
fn iq_types_q2_k_s_and_imatrix_are_refused_with_the_reason() {
    let d = tempfile::tempdir().unwrap();
    let (base, _, adapter) = tiny_world(d.path(), "a");
    let out = d.path().join("q.gguf");
    for (args, reason) in [
        (&["--quantize", "iq4_xs"][..], "importance matrix"),
        (&["--quantize", "IQ2_XXS"][..], "importance matrix"),
        (&["--quantize", "q2_k_s"][..], "importance matrix"),
        (
            &["--quantize", "q4_k_m", "--imatrix", "imatrix.dat"][..],
            "importance-matrix",
        ),
        (&["--quantize", "q7_k"][..], "supported: f32, f16"),
        (
            &["--quantize", "q8_0", "--merged-type", "f16"][..],
            "cannot be used with",
        ),
    ] {
        bin()
            .arg("merge")
            .arg(&adapter)
            .args(["--base", base.to_str().unwrap(), "-o"])
            .arg(&out)
            .args(args)
            .assert()
            .failure()
            .stderr(contains(reason));
        assert!(!out.exists(), "{args:?} left an output");
    }
}

#[test]
fn create_from_base_passes_quantize_to_the_merge() {
    let d = tempfile::tempdir().unwrap();
    let (base, _, adapter) = tiny_world(d.path(), "a");
    let (gguf_out, modelfile) = (d.path().join("m.gguf"), d.path().join("Modelfile"));
    bin()
        .env("OLLAMA_TOOLS_CACHE", d.path().join("cache"))
        .args(["create-from-base", "--no-create", "--quantize", "q8_0", "--base"])
        .arg(&base)
        .arg("--adapter")
        .arg(&adapter)
        .arg("--out-modelfile")
        .arg(&modelfile)
        .arg("--out-gguf")
        .arg(&gguf_out)
        .assert()
        .success();
    let (h, ty) = types(&gguf_out);
    assert_eq!(u32_kv(&h, "general.file_type"), Some(7));
    assert_eq!(ty["blk.0.attn_q.weight"], GgmlType::Q8_0);
    assert_eq!(ty["blk.0.ffn_gate.weight"], GgmlType::Q8_0);
    assert_eq!(ty["blk.0.attn_norm.weight"], GgmlType::F32);
}

#[test]
fn create_from_base_refuses_quantize_without_a_merge() {
    let d = tempfile::tempdir().unwrap();
    let (base, _, adapter) = tiny_world(d.path(), "a");
    let modelfile = d.path().join("Modelfile");
    let run = |extra: &[&str]| {
        bin()
            .env("OLLAMA_TOOLS_CACHE", d.path().join("cache"))
            .args(["create-from-base", "--no-create", "--quantize", "q4_k_m", "--base"])
            .arg(&base)
            .arg("--out-modelfile")
            .arg(&modelfile)
            .args(extra)
            .assert()
            .failure()
    };
    run(&[]).stderr(contains("there is no --adapter"));
    run(&["--adapter", adapter.to_str().unwrap(), "--mode", "adapter"]).stderr(contains("--mode merge"));
    assert!(!modelfile.exists());
}

#[test]
fn a_quantized_base_is_requantized_with_a_notice() {
    let d = tempfile::tempdir().unwrap();
    let (base, _, adapter) = tiny_world(d.path(), "a");
    let q8 = d.path().join("q8.gguf");
    bin()
        .arg("merge")
        .arg(&adapter)
        .args(["--base", base.to_str().unwrap(), "--quantize", "q8_0", "-o"])
        .arg(&q8)
        .assert()
        .success();
    let out = d.path().join("q4.gguf");
    bin()
        .arg("merge")
        .arg(&adapter)
        .args(["--base", q8.to_str().unwrap(), "--quantize", "q4_0", "-o"])
        .arg(&out)
        .assert()
        .success()
        .stderr(contains("already quantized (Q8_0)"))
        .stderr(contains("re-quantized to Q4_0"));
    let (h, ty) = types(&out);
    assert_eq!(u32_kv(&h, "general.file_type"), Some(2));
    assert_eq!(ty["blk.0.ffn_gate.weight"], GgmlType::Q4_0);
}
