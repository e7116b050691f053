//! The fake Hugging Face Hub (tests/common/hub_server.rs) answers as the Hub does.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::hub_server::{self, Access, File, Hub, HubFaults, Repo};
use reqwest::StatusCode;
use reqwest::blocking::{Client, Response};

const TOKEN: &str = "hf_valid_token";

fn client() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Deterministic bytes, large enough to span several 64 KiB chunks.
fn weights(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
}

fn hub() -> Hub {
    let config = br#"{"peft_type":"LORA","r":8}"#.to_vec();
    let mut gated = Repo::new(
        "meta/gated",
        vec![
            File::git("adapter_config.json", config.clone()),
            File::lfs("adapter_model.safetensors", weights(1000)),
        ],
    );
    gated.access = Access::Gated;
    let mut private = Repo::new("me/private", vec![File::git("adapter_config.json", config.clone())]);
    private.access = Access::Private;
    hub_server::start(vec![
        Repo::new(
            "org/adapter",
            vec![
                File::git("adapter_config.json", config),
                File::lfs("adapter_model.safetensors", weights(300_000)),
                File::git("sub/dir/README.md", b"# hi\n".to_vec()),
            ],
        ),
        gated,
        private,
    ])
}

fn header(r: &Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

fn get(url: &str, token: Option<&str>, range: Option<&str>) -> Response {
    let mut req = client().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(r) = range {
        req = req.header("Range", r);
    }
    req.send().unwrap()
}

fn head(url: &str, token: Option<&str>) -> Response {
    let mut req = client().head(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().unwrap()
}

fn assert_error(r: Response, status: u16, code: Option<&str>, msg: &str) {
    assert_eq!(r.status().as_u16(), status);
    assert_eq!(header(&r, "x-error-code"), code.unwrap_or(""));
    assert_eq!(header(&r, "x-error-message"), msg);
    if r.content_length() != Some(0) {
        let body: serde_json::Value = r.json().unwrap();
        assert_eq!(body, serde_json::json!({"error": msg}));
    }
}

#[test]
fn git_ids_are_git_s() {
    assert_eq!(
        hub_server::hex(&hub_server::sha1(b"abc")),
        "a9993e364706816aba3e25717850c26c9cd0d89d"
    );
    assert_eq!(
        hub_server::hex(&hub_server::sha1(&[b'a'; 1000])),
        "291e9a6c66994949b57ba5e650361e98fc36b1ba"
    );
    // `printf 'hello\n' | git hash-object --stdin`
    assert_eq!(
        hub_server::git_blob_sha1(b"hello\n"),
        "ce013625030ba8dba906f756967f9e9ca394464a"
    );
}

#[test]
fn repo_info_at_branch_and_at_commit() {
    let hub = hub();
    let commit = hub.commit("org/adapter");
    assert_eq!(commit.len(), 40);
    for url in [
        format!("{}/api/models/org/adapter", hub.url),
        format!("{}/api/models/org/adapter/revision/main", hub.url),
        format!("{}/api/models/org/adapter/revision/{commit}", hub.url),
    ] {
        let r = get(&url, None, None);
        assert_eq!(r.status(), StatusCode::OK, "{url}");
        let info: serde_json::Value = r.json().unwrap();
        assert_eq!(info["id"], "org/adapter");
        assert_eq!(info["modelId"], "org/adapter");
        assert_eq!(info["sha"], commit.as_str());
        assert_eq!(info["private"], false);
        assert_eq!(info["gated"], false);
        let files: Vec<&str> = info["siblings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["rfilename"].as_str().unwrap())
            .collect();
        assert_eq!(
            files,
            ["adapter_config.json", "adapter_model.safetensors", "sub/dir/README.md"]
        );
    }
    let info: serde_json::Value = get(&format!("{}/api/models/org/adapter?blobs=true", hub.url), None, None)
        .json()
        .unwrap();
    let w = weights(300_000);
    assert_eq!(info["siblings"][1]["lfs"]["sha256"], hub_server::sha256_hex(&w));
    assert_eq!(info["siblings"][1]["size"], 300_000);
    assert!(info["siblings"][0].get("lfs").is_none());
    // The gated repo's info is public, as on the Hub; the private one's is not.
    let info: serde_json::Value = get(&format!("{}/api/models/meta/gated", hub.url), None, None)
        .json()
        .unwrap();
    assert_eq!(info["gated"], "manual");
    assert_error(
        get(&format!("{}/api/models/me/private", hub.url), None, None),
        401,
        Some("RepoNotFound"),
        "Repository not found",
    );
    hub.add_token(TOKEN);
    let info: serde_json::Value = get(&format!("{}/api/models/me/private", hub.url), Some(TOKEN), None)
        .json()
        .unwrap();
    assert_eq!(info["private"], true);
}

#[test]
fn missing_repo_revision_and_entry() {
    let hub = hub();
    assert_error(
        get(&format!("{}/api/models/org/nope", hub.url), None, None),
        401,
        Some("RepoNotFound"),
        "Repository not found",
    );
    assert_error(
        head(&hub.resolve_url("org/nope", "main", "x.json"), None),
        401,
        Some("RepoNotFound"),
        "Repository not found",
    );
    // With a valid token a missing repo is a 404; a bad token is refused everywhere.
    hub.add_token(TOKEN);
    assert_error(
        get(&format!("{}/api/models/org/nope", hub.url), Some(TOKEN), None),
        404,
        Some("RepoNotFound"),
        "Repository not found",
    );
    let bad = get(&format!("{}/api/models/org/adapter", hub.url), Some("hf_wrong"), None);
    assert_error(bad, 401, None, hub_server::INVALID_TOKEN_MESSAGE);

    let r = get(&format!("{}/api/models/org/adapter/revision/v9", hub.url), None, None);
    assert_error(r, 404, Some("RevisionNotFound"), "Invalid rev id: v9");
    let r = get(
        &format!("{}/api/models/org/adapter/revision/refs%2Fpr%2F1", hub.url),
        None,
        None,
    );
    assert_error(r, 404, Some("RevisionNotFound"), "Invalid rev id: refs/pr/1");
    assert_error(
        head(&hub.resolve_url("org/adapter", "v9", "adapter_config.json"), None),
        404,
        Some("RevisionNotFound"),
        "Invalid rev id: v9",
    );
    assert_error(
        get(&hub.resolve_url("org/adapter", "main", "nope.json"), None, None),
        404,
        Some("EntryNotFound"),
        "Entry not found",
    );
    assert_error(
        head(&hub.resolve_url("org/adapter", "main", "nope.json"), None),
        404,
        Some("EntryNotFound"),
        "Entry not found",
    );
}

#[test]
fn gated_files_need_a_token() {
    let hub = hub();
    let url = hub.resolve_url("meta/gated", "main", "adapter_config.json");
    let msg = "Access to model meta/gated is restricted. You must have access to it and be authenticated to access it. Please log in.";
    assert_error(head(&url, None), 401, Some("GatedRepo"), msg);
    assert_error(get(&url, None, None), 401, Some("GatedRepo"), msg);
    hub.add_token(TOKEN);
    assert_eq!(head(&url, Some(TOKEN)).status(), StatusCode::OK);
    assert_eq!(
        head(
            &hub.resolve_url("meta/gated", "main", "adapter_model.safetensors"),
            Some(TOKEN)
        )
        .status(),
        StatusCode::FOUND
    );
    // A valid token without access to the gated repo: 403.
    hub.add_token("hf_other");
    hub.lock().not_granted.push("hf_other".into());
    let r = head(&url, Some("hf_other"));
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(header(&r, "x-error-code"), "GatedRepo");
}

#[test]
fn small_file_is_served_in_place() {
    let hub = hub();
    let commit = hub.commit("org/adapter");
    let config = br#"{"peft_type":"LORA","r":8}"#;
    let url = hub.resolve_url("org/adapter", "main", "adapter_config.json");
    let r = head(&url, None);
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "etag"), format!("\"{}\"", hub_server::git_blob_sha1(config)));
    assert_eq!(header(&r, "x-repo-commit"), commit);
    assert_eq!(header(&r, "content-length"), config.len().to_string());
    assert_eq!(header(&r, "x-linked-etag"), "");
    let r = get(&url, None, None);
    assert_eq!(header(&r, "x-repo-commit"), commit);
    assert_eq!(r.bytes().unwrap().as_ref(), config);
    let r = get(&url, None, Some("bytes=5-"));
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        header(&r, "content-range"),
        format!("bytes 5-{}/{}", config.len() - 1, config.len())
    );
    assert_eq!(r.bytes().unwrap().as_ref(), &config[5..]);
    // A path with folders, the revision as a commit, and an encoded revision.
    let r = get(
        &hub.resolve_url("org/adapter", &commit, "sub/dir/README.md"),
        None,
        None,
    );
    assert_eq!(r.bytes().unwrap().as_ref(), b"# hi\n");
    assert_eq!(
        get(
            &hub.resolve_url("org/adapter", "main", "sub%2Fdir/README.md"),
            None,
            None
        )
        .status(),
        StatusCode::OK
    );
}

