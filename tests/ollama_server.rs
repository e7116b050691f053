//! The fake Ollama server (tests/common/ollama_server.rs) behaves as Ollama documents its API, so
//! end-to-end tests that run the binary against it test the binary, not the fake.

mod common;

use common::ollama_server::{self as fake, Config, Faults, RefuseAdapters};
use common::{TINY, show_json};
use ollama_tools::formats::gguf::{self, GgmlType, TensorSpec, Value as G};
use reqwest::blocking::Client;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn digest(bytes: &[u8]) -> String {
    format!(
        "sha256:{}",
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// A fresh client per call: a pooled connection must not carry one test step into the next.
fn client() -> Client {
    Client::new()
}

fn upload(url: &str, bytes: &[u8]) -> reqwest::Result<reqwest::blocking::Response> {
    client()
        .post(format!("{url}/api/blobs/{}", digest(bytes)))
        .body(bytes.to_vec())
        .send()
}

fn post(url: &str, path: &str, body: Value) -> reqwest::blocking::Response {
    client().post(format!("{url}{path}")).json(&body).send().unwrap()
}

/// Status, and the body as NDJSON lines (a non-streamed body is one line).
fn lines(resp: reqwest::blocking::Response) -> (u16, Vec<Value>) {
    let status = resp.status().as_u16();
    let text = resp.text().unwrap();
    (
        status,
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
    )
}

fn statuses(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| l["status"].as_str().map(str::to_string))
        .collect()
}

/// A tiny GGUF LoRA adapter for the TINY llama: one F32 pair on blk.0.attn_q.
fn adapter_gguf() -> Vec<u8> {
    let kvs = vec![
        ("general.type".to_string(), G::String("adapter".into())),
        ("general.architecture".to_string(), G::String("llama".into())),
        ("adapter.type".to_string(), G::String("lora".into())),
        ("adapter.lora.alpha".to_string(), G::F32(4.0)),
    ];
    let specs = vec![
        TensorSpec {
            name: "blk.0.attn_q.weight.lora_a".into(),
            ne: vec![32, 2],
            ty: GgmlType::F32,
        },
        TensorSpec {
            name: "blk.0.attn_q.weight.lora_b".into(),
            ne: vec![2, 32],
            ty: GgmlType::F32,
        },
    ];
    let mut w = gguf::Writer::new(Vec::new(), &kvs, &specs).unwrap();
    for spec in &specs {
        w.write_tensor(&vec![0u8; spec.byte_size().unwrap() as usize]).unwrap();
    }
    w.finish().unwrap()
}

fn base_gguf() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("base.gguf");
    common::write_base_gguf(&path, "llama", TINY);
    std::fs::read(path).unwrap()
}

fn with_base(refuse: RefuseAdapters, version: &str) -> fake::Fake {
    fake::start(Config {
        version: version.into(),
        refuse_adapters: refuse,
        models: vec![("llama3.2:1b".into(), show_json(TINY, "Q4_K", true))],
        ..Config::default()
    })
}

