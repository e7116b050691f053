//! `validate` and base-model sources: an Ollama server (test server answering like Ollama), the local
//! model store (laid out like Ollama's), GGUF files and config.json folders; every error and warning.

mod common;
use common::*;
use predicates::str::contains;
use serde_json::json;
use std::path::Path;

fn validate(adapter: &Path, base: &str, host: &str) -> assert_cmd::assert::Assert {
    bin()
        .args(["validate"])
        .arg(adapter)
        .args(["--base", base])
        .env("OLLAMA_HOST", host)
        .env("OLLAMA_MODELS", "/nonexistent")
        .assert()
}

#[test]
fn server_base_with_tensor_list() {
    let d = tempfile::tempdir().unwrap();
    let a = tiny_adapter(
        &d.path().join("a"),
        json!({"base_model_name_or_path": "meta-llama/Llama-3.2-1B"}),
        vec![],
    );
    let server = start_ollama(vec![("tiny", show_json(TINY, "Q4_K", true))]);
    validate(&a, "tiny", &server.url)
        .success()
        .stdout(contains("2 layers, 8 tensors, all shapes match tiny:latest"))
        .stdout(contains("GGUF model): architecture `llama`, 2 layers, 1.2B, Q4_K_M"))
        .stdout(contains("base tensor types Q4_K take an adapter"))
        .stdout(contains("adapter's base `meta-llama/Llama-3.2-1B` is a llama model"));
    // The JSON form carries the same.
    let out = bin()
        .args(["validate", "--json"])
        .arg(&a)
        .args(["--base", "tiny:latest"])
        .env("OLLAMA_HOST", &server.url)
        .assert()
        .success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(v["errors"], json!([]));
    assert_eq!(v["base"], "tiny:latest");
    assert!(v["checks"].as_array().unwrap().len() >= 5);
}

#[test]
fn server_unknown_model_passes_ollamas_message_on() {
    let d = tempfile::tempdir().unwrap();
    let a = tiny_adapter(&d.path().join("a"), json!({}), vec![]);
    let server = start_ollama(vec![("tiny", show_json(TINY, "Q4_K", true))]);
    validate(&a, "nosuch:7b", &server.url)
        .failure()
        .stderr(contains("model 'nosuch:7b' not found"))
        .stderr(contains("ollama pull nosuch:7b"));
}

#[test]
fn server_without_tensor_list_derives_shapes() {
    let d = tempfile::tempdir().unwrap();
    let a = tiny_adapter(&d.path().join("a"), json!({}), vec![]);
    let server = start_ollama(vec![("old", show_json(TINY, "Q4_K", false))]);
    validate(&a, "old", &server.url)
        .success()
        .stdout(contains("derived from the base's hyper-parameters"));
    // A wrong size is caught on derived shapes too.
    let server = start_ollama(vec![("old", show_json(Dims { hidden: 64, ..TINY }, "Q4_K", false))]);
    validate(&a, "old", &server.url).failure().stdout(contains(
        "needs base tensor `blk.0.attn_q.weight` with ggml shape [32, 32]",
    ));
}

#[test]
fn non_gguf_base_and_unknown_tensor_types_are_errors() {
    let d = tempfile::tempdir().unwrap();
    let a = tiny_adapter(&d.path().join("a"), json!({}), vec![]);
    let mut st = show_json(TINY, "F16", true);
    st["details"]["format"] = json!("safetensors");
    let mut odd = show_json(TINY, "F16", true);
    odd["tensors"][3]["type"] = json!("IQ9_Z");
    let server = start_ollama(vec![("st", st), ("odd", odd)]);
    validate(&a, "st", &server.url)
        .failure()
        .stdout(contains("is a safetensors model, not GGUF"));
    validate(&a, "odd", &server.url)
        .failure()
        .stdout(contains("neither apply an adapter to nor re-quantize"))
        .stdout(contains("IQ9_Z"));
}

