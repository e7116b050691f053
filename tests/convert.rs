//! End-to-end conversions through the built binary. Each test recomputes the adapter's effect two ways,
//! independently of the converter: PEFT's `scale * B @ A` from the safetensors values (with the scale
//! rules written out here), and llama.cpp's `alpha / rank * B' @ A'` from the GGUF file.

mod common;
use common::*;
use serde_json::json;
use std::path::Path;

const PROJ: [(&str, &str, &str); 7] = [
    ("self_attn", "q_proj", "attn_q"),
    ("self_attn", "k_proj", "attn_k"),
    ("self_attn", "v_proj", "attn_v"),
    ("self_attn", "o_proj", "attn_output"),
    ("mlp", "gate_proj", "ffn_gate"),
    ("mlp", "up_proj", "ffn_up"),
    ("mlp", "down_proj", "ffn_down"),
];

/// (in, out) of a module of the TINY llama.
fn dims(module: &str) -> (usize, usize) {
    let d = TINY;
    let (h, q, kv, f) = (
        d.hidden as usize,
        (d.heads * d.head_dim) as usize,
        (d.kv_heads * d.head_dim) as usize,
        d.ffn as usize,
    );
    match module {
        "q_proj" => (h, q),
        "k_proj" | "v_proj" => (h, kv),
        "o_proj" => (q, h),
        "gate_proj" | "up_proj" => (h, f),
        "down_proj" => (f, h),
        _ => unreachable!(),
    }
}

struct Module {
    layer: usize,
    module: &'static str,
    a: Vec<f32>,
    b: Vec<f32>,
    r: usize,
}

/// An adapter on every projection of every layer, with the rank given per module by `rank_of`.
fn make_adapter(
    dir: &Path,
    seed: u64,
    config: serde_json::Value,
    rank_of: impl Fn(usize, &str) -> usize,
    suffix: &str,
) -> Vec<Module> {
    let mut rng = Rng::new(seed);
    let mut mods = Vec::new();
    let mut tensors = Vec::new();
    for layer in 0..TINY.layers as usize {
        for (block, module, _) in PROJ {
            let (i, o) = dims(module);
            let r = rank_of(layer, module);
            let a = rng.vec(r * i, 0.5);
            let b = rng.vec(o * r, 0.5);
            let p = format!("base_model.model.model.layers.{layer}.{block}.{module}");
            tensors.push(t(&format!("{p}.lora_A{suffix}.weight"), &[r, i], a.clone()));
            tensors.push(t(&format!("{p}.lora_B{suffix}.weight"), &[o, r], b.clone()));
            mods.push(Module { layer, module, a, b, r });
        }
    }
    write_adapter(dir, &config, &tensors);
    mods
}

/// llama.cpp's row order for q/k, written from numpy's `reshape(n_head, 2, hd/2, cols).swapaxes(1, 2)`.
fn llama_rows(delta: &[f64], heads: usize, cols: usize) -> Vec<f64> {
    let rows = delta.len() / cols;
    let hd = rows / heads;
    let mut out = vec![0.0; delta.len()];
    for h in 0..heads {
        for two in 0..2 {
            for j in 0..hd / 2 {
                let src = h * hd + two * (hd / 2) + j;
                let dst = h * hd + j * 2 + two;
                out[dst * cols..][..cols].copy_from_slice(&delta[src * cols..][..cols]);
            }
        }
    }
    out
}

/// PEFT's delta of one module, in llama.cpp's row order.
fn peft_delta(m: &Module, scale: f64) -> Vec<f64> {
    let (i, o) = dims(m.module);
    let d: Vec<f64> = matmul(&m.b, &m.a, o, m.r, i).into_iter().map(|x| x * scale).collect();
    match m.module {
        "q_proj" => llama_rows(&d, TINY.heads as usize, i),
        "k_proj" => llama_rows(&d, TINY.kv_heads as usize, i),
        _ => d,
    }
}

/// llama.cpp's delta for a base tensor: alpha / rank * lora_b @ lora_a, rank from lora_b's shape.
fn gguf_delta(file: &Path, base_tensor: &str) -> Vec<f64> {
    let (h, t) = read_gguf(file);
    let alpha = h.get("adapter.lora.alpha").unwrap().as_f64().unwrap();
    let a = &t[&format!("{base_tensor}.lora_a")];
    let b = &t[&format!("{base_tensor}.lora_b")];
    let rank = b.shape[1];
    assert_eq!(a.shape[0], rank, "lora_a rows must equal lora_b columns");
    matmul(&b.values, &a.values, b.shape[0], rank, a.shape[1])
        .into_iter()
        .map(|x| x * alpha / rank as f64)
        .collect()
}

