//! `fetch-adapter` end to end: the built binary against a test Hub (tests/common/hub_server.rs:
//! repo listings, resolve with X-Repo-Commit / ETag / X-Linked-Etag, LFS redirects to another host,
//! Range, the Hub's error codes, cut / corrupted / rate-limited transfers) and the test Ollama.

mod common;
use common::hub_server::{self, Access, File, Hub, HubFaults, Repo};
use common::ollama_server::{self, Config, Fake, RefuseAdapters};
use common::*;
use predicates::str::contains;
use std::path::{Path, PathBuf};

struct Env {
    d: tempfile::TempDir,
    store: PathBuf,
    hf_home: PathBuf,
    adapter_bytes: Vec<u8>,
    config_bytes: Vec<u8>,
}

/// A tiny PEFT adapter's two files, and a store holding the `tiny` base.
fn setup() -> Env {
    let d = tempfile::tempdir().unwrap();
    let (_, store, a) = tiny_world(d.path(), "a");
    Env {
        adapter_bytes: std::fs::read(a.join("adapter_model.safetensors")).unwrap(),
        config_bytes: std::fs::read(a.join("adapter_config.json")).unwrap(),
        hf_home: d.path().join("hf"),
        store,
        d,
    }
}

fn adapter_files(env: &Env, dir: &str) -> Vec<File> {
    let p = |f: &str| if dir.is_empty() { f.to_string() } else { format!("{dir}/{f}") };
    vec![
        File { path: p("adapter_config.json"), bytes: env.config_bytes.clone(), lfs: false },
        File { path: p("adapter_model.safetensors"), bytes: env.adapter_bytes.clone(), lfs: true },
    ]
}

fn repo(id: &str, files: Vec<File>, access: Access) -> Repo {
    Repo { id: id.into(), files, branch: "main".into(), commit: String::new(), access }
}

fn ollama() -> Fake {
    ollama_server::start(Config { version: "0.34.2".into(), models: vec![("tiny".into(), show_json(TINY, "F32", true))], ..Config::default() })
}

