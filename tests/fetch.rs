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
    let p = |f: &str| {
        if dir.is_empty() {
            f.to_string()
        } else {
            format!("{dir}/{f}")
        }
    };
    vec![
        File {
            path: p("adapter_config.json"),
            bytes: env.config_bytes.clone(),
            lfs: false,
        },
        File {
            path: p("adapter_model.safetensors"),
            bytes: env.adapter_bytes.clone(),
            lfs: true,
        },
    ]
}

fn repo(id: &str, files: Vec<File>, access: Access) -> Repo {
    Repo {
        id: id.into(),
        files,
        branch: "main".into(),
        commit: String::new(),
        access,
    }
}

fn ollama() -> Fake {
    ollama_server::start(Config {
        version: "0.34.2".into(),
        models: vec![("tiny".into(), show_json(TINY, "F32", true))],
        ..Config::default()
    })
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
        // Retries wait milliseconds; a Retry-After longer than that is not waited for.
        .env("OLLAMA_TOOLS_RETRY_MAX_WAIT", "0.01")
        .env_remove("OLLAMA_TOOLS_RETRIES")
        .env_remove("OLLAMA_TOOLS_TIMEOUT")
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
    let pointer = repo_dir
        .join("snapshots")
        .join(&commit)
        .join("adapter_model.safetensors");
    assert_eq!(
        std::fs::read_link(&pointer).unwrap(),
        Path::new("../../blobs").join(sha256_hex(&env.adapter_bytes))
    );
    assert_eq!(
        std::fs::read(repo_dir.join("snapshots").join(&commit).join("adapter_config.json")).unwrap(),
        env.config_bytes
    );
    assert!(fake.model("tiny-lora").is_some());
    assert_eq!(cdn_gets(&hub), 1);

    // Again: the files come from the cache (the listing is asked, no file body is sent again).
    let served = hub.state.lock().unwrap().served_bytes;
    fetch(
        &env,
        &hub,
        &fake,
        &["me/Tiny-LoRA", "--base", "tiny", "--name", "again"],
    )
    .assert()
    .success()
    .stdout(contains("reused from an earlier run"));
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
    fetch(&env, &hub, &fake, &["me/Tiny-LoRA", "--download-only"])
        .env("HF_HUB_OFFLINE", "1")
        .assert()
        .success()
        .stdout(contains("snapshots"));
    assert_eq!(hub.state.lock().unwrap().log.len(), before);
}

