//! Downloading a model's GGUF from an Ollama registry: a test registry (axum on 127.0.0.1:0) that
//! speaks the OCI distribution API as Ollama's does, with Range support, and can be told to cut a
//! connection, corrupt a byte, ignore Range, or refuse with 404 / 401.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ollama_tools::error::Patience;
use ollama_tools::progress::{Progress, Silent};
use ollama_tools::remote::ollama::ModelName;
use ollama_tools::remote::registry::{pull_model_blob, pull_model_blob_with};
use ollama_tools::{Error, ErrorKind};
use sha2::{Digest, Sha256};

mod common;

const MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// What the test registry should do wrong.
#[derive(Default)]
struct Misbehave {
    /// Answer manifest requests with this status and an OCI error body (404 or 401).
    manifest_status: Option<u16>,
    /// Serve a manifest without a model layer.
    no_model_layer: bool,
    /// Cut this many blob responses half-way through what they were asked for.
    cuts: usize,
    /// Flip one byte of the blob in every response.
    corrupt: bool,
    /// Answer Range requests with 200 and the whole blob.
    ignore_range: bool,
    /// The next blob requests answer these statuses (with this `Retry-After`, if any), in order.
    busy: Vec<(u16, Option<&'static str>)>,
    /// Blob answers carry this many bytes past the blob, without a Content-Length.
    extra: usize,
    /// The manifest is 100 MB of JSON whitespace, without a Content-Length.
    huge_manifest: bool,
    /// The manifest request answers 500 with 100 MB of terminal escapes.
    huge_error: bool,
    /// The manifest request redirects to itself.
    redirect_loop: bool,
    /// Blob answers send half, then nothing, ever.
    stall: bool,
}

struct Registry {
    blob: Vec<u8>,
    digest: String,
    misbehave: Mutex<Misbehave>,
    manifest_requests: AtomicUsize,
    blob_requests: AtomicUsize,
    /// The Range header of each blob request.
    ranges: Mutex<Vec<Option<String>>>,
    /// Bytes of the huge bodies handed to connections.
    streamed: Arc<AtomicU64>,
}

struct Server {
    addr: SocketAddr,
    registry: Arc<Registry>,
    _rt: tokio::runtime::Runtime,
}

impl Server {
    fn start(misbehave: Misbehave) -> Server {
        Self::serving(blob_bytes(3 << 20 | 17), misbehave)
    }

    fn serving(data: Vec<u8>, misbehave: Misbehave) -> Server {
        let digest = format!("sha256:{}", sha256_hex(&data));
        let registry = Arc::new(Registry {
            blob: data,
            digest,
            misbehave: Mutex::new(misbehave),
            manifest_requests: AtomicUsize::new(0),
            blob_requests: AtomicUsize::new(0),
            ranges: Mutex::new(Vec::new()),
            streamed: Arc::new(AtomicU64::new(0)),
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let app = Router::new()
            .route("/v2/{ns}/{model}/manifests/{tag}", get(manifest))
            .route("/v2/{ns}/{model}/blobs/{digest}", get(blob))
            .with_state(registry.clone());
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
        Server {
            addr,
            registry,
            _rt: rt,
        }
    }

    fn name(&self) -> ModelName {
        ModelName::parse(&format!("{}/library/tiny:latest", self.addr)).unwrap()
    }

    fn blob_requests(&self) -> usize {
        self.registry.blob_requests.load(Ordering::SeqCst)
    }

    fn ranges(&self) -> Vec<Option<String>> {
        self.registry.ranges.lock().unwrap().clone()
    }
}

fn oci_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "errors": [{ "code": code, "message": message }] });
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn manifest(
    State(reg): State<Arc<Registry>>,
    UrlPath((ns, model, tag)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    reg.manifest_requests.fetch_add(1, Ordering::SeqCst);
    assert_eq!(headers.get(header::ACCEPT).unwrap(), MANIFEST_V2);
    let m = reg.misbehave.lock().unwrap();
    if m.redirect_loop {
        let here = format!("/v2/{ns}/{model}/manifests/{tag}");
        return (StatusCode::FOUND, [(header::LOCATION, here)]).into_response();
    }
    if m.huge_manifest || m.huge_error {
        let (status, chunk) = if m.huge_error {
            (StatusCode::INTERNAL_SERVER_ERROR, b"\x1b[31mboom\r".to_vec())
        } else {
            (StatusCode::OK, vec![b' '; 1 << 16])
        };
        return Response::builder()
            .status(status)
            .body(endless(chunk, 100 << 20, reg.streamed.clone()))
            .unwrap();
    }
    match m.manifest_status {
        Some(404) => return oci_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", "manifest unknown"),
        Some(401) => return oci_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "authentication required"),
        _ => {}
    }
    if (ns.as_str(), model.as_str(), tag.as_str()) != ("library", "tiny", "latest") {
        return oci_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", "manifest unknown");
    }
    let layer = |media: &str, digest: &str, size: usize| serde_json::json!({ "mediaType": media, "digest": digest, "size": size });
    let template = format!("sha256:{}", sha256_hex(b"{{ .Prompt }}"));
    let mut layers = vec![layer("application/vnd.ollama.image.template", &template, 13)];
    if !m.no_model_layer {
        layers.insert(
            0,
            layer("application/vnd.ollama.image.model", &reg.digest, reg.blob.len()),
        );
    }
    let body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_V2,
        "config": layer("application/vnd.docker.container.image.v1+json", &format!("sha256:{}", sha256_hex(b"{}")), 2),
        "layers": layers,
    });
    ([(header::CONTENT_TYPE, MANIFEST_V2)], body.to_string()).into_response()
}