#[test]
fn low_bit_base_family_size_and_qlora_warnings_and_strict() {
    let d = tempfile::tempdir().unwrap();
    let server = start_ollama(vec![
        ("q2", show_json(TINY, "Q2_K", true)),
        ("tiny", show_json(TINY, "Q4_K", true)),
    ]);
    let a = tiny_adapter(&d.path().join("a"), json!({}), vec![]);
    validate(&a, "q2", &server.url)
        .success()
        .stdout(contains("quantized below 4 bits (Q2_K)"));

    let a = tiny_adapter(
        &d.path().join("b"),
        json!({"base_model_name_or_path": "Qwen/Qwen2.5-7B-Instruct"}),
        vec![],
    );
    validate(&a, "tiny", &server.url)
        .success()
        .stdout(contains(
            "trained on `Qwen/Qwen2.5-7B-Instruct` (a qwen2 model), but the base is `llama`",
        ))
        .stdout(contains("(7B parameters), but the base is a 1.2B model"));
    bin()
        .args(["validate", "--strict"])
        .arg(&a)
        .args(["--base", "tiny"])
        .env("OLLAMA_HOST", &server.url)
        .assert()
        .failure()
        .stderr(contains("--strict makes them errors"));
    // convert --strict refuses on the same warnings; without it the warning is a notice.
    let out = d.path().join("o.gguf");
    bin()
        .arg("convert")
        .arg(&a)
        .args(["--base", "tiny", "--strict", "-o"])
        .arg(&out)
        .env("OLLAMA_HOST", &server.url)
        .assert()
        .failure();
    assert!(!out.exists());
    bin()
        .arg("convert")
        .arg(&a)
        .args(["--base", "tiny", "-o"])
        .arg(&out)
        .env("OLLAMA_HOST", &server.url)
        .assert()
        .success()
        .stderr(contains("warning: base_model_name_or_path"));

    let a = tiny_adapter(
        &d.path().join("c"),
        json!({"base_model_name_or_path": "unsloth/Llama-3.2-1B-bnb-4bit"}),
        vec![],
    );
    validate(&a, "tiny", &server.url)
        .success()
        .stdout(contains("4-bit (bitsandbytes / QLoRA) copy"));
}

#[test]
fn vocabulary_resized_in_training() {
    let d = tempfile::tempdir().unwrap();
    let server = start_ollama(vec![("tiny", show_json(TINY, "Q4_K", true))]);
    // PEFT saves the full embedding when training resized the vocabulary: 40 + 8 new tokens.
    let embed = t(
        "base_model.model.model.embed_tokens.weight",
        &[48, 32],
        vec![0.0; 48 * 32],
    );
    let a = tiny_adapter(&d.path().join("a"), json!({}), vec![embed]);
    validate(&a, "tiny", &server.url)
        .failure()
        .stdout(contains("cover 48 tokens, the base has 40"))
        .stdout(contains("embed_tokens.weight"));
}

#[test]
fn model_store_when_no_server_answers() {
    let d = tempfile::tempdir().unwrap();
    let a = tiny_adapter(&d.path().join("a"), json!({}), vec![]);
    let gguf = d.path().join("tiny.gguf");
    write_base_gguf(&gguf, "llama", TINY);
    let store = d.path().join("models");
    write_store(&store, "registry.ollama.ai", "library", "tiny", "latest", &gguf);
    write_store(&store, "registry.ollama.ai", "someone", "tuned", "q8", &gguf);
    for name in ["tiny", "tiny:latest", "someone/tuned:q8"] {
        bin()
            .arg("validate")
            .arg(&a)
            .args(["--base", name])
            .env("OLLAMA_HOST", NO_SERVER)
            .env("OLLAMA_MODELS", &store)
            .assert()
            .success()
            .stdout(contains("all shapes match"));
    }
    // convert reads the same store.
    let out = d.path().join("o.gguf");
    bin()
        .arg("convert")
        .arg(&a)
        .args(["--base", "tiny", "-o"])
        .arg(&out)
        .env("OLLAMA_HOST", NO_SERVER)
        .env("OLLAMA_MODELS", &store)
        .assert()
        .success();
    assert!(out.exists());
    // Neither a server nor the model in the store: both are said.
    bin()
        .arg("validate")
        .arg(&a)
        .args(["--base", "absent"])
        .env("OLLAMA_HOST", NO_SERVER)
        .env("OLLAMA_MODELS", &store)
        .assert()
        .failure()
        .stderr(contains("no Ollama server answers at http://127.0.0.1:1"))
        .stderr(contains("has no `absent:latest`"))
        .stderr(contains("OLLAMA_HOST"));
}

#[test]
fn store_with_a_missing_blob_says_to_pull_again() {
    let d = tempfile::tempdir().unwrap();
    let a = tiny_adapter(&d.path().join("a"), json!({}), vec![]);
    let gguf = d.path().join("tiny.gguf");
    write_base_gguf(&gguf, "llama", TINY);
    let store = d.path().join("models");
    write_store(&store, "registry.ollama.ai", "library", "tiny", "latest", &gguf);
    for e in std::fs::read_dir(store.join("blobs")).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    bin()
        .arg("validate")
        .arg(&a)
        .args(["--base", "tiny"])
        .env("OLLAMA_HOST", NO_SERVER)
        .env("OLLAMA_MODELS", &store)
        .assert()
        .failure()
        .stderr(contains("blob, which is missing"))
        .stderr(contains("ollama pull tiny:latest"));
}

