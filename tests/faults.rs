//! Hostile adapters and bases, and faults during a run: never a written model with NaN/Inf, never
//! a panic, never a file half-written or a temporary file left beside the output.

mod common;
use common::*;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use ollama_tools::formats::gguf::{self, GgmlType, TensorSpec, Value};
use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;
use serde_json::json;

/// Files in `dir` other than `keep`: temporary outputs are hidden `.NAME.XXXX.tmp` files.
fn leftovers(dir: &Path, keep: &[&str]) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect()
}

/// The tiny adapter (q_proj and v_proj of both layers, r=2) with layer 1's v_proj pair replaced.
fn adapter_with(dir: &Path, lora_a: Vec<f32>, lora_b: Vec<f32>) -> std::path::PathBuf {
    let cfg = json!({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"]});
    let mut rng = Rng::new(99);
    let mut tensors = Vec::new();
    for layer in 0..2 {
        for (module, out) in [("q_proj", 32), ("v_proj", 16)] {
            let p = format!("base_model.model.model.layers.{layer}.self_attn.{module}");
            let (a, b) = (rng.vec(64, 0.3), rng.vec(out * 2, 0.3));
            let (a, b) = if layer == 1 && module == "v_proj" {
                (lora_a.clone(), lora_b.clone())
            } else {
                (a, b)
            };
            tensors.push(t(&format!("{p}.lora_A.weight"), &[2, 32], a));
            tensors.push(t(&format!("{p}.lora_B.weight"), &[out, 2], b));
        }
    }
    write_adapter(dir, &cfg, &tensors)
}

#[test]
fn merge_refuses_nan_inf_and_overflowing_adapters_and_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base.gguf");
    write_base_gguf(&base, "llama", TINY);
    let one = |v: f32| {
        let mut b = vec![0.1; 32];
        b[7] = v;
        b
    };
    let cases = [
        ("nan", vec![0.1; 64], one(f32::NAN)),
        ("inf", vec![0.1; 64], one(f32::INFINITY)),
        // Finite factors whose product overflows f32.
        ("overflow", vec![1e20; 64], vec![1e20; 32]),
    ];
    for (label, a, b) in cases {
        let adapter = adapter_with(&d.path().join(label), a, b);
        let out = d.path().join(format!("{label}.gguf"));
        bin()
            .args(["merge"])
            .arg(&adapter)
            .args(["--base", base.to_str().unwrap(), "-o"])
            .arg(&out)
            .assert()
            .failure()
            .stderr(contains("blk.1.attn_v.weight").and(contains("NaN/Inf")));
        assert!(!out.exists(), "{label}: no output");
    }
    assert!(
        leftovers(d.path(), &["base.gguf", "nan", "inf", "overflow"]).is_empty(),
        "{:?}",
        leftovers(d.path(), &[])
    );
}

#[test]
fn merge_refuses_values_beyond_f16_range_for_an_f16_base() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base.gguf");
    write_base_gguf(&base, "llama", TINY);
    let out = d.path().join("merged.gguf");
    // Finite in f32, beyond f16: as --merged-type f16 these would become Inf.
    let a = adapter_with(&d.path().join("a"), vec![1.0; 64], vec![1e5; 32]);
    bin()
        .args(["merge"])
        .arg(&a)
        .args(["--base", base.to_str().unwrap(), "--merged-type", "f16", "-o"])
        .arg(&out)
        .assert()
        .failure()
        .stderr(contains("beyond what F16 can hold"));
    assert!(!out.exists());
}

#[test]
fn bad_scales_are_refused_before_any_work() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base.gguf");
    write_base_gguf(&base, "llama", TINY);
    let a = tiny_adapter(&d.path().join("a"), json!({}), vec![]);
    let lora = d.path().join("lora.gguf");
    bin()
        .args(["convert"])
        .arg(&a)
        .args(["--base", base.to_str().unwrap(), "-o"])
        .arg(&lora)
        .assert()
        .success();
    for scale in ["nan", "inf", "-inf", "0"] {
        for adapter in [&a, &lora] {
            let out = d.path().join("m.gguf");
            bin()
                .args(["merge"])
                .arg(adapter)
                .args(["--base", base.to_str().unwrap(), &format!("--scale={scale}"), "-o"])
                .arg(&out)
                .assert()
                .failure()
                .stderr(contains("--scale must be a non-zero finite number"));
            assert!(!out.exists());
        }
    }
}