async fn blob(
    State(reg): State<Arc<Registry>>,
    UrlPath((_ns, _model, digest)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    reg.blob_requests.fetch_add(1, Ordering::SeqCst);
    let range = headers.get(header::RANGE).map(|v| v.to_str().unwrap().to_string());
    reg.ranges.lock().unwrap().push(range.clone());
    if digest != reg.digest {
        return oci_error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", "blob unknown to registry");
    }
    let (corrupt, cut, ignore_range, extra, stall) = {
        let mut m = reg.misbehave.lock().unwrap();
        if !m.busy.is_empty() {
            let (status, after) = m.busy.remove(0);
            let mut r = oci_error(StatusCode::from_u16(status).unwrap(), "TOOMANYREQUESTS", "slow down");
            if let Some(a) = after {
                r.headers_mut().insert(header::RETRY_AFTER, a.parse().unwrap());
            }
            return r;
        }
        let cut = m.cuts > 0;
        if cut {
            m.cuts -= 1;
        }
        (m.corrupt, cut, m.ignore_range, m.extra, m.stall)
    };
    let len = reg.blob.len();
    let start = match range.as_deref().filter(|_| !ignore_range) {
        Some(r) => r
            .strip_prefix("bytes=")
            .and_then(|r| r.strip_suffix('-'))
            .unwrap()
            .parse::<usize>()
            .unwrap(),
        None => 0,
    };
    if start >= len {
        return (
            StatusCode::RANGE_NOT_SATISFIABLE,
            [(header::CONTENT_RANGE, format!("bytes */{len}"))],
        )
            .into_response();
    }
    let mut data = reg.blob[start..].to_vec();
    if corrupt && len / 2 >= start {
        data[len / 2 - start] ^= 0x40;
    }
    if extra > 0 || stall {
        // No Content-Length: only the manifest's size says where the blob ends.
        let status = if start > 0 {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        };
        let mut b = Response::builder().status(status);
        if start > 0 {
            b = b.header(header::CONTENT_RANGE, format!("bytes {start}-{}/{len}", len - 1));
        }
        if stall {
            let half = data[..data.len() / 2].to_vec();
            let body = futures_util::stream::unfold(0u8, move |step| {
                let half = half.clone();
                async move {
                    if step == 0 {
                        return Some((Ok::<_, std::io::Error>(Bytes::from(half)), 1));
                    }
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    None
                }
            });
            return b.body(Body::from_stream(body)).unwrap();
        }
        data.extend(std::iter::repeat_n(0x55, extra));
        return b.body(Body::from(data)).unwrap();
    }
    let mut builder = Response::builder().header(header::CONTENT_LENGTH, data.len());
    builder = if start > 0 {
        builder
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, format!("bytes {start}-{}/{len}", len - 1))
    } else {
        builder.status(StatusCode::OK)
    };
    let body = if cut {
        // Half of what was asked for, a pause so it reaches the client, then a broken connection.
        let half = data[..data.len() / 2].to_vec();
        let stream = futures_util::stream::unfold(0u8, move |step| {
            let half = half.clone();
            async move {
                match step {
                    0 => Some((Ok(Bytes::from(half)), 1)),
                    1 => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Some((Err(std::io::Error::other("cut")), 2))
                    }
                    _ => None,
                }
            }
        });
        Body::from_stream(stream)
    } else {
        Body::from(data)
    };
    builder.body(body).unwrap()
}

