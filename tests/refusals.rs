//! Every input convert must refuse: the message names the file and tensor or field, says why, and
//! what to do; the exit code is non-zero; nothing is written and no temporary file is left behind.

mod common;
use common::*;
use predicates::str::contains;
use serde_json::json;
use std::path::Path;

fn cfg(extra: serde_json::Value) -> serde_json::Value {
    let mut c = json!({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 2, "lora_alpha": 4,
                       "target_modules": ["q_proj", "v_proj"], "bias": "none"});
    c.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    c
}

/// A valid pair on layer `layer`'s `module` (shapes of the TINY llama).
fn pair(layer: usize, module: &str, r: usize) -> Vec<T> {
    let (i, o) = match module {
        "q_proj" => (32, 32),
        "v_proj" | "k_proj" => (32, 16),
        _ => (32, 32),
    };
    let p = format!("base_model.model.model.layers.{layer}.self_attn.{module}");
    let mut rng = Rng::new(layer as u64 + 11);
    vec![
        t(&format!("{p}.lora_A.weight"), &[r, i], rng.vec(r * i, 0.3)),
        t(&format!("{p}.lora_B.weight"), &[o, r], rng.vec(o * r, 0.3)),
    ]
}

/// Runs convert on the adapter in `dir/a` against a base of `arch`, expecting failure with all of `needles`.
fn refused(dir: &Path, arch: &str, dims: Dims, needles: &[&str]) {
    let base = dir.join("base.gguf");
    write_base_gguf(&base, arch, dims);
    let out = dir.join("out.gguf");
    let mut a = bin()
        .arg("convert")
        .arg(dir.join("a"))
        .arg("--base")
        .arg(&base)
        .arg("-o")
        .arg(&out)
        .assert()
        .failure();
    for n in needles {
        a = a.stderr(contains(*n));
    }
    assert!(!out.exists(), "nothing may be written");
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

fn adapter(dir: &Path, config: serde_json::Value, tensors: Vec<T>) {
    write_adapter(&dir.join("a"), &config, &tensors);
}

/// A DoRA adapter on one q_proj: a LoRA pair and its magnitude vector.
fn dora_adapter(dir: &std::path::Path) {
    let mut ts = pair(0, "q_proj", 2);
    ts.push(t(
        "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector",
        &[32],
        vec![1.0; 32],
    ));
    adapter(dir, cfg(json!({"use_dora": true})), ts);
}

#[test]
fn dora() {
    let d = tempfile::tempdir().unwrap();
    dora_adapter(d.path());
    refused(d.path(), "llama", TINY, &["use_dora", "DoRA", "ollama-tools merge"]);
}

#[test]
fn modules_to_save_full_tensors() {
    let d = tempfile::tempdir().unwrap();
    let mut ts = pair(0, "q_proj", 2);
    ts.push(t("base_model.model.lm_head.weight", &[40, 32], vec![0.0; 40 * 32]));
    adapter(d.path(), cfg(json!({"modules_to_save": ["lm_head"]})), ts);
    refused(
        d.path(),
        "llama",
        TINY,
        &[
            "base_model.model.lm_head.weight",
            "modules_to_save",
            "ollama-tools merge",
        ],
    );
}

#[test]
fn peft_types_other_than_lora() {
    let d = tempfile::tempdir().unwrap();
    adapter(
        d.path(),
        json!({"peft_type": "IA3", "target_modules": ["k_proj"]}),
        vec![t(
            "base_model.model.model.layers.0.self_attn.k_proj.ia3_l",
            &[16, 1],
            vec![1.0; 16],
        )],
    );
    refused(d.path(), "llama", TINY, &["peft_type is `IA3`", "only LORA"]);
}

#[test]
fn module_the_base_architecture_does_not_have() {
    // q_proj LoRA against a Phi-3 base, whose attention is the fused qkv_proj.
    let d = tempfile::tempdir().unwrap();
    adapter(d.path(), cfg(json!({})), pair(0, "q_proj", 2));
    refused(
        d.path(),
        "phi3",
        TINY,
        &["q_proj", "`phi3` architecture does not have", "qkv_proj"],
    );
}

#[test]
fn layer_beyond_the_base() {
    let d = tempfile::tempdir().unwrap();
    adapter(d.path(), cfg(json!({})), pair(5, "q_proj", 2));
    refused(
        d.path(),
        "llama",
        TINY,
        &["blk.5.attn_q.weight", "the base has 2 layers"],
    );
}

#[test]
fn wrong_size_base() {
    let d = tempfile::tempdir().unwrap();
    adapter(d.path(), cfg(json!({})), pair(0, "v_proj", 2));
    let bigger = Dims { hidden: 64, ..TINY };
    refused(
        d.path(),
        "llama",
        bigger,
        &[
            "blk.0.attn_v.weight",
            "[32, 16]",
            "[64, 16]",
            "pass the base it was trained on",
        ],
    );
}

#[test]
fn lm_head_on_a_base_with_tied_embeddings() {
    let d = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(1);
    adapter(
        d.path(),
        cfg(json!({"target_modules": ["lm_head"]})),
        vec![
            t("base_model.model.lm_head.lora_A.weight", &[2, 32], rng.vec(64, 0.3)),
            t("base_model.model.lm_head.lora_B.weight", &[40, 2], rng.vec(80, 0.3)),
        ],
    );
    refused(
        d.path(),
        "llama",
        Dims { tied: true, ..TINY },
        &[
            "an lm_head LoRA",
            "ties its output projection to the token embeddings",
            "ollama-tools merge",
        ],
    );
}

#[test]
fn embedding_lora_on_a_base_with_tied_embeddings() {
    let d = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(2);
    adapter(
        d.path(),
        cfg(json!({"target_modules": ["embed_tokens"]})),
        vec![
            t(
                "base_model.model.model.embed_tokens.lora_embedding_A",
                &[2, 40],
                rng.vec(80, 0.3),
            ),
            t(
                "base_model.model.model.embed_tokens.lora_embedding_B",
                &[32, 2],
                rng.vec(64, 0.3),
            ),
        ],
    );
    refused(
        d.path(),
        "llama",
        Dims { tied: true, ..TINY },
        &["embedding LoRA", "ties its output projection", "embed_tokens"],
    );
}

#[test]
fn unsupported_base_architecture_lists_supported() {
    let d = tempfile::tempdir().unwrap();
    adapter(d.path(), cfg(json!({})), pair(0, "q_proj", 2));
    refused(
        d.path(),
        "gpt2",
        TINY,
        &["`gpt2` is not supported", "llama (", "qwen2 (", "gemma2 (", "phi3 ("],
    );
}

#[test]
fn lora_a_without_lora_b() {
    let d = tempfile::tempdir().unwrap();
    let mut ts = pair(0, "q_proj", 2);
    ts.pop();
    adapter(d.path(), cfg(json!({})), ts);
    refused(d.path(), "llama", TINY, &["q_proj.lora_A.weight", "has no lora_B"]);
}

#[test]
fn rank_mismatch_between_a_and_b() {
    let d = tempfile::tempdir().unwrap();
    let mut ts = pair(0, "q_proj", 2);
    ts[1] = t(
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
        &[32, 3],
        vec![0.1; 96],
    );
    adapter(d.path(), cfg(json!({})), ts);
    refused(d.path(), "llama", TINY, &["rank mismatch", "[2, 32]", "[32, 3]"]);
}

#[test]
fn rank_other_than_configured() {
    let d = tempfile::tempdir().unwrap();
    adapter(d.path(), cfg(json!({"r": 8})), pair(0, "q_proj", 2));
    refused(
        d.path(),
        "llama",
        TINY,
        &["tensor rank 2 differs from the configured rank 8", "rank_pattern"],
    );
}

#[test]
fn non_finite_values() {
    let d = tempfile::tempdir().unwrap();
    let mut ts = pair(0, "q_proj", 2);
    ts[1].values[5] = f32::NAN;
    adapter(d.path(), cfg(json!({})), ts);
    refused(d.path(), "llama", TINY, &["q_proj.lora_B.weight", "NaN or infinite"]);
}

#[test]
fn rank_zero_pattern_and_alpha_scale_out_of_range() {
    let d = tempfile::tempdir().unwrap();
    adapter(
        d.path(),
        cfg(json!({"rank_pattern": {"q_proj": 0}})),
        pair(0, "q_proj", 2),
    );
    refused(d.path(), "llama", TINY, &["rank_pattern.q_proj", "positive rank"]);
    let d = tempfile::tempdir().unwrap();
    adapter(d.path(), cfg(json!({"lora_alpha": 1e39})), pair(0, "q_proj", 2));
    refused(d.path(), "llama", TINY, &["alpha = ", "lora_alpha"]);
}

#[test]
fn missing_or_bad_alpha() {
    let d = tempfile::tempdir().unwrap();
    adapter(d.path(), cfg(json!({"lora_alpha": 0})), pair(0, "q_proj", 2));
    refused(d.path(), "llama", TINY, &["lora_alpha must be a positive number"]);
}

#[test]
fn pickled_adapter_bin_explains_how_to_resave() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("a");
    std::fs::create_dir(&a).unwrap();
    std::fs::write(a.join("adapter_config.json"), cfg(json!({})).to_string()).unwrap();
    std::fs::write(a.join("adapter_model.bin"), b"PK\x03\x04pickle").unwrap();
    refused(
        d.path(),
        "llama",
        TINY,
        &["adapter_model.bin", "pickled", "safetensors.torch", "save_file"],
    );
    // The .bin given directly says the same.
    bin()
        .args(["inspect"])
        .arg(a.join("adapter_model.bin"))
        .assert()
        .failure()
        .stderr(contains("pickled"));
}