#[test]
fn lfs_file_redirects_to_the_cdn_host() {
    let hub = hub();
    let w = weights(300_000);
    let sha = hub_server::sha256_hex(&w);
    for r in [
        head(
            &hub.resolve_url("org/adapter", "main", "adapter_model.safetensors"),
            None,
        ),
        get(
            &hub.resolve_url("org/adapter", "main", "adapter_model.safetensors"),
            None,
            None,
        ),
    ] {
        assert_eq!(r.status(), StatusCode::FOUND);
        let location = reqwest::Url::parse(&header(&r, "location")).unwrap();
        assert_eq!(
            format!("{}:{}", location.host_str().unwrap(), location.port().unwrap()),
            hub.cdn_host
        );
        assert_eq!(location.path(), format!("/cdn/{sha}"));
        assert_eq!(header(&r, "x-linked-etag"), format!("\"{sha}\""));
        assert_eq!(header(&r, "x-linked-size"), "300000");
        assert_eq!(header(&r, "x-repo-commit"), hub.commit("org/adapter"));
        let etag = header(&r, "etag");
        assert!(!etag.is_empty() && etag != format!("\"{sha}\""));
    }
    // The signed URL without its signature is refused.
    assert_eq!(
        get(&format!("http://{}/cdn/{sha}", hub.cdn_host), None, None).status(),
        StatusCode::FORBIDDEN
    );
}