/// `chunk` repeated up to `total` bytes, streamed lazily (no Content-Length), counting what was
/// handed to the connection.
fn endless(chunk: Vec<u8>, total: usize, streamed: Arc<AtomicU64>) -> Body {
    let body = futures_util::stream::unfold(0usize, move |sent| {
        let (chunk, streamed) = (chunk.clone(), streamed.clone());
        async move {
            if sent >= total {
                return None;
            }
            streamed.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            Some((Ok::<_, std::io::Error>(Bytes::from(chunk.clone())), sent + chunk.len()))
        }
    });
    Body::from_stream(body)
}

/// Deterministic bytes that do not compress or repeat.
fn blob_bytes(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// Records what the download reports; cancels once `cancel_after` bytes were reported.
#[derive(Default)]
struct Recorder {
    stages: Mutex<Vec<(String, u64)>>,
    advanced: AtomicU64,
    finished: AtomicUsize,
    notices: Mutex<Vec<String>>,
    cancel_after: Option<u64>,
}

impl Progress for Recorder {
    fn stage(&self, name: &str, total: u64) {
        self.stages.lock().unwrap().push((name.to_string(), total));
        self.advanced.store(0, Ordering::SeqCst);
    }
    fn advance(&self, n: u64) {
        self.advanced.fetch_add(n, Ordering::SeqCst);
    }
    fn notice(&self, msg: &str) {
        self.notices.lock().unwrap().push(msg.to_string());
    }
    fn finish(&self) {
        self.finished.fetch_add(1, Ordering::SeqCst);
    }
    fn cancelled(&self) -> bool {
        self.cancel_after
            .is_some_and(|n| self.advanced.load(Ordering::SeqCst) >= n)
    }
}

fn blob_file(cache: &Path, server: &Server) -> PathBuf {
    cache.join("blobs").join(server.registry.digest.replace(':', "-"))
}

fn partial_file(cache: &Path, server: &Server) -> PathBuf {
    cache
        .join("blobs")
        .join(format!("{}.partial", server.registry.digest.replace(':', "-")))
}

fn err_text(e: &Error) -> String {
    e.to_string()
}

/// Timeouts and retries for a test: `retries` with waits of a few milliseconds.
fn patience(retries: u32) -> Patience {
    Patience {
        idle: Duration::from_secs(10),
        retries,
        max_wait: Duration::from_millis(20),
    }
}

#[test]
fn full_download_is_verified_and_then_reused() {
    let server = Server::start(Misbehave::default());
    let cache = tempfile::tempdir().unwrap();
    let rec = Recorder::default();
    let path = pull_model_blob(&server.name(), cache.path(), &rec).unwrap();
    assert_eq!(path, blob_file(cache.path(), &server));
    assert_eq!(std::fs::read(&path).unwrap(), server.registry.blob);
    assert!(!partial_file(cache.path(), &server).exists());
    let len = server.registry.blob.len() as u64;
    assert_eq!(rec.stages.lock().unwrap().last().unwrap().1, len);
    assert_eq!(rec.advanced.load(Ordering::SeqCst), len);
    assert_eq!(rec.finished.load(Ordering::SeqCst), 1);
    assert_eq!(server.ranges(), vec![None]);

    // The cached blob is used as it is: the manifest is asked for, the blob is not.
    let again = pull_model_blob(&server.name(), cache.path(), &Silent).unwrap();
    assert_eq!(again, path);
    assert_eq!(server.blob_requests(), 1);
    assert_eq!(server.registry.manifest_requests.load(Ordering::SeqCst), 2);
}

#[test]
fn a_cut_connection_resumes_where_it_stopped() {
    let server = Server::start(Misbehave {
        cuts: 1,
        ..Default::default()
    });
    let cache = tempfile::tempdir().unwrap();
    let rec = Recorder::default();
    let path = pull_model_blob(&server.name(), cache.path(), &rec).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), server.registry.blob);
    let half = server.registry.blob.len() / 2;
    assert_eq!(server.ranges(), vec![None, Some(format!("bytes={half}-"))]);
    assert!(
        rec.notices
            .lock()
            .unwrap()
            .iter()
            .any(|n| n.contains("broke off") && n.contains(&half.to_string()))
    );
    assert_eq!(rec.advanced.load(Ordering::SeqCst), server.registry.blob.len() as u64);
}

