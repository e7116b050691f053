//! Fixtures the tests build themselves: PEFT adapters (safetensors written with the `safetensors`
//! crate), tiny base-model GGUF headers, and a reader for the GGUF tensors we write.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ollama_tools::formats::gguf::{self, GgmlType, TensorSpec, Value};
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
    T {
        key: key.into(),
        dtype: Dtype::F32,
        shape: shape.to_vec(),
        values,
    }
}

fn encode(dtype: Dtype, values: &[f32]) -> Vec<u8> {
    match dtype {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::F16 => values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        Dtype::BF16 => values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
        other => panic!("fixture dtype {other:?}"),
    }
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` into `dir`.
pub fn write_adapter(dir: &Path, config: &serde_json::Value, tensors: &[T]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("adapter_config.json"),
        serde_json::to_string_pretty(config).unwrap(),
    )
    .unwrap();
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

pub const TINY: Dims = Dims {
    layers: 2,
    hidden: 32,
    heads: 4,
    kv_heads: 2,
    head_dim: 8,
    ffn: 48,
    vocab: 40,
    tied: false,
};

/// Writes a base-model GGUF of `arch` with zero-filled F32 weights (only shapes matter to convert).
pub fn write_base_gguf(path: &Path, arch: &str, d: Dims) {
    let q = d.heads * d.head_dim;
    let kv = d.kv_heads * d.head_dim;
    let mut specs = vec![TensorSpec {
        name: "token_embd.weight".into(),
        ne: vec![d.hidden, d.vocab],
        ty: GgmlType::F32,
    }];
    if !d.tied {
        specs.push(TensorSpec {
            name: "output.weight".into(),
            ne: vec![d.hidden, d.vocab],
            ty: GgmlType::F32,
        });
    }
    for i in 0..d.layers {
        let mut add = |stem: &str, ne: [u64; 2]| {
            specs.push(TensorSpec {
                name: format!("blk.{i}.{stem}.weight"),
                ne: ne.to_vec(),
                ty: GgmlType::F32,
            })
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
    // Deterministic non-zero weights, so a merge test can tell base from delta.
    let mut rng = Rng::new(7);
    let mut w = gguf::Writer::new(std::fs::File::create(path).unwrap(), &kvs, &specs).unwrap();
    for spec in &specs {
        let n = (spec.byte_size().unwrap() / 4) as usize;
        let bytes: Vec<u8> = rng.vec(n, 0.1).iter().flat_map(|v| v.to_le_bytes()).collect();
        w.write_tensor(&bytes).unwrap();
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
            GgmlType::F32 => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            GgmlType::F16 => raw
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            GgmlType::BF16 => raw
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => panic!("unexpected type {other}"),
        };
        let shape = t.ne.iter().rev().map(|&d| d as usize).collect();
        out.insert(
            t.name.clone(),
            Read {
                shape,
                ty: t.ty,
                values,
            },
        );
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

/// The `/api/show` answer of a tiny llama model as an Ollama server gives it (verbose): GGUF metadata
/// in `model_info`, tensors with ggml type names and ggml-order shapes.
pub fn show_json(d: Dims, tensor_type: &str, with_tensors: bool) -> serde_json::Value {
    let (q, kv) = (d.heads * d.head_dim, d.kv_heads * d.head_dim);
    let mut tensors =
        vec![serde_json::json!({"name": "token_embd.weight", "type": "Q6_K", "shape": [d.hidden, d.vocab]})];
    if !d.tied {
        tensors.push(serde_json::json!({"name": "output.weight", "type": "Q6_K", "shape": [d.hidden, d.vocab]}));
    }
    for i in 0..d.layers {
        for (stem, ne) in [
            ("attn_q", [d.hidden, q]),
            ("attn_k", [d.hidden, kv]),
            ("attn_v", [d.hidden, kv]),
            ("attn_output", [q, d.hidden]),
            ("ffn_gate", [d.hidden, d.ffn]),
            ("ffn_up", [d.hidden, d.ffn]),
            ("ffn_down", [d.ffn, d.hidden]),
        ] {
            tensors
                .push(serde_json::json!({"name": format!("blk.{i}.{stem}.weight"), "type": tensor_type, "shape": ne}));
        }
        tensors
            .push(serde_json::json!({"name": format!("blk.{i}.attn_norm.weight"), "type": "F32", "shape": [d.hidden]}));
    }
    let mut show = serde_json::json!({
        "license": "LLAMA 3.2 COMMUNITY LICENSE AGREEMENT",
        "modelfile": "FROM /root/.ollama/models/blobs/sha256-...",
        "parameters": "stop \"<|eot_id|>\"",
        "template": "{{ .Prompt }}",
        "details": {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                    "parameter_size": "1.2B", "quantization_level": "Q4_K_M"},
        "model_info": {
            "general.architecture": "llama", "general.basename": "Llama-3.2", "general.file_type": 15,
            "general.parameter_count": 1_235_814_432u64, "general.size_label": "1B",
            "llama.block_count": d.layers, "llama.embedding_length": d.hidden, "llama.feed_forward_length": d.ffn,
            "llama.attention.head_count": d.heads, "llama.attention.head_count_kv": d.kv_heads,
            "llama.attention.key_length": d.head_dim, "llama.vocab_size": d.vocab,
            "llama.context_length": 131072, "tokenizer.ggml.model": "gpt2"
        },
        "capabilities": ["completion", "tools"],
        "modified_at": "2026-11-01T10:00:00.000000000Z"
    });
    if with_tensors {
        show["tensors"] = serde_json::Value::Array(tensors);
    }
    show
}

/// An in-process server that answers `/api/show` and `/api/version` the way Ollama documents them,
/// including its error bodies (`{"error": "model 'x' not found"}` with 404).
pub struct TestOllama {
    pub url: String,
    _runtime: tokio::runtime::Runtime,
}

pub fn start_ollama(models: Vec<(&str, serde_json::Value)>) -> TestOllama {
    use axum::{
        Json, Router,
        extract::State,
        http::StatusCode,
        routing::{get, post},
    };
    use std::sync::Arc;
    type Models = Arc<HashMap<String, serde_json::Value>>;
    // Ollama looks names up with the tag defaulted to `latest`.
    let full = |n: &str| {
        if n.rsplit('/').next().unwrap_or(n).contains(':') {
            n.to_string()
        } else {
            format!("{n}:latest")
        }
    };
    let models: Models = Arc::new(models.into_iter().map(|(n, v)| (full(n), v)).collect());
    async fn show(State(models): State<Models>, body: String) -> (StatusCode, Json<serde_json::Value>) {
        let Ok(req) = serde_json::from_str::<serde_json::Value>(&body) else {
            return (
                StatusCode::BAD_REQUEST,
                Json(serde_json::json!({"error": "invalid character looking for beginning of value"})),
            );
        };
        let name = req["model"].as_str().unwrap_or_default().to_string();
        let key = if name.rsplit('/').next().unwrap_or(&name).contains(':') {
            name.clone()
        } else {
            format!("{name}:latest")
        };
        match models.get(&key) {
            Some(v) => (StatusCode::OK, Json(v.clone())),
            None => (
                StatusCode::NOT_FOUND,
                Json(serde_json::json!({"error": format!("model '{name}' not found")})),
            ),
        }
    }
    let app = Router::new()
        .route("/api/show", post(show))
        .route(
            "/api/version",
            get(|| async { Json(serde_json::json!({"version": "0.34.2"})) }),
        )
        .with_state(models);
    let (url, runtime) = serve(app);
    TestOllama { url, _runtime: runtime }
}

/// Serves `app` on a free port of 127.0.0.1 from its own runtime: (`http://127.0.0.1:PORT`, the
/// runtime, which stops the server when dropped).
pub fn serve(app: axum::Router) -> (String, tokio::runtime::Runtime) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, runtime)
}

