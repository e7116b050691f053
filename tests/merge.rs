//! `merge` through the built binary on an F32 base: merged minus base equals PEFT's delta (recomputed
//! here from the adapter's values, with llama.cpp's Q/K row order), untouched tensors and metadata are
//! copied unchanged. Quantized bases are checked against the real llama.cpp in tests/interop.

mod common;
use common::*;
use predicates::str::contains;
use serde_json::json;

/// llama.cpp's row order for q/k: numpy `reshape(n_head, 2, hd/2, cols).swapaxes(1, 2)`.
fn llama_rows(delta: &[f64], heads: usize, cols: usize) -> Vec<f64> {
    let hd = delta.len() / cols / heads;
    let mut out = vec![0.0; delta.len()];
    for h in 0..heads {
        for two in 0..2 {
            for j in 0..hd / 2 {
                let (src, dst) = (h * hd + two * (hd / 2) + j, h * hd + j * 2 + two);
                out[dst * cols..][..cols].copy_from_slice(&delta[src * cols..][..cols]);
            }
        }
    }
    out
}

#[test]
fn merged_minus_base_is_the_peft_delta_and_the_rest_is_copied() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base.gguf");
    write_base_gguf(&base, "llama", TINY);
    // q_proj (permuted rows) and v_proj (not) on both layers, r=2, alpha=4: scale 2; --scale 0.5.
    let a = tiny_adapter(
        &d.path().join("a"),
        json!({"base_model_name_or_path": "meta-llama/Llama-3.2-1B"}),
        vec![],
    );
    let out = d.path().join("merged.gguf");
    bin()
        .args(["merge"])
        .arg(&a)
        .args(["--base", base.to_str().unwrap(), "--scale", "0.5", "-o"])
        .arg(&out)
        .assert()
        .success()
        .stdout(contains("4 tensors merged (4 F32)"));

    let (bh, bt) = read_gguf(&base);
    let (mh, mt) = read_gguf(&out);
    let adapter = ollama_tools::formats::peft::Adapter::open(&a).unwrap();
    let values = |key: &str| {
        let t = adapter.tensors.iter().find(|t| t.key == key).unwrap();
        let (mut halves, mut v) = (Vec::new(), Vec::new());
        adapter.read_f32(t, &mut halves, &mut v).unwrap();
        v
    };
    for layer in 0..2 {
        for (module, stem, out_f, heads) in [("q_proj", "attn_q", 32, Some(4)), ("v_proj", "attn_v", 16, None)] {
            let p = format!("base_model.model.model.layers.{layer}.self_attn.{module}");
            let (la, lb) = (
                values(&format!("{p}.lora_A.weight")),
                values(&format!("{p}.lora_B.weight")),
            );
            let delta: Vec<f64> = matmul(&lb, &la, out_f, 2, 32)
                .into_iter()
                .map(|x| x * 2.0 * 0.5)
                .collect();
            let delta = match heads {
                Some(h) => llama_rows(&delta, h, 32),
                None => delta,
            };
            let name = format!("blk.{layer}.{stem}.weight");
            let got: Vec<f64> = mt[&name]
                .values
                .iter()
                .zip(&bt[&name].values)
                .map(|(m, b)| f64::from(*m) - f64::from(*b))
                .collect();
            assert!(rel_err(&got, &delta) < 1e-5, "{name}: {}", rel_err(&got, &delta));
        }
    }
    // Everything else is the base's, bit for bit, and so is every KV.
    for (name, t) in &bt {
        if !(name.contains("attn_q") || name.contains("attn_v")) {
            assert_eq!(mt[name].values, t.values, "{name}");
            assert_eq!(mt[name].ty, t.ty);
        }
    }
    for (k, v) in &bh.kvs {
        assert_eq!(mh.get(k), Some(v), "{k}");
    }
    assert!(mh.get_str("ollama_tools.version").is_some());
    assert_eq!(mh.tensors.len(), bh.tensors.len());
}

#[test]
fn merge_needs_the_base_gguf_and_keeps_existing_files() {
    let d = tempfile::tempdir().unwrap();
    let a = tiny_adapter(&d.path().join("a"), json!({}), vec![]);
    let hf = d.path().join("hf");
    std::fs::create_dir(&hf).unwrap();
    std::fs::write(
        hf.join("config.json"),
        json!({"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "head_dim": 8, "intermediate_size": 48, "vocab_size": 40})
        .to_string(),
    )
    .unwrap();
    let out = d.path().join("m.gguf");
    bin()
        .arg("merge")
        .arg(&a)
        .args(["--base", hf.to_str().unwrap(), "-o"])
        .arg(&out)
        .assert()
        .failure()
        .stderr(contains("merging needs the base model's GGUF file"));
    let base = d.path().join("base.gguf");
    write_base_gguf(&base, "llama", TINY);
    std::fs::write(&out, b"keep me").unwrap();
    bin()
        .arg("merge")
        .arg(&a)
        .args(["--base", base.to_str().unwrap(), "-o"])
        .arg(&out)
        .assert()
        .failure()
        .stderr(contains("--force"));
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
}

#[test]
fn merge_from_the_model_store_by_name() {
    let d = tempfile::tempdir().unwrap();
    let a = tiny_adapter(&d.path().join("a"), json!({}), vec![]);
    let gguf = d.path().join("tiny.gguf");
    write_base_gguf(&gguf, "llama", TINY);
    let store = d.path().join("models");
    write_store(&store, "registry.ollama.ai", "library", "tiny", "latest", &gguf);
    let out = d.path().join("m.gguf");
    bin()
        .arg("merge")
        .arg(&a)
        .args(["--base", "tiny", "-o"])
        .arg(&out)
        .env("OLLAMA_HOST", NO_SERVER)
        .env("OLLAMA_MODELS", &store)
        .assert()
        .success();
    assert_eq!(read_gguf(&out).1.len(), read_gguf(&gguf).1.len());
}
