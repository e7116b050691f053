//! `create-from-base` end to end: the built binary against an in-process Ollama (tests/common/
//! ollama_server.rs) that checks digests, streams create statuses, refuses adapters the way 0.34.1+
//! does, and can cut or corrupt uploads. What was uploaded is loaded in the real llama.cpp in
//! tests/interop (test_create_interop.py); here: the requests, the Modelfile, the cache, the errors.

mod common;
use common::ollama_server::{self, Config, Fake, RefuseAdapters};
use common::*;
use predicates::str::contains;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

struct Env {
    d: tempfile::TempDir,
    store: PathBuf,
    cache: PathBuf,
    base_gguf: PathBuf,
    adapter: PathBuf,
}

fn setup() -> Env {
    let d = tempfile::tempdir().unwrap();
    let (base_gguf, store, adapter) = tiny_world(d.path(), "my-adapter");
    Env {
        cache: d.path().join("cache"),
        store,
        base_gguf,
        adapter,
        d,
    }
}

fn server(version: &str, refuse: RefuseAdapters) -> Fake {
    ollama_server::start(Config {
        version: version.into(),
        refuse_adapters: refuse,
        models: vec![("tiny".into(), show_json(TINY, "F32", true))],
        ..Config::default()
    })
}

/// The binary with the server at `host`, the env's store and cache, and retries that wait
/// milliseconds rather than seconds.
fn tool(env: &Env, host: &str) -> assert_cmd::Command {
    let mut cmd = bin();
    cmd.env("OLLAMA_HOST", host)
        .env("OLLAMA_MODELS", &env.store)
        .env("OLLAMA_TOOLS_CACHE", &env.cache)
        .env("OLLAMA_TOOLS_RETRY_MAX_WAIT", "0.01")
        .env_remove("OLLAMA_TOOLS_RETRIES")
        .env_remove("OLLAMA_TOOLS_TIMEOUT");
    cmd
}

/// `create-from-base --base tiny --adapter <adapter> ARGS` against `fake`.
fn run(env: &Env, fake: &Fake, args: &[&str]) -> assert_cmd::Command {
    let mut cmd = tool(env, &fake.url);
    cmd.args(["create-from-base", "--base", "tiny", "--adapter"])
        .arg(&env.adapter)
        .args(args);
    cmd
}

