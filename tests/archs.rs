//! The 2026 families without llama.cpp: bases described by config.json (per-layer shapes), the real
//! corpus adapters of these families against GGUF headers with the real models' widths, and the
//! refusals and notices (towers, KV-shared layers, merge-only tensors).
//!
//! The GGUF headers here are written by hand from llama.cpp's converter (conversion/gemma.py,
//! qwen.py, mistral3.py), not from `base.rs`'s derivation, so the two are checked against each other.

mod common;
use common::*;

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ollama_tools::engine::base::BaseModel;
use ollama_tools::engine::validate::validate;
use ollama_tools::formats::gguf::{self, GgmlType, TensorSpec, Value};
use ollama_tools::formats::peft::Adapter;
use predicates::prelude::PredicateBooleanExt;
use safetensors::Dtype;
use serde_json::json;

/// A file whose zero bytes are skipped over (sparse): a header with multi-gigabyte tensors costs nothing.
struct Sparse(std::fs::File);

impl Write for Sparse {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.iter().all(|&b| b == 0) {
            self.0.seek(SeekFrom::Current(buf.len() as i64))?;
            Ok(buf.len())
        } else {
            self.0.write(buf)
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let end = self.0.stream_position()?;
        self.0.set_len(end)?;
        self.0.flush()
    }
}

/// A base GGUF of `arch` with these tensors (F16 matrices, zero data) and metadata.
fn write_header(path: &Path, arch: &str, kvs: Vec<(&str, Value)>, tensors: &[(String, [u64; 2])]) {
    let mut all = vec![("general.architecture".to_string(), Value::String(arch.into()))];
    all.extend(kvs.into_iter().map(|(k, v)| (format!("{arch}.{k}"), v)));
    let specs: Vec<TensorSpec> = tensors
        .iter()
        .map(|(n, ne)| TensorSpec {
            name: n.clone(),
            ne: ne.to_vec(),
            ty: GgmlType::F16,
        })
        .collect();
    let mut w = gguf::Writer::new(Sparse(std::fs::File::create(path).unwrap()), &all, &specs).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for s in &specs {
        let mut left = s.byte_size().unwrap() as usize;
        while left > 0 {
            let n = left.min(zeros.len());
            w.write_part(&zeros[..n]).unwrap();
            left -= n;
        }
        w.end_tensor().unwrap();
    }
    w.finish().unwrap();
}

/// A PEFT adapter holding a rank-`r` pair (zeros, F16) for every `(module path, [out, in])`, with
/// the corpus's adapter_config.json when one is named.
fn write_peft(dir: &Path, config: serde_json::Value, r: usize, modules: &[(String, [usize; 2])]) -> PathBuf {
    let mut tensors = Vec::new();
    for (path, [out, inp]) in modules {
        for (half, shape) in [("lora_A", [r, *inp]), ("lora_B", [*out, r])] {
            let key = format!("base_model.model.{path}.{half}.weight");
            tensors.push(T {
                key,
                dtype: Dtype::F16,
                shape: shape.to_vec(),
                values: vec![0.0; shape[0] * shape[1]],
            });
        }
    }
    write_adapter(dir, &config, &tensors)
}

/// `ollama-tools convert ADAPTER --base BASE -o OUT [extra...]`.
fn convert(adapter: &Path, base: &Path, out: &Path, extra: &[&str]) -> assert_cmd::assert::Assert {
    bin()
        .arg("convert")
        .arg(adapter)
        .arg("--base")
        .arg(base)
        .arg("-o")
        .arg(out)
        .args(extra)
        .assert()
}

fn corpus_config(name: &str) -> Option<serde_json::Value> {
    let dir = std::env::var_os("OLLAMA_TOOLS_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus"));
    let path = dir.join("configs").join(name);
    if !path.is_file() {
        assert!(
            std::env::var_os("CI").is_none(),
            "corpus file {} missing",
            path.display()
        );
        return None;
    }
    Some(serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap())
}

fn blk(i: u64, stem: &str, ne: [u64; 2]) -> (String, [u64; 2]) {
    (format!("blk.{i}.{stem}.weight"), ne)
}

// ---------------------------------------------------------------------------------------------
// Qwen3.5: linear-attention and full-attention layers
// ---------------------------------------------------------------------------------------------

/// Qwen3.5-9B's widths (H 4096, 16 heads of 256, 4 KV heads, linear 16 key / 32 value heads of
/// 128), four layers: three linear, one full (full_attention_interval 4).
const Q_H: u64 = 4096;

fn qwen35_tensors(layers: u64) -> Vec<(String, [u64; 2])> {
    let mut t = vec![
        ("token_embd.weight".to_string(), [Q_H, 248_320]),
        ("output.weight".to_string(), [Q_H, 248_320]),
    ];
    for i in 0..layers {
        if (i + 1) % 4 == 0 {
            t.extend([
                blk(i, "attn_q", [Q_H, 2 * 16 * 256]),
                blk(i, "attn_k", [Q_H, 4 * 256]),
                blk(i, "attn_v", [Q_H, 4 * 256]),
                blk(i, "attn_output", [16 * 256, Q_H]),
            ]);
        } else {
            t.extend([
                blk(i, "attn_qkv", [Q_H, 2 * 16 * 128 + 32 * 128]),
                blk(i, "attn_gate", [Q_H, 32 * 128]),
                blk(i, "ssm_alpha", [Q_H, 32]),
                blk(i, "ssm_beta", [Q_H, 32]),
                blk(i, "ssm_out", [32 * 128, Q_H]),
            ]);
        }
        t.extend([
            blk(i, "ffn_gate", [Q_H, 12288]),
            blk(i, "ffn_up", [Q_H, 12288]),
            blk(i, "ffn_down", [12288, Q_H]),
        ]);
    }
    t
}