#[test]
fn malformed_json() {
    let d = tempfile::tempdir().unwrap();
    adapter(d.path(), cfg(json!({})), pair(0, "q_proj", 2));
    std::fs::write(
        d.path().join("a/adapter_config.json"),
        "{\"peft_type\": \"LORA\", \"r\": 2,",
    )
    .unwrap();
    refused(
        d.path(),
        "llama",
        TINY,
        &["adapter_config.json", "not valid JSON", "line 1"],
    );
}

#[test]
fn truncated_safetensors() {
    let d = tempfile::tempdir().unwrap();
    adapter(d.path(), cfg(json!({})), pair(0, "q_proj", 2));
    let st = d.path().join("a/adapter_model.safetensors");
    let len = std::fs::metadata(&st).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&st)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    refused(
        d.path(),
        "llama",
        TINY,
        &[
            "adapter_model.safetensors",
            "not a complete safetensors file",
            "fetch it again",
        ],
    );
}

#[test]
fn git_lfs_pointer_instead_of_weights() {
    let d = tempfile::tempdir().unwrap();
    adapter(d.path(), cfg(json!({})), pair(0, "q_proj", 2));
    std::fs::write(
        d.path().join("a/adapter_model.safetensors"),
        "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n",
    )
    .unwrap();
    refused(d.path(), "llama", TINY, &["Git LFS pointer", "git lfs pull"]);
}