/// `fetch-adapter ARGS` with the Hub at `hub`, Ollama at `fake`, the HF cache in the env's HF_HOME.
fn fetch(env: &Env, hub: &Hub, fake: &Fake, args: &[&str]) -> assert_cmd::Command {
    let mut cmd = bin();
    cmd.env("HF_ENDPOINT", &hub.url)
        .env("HF_HOME", &env.hf_home)
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_HUB_CACHE")
        .env("OLLAMA_HOST", &fake.url)
        .env("OLLAMA_MODELS", &env.store)
        .env("OLLAMA_TOOLS_CACHE", env.d.path().join("tools-cache"))
        .arg("fetch-adapter")
        .args(args);
    cmd
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Downloads from the CDN host (not counting the peek at a GGUF file's header).
fn cdn_gets(hub: &Hub) -> usize {
    let cdn = hub.cdn_host.clone();
    hub.requests(move |r| r.method == "GET" && r.host == cdn && r.range.as_deref() != Some("bytes=0-262143"))
}

#[test]
fn fetch_downloads_into_the_hf_cache_creates_the_model_and_a_second_run_downloads_nothing() {
    let env = setup();
    let hub = hub_server::start(vec![repo("me/Tiny-LoRA", adapter_files(&env, ""), Access::Public)]);
    let fake = ollama();
    fetch(&env, &hub, &fake, &["me/Tiny-LoRA", "--base", "tiny"])
        .assert()
        .success()
        .stdout(contains("created tiny-lora"))
        .stdout(contains("merged into the base"));
    // The standard layout: blobs by ETag, refs/main, snapshots/<commit>/ linking into blobs.
    let repo_dir = env.hf_home.join("hub").join("models--me--Tiny-LoRA");
    let commit = std::fs::read_to_string(repo_dir.join("refs/main")).unwrap();
    assert_eq!(commit.len(), 40);
    let blob = repo_dir.join("blobs").join(sha256_hex(&env.adapter_bytes));
    assert_eq!(std::fs::read(&blob).unwrap(), env.adapter_bytes);
    let pointer = repo_dir.join("snapshots").join(&commit).join("adapter_model.safetensors");
    assert_eq!(std::fs::read_link(&pointer).unwrap(), Path::new("../../blobs").join(sha256_hex(&env.adapter_bytes)));
    assert_eq!(std::fs::read(repo_dir.join("snapshots").join(&commit).join("adapter_config.json")).unwrap(), env.config_bytes);
    assert!(fake.model("tiny-lora").is_some());
    assert_eq!(cdn_gets(&hub), 1);

    // Again: the files come from the cache (the listing is asked, no file body is sent again).
    let served = hub.state.lock().unwrap().served_bytes;
    fetch(&env, &hub, &fake, &["me/Tiny-LoRA", "--base", "tiny", "--name", "again"]).assert().success().stdout(contains("reused from an earlier run"));
    assert_eq!(cdn_gets(&hub), 1);
    assert_eq!(hub.state.lock().unwrap().served_bytes, served);

    // The Hub unreachable: the cache answers, with a notice.
    fetch(&env, &hub, &fake, &["me/Tiny-LoRA", "--download-only"])
        .env("HF_ENDPOINT", "http://127.0.0.1:1")
        .assert()
        .success()
        .stderr(contains("cannot reach the Hub"))
        .stderr(contains("using what the Hugging Face cache holds"));

    // Offline: no request at all.
    let before = hub.state.lock().unwrap().log.len();
    fetch(&env, &hub, &fake, &["me/Tiny-LoRA", "--download-only"]).env("HF_HUB_OFFLINE", "1").assert().success().stdout(contains("snapshots"));
    assert_eq!(hub.state.lock().unwrap().log.len(), before);
}

#[test]
fn a_cut_transfer_resumes_where_it_stopped_and_a_partial_file_from_an_earlier_run_is_continued() {
    let env = setup();
    let hub = hub_server::start(vec![repo("me/lora", adapter_files(&env, ""), Access::Public)]);
    let fake = ollama();
    let half = env.adapter_bytes.len() as u64 / 2;
    hub.set_faults(HubFaults { cut_after: Some(half), ..HubFaults::default() });
    fetch(&env, &hub, &fake, &["me/lora", "--download-only"]).assert().success().stderr(contains("broke off")).stderr(contains("resuming"));
    let cdn = hub.cdn_host.clone();
    assert_eq!(hub.requests(move |r| r.host == cdn && r.range.as_deref().is_some_and(|r| r.starts_with("bytes=") && !r.starts_with("bytes=0-"))), 1, "the second request asks for the rest");

    // A partial file left by an earlier run (ours or huggingface_hub's) is continued, not restarted.
    let env = setup();
    let hub = hub_server::start(vec![repo("me/lora", adapter_files(&env, ""), Access::Public)]);
    let blobs = env.hf_home.join("hub/models--me--lora/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let sha = sha256_hex(&env.adapter_bytes);
    std::fs::write(blobs.join(format!("{sha}.incomplete")), &env.adapter_bytes[..half as usize]).unwrap();
    fetch(&env, &hub, &fake, &["me/lora", "--download-only"]).assert().success();
    assert_eq!(std::fs::read(blobs.join(&sha)).unwrap(), env.adapter_bytes);
    let cdn = hub.cdn_host.clone();
    let want = format!("bytes={half}-");
    assert_eq!(hub.requests(move |r| r.host == cdn && r.range.as_deref() == Some(want.as_str())), 1);
}

#[test]
fn a_corrupted_download_is_deleted_and_refused() {
    let env = setup();
    let hub = hub_server::start(vec![repo("me/lora", adapter_files(&env, ""), Access::Public)]);
    let fake = ollama();
    // The config (kept in git: checked against its git blob id) comes first.
    hub.set_faults(HubFaults { corrupt_next: true, ..HubFaults::default() });
    fetch(&env, &hub, &fake, &["me/lora", "--base", "tiny"])
        .assert()
        .failure()
        .stderr(contains("adapter_config.json downloaded with git blob id"))
        .stderr(contains("the file was deleted"));
    // Then the weights (LFS: checked against their sha256), the config now in the cache.
    fetch(&env, &hub, &fake, &["me/lora", "--subfolder", ".", "--download-only"]).assert().success();
    let repo_dir = env.hf_home.join("hub/models--me--lora");
    let sha = sha256_hex(&env.adapter_bytes);
    std::fs::remove_file(repo_dir.join("blobs").join(&sha)).unwrap();
    hub.set_faults(HubFaults { corrupt_next: true, ..HubFaults::default() });
    fetch(&env, &hub, &fake, &["me/lora", "--base", "tiny"])
        .assert()
        .failure()
        .stderr(contains("adapter_model.safetensors downloaded with sha256"))
        .stderr(contains(format!("the Hub says it is {sha}: the file was deleted")));
    let left: Vec<String> = std::fs::read_dir(repo_dir.join("blobs")).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(left.iter().all(|n| !n.starts_with(&sha)), "{left:?}");
    assert!(fake.model("lora").is_none());
}

#[test]
fn the_hubs_errors_say_what_happened_and_what_to_do() {
    let env = setup();
    let hub = hub_server::start(vec![
        repo("me/lora", adapter_files(&env, ""), Access::Public),
        repo("corp/gated-lora", adapter_files(&env, ""), Access::Gated),
    ]);
    let fake = ollama();
    fetch(&env, &hub, &fake, &["me/nope", "--base", "tiny"]).assert().failure().stderr(contains("repository `me/nope` not found")).stderr(contains("HF_TOKEN"));
    fetch(&env, &hub, &fake, &["me/lora", "--revision", "v9", "--base", "tiny"]).assert().failure().stderr(contains("revision `v9` of `me/lora` not found"));
    fetch(&env, &hub, &fake, &["corp/gated-lora", "--base", "tiny"])
        .assert()
        .failure()
        .stderr(contains("is gated"))
        .stderr(contains(format!("accept its conditions at {}/corp/gated-lora", hub.url)));
    hub.set_faults(HubFaults { rate_limit: 1, ..HubFaults::default() });
    fetch(&env, &hub, &fake, &["me/lora", "--base", "tiny"]).assert().failure().stderr(contains("rate-limiting")).stderr(contains("wait 7 seconds"));
    bin()
        .env("HF_ENDPOINT", "http://127.0.0.1:1")
        .env("HF_HOME", &env.hf_home)
        .args(["fetch-adapter", "me/lora", "--download-only"])
        .assert()
        .failure()
        .stderr(contains("cannot reach the Hub"))
        .stderr(contains("HF_HUB_OFFLINE=1"));
    fetch(&env, &hub, &fake, &["not-a-repo-id"]).assert().failure().stderr(contains("ORG/NAME"));
}

#[test]
fn a_token_opens_a_gated_repo_and_never_reaches_the_cdn() {
    let env = setup();
    let hub = hub_server::start(vec![repo("corp/gated-lora", adapter_files(&env, ""), Access::Gated)]);
    hub.add_token("hf_secret");
    let fake = ollama();
    fetch(&env, &hub, &fake, &["corp/gated-lora", "--base", "tiny"]).env("HF_TOKEN", "hf_secret").assert().success().stdout(contains("created gated-lora"));
    let log = hub.state.lock().unwrap().log.iter().map(|r| (r.host.clone(), r.auth.clone())).collect::<Vec<_>>();
    assert!(log.iter().any(|(h, a)| h != &hub.cdn_host && a.as_deref() == Some("Bearer hf_secret")));
    assert!(log.iter().any(|(h, _)| h == &hub.cdn_host), "the LFS file came from the CDN host");
    assert!(log.iter().filter(|(h, _)| h == &hub.cdn_host).all(|(_, a)| a.is_none()), "{log:?}");
    // The token file `huggingface-cli login` writes works the same.
    let env2 = setup();
    std::fs::create_dir_all(&env2.hf_home).unwrap();
    std::fs::write(env2.hf_home.join("token"), "hf_secret\n").unwrap();
    fetch(&env2, &hub, &fake, &["corp/gated-lora", "--download-only"]).assert().success();
}

#[test]
fn several_adapters_are_listed_and_chosen_with_subfolder_and_non_adapters_are_explained() {
    let env = setup();
    let mut files = adapter_files(&env, "");
    files.extend(adapter_files(&env, "checkpoint-500"));
    files.push(File { path: "lora-f16.gguf".into(), bytes: b"GGUF-not-really".to_vec(), lfs: true });
    let hub = hub_server::start(vec![
        repo("me/many", files, Access::Public),
        repo("me/full", vec![File { path: "config.json".into(), bytes: b"{}".to_vec(), lfs: false }, File { path: "model.safetensors".into(), bytes: vec![0; 64], lfs: true }], Access::Public),
        repo("me/pickle", vec![File { path: "adapter_config.json".into(), bytes: env.config_bytes.clone(), lfs: false }, File { path: "adapter_model.bin".into(), bytes: vec![0; 64], lfs: true }], Access::Public),
    ]);
    let fake = ollama();
    fetch(&env, &hub, &fake, &["me/many", "--base", "tiny"])
        .assert()
        .failure()
        .stderr(contains("holds 3 adapters"))
        .stderr(contains("--subfolder checkpoint-500"))
        .stderr(contains("--subfolder lora-f16.gguf"))
        .stderr(contains("--subfolder ."));
    fetch(&env, &hub, &fake, &["me/many", "--subfolder", "checkpoint-500", "--download-only"]).assert().success().stdout(contains("checkpoint-500"));
    assert_eq!(cdn_gets(&hub), 1, "only the chosen adapter's files, not the whole repo");
    fetch(&env, &hub, &fake, &["me/full", "--base", "tiny"]).assert().failure().stderr(contains("holds a full model, not a LoRA adapter"));
    fetch(&env, &hub, &fake, &["me/pickle", "--base", "tiny"]).assert().failure().stderr(contains("adapter_model.bin")).stderr(contains("safe_serialization=True"));
}

#[test]
fn without_base_the_adapters_own_base_is_suggested_and_taken_with_yes() {
    let env = setup();
    let hub = hub_server::start(vec![repo("me/lora", adapter_files(&env, ""), Access::Public)]);
    let fake = ollama_server::start(Config {
        version: "0.33.0".into(),
        refuse_adapters: RefuseAdapters::Never,
        models: vec![("llama3.2:1b".into(), show_json(TINY, "F32", true))],
        ..Config::default()
    });
    fetch(&env, &hub, &fake, &["me/lora"]).assert().failure().stderr(contains("meta-llama/Llama-3.2-1B")).stderr(contains("--base llama3.2:1b"));
    fetch(&env, &hub, &fake, &["me/lora", "--yes"]).assert().success().stdout(contains("adapter layer"));
    let req = fake.create_requests().pop().unwrap();
    assert_eq!(req["from"], "llama3.2:1b");
    assert_eq!(req["model"], "lora");
}

#[test]
fn out_gguf_leaves_the_merged_model_for_llama_cpp() {
    let env = setup();
    let hub = hub_server::start(vec![repo("me/lora", adapter_files(&env, ""), Access::Public)]);
    let fake = ollama();
    let out = env.d.path().join("merged.gguf");
    fetch(&env, &hub, &fake, &["me/lora", "--base", "tiny", "--out-gguf", out.to_str().unwrap()]).assert().success();
    let req = fake.create_requests().pop().unwrap();
    assert_eq!(format!("sha256:{}", sha256_hex(&std::fs::read(&out).unwrap())), req["files"]["model.gguf"].as_str().unwrap());
    fetch(&env, &hub, &fake, &["me/lora", "--base", "tiny", "--name", "x", "--out-gguf", out.to_str().unwrap()]).assert().failure().stderr(contains("--out-gguf"));
}

#[test]
fn offline_without_the_files_in_the_cache_says_so_and_asks_nothing() {
    let env = setup();
    let hub = hub_server::start(vec![repo("me/lora", adapter_files(&env, ""), Access::Public)]);
    let fake = ollama();
    fetch(&env, &hub, &fake, &["me/lora", "--base", "tiny"])
        .env("HF_HUB_OFFLINE", "1")
        .assert()
        .failure()
        .stderr(contains("HF_HUB_OFFLINE is set"))
        .stderr(contains("not in the Hugging Face cache"));
    assert!(hub.state.lock().unwrap().log.is_empty());
}

#[test]
fn a_file_another_tool_left_in_the_cache_is_used_and_ours_serves_it() {
    // As huggingface_hub lays it out: the blob by ETag, a snapshot link, refs/main.
    let env = setup();
    let hub = hub_server::start(vec![repo("me/lora", adapter_files(&env, ""), Access::Public)]);
    let fake = ollama();
    let commit = hub.commit("me/lora");
    let dir = env.hf_home.join("hub/models--me--lora");
    let sha = sha256_hex(&env.adapter_bytes);
    std::fs::create_dir_all(dir.join("blobs")).unwrap();
    std::fs::write(dir.join("blobs").join(&sha), &env.adapter_bytes).unwrap();
    fetch(&env, &hub, &fake, &["me/lora", "--download-only"]).assert().success();
    assert_eq!(cdn_gets(&hub), 0, "the weights were not downloaded again");
    let snap = dir.join("snapshots").join(&commit);
    assert_eq!(std::fs::read(snap.join("adapter_model.safetensors")).unwrap(), env.adapter_bytes);
    assert_eq!(std::fs::read_to_string(dir.join("refs/main")).unwrap(), commit);
}

#[test]
fn at_a_terminal_the_user_picks_the_adapter() {
    let env = setup();
    let mut files = adapter_files(&env, "");
    files.extend(adapter_files(&env, "checkpoint-500"));
    let hub = hub_server::start(vec![repo("me/many", files, Access::Public)]);
    let home = env.hf_home.to_str().unwrap().to_string();
    let vars = [("HF_ENDPOINT", hub.url.as_str()), ("HF_HOME", home.as_str())];
    // Down, then Enter: the second entry.
    let (ok, shown) = in_terminal(&["fetch-adapter", "me/many", "--download-only"], &vars, "which one?", "\x1b[B\r");
    assert!(ok, "{shown}");
    assert!(shown.contains("the PEFT adapter in checkpoint-500/") && shown.contains("snapshots"), "{shown}");
    assert!(env.hf_home.join("hub/models--me--many/snapshots").join(hub.commit("me/many")).join("checkpoint-500/adapter_model.safetensors").exists());
}

#[test]
fn a_gguf_adapter_in_the_repo_is_fetched_and_used_as_is() {
    let env = setup();
    let gguf = env.d.path().join("lora.gguf");
    let base_gguf = env.d.path().join("base.gguf");
    let peft = env.d.path().join("a");
    bin().arg("convert").arg(&peft).arg("--base").arg(&base_gguf).arg("-o").arg(&gguf).assert().success();
    let bytes = std::fs::read(&gguf).unwrap();
    let mut files = adapter_files(&env, "");
    files.push(File { path: "gguf/lora-f16.gguf".into(), bytes: bytes.clone(), lfs: true });
    let hub = hub_server::start(vec![repo("me/lora", files, Access::Public)]);
    let fake = ollama_server::start(Config {
        version: "0.33.0".into(),
        refuse_adapters: RefuseAdapters::Never,
        models: vec![("tiny".into(), show_json(TINY, "F32", true))],
        ..Config::default()
    });
    fetch(&env, &hub, &fake, &["me/lora", "--subfolder", "gguf/lora-f16.gguf", "--base", "tiny"]).assert().success().stdout(contains("adapter layer"));
    let req = fake.create_requests().pop().unwrap();
    assert_eq!(req["adapters"]["adapter.gguf"], format!("sha256:{}", sha256_hex(&bytes)));
    assert_eq!(cdn_gets(&hub), 1, "only the GGUF file");
}

#[test]
fn a_full_model_gguf_beside_the_adapter_is_told_apart_by_its_header_and_left_out() {
    use ollama_tools::gguf::{GgmlType, TensorSpec, Value, Writer};
    let env = setup();
    // A "full model": general.type = model, and a tensor of 1 MiB that must not be downloaded.
    let model = env.d.path().join("model.gguf");
    let kvs = vec![("general.architecture".to_string(), Value::String("llama".into())), ("general.type".to_string(), Value::String("model".into()))];
    let specs = vec![TensorSpec { name: "token_embd.weight".into(), ne: vec![256, 1024], ty: GgmlType::F32 }];
    let mut w = Writer::new(std::fs::File::create(&model).unwrap(), &kvs, &specs).unwrap();
    w.write_tensor(&vec![0u8; 256 * 1024 * 4]).unwrap();
    w.finish().unwrap();
    let mut files = adapter_files(&env, "");
    files.push(File { path: "model-f32.gguf".into(), bytes: std::fs::read(&model).unwrap(), lfs: true });
    let hub = hub_server::start(vec![repo("me/lora", files, Access::Public)]);
    let fake = ollama();
    fetch(&env, &hub, &fake, &["me/lora", "--base", "tiny"])
        .assert()
        .success()
        .stderr(contains("not adapters, left out: model-f32.gguf (general.type `model`)"));
    assert!(hub.state.lock().unwrap().served_bytes < 512 * 1024, "only the header of the model was read");
}