fn qwen35_kvs(layers: u64) -> Vec<(&'static str, Value)> {
    vec![
        ("block_count", Value::U32(layers as u32)),
        ("embedding_length", Value::U32(Q_H as u32)),
        ("attention.head_count", Value::U32(16)),
        ("attention.head_count_kv", Value::U32(4)),
        ("ssm.group_count", Value::U32(16)),
        ("ssm.time_step_rank", Value::U32(32)),
        ("ssm.state_size", Value::U32(128)),
        ("ssm.inner_size", Value::U32(32 * 128)),
        ("full_attention_interval", Value::U32(4)),
    ]
}

/// The modules PEFT wraps in Qwen3_5ForConditionalGeneration for a target list, as (path, [out, in]).
fn qwen35_modules(layers: u64) -> Vec<(String, [usize; 2])> {
    let h = Q_H as usize;
    let mut m = Vec::new();
    for i in 0..layers {
        let p = format!("model.language_model.layers.{i}");
        if (i + 1) % 4 == 0 {
            m.push((format!("{p}.self_attn.q_proj"), [2 * 16 * 256, h]));
            m.push((format!("{p}.self_attn.k_proj"), [4 * 256, h]));
            m.push((format!("{p}.self_attn.v_proj"), [4 * 256, h]));
            m.push((format!("{p}.self_attn.o_proj"), [h, 16 * 256]));
        } else {
            m.push((format!("{p}.linear_attn.in_proj_qkv"), [2 * 16 * 128 + 32 * 128, h]));
            m.push((format!("{p}.linear_attn.in_proj_z"), [32 * 128, h]));
            m.push((format!("{p}.linear_attn.in_proj_a"), [32, h]));
            m.push((format!("{p}.linear_attn.in_proj_b"), [32, h]));
            m.push((format!("{p}.linear_attn.out_proj"), [h, 32 * 128]));
        }
        m.push((format!("{p}.mlp.gate_proj"), [12288, h]));
        m.push((format!("{p}.mlp.up_proj"), [12288, h]));
        m.push((format!("{p}.mlp.down_proj"), [h, 12288]));
    }
    m
}

#[test]
fn qwen35_config_json_derives_the_converters_shapes() {
    let d = tempfile::tempdir().unwrap();
    let cfg = json!({
        "model_type": "qwen3_5",
        "tie_word_embeddings": false,
        "text_config": {
            "model_type": "qwen3_5_text", "hidden_size": 4096, "intermediate_size": 12288,
            "num_hidden_layers": 8, "num_attention_heads": 16, "num_key_value_heads": 4, "head_dim": 256,
            "linear_num_key_heads": 16, "linear_num_value_heads": 32, "linear_key_head_dim": 128,
            "linear_value_head_dim": 128, "full_attention_interval": 4, "vocab_size": 248320
        }
    });
    std::fs::write(d.path().join("config.json"), cfg.to_string()).unwrap();
    let from_cfg = BaseModel::load(d.path()).unwrap();
    let gguf = d.path().join("q.gguf");
    write_header(&gguf, "qwen35", qwen35_kvs(8), &qwen35_tensors(8));
    let from_gguf = BaseModel::load(&gguf).unwrap();
    assert_eq!(from_cfg.arch, "qwen35");
    for (name, t) in &from_cfg.tensors {
        assert_eq!(Some(&t.ne), from_gguf.tensors.get(name).map(|t| &t.ne), "{name}");
    }
    assert_eq!(from_cfg.tensors.len(), from_gguf.tensors.len());
    assert_eq!(from_cfg.linear_attn, from_gguf.linear_attn);
    assert_eq!(from_gguf.geometry().linear_attn.unwrap().v_heads, 32);
}

#[test]
fn qwen35_corpus_adapter_validates_and_leaves_the_vision_tower_out() {
    let Some(config) = corpus_config("AnHuanAo__qwythos-9b-math-sft__adapter_config.json") else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let gguf = d.path().join("qwen35.gguf");
    write_header(&gguf, "qwen35", qwen35_kvs(4), &qwen35_tensors(4));
    // The config targets the vision tower's qkv / attn.proj / linear_fc1 / linear_fc2 too.
    let mut modules = qwen35_modules(4);
    for (m, shape) in [
        ("attn.qkv", [3456, 1152]),
        ("attn.proj", [1152, 1152]),
        ("mlp.linear_fc1", [4304, 1152]),
    ] {
        modules.push((format!("model.visual.blocks.0.{m}"), shape));
    }
    let a = write_peft(&d.path().join("a"), config, 16, &modules);
    let v = validate(&Adapter::open(&a).unwrap(), &BaseModel::load(&gguf).unwrap());
    assert!(v.errors.is_empty(), "{:?}", v.errors);
    assert_eq!(v.modules.len(), qwen35_modules(4).len());
    assert!(
        v.warnings
            .iter()
            .any(|w| w.message.contains("3 LoRA pairs on the multimodal towers")),
        "{:?}",
        v.warnings
    );
    // `--strict` turns the warning into a refusal, naming the tower.
    convert(&a, &gguf, &d.path().join("x.gguf"), &["--strict"])
        .failure()
        .stderr(predicates::str::contains("model.visual.blocks.0"));
}