#[test]
fn empty_adapter() {
    let d = tempfile::tempdir().unwrap();
    adapter(d.path(), cfg(json!({})), vec![]);
    refused(d.path(), "llama", TINY, &["holds no tensors"]);
}

#[test]
fn existing_output_is_kept_without_force_and_replaced_with_it() {
    let d = tempfile::tempdir().unwrap();
    adapter(d.path(), cfg(json!({})), pair(0, "q_proj", 2));
    let base = d.path().join("base.gguf");
    write_base_gguf(&base, "llama", TINY);
    let out = d.path().join("out.gguf");
    std::fs::write(&out, b"precious").unwrap();
    let run = |force: bool| {
        let mut c = bin();
        c.arg("convert")
            .arg(d.path().join("a"))
            .arg("--base")
            .arg(&base)
            .arg("-o")
            .arg(&out);
        if force {
            c.arg("--force");
        }
        c.assert()
    };
    run(false)
        .failure()
        .stderr(contains("already exists"))
        .stderr(contains("--force"));
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    run(true).success();
    assert_eq!(&std::fs::read(&out).unwrap()[..4], b"GGUF");
}

#[test]
fn base_that_is_not_a_model() {
    let d = tempfile::tempdir().unwrap();
    adapter(d.path(), cfg(json!({})), pair(0, "q_proj", 2));
    let base = d.path().join("base.gguf");
    std::fs::write(&base, b"not a gguf at all").unwrap();
    bin()
        .arg("convert")
        .arg(d.path().join("a"))
        .arg("--base")
        .arg(&base)
        .args(["-o", "/nonexistent/out.gguf"])
        .assert()
        .failure()
        .stderr(contains("not a GGUF file"))
        .stderr(contains("--base takes"));
}

