//! A stateful in-process Ollama server for the create pipeline tests.
//!
//! It answers the endpoints `ollama-tools` uses with Ollama's shapes (REFERENCE.md sections 3 and 6):
//! content-addressed blob uploads, `/api/create` with its streamed statuses, `/api/show`, `/api/tags`,
//! `/api/pull`, `/api/push`, `/api/delete` and `/api/version`. Error bodies are always `{"error": "..."}`.
//! Everything it is sent is recorded in [`State`], so a test can assert on what the binary did, and
//! [`Faults`] injects the failures a real server or network produces (a dropped upload, a corrupted
//! upload, a failing create, a registry refusing a push, a push cut off).
//!
//! Deliberate simplifications, each documented where it happens: create's request validation answers
//! 400 before any streaming (Ollama streams some of these errors), only GGUF files are accepted (no
//! server-side safetensors conversion), and layers made from strings (template, system, ...) are kept
//! in [`State::layers`], apart from uploaded [`State::blobs`]. A push sends only a model's uploaded
//! blobs (or, for a configured model, a stand-in weights layer) and its config, not its base's layers.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Path, Request, State as AxState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use futures_util::StreamExt;
use ollama_tools::formats::gguf;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// How the server treats `/api/create` requests that carry adapters (REFERENCE.md section 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefuseAdapters {
    /// Adapters are accepted (Ollama before 0.34.1).
    Never,
    /// 400 `{"error":"LoRA adapters are no longer supported"}` before any streaming.
    Http400,
    /// 200, the stream starts (`{"status":"parsing GGUF"}`), then
    /// `{"error":"LoRA adapters are no longer supported"}`.
    InStream,
}

/// What the server is when it starts.
#[derive(Clone, Debug)]
pub struct Config {
    /// What `GET /api/version` answers, e.g. "0.34.2", "0.33.0", "0.0.0" (a build from source).
    pub version: String,
    pub refuse_adapters: RefuseAdapters,
    /// Local models: name (tag defaults to `latest`) -> its `/api/show` answer (see `common::show_json`).
    pub models: Vec<(String, Value)>,
    /// Models the "registry" has: `/api/pull` (or a create `from` one) copies them into the local models.
    pub pullable: Vec<(String, Value)>,
}

impl Default for Config {
    /// The current Ollama: version 0.34.2, adapters refused with a 400, no models.
    fn default() -> Self {
        Config {
            version: "0.34.2".into(),
            refuse_adapters: RefuseAdapters::Http400,
            models: Vec::new(),
            pullable: Vec::new(),
        }
    }
}

/// Everything the server holds and everything it was sent. Tests may read and change it directly
/// through [`Fake::state`]; handlers hold the lock only briefly and never across an await.
#[derive(Debug, Default)]
pub struct State {
    /// Uploaded blobs, keyed by `"sha256:<hex>"`.
    pub blobs: HashMap<String, Vec<u8>>,
    /// Local models, keyed by the full name with its tag, e.g. `"my-model:latest"`.
    pub models: HashMap<String, Model>,
    /// Every `/api/create` body received (including refused ones), in order.
    pub create_requests: Vec<Value>,
    /// Every request as `"METHOD /path"`, e.g. `"HEAD /api/blobs/sha256:.."`, `"POST /api/create"`.
    pub log: Vec<String>,
    pub faults: Faults,
    /// Digests of the layers create made from strings (template, system, params, license, messages).
    /// Ollama stores them as blobs too; they are kept apart so `blobs` holds only what was uploaded.
    pub layers: HashSet<String>,
    /// Every `/api/push` body received, in order.
    pub push_requests: Vec<Value>,
    /// Models the "registry" accepted from `/api/push`, by full name (`me/model:latest`).
    pub pushed: Vec<String>,
}

/// A local model.
#[derive(Clone, Debug)]
pub struct Model {
    /// What `/api/show` answers with `verbose: true` (`tensors` is dropped without it).
    pub show: Value,
    /// The `/api/create` body that made it; `None` for configured and pulled models.
    pub request: Option<Value>,
    /// Bytes, as `/api/tags` reports: the blobs it references plus its base's size.
    pub size: u64,
}

/// Failures to inject. Counters are consumed one per matching request.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// The next N blob uploads are cut: the server reads about half the body (half the
    /// Content-Length, or the first chunk when there is none), then shuts the TCP connection down
    /// without answering. The client sees a connection error, never an HTTP status.
    pub cut_uploads: usize,
    /// The next N blob uploads have their first byte flipped before hashing, so they fail with the
    /// digest-mismatch 400.
    pub corrupt_uploads: usize,
    /// The next `/api/create` answers this status with `{"error": msg}` before anything else.
    pub create_error: Option<(u16, String)>,
    /// While set, `/api/show` of a model made by `/api/create` answers 500 `{"error": ...}`.
    pub fail_show_after_create: bool,
    /// The next `/api/create` streams `{"status":"parsing GGUF"}` and then nothing, ever; the model
    /// is not stored (Ollama writes the manifest last, after statuses the client is no longer reading).
    pub stall_create: bool,
    /// The next `/api/push` answers this status with `{"error": msg}` before anything else (a 401
    /// where a proxy or a newer server checks the sign-in first).
    pub push_error: Option<(u16, String)>,
    /// The next `/api/push` streams its layers and `pushing manifest`, then `{"error": msg}`: how
    /// Ollama passes on the registry refusing the name or the key (`unauthorized: access denied`).
    pub push_refusal: Option<String>,
    /// The next `/api/push` streams `retrieving manifest` and half of the first layer, then the
    /// connection breaks (the response ends without its last chunk).
    pub cut_push: bool,
}