/// An address where nothing listens: connections are refused at once.
pub const NO_SERVER: &str = "127.0.0.1:1";

/// Lays out an Ollama model store the way Ollama does: the GGUF as a content-addressed blob, a
/// manifest under manifests/<registry>/<namespace>/<model>/<tag> naming it with its media type.
pub fn write_store(store: &Path, registry: &str, namespace: &str, model: &str, tag: &str, gguf: &Path) {
    use sha2::Digest;
    let bytes = std::fs::read(gguf).unwrap();
    let hex: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::create_dir_all(store.join("blobs")).unwrap();
    std::fs::write(store.join("blobs").join(format!("sha256-{hex}")), &bytes).unwrap();
    let template = b"{{ .Prompt }}";
    let thex: String = sha2::Sha256::digest(template)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(store.join("blobs").join(format!("sha256-{thex}")), template).unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": format!("sha256:{thex}"), "size": template.len()},
        "layers": [
            {"mediaType": "application/vnd.ollama.image.model", "digest": format!("sha256:{hex}"), "size": bytes.len()},
            {"mediaType": "application/vnd.ollama.image.template", "digest": format!("sha256:{thex}"), "size": template.len()}
        ]
    });
    let dir = store.join("manifests").join(registry).join(namespace).join(model);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(tag), serde_json::to_string(&manifest).unwrap()).unwrap();
}