/// What `convert` refuses through the library, with `strict` as `--strict`: the error's kind.
fn kind_of(dir: &Path, arch: &str, dims: Dims, strict: bool) -> ollama_tools::ErrorKind {
    use ollama_tools::engine::convert::{self, Input, Options};
    let base_path = dir.join("base.gguf");
    write_base_gguf(&base_path, arch, dims);
    let base = ollama_tools::engine::base::BaseModel::load(&base_path).unwrap();
    let err = ollama_tools::formats::peft::Adapter::open(&dir.join("a"))
        .and_then(|adapter| {
            let opts = Options {
                strict,
                ..Default::default()
            };
            convert::convert(
                &[Input { adapter, weight: 1.0 }],
                &base,
                &dir.join("out.gguf"),
                &opts,
                &ollama_tools::progress::Silent,
            )
        })
        .unwrap_err();
    assert!(!dir.join("out.gguf").exists(), "{err}");
    err.kind()
}

/// [`kind_of`] for an adapter of `config` and `tensors`, in a folder of its own.
fn kind_for(
    config: serde_json::Value,
    tensors: Vec<T>,
    arch: &str,
    dims: Dims,
    strict: bool,
) -> ollama_tools::ErrorKind {
    let d = tempfile::tempdir().unwrap();
    adapter(d.path(), config, tensors);
    kind_of(d.path(), arch, dims, strict)
}

#[test]
fn a_library_caller_tells_a_mismatch_from_an_unsupported_adapter_by_the_kind() {
    use ollama_tools::ErrorKind::{Mismatch, Unsupported};
    let wider = Dims { hidden: 64, ..TINY };
    // The adapter does not fit this base: another one would do.
    assert_eq!(
        kind_for(cfg(json!({})), pair(0, "v_proj", 2), "llama", wider, false),
        Mismatch,
        "shapes"
    );
    assert_eq!(
        kind_for(cfg(json!({})), pair(5, "q_proj", 2), "llama", TINY, false),
        Mismatch,
        "layers"
    );
    assert_eq!(
        kind_for(cfg(json!({})), pair(0, "q_proj", 2), "phi3", TINY, false),
        Mismatch,
        "module"
    );
    // A warning (trained for another family) made an error by --strict.
    let qwen = cfg(json!({"base_model_name_or_path": "Qwen/Qwen2.5-0.5B"}));
    assert_eq!(
        kind_for(qwen, pair(0, "q_proj", 2), "llama", TINY, true),
        Mismatch,
        "family"
    );
    // No base would do: the adapter's own features, or a base this tool does not handle.
    let ia3 = json!({"peft_type": "IA3", "target_modules": ["k_proj"]});
    assert_eq!(
        kind_for(ia3, pair(0, "k_proj", 2), "llama", TINY, false),
        Unsupported,
        "peft type"
    );
    assert_eq!(
        kind_for(cfg(json!({})), pair(0, "q_proj", 2), "gpt2", TINY, false),
        Unsupported,
        "base arch"
    );
    // The same family warning without --strict is no error at all.
    let d = tempfile::tempdir().unwrap();
    let config = cfg(json!({"base_model_name_or_path": "Qwen/Qwen2.5-0.5B"}));
    adapter(d.path(), config, pair(0, "q_proj", 2));
    write_base_gguf(&d.path().join("base.gguf"), "llama", TINY);
    bin()
        .arg("convert")
        .arg(d.path().join("a"))
        .arg("--base")
        .arg(d.path().join("base.gguf"))
        .arg("-o")
        .arg(d.path().join("out.gguf"))
        .assert()
        .success();

    // DoRA as a GGUF adapter, beside a pair that fits: unsupported, not a mismatch.
    let d = tempfile::tempdir().unwrap();
    dora_adapter(d.path());
    assert_eq!(kind_of(d.path(), "llama", TINY, false), Unsupported);

    // A pickled adapter is refused when it is opened.
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("a")).unwrap();
    std::fs::write(d.path().join("a/adapter_config.json"), cfg(json!({})).to_string()).unwrap();
    std::fs::write(d.path().join("a/adapter_model.bin"), b"PK\x03\x04pickle").unwrap();
    assert_eq!(kind_of(d.path(), "llama", TINY, false), Unsupported);
}