fn sha256(path: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap();
    format!(
        "sha256:{}",
        sha2::Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

fn requests(fake: &Fake) -> Vec<Value> {
    fake.state.lock().unwrap().create_requests.clone()
}

/// The independent Modelfile reader's view of `path`, as the `/api/create` body `ollama create -f`
/// would send: FROM and ADAPTER files replaced by their digests.
fn modelfile_request(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    let cmds = modelfile_parser::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let mut req = modelfile_parser::create_request(&cmds).unwrap();
    let obj = req.as_object_mut().unwrap();
    if let Some(from) = obj.get("from").and_then(Value::as_str).map(str::to_string)
        && Path::new(&from).is_absolute()
    {
        obj.remove("from");
        obj.insert("files".into(), json!({"model.gguf": sha256(Path::new(&from))}));
    }
    if let Some(adapters) = obj.remove("adapters") {
        let list: Vec<Value> = match adapters {
            Value::Array(items) => items,
            other => vec![other],
        };
        assert_eq!(list.len(), 1, "{list:?}");
        obj.insert(
            "adapters".into(),
            json!({"adapter.gguf": sha256(Path::new(list[0].as_str().unwrap()))}),
        );
    }
    req
}

/// The fields both requests carry, compared: what makes the model. (The ollama CLI sends LICENSE
/// lines as a list; the API takes a string or a list.)
fn assert_same_model(ours: &Value, theirs: &Value) {
    let licenses = |v: Option<&Value>| match v {
        Some(Value::String(s)) => Some(json!([s])),
        other => other.cloned(),
    };
    assert_eq!(
        licenses(ours.get("license")),
        licenses(theirs.get("license")),
        "license differs:\nours   {ours}\ntheirs {theirs}"
    );
    for key in [
        "from",
        "files",
        "adapters",
        "template",
        "system",
        "parameters",
        "messages",
        "renderer",
        "parser",
    ] {
        assert_eq!(
            ours.get(key),
            theirs.get(key),
            "`{key}` differs:\nours   {ours}\ntheirs {theirs}"
        );
    }
}

#[test]
fn merge_mode_on_current_ollama_uploads_the_merged_gguf_with_the_bases_template_and_parameters() {
    let env = setup();
    let fake = server("0.34.2", RefuseAdapters::Http400);
    let modelfile = env.d.path().join("Modelfile");
    run(
        &env,
        &fake,
        &[
            "--name",
            "my-model",
            "--temperature",
            "0.7",
            "--num-ctx",
            "8192",
            "--parameter",
            "stop=</s>",
            "--system",
            "Be brief.\nVery brief.",
        ],
    )
    .arg("--out-modelfile")
    .arg(&modelfile)
    .assert()
    .success()
    .stdout(contains("created my-model"))
    .stdout(contains(
        "merged into the base: Ollama 0.34.2 no longer creates models with adapter layers",
    ))
    .stdout(contains("1 blob(s)"));

    let reqs = requests(&fake);
    assert_eq!(reqs.len(), 1);
    let req = &reqs[0];
    assert!(req.get("from").is_none() && req.get("adapters").is_none(), "{req}");
    let digest = req["files"]["model.gguf"].as_str().unwrap().to_string();
    // The uploaded blob is the merged model from the cache, with the base's template and license,
    // the base's parameters overridden by ours (our stop list replaces the base's).
    let built: Vec<PathBuf> = std::fs::read_dir(env.cache.join("builds"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    assert_eq!(built.len(), 1);
    assert_eq!(sha256(&built[0]), digest);
    assert_eq!(
        fake.state.lock().unwrap().blobs[&digest],
        std::fs::read(&built[0]).unwrap()
    );
    let (h, _) = read_gguf(&built[0]);
    assert!(h.get("ollama_tools.merged.adapters").is_some());
    assert_eq!(req["template"], "{{ .Prompt }}");
    assert_eq!(req["license"], "LLAMA 3.2 COMMUNITY LICENSE AGREEMENT");
    assert_eq!(req["system"], "Be brief.\nVery brief.");
    assert_eq!(
        req["parameters"],
        json!({"stop": ["</s>"], "temperature": 0.7, "num_ctx": 8192})
    );
    // `ollama create my-model -f Modelfile` would send the same model.
    assert_same_model(req, &modelfile_request(&modelfile));
    // And the model exists on the server, made from that request.
    let m = fake.model("my-model").unwrap();
    assert_eq!(m.request.as_ref(), Some(req));
}

#[test]
fn adapter_mode_on_older_ollama_uploads_the_gguf_adapter_and_creates_from_the_base() {
    let env = setup();
    let fake = server("0.33.0", RefuseAdapters::Never);
    let modelfile = env.d.path().join("Modelfile");
    run(&env, &fake, &["--name", "me/tuned:v1", "--parameter", "top_k=20"])
        .arg("--out-modelfile")
        .arg(&modelfile)
        .assert()
        .success()
        .stdout(contains(
            "adapter layer: Ollama 0.33.0 creates models with adapter layers",
        ));
    let req = requests(&fake).pop().unwrap();
    assert_eq!(req["model"], "me/tuned:v1");
    assert_eq!(req["from"], "tiny");
    assert!(
        req.get("files").is_none() && req.get("template").is_none(),
        "the base's own template is inherited: {req}"
    );
    assert_eq!(req["parameters"], json!({"top_k": 20}));
    let digest = req["adapters"]["adapter.gguf"].as_str().unwrap();
    let blob = fake.state.lock().unwrap().blobs[digest].clone();
    let path = env.d.path().join("uploaded.gguf");
    std::fs::write(&path, blob).unwrap();
    let (h, t) = read_gguf(&path);
    assert_eq!(h.get_str("general.type"), Some("adapter"));
    assert_eq!(t.len(), 8, "q and v of two layers, lora_a and lora_b each");
    assert_same_model(&req, &modelfile_request(&modelfile));
    let text = std::fs::read_to_string(&modelfile).unwrap();
    assert!(text.contains("FROM tiny") && text.contains("ADAPTER /"), "{text}");
}

#[test]
fn auto_falls_back_to_merging_when_the_server_refuses_the_adapter() {
    for refuse in [RefuseAdapters::Http400, RefuseAdapters::InStream] {
        let env = setup();
        // A build from source reports 0.0.0: adapter mode is tried first.
        let fake = server("0.0.0", refuse);
        run(&env, &fake, &["--name", "m"])
            .assert()
            .success()
            .stderr(contains("Ollama refused the adapter layer (\"LoRA adapters are no longer supported\"): merging it into the base instead"))
            .stdout(contains("merged into the base: Ollama refused an adapter layer"));
        let reqs = requests(&fake);
        assert_eq!(reqs.len(), 2, "{reqs:?}");
        assert!(reqs[0].get("adapters").is_some() && reqs[1].get("files").is_some());
        assert!(fake.model("m").is_some());
    }
}

#[test]
fn forced_adapter_mode_on_a_refusing_server_fails_with_the_servers_words_and_what_to_do() {
    let env = setup();
    let fake = server("0.34.2", RefuseAdapters::Http400);
    run(&env, &fake, &["--name", "m", "--mode", "adapter"])
        .assert()
        .failure()
        .stderr(contains("LoRA adapters are no longer supported"))
        .stderr(contains("--mode merge"));
    assert!(fake.model("m").is_none());
}

#[test]
fn a_second_run_builds_nothing_and_uploads_nothing() {
    let env = setup();
    let fake = server("0.34.2", RefuseAdapters::Http400);
    run(&env, &fake, &["--name", "m"])
        .assert()
        .success()
        .stdout(contains("built now"));
    let posts = fake.requests("POST /api/blobs");
    run(&env, &fake, &["--name", "m2"])
        .assert()
        .success()
        .stdout(contains("reused from an earlier run"))
        .stdout(contains("nothing: the server had every blob"));
    assert_eq!(fake.requests("POST /api/blobs"), posts, "no second upload");
    let reqs = requests(&fake);
    assert_eq!(reqs[0]["files"], reqs[1]["files"]);
}

#[test]
fn an_existing_name_is_kept_without_force_and_replaced_with_it() {
    let env = setup();
    let fake = server("0.34.2", RefuseAdapters::Http400);
    run(&env, &fake, &["--name", "m"]).assert().success();
    let creates = requests(&fake).len();
    // No terminal to ask: stop before anything is built or sent.
    run(&env, &fake, &["--name", "m"])
        .assert()
        .failure()
        .stderr(contains("a model of this name exists"))
        .stderr(contains("--force"));
    assert_eq!(requests(&fake).len(), creates);
    run(&env, &fake, &["--name", "m", "--force"]).assert().success();
    assert_eq!(requests(&fake).len(), creates + 1);
}

#[test]
fn a_missing_base_is_pulled_with_yes_and_refused_without_a_terminal() {
    let env = setup();
    let fake = ollama_server::start(Config {
        version: "0.34.2".into(),
        pullable: vec![("tiny".into(), show_json(TINY, "F32", true))],
        ..Config::default()
    });
    run(&env, &fake, &["--name", "m"])
        .assert()
        .failure()
        .stderr(contains("does not have this model"))
        .stderr(contains("--yes"))
        .stderr(contains("ollama pull tiny"));
    assert_eq!(fake.requests("POST /api/pull"), 0);
    run(&env, &fake, &["--name", "m", "--yes"]).assert().success();
    assert_eq!(fake.requests("POST /api/pull"), 1);
    assert!(fake.model("m").is_some());
}

#[test]
fn an_upload_cut_is_sent_again_with_backoff_and_cut_every_time_fails_naming_the_digest() {
    let env = setup();
    let fake = server("0.34.2", RefuseAdapters::Http400);
    fake.state.lock().unwrap().faults.cut_uploads = 4;
    run(&env, &fake, &["--name", "m"])
        .assert()
        .success()
        .stderr(contains("broke off"))
        .stderr(contains("sending it again in"));
    assert!(fake.model("m").is_some());
    assert_eq!(
        fake.requests("POST /api/blobs/"),
        5,
        "four retries (the default), the last one goes through"
    );

    let env = setup();
    let fake = server("0.34.2", RefuseAdapters::Http400);
    fake.state.lock().unwrap().faults.cut_uploads = 2;
    run(&env, &fake, &["--name", "m"])
        .env("OLLAMA_TOOLS_RETRIES", "1")
        .assert()
        .failure()
        .stderr(contains("broke off 2 times"))
        .stderr(contains("sha256:"));
    assert!(fake.model("m").is_none());
    assert!(requests(&fake).is_empty(), "no create after a failed upload");
}

#[test]
fn a_corrupted_upload_is_reported_with_the_servers_digest_mismatch() {
    let env = setup();
    let fake = server("0.34.2", RefuseAdapters::Http400);
    fake.state.lock().unwrap().faults.corrupt_uploads = 1;
    run(&env, &fake, &["--name", "m"])
        .assert()
        .failure()
        .stderr(contains("refused the upload of sha256:"))
        .stderr(contains("digest mismatch"));
    assert!(requests(&fake).is_empty());
}

#[test]
fn server_errors_are_passed_on_verbatim_and_no_server_names_the_url() {
    let env = setup();
    let fake = server("0.34.2", RefuseAdapters::Http400);
    fake.state.lock().unwrap().faults.create_error = Some((
        500,
        "write /root/.ollama/models/manifests: no space left on device".into(),
    ));
    run(&env, &fake, &["--name", "m"]).assert().failure().stderr(contains(
        "creating `m`: Ollama answered 500: write /root/.ollama/models/manifests: no space left on device",
    ));

    tool(&env, NO_SERVER)
        .args(["create-from-base", "--base", "tiny", "--name", "m"])
        .assert()
        .failure()
        .stderr(contains("no Ollama server answers at http://127.0.0.1:1"))
        .stderr(contains("ollama serve"));
}

#[test]
fn without_an_adapter_the_model_is_the_base_with_the_options() {
    let env = setup();
    let fake = server("0.34.2", RefuseAdapters::Http400);
    tool(&env, &fake.url)
        .args([
            "create-from-base",
            "--base",
            "tiny",
            "--name",
            "plain",
            "--system",
            "You are terse.",
            "--parameter",
            "stop=END",
            "--parameter",
            "stop=STOP",
        ])
        .assert()
        .success()
        .stdout(contains("base with options"));
    let req = requests(&fake).pop().unwrap();
    assert_eq!(req["from"], "tiny");
    assert_eq!(req["system"], "You are terse.");
    assert_eq!(req["parameters"], json!({"stop": ["END", "STOP"]}));
    assert_eq!(fake.requests("POST /api/blobs"), 0);
}

#[test]
fn no_create_writes_a_modelfile_without_any_server() {
    let env = setup();
    // A GGUF base and no server: merged, FROM the merged file.
    let out = env.d.path().join("Modelfile");
    tool(&env, NO_SERVER)
        .args(["create-from-base", "--no-create", "--base"])
        .arg(&env.base_gguf)
        .arg("--adapter")
        .arg(&env.adapter)
        .arg("--out-modelfile")
        .arg(&out)
        .assert()
        .success()
        .stdout(contains("no server to ask: merged"))
        .stdout(contains("ollama create NAME -f"));
    let req = modelfile_request(&out);
    assert!(req["files"]["model.gguf"].as_str().unwrap().starts_with("sha256:"));
    assert!(req.get("adapters").is_none());

    // The same name in the store, no server: merged, with the store's template.
    let out2 = env.d.path().join("Modelfile2");
    tool(&env, NO_SERVER)
        .args(["create-from-base", "--no-create", "--base", "tiny", "--adapter"])
        .arg(&env.adapter)
        .arg("--out-modelfile")
        .arg(&out2)
        .assert()
        .success();
    let req2 = modelfile_request(&out2);
    assert_eq!(req2["template"], "{{ .Prompt }}");
    assert_eq!(req2["files"], req["files"], "the same merge, from the cache");

    // A Hugging Face config folder: nothing to merge into, so an ADAPTER Modelfile.
    let hf = env.d.path().join("hf");
    std::fs::create_dir_all(&hf).unwrap();
    std::fs::write(
        hf.join("config.json"),
        json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32, "intermediate_size": 48,
               "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 40,
               "tie_word_embeddings": false}).to_string(),
    )
    .unwrap();
    let out3 = env.d.path().join("Modelfile3");
    tool(&env, NO_SERVER)
        .args(["create-from-base", "--no-create", "--base"])
        .arg(&hf)
        .arg("--adapter")
        .arg(&env.adapter)
        .arg("--out-modelfile")
        .arg(&out3)
        .assert()
        .success()
        .stdout(contains("adapter layer"));
    let text = std::fs::read_to_string(&out3).unwrap();
    assert!(text.contains("ADAPTER /"), "{text}");

    // An existing Modelfile is not replaced without --force.
    tool(&env, NO_SERVER)
        .args(["create-from-base", "--no-create", "--base"])
        .arg(&env.base_gguf)
        .arg("--out-modelfile")
        .arg(&out)
        .assert()
        .failure()
        .stderr(contains("--force"));
}

#[test]
fn bad_parameters_are_refused_before_anything_is_sent() {
    let env = setup();
    let fake = server("0.34.2", RefuseAdapters::Http400);
    for (arg, want) in [
        ("num_ctx=8k", "num_ctx"),
        ("mirostat=1", "mirostat"),
        ("temprature=0.5", "temprature"),
    ] {
        run(&env, &fake, &["--name", "m", "--parameter", arg])
            .assert()
            .failure()
            .stderr(contains(want));
    }
    assert!(
        fake.state.lock().unwrap().log.is_empty(),
        "nothing was asked of the server"
    );
}

#[test]
fn a_ready_gguf_adapter_is_uploaded_as_is_or_merged() {
    let env = setup();
    let gguf = env.d.path().join("adapter.gguf");
    bin()
        .args(["convert"])
        .arg(&env.adapter)
        .arg("--base")
        .arg(&env.base_gguf)
        .arg("-o")
        .arg(&gguf)
        .assert()
        .success();
    let fake = server("0.33.0", RefuseAdapters::Never);
    tool(&env, &fake.url)
        .args(["create-from-base", "--base", "tiny", "--name", "a", "--adapter"])
        .arg(&gguf)
        .assert()
        .success();
    assert_eq!(requests(&fake)[0]["adapters"]["adapter.gguf"], sha256(&gguf));

    // Merged from the GGUF adapter, the result is the PEFT adapter's merge up to f16 rounding of
    // the adapter's tensors.
    let fake = server("0.34.2", RefuseAdapters::Http400);
    tool(&env, &fake.url)
        .args(["create-from-base", "--base", "tiny", "--name", "b", "--adapter"])
        .arg(&gguf)
        .assert()
        .success();
    let digest = requests(&fake)[0]["files"]["model.gguf"].as_str().unwrap().to_string();
    let from_gguf = env.d.path().join("from-gguf.gguf");
    std::fs::write(&from_gguf, &fake.state.lock().unwrap().blobs[&digest]).unwrap();
    let from_peft = env.d.path().join("from-peft.gguf");
    bin()
        .args(["merge"])
        .arg(&env.adapter)
        .arg("--base")
        .arg(&env.base_gguf)
        .arg("-o")
        .arg(&from_peft)
        .assert()
        .success();
    let (_, a) = read_gguf(&from_gguf);
    let (_, b) = read_gguf(&from_peft);
    assert_eq!(a.len(), b.len());
    for (name, ta) in &a {
        let tb = &b[name];
        let worst = ta
            .values
            .iter()
            .zip(&tb.values)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst < 2e-3, "{name}: {worst}");
    }

    // A GGUF adapter for another architecture is refused, naming both.
    let qwen = env.d.path().join("qwen.gguf");
    write_base_gguf(&qwen, "qwen2", TINY);
    tool(&env, &fake.url)
        .args(["create-from-base", "--base"])
        .arg(&qwen)
        .args(["--name", "c", "--adapter"])
        .arg(&gguf)
        .assert()
        .failure()
        .stderr(contains("the adapter is for `llama` models"));
}

fn run_in_terminal(env: &Env, fake: &Fake, args: &[&str], question: &str, key: &str) -> (bool, String) {
    let mut all = vec![
        "create-from-base",
        "--base",
        "tiny",
        "--adapter",
        env.adapter.to_str().unwrap(),
    ];
    all.extend_from_slice(args);
    let vars = [
        ("OLLAMA_HOST", fake.url.as_str()),
        ("OLLAMA_MODELS", env.store.to_str().unwrap()),
        ("OLLAMA_TOOLS_CACHE", env.cache.to_str().unwrap()),
    ];
    in_terminal(&all, &vars, question, key)
}

#[test]
fn at_a_terminal_the_user_is_asked_before_a_model_is_replaced() {
    let env = setup();
    let fake = server("0.34.2", RefuseAdapters::Http400);
    run(&env, &fake, &["--name", "m"]).assert().success();
    let (ok, shown) = run_in_terminal(&env, &fake, &["--name", "m"], "Replace it with the new model?", "n");
    assert!(!ok, "{shown}");
    assert!(
        shown.contains("`m:latest` exists on") && shown.contains("llama"),
        "the question says what exists: {shown}"
    );
    assert!(shown.contains("kept the existing model"), "{shown}");
    assert_eq!(requests(&fake).len(), 1);
    let (ok, shown) = run_in_terminal(&env, &fake, &["--name", "m"], "Replace it with the new model?", "y");
    assert!(ok, "{shown}");
    assert_eq!(requests(&fake).len(), 2);
}

#[test]
fn ctrl_c_during_create_hangs_up_and_leaves_no_model_and_no_temporary_file() {
    let env = setup();
    let fake = server("0.34.2", RefuseAdapters::Http400);
    fake.state.lock().unwrap().faults.stall_create = true;
    let exe = assert_cmd::cargo::cargo_bin("ollama-tools");
    let child = std::process::Command::new(exe)
        .env("OLLAMA_HOST", &fake.url)
        .env("OLLAMA_MODELS", &env.store)
        .env("OLLAMA_TOOLS_CACHE", &env.cache)
        .args(["create-from-base", "--base", "tiny", "--name", "m", "--adapter"])
        .arg(&env.adapter)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once the server is creating (it never finishes on its own).
    while fake.requests("POST /api/create") == 0 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(fake.model("m").is_none());
    // The cache holds finished files only: the merged model and its digest.
    let mut names: Vec<String> = std::fs::read_dir(env.cache.join("builds"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names[0].ends_with(".gguf") && names[1].ends_with(".gguf.sha256"),
        "{names:?}"
    );
}

#[test]
fn the_fallback_writes_the_modelfile_of_the_mode_that_was_used() {
    let env = setup();
    let fake = server("0.0.0", RefuseAdapters::Http400);
    let out = env.d.path().join("Modelfile");
    run(&env, &fake, &["--name", "m"])
        .arg("--out-modelfile")
        .arg(&out)
        .assert()
        .success();
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(!text.contains("ADAPTER"), "{text}");
    assert_same_model(&requests(&fake)[1], &modelfile_request(&out));
}

#[test]
fn merging_into_a_config_json_base_is_refused_with_what_to_do() {
    let env = setup();
    let hf = env.d.path().join("hf");
    std::fs::create_dir_all(&hf).unwrap();
    std::fs::write(
        hf.join("config.json"),
        json!({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32, "intermediate_size": 48,
               "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 40}).to_string(),
    )
    .unwrap();
    bin()
        .env("OLLAMA_TOOLS_CACHE", &env.cache)
        .args(["create-from-base", "--no-create", "--mode", "merge", "--base"])
        .arg(&hf)
        .arg("--adapter")
        .arg(&env.adapter)
        .arg("--out-modelfile")
        .arg(env.d.path().join("M"))
        .assert()
        .code(1)
        .stderr(contains("merging needs the base model's GGUF file"))
        .stderr(contains("--mode adapter"));
}

#[test]
fn a_stores_renderer_and_parser_are_carried_over_unless_a_template_is_given() {
    use sha2::Digest;
    let env = setup();
    // Ollama keeps a model's built-in renderer and parser in its config blob.
    let config =
        json!({"model_format": "gguf", "model_family": "llama", "renderer": "qwen3-coder", "parser": "qwen3-coder"})
            .to_string();
    let hex: String = sha2::Sha256::digest(config.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(env.store.join("blobs").join(format!("sha256-{hex}")), &config).unwrap();
    let manifest_path = env.store.join("manifests/registry.ollama.ai/library/tiny/latest");
    let mut manifest: Value = serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    manifest["config"]["digest"] = json!(format!("sha256:{hex}"));
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();

    let no_create = |out: &Path, extra: &[&str]| {
        tool(&env, NO_SERVER)
            .args(["create-from-base", "--no-create", "--base", "tiny", "--adapter"])
            .arg(&env.adapter)
            .arg("--out-modelfile")
            .arg(out)
            .args(extra)
            .assert()
            .success();
        modelfile_request(out)
    };
    let req = no_create(&env.d.path().join("M1"), &[]);
    assert_eq!(
        (req["renderer"].as_str(), req["parser"].as_str()),
        (Some("qwen3-coder"), Some("qwen3-coder"))
    );
    let template = env.d.path().join("t.tmpl");
    std::fs::write(&template, "{{ .System }} {{ .Prompt }}").unwrap();
    let req = no_create(&env.d.path().join("M2"), &["--template", template.to_str().unwrap()]);
    assert_eq!(req["template"], "{{ .System }} {{ .Prompt }}");
    assert!(
        req.get("renderer").is_none(),
        "the user's template replaces the renderer: {req}"
    );
    assert_eq!(req["parser"], "qwen3-coder");
}

#[test]
fn a_create_the_server_never_finishes_fails_after_the_idle_timeout() {
    let env = setup();
    let fake = server("0.34.2", RefuseAdapters::Http400);
    fake.state.lock().unwrap().faults.stall_create = true;
    let started = std::time::Instant::now();
    run(&env, &fake, &["--name", "m"])
        .env("OLLAMA_TOOLS_TIMEOUT", "1")
        .timeout(std::time::Duration::from_secs(60))
        .assert()
        .failure()
        .stderr(contains("creating `m`"))
        .stderr(contains("sent nothing for 1 s"))
        .stderr(contains("last status: \"parsing GGUF\""))
        .stderr(contains("OLLAMA_TOOLS_TIMEOUT"));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert!(fake.model("m").is_none());
}

#[test]
fn a_servers_error_text_reaches_the_terminal_without_its_escapes() {
    let env = setup();
    let fake = server("0.34.2", RefuseAdapters::Http400);
    let hostile = format!("\x1b[2J\x1b]0;owned\x07no space left\r{}", "x".repeat(5000));
    fake.state.lock().unwrap().faults.create_error = Some((500, hostile));
    let out = run(&env, &fake, &["--name", "m"])
        .assert()
        .failure()
        .get_output()
        .stderr
        .clone();
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("\\u{1b}[2J") && text.contains("no space left"), "{text}");
    assert!(
        !text.contains('\x1b') && !text.contains('\x07') && !text.contains('\r'),
        "{text:?}"
    );
    assert!(text.len() < 2000, "shortened: {} bytes", text.len());
}

#[test]
fn an_adapters_own_chat_template_is_announced_or_used_in_its_ollama_form() {
    let env = setup();
    let fake = server("0.34.2", RefuseAdapters::Http400);
    let jinja = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}";
    std::fs::write(
        env.adapter.join("tokenizer_config.json"),
        json!({ "chat_template": jinja }).to_string(),
    )
    .unwrap();
    let (modelfile, gguf) = (env.d.path().join("Modelfile"), env.d.path().join("merged.gguf"));
    // Default: the base's template, and a word that the adapter has its own.
    run(&env, &fake, &["--name", "m", "--force", "--out-modelfile"])
        .arg(&modelfile)
        .assert()
        .success()
        .stderr(contains("has its own chat template (ChatML)"))
        .stderr(contains("--chat-template adapter"));
    assert!(!std::fs::read_to_string(&modelfile).unwrap().contains("<|im_start|>"));
    // The adapter's: its Ollama form with its stop, and the Jinja in the merged GGUF.
    run(
        &env,
        &fake,
        &[
            "--name",
            "m",
            "--force",
            "--chat-template",
            "adapter",
            "--out-modelfile",
        ],
    )
    .arg(&modelfile)
    .arg("--out-gguf")
    .arg(&gguf)
    .assert()
    .success();
    let text = std::fs::read_to_string(&modelfile).unwrap();
    assert!(
        text.contains("<|im_start|>assistant") && text.contains("PARAMETER stop <|im_end|>"),
        "{text}"
    );
    let header = ollama_tools::formats::gguf::read_header(&gguf).unwrap();
    assert_eq!(
        header.get("tokenizer.chat_template"),
        Some(&ollama_tools::formats::gguf::Value::String(jinja.into()))
    );
    // A format without a known Ollama form: refused, saying what to do.
    std::fs::write(
        env.adapter.join("tokenizer_config.json"),
        json!({ "chat_template": "[INST] {{ m }} [/INST]" }).to_string(),
    )
    .unwrap();
    run(&env, &fake, &["--name", "m", "--force", "--chat-template", "adapter"])
        .assert()
        .failure()
        .stderr(contains("--template FILE"));
}

// --push: after the create, `POST /api/push` to the registry the name points at.

/// What the library reported through the progress trait, one line per call.
#[derive(Default)]
struct Recorded(std::sync::Mutex<Vec<String>>);

impl ollama_tools::progress::Progress for Recorded {
    fn stage(&self, name: &str, total: u64) {
        self.0.lock().unwrap().push(format!("stage {name} {total}"));
    }
    fn advance(&self, n: u64) {
        self.0.lock().unwrap().push(format!("advance {n}"));
    }
    fn status(&self, msg: &str) {
        self.0.lock().unwrap().push(format!("status {msg}"));
    }
}

/// The push's stages of known length (a layer each), with the bytes advanced while each was current.
fn layer_bars(events: &[String]) -> Vec<(String, u64, u64)> {
    let mut bars: Vec<(String, u64, u64)> = Vec::new();
    for e in events {
        if let Some(stage) = e.strip_prefix("stage ") {
            let (name, total) = stage.rsplit_once(' ').unwrap();
            bars.push((name.to_string(), total.parse().unwrap(), 0));
        } else if let (Some(n), Some(bar)) = (e.strip_prefix("advance "), bars.last_mut()) {
            bar.2 += n.parse::<u64>().unwrap();
        }
    }
    bars.retain(|b| b.1 > 0);
    bars
}

#[test]
fn a_push_reports_each_layer_through_the_progress_trait_and_says_where_the_model_is() {
    let fake = ollama_server::start(Config {
        models: vec![("me/tuned".into(), show_json(TINY, "F32", true))],
        ..Config::default()
    });
    let client = ollama_tools::remote::ollama::Client::new(&fake.url);
    let recorded = Recorded::default();
    let at = ollama_tools::commands::create::push(&client, "me/tuned", false, &recorded).unwrap();
    assert_eq!(at, "https://ollama.com/me/tuned");
    let events = recorded.0.lock().unwrap().clone();
    for status in ["retrieving manifest", "pushing manifest", "success"] {
        assert!(events.contains(&format!("status {status}")), "{events:?}");
    }
    // A bar per layer (weights, config), each advanced to its total, as Ollama's statuses say.
    let bars = layer_bars(&events);
    assert_eq!(bars.len(), 2, "{events:?}");
    for (name, total, advanced) in &bars {
        assert!(
            name.starts_with("pushing ") && name.len() == "pushing ".len() + 12,
            "{name}"
        );
        assert_eq!(advanced, total, "{name}: {events:?}");
    }
    let s = fake.lock();
    assert_eq!(s.push_requests, vec![json!({"model": "me/tuned", "stream": true})]);
    assert_eq!(s.pushed, vec!["me/tuned:latest".to_string()]);
}

#[test]
fn push_publishes_the_created_model_and_reports_where() {
    let env = setup();
    let fake = server("0.34.2", RefuseAdapters::Http400);
    run(&env, &fake, &["--name", "me/tuned", "--push"])
        .assert()
        .success()
        .stdout(contains("created me/tuned"))
        .stdout(contains("pushed      https://ollama.com/me/tuned"));
    let log = fake.log();
    let at = |call: &str| {
        log.iter()
            .position(|l| l == call)
            .unwrap_or_else(|| panic!("{call}: {log:?}"))
    };
    assert!(at("POST /api/create") < at("POST /api/push"), "{log:?}");
    let s = fake.lock();
    assert_eq!(s.push_requests, vec![json!({"model": "me/tuned", "stream": true})]);
    assert_eq!(s.pushed, vec!["me/tuned:latest".to_string()]);
    drop(s);

    // --insecure is passed on; the JSON report says where the model went.
    let out = run(
        &env,
        &fake,
        &["--name", "me/tuned:v2", "--push", "--insecure", "--json"],
    )
    .assert()
    .success()
    .get_output()
    .stdout
    .clone();
    let report: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(report["pushed"], "https://ollama.com/me/tuned:v2");
    assert_eq!(
        fake.lock().push_requests[1],
        json!({"model": "me/tuned:v2", "stream": true, "insecure": true})
    );
}

#[test]
fn a_push_the_registry_refuses_gives_the_servers_words_and_what_to_set_up() {
    let env = setup();
    let fake = server("0.34.2", RefuseAdapters::Http400);
    fake.lock().faults.push_refusal = Some("unauthorized: access denied".into());
    run(&env, &fake, &["--name", "me/tuned", "--push"])
        .assert()
        .code(1)
        .stderr(contains("pushing `me/tuned`: Ollama says: unauthorized: access denied"))
        .stderr(contains("https://ollama.com/settings/keys"))
        .stderr(contains("~/.ollama/id_ed25519.pub"))
        .stderr(contains("`USER/model`"))
        .stderr(contains("`me/tuned` was created on"))
        .stderr(contains("push it with `ollama push me/tuned`"));
    assert!(
        fake.model("me/tuned").is_some(),
        "the model was created before the push"
    );
    assert!(fake.lock().pushed.is_empty());

    // A 401 before the stream (a proxy, or a server checking the key first): the same.
    let key = "unauthorized: unknown ollama key \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFake\"";
    fake.lock().faults.push_error = Some((401, key.into()));
    run(&env, &fake, &["--name", "me/tuned", "--push", "--force"])
        .assert()
        .code(1)
        .stderr(contains(format!("Ollama answered 401: {key}")))
        .stderr(contains("https://ollama.com/settings/keys"));
    assert!(fake.lock().pushed.is_empty());
}

#[test]
fn a_push_cut_half_way_says_so_and_how_to_push_again() {
    let env = setup();
    let fake = server("0.34.2", RefuseAdapters::Http400);
    fake.lock().faults.cut_push = true;
    let out = run(&env, &fake, &["--name", "me/tuned", "--push"])
        .assert()
        .code(1)
        .stderr(contains("pushing `me/tuned`"))
        .stderr(contains("broke off while it was streaming its answer to /api/push"))
        .stderr(contains("push it again with `ollama push me/tuned`"))
        .get_output()
        .stderr
        .clone();
    let text = String::from_utf8_lossy(&out);
    assert!(!text.contains("settings/keys"), "not a refusal: {text}");
    assert!(fake.model("me/tuned").is_some());
    assert!(fake.lock().pushed.is_empty());
}

#[test]
fn push_refuses_a_name_without_namespace_and_with_no_create_before_anything_is_done() {
    let env = setup();
    let fake = server("0.34.2", RefuseAdapters::Http400);
    run(&env, &fake, &["--name", "tuned", "--push"])
        .assert()
        .code(1)
        .stderr(contains("tuned: --push: this name has no namespace"))
        .stderr(contains("`library` namespace"))
        .stderr(contains("--name USER/tuned"))
        .stderr(contains("https://ollama.com/settings/keys"));
    assert!(fake.log().is_empty(), "nothing asked of the server: {:?}", fake.log());
    assert!(!env.cache.join("builds").exists(), "nothing built");

    let modelfile = env.d.path().join("Modelfile");
    tool(&env, NO_SERVER)
        .args(["create-from-base", "--no-create", "--push", "--base"])
        .arg(&env.base_gguf)
        .arg("--out-modelfile")
        .arg(&modelfile)
        .assert()
        .code(1)
        .stderr(contains("--push publishes the model this run creates"))
        .stderr(contains("--no-create creates none"));
    assert!(!modelfile.exists());
    run(&env, &fake, &["--name", "me/tuned", "--insecure"])
        .assert()
        .code(2)
        .stderr(contains("--push"));
}

/// A caller that pressed Ctrl-C before the run started.
struct Interrupted;

impl ollama_tools::progress::Progress for Interrupted {
    fn cancelled(&self) -> bool {
        true
    }
}

#[test]
fn a_library_caller_matches_what_went_wrong_by_the_kind() {
    use ollama_tools::ErrorKind;
    use ollama_tools::commands::create::{Options, create, push};
    use ollama_tools::progress::Silent;
    let env = setup();
    let fake = server("0.34.2", RefuseAdapters::Http400);
    let opts = |base: &str| Options {
        name: Some("m".into()),
        base: base.into(),
        adapter: Some(env.adapter.clone()),
        host: fake.url.clone(),
        yes: true,
        ..Options::default()
    };
    // A base neither the server nor its registry has: Ollama's pull says "file does not exist".
    let err = create(&opts("nothere"), &Silent).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("file does not exist"), "{err}");
    // Whether to pull it, with nobody to ask.
    let err = create(
        &Options {
            yes: false,
            ..opts("nothere")
        },
        &Silent,
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Usage, "{err}");
    let err = create(
        &Options {
            host: format!("http://{NO_SERVER}"),
            ..opts("tiny")
        },
        &Silent,
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Server, "{err}");
    let err = create(&opts("tiny"), &Interrupted).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Interrupted, "{err}");
    assert!(fake.model("m").is_none());
    // The API client's own errors, for a caller that talks to Ollama directly.
    let client = ollama_tools::remote::ollama::Client::new(&fake.url);
    assert_eq!(client.show("nothere").unwrap_err().kind(), ErrorKind::NotFound);
    let err = client.pull("nothere", &Silent, &mut |_| {}).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");

    // A push the registry refuses, in a streamed error line or as a 401: unauthorized; one cut
    // half-way: the server's failure.
    let fake = ollama_server::start(Config {
        models: vec![("me/tuned".into(), show_json(TINY, "F32", true))],
        ..Config::default()
    });
    let client = ollama_tools::remote::ollama::Client::new(&fake.url);
    fake.lock().faults.push_refusal = Some("unauthorized: access denied".into());
    let err = push(&client, "me/tuned", false, &Silent).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthorized, "{err}");
    fake.lock().faults.push_refusal = None;
    fake.lock().faults.push_error = Some((401, "unauthorized: unknown ollama key".into()));
    let err = push(&client, "me/tuned", false, &Silent).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthorized, "{err}");
    fake.lock().faults.push_error = None;
    fake.lock().faults.cut_push = true;
    let err = push(&client, "me/tuned", false, &Silent).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Server, "{err}");
}