#[test]
fn qwen35_corpus_adapter_merges_the_vision_tower_an_ollama_base_carries() {
    let Some(config) = corpus_config("AnHuanAo__qwythos-9b-math-sft__adapter_config.json") else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let gguf = d.path().join("qwen35-ollama.gguf");
    // Ollama's Qwen3.5 GGUF keeps the vision tower, its qkv split into thirds (convert_qwen35.go).
    let mut tensors = qwen35_tensors(4);
    for stem in ["attn_q", "attn_k", "attn_v", "attn_out"] {
        tensors.push((format!("v.blk.0.{stem}.weight"), [1152, 1152]));
    }
    tensors.push(("v.blk.0.mlp.linear_fc1.weight".into(), [1152, 4304]));
    write_header(&gguf, "qwen35", qwen35_kvs(4), &tensors);
    let mut modules = qwen35_modules(4);
    for (m, shape) in [
        ("attn.qkv", [3456, 1152]),
        ("attn.proj", [1152, 1152]),
        ("mlp.linear_fc1", [4304, 1152]),
    ] {
        modules.push((format!("model.visual.blocks.0.{m}"), shape));
    }
    // A block the base lacks is still left out, with the warning.
    modules.push(("model.visual.blocks.1.attn.proj".into(), [1152, 1152]));
    let a = write_peft(&d.path().join("a"), config, 16, &modules);
    let v = validate(&Adapter::open(&a).unwrap(), &BaseModel::load(&gguf).unwrap());
    assert!(v.errors.is_empty(), "{:?}", v.errors);
    let towers: Vec<(&str, usize)> = v
        .modules
        .iter()
        .filter(|t| t.tensor.starts_with("v."))
        .map(|t| (t.tensor.as_str(), t.b_row_offset))
        .collect();
    assert_eq!(
        towers,
        [
            ("v.blk.0.attn_out.weight", 0),
            ("v.blk.0.attn_q.weight", 0),
            ("v.blk.0.attn_k.weight", 1152),
            ("v.blk.0.attn_v.weight", 2304),
            ("v.blk.0.mlp.linear_fc1.weight", 0)
        ]
    );
    assert!(
        v.notices
            .iter()
            .any(|n| n.contains("5 LoRA pairs on the multimodal towers map to the tower")),
        "{:?}",
        v.notices
    );
    assert!(
        v.warnings
            .iter()
            .any(|w| w.message.contains("`model.visual.blocks.1.attn.proj`) left out")),
        "{:?}",
        v.warnings
    );
}

#[test]
fn qwen35_linear_attention_shape_mismatch_names_the_layer() {
    let d = tempfile::tempdir().unwrap();
    let gguf = d.path().join("qwen35.gguf");
    write_header(&gguf, "qwen35", qwen35_kvs(4), &qwen35_tensors(4));
    // Trained on a model with 16 value heads: in_proj_z is half as high.
    let modules = vec![(
        "model.layers.2.linear_attn.in_proj_z".to_string(),
        [16 * 128, Q_H as usize],
    )];
    let a = write_peft(
        &d.path().join("a"),
        json!({"peft_type": "LORA", "r": 8, "lora_alpha": 16}),
        8,
        &modules,
    );
    let v = validate(&Adapter::open(&a).unwrap(), &BaseModel::load(&gguf).unwrap());
    assert!(
        v.errors.iter().any(|e| e.subject == "blk.2.attn_gate.weight"),
        "{:?}",
        v.errors
    );
    // A linear-attention module on a full-attention layer does not exist there.
    let modules = vec![(
        "model.layers.3.linear_attn.in_proj_z".to_string(),
        [32 * 128, Q_H as usize],
    )];
    let a = write_peft(
        &d.path().join("b"),
        json!({"peft_type": "LORA", "r": 8, "lora_alpha": 16}),
        8,
        &modules,
    );
    let v = validate(&Adapter::open(&a).unwrap(), &BaseModel::load(&gguf).unwrap());
    assert!(
        v.errors
            .iter()
            .any(|e| e.message.contains("`blk.3.attn_gate.weight`, which the base model")),
        "{:?}",
        v.errors
    );
}

// ---------------------------------------------------------------------------------------------
// Gemma 4: per-layer head dims, KV-shared layers, per-layer inputs
// ---------------------------------------------------------------------------------------------

/// Gemma 4 E4B's widths (H 2560, 8 heads, 2 KV heads, head_dim 256 sliding / 512 full, MLP 10240,
/// doubled on KV-shared layers, per-layer inputs of 256) over six layers: S S S F | S F, the last
/// two KV-shared (so without k/v projections in transformers and in a fresh conversion).
const G_H: u64 = 2560;
const G_FULL: [bool; 6] = [false, false, false, true, false, true];

fn gemma4_layer(i: u64) -> (u64, bool, u64) {
    let head_dim = if G_FULL[i as usize] { 512 } else { 256 };
    let shared = i >= 4;
    (head_dim, shared, if shared { 2 * 10240 } else { 10240 })
}

fn gemma4_tensors() -> Vec<(String, [u64; 2])> {
    let mut t = vec![
        ("token_embd.weight".to_string(), [G_H, 262_144]),
        ("per_layer_model_proj.weight".to_string(), [G_H, 6 * 256]),
    ];
    for i in 0..6 {
        let (hd, shared, ffn) = gemma4_layer(i);
        t.extend([blk(i, "attn_q", [G_H, 8 * hd]), blk(i, "attn_output", [8 * hd, G_H])]);
        if !shared {
            t.extend([blk(i, "attn_k", [G_H, 2 * hd]), blk(i, "attn_v", [G_H, 2 * hd])]);
        }
        t.extend([
            blk(i, "ffn_gate", [G_H, ffn]),
            blk(i, "ffn_up", [G_H, ffn]),
            blk(i, "ffn_down", [ffn, G_H]),
        ]);
        t.extend([blk(i, "inp_gate", [G_H, 256]), blk(i, "proj", [256, G_H])]);
    }
    t
}