fn cdn_url(hub: &Hub, path: &str) -> String {
    let r = head(&hub.resolve_url("org/adapter", "main", path), None);
    assert_eq!(r.status(), StatusCode::FOUND);
    header(&r, "location")
}

#[test]
fn cdn_serves_ranges_and_resumes() {
    let hub = hub();
    let w = weights(300_000);
    let url = cdn_url(&hub, "adapter_model.safetensors");
    let r = head(&url, None);
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-length"), "300000");
    assert_eq!(header(&r, "accept-ranges"), "bytes");
    assert_eq!(header(&r, "etag"), format!("\"{}\"", hub_server::sha256_hex(&w)));
    // A probe.
    let r = get(&url, None, Some("bytes=0-0"));
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&r, "content-range"), "bytes 0-0/300000");
    assert_eq!(r.bytes().unwrap().as_ref(), &w[..1]);
    // First half, then the rest.
    let r = get(&url, None, Some("bytes=0-149999"));
    assert_eq!(header(&r, "content-range"), "bytes 0-149999/300000");
    let mut all = r.bytes().unwrap().to_vec();
    let r = get(&url, None, Some("bytes=150000-"));
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&r, "content-range"), "bytes 150000-299999/300000");
    all.extend_from_slice(&r.bytes().unwrap());
    assert_eq!(all, w);
    let r = get(&url, None, Some("bytes=300000-"));
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&r, "content-range"), "bytes */300000");
    assert_eq!(get(&url, None, None).bytes().unwrap().to_vec(), w);
    assert_eq!(hub.served_bytes(), 1 + 300_000 + 300_000);
}

#[test]
fn cut_body_then_resume() {
    let hub = hub();
    let w = weights(300_000);
    let url = cdn_url(&hub, "adapter_model.safetensors");
    hub.set_faults(HubFaults {
        cut_after: Some(100_000),
        ..Default::default()
    });
    // A probe does not use the fault up.
    assert_eq!(get(&url, None, Some("bytes=0-0")).bytes().unwrap().len(), 1);
    let mut r = get(&url, None, None);
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-length"), "300000");
    let mut got = Vec::new();
    let err = r.read_to_end(&mut got);
    assert!(err.is_err() || got.len() < w.len(), "the body was not cut");
    assert!(!got.is_empty() && got.len() <= 100_000, "got {} bytes", got.len());
    assert_eq!(got, w[..got.len()]);
    assert!(hub.lock().faults.cut_after.is_none());
    // Resume where it stopped.
    let r = get(&url, None, Some(&format!("bytes={}-", got.len())));
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    got.extend_from_slice(&r.bytes().unwrap());
    assert_eq!(got, w);

    // Regular files are cut too.
    let config = br#"{"peft_type":"LORA","r":8}"#;
    hub.set_faults(HubFaults {
        cut_after: Some(4),
        ..Default::default()
    });
    let mut got = Vec::new();
    let res = get(
        &hub.resolve_url("org/adapter", "main", "adapter_config.json"),
        None,
        None,
    )
    .read_to_end(&mut got);
    assert!(res.is_err() || got.len() < config.len());
    assert_eq!(got, config[..got.len()]);
}