#[test]
fn unknown_ggml_type_in_a_gguf_base() {
    let d = tempfile::tempdir().unwrap();
    let a = tiny_adapter(&d.path().join("a"), json!({}), vec![]);
    // A base GGUF whose norm tensor has a type id this tool does not know.
    use ollama_tools::formats::gguf::{GgmlType, TensorSpec, Value, Writer};
    let gguf = d.path().join("odd.gguf");
    write_base_gguf(&gguf, "llama", TINY);
    let h = ollama_tools::formats::gguf::read_header(&gguf).unwrap();
    let mut specs: Vec<TensorSpec> = h
        .tensors
        .iter()
        .map(|t| TensorSpec {
            name: t.name.clone(),
            ne: t.ne.clone(),
            ty: t.ty,
        })
        .collect();
    specs.push(TensorSpec {
        name: "blk.0.odd.weight".into(),
        ne: vec![32],
        ty: GgmlType::F32,
    });
    let kvs: Vec<(String, Value)> = h.kvs.clone();
    let mut w = Writer::new(std::fs::File::create(&gguf).unwrap(), &kvs, &specs).unwrap();
    for s in &specs {
        w.write_tensor(&vec![0u8; s.byte_size().unwrap() as usize]).unwrap();
    }
    w.finish().unwrap();
    // Patch the last tensor's type id (u32 after its dims, before its offset) to 99.
    let mut bytes = std::fs::read(&gguf).unwrap();
    let pos = bytes.windows(16).rposition(|w| w == b"blk.0.odd.weight").unwrap() + 16 + 4 + 8;
    bytes[pos..pos + 4].copy_from_slice(&99u32.to_le_bytes());
    std::fs::write(&gguf, &bytes).unwrap();
    validate(&a, gguf.to_str().unwrap(), NO_SERVER)
        .failure()
        .stdout(contains("blk.0.odd.weight: type 99"));
}

#[test]
fn a_library_caller_gets_a_kind_for_gguf_adapters_that_do_not_fit_and_models_the_store_lacks() {
    use ollama_tools::ErrorKind::{Mismatch, NotFound, Unsupported};
    use ollama_tools::engine::base::BaseModel;
    use ollama_tools::engine::validate::check_gguf_adapter;
    let d = tempfile::tempdir().unwrap();
    let a = tiny_adapter(&d.path().join("a"), json!({}), vec![]);
    let gguf = d.path().join("tiny.gguf");
    write_base_gguf(&gguf, "llama", TINY);
    let lora = d.path().join("lora.gguf");
    bin()
        .arg("convert")
        .arg(&a)
        .arg("--base")
        .arg(&gguf)
        .arg("-o")
        .arg(&lora)
        .assert()
        .success();
    let base = |name: &str, arch: &str, dims: Dims| {
        let p = d.path().join(name);
        write_base_gguf(&p, arch, dims);
        BaseModel::load(&p).unwrap()
    };
    assert!(check_gguf_adapter(&lora, &base("same.gguf", "llama", TINY)).is_ok());
    for (what, other) in [
        ("wider", base("wider.gguf", "llama", Dims { hidden: 64, ..TINY })),
        ("fewer layers", base("short.gguf", "llama", Dims { layers: 1, ..TINY })),
        ("another architecture", base("qwen.gguf", "qwen2", TINY)),
    ] {
        let err = check_gguf_adapter(&lora, &other).err().expect(what);
        assert_eq!(err.kind(), Mismatch, "{what}: {err}");
    }
    // A model given where the adapter goes fits nothing.
    let err = check_gguf_adapter(&gguf, &base("again.gguf", "llama", TINY))
        .err()
        .expect("a model as the adapter");
    assert_eq!(err.kind(), Unsupported, "{err}");

    // A model the store does not hold, and one whose blob is gone.
    let store = d.path().join("models");
    write_store(&store, "registry.ollama.ai", "library", "tiny", "latest", &gguf);
    let name = |n: &str| ollama_tools::remote::ollama::ModelName::parse(n).unwrap();
    assert!(BaseModel::from_store(&name("tiny"), &store).is_ok());
    let err = BaseModel::from_store(&name("absent"), &store).unwrap_err();
    assert_eq!(err.kind(), NotFound, "{err}");
    for e in std::fs::read_dir(store.join("blobs")).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    let err = BaseModel::from_store(&name("tiny"), &store).unwrap_err();
    assert_eq!(err.kind(), NotFound, "{err}");
}