/// In `dir`: `base.gguf` (the TINY llama), a model store holding it as `tiny`, and `tiny_adapter`
/// for it in `adapter_dir`: what the create and fetch tests start from. Returns (base, store, adapter).
pub fn tiny_world(dir: &Path, adapter_dir: &str) -> (PathBuf, PathBuf, PathBuf) {
    let base = dir.join("base.gguf");
    write_base_gguf(&base, "llama", TINY);
    let store = dir.join("store");
    write_store(&store, "registry.ollama.ai", "library", "tiny", "latest", &base);
    let adapter = tiny_adapter(
        &dir.join(adapter_dir),
        serde_json::json!({"base_model_name_or_path": "meta-llama/Llama-3.2-1B"}),
        vec![],
    );
    (base, store, adapter)
}

/// A LoRA on q_proj and v_proj of every layer of the TINY llama, r=2; `config` overrides the defaults.
pub fn tiny_adapter(dir: &Path, config: serde_json::Value, extra: Vec<T>) -> PathBuf {
    let mut cfg = serde_json::json!({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 2, "lora_alpha": 4,
        "target_modules": ["q_proj", "v_proj"], "bias": "none"});
    cfg.as_object_mut().unwrap().extend(config.as_object().unwrap().clone());
    let mut rng = Rng::new(99);
    let mut tensors = Vec::new();
    for layer in 0..TINY.layers as usize {
        for (module, out) in [("q_proj", 32), ("v_proj", 16)] {
            let p = format!("base_model.model.model.layers.{layer}.self_attn.{module}");
            tensors.push(t(&format!("{p}.lora_A.weight"), &[2, 32], rng.vec(64, 0.3)));
            tensors.push(t(&format!("{p}.lora_B.weight"), &[out, 2], rng.vec(out * 2, 0.3)));
        }
    }
    tensors.extend(extra);
    write_adapter(dir, &cfg, &tensors)
}

/// Runs the binary with `args` under a pseudo-terminal (util-linux `script`), types `keys` once
/// `question` shows, and returns (exit success, everything the terminal showed).
pub fn in_terminal(args: &[&str], vars: &[(&str, &str)], question: &str, keys: &str) -> (bool, String) {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    let exe = assert_cmd::cargo::cargo_bin("ollama-tools");
    let mut line = format!("'{}'", exe.display());
    for a in args {
        line.push_str(&format!(" '{a}'"));
    }
    let mut child = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .envs(vars.iter().copied())
        .env("TERM", "dumb")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("util-linux `script` runs");
    let mut out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    // Keys typed before the question would go to the terminal's line editing, not the prompt.
    let mut seen = Vec::new();
    let mut stdin = child.stdin.take().unwrap();
    let mut answered = false;
    while let Ok(chunk) = rx.recv() {
        seen.extend(chunk);
        if !answered && String::from_utf8_lossy(&seen).contains(question) {
            stdin.write_all(keys.as_bytes()).unwrap();
            stdin.flush().unwrap();
            answered = true;
        }
    }
    let status = child.wait().unwrap();
    (status.success(), String::from_utf8_lossy(&seen).into_owned())
}

pub mod hub_server;
pub mod modelfile_parser;
pub mod ollama_server;