#[test]
fn a_registry_that_ignores_range_gets_the_whole_blob_again() {
    let server = Server::start(Misbehave {
        cuts: 1,
        ignore_range: true,
        ..Default::default()
    });
    let cache = tempfile::tempdir().unwrap();
    let path = pull_model_blob(&server.name(), cache.path(), &Silent).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), server.registry.blob);
    assert_eq!(server.blob_requests(), 2);
    assert!(server.ranges()[1].is_some());
}

#[test]
fn cut_twice_fails_naming_the_digest_and_keeps_the_partial_for_a_rerun() {
    let server = Server::start(Misbehave {
        cuts: 2,
        ..Default::default()
    });
    let cache = tempfile::tempdir().unwrap();
    let err = pull_model_blob_with(&server.name(), cache.path(), &Silent, patience(1)).unwrap_err();
    let text = err_text(&err);
    assert!(text.contains(&server.registry.digest), "{text}");
    assert!(
        text.contains("broke off") && text.contains("also after a retry") && text.contains("run the command again"),
        "{text}"
    );
    let partial = partial_file(cache.path(), &server);
    let len = server.registry.blob.len();
    // Half, then half of the rest.
    assert_eq!(
        std::fs::metadata(&partial).unwrap().len() as usize,
        len / 2 + (len - len / 2) / 2
    );
    assert!(!blob_file(cache.path(), &server).exists());

    // The rerun resumes from the partial file.
    let path = pull_model_blob(&server.name(), cache.path(), &Silent).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), server.registry.blob);
    assert_eq!(
        server.ranges().last().unwrap().as_deref(),
        Some(format!("bytes={}-", len / 2 + (len - len / 2) / 2).as_str())
    );
}

#[test]
fn a_corrupted_blob_is_refused_and_nothing_is_left() {
    let server = Server::start(Misbehave {
        corrupt: true,
        ..Default::default()
    });
    let cache = tempfile::tempdir().unwrap();
    let err = pull_model_blob(&server.name(), cache.path(), &Silent).unwrap_err();
    let text = err_text(&err);
    assert!(matches!(err, Error::Invalid { .. }), "{text}");
    assert_eq!(err.kind(), ErrorKind::Server, "the registry sent other bytes: {text}");
    assert!(text.contains(&format!("expected {}", server.registry.digest)), "{text}");
    let mut bad = server.registry.blob.clone();
    let half = bad.len() / 2;
    bad[half] ^= 0x40;
    assert!(text.contains(&format!("found sha256:{}", sha256_hex(&bad))), "{text}");
    assert!(!blob_file(cache.path(), &server).exists());
    assert!(!partial_file(cache.path(), &server).exists());
}

#[test]
fn a_wrong_partial_from_an_earlier_run_is_rehashed_and_caught() {
    let server = Server::start(Misbehave::default());
    let cache = tempfile::tempdir().unwrap();
    let partial = partial_file(cache.path(), &server);
    std::fs::create_dir_all(partial.parent().unwrap()).unwrap();
    let mut start = server.registry.blob[..1000].to_vec();
    start[10] ^= 1;
    std::fs::write(&partial, &start).unwrap();
    let err = pull_model_blob(&server.name(), cache.path(), &Silent).unwrap_err();
    assert!(err_text(&err).contains("does not match its digest"), "{err}");
    assert_eq!(server.ranges(), vec![Some("bytes=1000-".to_string())]);
    assert!(!partial.exists());
    // Deleted, so the next run starts afresh and succeeds.
    let path = pull_model_blob(&server.name(), cache.path(), &Silent).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), server.registry.blob);
}

