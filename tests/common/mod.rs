//! Fixtures the tests build themselves: PEFT adapters (safetensors written with the `safetensors`
//! crate), tiny base-model GGUF headers, and a reader for the GGUF tensors we write.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ollama_tools::gguf::{self, GgmlType, TensorSpec, Value};
use safetensors::{Dtype, tensor::TensorView};

/// A small deterministic generator, so fixtures need no extra crate.
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// Uniform in [-1, 1).
    pub fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize, amp: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * amp).collect()
    }
}

/// A tensor to put in a fixture: values given in f32, stored as `dtype`.
pub struct T {
    pub key: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

pub fn t(key: &str, shape: &[usize], values: Vec<f32>) -> T {
    assert_eq!(shape.iter().product::<usize>(), values.len(), "{key}");
    T { key: key.into(), dtype: Dtype::F32, shape: shape.to_vec(), values }
}

fn encode(dtype: Dtype, values: &[f32]) -> Vec<u8> {
    match dtype {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::F16 => values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
        Dtype::BF16 => values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
        other => panic!("fixture dtype {other:?}"),
    }
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` into `dir`.
pub fn write_adapter(dir: &Path, config: &serde_json::Value, tensors: &[T]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("adapter_config.json"), serde_json::to_string_pretty(config).unwrap()).unwrap();
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|t| encode(t.dtype, &t.values)).collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| (t.key.clone(), TensorView::new(t.dtype, t.shape.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("adapter_model.safetensors")).unwrap();
    dir.to_path_buf()
}

/// Hyper-parameters of a tiny base model.
#[derive(Clone, Copy)]
pub struct Dims {
    pub layers: u64,
    pub hidden: u64,
    pub heads: u64,
    pub kv_heads: u64,
    pub head_dim: u64,
    pub ffn: u64,
    pub vocab: u64,
    pub tied: bool,
}

pub const TINY: Dims = Dims { layers: 2, hidden: 32, heads: 4, kv_heads: 2, head_dim: 8, ffn: 48, vocab: 40, tied: false };

/// Writes a base-model GGUF of `arch` with zero-filled F32 weights (only shapes matter to convert).
pub fn write_base_gguf(path: &Path, arch: &str, d: Dims) {
    let q = d.heads * d.head_dim;
    let kv = d.kv_heads * d.head_dim;
    let mut specs = vec![TensorSpec { name: "token_embd.weight".into(), ne: vec![d.hidden, d.vocab], ty: GgmlType::F32 }];
    if !d.tied {
        specs.push(TensorSpec { name: "output.weight".into(), ne: vec![d.hidden, d.vocab], ty: GgmlType::F32 });
    }
    for i in 0..d.layers {
        let mut add = |stem: &str, ne: [u64; 2]| {
            specs.push(TensorSpec { name: format!("blk.{i}.{stem}.weight"), ne: ne.to_vec(), ty: GgmlType::F32 })
        };
        add("attn_norm", [d.hidden, 1]);
        if arch == "phi3" {
            add("attn_qkv", [d.hidden, q + 2 * kv]);
            add("ffn_up", [d.hidden, 2 * d.ffn]);
        } else {
            add("attn_q", [d.hidden, q]);
            add("attn_k", [d.hidden, kv]);
            add("attn_v", [d.hidden, kv]);
            add("ffn_gate", [d.hidden, d.ffn]);
            add("ffn_up", [d.hidden, d.ffn]);
        }
        add("attn_output", [q, d.hidden]);
        add("ffn_down", [d.ffn, d.hidden]);
    }
    let s = |v: &str| Value::String(v.into());
    let kvs = vec![
        ("general.architecture".to_string(), s(arch)),
        ("general.name".to_string(), s("tiny")),
        (format!("{arch}.block_count"), Value::U32(d.layers as u32)),
        (format!("{arch}.embedding_length"), Value::U32(d.hidden as u32)),
        (format!("{arch}.attention.head_count"), Value::U32(d.heads as u32)),
        (format!("{arch}.attention.head_count_kv"), Value::U32(d.kv_heads as u32)),
        (format!("{arch}.vocab_size"), Value::U32(d.vocab as u32)),
    ];
    let mut w = gguf::Writer::new(std::fs::File::create(path).unwrap(), &kvs, &specs).unwrap();
    for spec in &specs {
        w.write_tensor(&vec![0u8; spec.byte_size() as usize]).unwrap();
    }
    w.finish().unwrap();
}

/// A tensor read back from a GGUF file: numpy-order shape and f32 values.
pub struct Read {
    pub shape: Vec<usize>,
    pub ty: GgmlType,
    pub values: Vec<f32>,
}

/// Reads every tensor of a GGUF file we wrote (F32/F16/BF16), plus its metadata.
pub fn read_gguf(path: &Path) -> (gguf::Header, HashMap<String, Read>) {
    let h = gguf::read_header(path).unwrap();
    let bytes = std::fs::read(path).unwrap();
    let mut out = HashMap::new();
    for t in &h.tensors {
        let size = t.ty.byte_size(&t.ne).unwrap() as usize;
        let start = (h.data_offset + t.offset) as usize;
        let raw = &bytes[start..start + size];
        let values: Vec<f32> = match t.ty {
            GgmlType::F32 => raw.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
            GgmlType::F16 => raw.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            GgmlType::BF16 => raw.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            other => panic!("unexpected type {other}"),
        };
        let shape = t.ne.iter().rev().map(|&d| d as usize).collect();
        out.insert(t.name.clone(), Read { shape, ty: t.ty, values });
    }
    (h, out)
}

/// `[m, k] @ [k, n]` in f64.
pub fn matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0f64; m * n];
    for i in 0..m {
        for p in 0..k {
            let x = f64::from(a[i * k + p]);
            for j in 0..n {
                out[i * n + j] += x * f64::from(b[p * n + j]);
            }
        }
    }
    out
}

/// max |a - b| / max |b|.
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    let scale = b.iter().map(|y| y.abs()).fold(0.0, f64::max);
    diff / scale.max(f64::MIN_POSITIVE)
}

pub fn bin() -> assert_cmd::Command {
    assert_cmd::Command::cargo_bin("ollama-tools").unwrap()
}