fn convert(args: &[&str]) -> assert_cmd::assert::Assert {
    bin().arg("convert").args(args).arg("--quiet").assert()
}

fn base(dir: &Path) -> String {
    let p = dir.join("base.gguf");
    write_base_gguf(&p, "llama", TINY);
    p.to_str().unwrap().to_string()
}

fn lora_config(extra: serde_json::Value) -> serde_json::Value {
    let mut c = json!({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "base_model_name_or_path": "meta-llama/Llama-3.2-1B", "bias": "none", "use_rslora": false
    });
    c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    c
}

fn assert_matches(out: &Path, mods: &[(f64, &Module)], tol: f64) {
    // Sum the PEFT deltas per base tensor (several when stacked).
    let mut want: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for (scale, m) in mods {
        let stem = PROJ.iter().find(|p| p.1 == m.module).unwrap().2;
        let d = peft_delta(m, *scale);
        let e = want
            .entry(format!("blk.{}.{stem}.weight", m.layer))
            .or_insert_with(|| vec![0.0; d.len()]);
        e.iter_mut().zip(d).for_each(|(x, y)| *x += y);
    }
    for (name, w) in want {
        let got = gguf_delta(out, &name);
        let err = rel_err(&got, &w);
        assert!(err < tol, "{name}: relative error {err:.3e}");
    }
}

#[test]
fn plain_llama_with_gqa_on_all_projections() {
    let dir = tempfile::tempdir().unwrap();
    let mods = make_adapter(&dir.path().join("a"), 1, lora_config(json!({})), |_, _| 4, "");
    let out = dir.path().join("out.gguf");
    convert(&[
        dir.path().join("a").to_str().unwrap(),
        "--base",
        &base(dir.path()),
        "-o",
        out.to_str().unwrap(),
        "--outtype",
        "f32",
    ])
    .success();
    let scaled: Vec<(f64, &Module)> = mods.iter().map(|m| (8.0 / 4.0, m)).collect();
    assert_matches(&out, &scaled, 1e-6);
    let (h, t) = read_gguf(&out);
    assert_eq!(h.get_str("general.architecture"), Some("llama"));
    assert_eq!(h.get_str("general.type"), Some("adapter"));
    assert_eq!(h.get_str("adapter.type"), Some("lora"));
    assert_eq!(
        h.get("adapter.lora.alpha").unwrap().as_f64(),
        Some(8.0),
        "plain alpha/r needs no folding"
    );
    assert_eq!(
        h.get_str("general.base_model.0.repo_url"),
        Some("https://huggingface.co/meta-llama/Llama-3.2-1B")
    );
    // lora_A is PEFT's A unchanged, and v's lora_B is PEFT's B unchanged (no permutation on v).
    assert_eq!(t["blk.1.attn_q.weight.lora_a"].values, mods[7].a);
    assert_eq!(t["blk.0.attn_v.weight.lora_b"].values, mods[2].b);
    assert_ne!(
        t["blk.0.attn_q.weight.lora_b"].values, mods[0].b,
        "q's lora_B must be permuted for llama"
    );
    assert_eq!(h.data_offset % 32, 0);
    assert!(h.tensors.iter().all(|t| t.offset % 32 == 0));
}

#[test]
fn rslora_rank_pattern_and_alpha_pattern() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = lora_config(json!({
        "r": 8, "lora_alpha": 16, "use_rslora": true,
        "rank_pattern": {"model.layers.0.self_attn.q_proj": 2, "down_proj": 4},
        "alpha_pattern": {"v_proj": 3, "layers.1.mlp.up_proj": 40}
    }));
    let rank_of = |layer: usize, m: &str| match (layer, m) {
        (0, "q_proj") => 2,
        (_, "down_proj") => 4,
        _ => 8,
    };
    let mods = make_adapter(&dir.path().join("a"), 2, cfg, rank_of, "");
    let out = dir.path().join("out.gguf");
    convert(&[
        dir.path().join("a").to_str().unwrap(),
        "--base",
        &base(dir.path()),
        "-o",
        out.to_str().unwrap(),
        "--outtype",
        "f32",
    ])
    .success();
    // PEFT: alpha / sqrt(r), with r and alpha from the first matching pattern.
    let scaled: Vec<(f64, &Module)> = mods
        .iter()
        .map(|m| {
            let alpha = match (m.layer, m.module) {
                (_, "v_proj") => 3.0,
                (1, "up_proj") => 40.0,
                _ => 16.0,
            };
            (alpha / (m.r as f64).sqrt(), m)
        })
        .collect();
    assert_matches(&out, &scaled, 1e-6);
}