#[test]
fn missing_model_or_tag() {
    let server = Server::start(Misbehave {
        manifest_status: Some(404),
        ..Default::default()
    });
    let cache = tempfile::tempdir().unwrap();
    let err = pull_model_blob(&server.name(), cache.path(), &Silent).unwrap_err();
    let text = err_text(&err);
    assert!(
        text.contains("not found") && text.contains("MANIFEST_UNKNOWN: manifest unknown"),
        "{text}"
    );
    assert!(
        text.contains("library/tiny:latest") && text.contains("check the model name and tag"),
        "{text}"
    );
    assert_eq!(err.kind(), ErrorKind::NotFound, "{text}");
    assert_eq!(server.blob_requests(), 0);

    // An unknown tag on a well-behaved registry says the same.
    let server = Server::start(Misbehave::default());
    let name = ModelName::parse(&format!("{}/library/tiny:nope", server.addr)).unwrap();
    let err = pull_model_blob(&name, cache.path(), &Silent).unwrap_err();
    let text = err_text(&err);
    assert!(text.contains("tiny:nope") && text.contains("not found"), "{text}");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{text}");
}

#[test]
fn unauthorized_passes_the_registry_text_on() {
    let server = Server::start(Misbehave {
        manifest_status: Some(401),
        ..Default::default()
    });
    let cache = tempfile::tempdir().unwrap();
    let err = pull_model_blob(&server.name(), cache.path(), &Silent).unwrap_err();
    let text = err_text(&err);
    assert!(matches!(err, Error::Refused { .. }), "{text}");
    assert_eq!(err.kind(), ErrorKind::Unauthorized, "{text}");
    assert!(
        text.contains("401") && text.contains("UNAUTHORIZED: authentication required"),
        "{text}"
    );
    assert_eq!(server.blob_requests(), 0);
}

#[test]
fn a_manifest_without_a_model_layer_is_refused() {
    let server = Server::start(Misbehave {
        no_model_layer: true,
        ..Default::default()
    });
    let cache = tempfile::tempdir().unwrap();
    let text = err_text(&pull_model_blob(&server.name(), cache.path(), &Silent).unwrap_err());
    assert!(
        text.contains("no GGUF model layer") && text.contains("application/vnd.ollama.image.template"),
        "{text}"
    );
    assert_eq!(server.blob_requests(), 0);
}

#[test]
fn cancel_keeps_the_partial_and_the_next_run_resumes() {
    let server = Server::start(Misbehave::default());
    let cache = tempfile::tempdir().unwrap();
    let rec = Recorder {
        cancel_after: Some(1 << 20),
        ..Default::default()
    };
    let err = pull_model_blob(&server.name(), cache.path(), &rec).unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err}");
    assert_eq!(err.kind(), ErrorKind::Interrupted);
    let partial = partial_file(cache.path(), &server);
    let have = std::fs::metadata(&partial).unwrap().len();
    assert!(have >= 1 << 20 && have < server.registry.blob.len() as u64, "{have}");
    assert!(!blob_file(cache.path(), &server).exists());

    let path = pull_model_blob(&server.name(), cache.path(), &Silent).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), server.registry.blob);
    assert_eq!(
        server.ranges().last().unwrap().as_deref(),
        Some(format!("bytes={have}-").as_str())
    );

    // Cancelled before anything arrives: no blob request at all.
    let other = tempfile::tempdir().unwrap();
    let rec = Recorder {
        cancel_after: Some(0),
        ..Default::default()
    };
    let before = server.blob_requests();
    assert!(matches!(
        pull_model_blob(&server.name(), other.path(), &rec),
        Err(Error::Cancelled)
    ));
    assert_eq!(server.blob_requests(), before);
}