fn gemma4_kvs() -> Vec<(&'static str, Value)> {
    vec![
        ("block_count", Value::U32(6)),
        ("embedding_length", Value::U32(G_H as u32)),
        ("attention.head_count", Value::U32(8)),
        ("attention.head_count_kv", Value::U32(2)),
        ("attention.key_length", Value::U32(512)),
        ("attention.key_length_swa", Value::U32(256)),
        ("attention.shared_kv_layers", Value::U32(2)),
        ("embedding_length_per_layer_input", Value::U32(256)),
    ]
}

/// PEFT's modules for q/k/v/o/gate/up/down on Gemma4ForConditionalGeneration (k/v only where
/// transformers has them), plus what the caller adds.
fn gemma4_modules() -> Vec<(String, [usize; 2])> {
    let h = G_H as usize;
    let mut m = Vec::new();
    for i in 0..6 {
        let (hd, shared, ffn) = gemma4_layer(i);
        let (hd, ffn) = (hd as usize, ffn as usize);
        let p = format!("model.language_model.layers.{i}");
        m.push((format!("{p}.self_attn.q_proj"), [8 * hd, h]));
        if !shared {
            m.push((format!("{p}.self_attn.k_proj"), [2 * hd, h]));
            m.push((format!("{p}.self_attn.v_proj"), [2 * hd, h]));
        }
        m.push((format!("{p}.self_attn.o_proj"), [h, 8 * hd]));
        m.push((format!("{p}.mlp.gate_proj"), [ffn, h]));
        m.push((format!("{p}.mlp.up_proj"), [ffn, h]));
        m.push((format!("{p}.mlp.down_proj"), [h, ffn]));
    }
    m
}

fn gemma4_config_json() -> serde_json::Value {
    json!({
        "model_type": "gemma4",
        "text_config": {
            "model_type": "gemma4_text", "hidden_size": 2560, "intermediate_size": 10240,
            "num_hidden_layers": 6, "num_attention_heads": 8, "num_key_value_heads": 2,
            "head_dim": 256, "global_head_dim": 512, "vocab_size": 262144,
            "layer_types": ["sliding_attention", "sliding_attention", "sliding_attention", "full_attention",
                            "sliding_attention", "full_attention"],
            "num_kv_shared_layers": 2, "use_double_wide_mlp": true, "hidden_size_per_layer_input": 256,
            "attention_k_eq_v": false
        }
    })
}

#[test]
fn gemma4_config_json_derives_per_layer_shapes() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("config.json"), gemma4_config_json().to_string()).unwrap();
    let from_cfg = BaseModel::load(d.path()).unwrap();
    let gguf = d.path().join("g.gguf");
    write_header(&gguf, "gemma4", gemma4_kvs(), &gemma4_tensors());
    let from_gguf = BaseModel::load(&gguf).unwrap();
    assert_eq!(from_cfg.arch, "gemma4");
    let names = |b: &BaseModel| b.tensors.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&from_cfg), names(&from_gguf));
    for (name, t) in &from_cfg.tensors {
        assert_eq!(t.ne, from_gguf.tensors[name].ne, "{name}");
    }
    assert_eq!((from_cfg.shared_kv_layers, from_gguf.shared_kv_layers), (2, 2));
    // The 26B-A4B mixture of experts is refused by name.
    let mut moe = gemma4_config_json();
    moe["text_config"]["enable_moe_block"] = json!(true);
    std::fs::write(d.path().join("config.json"), moe.to_string()).unwrap();
    let err = BaseModel::load(d.path()).unwrap_err().to_string();
    assert!(err.contains("mixture-of-experts"), "{err}");
}

#[test]
fn gemma4_corpus_adapter_validates_layer_by_layer() {
    let Some(config) = corpus_config("Mar-IA-no__deamoncraft-gemma4-andy__adapter_adapter_config.json") else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let gguf = d.path().join("gemma4.gguf");
    write_header(&gguf, "gemma4", gemma4_kvs(), &gemma4_tensors());
    let a = write_peft(&d.path().join("a"), config, 16, &gemma4_modules());
    let v = validate(&Adapter::open(&a).unwrap(), &BaseModel::load(&gguf).unwrap());
    assert!(v.errors.is_empty(), "{:?}", v.errors);
    assert_eq!(v.modules.len(), gemma4_modules().len());
    assert!(v.checks.iter().any(|c| c.contains("in layers 0-5")), "{:?}", v.checks);

    // The same adapter against a base whose full layers have sliding-layer head dims: the first
    // full layer is named.
    let mut wrong = gemma4_tensors();
    for (name, ne) in &mut wrong {
        if name == "blk.3.attn_q.weight" {
            ne[1] = 8 * 256;
        }
    }
    write_header(&gguf, "gemma4", gemma4_kvs(), &wrong);
    let v = validate(&Adapter::open(&a).unwrap(), &BaseModel::load(&gguf).unwrap());
    assert!(
        v.errors.iter().any(|e| e.subject == "blk.3.attn_q.weight"),
        "{:?}",
        v.errors
    );
}