#[test]
fn stacked_adapters_with_weights_and_scale() {
    let dir = tempfile::tempdir().unwrap();
    let m1 = make_adapter(
        &dir.path().join("a1"),
        3,
        lora_config(json!({"r": 4, "lora_alpha": 8})),
        |_, _| 4,
        "",
    );
    let m2 = make_adapter(
        &dir.path().join("a2"),
        4,
        lora_config(json!({"r": 2, "lora_alpha": 16, "use_rslora": true})),
        |_, _| 2,
        ".default",
    );
    let out = dir.path().join("out.gguf");
    let a1 = format!("{}:1.0", dir.path().join("a1").display());
    let a2 = format!("{}:0.5", dir.path().join("a2").display());
    convert(&[
        &a1,
        &a2,
        "--scale",
        "0.8",
        "--base",
        &base(dir.path()),
        "-o",
        out.to_str().unwrap(),
        "--outtype",
        "f32",
    ])
    .success();
    let mut scaled: Vec<(f64, &Module)> = m1.iter().map(|m| (0.8 * 1.0 * 8.0 / 4.0, m)).collect();
    scaled.extend(m2.iter().map(|m| (0.8 * 0.5 * 16.0 / 2f64.sqrt(), m)));
    assert_matches(&out, &scaled, 1e-6);
    let (_, t) = read_gguf(&out);
    assert_eq!(
        t["blk.0.ffn_down.weight.lora_b"].shape,
        vec![32, 6],
        "ranks 4 + 2 concatenated"
    );
}

#[test]
fn embedding_lora_is_transposed_for_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let (v, h, r) = (TINY.vocab as usize, TINY.hidden as usize, 3);
    let mut rng = Rng::new(5);
    let a = rng.vec(r * v, 0.5);
    let b = rng.vec(h * r, 0.5);
    let cfg = lora_config(json!({"r": 3, "lora_alpha": 6, "target_modules": ["embed_tokens"]}));
    write_adapter(
        &dir.path().join("a"),
        &cfg,
        &[
            t(
                "base_model.model.model.embed_tokens.lora_embedding_A",
                &[r, v],
                a.clone(),
            ),
            t(
                "base_model.model.model.embed_tokens.lora_embedding_B",
                &[h, r],
                b.clone(),
            ),
        ],
    );
    let out = dir.path().join("out.gguf");
    convert(&[
        dir.path().join("a").to_str().unwrap(),
        "--base",
        &base(dir.path()),
        "-o",
        out.to_str().unwrap(),
        "--outtype",
        "f32",
    ])
    .success();
    let (hd, t) = read_gguf(&out);
    let la = &t["token_embd.weight.lora_a"];
    let lb = &t["token_embd.weight.lora_b"];
    // llama.cpp's loader: base ne[0] (hidden) == lora_b ne[1], base ne[1] (vocab) == lora_a ne[1].
    assert_eq!(la.shape, vec![v, r]);
    assert_eq!(lb.shape, vec![h, r]);
    // Embedding delta table [vocab, hidden]: PEFT `(B @ A).T * scale`; llama.cpp row t = lora_b @ lora_a[t].
    let alpha = hd.get("adapter.lora.alpha").unwrap().as_f64().unwrap();
    let mut got = vec![0f64; v * h];
    for tok in 0..v {
        for o in 0..h {
            got[tok * h + o] = (0..r)
                .map(|j| f64::from(lb.values[o * r + j]) * f64::from(la.values[tok * r + j]))
                .sum::<f64>()
                * alpha
                / r as f64;
        }
    }
    let ba = matmul(&b, &a, h, r, v);
    let want: Vec<f64> = (0..v * h).map(|i| ba[(i % h) * v + i / h] * 2.0).collect();
    assert!(rel_err(&got, &want) < 1e-6);
}