/// A running fake server. Dropping it stops the server.
pub struct Fake {
    /// `http://127.0.0.1:<port>`, no trailing slash.
    pub url: String,
    pub state: Arc<Mutex<State>>,
    _runtime: tokio::runtime::Runtime,
}

impl Fake {
    /// The state, locked. Do not hold the guard across a request to the server.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// How many blobs were uploaded (and verified).
    pub fn blob_count(&self) -> usize {
        self.lock().blobs.len()
    }

    /// How many logged requests start with `prefix`, e.g. `"POST /api/blobs/"`.
    pub fn requests(&self, prefix: &str) -> usize {
        self.lock().log.iter().filter(|l| l.starts_with(prefix)).count()
    }

    /// A copy of the request log.
    pub fn log(&self) -> Vec<String> {
        self.lock().log.clone()
    }

    /// A copy of every `/api/create` body received.
    pub fn create_requests(&self) -> Vec<Value> {
        self.lock().create_requests.clone()
    }

    /// The local model `name` (tag defaults to `latest`, matched case-insensitively as Ollama does).
    pub fn model(&self, name: &str) -> Option<Model> {
        let s = self.lock();
        find(&s.models, &normalize(name)?).map(|k| s.models[&k].clone())
    }

    /// Replaces the pending faults.
    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }
}

/// Starts a server on 127.0.0.1 (a free port) with its own tokio runtime.
pub fn start(config: Config) -> Fake {
    let mut state = State::default();
    for (name, show) in &config.models {
        let key = normalize(name).unwrap_or_else(|| panic!("configured model name {name:?} is invalid"));
        state.models.insert(
            key,
            Model {
                size: synthetic_size(show),
                show: show.clone(),
                request: None,
            },
        );
    }
    let state = Arc::new(Mutex::new(state));
    let app = App {
        state: state.clone(),
        config: Arc::new(config),
    };
    let router = Router::new()
        .route("/", get(|| async { "Ollama is running" }))
        .route("/api/version", get(version))
        .route("/api/blobs/{digest}", axum::routing::head(head_blob).post(upload_blob))
        .route("/api/create", post(create))
        .route("/api/show", post(show))
        .route("/api/tags", get(tags))
        .route("/api/pull", post(pull))
        .route("/api/push", post(push))
        .route("/api/delete", axum::routing::delete(delete))
        .fallback(|| async { (StatusCode::NOT_FOUND, "404 page not found") })
        .layer(middleware::from_fn_with_state(app.clone(), log_request))
        .with_state(app);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    runtime.spawn(async move {
        axum::serve(listener, router.into_make_service_with_connect_info::<Conn>())
            .await
            .unwrap()
    });
    Fake {
        url,
        state,
        _runtime: runtime,
    }
}

#[derive(Clone)]
struct App {
    state: Arc<Mutex<State>>,
    config: Arc<Config>,
}

impl App {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

/// A test that panicked while holding the lock must not turn every later request into a panic.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Per-connection handle that lets a handler cut its own connection.
///
/// It holds a duplicate of the connection's socket descriptor: `shutdown(Both)` on it sends a FIN
/// and makes hyper's later write of the response fail, so the client gets "connection closed before
/// message completed" (or a reset, if it is still sending), and no HTTP status at all. This avoids
/// panicking in a handler, which would also work but prints panic noise.
#[derive(Clone)]
struct Conn(Arc<Option<std::net::TcpStream>>);

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for Conn {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Conn(Arc::new(dup_socket(stream.io())))
    }
}

#[cfg(unix)]
fn dup_socket(s: &tokio::net::TcpStream) -> Option<std::net::TcpStream> {
    use std::os::fd::AsFd;
    s.as_fd().try_clone_to_owned().ok().map(std::net::TcpStream::from)
}

#[cfg(windows)]
fn dup_socket(s: &tokio::net::TcpStream) -> Option<std::net::TcpStream> {
    use std::os::windows::io::AsSocket;
    s.as_socket().try_clone_to_owned().ok().map(std::net::TcpStream::from)
}

impl Conn {
    fn cut(&self) {
        let sock = (*self.0)
            .as_ref()
            .expect("could not duplicate the connection's socket, so it cannot be cut");
        let _ = sock.shutdown(std::net::Shutdown::Both);
    }
}

async fn log_request(AxState(app): AxState<App>, req: Request, next: Next) -> Response {
    app.lock().log.push(format!("{} {}", req.method(), req.uri().path()));
    next.run(req).await
}

fn error(status: u16, msg: impl Into<String>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(json!({"error": msg.into()}))).into_response()
}