#[test]
fn gemma4_kv_shared_layers_and_the_merge_only_projection() {
    let d = tempfile::tempdir().unwrap();
    let gguf = d.path().join("gemma4.gguf");
    write_header(&gguf, "gemma4", gemma4_kvs(), &gemma4_tensors());
    // An adapter made against a checkpoint that still had k_proj on the shared layers 4 and 5,
    // plus a LoRA on the per-layer input projection.
    let mut modules = gemma4_modules();
    modules.push(("model.language_model.layers.4.self_attn.k_proj".into(), [512, 2560]));
    modules.push(("model.language_model.layers.5.self_attn.k_proj".into(), [1024, 2560]));
    modules.push((
        "model.language_model.per_layer_model_projection".into(),
        [6 * 256, 2560],
    ));
    let cfg = json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8});
    let a = write_peft(&d.path().join("a"), cfg, 4, &modules);
    let v = validate(&Adapter::open(&a).unwrap(), &BaseModel::load(&gguf).unwrap());
    assert!(v.errors.is_empty(), "{:?}", v.errors);
    assert_eq!(v.modules.len(), gemma4_modules().len() + 1);
    assert!(
        v.notices.iter().any(|n| n.contains("k_proj/v_proj LoRA of layers 4-5")),
        "{:?}",
        v.notices
    );
    assert!(
        v.notices.iter().any(|n| n.contains("can only be merged")),
        "{:?}",
        v.notices
    );
    // convert refuses the projection and says to merge.
    convert(&a, &gguf, &d.path().join("x.gguf"), &[])
        .failure()
        .stderr(predicates::str::contains("per_layer_model_proj").and(predicates::str::contains("ollama-tools merge")));
    assert!(!d.path().join("x.gguf").exists());
}

// ---------------------------------------------------------------------------------------------
// Ministral 3 and the other dense families
// ---------------------------------------------------------------------------------------------

#[test]
fn ministral3_corpus_adapter_validates_against_mistral3() {
    let Some(config) = corpus_config(
        "David-Barnes-Data-Imaginations__cookbook-beancount-llm__outputs_checkpoint-180_adapter_config.json",
    ) else {
        return;
    };
    // Ministral-3-3B: H 3072, 32 heads of 128, 8 KV heads, MLP 9216, tied; two layers here.
    let d = tempfile::tempdir().unwrap();
    let gguf = d.path().join("m.gguf");
    let mut tensors = vec![("token_embd.weight".to_string(), [3072, 131_072])];
    let mut modules = Vec::new();
    for i in 0..2u64 {
        tensors.extend([
            blk(i, "attn_q", [3072, 4096]),
            blk(i, "attn_k", [3072, 1024]),
            blk(i, "attn_v", [3072, 1024]),
            blk(i, "attn_output", [4096, 3072]),
            blk(i, "ffn_gate", [3072, 9216]),
            blk(i, "ffn_up", [3072, 9216]),
            blk(i, "ffn_down", [9216, 3072]),
        ]);
        let p = format!("model.language_model.layers.{i}");
        for (m, shape) in [
            ("self_attn.q_proj", [4096, 3072]),
            ("self_attn.k_proj", [1024, 3072]),
            ("self_attn.v_proj", [1024, 3072]),
            ("self_attn.o_proj", [3072, 4096]),
            ("mlp.gate_proj", [9216, 3072]),
            ("mlp.up_proj", [9216, 3072]),
            ("mlp.down_proj", [3072, 9216]),
        ] {
            modules.push((format!("{p}.{m}"), shape));
        }
    }
    write_header(
        &gguf,
        "mistral3",
        vec![
            ("block_count", Value::U32(2)),
            ("embedding_length", Value::U32(3072)),
            ("attention.head_count", Value::U32(32)),
            ("attention.head_count_kv", Value::U32(8)),
        ],
        &tensors,
    );
    // The plain target list also wrapped the Pixtral vision tower's attention.
    modules.push((
        "model.vision_tower.transformer.layers.0.attention.q_proj".into(),
        [1024, 1024],
    ));
    let a = write_peft(&d.path().join("a"), config, 16, &modules);
    let v = validate(&Adapter::open(&a).unwrap(), &BaseModel::load(&gguf).unwrap());
    assert!(v.errors.is_empty(), "{:?}", v.errors);
    assert_eq!(v.modules.len(), 14);
    assert!(
        v.warnings.iter().any(|w| w.message.contains("model.vision_tower")),
        "{:?}",
        v.warnings
    );
}

#[test]
fn dense_families_by_model_type() {
    let d = tempfile::tempdir().unwrap();
    let load = |cfg: serde_json::Value| {
        std::fs::write(d.path().join("config.json"), cfg.to_string()).unwrap();
        BaseModel::load(d.path())
    };
    let dims = json!({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                      "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100});
    let with = |mt: &str| {
        let mut c = dims.clone();
        c["model_type"] = json!(mt);
        c
    };
    for (model_type, arch) in [
        ("smollm3", "smollm3"),
        ("olmo2", "olmo2"),
        ("olmo3", "olmo2"),
        ("granite", "granite"),
    ] {
        assert_eq!(load(with(model_type)).unwrap().arch, arch, "{model_type}");
    }
    // Mistral Small 3.1's wrapper says mistral3, its text_config plain mistral: the GGUF is mistral3.
    let wrapped = json!({"model_type": "mistral3", "text_config": with("mistral")});
    assert_eq!(load(wrapped).unwrap().arch, "mistral3");
    // A LLaVA-style wrapper of a Llama keeps the decoder's own type.
    assert_eq!(
        load(json!({"model_type": "llava", "text_config": with("llama")}))
            .unwrap()
            .arch,
        "llama"
    );
}

#[test]
fn gemma4_per_layer_token_embedding_lora_is_refused_with_its_reason() {
    let d = tempfile::tempdir().unwrap();
    let gguf = d.path().join("gemma4.gguf");
    write_header(&gguf, "gemma4", gemma4_kvs(), &gemma4_tensors());
    let modules = vec![(
        "model.language_model.embed_tokens_per_layer".to_string(),
        [6 * 256, 262_144],
    )];
    let a = write_peft(
        &d.path().join("a"),
        json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8}),
        4,
        &modules,
    );
    let v = validate(&Adapter::open(&a).unwrap(), &BaseModel::load(&gguf).unwrap());
    assert!(
        v.errors
            .iter()
            .any(|e| e.message.contains("per-layer token embeddings")),
        "{:?}",
        v.errors
    );
}