#[test]
fn an_unreachable_registry_is_named() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let name = ModelName::parse(&format!("127.0.0.1:{port}/library/tiny")).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let err = pull_model_blob(&name, cache.path(), &Silent).unwrap_err();
    let text = err_text(&err);
    assert!(
        text.contains(&format!("http://127.0.0.1:{port}")) && text.contains("no registry answers"),
        "{text}"
    );
    assert_eq!(err.kind(), ErrorKind::Server, "{text}");
}

/// The whole path as a user meets it: the Ollama server is elsewhere (it answers /api/show, the
/// local store is empty), so `merge` pulls the base's GGUF layer from the model's registry, verifies
/// it, caches it, and merges into it; a second merge uses the cache.
#[test]
fn merge_pulls_the_base_from_the_registry_when_the_store_is_elsewhere() {
    let d = tempfile::tempdir().unwrap();
    let gguf = d.path().join("tiny.gguf");
    common::write_base_gguf(&gguf, "llama", common::TINY);
    let registry = Server::serving(std::fs::read(&gguf).unwrap(), Misbehave::default());
    let name = format!("{}/library/tiny", registry.addr);
    let ollama = common::start_ollama(vec![(name.as_str(), common::show_json(common::TINY, "F32", true))]);
    let adapter = common::tiny_adapter(&d.path().join("a"), serde_json::json!({}), vec![]);
    let cache = d.path().join("cache");
    let run = |out: &str| {
        common::bin()
            .arg("merge")
            .arg(&adapter)
            .args(["--base", &name, "-o"])
            .arg(d.path().join(out))
            .env("OLLAMA_HOST", &ollama.url)
            .env("OLLAMA_MODELS", d.path().join("empty-store"))
            .env("OLLAMA_TOOLS_CACHE", &cache)
            .assert()
            .success()
    };
    run("m1.gguf");
    assert_eq!(registry.blob_requests(), 1);
    assert_eq!(
        std::fs::read(blob_file(&cache, &registry)).unwrap(),
        std::fs::read(&gguf).unwrap()
    );
    run("m2.gguf");
    assert_eq!(registry.blob_requests(), 1, "the cached blob is reused");
    assert_eq!(
        std::fs::read(d.path().join("m1.gguf")).unwrap(),
        std::fs::read(d.path().join("m2.gguf")).unwrap()
    );
}

#[test]
fn cuts_are_retried_with_growing_waits_until_the_retries_are_spent() {
    let server = Server::start(Misbehave {
        cuts: 3,
        ..Default::default()
    });
    let cache = tempfile::tempdir().unwrap();
    let rec = Recorder::default();
    let path = pull_model_blob_with(&server.name(), cache.path(), &rec, patience(3)).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), server.registry.blob);
    assert_eq!(server.blob_requests(), 4);
    let notices = rec.notices.lock().unwrap().clone();
    assert_eq!(
        notices.iter().filter(|n| n.contains("retrying from there in")).count(),
        3,
        "{notices:?}"
    );

    let server = Server::start(Misbehave {
        cuts: 4,
        ..Default::default()
    });
    let cache = tempfile::tempdir().unwrap();
    let text = err_text(&pull_model_blob_with(&server.name(), cache.path(), &Silent, patience(3)).unwrap_err());
    assert!(
        text.contains("also after 3 retries") && text.contains("run the command again"),
        "{text}"
    );
    assert_eq!(server.blob_requests(), 4);
}