#[test]
fn default_adapter_name_and_config_json_base_give_identical_files() {
    let dir = tempfile::tempdir().unwrap();
    make_adapter(&dir.path().join("plain"), 6, lora_config(json!({})), |_, _| 4, "");
    make_adapter(
        &dir.path().join("named"),
        6,
        lora_config(json!({})),
        |_, _| 4,
        ".default",
    );
    let hf = dir.path().join("hf");
    std::fs::create_dir(&hf).unwrap();
    std::fs::write(
        hf.join("config.json"),
        json!({"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "head_dim": 8, "intermediate_size": 48, "vocab_size": 40,
               "tie_word_embeddings": false})
        .to_string(),
    )
    .unwrap();
    let o1 = dir.path().join("o1.gguf");
    let o2 = dir.path().join("o2.gguf");
    convert(&[
        dir.path().join("plain").to_str().unwrap(),
        "--base",
        &base(dir.path()),
        "-o",
        o1.to_str().unwrap(),
        "--name",
        "x",
    ])
    .success();
    convert(&[
        dir.path().join("named").to_str().unwrap(),
        "--base",
        hf.to_str().unwrap(),
        "-o",
        o2.to_str().unwrap(),
        "--name",
        "x",
    ])
    .success();
    assert_eq!(std::fs::read(&o1).unwrap(), std::fs::read(&o2).unwrap());
}

/// Writes a one-module adapter whose lora_B holds `b_values` (stored as `dtype`).
fn single_module(dir: &Path, dtype: safetensors::Dtype, b_values: Vec<f32>) {
    let (i, o) = dims("v_proj");
    let mut a = t(
        "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight",
        &[2, i],
        Rng::new(7).vec(2 * i, 1.0),
    );
    let mut b = t(
        "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight",
        &[o, 2],
        b_values,
    );
    a.dtype = dtype;
    b.dtype = dtype;
    write_adapter(
        dir,
        &lora_config(json!({"r": 2, "lora_alpha": 2, "target_modules": ["v_proj"]})),
        &[a, b],
    );
}

#[test]
fn output_types_auto_f16_bf16_f32() {
    let dir = tempfile::tempdir().unwrap();
    let (_, o) = dims("v_proj");
    let b = Rng::new(8).vec(o * 2, 1.0);
    single_module(&dir.path().join("bf"), safetensors::Dtype::BF16, b.clone());
    let base = base(dir.path());
    let run = |outtype: &str, name: &str| {
        let out = dir.path().join(name);
        convert(&[
            dir.path().join("bf").to_str().unwrap(),
            "--base",
            &base,
            "-o",
            out.to_str().unwrap(),
            "--outtype",
            outtype,
        ])
        .success();
        read_gguf(&out).1
    };
    // auto -> f16, and every bf16 value in f16's range is exact in f16 (more mantissa bits).
    let t = run("auto", "auto.gguf");
    let lb = &t["blk.0.attn_v.weight.lora_b"];
    assert_eq!(lb.ty, ollama_tools::formats::gguf::GgmlType::F16);
    let bf: Vec<f32> = b.iter().map(|v| half::bf16::from_f32(*v).to_f32()).collect();
    assert_eq!(lb.values, bf);
    assert_eq!(
        run("bf16", "bf16.gguf")["blk.0.attn_v.weight.lora_b"].ty,
        ollama_tools::formats::gguf::GgmlType::BF16
    );
    assert_eq!(run("f32", "f32.gguf")["blk.0.attn_v.weight.lora_b"].values, bf);
}