// ---------------------------------------------------------------------------------------------
// Granite 4 dense: the shared MLP's fused input_linear splits into ffn_gate and ffn_up
// ---------------------------------------------------------------------------------------------

/// granite-4.0-micro's config.json (H 2560, 40 heads, 8 KV heads, MLP 8192), two layers here.
fn granite4_config(layer_types: serde_json::Value, experts: u64) -> serde_json::Value {
    json!({
        "architectures": ["GraniteMoeHybridForCausalLM"], "model_type": "granitemoehybrid",
        "hidden_size": 2560, "intermediate_size": 8192, "shared_intermediate_size": 8192,
        "num_hidden_layers": 2, "num_attention_heads": 40, "num_key_value_heads": 8,
        "vocab_size": 100352, "tie_word_embeddings": true, "layer_types": layer_types,
        "num_local_experts": experts, "position_embedding_type": "rope"
    })
}

fn granite4_modules() -> Vec<(String, [usize; 2])> {
    let mut m = Vec::new();
    for i in 0..2 {
        let p = format!("model.layers.{i}");
        m.push((format!("{p}.self_attn.q_proj"), [2560, 2560]));
        m.push((format!("{p}.self_attn.k_proj"), [512, 2560]));
        m.push((format!("{p}.shared_mlp.input_linear"), [2 * 8192, 2560]));
        m.push((format!("{p}.shared_mlp.output_linear"), [2560, 8192]));
    }
    m
}

#[test]
fn granite4_dense_config_maps_the_shared_mlp_to_gate_up_and_down() {
    let d = tempfile::tempdir().unwrap();
    let cfg = granite4_config(json!(["attention", "attention"]), 0);
    std::fs::write(d.path().join("config.json"), cfg.to_string()).unwrap();
    let base = BaseModel::load(d.path()).unwrap();
    assert_eq!(base.arch, "granite");
    assert_eq!(base.tensors["blk.1.ffn_gate.weight"].ne, vec![2560, 8192]);
    let a = write_peft(
        &d.path().join("a"),
        json!({"peft_type": "LORA", "r": 8, "lora_alpha": 16}),
        8,
        &granite4_modules(),
    );
    let v = validate(&Adapter::open(&a).unwrap(), &base);
    assert!(v.errors.is_empty(), "{:?}", v.errors);
    // input_linear becomes two pairs per layer: 4 modules, 5 pairs.
    assert_eq!(v.modules.len(), 10);
    let up = v.modules.iter().find(|t| t.tensor == "blk.0.ffn_up.weight").unwrap();
    assert_eq!((up.module.out_features, up.b_row_offset), (8192, 8192));

    // The GGUF adapter holds both halves, each [r, 8192], sharing lora_A.
    let gguf = d.path().join("g.gguf");
    let tensors: Vec<(String, [u64; 2])> = base
        .tensors
        .iter()
        .map(|(n, t)| (n.clone(), [t.ne[0], t.ne[1]]))
        .collect();
    write_header(
        &gguf,
        "granite",
        vec![
            ("block_count", Value::U32(2)),
            ("attention.head_count", Value::U32(40)),
            ("attention.head_count_kv", Value::U32(8)),
        ],
        &tensors,
    );
    let out = d.path().join("out.gguf");
    convert(&a, &gguf, &out, &[]).success();
    let h = gguf::read_header(&out).unwrap();
    let ne = |n: &str| h.tensors.iter().find(|t| t.name == n).map(|t| t.ne.clone());
    assert_eq!(ne("blk.0.ffn_gate.weight.lora_b"), Some(vec![8, 8192]));
    assert_eq!(ne("blk.0.ffn_up.weight.lora_b"), Some(vec![8, 8192]));
    assert_eq!(ne("blk.0.ffn_up.weight.lora_a"), Some(vec![2560, 8]));
    assert_eq!(ne("blk.1.ffn_down.weight.lora_b"), Some(vec![8, 2560]));
}

#[test]
fn granite4_hybrid_moe_and_mismatched_mlp_are_refused_with_the_reason() {
    let d = tempfile::tempdir().unwrap();
    let load = |cfg: serde_json::Value| {
        std::fs::write(d.path().join("config.json"), cfg.to_string()).unwrap();
        BaseModel::load(d.path()).unwrap_err().to_string()
    };
    assert!(load(granite4_config(json!(["mamba", "attention"]), 0)).contains("Mamba-2"));
    assert!(load(granite4_config(json!(["attention", "attention"]), 64)).contains("experts"));
    let mut cfg = granite4_config(json!(["attention", "attention"]), 0);
    cfg["shared_intermediate_size"] = json!(4096);
    assert!(load(cfg).contains("shared_intermediate_size"));
    // A LoRA trained on granite-4.0-micro does not fit a Granite 3 base with another MLP width.
    let gguf = d.path().join("g3.gguf");
    let tensors = vec![
        blk(0, "ffn_gate", [2560, 4096]),
        blk(0, "ffn_up", [2560, 4096]),
        blk(0, "ffn_down", [4096, 2560]),
    ];
    let kvs = vec![("block_count", Value::U32(1)), ("attention.head_count", Value::U32(40))];
    write_header(&gguf, "granite", kvs, &tensors);
    let modules = vec![("model.layers.0.shared_mlp.input_linear".to_string(), [2 * 8192, 2560])];
    let a = write_peft(
        &d.path().join("a"),
        json!({"peft_type": "LORA", "r": 8, "lora_alpha": 16}),
        8,
        &modules,
    );
    let v = validate(&Adapter::open(&a).unwrap(), &BaseModel::load(&gguf).unwrap());
    assert!(
        v.errors.iter().any(|e| e.subject == "blk.0.ffn_gate.weight"),
        "{:?}",
        v.errors
    );
}