/// A GGUF file with these tensors (F32, deterministic values) and the tiny llama's metadata.
fn write_gguf(path: &Path, general_type: Option<&str>, specs: &[TensorSpec]) {
    let s = |v: &str| Value::String(v.into());
    let mut kvs = vec![
        ("general.architecture".to_string(), s("llama")),
        ("llama.block_count".to_string(), Value::U32(2)),
        ("llama.embedding_length".to_string(), Value::U32(32)),
        ("llama.attention.head_count".to_string(), Value::U32(4)),
        ("llama.attention.head_count_kv".to_string(), Value::U32(2)),
    ];
    if let Some(t) = general_type {
        kvs.push(("general.type".into(), s(t)));
        kvs.push(("adapter.type".into(), s("lora")));
        kvs.push(("adapter.lora.alpha".into(), Value::F32(4.0)));
    }
    let mut w = gguf::Writer::new(std::fs::File::create(path).unwrap(), &kvs, specs).unwrap();
    let mut rng = Rng::new(3);
    for spec in specs {
        let n = (spec.byte_size().unwrap() / 4) as usize;
        w.write_tensor(
            &rng.vec(n, 0.1)
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>(),
        )
        .unwrap();
    }
    w.finish().unwrap();
}

fn spec(name: &str, ne: &[u64]) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        ne: ne.to_vec(),
        ty: GgmlType::F32,
    }
}

#[test]
fn gguf_adapter_merge_into_crafted_bases_is_refused_not_a_panic() {
    let d = tempfile::tempdir().unwrap();
    let adapter = d.path().join("lora.gguf");
    let lora = |ne_a: &[u64], ne_b: &[u64]| {
        write_gguf(
            &adapter,
            Some("adapter"),
            &[
                spec("blk.0.attn_q.weight.lora_a", ne_a),
                spec("blk.0.attn_q.weight.lora_b", ne_b),
            ],
        )
    };
    let merge = |base: &Path, what: &str| {
        let out = d.path().join("out.gguf");
        bin()
            .args(["merge"])
            .arg(&adapter)
            .args(["--base", base.to_str().unwrap(), "-o"])
            .arg(&out)
            .assert()
            .failure()
            .code(predicates::ord::ne(101))
            .stderr(contains(what));
        assert!(!out.exists());
    };
    let base = d.path().join("base.gguf");
    let base_with = |q_ne: &[u64]| {
        write_gguf(
            &base,
            None,
            &[spec("token_embd.weight", &[32, 40]), spec("blk.0.attn_q.weight", q_ne)],
        )
    };
    // A 3-d base tensor.
    base_with(&[32, 4, 8]);
    lora(&[32, 2], &[2, 32]);
    merge(&base, "do not fit");
    // A zero dimension, in the base and the adapter alike.
    base_with(&[32, 0]);
    lora(&[32, 2], &[2, 0]);
    merge(&base, "[32, 0]: an empty tensor");
    // An untouched tensor of a type this tool does not know: the type id patched in the file.
    base_with(&[32, 32]);
    let mut bytes = std::fs::read(&base).unwrap();
    let at = find(&bytes, b"token_embd.weight") + "token_embd.weight".len() + 4 + 2 * 8;
    bytes[at..at + 4].copy_from_slice(&200u32.to_le_bytes());
    std::fs::write(&base, bytes).unwrap();
    lora(&[32, 2], &[2, 32]);
    merge(&base, "token_embd.weight");
    assert!(leftovers(d.path(), &["base.gguf", "lora.gguf"]).is_empty());
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).position(|w| w == needle).unwrap()
}

#[test]
fn outputs_that_are_inputs_or_special_files_are_refused_even_with_force() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base.gguf");
    write_base_gguf(&base, "llama", TINY);
    let a = tiny_adapter(&d.path().join("a"), json!({}), vec![]);
    let weights = a.join("adapter_model.safetensors");
    let before = std::fs::read(&weights).unwrap();
    for out in [weights.as_path(), base.as_path()] {
        bin()
            .args(["merge"])
            .arg(&a)
            .args(["--base", base.to_str().unwrap(), "--force", "-o"])
            .arg(out)
            .assert()
            .failure()
            .stderr(contains("is one of the inputs"));
    }
    assert_eq!(std::fs::read(&weights).unwrap(), before);
    #[cfg(unix)]
    {
        let sock = d.path().join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        bin()
            .args(["convert"])
            .arg(&a)
            .args(["--base", base.to_str().unwrap(), "--force", "-o"])
            .arg(&sock)
            .assert()
            .failure()
            .stderr(contains("not a regular file"));
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::symlink_metadata(&sock).unwrap().file_type().is_socket());
    }
}