#[test]
fn a_cut_transfer_resumes_where_it_stopped_and_a_partial_file_from_an_earlier_run_is_continued() {
    let env = setup();
    let hub = hub_server::start(vec![repo("me/lora", adapter_files(&env, ""), Access::Public)]);
    let fake = ollama();
    let half = env.adapter_bytes.len() as u64 / 2;
    hub.set_faults(HubFaults {
        cut_after: Some(half),
        ..HubFaults::default()
    });
    fetch(&env, &hub, &fake, &["me/lora", "--download-only"])
        .assert()
        .success()
        .stderr(contains("broke off"))
        .stderr(contains("resuming"));
    let cdn = hub.cdn_host.clone();
    assert_eq!(
        hub.requests(move |r| r.host == cdn
            && r.range
                .as_deref()
                .is_some_and(|r| r.starts_with("bytes=") && !r.starts_with("bytes=0-"))),
        1,
        "the second request asks for the rest"
    );

    // A partial file left by an earlier run (ours or huggingface_hub's) is continued, not restarted.
    let env = setup();
    let hub = hub_server::start(vec![repo("me/lora", adapter_files(&env, ""), Access::Public)]);
    let blobs = env.hf_home.join("hub/models--me--lora/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let sha = sha256_hex(&env.adapter_bytes);
    std::fs::write(
        blobs.join(format!("{sha}.incomplete")),
        &env.adapter_bytes[..half as usize],
    )
    .unwrap();
    fetch(&env, &hub, &fake, &["me/lora", "--download-only"])
        .assert()
        .success();
    assert_eq!(std::fs::read(blobs.join(&sha)).unwrap(), env.adapter_bytes);
    let cdn = hub.cdn_host.clone();
    let want = format!("bytes={half}-");
    assert_eq!(
        hub.requests(move |r| r.host == cdn && r.range.as_deref() == Some(want.as_str())),
        1
    );
}

#[test]
fn a_corrupted_download_is_deleted_and_refused() {
    let env = setup();
    let hub = hub_server::start(vec![repo("me/lora", adapter_files(&env, ""), Access::Public)]);
    let fake = ollama();
    // The config (kept in git: checked against its git blob id) comes first.
    hub.set_faults(HubFaults {
        corrupt_next: true,
        ..HubFaults::default()
    });
    fetch(&env, &hub, &fake, &["me/lora", "--base", "tiny"])
        .assert()
        .failure()
        .stderr(contains("adapter_config.json downloaded with git blob id"))
        .stderr(contains("the file was deleted"));
    // Then the weights (LFS: checked against their sha256), the config now in the cache.
    fetch(&env, &hub, &fake, &["me/lora", "--subfolder", ".", "--download-only"])
        .assert()
        .success();
    let repo_dir = env.hf_home.join("hub/models--me--lora");
    let sha = sha256_hex(&env.adapter_bytes);
    std::fs::remove_file(repo_dir.join("blobs").join(&sha)).unwrap();
    hub.set_faults(HubFaults {
        corrupt_next: true,
        ..HubFaults::default()
    });
    fetch(&env, &hub, &fake, &["me/lora", "--base", "tiny"])
        .assert()
        .failure()
        .stderr(contains("adapter_model.safetensors downloaded with sha256"))
        .stderr(contains(format!("the Hub says it is {sha}: the file was deleted")));
    let left: Vec<String> = std::fs::read_dir(repo_dir.join("blobs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
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
    fetch(&env, &hub, &fake, &["me/nope", "--base", "tiny"])
        .assert()
        .failure()
        .stderr(contains("repository `me/nope` not found"))
        .stderr(contains("HF_TOKEN"));
    fetch(&env, &hub, &fake, &["me/lora", "--revision", "v9", "--base", "tiny"])
        .assert()
        .failure()
        .stderr(contains("revision `v9` of `me/lora` not found"));
    fetch(&env, &hub, &fake, &["corp/gated-lora", "--base", "tiny"])
        .assert()
        .failure()
        .stderr(contains("is gated"))
        .stderr(contains(format!(
            "accept its conditions at {}/corp/gated-lora",
            hub.url
        )));
    hub.set_faults(HubFaults {
        rate_limit: 1,
        ..HubFaults::default()
    });
    fetch(&env, &hub, &fake, &["me/lora", "--base", "tiny"])
        .assert()
        .failure()
        .stderr(contains("rate-limiting"))
        .stderr(contains("wait 7 seconds"));
    bin()
        .env("HF_ENDPOINT", "http://127.0.0.1:1")
        .env("HF_HOME", &env.hf_home)
        .args(["fetch-adapter", "me/lora", "--download-only"])
        .assert()
        .failure()
        .stderr(contains("cannot reach the Hub"))
        .stderr(contains("HF_HUB_OFFLINE=1"));
    fetch(&env, &hub, &fake, &["not-a-repo-id"])
        .assert()
        .failure()
        .stderr(contains("ORG/NAME"));
}

#[test]
fn the_hubs_errors_have_a_kind_a_library_caller_can_match() {
    use ollama_tools::ErrorKind;
    let env = setup();
    let hub = hub_server::start(vec![
        repo("me/lora", adapter_files(&env, ""), Access::Public),
        repo("corp/gated-lora", adapter_files(&env, ""), Access::Gated),
    ]);
    let cache = tempfile::tempdir().unwrap();
    let lib = client(&hub.url, cache.path());
    let kind = |repo: &str, revision: &str| {
        let err = fetch_adapter(&lib, repo, revision, None, &Silent).unwrap_err();
        (err.kind(), err.to_string())
    };
    let (k, text) = kind("me/nope", "main");
    assert_eq!(k, ErrorKind::NotFound, "{text}");
    let (k, text) = kind("me/lora", "v9");
    assert_eq!(k, ErrorKind::NotFound, "{text}");
    let (k, text) = kind("corp/gated-lora", "main");
    assert_eq!(k, ErrorKind::Unauthorized, "{text}");
    // Its Retry-After (7 s) is longer than this client waits: no retry, and the kind says so.
    hub.set_faults(HubFaults {
        rate_limit: 1,
        ..HubFaults::default()
    });
    let (k, text) = kind("me/lora", "main");
    assert_eq!(k, ErrorKind::RateLimited, "{text}");
    assert!(text.contains("rate-limiting"), "{text}");
    let (k, text) = kind("not-a-repo-id", "main");
    assert_eq!(k, ErrorKind::Usage, "{text}");
    let nobody = client("http://127.0.0.1:1", cache.path());
    let err = fetch_adapter(&nobody, "me/lora", "main", None, &Silent).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Server, "{err}");
    // And the adapter itself comes once the Hub lets it.
    assert!(fetch_adapter(&lib, "me/lora", "main", None, &Silent).is_ok());
}

#[test]
fn a_token_opens_a_gated_repo_and_never_reaches_the_cdn() {
    let env = setup();
    let hub = hub_server::start(vec![repo("corp/gated-lora", adapter_files(&env, ""), Access::Gated)]);
    hub.add_token("hf_secret");
    let fake = ollama();
    fetch(&env, &hub, &fake, &["corp/gated-lora", "--base", "tiny"])
        .env("HF_TOKEN", "hf_secret")
        .assert()
        .success()
        .stdout(contains("created gated-lora"));
    let log = hub
        .state
        .lock()
        .unwrap()
        .log
        .iter()
        .map(|r| (r.host.clone(), r.auth.clone()))
        .collect::<Vec<_>>();
    assert!(
        log.iter()
            .any(|(h, a)| h != &hub.cdn_host && a.as_deref() == Some("Bearer hf_secret"))
    );
    assert!(
        log.iter().any(|(h, _)| h == &hub.cdn_host),
        "the LFS file came from the CDN host"
    );
    assert!(
        log.iter().filter(|(h, _)| h == &hub.cdn_host).all(|(_, a)| a.is_none()),
        "{log:?}"
    );
    // The token file `huggingface-cli login` writes works the same.
    let env2 = setup();
    std::fs::create_dir_all(&env2.hf_home).unwrap();
    std::fs::write(env2.hf_home.join("token"), "hf_secret\n").unwrap();
    fetch(&env2, &hub, &fake, &["corp/gated-lora", "--download-only"])
        .assert()
        .success();
}

#[test]
fn several_adapters_are_listed_and_chosen_with_subfolder_and_non_adapters_are_explained() {
    let env = setup();
    let mut files = adapter_files(&env, "");
    files.extend(adapter_files(&env, "checkpoint-500"));
    files.push(File {
        path: "lora-f16.gguf".into(),
        bytes: b"GGUF-not-really".to_vec(),
        lfs: true,
    });
    let hub = hub_server::start(vec![
        repo("me/many", files, Access::Public),
        repo(
            "me/full",
            vec![
                File {
                    path: "config.json".into(),
                    bytes: b"{}".to_vec(),
                    lfs: false,
                },
                File {
                    path: "model.safetensors".into(),
                    bytes: vec![0; 64],
                    lfs: true,
                },
            ],
            Access::Public,
        ),
        repo(
            "me/pickle",
            vec![
                File {
                    path: "adapter_config.json".into(),
                    bytes: env.config_bytes.clone(),
                    lfs: false,
                },
                File {
                    path: "adapter_model.bin".into(),
                    bytes: vec![0; 64],
                    lfs: true,
                },
            ],
            Access::Public,
        ),
    ]);
    let fake = ollama();
    fetch(&env, &hub, &fake, &["me/many", "--base", "tiny"])
        .assert()
        .failure()
        .stderr(contains("holds 3 adapters"))
        .stderr(contains("--subfolder checkpoint-500"))
        .stderr(contains("--subfolder lora-f16.gguf"))
        .stderr(contains("--subfolder ."));
    fetch(
        &env,
        &hub,
        &fake,
        &["me/many", "--subfolder", "checkpoint-500", "--download-only"],
    )
    .assert()
    .success()
    .stdout(contains("checkpoint-500"));
    assert_eq!(cdn_gets(&hub), 1, "only the chosen adapter's files, not the whole repo");
    fetch(&env, &hub, &fake, &["me/full", "--base", "tiny"])
        .assert()
        .failure()
        .stderr(contains("holds a full model, not a LoRA adapter"));
    fetch(&env, &hub, &fake, &["me/pickle", "--base", "tiny"])
        .assert()
        .failure()
        .stderr(contains("adapter_model.bin"))
        .stderr(contains("safe_serialization=True"));
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
    fetch(&env, &hub, &fake, &["me/lora"])
        .assert()
        .failure()
        .stderr(contains("meta-llama/Llama-3.2-1B"))
        .stderr(contains("--base llama3.2:1b"));
    fetch(&env, &hub, &fake, &["me/lora", "--yes"])
        .assert()
        .success()
        .stdout(contains("adapter layer"));
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
    fetch(
        &env,
        &hub,
        &fake,
        &["me/lora", "--base", "tiny", "--out-gguf", out.to_str().unwrap()],
    )
    .assert()
    .success();
    let req = fake.create_requests().pop().unwrap();
    assert_eq!(
        format!("sha256:{}", sha256_hex(&std::fs::read(&out).unwrap())),
        req["files"]["model.gguf"].as_str().unwrap()
    );
    fetch(
        &env,
        &hub,
        &fake,
        &[
            "me/lora",
            "--base",
            "tiny",
            "--name",
            "x",
            "--out-gguf",
            out.to_str().unwrap(),
        ],
    )
    .assert()
    .failure()
    .stderr(contains("--out-gguf"));
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
    fetch(&env, &hub, &fake, &["me/lora", "--download-only"])
        .assert()
        .success();
    assert_eq!(cdn_gets(&hub), 0, "the weights were not downloaded again");
    let snap = dir.join("snapshots").join(&commit);
    assert_eq!(
        std::fs::read(snap.join("adapter_model.safetensors")).unwrap(),
        env.adapter_bytes
    );
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
    let (ok, shown) = in_terminal(
        &["fetch-adapter", "me/many", "--download-only"],
        &vars,
        "which one?",
        "\x1b[B\r",
    );
    assert!(ok, "{shown}");
    assert!(
        shown.contains("the PEFT adapter in checkpoint-500/") && shown.contains("snapshots"),
        "{shown}"
    );
    assert!(
        env.hf_home
            .join("hub/models--me--many/snapshots")
            .join(hub.commit("me/many"))
            .join("checkpoint-500/adapter_model.safetensors")
            .exists()
    );
}

#[test]
fn a_gguf_adapter_in_the_repo_is_fetched_and_used_as_is() {
    let env = setup();
    let gguf = env.d.path().join("lora.gguf");
    let base_gguf = env.d.path().join("base.gguf");
    let peft = env.d.path().join("a");
    bin()
        .arg("convert")
        .arg(&peft)
        .arg("--base")
        .arg(&base_gguf)
        .arg("-o")
        .arg(&gguf)
        .assert()
        .success();
    let bytes = std::fs::read(&gguf).unwrap();
    let mut files = adapter_files(&env, "");
    files.push(File {
        path: "gguf/lora-f16.gguf".into(),
        bytes: bytes.clone(),
        lfs: true,
    });
    let hub = hub_server::start(vec![repo("me/lora", files, Access::Public)]);
    let fake = ollama_server::start(Config {
        version: "0.33.0".into(),
        refuse_adapters: RefuseAdapters::Never,
        models: vec![("tiny".into(), show_json(TINY, "F32", true))],
        ..Config::default()
    });
    fetch(
        &env,
        &hub,
        &fake,
        &["me/lora", "--subfolder", "gguf/lora-f16.gguf", "--base", "tiny"],
    )
    .assert()
    .success()
    .stdout(contains("adapter layer"));
    let req = fake.create_requests().pop().unwrap();
    assert_eq!(
        req["adapters"]["adapter.gguf"],
        format!("sha256:{}", sha256_hex(&bytes))
    );
    assert_eq!(cdn_gets(&hub), 1, "only the GGUF file");
}

#[test]
fn a_full_model_gguf_beside_the_adapter_is_told_apart_by_its_header_and_left_out() {
    use ollama_tools::formats::gguf::{GgmlType, TensorSpec, Value, Writer};
    let env = setup();
    // A "full model": general.type = model, and a tensor of 1 MiB that must not be downloaded.
    let model = env.d.path().join("model.gguf");
    let kvs = vec![
        ("general.architecture".to_string(), Value::String("llama".into())),
        ("general.type".to_string(), Value::String("model".into())),
    ];
    let specs = vec![TensorSpec {
        name: "token_embd.weight".into(),
        ne: vec![256, 1024],
        ty: GgmlType::F32,
    }];
    let mut w = Writer::new(std::fs::File::create(&model).unwrap(), &kvs, &specs).unwrap();
    w.write_tensor(&vec![0u8; 256 * 1024 * 4]).unwrap();
    w.finish().unwrap();
    let mut files = adapter_files(&env, "");
    files.push(File {
        path: "model-f32.gguf".into(),
        bytes: std::fs::read(&model).unwrap(),
        lfs: true,
    });
    let hub = hub_server::start(vec![repo("me/lora", files, Access::Public)]);
    let fake = ollama();
    fetch(&env, &hub, &fake, &["me/lora", "--base", "tiny"])
        .assert()
        .success()
        .stderr(contains(
            "not adapters, left out: model-f32.gguf (general.type `model`)",
        ));
    assert!(
        hub.state.lock().unwrap().served_bytes < 512 * 1024,
        "only the header of the model was read"
    );
}

#[test]
fn a_revision_that_is_a_path_is_refused_before_anything_is_asked() {
    let env = setup();
    let hub = hub_server::start(vec![repo("me/lora", adapter_files(&env, ""), Access::Public)]);
    let fake = ollama();
    for rev in [
        "../../..",
        "/etc",
        "a/../../b",
        "main\\..\\..",
        "ma\x1bin",
        "",
        "a//b",
        ".hidden",
        "x.lock",
        "a b",
    ] {
        fetch(&env, &hub, &fake, &["me/lora", "--download-only", "--revision", rev])
            .assert()
            .failure()
            .stderr(contains("is not a revision"))
            .stderr(contains("40-hex commit"));
    }
    assert!(hub.log().is_empty(), "{:?}", hub.log());
    assert!(!env.hf_home.exists() || std::fs::read_dir(env.hf_home.join("hub")).map_or(true, |d| d.count() == 0));
    // Branch and tag names with slashes, and commits, are revisions.
    let commit = hub.commit("me/lora");
    fetch(
        &env,
        &hub,
        &fake,
        &["me/lora", "--download-only", "--revision", &commit],
    )
    .assert()
    .success();
}

/// An LFS-only repo whose weights take about a second to send: `--download-only` never parses them.
fn slow_repo(env: &Env) -> (Hub, Vec<u8>) {
    let weights: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let files = vec![
        File {
            path: "adapter_config.json".into(),
            bytes: env.config_bytes.clone(),
            lfs: false,
        },
        File {
            path: "adapter_model.safetensors".into(),
            bytes: weights.clone(),
            lfs: true,
        },
    ];
    let hub = hub_server::start(vec![repo("me/lora", files, Access::Public)]);
    hub.set_faults(HubFaults {
        slow_ms_per_mb: 300,
        ..HubFaults::default()
    });
    (hub, weights)
}

#[test]
fn two_runs_fetching_the_same_file_take_turns_and_download_it_once() {
    let env = setup();
    let (hub, weights) = slow_repo(&env);
    let fake = ollama();
    let spawn = || {
        fetch(&env, &hub, &fake, &["me/lora", "--download-only"])
            .timeout(std::time::Duration::from_secs(120))
            .output()
            .unwrap()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(spawn);
        let b = s.spawn(spawn);
        (a.join().unwrap(), b.join().unwrap())
    });
    for out in [&a, &b] {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let waited = |o: &std::process::Output| {
        String::from_utf8_lossy(&o.stderr).contains("another run is downloading adapter_model.safetensors")
    };
    assert!(waited(&a) != waited(&b), "one run waited for the other");
    let sha = sha256_hex(&weights);
    assert_eq!(
        cdn_gets(&hub),
        1,
        "one download; the other run waited for it and used it"
    );
    let blobs = env.hf_home.join("hub/models--me--lora/blobs");
    assert_eq!(std::fs::read(blobs.join(&sha)).unwrap(), weights);
    assert!(!blobs.join(format!("{sha}.incomplete")).exists());
    let locks = env.hf_home.join("hub/.locks/models--me--lora");
    assert_eq!(
        std::fs::read_dir(&locks).unwrap().count(),
        0,
        "the lock is gone with its run"
    );
}

#[test]
fn a_lock_left_by_a_run_that_ended_or_stopped_is_taken_over() {
    let env = setup();
    let (hub, weights) = slow_repo(&env);
    let fake = ollama();
    let locks = env.hf_home.join("hub/.locks/models--me--lora");
    std::fs::create_dir_all(&locks).unwrap();
    let lock = locks.join(format!("{}.ollama-tools.lock", sha256_hex(&weights)));
    let mut ended = std::process::Command::new("true").spawn().unwrap();
    ended.wait().unwrap();
    let cases = [
        // Its PID is gone (a crash): taken at once.
        (ended.id(), None, "120"),
        // A live PID (this test's) whose lock has not been touched for an hour.
        (std::process::id(), Some(std::time::Duration::from_secs(3600)), "120"),
        // Touched just now, but never again: taken once it has been quiet for 2 idle timeouts.
        (std::process::id(), None, "1"),
    ];
    for (pid, age, timeout) in cases {
        std::fs::write(&lock, format!("{pid} 1\n")).unwrap();
        if let Some(age) = age {
            std::fs::File::options()
                .write(true)
                .open(&lock)
                .unwrap()
                .set_modified(std::time::SystemTime::now() - age)
                .unwrap();
        }
        let blobs = env.hf_home.join("hub/models--me--lora/blobs");
        let _ = std::fs::remove_dir_all(&blobs);
        let started = std::time::Instant::now();
        fetch(&env, &hub, &fake, &["me/lora", "--download-only"])
            .env("OLLAMA_TOOLS_TIMEOUT", timeout)
            .timeout(std::time::Duration::from_secs(60))
            .assert()
            .success()
            .stderr(contains("took over the lock"));
        assert!(!lock.exists());
        assert_eq!(std::fs::read(blobs.join(sha256_hex(&weights))).unwrap(), weights);
        if timeout == "1" {
            assert!(
                started.elapsed() >= std::time::Duration::from_secs(2),
                "{:?}",
                started.elapsed()
            );
        }
    }
}

// The library's Hub client against hubs that misbehave in ways the test Hub does not: each is a
// small axum app answering every request through one function.
mod rogue {
    use std::time::Duration;

    use axum::Router;
    use axum::body::{Body, Bytes};
    use axum::extract::Request;
    use axum::http::{Method, StatusCode, header};
    use axum::response::{IntoResponse, Response};

    pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    pub enum Reply {
        Now(Response),
        /// No answer, ever.
        Never,
    }

    pub struct Hub {
        pub url: String,
        _rt: tokio::runtime::Runtime,
    }

    pub fn start(answer: impl Fn(&Method, &str) -> Reply + Send + Sync + 'static) -> Hub {
        let answer = std::sync::Arc::new(answer);
        let app = Router::new().fallback(move |req: Request| {
            let reply = answer(req.method(), req.uri().path());
            async move {
                match reply {
                    Reply::Now(r) => r,
                    Reply::Never => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        StatusCode::OK.into_response()
                    }
                }
            }
        });
        let (url, rt) = crate::common::serve(app);
        Hub { url, _rt: rt }
    }

    pub fn listing(files: &[&str]) -> Reply {
        let siblings: Vec<_> = files.iter().map(|f| serde_json::json!({"rfilename": f})).collect();
        Reply::Now(axum::Json(serde_json::json!({"sha": COMMIT, "siblings": siblings})).into_response())
    }

    /// A resolve answer in place: the commit, the sha256 ETag and the size of `bytes`.
    pub fn file_head(bytes: &[u8]) -> Response {
        use sha2::Digest;
        let sha: String = sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
        Response::builder()
            .header("x-repo-commit", COMMIT)
            .header(header::ETAG, format!("\"{sha}\""))
            .header(header::CONTENT_LENGTH, bytes.len())
            .body(Body::empty())
            .unwrap()
    }

    /// `pattern` repeated to `total` bytes, streamed without a Content-Length.
    pub fn endless(status: StatusCode, pattern: &'static [u8], total: usize) -> Reply {
        let chunk = Bytes::from(pattern.repeat((64 << 10) / pattern.len()));
        let body =
            futures_util::stream::iter((0..total / chunk.len()).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
        Reply::Now(
            Response::builder()
                .status(status)
                .body(Body::from_stream(body))
                .unwrap(),
        )
    }
}

use axum::response::IntoResponse;
use ollama_tools::error::Patience;
use ollama_tools::progress::Silent;
use ollama_tools::remote::hub::{Settings, fetch_adapter};
use rogue::Reply;

/// A library Hub client for `url` with a cache in `cache`, quick timeouts and retries.
fn client(url: &str, cache: &Path) -> ollama_tools::remote::hub::Hub {
    let settings = Settings {
        endpoint: url.into(),
        token: None,
        cache: cache.to_path_buf(),
        offline: false,
    };
    let patience = Patience {
        idle: std::time::Duration::from_secs(2),
        retries: 2,
        max_wait: std::time::Duration::from_millis(1500),
    };
    let mut hub = ollama_tools::remote::hub::Hub::with_patience(settings, patience);
    hub.probe_time = std::time::Duration::from_secs(1);
    hub
}

fn fetch_err(hub: &rogue::Hub, cache: &Path) -> String {
    fetch_adapter(&client(&hub.url, cache), "me/lora", "main", None, &Silent)
        .unwrap_err()
        .to_string()
}

#[test]
fn a_file_that_runs_past_its_announced_size_is_cut_there_and_deleted() {
    let config = br#"{"peft_type":"LORA"}"#;
    let hub = rogue::start(move |method, path| match (method.as_str(), path) {
        (_, p) if p.starts_with("/api/models/") => {
            rogue::listing(&["adapter_config.json", "adapter_model.safetensors"])
        }
        ("HEAD", _) => Reply::Now(rogue::file_head(config)),
        // Far more than announced, and no Content-Length to stop the client.
        _ => rogue::endless(axum::http::StatusCode::OK, b"{}", 50 << 20),
    });
    let cache = tempfile::tempdir().unwrap();
    let err = fetch_err(&hub, cache.path());
    assert!(
        err.contains(&format!("sent more than the {} bytes announced", config.len()))
            && err.contains("partial file was deleted"),
        "{err}"
    );
    let blobs = cache.path().join("models--me--lora/blobs");
    let left: Vec<_> = std::fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn huge_listings_and_error_bodies_are_not_read_whole() {
    let hub = rogue::start(|_, _| rogue::endless(axum::http::StatusCode::OK, b" ", 100 << 20));
    let cache = tempfile::tempdir().unwrap();
    let err = fetch_err(&hub, cache.path());
    assert!(
        err.contains("larger than 16 MiB") && err.contains("/api/models/me/lora/revision/main"),
        "{err}"
    );

    let hub = rogue::start(|_, _| {
        rogue::endless(
            axum::http::StatusCode::FORBIDDEN,
            b"\x1b]0;owned\x07\x1b[2Jdenied\r",
            100 << 20,
        )
    });
    let err = fetch_err(&hub, cache.path());
    assert!(err.contains("403") && err.contains("denied"), "{err}");
    assert!(
        err.len() < 2000 && !err.contains('\x1b') && !err.contains('\x07') && !err.contains('\r'),
        "{err:?}"
    );
}

#[test]
fn a_redirect_loop_says_so_rather_than_eof_while_parsing() {
    let hub = rogue::start(|_, path| {
        Reply::Now(
            axum::response::Response::builder()
                .status(302)
                .header("location", path)
                .body(axum::body::Body::empty())
                .unwrap(),
        )
    });
    let cache = tempfile::tempdir().unwrap();
    let err = fetch_err(&hub, cache.path());
    assert!(
        err.contains("redirects in a loop") && err.contains("/api/models/me/lora/revision/main"),
        "{err}"
    );
    assert!(!err.contains("EOF"), "{err}");
}

#[test]
fn file_names_from_the_listing_are_defused_and_backslashes_refused() {
    let hub = rogue::start(|_, path| match path {
        p if p.starts_with("/api/models/") => {
            rogue::listing(&["evil\x1b[31m/adapter_config.json", "README.md\x1b]0;owned\x07"])
        }
        _ => Reply::Now(axum::http::StatusCode::NOT_FOUND.into_response()),
    });
    let cache = tempfile::tempdir().unwrap();
    let err = fetch_err(&hub, cache.path());
    assert!(
        err.contains("holds no LoRA adapter") && err.contains("\\u{1b}]0;owned\\u{7}"),
        "{err}"
    );
    assert!(!err.contains('\x1b') && !err.contains('\x07'), "{err:?}");

    let hub = rogue::start(|method, path| match (method.as_str(), path) {
        (_, p) if p.starts_with("/api/models/") => rogue::listing(&["..\\..\\evil.gguf"]),
        _ => Reply::Now(rogue::file_head(b"GGUF")),
    });
    let err = fetch_err(&hub, cache.path());
    assert!(err.contains("is not a file path inside a repo"), "{err}");
    assert!(!cache.path().parent().unwrap().join("evil.gguf").exists());
}

#[test]
fn stalling_gguf_files_are_peeked_at_together_within_one_deadline() {
    let files: Vec<String> = (0..12).map(|i| format!("lora-{i}.gguf")).collect();
    let listed = files.clone();
    let hub = rogue::start(move |_, path| match path {
        p if p.starts_with("/api/models/") => rogue::listing(&listed.iter().map(String::as_str).collect::<Vec<_>>()),
        _ => Reply::Never,
    });
    let cache = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let err = fetch_err(&hub, cache.path());
    // 12 files that never answer, one second for all of them (not 12 times the timeout).
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert!(err.contains("holds 12 adapters"), "{err}");
}

#[test]
fn a_hub_still_rate_limiting_after_the_retries_is_rate_limited() {
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = asked.clone();
    let hub = rogue::start(move |_, _| {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // Retry-After: 0, so the retries cost no time.
        let r = axum::response::Response::builder()
            .status(429)
            .header("retry-after", "0")
            .header("x-error-message", "slow down")
            .body(axum::body::Body::empty())
            .unwrap();
        Reply::Now(r)
    });
    let cache = tempfile::tempdir().unwrap();
    let err = fetch_adapter(&client(&hub.url, cache.path()), "me/lora", "main", None, &Silent).unwrap_err();
    assert_eq!(err.kind(), ollama_tools::ErrorKind::RateLimited, "{err}");
    assert!(err.to_string().contains("rate-limiting requests: slow down"), "{err}");
    // The first request and the client's 2 retries.
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[test]
fn nulls_in_the_listing_read_as_absent_and_a_busy_hub_is_asked_again() {
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = asked.clone();
    let hub = rogue::start(move |_, _| {
        if count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            let r = axum::response::Response::builder()
                .status(503)
                .header("retry-after", "1")
                .body(axum::body::Body::empty())
                .unwrap();
            return Reply::Now(r);
        }
        Reply::Now(axum::Json(serde_json::json!({"sha": rogue::COMMIT, "siblings": null})).into_response())
    });
    let cache = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let err = fetch_err(&hub, cache.path());
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "Retry-After honoured: {:?}",
        started.elapsed()
    );
    assert!(
        err.contains("holds no LoRA adapter") && err.contains("no files"),
        "{err}"
    );
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[test]
fn the_tokenizer_beside_the_adapter_is_downloaded_with_it() {
    let env = setup();
    let mut files = adapter_files(&env, "");
    for name in ["tokenizer_config.json", "tokenizer.json"] {
        files.push(File {
            path: name.into(),
            bytes: br#"{"chat_template": "{{ messages }}"}"#.to_vec(),
            lfs: false,
        });
    }
    let hub = hub_server::start(vec![repo("me/lora", files, Access::Public)]);
    let fake = ollama();
    fetch(&env, &hub, &fake, &["me/lora", "--download-only"])
        .assert()
        .success();
    let snapshots = env.hf_home.join("hub/models--me--lora/snapshots");
    let snapshot = std::fs::read_dir(&snapshots).unwrap().next().unwrap().unwrap().path();
    for name in ["adapter_config.json", "tokenizer_config.json", "tokenizer.json"] {
        assert!(
            snapshot.join(name).is_file(),
            "{name} was not downloaded into {}",
            snapshot.display()
        );
    }
}

#[test]
fn push_publishes_the_fetched_model_and_a_default_name_without_namespace_is_refused_before_any_download() {
    let env = setup();
    let hub = hub_server::start(vec![repo("me/Tiny-LoRA", adapter_files(&env, ""), Access::Public)]);
    let fake = ollama();
    // The default name (`tiny-lora`) has no namespace: refused before the Hub is asked.
    fetch(&env, &hub, &fake, &["me/Tiny-LoRA", "--base", "tiny", "--push"])
        .assert()
        .code(1)
        .stderr(contains("no namespace"))
        .stderr(contains("--name USER/tiny-lora"));
    assert!(hub.log().is_empty(), "{:?}", hub.log());
    assert!(fake.log().is_empty(), "{:?}", fake.log());

    fetch(
        &env,
        &hub,
        &fake,
        &["me/Tiny-LoRA", "--base", "tiny", "--name", "me/tiny-lora", "--push"],
    )
    .assert()
    .success()
    .stdout(contains("created me/tiny-lora"))
    .stdout(contains("pushed      https://ollama.com/me/tiny-lora"));
    assert_eq!(fake.lock().pushed, vec!["me/tiny-lora:latest".to_string()]);
}