// ---------------------------------------------------------------------------------------------
// Mixtures of experts: config.json derivation, per-expert and fused-parameter adapters
// ---------------------------------------------------------------------------------------------

/// Qwen3-30B-A3B's widths (H 2048, 32 heads of 128, 4 KV heads, 128 experts of 768), two layers.
fn qwen3moe_config() -> serde_json::Value {
    json!({
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
        "hidden_size": 2048, "intermediate_size": 6144, "moe_intermediate_size": 768,
        "num_experts": 128, "num_experts_per_tok": 8, "num_hidden_layers": 2,
        "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
        "vocab_size": 151936, "tie_word_embeddings": false, "decoder_sparse_step": 1, "mlp_only_layers": []
    })
}

#[test]
fn qwen3moe_config_json_derives_the_stacked_expert_tensors() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("config.json"), qwen3moe_config().to_string()).unwrap();
    let base = BaseModel::load(d.path()).unwrap();
    assert_eq!(base.arch, "qwen3moe");
    assert_eq!(base.tensors["blk.1.ffn_gate_exps.weight"].ne, vec![2048, 768, 128]);
    assert_eq!(base.tensors["blk.1.ffn_down_exps.weight"].ne, vec![768, 2048, 128]);
    assert_eq!(base.tensors["blk.0.ffn_gate_inp.weight"].ne, vec![2048, 128]);
    assert!(
        !base.tensors.contains_key("blk.0.ffn_gate.weight"),
        "a sparse layer has no dense MLP"
    );
    // Mixtral: arch llama with 8 experts of intermediate_size in every layer.
    let mixtral = json!({"model_type": "mixtral", "hidden_size": 4096, "intermediate_size": 14336,
        "num_local_experts": 8, "num_hidden_layers": 1, "num_attention_heads": 32, "num_key_value_heads": 8,
        "vocab_size": 32000});
    std::fs::write(d.path().join("config.json"), mixtral.to_string()).unwrap();
    let base = BaseModel::load(d.path()).unwrap();
    assert_eq!(
        (base.arch.as_str(), base.tensors["blk.0.ffn_up_exps.weight"].ne.clone()),
        ("llama", vec![4096, 14336, 8])
    );
}

#[test]
fn expert_adapters_validate_per_expert_and_refuse_another_expert_count() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("config.json"), qwen3moe_config().to_string()).unwrap();
    let base = BaseModel::load(d.path()).unwrap();
    // transformers v4 style: per-expert modules, here experts 0-2 of layer 1 only.
    let modules: Vec<(String, [usize; 2])> = (0..3)
        .map(|e| (format!("model.layers.1.mlp.experts.{e}.down_proj"), [2048, 768]))
        .collect();
    let a = write_peft(
        &d.path().join("a"),
        json!({"peft_type": "LORA", "r": 8, "lora_alpha": 16}),
        8,
        &modules,
    );
    let v = validate(&Adapter::open(&a).unwrap(), &base);
    assert!(v.errors.is_empty(), "{:?}", v.errors);
    assert!(
        v.checks
            .iter()
            .any(|c| c.contains("experts: 3 of the base's 128 per layer adapted (0-2), ranks {8}")),
        "{:?}",
        v.checks
    );
    // Expert 130 does not exist.
    let modules = vec![("model.layers.1.mlp.experts.130.down_proj".to_string(), [2048, 768])];
    let a = write_peft(
        &d.path().join("b"),
        json!({"peft_type": "LORA", "r": 8, "lora_alpha": 16}),
        8,
        &modules,
    );
    let v = validate(&Adapter::open(&a).unwrap(), &base);
    assert!(
        v.errors
            .iter()
            .any(|e| e.message.contains("adapts expert 130") && e.message.contains("holds 128 experts")),
        "{:?}",
        v.errors
    );
    // transformers v5: target_parameters on the fused experts; gate_up_proj is the inner wrapper.
    let cfg = json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8,
        "target_parameters": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]});
    // PEFT stacks the experts' ranks: lora_A [4 * n, in], lora_B [out, 4 * n], as a rank-4n pair.
    let fused = vec![
        ("model.layers.0.mlp.experts.base_layer".to_string(), [2 * 768, 2048]),
        ("model.layers.0.mlp.experts".to_string(), [2048, 768]),
    ];
    let write_fused = |dir: &str, n: usize| write_peft(&d.path().join(dir), cfg.clone(), 4 * n, &fused);
    let v = validate(&Adapter::open(&write_fused("f", 128)).unwrap(), &base);
    assert!(v.errors.is_empty(), "{:?}", v.errors);
    assert!(
        v.checks
            .iter()
            .any(|c| c.contains("experts: 128 of the base's 128 per layer adapted (0-127), ranks {4}")),
        "{:?}",
        v.checks
    );
    let names: Vec<&str> = v.modules.iter().map(|t| t.tensor.as_str()).collect();
    assert_eq!(
        names,
        [
            "blk.0.ffn_down_exps.weight",
            "blk.0.ffn_gate_exps.weight",
            "blk.0.ffn_up_exps.weight"
        ]
    );
    let v = validate(&Adapter::open(&write_fused("g", 64)).unwrap(), &base);
    assert!(
        v.errors
            .iter()
            .any(|e| e.message.contains("stacks 64 experts") && e.message.contains("holds 128")),
        "{:?}",
        v.errors
    );
}