/// A base and adapter large enough that a merge runs for a noticeable time (about 170 MB of F32).
fn big_case(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let dims = Dims {
        layers: 8,
        hidden: 512,
        heads: 8,
        kv_heads: 4,
        head_dim: 64,
        ffn: 1536,
        vocab: 32000,
        tied: false,
    };
    let base = dir.join("base.gguf");
    write_base_gguf(&base, "llama", dims);
    let mut rng = Rng::new(11);
    let mut tensors = Vec::new();
    for layer in 0..8 {
        for (module, out, inp) in [("q_proj", 512, 512), ("down_proj", 512, 1536)] {
            let block = if module == "down_proj" { "mlp" } else { "self_attn" };
            let p = format!("base_model.model.model.layers.{layer}.{block}.{module}");
            tensors.push(t(&format!("{p}.lora_A.weight"), &[16, inp], rng.vec(16 * inp, 0.05)));
            tensors.push(t(&format!("{p}.lora_B.weight"), &[out, 16], rng.vec(out * 16, 0.05)));
        }
    }
    let cfg = json!({"peft_type": "LORA", "r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "down_proj"]});
    (base, write_adapter(&dir.join("adapter"), &cfg, &tensors))
}

#[cfg(unix)]
fn signal(child: &std::process::Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// SIGINT, SIGTERM, SIGHUP (once, or twice in a row) at spread-out points of a merge and a convert:
/// afterwards either the run finished and its output is complete, or it failed, the output does
/// not exist and no temporary file is left. The next run then succeeds.
#[cfg(unix)]
#[test]
fn signals_at_any_point_leave_a_complete_output_or_none() {
    let d = tempfile::tempdir().unwrap();
    let (base, adapter) = big_case(d.path());
    let exe = assert_cmd::cargo::cargo_bin("ollama-tools");
    let out = d.path().join("out.gguf");
    let (mut interrupted, mut runs) = (0, 0);
    for (k, delay_ms) in [0u64, 5, 10, 20, 40, 80, 160, 320].into_iter().enumerate() {
        for (command, sigs) in [
            ("merge", vec![libc::SIGINT]),
            ("merge", vec![libc::SIGTERM]),
            ("convert", vec![libc::SIGHUP]),
            ("merge", vec![libc::SIGINT, libc::SIGINT]),
        ] {
            let _ = std::fs::remove_file(&out);
            let mut child = Command::new(&exe)
                .args([
                    command,
                    adapter.to_str().unwrap(),
                    "--base",
                    base.to_str().unwrap(),
                    "-o",
                    out.to_str().unwrap(),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(delay_ms + k as u64));
            for s in &sigs {
                signal(&child, *s);
                std::thread::sleep(Duration::from_millis(2));
            }
            let status = child.wait().unwrap();
            runs += 1;
            let left = leftovers(d.path(), &["base.gguf", "adapter", "out.gguf"]);
            assert!(left.is_empty(), "{command} {sigs:?} after {delay_ms} ms left {left:?}");
            if status.success() {
                let h = gguf::read_header(&out).unwrap();
                assert!(!h.tensors.is_empty(), "a finished output is complete");
            } else {
                interrupted += 1;
                assert!(
                    !out.exists(),
                    "{command} {sigs:?} after {delay_ms} ms: interrupted run left an output"
                );
            }
        }
    }
    // Most runs must really be cut (the early delays), or the test proves little.
    assert!(
        interrupted >= runs / 4,
        "only {interrupted} of {runs} runs were interrupted: the case is too fast to test"
    );
    let _ = std::fs::remove_file(&out);
    bin()
        .args(["merge"])
        .arg(&adapter)
        .args(["--base", base.to_str().unwrap(), "-o"])
        .arg(&out)
        .assert()
        .success();
}

/// A file-size limit (`ulimit -f`) kills a writer with SIGXFSZ unless the signal is ignored: the
/// run must instead fail with a message, and leave no temporary file.
#[cfg(unix)]
#[test]
fn a_file_size_limit_gives_an_error_and_no_leftover() {
    let d = tempfile::tempdir().unwrap();
    let (base, adapter) = big_case(d.path());
    let exe = assert_cmd::cargo::cargo_bin("ollama-tools");
    let out = d.path().join("out.gguf");
    let script = format!(
        "ulimit -f 20480; exec '{}' merge '{}' --base '{}' -o '{}'",
        exe.display(),
        adapter.display(),
        base.display(),
        out.display()
    );
    let o = Command::new("bash").args(["-c", &script]).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("out.gguf") && stderr.to_lowercase().contains("too large"),
        "{stderr}"
    );
    assert!(!out.exists());
    assert!(
        leftovers(d.path(), &["base.gguf", "adapter"]).is_empty(),
        "{:?}",
        leftovers(d.path(), &[])
    );
}

/// Files under `dir`, recursively, as paths relative to it (symlinks not followed).
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(read) = std::fs::read_dir(&p) else { continue };
        for e in read {
            let path = e.unwrap().path();
            if std::fs::symlink_metadata(&path).unwrap().is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out
}

/// SIGINT, SIGTERM and SIGHUP while fetch-adapter downloads a slow file from the test Hub: the
/// snapshot never holds a partial file (only the Hub cache's own `.incomplete`, which the next run
/// resumes), the run fails with a message, and the next run completes the download.
#[cfg(unix)]
#[test]
fn signals_during_a_download_leave_only_resumable_state() {
    use common::hub_server::{self, Access, File, HubFaults, Repo};
    let d = tempfile::tempdir().unwrap();
    let a = tiny_adapter(
        &d.path().join("a"),
        json!({}),
        vec![t(
            "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight",
            &[2, 1 << 20],
            vec![0.01; 2 << 20],
        )],
    );
    let files = vec![
        File {
            path: "adapter_config.json".into(),
            bytes: std::fs::read(a.join("adapter_config.json")).unwrap(),
            lfs: false,
        },
        File {
            path: "adapter_model.safetensors".into(),
            bytes: std::fs::read(a.join("adapter_model.safetensors")).unwrap(),
            lfs: true,
        },
    ];
    let hub = hub_server::start(vec![Repo {
        id: "me/big".into(),
        files,
        branch: "main".into(),
        commit: String::new(),
        access: Access::Public,
    }]);
    hub.set_faults(HubFaults {
        slow_ms_per_mb: 150,
        ..Default::default()
    });
    let hf_home = d.path().join("hf");
    let exe = assert_cmd::cargo::cargo_bin("ollama-tools");
    let run = || {
        Command::new(&exe)
            .args(["fetch-adapter", "me/big", "--download-only"])
            .env("HF_ENDPOINT", &hub.url)
            .env("HF_HOME", &hf_home)
            .env_remove("HF_TOKEN")
            .env_remove("HF_HUB_OFFLINE")
            .env_remove("HF_HUB_CACHE")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut interrupted = 0;
    for (sig, delay_ms) in [(libc::SIGINT, 300), (libc::SIGTERM, 500), (libc::SIGHUP, 700)] {
        let child = run();
        std::thread::sleep(Duration::from_millis(delay_ms));
        signal(&child, sig);
        let o = child.wait_with_output().unwrap();
        let files = tree(&hf_home);
        assert!(
            !files
                .iter()
                .any(|f| f.contains("snapshots") && f.ends_with(".safetensors") && !f.contains("incomplete"))
                || o.status.success(),
            "{files:?}"
        );
        if !o.status.success() {
            interrupted += 1;
            assert!(
                String::from_utf8_lossy(&o.stderr).contains("interrupted"),
                "{}",
                String::from_utf8_lossy(&o.stderr)
            );
            let stray: Vec<&String> = files
                .iter()
                .filter(|f| f.contains(".tmp") || (f.starts_with('.') && !f.contains("incomplete")))
                .collect();
            assert!(stray.is_empty(), "{stray:?}");
        }
    }
    assert!(interrupted >= 2, "the download is too fast to interrupt");
    hub.set_faults(HubFaults::default());
    let o = run().wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let snap = tree(&hf_home)
        .into_iter()
        .find(|f| f.contains("snapshots") && f.ends_with("adapter_model.safetensors"))
        .unwrap();
    let got = std::fs::read(hf_home.join(snap)).unwrap();
    assert_eq!(
        got,
        std::fs::read(a.join("adapter_model.safetensors")).unwrap(),
        "resumed to the exact file"
    );
}

/// An adapter path that is a symlink loop says so, not "entity not found".
#[cfg(unix)]
#[test]
fn a_symlink_loop_is_named_as_such() {
    let d = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(d.path().join("b"), d.path().join("a")).unwrap();
    std::os::unix::fs::symlink(d.path().join("a"), d.path().join("b")).unwrap();
    bin()
        .arg("inspect")
        .arg(d.path().join("a"))
        .assert()
        .failure()
        .stderr(contains("symbolic links"));
}