#[test]
fn values_beyond_f16_go_to_f32_in_auto_and_are_refused_in_f16() {
    let dir = tempfile::tempdir().unwrap();
    let (_, o) = dims("v_proj");
    let mut b = Rng::new(9).vec(o * 2, 1.0);
    b[3] = 1.0e6;
    single_module(&dir.path().join("a"), safetensors::Dtype::F32, b);
    let base = base(dir.path());
    let out = dir.path().join("auto.gguf");
    convert(&[
        dir.path().join("a").to_str().unwrap(),
        "--base",
        &base,
        "-o",
        out.to_str().unwrap(),
    ])
    .success()
    .stderr(predicates::str::contains("written as f32"));
    let (_, t) = read_gguf(&out);
    assert_eq!(
        t["blk.0.attn_v.weight.lora_b"].ty,
        ollama_tools::formats::gguf::GgmlType::F32
    );
    assert_eq!(
        t["blk.0.attn_v.weight.lora_a"].ty,
        ollama_tools::formats::gguf::GgmlType::F16
    );
    let out = dir.path().join("f16.gguf");
    convert(&[
        dir.path().join("a").to_str().unwrap(),
        "--base",
        &base,
        "-o",
        out.to_str().unwrap(),
        "--outtype",
        "f16",
    ])
    .failure()
    .stderr(predicates::str::contains("beyond f16's range"));
    assert!(!out.exists());
}

#[test]
fn inspect_reports_ranks_scales_and_layers_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = lora_config(json!({"r": 8, "lora_alpha": 16, "use_rslora": true, "rank_pattern": {"down_proj": 4}}));
    make_adapter(
        &dir.path().join("a"),
        10,
        cfg,
        |_, m| if m == "down_proj" { 4 } else { 8 },
        "",
    );
    let out = bin()
        .args(["inspect", "--json"])
        .arg(dir.path().join("a"))
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["peft_type"], "LORA");
    assert_eq!(v["convertible"], true);
    assert_eq!(v["layers"], json!([0, 1]));
    assert_eq!(v["tensor_count"], 28);
    let down = v["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["module"] == "down_proj")
        .unwrap();
    assert_eq!(down["rank"], 4);
    assert_eq!(down["scale"], 8.0, "16 / sqrt(4)");
    let q = v["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["module"] == "q_proj")
        .unwrap();
    assert!((q["scale"].as_f64().unwrap() - 16.0 / 8f64.sqrt()).abs() < 1e-12);
    assert_eq!(v["dtypes"], json!({"F32": 28}));
    // The adapter may be named by either of its files too.
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        let out = bin()
            .args(["inspect", "--json"])
            .arg(dir.path().join("a").join(file))
            .assert()
            .success();
        let w: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
        assert_eq!(w["modules"], v["modules"], "{file}");
    }
    // The text form says the same.
    bin()
        .arg("inspect")
        .arg(dir.path().join("a"))
        .assert()
        .success()
        .stdout(predicates::str::contains("alpha/sqrt(r) (rsLoRA)"))
        .stdout(predicates::str::contains("converts      yes"));
}

#[test]
fn phi3_fused_projections_map_without_permutation() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("phi3.gguf");
    write_base_gguf(&base, "phi3", TINY);
    let (h, q, kv, f) = (32usize, 32usize, 16usize, 48usize);
    let mut rng = Rng::new(12);
    let mut tensors = Vec::new();
    let mut expect = Vec::new();
    for (block, module, out, stem) in [
        ("self_attn", "qkv_proj", q + 2 * kv, "attn_qkv"),
        ("mlp", "gate_up_proj", 2 * f, "ffn_up"),
    ] {
        let (a, b) = (rng.vec(2 * h, 0.5), rng.vec(out * 2, 0.5));
        let p = format!("base_model.model.model.layers.1.{block}.{module}");
        tensors.push(t(&format!("{p}.lora_A.weight"), &[2, h], a.clone()));
        tensors.push(t(&format!("{p}.lora_B.weight"), &[out, 2], b.clone()));
        expect.push((stem, a, b));
    }
    write_adapter(
        &dir.path().join("a"),
        &lora_config(json!({"r": 2, "lora_alpha": 4})),
        &tensors,
    );
    let out = dir.path().join("out.gguf");
    convert(&[
        dir.path().join("a").to_str().unwrap(),
        "--base",
        base.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--outtype",
        "f32",
    ])
    .success();
    let (hd, t) = read_gguf(&out);
    assert_eq!(hd.get_str("general.architecture"), Some("phi3"));
    for (stem, a, b) in expect {
        // Fused tensors keep Hugging Face's row order (q, k, v / gate, up): PEFT's A and B unchanged.
        assert_eq!(t[&format!("blk.1.{stem}.weight.lora_a")].values, a, "{stem}");
        assert_eq!(t[&format!("blk.1.{stem}.weight.lora_b")].values, b, "{stem}");
    }
}