#[test]
fn a_busy_registry_is_asked_again_after_its_retry_after() {
    // 503 with Retry-After: 1 (honoured: the wait is a second, not the few ms of the backoff), then
    // 429 without one (the backoff), then the blob.
    let server = Server::start(Misbehave {
        busy: vec![(503, Some("1")), (429, None)],
        ..Default::default()
    });
    let cache = tempfile::tempdir().unwrap();
    let p = Patience {
        max_wait: Duration::from_secs(2),
        ..patience(3)
    };
    let started = std::time::Instant::now();
    let path = pull_model_blob_with(&server.name(), cache.path(), &Silent, p).unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1), "{:?}", started.elapsed());
    assert_eq!(std::fs::read(&path).unwrap(), server.registry.blob);
    assert_eq!(server.blob_requests(), 3);

    // Asked to wait longer than we would: no wait, the registry's answer is the error.
    let server = Server::start(Misbehave {
        busy: vec![(429, Some("3600"))],
        ..Default::default()
    });
    let cache = tempfile::tempdir().unwrap();
    let err = pull_model_blob_with(&server.name(), cache.path(), &Silent, patience(3)).unwrap_err();
    let text = err_text(&err);
    assert!(
        text.contains("429") && text.contains("TOOMANYREQUESTS: slow down"),
        "{text}"
    );
    assert_eq!(err.kind(), ErrorKind::RateLimited, "{text}");
    assert_eq!(server.blob_requests(), 1);

    // Still 429 once the retries are spent: rate limited, after 1 + 2 requests.
    let server = Server::start(Misbehave {
        busy: vec![(429, None); 3],
        ..Default::default()
    });
    let cache = tempfile::tempdir().unwrap();
    let err = pull_model_blob_with(&server.name(), cache.path(), &Silent, patience(2)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RateLimited, "{err}");
    assert_eq!(server.blob_requests(), 3);
}

#[test]
fn a_blob_that_runs_past_its_size_is_cut_there_and_deleted() {
    let server = Server::start(Misbehave {
        extra: 5 << 20,
        ..Default::default()
    });
    let cache = tempfile::tempdir().unwrap();
    let text = err_text(&pull_model_blob_with(&server.name(), cache.path(), &Silent, patience(0)).unwrap_err());
    assert!(
        text.contains(&format!(
            "sent more than the {} bytes the manifest gives",
            server.registry.blob.len()
        )),
        "{text}"
    );
    assert!(!partial_file(cache.path(), &server).exists());
    assert!(!blob_file(cache.path(), &server).exists());
}

#[test]
fn a_stalled_blob_is_given_up_on_after_the_idle_timeout() {
    let server = Server::start(Misbehave {
        stall: true,
        ..Default::default()
    });
    let cache = tempfile::tempdir().unwrap();
    let p = Patience {
        idle: Duration::from_millis(500),
        ..patience(1)
    };
    let started = std::time::Instant::now();
    let text = err_text(&pull_model_blob_with(&server.name(), cache.path(), &Silent, p).unwrap_err());
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    assert!(
        text.contains("broke off") && text.contains("OLLAMA_TOOLS_TIMEOUT"),
        "{text}"
    );
    assert_eq!(server.blob_requests(), 2, "retried once, from where it stopped");
    assert!(partial_file(cache.path(), &server).exists(), "kept for a rerun");
}

#[test]
fn huge_answers_are_not_read_whole_and_their_text_is_defused() {
    let server = Server::start(Misbehave {
        huge_manifest: true,
        ..Default::default()
    });
    let cache = tempfile::tempdir().unwrap();
    let text = err_text(&pull_model_blob(&server.name(), cache.path(), &Silent).unwrap_err());
    assert!(
        text.contains("larger than 4 MiB") && text.contains("manifests/latest"),
        "{text}"
    );
    assert!(
        server.registry.streamed.load(Ordering::SeqCst) < 20 << 20,
        "the rest was never asked for"
    );

    let server = Server::start(Misbehave {
        huge_error: true,
        ..Default::default()
    });
    let text = err_text(&pull_model_blob(&server.name(), cache.path(), &Silent).unwrap_err());
    assert!(text.contains("500") && text.contains("boom"), "{text}");
    assert!(
        text.len() < 2000 && !text.contains('\x1b') && !text.contains('\r'),
        "{text:?}"
    );
    assert!(server.registry.streamed.load(Ordering::SeqCst) < 20 << 20);
}

#[test]
fn a_redirect_loop_is_named_as_such() {
    let server = Server::start(Misbehave {
        redirect_loop: true,
        ..Default::default()
    });
    let cache = tempfile::tempdir().unwrap();
    let text = err_text(&pull_model_blob(&server.name(), cache.path(), &Silent).unwrap_err());
    assert!(
        text.contains("redirects in a loop") && text.contains(&server.addr.to_string()),
        "{text}"
    );
}