#[test]
fn version_root_and_request_log() {
    let server = fake::start(Config::default());
    let v: Value = client()
        .get(format!("{}/api/version", server.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v, json!({"version": "0.34.2"}));
    assert_eq!(
        client().get(&server.url).send().unwrap().text().unwrap(),
        "Ollama is running"
    );
    let old = fake::start(Config {
        version: "0.0.0".into(),
        ..Config::default()
    });
    let v: Value = client()
        .get(format!("{}/api/version", old.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["version"], "0.0.0");
    assert_eq!(server.log(), ["GET /api/version", "GET /"]);
    assert_eq!(server.requests("GET /api/"), 1);
}

#[test]
fn blob_head_upload_head() {
    let server = fake::start(Config::default());
    let bytes = b"some blob".to_vec();
    let d = digest(&bytes);
    let head = |d: &str| {
        client()
            .head(format!("{}/api/blobs/{d}", server.url))
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(head(&d), 404);
    assert_eq!(upload(&server.url, &bytes).unwrap().status().as_u16(), 201);
    assert_eq!(head(&d), 200);
    // Already there: 200, not 201.
    assert_eq!(upload(&server.url, &bytes).unwrap().status().as_u16(), 200);
    assert_eq!(server.blob_count(), 1);
    assert_eq!(server.lock().blobs[&d], bytes);
    assert_eq!(head("sha256:1234"), 400);
    let r = client()
        .post(format!("{}/api/blobs/md5:00", server.url))
        .body("x")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(r.json::<Value>().unwrap(), json!({"error": "invalid digest format"}));
    assert_eq!(server.requests("HEAD /api/blobs/"), 3);
    assert_eq!(server.requests("POST /api/blobs/"), 3);
}

#[test]
fn large_upload_is_streamed_and_verified() {
    let server = fake::start(Config::default());
    // Larger than axum's 2 MB default body limit, which must not apply to blobs.
    let bytes: Vec<u8> = (0..5_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
    assert_eq!(upload(&server.url, &bytes).unwrap().status().as_u16(), 201);
    assert_eq!(server.lock().blobs[&digest(&bytes)].len(), bytes.len());
}

#[test]
fn digest_mismatch_and_corrupt_uploads() {
    let server = fake::start(Config::default());
    let bytes = b"payload".to_vec();
    let wrong = digest(b"something else");
    let r = client()
        .post(format!("{}/api/blobs/{wrong}", server.url))
        .body(bytes.clone())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let expected = format!("digest mismatch, expected \"{wrong}\", got \"{}\"", digest(&bytes));
    assert_eq!(r.json::<Value>().unwrap(), json!({"error": expected}));

    server.set_faults(Faults {
        corrupt_uploads: 1,
        ..Faults::default()
    });
    let r = upload(&server.url, &bytes).unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let msg = r.json::<Value>().unwrap()["error"].as_str().unwrap().to_string();
    assert!(
        msg.starts_with(&format!(
            "digest mismatch, expected \"{}\", got \"sha256:",
            digest(&bytes)
        )),
        "{msg}"
    );
    assert!(!msg.ends_with(&format!("{}\"", digest(&bytes))), "{msg}");
    assert_eq!(server.blob_count(), 0);
    // The fault was one-shot.
    assert_eq!(upload(&server.url, &bytes).unwrap().status().as_u16(), 201);
}

#[test]
fn cut_upload_is_a_connection_error_then_a_retry_succeeds() {
    let server = fake::start(Config::default());
    let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    server.set_faults(Faults {
        cut_uploads: 1,
        ..Faults::default()
    });
    let err = upload(&server.url, &bytes).expect_err("a cut upload must not produce an HTTP answer");
    assert!(err.status().is_none(), "{err:?}");
    assert!(!err.is_timeout(), "{err:?}");
    assert_eq!(server.blob_count(), 0);
    assert_eq!(server.lock().faults.cut_uploads, 0);
    assert_eq!(upload(&server.url, &bytes).unwrap().status().as_u16(), 201);
    assert_eq!(server.blob_count(), 1);

    // Streamed from a file, as the binary sends blobs.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blob");
    let other: Vec<u8> = bytes.iter().map(|b| b ^ 0x55).collect();
    std::fs::write(&path, &other).unwrap();
    let send = || {
        let body = reqwest::blocking::Body::sized(std::fs::File::open(&path).unwrap(), other.len() as u64);
        client()
            .post(format!("{}/api/blobs/{}", server.url, digest(&other)))
            .body(body)
            .send()
    };
    server.set_faults(Faults {
        cut_uploads: 1,
        ..Faults::default()
    });
    let err = send().expect_err("cut");
    assert!(err.status().is_none(), "{err:?}");
    assert_eq!(send().unwrap().status().as_u16(), 201);

    // A small body (one chunk) is cut too.
    server.set_faults(Faults {
        cut_uploads: 1,
        ..Faults::default()
    });
    assert!(upload(&server.url, b"tiny").is_err());
    assert_eq!(upload(&server.url, b"tiny").unwrap().status().as_u16(), 201);
}

fn adapter_request(adapter: &str) -> Value {
    json!({"model": "tuned", "from": "llama3.2:1b", "adapters": {"adapter.gguf": adapter},
           "parameters": {"temperature": 0.5}, "system": "Be brief.", "stream": true})
}

#[test]
fn adapters_refused_with_400() {
    let server = with_base(RefuseAdapters::Http400, "0.34.2");
    let a = adapter_gguf();
    upload(&server.url, &a).unwrap();
    let (status, body) = lines(post(&server.url, "/api/create", adapter_request(&digest(&a))));
    assert_eq!(
        (status, body),
        (400, vec![json!({"error": "LoRA adapters are no longer supported"})])
    );
    assert!(server.model("tuned").is_none());
    assert_eq!(server.create_requests(), [adapter_request(&digest(&a))]);
}

#[test]
fn adapters_refused_in_stream() {
    let server = with_base(RefuseAdapters::InStream, "0.34.2");
    let a = adapter_gguf();
    upload(&server.url, &a).unwrap();
    let resp = post(&server.url, "/api/create", adapter_request(&digest(&a)));
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let (status, body) = lines(resp);
    assert_eq!(status, 200);
    assert_eq!(
        body,
        [
            json!({"status": "parsing GGUF"}),
            json!({"error": "LoRA adapters are no longer supported"})
        ]
    );
    assert!(server.model("tuned").is_none());
}

#[test]
fn adapter_accepted_by_an_older_server() {
    let server = with_base(RefuseAdapters::Never, "0.33.0");
    let a = adapter_gguf();
    upload(&server.url, &a).unwrap();
    let (status, body) = lines(post(&server.url, "/api/create", adapter_request(&digest(&a))));
    assert_eq!(status, 200);
    let st = statuses(&body);
    assert_eq!(st.first().map(String::as_str), Some("parsing GGUF"));
    assert!(st.contains(&format!("using existing layer {}", digest(&a))), "{st:?}");
    assert!(st.iter().any(|s| s.starts_with("creating new layer sha256:")), "{st:?}");
    assert_eq!(&st[st.len() - 2..], ["writing manifest", "success"]);
    assert!(body.iter().all(|l| l.get("error").is_none()));

    let model = server.model("tuned:latest").unwrap();
    let base = server.model("llama3.2:1b").unwrap();
    assert_eq!(model.request.as_ref().unwrap()["adapters"]["adapter.gguf"], digest(&a));
    assert_eq!(model.size, base.size + a.len() as u64);
    let show: Value = post(&server.url, "/api/show", json!({"model": "tuned", "verbose": true}))
        .json()
        .unwrap();
    assert_eq!(show["details"], base.show["details"]);
    assert_eq!(show["model_info"], base.show["model_info"]);
    assert_eq!(show["template"], base.show["template"]);
    assert_eq!(show["system"], "Be brief.");
    // The base's stop survives; the request's temperature is added.
    assert_eq!(
        show["parameters"],
        format!("{:<30} \"<|eot_id|>\"\n{:<30} 0.5", "stop", "temperature")
    );
    let modelfile = show["modelfile"].as_str().unwrap();
    let hex = &digest(&a)["sha256:".len()..];
    assert!(
        modelfile.contains(&format!("\nADAPTER /root/.ollama/models/blobs/sha256-{hex}\n")),
        "{modelfile}"
    );
    assert!(show.get("tensors").is_some());
    // Without verbose, no tensor list.
    let brief: Value = post(&server.url, "/api/show", json!({"model": "tuned"}))
        .json()
        .unwrap();
    assert!(brief.get("tensors").is_none());
}

#[test]
fn create_validation_answers_400_before_streaming() {
    let server = with_base(RefuseAdapters::Never, "0.33.0");
    let a = adapter_gguf();
    let b = b"not even a gguf".to_vec();
    upload(&server.url, &a).unwrap();
    upload(&server.url, &b).unwrap();
    let cases = [
        (
            json!({"model": "bad name!", "from": "llama3.2:1b"}),
            "invalid model name",
        ),
        (json!({"model": "x"}), "neither 'from' or 'files' was specified"),
        (
            json!({"model": "x", "from": "llama3.2:1b", "adapters": {"a.gguf": digest(&a), "b.gguf": digest(&b)}}),
            "only one adapter is currently supported",
        ),
        (
            json!({"model": "x", "from": "llama3.2:1b", "adapters": {"a.gguf": digest(b"absent")}}),
            &format!("missing blob {}", digest(b"absent")),
        ),
    ];
    for (req, msg) in cases {
        let (status, body) = lines(post(&server.url, "/api/create", req.clone()));
        assert_eq!((status, body), (400, vec![json!({"error": msg})]), "{req}");
    }
    // Not an adapter GGUF: an error line inside the stream.
    let (status, body) = lines(post(
        &server.url,
        "/api/create",
        json!({"model": "x", "from": "llama3.2:1b", "adapters": {"b": digest(&b)}}),
    ));
    assert_eq!(status, 200);
    assert!(
        body.last().unwrap()["error"]
            .as_str()
            .unwrap()
            .starts_with("adapter layer is not a GGUF LoRA adapter"),
        "{body:?}"
    );
    assert_eq!(server.create_requests().len(), 5);
    assert!(server.model("x").is_none());
}

#[test]
fn create_from_gguf_file_then_show() {
    let server = fake::start(Config::default());
    let g = base_gguf();
    assert_eq!(upload(&server.url, &g).unwrap().status().as_u16(), 201);
    let req = json!({
        "model": "tiny", "files": {"model.gguf": digest(&g)},
        "template": "{{ .System }} {{ .Prompt }}", "system": "You are \"tiny\".",
        "license": ["MIT", "Apache-2.0"],
        "parameters": {"stop": ["<|eot_id|>", "</s>"], "temperature": 0.7, "num_ctx": 4096, "seed": 1000000},
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
    });
    let (status, body) = lines(post(&server.url, "/api/create", req));
    assert_eq!(status, 200);
    let st = statuses(&body);
    assert_eq!(st[0], "parsing GGUF");
    assert_eq!(st[1], format!("using existing layer {}", digest(&g)));
    assert_eq!(&st[st.len() - 2..], ["writing manifest", "success"]);

    let show: Value = post(
        &server.url,
        "/api/show",
        json!({"model": "tiny:latest", "verbose": true}),
    )
    .json()
    .unwrap();
    assert_eq!(show["model_info"]["general.architecture"], "llama");
    assert_eq!(show["model_info"]["llama.block_count"], 2);
    assert_eq!(show["model_info"]["llama.attention.head_count_kv"], 2);
    assert_eq!(show["details"]["format"], "gguf");
    assert_eq!(show["details"]["family"], "llama");
    assert_eq!(show["template"], "{{ .System }} {{ .Prompt }}");
    assert_eq!(show["system"], "You are \"tiny\".");
    assert_eq!(show["license"], "MIT\nApache-2.0");
    assert_eq!(show["messages"][1], json!({"role": "assistant", "content": "hello"}));
    let expected = [
        format!("{:<30} {}", "stop", "\"<|eot_id|>\""),
        format!("{:<30} {}", "stop", "\"</s>\""),
        format!("{:<30} {}", "temperature", "0.7"),
        format!("{:<30} {}", "num_ctx", "4096"),
        format!("{:<30} {}", "seed", "1e+06"),
    ];
    assert_eq!(show["parameters"], expected.join("\n"));
    let tensors = show["tensors"].as_array().unwrap();
    assert!(tensors.contains(&json!({"name": "blk.1.attn_k.weight", "type": "F32", "shape": [32, 16]})));
    assert!(!show["modelfile"].as_str().unwrap().contains("ADAPTER"));
    assert_eq!(server.model("tiny").unwrap().size, g.len() as u64);

    let (status, body) = lines(post(&server.url, "/api/show", json!({"model": "nope"})));
    assert_eq!((status, body), (404, vec![json!({"error": "model 'nope' not found"})]));
}

#[test]
fn pull_then_show_tags_and_delete() {
    let server = fake::start(Config {
        pullable: vec![("qwen3:0.6b".into(), show_json(TINY, "Q8_0", true))],
        ..Config::default()
    });
    let (status, body) = lines(post(
        &server.url,
        "/api/pull",
        json!({"model": "missing", "stream": true}),
    ));
    assert_eq!(status, 200);
    assert_eq!(
        body,
        [
            json!({"status": "pulling manifest"}),
            json!({"error": "pull model manifest: file does not exist"})
        ]
    );

    let (status, body) = lines(post(
        &server.url,
        "/api/pull",
        json!({"model": "qwen3:0.6b", "stream": true}),
    ));
    assert_eq!(status, 200);
    let st = statuses(&body);
    assert_eq!(st[0], "pulling manifest");
    assert_eq!(
        &st[st.len() - 3..],
        ["verifying sha256 digest", "writing manifest", "success"]
    );
    let progress: Vec<&Value> = body.iter().filter(|l| l.get("digest").is_some()).collect();
    assert!(!progress.is_empty());
    for p in &progress {
        let d = p["digest"].as_str().unwrap();
        assert_eq!(p["status"], format!("pulling {}", &d[7..19]));
        assert!(p["completed"].as_u64().unwrap() <= p["total"].as_u64().unwrap());
    }

    let show: Value = post(
        &server.url,
        "/api/show",
        json!({"model": "qwen3:0.6b", "verbose": true}),
    )
    .json()
    .unwrap();
    assert_eq!(show["details"]["quantization_level"], "Q4_K_M");
    let tags: Value = client()
        .get(format!("{}/api/tags", server.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let models = tags["models"].as_array().unwrap();
    assert_eq!(models.len(), 1);
    assert_eq!(models[0]["name"], "qwen3:0.6b");
    assert_eq!(models[0]["model"], "qwen3:0.6b");
    assert_eq!(models[0]["details"]["family"], "llama");
    assert!(models[0]["size"].as_u64().unwrap() > 0);
    assert_eq!(models[0]["digest"].as_str().unwrap().len(), 64);

    let del = |m: &str| {
        lines(
            client()
                .delete(format!("{}/api/delete", server.url))
                .json(&json!({"model": m}))
                .send()
                .unwrap(),
        )
    };
    assert_eq!(del("qwen3:0.6b").0, 200);
    assert_eq!(
        del("qwen3:0.6b"),
        (404, vec![json!({"error": "model 'qwen3:0.6b' not found"})])
    );
    assert!(server.model("qwen3:0.6b").is_none());
}

#[test]
fn create_from_a_model_that_must_be_pulled() {
    let server = fake::start(Config {
        refuse_adapters: RefuseAdapters::Never,
        pullable: vec![("llama3.2:1b".into(), show_json(TINY, "Q4_K", true))],
        ..Config::default()
    });
    let (status, body) = lines(post(
        &server.url,
        "/api/create",
        json!({"model": "mine", "from": "llama3.2:1b"}),
    ));
    assert_eq!(status, 200);
    let st = statuses(&body);
    assert_eq!(st[0], "pulling manifest");
    assert!(st.contains(&"verifying sha256 digest".to_string()));
    assert_eq!(st.last().unwrap(), "success");
    assert!(server.model("llama3.2:1b").is_some());
    assert!(server.model("mine").is_some());

    let (status, body) = lines(post(
        &server.url,
        "/api/create",
        json!({"model": "mine", "from": "nowhere:7b"}),
    ));
    assert_eq!(status, 200);
    assert_eq!(
        body.last().unwrap(),
        &json!({"error": "pull model manifest: file does not exist"})
    );
}

#[test]
fn create_error_fault_is_one_shot_and_non_streamed_answers() {
    let server = with_base(RefuseAdapters::Http400, "0.34.2");
    server.set_faults(Faults {
        create_error: Some((500, "boom".into())),
        ..Faults::default()
    });
    let req = json!({"model": "plain", "from": "llama3.2:1b", "stream": false});
    let (status, body) = lines(post(&server.url, "/api/create", req.clone()));
    assert_eq!((status, body), (500, vec![json!({"error": "boom"})]));
    assert!(server.model("plain").is_none());
    // Next time it works; with stream false the answer is the last status alone.
    let (status, body) = lines(post(&server.url, "/api/create", req));
    assert_eq!((status, body), (200, vec![json!({"status": "success"})]));
    assert_eq!(server.create_requests().len(), 2);
    assert_eq!(server.requests("POST /api/create"), 2);

    server.lock().faults.fail_show_after_create = true;
    assert_eq!(
        post(&server.url, "/api/show", json!({"model": "plain"}))
            .status()
            .as_u16(),
        500
    );
    assert_eq!(
        post(&server.url, "/api/show", json!({"model": "llama3.2:1b"}))
            .status()
            .as_u16(),
        200
    );
}

#[test]
fn go_formatting_of_parameter_values() {
    use fake::go_value;
    assert_eq!(go_value(&json!(1)), "1");
    assert_eq!(go_value(&json!(0.1)), "0.1");
    assert_eq!(go_value(&json!(123456)), "123456");
    assert_eq!(go_value(&json!(1234567)), "1.234567e+06");
    assert_eq!(go_value(&json!(0.00001)), "1e-05");
    assert_eq!(go_value(&json!(true)), "true");
    assert_eq!(go_value(&json!("a\"b\\c\nd\u{1}")), r#""a\"b\\c\nd\x01""#);
}

// The client (`ollama_tools::remote::ollama::Client`) against servers that misbehave in ways the fake does
// not: huge or hostile answers, silence, loops, nulls. Each is a small axum app on 127.0.0.1:0.

mod hostile {
    use std::time::Duration;

    use axum::Router;
    use axum::body::{Body, Bytes};
    use axum::http::{StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post};

    pub struct Server {
        pub url: String,
        _rt: tokio::runtime::Runtime,
    }

    pub fn start(app: Router) -> Server {
        let (url, rt) = crate::common::serve(app);
        Server { url, _rt: rt }
    }

    /// `chunk` repeated to 100 MB, streamed without a Content-Length.
    pub fn endless(status: StatusCode, pattern: &'static [u8]) -> Response {
        let chunk = Bytes::from(pattern.repeat((64 << 10) / pattern.len()));
        let body = futures_util::stream::iter(
            (0..(100 << 20) / chunk.len()).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
        );
        Response::builder()
            .status(status)
            .body(Body::from_stream(body))
            .unwrap()
    }

    /// NDJSON lines, then silence forever when `stall`.
    pub fn ndjson(lines: Vec<String>, stall: bool) -> Response {
        let body = futures_util::stream::unfold((lines.into_iter(), stall), |(mut it, stall)| async move {
            match it.next() {
                Some(l) => Some((Ok::<_, std::io::Error>(format!("{l}\n")), (it, stall))),
                None if stall => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    None
                }
                None => None,
            }
        });
        Response::builder()
            .header(header::CONTENT_TYPE, "application/x-ndjson")
            .body(Body::from_stream(body))
            .unwrap()
    }

    /// Takes the whole upload, then never answers.
    async fn swallow(body: Body) -> Response {
        use futures_util::StreamExt;
        let mut s = body.into_data_stream();
        while s.next().await.is_some() {}
        tokio::time::sleep(Duration::from_secs(3600)).await;
        StatusCode::CREATED.into_response()
    }

    pub fn app() -> Router {
        let escape_status = || {
            ndjson(
                vec![
                    r#"{"status":"\u001b[2J\u001b]0;owned\u0007parsing\rGGUF"}"#.into(),
                    r#"{"status":"success"}"#.into(),
                ],
                false,
            )
        };
        Router::new()
            .route("/huge/api/version", get(|| async { endless(StatusCode::OK, b"{\"version\":\"0.34.2\"") }))
            .route("/huge/api/create", post(|| async { endless(StatusCode::INTERNAL_SERVER_ERROR, b"\x1b[31mdisk full\r") }))
            .route("/longline/api/create", post(|| async { endless(StatusCode::OK, b"{\"status\":\"aaaaaaaaaaaaaaaaaaaa") }))
            .route("/escapes/api/create", post(move || async move { escape_status() }))
            .route("/stall/api/create", post(|| async { ndjson(vec![r#"{"status":"parsing GGUF"}"#.into()], true) }))
            .route("/stall/api/blobs/{digest}", post(swallow))
            .route("/loop/api/version", get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/loop/api/version")]).into_response() }))
            .route(
                "/nulls/api/show",
                post(|| async {
                    axum::Json(serde_json::json!({
                        "license": null, "modelfile": null, "parameters": null, "template": null, "system": null,
                        "details": {"format": null, "family": "llama", "parameter_size": null, "quantization_level": null},
                        "model_info": null, "tensors": null, "messages": null, "renderer": null, "parser": null,
                        "modified_at": null
                    }))
                }),
            )
            .route(
                "/names/api/show",
                post(|| async {
                    axum::Json(serde_json::json!({
                        "template": "{{ .Prompt }}\u{1b}", "details": {"family": "llama\u{1b}[2J"},
                        "model_info": {"general.architecture": "llama\u{1b}]0;x\u{7}", "tokenizer.ggml.tokens": ["\u{1b}"]},
                        "tensors": [{"name": "blk.0.attn_q.weight\r", "type": "Q4_K", "shape": [2, 2]}]
                    }))
                }),
            )
            .route("/nulls/api/tags", get(|| async { axum::Json(serde_json::json!({"models": [{"name": "m:latest", "size": null, "digest": null}]})) }))
            .route("/nulls/api/pull", post(|| async { ndjson(vec![r#"{"status":"pulling","digest":null,"total":null,"completed":null}"#.into(), r#"{"status":"success","error":null}"#.into()], false) }))
    }
}

fn quick() -> ollama_tools::error::Patience {
    ollama_tools::error::Patience {
        idle: std::time::Duration::from_millis(700),
        retries: 0,
        max_wait: std::time::Duration::from_millis(10),
    }
}

fn api(server: &hostile::Server, prefix: &str) -> ollama_tools::remote::ollama::Client {
    ollama_tools::remote::ollama::Client::with_patience(&format!("{}/{prefix}", server.url), quick())
}

/// Statuses a create passes on.
fn create_statuses(
    client: &ollama_tools::remote::ollama::Client,
) -> (Result<(), ollama_tools::remote::ollama::ApiError>, Vec<String>) {
    let mut seen = Vec::new();
    let r = client.create(&json!({"model": "m"}), &ollama_tools::progress::Silent, &mut |s| {
        seen.push(s.status.clone())
    });
    (r, seen)
}

#[test]
fn huge_answers_are_refused_or_cut_short_and_never_read_whole() {
    let server = hostile::start(hostile::app());
    let started = std::time::Instant::now();
    let err = api(&server, "huge").version().unwrap_err().to_string();
    assert!(
        err.contains("larger than 64 KiB") && err.contains("/huge/api/version"),
        "{err}"
    );
    let (r, _) = create_statuses(&api(&server, "huge"));
    let err = r.unwrap_err().to_string();
    assert!(err.contains("answered 500") && err.contains("disk full"), "{err}");
    assert!(
        err.len() < 1000 && !err.contains('\x1b') && !err.contains('\r'),
        "a 100 MB error body is a short message: {err:?}"
    );
    let (r, _) = create_statuses(&api(&server, "longline"));
    let err = r.unwrap_err().to_string();
    assert!(
        err.contains("a line longer than 1 MiB") && err.contains("/longline/api/create"),
        "{err}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn status_lines_reach_the_terminal_defused() {
    let server = hostile::start(hostile::app());
    let (r, seen) = create_statuses(&api(&server, "escapes"));
    r.unwrap();
    assert_eq!(
        seen,
        vec![
            "\\u{1b}[2J\\u{1b}]0;owned\\u{7}parsing\\u{d}GGUF".to_string(),
            "success".to_string()
        ]
    );
}

#[test]
fn a_silent_server_is_given_up_on_after_the_idle_timeout() {
    let server = hostile::start(hostile::app());
    let started = std::time::Instant::now();
    let (r, seen) = create_statuses(&api(&server, "stall"));
    let err = r.unwrap_err();
    assert!(
        matches!(err, ollama_tools::remote::ollama::ApiError::Stalled { .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("sent nothing for 1 s") && text.contains("parsing GGUF") && text.contains("OLLAMA_TOOLS_TIMEOUT"),
        "{text}"
    );
    assert_eq!(seen, vec!["parsing GGUF".to_string()]);

    // An upload the server takes whole and never answers.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blob");
    std::fs::write(&path, vec![7u8; 3 << 20]).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let err = api(&server, "stall")
        .push_blob(&digest(&[7u8; 1]), file, 3 << 20, &ollama_tools::progress::Silent)
        .unwrap_err();
    assert!(
        matches!(err, ollama_tools::remote::ollama::ApiError::Stalled { .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains(&format!("{} of {} bytes taken", 3 << 20, 3 << 20)),
        "{err}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_redirect_loop_is_named_as_such() {
    let server = hostile::start(hostile::app());
    let err = api(&server, "loop").version().unwrap_err().to_string();
    assert!(
        err.contains("redirects in a loop") && err.contains(&server.url),
        "{err}"
    );
    assert!(!err.contains("EOF"), "{err}");
}

#[test]
fn nulls_where_strings_are_documented_read_as_absent() {
    let server = hostile::start(hostile::app());
    let client = api(&server, "nulls");
    let show = client.show("m").unwrap();
    assert_eq!(
        (show.details.family.as_str(), show.template.as_str(), show.tensors.len()),
        ("llama", "", 0)
    );
    assert!(show.model_info.is_empty() && show.license_text().is_empty());
    let tags = client.tags().unwrap();
    assert_eq!(
        (tags[0].name.as_str(), tags[0].size, tags[0].digest.as_str()),
        ("m:latest", 0, "")
    );
    let mut seen = Vec::new();
    client
        .pull("m", &ollama_tools::progress::Silent, &mut |s| {
            seen.push((s.status.clone(), s.total))
        })
        .unwrap();
    assert_eq!(seen, vec![("pulling".to_string(), 0), ("success".to_string(), 0)]);
}

#[test]
fn names_in_a_show_answer_are_defused_and_its_data_kept() {
    let server = hostile::start(hostile::app());
    let show = api(&server, "names").show("m").unwrap();
    assert_eq!(show.details.family, "llama\\u{1b}[2J");
    assert_eq!(show.model_info["general.architecture"], "llama\\u{1b}]0;x\\u{7}");
    assert_eq!(show.tensors[0].name, "blk.0.attn_q.weight\\u{d}");
    // Data the model is made from is not touched.
    assert_eq!(show.template, "{{ .Prompt }}\u{1b}");
    assert_eq!(show.model_info["tokenizer.ggml.tokens"][0], "\u{1b}");
}