/// Llama 4 Maverick's layout at small widths: experts and a shared expert of `intermediate_size`
/// in every second layer, dense MLPs of `intermediate_size_mlp` between.
fn llama4_config() -> serde_json::Value {
    json!({
        "architectures": ["Llama4ForConditionalGeneration"], "model_type": "llama4",
        "text_config": {"model_type": "llama4_text", "hidden_size": 192, "intermediate_size": 128,
            "intermediate_size_mlp": 512, "num_local_experts": 16, "num_experts_per_tok": 1,
            "interleave_moe_layer_step": 2, "num_hidden_layers": 4, "num_attention_heads": 8,
            "num_key_value_heads": 2, "head_dim": 32, "vocab_size": 1024},
        "tie_word_embeddings": false
    })
}

#[test]
fn llama4_config_json_derives_interleaved_sparse_layers_with_a_shared_expert() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("config.json"), llama4_config().to_string()).unwrap();
    let base = BaseModel::load(d.path()).unwrap();
    assert_eq!(base.arch, "llama4");
    let ne = |name: &str| base.tensors.get(name).map(|t| t.ne.clone());
    assert_eq!(ne("blk.0.ffn_gate.weight"), Some(vec![192, 512]), "layer 0 is dense");
    assert_eq!(ne("blk.0.ffn_gate_exps.weight"), None);
    assert_eq!(ne("blk.1.ffn_gate_exps.weight"), Some(vec![192, 128, 16]));
    assert_eq!(ne("blk.1.ffn_down_exps.weight"), Some(vec![128, 192, 16]));
    assert_eq!(ne("blk.1.ffn_up_shexp.weight"), Some(vec![192, 128]));
    assert_eq!(ne("blk.1.ffn_gate_inp.weight"), Some(vec![192, 16]));
    assert_eq!(
        ne("blk.1.ffn_gate_inp_shexp.weight"),
        None,
        "Llama 4's shared expert has no gate"
    );
    assert_eq!(ne("blk.1.ffn_gate.weight"), None);
}

#[test]
fn llama4_fused_experts_take_peft_swapped_in_and_out_features() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("config.json"), llama4_config().to_string()).unwrap();
    let base = BaseModel::load(d.path()).unwrap();
    // Llama4TextExperts keeps [n, in, out] without `is_transposed`: PEFT's in_features is the
    // parameter's last dimension, so gate_up's pair is [out 192, in 2 * 128] per PEFT.
    let cfg = json!({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["router", "up_proj"],
        "target_parameters": ["feed_forward.experts.gate_up_proj", "feed_forward.experts.down_proj"]});
    let m = |path: &str, shape: [usize; 2]| (format!("language_model.model.layers.{path}"), shape);
    let fused = [
        m("1.feed_forward.experts.base_layer", [192, 2 * 128]),
        m("1.feed_forward.experts", [128, 192]),
    ];
    let plain = [
        m("1.feed_forward.router", [16, 192]),
        m("1.feed_forward.shared_expert.up_proj", [128, 192]),
        m("0.feed_forward.up_proj", [512, 192]),
    ];
    let a = d.path().join("a");
    write_peft(&a, cfg.clone(), 4 * 16, &fused);
    let v = validate(&Adapter::open(&a).unwrap(), &base);
    assert!(v.errors.is_empty(), "{:?}", v.errors);
    let names: Vec<&str> = v.modules.iter().map(|t| t.tensor.as_str()).collect();
    assert_eq!(
        names,
        [
            "blk.1.ffn_down_exps.weight",
            "blk.1.ffn_gate_exps.weight",
            "blk.1.ffn_up_exps.weight"
        ]
    );
    // The real orientation: ggml [in, out] of each expert matrix.
    let dims: Vec<_> = v
        .modules
        .iter()
        .map(|t| (t.swapped, t.module.in_features, t.module.out_features))
        .collect();
    assert_eq!(dims, [(true, 128, 192), (true, 192, 128), (true, 192, 128)]);
    // PEFT 0.18 took the middle dimension as the input: the usual orientation for Llama 4.
    let old = d.path().join("old");
    write_peft(
        &old,
        cfg.clone(),
        4 * 16,
        &[m("1.feed_forward.experts.base_layer", [256, 192])],
    );
    let v = validate(&Adapter::open(&old).unwrap(), &base);
    assert!(v.errors.is_empty(), "{:?}", v.errors);
    assert!(v.modules.iter().all(|t| !t.swapped && t.module.in_features == 192));
    let b = d.path().join("b");
    write_peft(&b, cfg, 4, &plain);
    let v = validate(&Adapter::open(&b).unwrap(), &base);
    assert!(v.errors.is_empty(), "{:?}", v.errors);
    let names: Vec<&str> = v.modules.iter().map(|t| t.tensor.as_str()).collect();
    assert_eq!(
        names,
        [
            "blk.0.ffn_up.weight",
            "blk.1.ffn_gate_inp.weight",
            "blk.1.ffn_up_shexp.weight"
        ]
    );
}