/// Answers a list of progress lines: as an NDJSON stream (one chunk per line, each after a short
/// pause so the client sees them arrive separately), or with `stream: false` as Ollama's
/// `waitForStream` does: the last status with 200, or the first error with 500.
fn respond(lines: Vec<Value>, stream: bool) -> Response {
    if !stream {
        return match lines.iter().find(|l| l.get("error").is_some()) {
            Some(e) => error(500, e["error"].as_str().unwrap_or_default()),
            None => axum::Json(lines.last().cloned().unwrap_or(json!({}))).into_response(),
        };
    }
    let body = futures_util::stream::unfold(lines.into_iter(), |mut it| async move {
        let line = it.next()?;
        tokio::time::sleep(Duration::from_millis(1)).await;
        Some((Ok::<_, std::io::Error>(format!("{line}\n")), it))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(body))
        .unwrap()
}

/// Parses a JSON object body; anything else is Ollama's 400, whose message this returns.
fn parse_body(body: &str) -> Result<Map<String, Value>, String> {
    if body.trim().is_empty() {
        return Err("missing request body".into());
    }
    match serde_json::from_str::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("json: cannot unmarshal into Go value of type api.Request".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// The model a request names: `model`, or the older `name` Ollama still accepts; "" when neither.
fn model_field(req: &Map<String, Value>) -> &str {
    req.get("model")
        .or(req.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// Ollama's model name rules (`[host/][namespace/]model[:tag]`), returning the display name with
/// the tag defaulted to `latest` and the default host and namespace dropped; `None` if invalid.
fn normalize(raw: &str) -> Option<String> {
    let (path, tag) = match raw.rfind(':') {
        Some(i) if !raw[i + 1..].contains('/') => (&raw[..i], &raw[i + 1..]),
        _ => (raw, "latest"),
    };
    let part = |s: &str, extra: &str, max: usize| {
        let mut cs = s.chars();
        cs.next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            && s.len() <= max
            && cs.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || extra.contains(c))
    };
    let mut parts: Vec<&str> = path.split('/').collect();
    let ok = match parts.as_slice() {
        [m] => part(m, ".", 80),
        [ns, m] => part(ns, ".", 80) && part(m, ".", 80),
        [host, ns, m] => part(host, ".:", 350) && part(ns, ".", 80) && part(m, ".", 80),
        _ => false,
    };
    if !ok || !part(tag, ".", 80) {
        return None;
    }
    if parts.len() == 3 && parts[0].eq_ignore_ascii_case("registry.ollama.ai") {
        parts.remove(0);
    }
    if parts.len() == 2 && parts[0].eq_ignore_ascii_case("library") {
        parts.remove(0);
    }
    Some(format!("{}:{tag}", parts.join("/")))
}

/// The key under which `name` (already normalized) is stored; Ollama matches names case-insensitively.
fn find<V>(map: &HashMap<String, V>, name: &str) -> Option<String> {
    map.keys().find(|k| k.eq_ignore_ascii_case(name)).cloned()
}

/// A stand-in size for models that have no blobs here (configured or pulled): stable and non-zero.
fn synthetic_size(show: &Value) -> u64 {
    show.to_string().len() as u64
}

/// A stand-in weights digest for models that have no blobs here.
fn synthetic_digest(name: &str, show: &Value) -> String {
    format!("sha256:{}", sha256_hex(format!("{name}\n{show}").as_bytes()))
}

async fn version(AxState(app): AxState<App>) -> Response {
    axum::Json(json!({"version": app.config.version})).into_response()
}

async fn head_blob(AxState(app): AxState<App>, Path(digest): Path<String>) -> Response {
    if !valid_digest(&digest) {
        return error(400, "invalid digest format");
    }
    let s = app.lock();
    if s.blobs.contains_key(&digest) || s.layers.contains(&digest) {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    }
    .into_response()
}

/// `POST /api/blobs/<digest>`: reads the body as a stream, hashing as it goes, so large files never
/// need a second pass. 201 when stored, 200 when it was already there (the body is still read, and
/// the faults still apply), 400 on a bad digest or a mismatch.
async fn upload_blob(
    AxState(app): AxState<App>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    Path(digest): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !valid_digest(&digest) {
        return error(400, "invalid digest format");
    }
    let (cut, corrupt, exists) = {
        let mut s = app.lock();
        let cut = s.faults.cut_uploads > 0;
        s.faults.cut_uploads = s.faults.cut_uploads.saturating_sub(1);
        let corrupt = s.faults.corrupt_uploads > 0;
        s.faults.corrupt_uploads = s.faults.corrupt_uploads.saturating_sub(1);
        (cut, corrupt, s.blobs.contains_key(&digest))
    };
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    // Cut once this many bytes are in: half the announced body, or the first chunk when chunked.
    let cut_at = length.map_or(1, |l| (l / 2).max(1));
    let mut hasher = Sha256::new();
    let mut data = Vec::new();
    let mut received = 0u64;
    let mut flipped = false;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            // The client went away mid-body; nobody will read this answer.
            return error(400, "unexpected EOF");
        };
        received += chunk.len() as u64;
        if corrupt && !flipped && !chunk.is_empty() {
            let mut c = chunk.to_vec();
            c[0] ^= 0xff;
            flipped = true;
            hasher.update(&c);
            data.extend_from_slice(&c);
        } else {
            hasher.update(&chunk);
            if !exists {
                data.extend_from_slice(&chunk);
            }
        }
        if cut && received >= cut_at {
            conn.cut();
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    }
    if cut {
        // The body was shorter than the cut point (empty): cut anyway, the fault was asked for.
        conn.cut();
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    if exists {
        return StatusCode::OK.into_response();
    }
    let got = format!("sha256:{}", hex(&hasher.finalize()));
    if got != digest {
        return error(400, format!("digest mismatch, expected \"{digest}\", got \"{got}\""));
    }
    let mut s = app.lock();
    if s.blobs.contains_key(&digest) {
        return StatusCode::OK.into_response();
    }
    s.blobs.insert(digest, data);
    StatusCode::CREATED.into_response()
}

async fn show(AxState(app): AxState<App>, body: String) -> Response {
    let req = match parse_body(&body) {
        Ok(r) => r,
        Err(e) => return error(400, e),
    };
    let raw = model_field(&req);
    if raw.is_empty() {
        return error(400, "model is required");
    }
    let s = app.lock();
    let Some(key) = normalize(raw).and_then(|n| find(&s.models, &n)) else {
        return error(404, format!("model '{raw}' not found"));
    };
    let model = &s.models[&key];
    if s.faults.fail_show_after_create && model.request.is_some() {
        return error(500, format!("fake: show of '{raw}' fails (fail_show_after_create)"));
    }
    let mut answer = model.show.clone();
    if req.get("verbose").and_then(Value::as_bool) != Some(true) {
        // Ollama lists tensors only when asked for verbose output.
        if let Some(o) = answer.as_object_mut() {
            o.remove("tensors");
        }
    }
    axum::Json(answer).into_response()
}

/// `GET /api/tags`, sorted by name (Ollama sorts by modification time; names keep tests stable).
async fn tags(AxState(app): AxState<App>) -> Response {
    let s = app.lock();
    let mut names: Vec<&String> = s.models.keys().collect();
    names.sort();
    let models: Vec<Value> = names
        .into_iter()
        .map(|n| {
            let m = &s.models[n];
            json!({
                "name": n, "model": n,
                "modified_at": m.show.get("modified_at").cloned().unwrap_or_else(|| json!(now_rfc3339())),
                "size": m.size,
                "digest": sha256_hex(m.show.to_string().as_bytes()),
                "details": m.show.get("details").cloned().unwrap_or(json!({})),
            })
        })
        .collect();
    axum::Json(json!({"models": models})).into_response()
}

async fn delete(AxState(app): AxState<App>, body: String) -> Response {
    let req = match parse_body(&body) {
        Ok(r) => r,
        Err(e) => return error(400, e),
    };
    let raw = model_field(&req);
    let mut s = app.lock();
    match normalize(raw).and_then(|n| find(&s.models, &n)) {
        Some(key) => {
            s.models.remove(&key);
            StatusCode::OK.into_response()
        }
        None => error(404, format!("model '{raw}' not found")),
    }
}

async fn pull(AxState(app): AxState<App>, body: String) -> Response {
    let req = match parse_body(&body) {
        Ok(r) => r,
        Err(e) => return error(400, e),
    };
    let raw = model_field(&req);
    let stream = req.get("stream").and_then(Value::as_bool) != Some(false);
    let Some(name) = normalize(raw) else {
        return error(400, "invalid model name");
    };
    let mut lines = Vec::new();
    let mut s = app.lock();
    pull_into(&mut s, &app.config, &name, &mut lines);
    drop(s);
    respond(lines, stream)
}

/// `POST /api/push`, as Ollama's PushHandler: 400 for a request without a model; otherwise a 200
/// stream (`retrieving manifest`, `pushing <digest>` lines with total and completed per layer,
/// `pushing manifest`, `success`) in which every failure, the registry's refusals included, is an
/// `{"error": ...}` line. ollama.com refuses pushes to the `library` namespace (a name without one).
async fn push(AxState(app): AxState<App>, body: String) -> Response {
    let req = match parse_body(&body) {
        Ok(r) => r,
        Err(e) => return error(400, e),
    };
    let mut s = app.lock();
    s.push_requests.push(Value::Object(req.clone()));
    let raw = model_field(&req);
    if raw.is_empty() {
        return error(400, "model is required");
    }
    if let Some((status, msg)) = s.faults.push_error.take() {
        return error(status, msg);
    }
    let stream = req.get("stream").and_then(Value::as_bool) != Some(false);
    let (lines, accepted) = push_lines(&mut s, raw);
    if std::mem::take(&mut s.faults.cut_push) {
        // `retrieving manifest` and the first layer's first two lines, then the connection breaks.
        return respond_cut(lines.into_iter().take(3).collect());
    }
    s.pushed.extend(accepted);
    drop(s);
    respond(lines, stream)
}

/// The statuses of a push of `raw`, ending with `success` or an error line, and the model the
/// registry accepts (with `success`).
fn push_lines(s: &mut State, raw: &str) -> (Vec<Value>, Option<String>) {
    let mut lines = vec![json!({"status": "retrieving manifest"})];
    let Some(key) = normalize(raw).and_then(|n| find(&s.models, &n)) else {
        lines.push(json!({"status": "couldn't retrieve manifest"}));
        lines.push(json!({"error": format!("open /root/.ollama/models/manifests/registry.ollama.ai/library/{raw}/latest: no such file or directory")}));
        return (lines, None);
    };
    for (digest, total) in push_layers(s, &key) {
        let short = &digest["sha256:".len()..][..12];
        for completed in [0, total / 2, total] {
            lines.push(
                json!({"status": format!("pushing {short}"), "digest": digest, "total": total, "completed": completed}),
            );
        }
    }
    lines.push(json!({"status": "pushing manifest"}));
    let refusal = s.faults.push_refusal.take().or_else(|| {
        // A name without a namespace is in `library` (what `normalize` drops), where only Ollama pushes.
        (!key.contains('/')).then(|| "unauthorized: access denied".to_string())
    });
    match refusal {
        Some(msg) => {
            lines.push(json!({"error": msg}));
            (lines, None)
        }
        None => {
            lines.push(json!({"status": "success"}));
            (lines, Some(key))
        }
    }
}

/// The layers a push of the local model `key` sends: its uploaded blobs (a configured or pulled
/// model: a stand-in weights layer), then its config.
fn push_layers(s: &State, key: &str) -> Vec<(String, u64)> {
    let model = &s.models[key];
    let uploaded: Vec<String> = model
        .request
        .iter()
        .flat_map(|r| ["files", "adapters"].map(|k| r.get(k).cloned()))
        .flatten()
        .filter_map(|v| v.as_object().cloned())
        .flat_map(|o| o.into_iter().filter_map(|(_, d)| d.as_str().map(str::to_string)))
        .collect();
    let mut layers: Vec<(String, u64)> = uploaded
        .into_iter()
        .map(|d| {
            let size = s.blobs.get(&d).map_or(0, |b| b.len() as u64);
            (d, size)
        })
        .collect();
    if layers.is_empty() {
        layers.push((synthetic_digest(key, &model.show), model.size));
    }
    let config = model.show.to_string();
    layers.push((format!("sha256:{}", sha256_hex(config.as_bytes())), config.len() as u64));
    layers
}

/// A 200 NDJSON answer of `lines` whose connection then breaks: the body stream fails, so the
/// server closes the connection without the chunked body's last chunk.
fn respond_cut(lines: Vec<Value>) -> Response {
    let lines = futures_util::stream::iter(lines.into_iter().map(|l| Ok::<_, std::io::Error>(format!("{l}\n"))));
    let broken = futures_util::stream::once(async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Err(std::io::Error::other("fake: the push is cut"))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(lines.chain(broken)))
        .unwrap()
}

/// Pulls `name` from the configured registry into the local models, pushing Ollama's statuses to
/// `lines` (ending with `success` or an error line). Returns the local key on success.
fn pull_into(s: &mut State, config: &Config, name: &str, lines: &mut Vec<Value>) -> Option<String> {
    lines.push(json!({"status": "pulling manifest"}));
    let Some((_, show)) = config
        .pullable
        .iter()
        .find(|(n, _)| normalize(n).is_some_and(|n| n.eq_ignore_ascii_case(name)))
    else {
        lines.push(json!({"error": "pull model manifest: file does not exist"}));
        return None;
    };
    let size = synthetic_size(show);
    let weights = synthetic_digest(name, show);
    let template = format!(
        "sha256:{}",
        sha256_hex(show["template"].as_str().unwrap_or_default().as_bytes())
    );
    for (digest, total) in [
        (weights, size),
        (template, show["template"].as_str().map_or(0, |t| t.len() as u64)),
    ] {
        let short = &digest["sha256:".len()..][..12];
        for completed in [0, total / 2, total] {
            lines.push(
                json!({"status": format!("pulling {short}"), "digest": digest, "total": total, "completed": completed}),
            );
        }
    }
    lines.push(json!({"status": "verifying sha256 digest"}));
    lines.push(json!({"status": "writing manifest"}));
    lines.push(json!({"status": "success"}));
    let key = find(&s.models, name).unwrap_or_else(|| name.to_string());
    let mut show = show.clone();
    show["modified_at"] = json!(now_rfc3339());
    s.models.insert(
        key.clone(),
        Model {
            show,
            request: None,
            size,
        },
    );
    Some(key)
}

/// A `{name: digest}` object of the create request; `Err` (a 400's message) for anything else.
fn digest_map(v: Option<&Value>) -> Result<Option<Vec<(String, String)>>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, d)| {
                d.as_str()
                    .map(|d| (k.clone(), d.to_string()))
                    .ok_or_else(|| format!("invalid digest for {k}"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err("json: cannot unmarshal files into Go struct field".into()),
    }
}

/// `POST /api/create`. Validation that fails answers 400 before streaming (see the module doc);
/// everything after is streamed, and the model is stored before the stream is sent.
async fn create(AxState(app): AxState<App>, body: String) -> Response {
    let req = match parse_body(&body) {
        Ok(r) => r,
        Err(e) => {
            app.lock()
                .create_requests
                .push(serde_json::from_str(&body).unwrap_or(Value::String(body)));
            return error(400, e);
        }
    };
    let mut s = app.lock();
    s.create_requests.push(Value::Object(req.clone()));
    if let Some((status, msg)) = s.faults.create_error.take() {
        return error(status, msg);
    }
    let raw = model_field(&req);
    let Some(name) = normalize(raw) else {
        return error(400, "invalid model name");
    };
    let from = req.get("from").and_then(Value::as_str).filter(|f| !f.is_empty());
    let (files, adapters) = match (digest_map(req.get("files")), digest_map(req.get("adapters"))) {
        (Ok(f), Ok(a)) => (f, a.unwrap_or_default()),
        (Err(e), _) | (_, Err(e)) => return error(400, e),
    };
    if from.is_none() {
        match &files {
            None => return error(400, "neither 'from' or 'files' was specified"),
            Some(f) if f.is_empty() => return error(400, "no files provided to convert"),
            Some(_) => {}
        }
    }
    if !adapters.is_empty() && app.config.refuse_adapters == RefuseAdapters::Http400 {
        return error(400, ADAPTERS_REFUSED);
    }
    if adapters.len() > 1 {
        return error(400, "only one adapter is currently supported");
    }
    let used_files = if from.is_some() {
        &[][..]
    } else {
        files.as_deref().unwrap_or_default()
    };
    for (_, digest) in used_files.iter().chain(&adapters) {
        if !s.blobs.contains_key(digest) {
            return error(400, format!("missing blob {digest}"));
        }
    }
    if std::mem::take(&mut s.faults.stall_create) {
        use futures_util::StreamExt;
        let first = futures_util::stream::iter([Ok::<_, std::io::Error>(format!(
            "{}\n",
            json!({"status": "parsing GGUF"})
        ))]);
        let body = first.chain(futures_util::stream::pending());
        return Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/x-ndjson")
            .body(Body::from_stream(body))
            .unwrap();
    }
    let stream = req.get("stream").and_then(Value::as_bool) != Some(false);
    let lines = run_create(&mut s, &app.config, &req, &name, from, used_files, &adapters);
    drop(s);
    respond(lines, stream)
}

const ADAPTERS_REFUSED: &str = "LoRA adapters are no longer supported";
const BLOBS_DIR: &str = "/root/.ollama/models/blobs";

/// The streamed part of create: builds the model, stores it on success, and returns the status
/// lines (ending with `success` or the first error line).
fn run_create(
    s: &mut State,
    config: &Config,
    req: &Map<String, Value>,
    name: &str,
    from: Option<&str>,
    files: &[(String, String)],
    adapters: &[(String, String)],
) -> Vec<Value> {
    let mut lines = Vec::new();
    macro_rules! fail {
        ($($msg:tt)*) => {{
            lines.push(json!({"error": format!($($msg)*)}));
            return lines;
        }};
    }
    // Weights layers (the base's or the GGUF file's) and adapter layers, all already stored.
    let mut layers: Vec<String> = Vec::new();
    let mut adapter_layers: Vec<String> = Vec::new();
    let mut show: Value;
    let mut size: u64 = 0;
    let mut params: Map<String, Value>;
    let from_path: String;
    if let Some(from) = from {
        let Some(base_name) = normalize(from) else {
            fail!("invalid model name")
        };
        let key = match find(&s.models, &base_name) {
            Some(k) => k,
            None => match pull_into(s, config, &base_name, &mut lines) {
                Some(k) => k,
                None => return lines,
            },
        };
        let base = s.models[&key].clone();
        show = base.show.clone();
        size += base.size;
        let weights = synthetic_digest(&key, &base.show);
        from_path = modelfile_from(&base.show).unwrap_or_else(|| format!("{BLOBS_DIR}/{}", weights.replace(':', "-")));
        layers.push(weights);
        params = parse_parameters(base.show["parameters"].as_str().unwrap_or_default());
        if let Some(q) = req.get("quantize").and_then(Value::as_str).filter(|q| !q.is_empty()) {
            let level = show["details"]["quantization_level"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if !matches!(level.as_str(), "F16" | "F32" | "BF16") {
                fail!("quantization is only supported for F16 and F32 models");
            }
            lines.push(json!({"status": format!("quantizing {level} model to {}", q.to_uppercase())}));
            show["details"]["quantization_level"] = json!(q.to_uppercase());
        }
    } else {
        let mut model: Option<(String, gguf::Header)> = None;
        for (file, digest) in files {
            lines.push(json!({"status": "parsing GGUF"}));
            let header = match parse_gguf(&s.blobs[digest]) {
                Ok(h) => h,
                Err(e) => fail!("{file}: only GGUF files are supported here: {e}"),
            };
            size += s.blobs[digest].len() as u64;
            if header.get_str("general.type") == Some("adapter") {
                // A GGUF adapter among the files becomes an adapter layer, as in Ollama.
                if config.refuse_adapters != RefuseAdapters::Never {
                    fail!("{ADAPTERS_REFUSED}");
                }
                adapter_layers.push(digest.clone());
                continue;
            }
            if header.get_str("general.architecture").is_none() {
                fail!("{file}: GGUF has no general.architecture");
            }
            if model.is_some() {
                fail!("{file}: more than one model GGUF was given");
            }
            layers.push(digest.clone());
            model = Some((digest.clone(), header));
        }
        let Some((digest, header)) = model else {
            fail!("no model GGUF among the files")
        };
        show = gguf_show(&header);
        if let Some(q) = req.get("quantize").and_then(Value::as_str).filter(|q| !q.is_empty()) {
            let level = show["details"]["quantization_level"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if !matches!(level.as_str(), "F16" | "F32") {
                fail!("quantization is only supported for F16 and F32 models");
            }
            lines.push(json!({"status": format!("quantizing {level} model to {}", q.to_uppercase())}));
            show["details"]["quantization_level"] = json!(q.to_uppercase());
        }
        from_path = format!("{BLOBS_DIR}/{}", digest.replace(':', "-"));
        params = Map::new();
    }
    for (file, digest) in adapters {
        lines.push(json!({"status": "parsing GGUF"}));
        if config.refuse_adapters == RefuseAdapters::InStream {
            fail!("{ADAPTERS_REFUSED}");
        }
        let header = match parse_gguf(&s.blobs[digest]) {
            Ok(h) => h,
            Err(e) => fail!("adapter layer is not a GGUF LoRA adapter: {file}: {e}"),
        };
        if header.get_str("general.type") != Some("adapter") {
            fail!(
                "adapter layer is not a GGUF LoRA adapter: {file} has general.type {:?}",
                header.get_str("general.type").unwrap_or("")
            );
        }
        size += s.blobs[digest].len() as u64;
        adapter_layers.push(digest.clone());
    }

    // The request's fields override the base's; parameters merge key by key, as Ollama's
    // setParameters does.
    let str_field = |k: &str| req.get(k).and_then(Value::as_str).map(str::to_string);
    if let Some(t) = str_field("template") {
        show["template"] = json!(t);
    }
    if let Some(t) = str_field("system") {
        show["system"] = json!(t);
    }
    match req.get("license") {
        Some(Value::String(l)) => show["license"] = json!(l),
        Some(Value::Array(ls)) => {
            show["license"] = json!(
                ls.iter()
                    .map(|l| l.as_str().unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        }
        _ => {}
    }
    if let Some(Value::Object(p)) = req.get("parameters") {
        for (k, v) in p {
            params.insert(k.clone(), v.clone());
        }
    }
    if let Some(m) = req.get("messages").filter(|m| m.is_array()) {
        show["messages"] = m.clone();
    }
    for k in ["renderer", "parser"] {
        if let Some(v) = str_field(k).filter(|v| !v.is_empty()) {
            show[k] = json!(v);
        }
    }
    show["parameters"] = json!(format_parameters(&params));
    show["modelfile"] = json!(modelfile(name, &from_path, &show, &params, &adapter_layers));
    show["modified_at"] = json!(now_rfc3339());
    if show.get("capabilities").is_none() {
        show["capabilities"] = json!(["completion"]);
    }

    for digest in layers.iter().chain(&adapter_layers) {
        lines.push(json!({"status": format!("using existing layer {digest}")}));
    }
    // The layers Ollama writes from strings: one per field that is set.
    let mut string_layers: Vec<String> = Vec::new();
    for k in ["template", "system", "license"] {
        if let Some(v) = show.get(k).and_then(Value::as_str).filter(|v| !v.is_empty()) {
            string_layers.push(v.to_string());
        }
    }
    if !params.is_empty() {
        string_layers.push(Value::Object(params.clone()).to_string());
    }
    if let Some(m) = show.get("messages") {
        string_layers.push(m.to_string());
    }
    for content in string_layers {
        let digest = format!("sha256:{}", sha256_hex(content.as_bytes()));
        let verb = if s.layers.insert(digest.clone()) {
            "creating new"
        } else {
            "using existing"
        };
        lines.push(json!({"status": format!("{verb} layer {digest}")}));
    }
    lines.push(json!({"status": "writing manifest"}));
    lines.push(json!({"status": "success"}));
    let key = find(&s.models, name).unwrap_or_else(|| name.to_string());
    s.models.insert(
        key,
        Model {
            show,
            request: Some(Value::Object(req.clone())),
            size,
        },
    );
    lines
}

/// Reads a GGUF header from a blob's bytes (through a temporary file, the form the crate's reader takes).
fn parse_gguf(bytes: &[u8]) -> Result<gguf::Header, String> {
    let mut f = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    f.write_all(bytes).and_then(|_| f.flush()).map_err(|e| e.to_string())?;
    gguf::read_header(f.path()).map_err(|e| e.to_string())
}

/// A GGUF metadata value as `/api/show`'s `model_info` gives it; arrays are left out.
fn kv_json(v: &gguf::Value) -> Option<Value> {
    use gguf::Value as G;
    Some(match v {
        G::U8(x) => json!(x),
        G::I8(x) => json!(x),
        G::U16(x) => json!(x),
        G::I16(x) => json!(x),
        G::U32(x) => json!(x),
        G::I32(x) => json!(x),
        G::U64(x) => json!(x),
        G::I64(x) => json!(x),
        // Shortest f32 text, as Go encodes a float32 (0.1, not 0.10000000149011612).
        G::F32(x) => format!("{x}").parse::<f64>().ok().map(Value::from)?,
        G::F64(x) => json!(x),
        G::Bool(x) => json!(x),
        G::String(x) => json!(x),
        G::Array(..) => return None,
    })
}

/// Ollama's names for `general.file_type` (llama.cpp's `llama_ftype` names).
fn file_type_name(t: u64) -> &'static str {
    ollama_tools::engine::base::file_type_name(t).unwrap_or("unknown")
}

/// Ollama's `format.HumanNumber`: 1.2B, 25M, 13.8K.
fn human_number(n: u64) -> String {
    for (unit, suffix) in [(1e9, "B"), (1e6, "M"), (1e3, "K")] {
        let x = n as f64 / unit;
        if x >= 1.0 {
            return if x.fract() == 0.0 {
                format!("{x:.0}{suffix}")
            } else {
                format!("{x:.1}{suffix}")
            };
        }
    }
    n.to_string()
}

/// The `/api/show` answer for a model made from a GGUF file (before the request's fields apply).
fn gguf_show(h: &gguf::Header) -> Value {
    let arch = h.get_str("general.architecture").unwrap_or_default().to_string();
    let mut info = Map::new();
    for (k, v) in &h.kvs {
        if let Some(v) = kv_json(v) {
            info.insert(k.clone(), v);
        }
    }
    let count: u64 = h.tensors.iter().map(|t| t.ne.iter().product::<u64>()).sum();
    info.entry("general.parameter_count").or_insert(json!(count));
    let level = h
        .get("general.file_type")
        .and_then(gguf::Value::as_u64)
        .map_or("unknown", file_type_name);
    let tensors: Vec<Value> = h
        .tensors
        .iter()
        .map(|t| json!({"name": t.name, "type": t.ty.name(), "shape": t.ne}))
        .collect();
    json!({
        "license": "",
        "modelfile": "",
        "parameters": "",
        "template": "{{ .Prompt }}",
        "details": {"parent_model": "", "format": "gguf", "family": arch, "families": [arch],
                    "parameter_size": human_number(count), "quantization_level": level},
        "model_info": info,
        "tensors": tensors,
        "capabilities": ["completion"],
    })
}

/// The path on the base's `FROM` line of its Modelfile, if it has one.
fn modelfile_from(show: &Value) -> Option<String> {
    show["modelfile"]
        .as_str()?
        .lines()
        .find_map(|l| l.strip_prefix("FROM ").map(|p| p.trim().to_string()))
}

/// The Modelfile `/api/show` reports, in the shape `ollama show --modelfile` prints.
fn modelfile(name: &str, from: &str, show: &Value, params: &Map<String, Value>, adapters: &[String]) -> String {
    let mut m = format!(
        "# Modelfile generated by \"ollama show\"\n# To build a new Modelfile based on this, replace FROM with:\n# FROM {name}\n\nFROM {from}\n"
    );
    let field = |k: &str| show.get(k).and_then(Value::as_str).filter(|v| !v.is_empty());
    if let Some(t) = field("template") {
        m += &format!("TEMPLATE \"\"\"{t}\"\"\"\n");
    }
    if let Some(t) = field("system") {
        m += &format!("SYSTEM \"\"\"{t}\"\"\"\n");
    }
    for (k, v) in params {
        for v in v.as_array().cloned().unwrap_or_else(|| vec![v.clone()]) {
            m += &format!("PARAMETER {k} {}\n", go_value(&v));
        }
    }
    for a in adapters {
        m += &format!("ADAPTER {BLOBS_DIR}/{}\n", a.replace(':', "-"));
    }
    if let Some(t) = field("license") {
        m += &format!("LICENSE \"\"\"{t}\"\"\"\n");
    }
    for msg in show.get("messages").and_then(Value::as_array).into_iter().flatten() {
        m += &format!(
            "MESSAGE {} {}\n",
            msg["role"].as_str().unwrap_or_default(),
            go_value(&msg["content"])
        );
    }
    m
}

/// `/api/show`'s `parameters` text: one line per value, the name left-aligned in 30 columns, a
/// space, the value as Go's `%#v` prints it; a list gives one line per element.
pub fn format_parameters(params: &Map<String, Value>) -> String {
    let mut out = Vec::new();
    for (k, v) in params {
        for v in v.as_array().cloned().unwrap_or_else(|| vec![v.clone()]) {
            out.push(format!("{k:<30} {}", go_value(&v)));
        }
    }
    out.join("\n")
}

/// A JSON value as Go's `%#v` prints what `encoding/json` decoded it into: strings quoted the Go
/// way, numbers as float64 with `%g`'s shortest form.
pub fn go_value(v: &Value) -> String {
    match v {
        Value::String(s) => go_quote(s),
        Value::Number(n) => go_float(n.as_f64().unwrap_or_default()),
        Value::Bool(b) => b.to_string(),
        Value::Null => "<nil>".into(),
        other => other.to_string(),
    }
}

/// Go's `strconv.Quote`.
fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out += "\\\"",
            '\\' => out += "\\\\",
            '\u{7}' => out += "\\a",
            '\u{8}' => out += "\\b",
            '\u{c}' => out += "\\f",
            '\n' => out += "\\n",
            '\r' => out += "\\r",
            '\t' => out += "\\t",
            '\u{b}' => out += "\\v",
            c if (c as u32) < 0x20 || c == '\u{7f}' => out += &format!("\\x{:02x}", c as u32),
            c if c.is_control() => out += &format!("\\u{:04x}", c as u32),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go's `%v` of a float64: `%g` with the shortest digits, exponent form when the exponent is below
/// -4 or at least 6 (so 1000000 prints as `1e+06`).
fn go_float(x: f64) -> String {
    if x == 0.0 {
        return "0".into();
    }
    if !x.is_finite() {
        return if x.is_nan() {
            "NaN".into()
        } else if x > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    // Rust's `{:e}` gives the shortest round-trip digits, e.g. "1.5e-5".
    let e = format!("{x:e}");
    let (mantissa, exp) = e.split_once('e').unwrap();
    let exp: i32 = exp.parse().unwrap();
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    } else {
        format!("{x}")
    }
}

/// Reads `/api/show`'s `parameters` text back into values (a repeated name becomes a list), so a
/// model made `from` a base can merge the request's parameters over the base's.
fn parse_parameters(text: &str) -> Map<String, Value> {
    let mut out = Map::new();
    for line in text.lines() {
        let Some((k, v)) = line.trim().split_once(char::is_whitespace) else {
            continue;
        };
        let v = v.trim();
        let value = if v.starts_with('"') {
            serde_json::from_str::<String>(v)
                .map(Value::String)
                .unwrap_or_else(|_| json!(v.trim_matches('"')))
        } else if let Ok(b) = v.parse::<bool>() {
            json!(b)
        } else if let Ok(n) = v.parse::<f64>() {
            json!(n)
        } else {
            json!(v)
        };
        match out.get_mut(k) {
            Some(Value::Array(list)) => list.push(value),
            Some(prev) => *prev = json!([prev.clone(), value]),
            None => {
                out.insert(k.to_string(), value);
            }
        }
    }
    out
}

/// The current time as RFC 3339 in UTC with nanoseconds, as Go marshals a `time.Time`.
fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_nanos()
    )
}