#[test]
fn corrupt_flips_one_byte_once() {
    let hub = hub();
    let w = weights(300_000);
    let url = cdn_url(&hub, "adapter_model.safetensors");
    hub.set_faults(HubFaults {
        corrupt_next: true,
        ..Default::default()
    });
    let r = get(&url, None, None);
    assert_eq!(header(&r, "etag"), format!("\"{}\"", hub_server::sha256_hex(&w)));
    let bad = r.bytes().unwrap();
    assert_eq!(bad.len(), w.len());
    assert_eq!(bad.iter().zip(&w).filter(|(a, b)| a != b).count(), 1);
    assert_ne!(hub_server::sha256_hex(&bad), hub_server::sha256_hex(&w));
    assert_eq!(get(&url, None, None).bytes().unwrap().to_vec(), w);
}

#[test]
fn slow_bodies_take_time() {
    let hub = hub();
    let url = cdn_url(&hub, "adapter_model.safetensors");
    hub.set_faults(HubFaults {
        slow_ms_per_mb: 2000,
        ..Default::default()
    });
    let t = Instant::now();
    assert_eq!(get(&url, None, None).bytes().unwrap().len(), 300_000);
    // 300000 bytes at 2 s/MiB: about 570 ms.
    assert!(t.elapsed() >= Duration::from_millis(500), "{:?}", t.elapsed());
}

#[test]
fn rate_limit_answers_429() {
    let hub = hub();
    hub.set_faults(HubFaults {
        rate_limit: 2,
        ..Default::default()
    });
    let url = format!("{}/api/models/org/adapter", hub.url);
    for _ in 0..2 {
        let r = get(&url, None, None);
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(header(&r, "retry-after"), "7");
        assert_eq!(header(&r, "x-error-message"), hub_server::RATE_LIMIT_MESSAGE);
    }
    assert_eq!(get(&url, None, None).status(), StatusCode::OK);
    assert_eq!(hub.requests(|r| r.path == "/api/models/org/adapter"), 3);
}

#[test]
fn log_records_auth_per_host() {
    let hub = hub();
    hub.add_token(TOKEN);
    let url = hub.resolve_url("meta/gated", "main", "adapter_model.safetensors");
    let r = head(&url, Some(TOKEN));
    assert_eq!(r.status(), StatusCode::FOUND);
    let location = header(&r, "location");
    let r = get(&location, None, Some("bytes=10-"));
    assert_eq!(r.bytes().unwrap().to_vec(), weights(1000)[10..]);
    let hub_host = hub.url.trim_start_matches("http://").to_string();
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(
        hub.requests(|r| r.host == hub_host && r.method == "HEAD" && r.auth.as_deref() == Some(bearer.as_str())),
        1
    );
    assert_eq!(
        hub.requests(|r| r.host == hub.cdn_host && r.auth.is_none() && r.range.as_deref() == Some("bytes=10-")),
        1
    );
    assert_eq!(hub.requests(|r| r.host == hub.cdn_host && r.auth.is_some()), 0);

    // The CDN host is another origin: a client that follows redirects drops the token there, and
    // the log shows a client that did not.
    let follow = Client::builder().build().unwrap();
    let r = follow.get(&url).bearer_auth(TOKEN).send().unwrap();
    assert_eq!(r.bytes().unwrap().to_vec(), weights(1000));
    assert_eq!(hub.requests(|r| r.host == hub.cdn_host && r.auth.is_some()), 0);
    get(&location, Some(TOKEN), None);
    assert_eq!(hub.requests(|r| r.host == hub.cdn_host && r.auth.is_some()), 1);
}
