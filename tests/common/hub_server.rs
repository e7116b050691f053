//! A fake Hugging Face Hub for the fetch-adapter tests.
//!
//! It answers what `huggingface_hub`'s `hf_hub_download` (and our `fetch-adapter`) asks of the Hub
//! (REFERENCE.md section 4), with the Hub's status codes, headers and error bodies:
//!
//! - `GET /api/models/{repo}` and `GET /api/models/{repo}/revision/{rev}`: the repo info
//!   (`sha`, `siblings`, `private`, `gated`, ...); `?blobs=true` adds `blobId`, `size` and `lfs` to
//!   each sibling, as the Hub does.
//! - `HEAD`/`GET /{repo}/resolve/{rev}/{path}`: a regular file is answered in place (200, `ETag` =
//!   its git blob sha1, `X-Repo-Commit`, `Range` support); an LFS file is a `302` whose `Location`
//!   is an absolute URL on the "CDN" host ([`Hub::cdn_host`], `localhost:PORT`: the same listener
//!   under another host name, so a different origin for clients), with `X-Linked-Etag` (the
//!   sha256), `X-Linked-Size`, and `ETag` = the git blob sha1 of the LFS pointer file.
//! - `HEAD`/`GET /cdn/{sha256}?token-free-signed-url=1`: the LFS content, no auth needed, `Range`
//!   support (206 / 416). Without the signed query it answers 403, as a signed CDN URL whose
//!   signature was dropped does.
//!
//! Errors carry `X-Error-Code` / `X-Error-Message` and a `{"error": msg}` body:
//! - an `Authorization` header whose token is not in [`HubState::tokens`]: 401, no code,
//!   `Invalid credentials in Authorization header` (the Hub refuses bad tokens even on public repos);
//! - unknown repo: 401 `RepoNotFound` without a token, 404 `RepoNotFound` with a valid one; a private
//!   repo without a token answers the same 401 (and 404 to a token in [`HubState::not_granted`]);
//! - gated repo: its *info* is public (as on the Hub: `model_info` of a gated repo works anonymously
//!   and says `"gated": "manual"`), its *files* answer 401 `GatedRepo` without a token and 403
//!   `GatedRepo` to a valid token in [`HubState::not_granted`];
//! - unknown revision: 404 `RevisionNotFound`, `Invalid rev id: <rev>`; unknown file: 404
//!   `EntryNotFound`, `Entry not found`.
//!
//! Simplification: any valid token not in `not_granted` may read every private and gated repo.
//!
//! Every request is logged in [`HubState::log`] (method, Host header, path+query, Authorization,
//! Range), so tests can assert, for instance, that the token never reached the CDN host.
//! [`HubFaults`] injects the failures of a real network: a body cut mid-way, a corrupted body, a slow
//! transfer, rate limiting.
#![allow(dead_code)]
// Handlers return ready error responses as the Err of their lookups.
#![allow(clippy::result_large_err)]

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// A model repo on the Hub.
#[derive(Clone, Debug)]
pub struct Repo {
    /// `"org/name"` (a legacy one-part id such as `"gpt2"` works too).
    pub id: String,
    pub files: Vec<File>,
    /// The one branch, usually `"main"` (empty means `"main"`).
    pub branch: String,
    /// 40 hex digits; when empty, derived from the id, branch and content (see [`repo_commit`]).
    pub commit: String,
    pub access: Access,
}

impl Repo {
    /// A public repo on `main` with a commit derived from its content.
    pub fn new(id: &str, files: Vec<File>) -> Repo {
        Repo {
            id: id.into(),
            files,
            branch: "main".into(),
            commit: String::new(),
            access: Access::Public,
        }
    }
}

/// A file in a repo.
#[derive(Clone, Debug)]
pub struct File {
    /// The path in the repo; may contain `/`.
    pub path: String,
    pub bytes: Vec<u8>,
    /// Stored with Git LFS: its resolve URL redirects to the CDN.
    pub lfs: bool,
}

impl File {
    /// A regular (git) file, answered in place by the resolve URL.
    pub fn git(path: &str, bytes: impl Into<Vec<u8>>) -> File {
        File {
            path: path.into(),
            bytes: bytes.into(),
            lfs: false,
        }
    }
    /// An LFS file, redirected to the CDN.
    pub fn lfs(path: &str, bytes: impl Into<Vec<u8>>) -> File {
        File {
            path: path.into(),
            bytes: bytes.into(),
            lfs: true,
        }
    }
    /// The `ETag` the Hub gives: the git blob sha1 of the content, or for LFS files of the pointer.
    pub fn git_etag(&self) -> String {
        if self.lfs {
            git_blob_sha1(lfs_pointer(&self.bytes).as_bytes())
        } else {
            git_blob_sha1(&self.bytes)
        }
    }
    pub fn sha256(&self) -> String {
        sha256_hex(&self.bytes)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Public,
    /// Info is public; files need a valid token (`gated: "manual"` in the info).
    Gated,
    /// Everything needs a valid token; without one it looks like a missing repo.
    Private,
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: String,
    /// The Host header (`127.0.0.1:PORT` for the Hub, `localhost:PORT` for the CDN).
    pub host: String,
    /// Path and query, as sent (still percent-encoded).
    pub path: String,
    /// The Authorization header, if any.
    pub auth: Option<String>,
    /// The Range header, if any.
    pub range: Option<String>,
}

/// Everything the Hub holds and was sent. Tests may change it directly through [`Hub::state`];
/// handlers hold the lock only briefly, never across an await.
#[derive(Debug, Default)]
pub struct HubState {
    pub repos: Vec<Repo>,
    /// Valid tokens (as sent after `Bearer `).
    pub tokens: Vec<String>,
    /// Valid tokens (they must also be in `tokens`) that have no access to gated or private repos:
    /// 403 `GatedRepo` on a gated repo's files, 404 `RepoNotFound` on a private repo.
    pub not_granted: Vec<String>,
    pub log: Vec<Req>,
    pub faults: HubFaults,
    /// File-content bytes handed to connections (resolve GETs of regular files and CDN GETs); a cut
    /// body counts only what was sent before the cut. JSON and error bodies are not counted.
    pub served_bytes: u64,
}

/// Failures to inject. Body faults (`cut_after`, `corrupt_next`) apply to the next file-content GET
/// body (CDN or regular-file resolve) that is longer than one byte, so `Range: bytes=0-0` probes
/// never use them up; they are consumed when they fire.
#[derive(Clone, Debug, Default)]
pub struct HubFaults {
    /// The next body longer than this many bytes is cut after them: those bytes are sent, then the
    /// connection is closed (the client sees a short body and a read error). Once.
    pub cut_after: Option<u64>,
    /// The next body has one byte (the one in its middle) inverted, headers unchanged. Once.
    pub corrupt_next: bool,
    /// Sleep this many ms per MiB while streaming file bodies (0 = none). Stays in force.
    pub slow_ms_per_mb: u64,
    /// The next N requests (any host, any path) answer 429 with `Retry-After: 7`.
    pub rate_limit: usize,
}

/// A running fake Hub. Dropping it stops the server.
pub struct Hub {
    /// The endpoint (`HF_ENDPOINT`): `http://127.0.0.1:PORT`, no trailing slash.
    pub url: String,
    /// The host LFS redirects point to: `localhost:PORT` (the same listener).
    pub cdn_host: String,
    pub state: Arc<Mutex<HubState>>,
    _runtime: tokio::runtime::Runtime,
}

impl Hub {
    /// The state, locked. Do not hold the guard across a request to the server.
    pub fn lock(&self) -> MutexGuard<'_, HubState> {
        lock(&self.state)
    }

    /// How many logged requests match `pred`.
    pub fn requests(&self, pred: impl Fn(&Req) -> bool) -> usize {
        self.lock().log.iter().filter(|r| pred(r)).count()
    }

    /// A copy of the request log.
    pub fn log(&self) -> Vec<Req> {
        self.lock().log.clone()
    }

    /// Replaces the pending faults.
    pub fn set_faults(&self, f: HubFaults) {
        self.lock().faults = f;
    }

    /// Makes `t` a valid token.
    pub fn add_token(&self, t: &str) {
        self.lock().tokens.push(t.to_string());
    }

    pub fn served_bytes(&self) -> u64 {
        self.lock().served_bytes
    }

    /// `{url}/{repo}/resolve/{rev}/{path}`.
    pub fn resolve_url(&self, repo: &str, rev: &str, path: &str) -> String {
        format!("{}/{repo}/resolve/{rev}/{path}", self.url)
    }

    /// The commit of repo `id` (derived if it was configured empty).
    pub fn commit(&self, id: &str) -> String {
        let s = self.lock();
        repo_commit(
            s.repos
                .iter()
                .find(|r| r.id == id)
                .unwrap_or_else(|| panic!("no repo {id}")),
        )
    }
}

/// Starts the Hub on 127.0.0.1 (a free port) with its own tokio runtime. The same port is also
/// bound on [::1] when possible, so `localhost` reaches it whichever address it resolves to.
pub fn start(repos: Vec<Repo>) -> Hub {
    let repos = repos
        .into_iter()
        .map(|mut r| {
            if r.branch.is_empty() {
                r.branch = "main".into();
            }
            r.commit = repo_commit(&r);
            r
        })
        .collect();
    let state = Arc::new(Mutex::new(HubState {
        repos,
        ..HubState::default()
    }));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = App {
        state: state.clone(),
        cdn_host: format!("localhost:{port}"),
    };
    let router = Router::new()
        .fallback(handle)
        .layer(middleware::from_fn_with_state(app.clone(), log_and_limit))
        .with_state(app.clone());
    if let Ok(v6) = runtime.block_on(tokio::net::TcpListener::bind(("::1", port))) {
        let r = router.clone();
        runtime.spawn(async move { axum::serve(v6, r).await.unwrap() });
    }
    runtime.spawn(async move { axum::serve(listener, router).await.unwrap() });
    Hub {
        url: format!("http://127.0.0.1:{port}"),
        cdn_host: app.cdn_host,
        state,
        _runtime: runtime,
    }
}

#[derive(Clone)]
struct App {
    state: Arc<Mutex<HubState>>,
    cdn_host: String,
}

/// A test that panicked while holding the lock must not turn every later request into a panic.
fn lock(state: &Mutex<HubState>) -> MutexGuard<'_, HubState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

pub const RATE_LIMIT_MESSAGE: &str = "You have been rate-limited; you can retry this action in 7 seconds.";
pub const INVALID_TOKEN_MESSAGE: &str = "Invalid credentials in Authorization header";

async fn log_and_limit(State(app): State<App>, req: Request, next: Next) -> Response {
    // Built in a block: a borrow of the request (not Sync) must not live across the await below.
    let entry = {
        let h = |n: header::HeaderName| req.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        Req {
            method: req.method().to_string(),
            host: h(header::HOST).unwrap_or_default(),
            path: req
                .uri()
                .path_and_query()
                .map_or_else(|| req.uri().path().to_string(), |p| p.as_str().to_string()),
            auth: h(header::AUTHORIZATION),
            range: h(header::RANGE),
        }
    };
    let limited = {
        let mut s = lock(&app.state);
        s.log.push(entry);
        let limited = s.faults.rate_limit > 0;
        s.faults.rate_limit = s.faults.rate_limit.saturating_sub(1);
        limited
    };
    if limited {
        let mut r = hub_error(429, None, RATE_LIMIT_MESSAGE);
        r.headers_mut().insert(header::RETRY_AFTER, "7".parse().unwrap());
        return r;
    }
    next.run(req).await
}

/// An error as the Hub gives it: `X-Error-Code` (when there is one), `X-Error-Message`, and a JSON
/// body `{"error": msg}`.
fn hub_error(status: u16, code: Option<&str>, msg: &str) -> Response {
    let mut r = (StatusCode::from_u16(status).unwrap(), axum::Json(json!({"error": msg}))).into_response();
    if let Some(code) = code {
        r.headers_mut().insert("x-error-code", code.parse().unwrap());
    }
    r.headers_mut().insert("x-error-message", msg.parse().unwrap());
    r
}

async fn handle(State(app): State<App>, req: Request) -> Response {
    let head = req.method() == Method::HEAD;
    if !head && req.method() != Method::GET {
        return (StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed").into_response();
    }
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let headers = req.headers();
    if let Some(rest) = path.strip_prefix("/api/models/") {
        return model_info(&app, headers, rest, &query);
    }
    if let Some(sha) = path.strip_prefix("/cdn/") {
        return cdn(&app, headers, sha, &query, head);
    }
    if let Some(i) = path.find("/resolve/") {
        return resolve(&app, headers, &path[1..i], &path[i + "/resolve/".len()..], head);
    }
    (StatusCode::NOT_FOUND, "Not Found").into_response()
}

/// Who is asking: `Ok(None)` anonymous, `Ok(Some(token))` a valid token, `Err` a bad token (401).
fn caller(s: &HubState, headers: &HeaderMap) -> Result<Option<String>, Response> {
    let Some(auth) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let token = auth
        .to_str()
        .ok()
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    if !token.is_empty() && s.tokens.iter().any(|t| t == token) {
        Ok(Some(token.to_string()))
    } else {
        Err(hub_error(401, None, INVALID_TOKEN_MESSAGE))
    }
}

/// The repo `id` if the caller may see it (and, with `files`, read its files).
fn access(s: &HubState, headers: &HeaderMap, id: &str, files: bool) -> Result<Repo, Response> {
    let token = caller(s, headers)?;
    let granted = token.as_ref().is_some_and(|t| !s.not_granted.contains(t));
    let not_found = || {
        hub_error(
            if token.is_some() { 404 } else { 401 },
            Some("RepoNotFound"),
            "Repository not found",
        )
    };
    let Some(repo) = s.repos.iter().find(|r| r.id == id) else {
        return Err(not_found());
    };
    match repo.access {
        Access::Private if !granted => Err(not_found()),
        Access::Gated if files && token.is_none() => Err(hub_error(
            401,
            Some("GatedRepo"),
            &format!(
                "Access to model {id} is restricted. You must have access to it and be authenticated to access it. Please log in."
            ),
        )),
        Access::Gated if files && !granted => Err(hub_error(
            403,
            Some("GatedRepo"),
            &format!(
                "Access to model {id} is restricted and you are not in the authorized list. Visit https://huggingface.co/{id} to ask for access."
            ),
        )),
        _ => Ok(repo.clone()),
    }
}

fn known_rev(repo: &Repo, rev: &str) -> bool {
    rev == repo.branch || rev == repo.commit
}

fn revision_not_found(rev: &str) -> Response {
    hub_error(404, Some("RevisionNotFound"), &format!("Invalid rev id: {rev}"))
}

/// `/api/models/{id}[/revision/{rev}]`.
fn model_info(app: &App, headers: &HeaderMap, rest: &str, query: &str) -> Response {
    let (id, rev) = match rest.split_once("/revision/") {
        Some((id, rev)) => (id, Some(pct_decode(rev))),
        None => (rest.trim_end_matches('/'), None),
    };
    let id = pct_decode(id);
    let repo = match access(&lock(&app.state), headers, &id, false) {
        Ok(r) => r,
        Err(e) => return e,
    };
    if let Some(rev) = &rev
        && !known_rev(&repo, rev)
    {
        return revision_not_found(rev);
    }
    let blobs = query.split('&').any(|kv| kv == "blobs=true" || kv == "blobs=1");
    let siblings: Vec<Value> = repo
        .files
        .iter()
        .map(|f| {
            let mut s = json!({"rfilename": f.path});
            if blobs {
                s["blobId"] = json!(f.git_etag());
                s["size"] = json!(f.bytes.len());
                if f.lfs {
                    let pointer = lfs_pointer(&f.bytes).len();
                    s["lfs"] = json!({"sha256": f.sha256(), "size": f.bytes.len(), "pointerSize": pointer});
                }
            }
            s
        })
        .collect();
    let gated = match repo.access {
        Access::Gated => json!("manual"),
        _ => json!(false),
    };
    axum::Json(json!({
        "_id": &repo.commit[..24],
        "id": repo.id,
        "modelId": repo.id,
        "author": repo.id.split_once('/').map(|(o, _)| o),
        "sha": repo.commit,
        "lastModified": "2026-11-01T10:00:00.000Z",
        "createdAt": "2026-10-01T10:00:00.000Z",
        "private": repo.access == Access::Private,
        "gated": gated,
        "disabled": false,
        "downloads": 0,
        "likes": 0,
        "tags": [],
        "library_name": "peft",
        "siblings": siblings,
    }))
    .into_response()
}

/// `/{id}/resolve/{rev}/{path}`; `rest` is `{rev}/{path}`, still percent-encoded.
fn resolve(app: &App, headers: &HeaderMap, id: &str, rest: &str, head: bool) -> Response {
    let id = pct_decode(id);
    let repo = match access(&lock(&app.state), headers, &id, true) {
        Ok(r) => r,
        Err(e) => return e,
    };
    // The revision is one segment (`refs%2Fpr%2F1`) or, unencoded, several (`refs/pr/1`).
    let segs: Vec<&str> = rest.split('/').collect();
    let Some(k) = (1..segs.len()).find(|&k| known_rev(&repo, &pct_decode(&segs[..k].join("/")))) else {
        return revision_not_found(&pct_decode(segs[0]));
    };
    let path = segs[k..].iter().map(|s| pct_decode(s)).collect::<Vec<_>>().join("/");
    let Some(file) = repo.files.iter().find(|f| f.path == path) else {
        return hub_error(404, Some("EntryNotFound"), "Entry not found");
    };
    if file.lfs {
        let sha = file.sha256();
        let location = format!("http://{}/cdn/{sha}?token-free-signed-url=1", app.cdn_host);
        let body = format!("Found. Redirecting to {location}");
        return Response::builder()
            .status(StatusCode::FOUND)
            .header(header::LOCATION, &location)
            .header("x-repo-commit", &repo.commit)
            .header("x-linked-etag", format!("\"{sha}\""))
            .header("x-linked-size", file.bytes.len())
            .header(header::ETAG, format!("\"{}\"", file.git_etag()))
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .header(header::CONTENT_LENGTH, body.len())
            .body(if head { Body::empty() } else { Body::from(body) })
            .unwrap();
    }
    let name = path.rsplit('/').next().unwrap_or(&path);
    let extra = [
        ("x-repo-commit".to_string(), repo.commit.clone()),
        (
            "content-disposition".to_string(),
            format!("inline; filename*=UTF-8''{name}; filename=\"{name}\";"),
        ),
    ];
    content(app, headers, file.bytes.clone(), &file.git_etag(), &extra, head)
}

/// `/cdn/{sha256}?token-free-signed-url=1`.
fn cdn(app: &App, headers: &HeaderMap, sha: &str, query: &str, head: bool) -> Response {
    if !query.split('&').any(|kv| kv == "token-free-signed-url=1") {
        return (
            StatusCode::FORBIDDEN,
            "Missing Key-Pair-Id query parameter or cookie value",
        )
            .into_response();
    }
    let bytes = {
        let s = lock(&app.state);
        s.repos
            .iter()
            .flat_map(|r| &r.files)
            .find(|f| f.lfs && f.sha256() == sha)
            .map(|f| f.bytes.clone())
    };
    let Some(bytes) = bytes else {
        return (StatusCode::NOT_FOUND, "NoSuchKey: The specified key does not exist.").into_response();
    };
    content(app, headers, bytes, sha, &[], head)
}

/// A `Range` header against a body of `total` bytes: `None` to serve it all (no header, or one this
/// server ignores: not bytes, several ranges, malformed), `Some(Err)` if unsatisfiable (416),
/// `Some(Ok((first, last)))` inclusive.
pub fn parse_range(h: Option<&str>, total: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = h?.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 || total == 0 {
            return Some(Err(()));
        }
        return Some(Ok((total - n.min(total), total - 1)));
    }
    let first: u64 = a.parse().ok()?;
    let last = if b.is_empty() { u64::MAX } else { b.parse().ok()? };
    if last < first {
        return None;
    }
    if first >= total {
        return Some(Err(()));
    }
    Some(Ok((first, last.min(total - 1))))
}

/// A file body: 200, or 206 / 416 for a `Range`; streamed with the faults applied on GET.
fn content(
    app: &App,
    headers: &HeaderMap,
    bytes: Vec<u8>,
    etag: &str,
    extra: &[(String, String)],
    head: bool,
) -> Response {
    let total = bytes.len() as u64;
    let range = parse_range(headers.get(header::RANGE).and_then(|v| v.to_str().ok()), total);
    let mut b = Response::builder()
        .header(header::ETAG, format!("\"{etag}\""))
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_TYPE, "application/octet-stream");
    for (k, v) in extra {
        b = b.header(k.as_str(), v.as_str());
    }
    let (first, last) = match range {
        Some(Err(())) => {
            return b
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{total}"))
                .header(header::CONTENT_LENGTH, 0)
                .body(Body::empty())
                .unwrap();
        }
        Some(Ok((f, l))) => {
            b = b
                .status(StatusCode::PARTIAL_CONTENT)
                .header(header::CONTENT_RANGE, format!("bytes {f}-{l}/{total}"));
            (f as usize, l as usize + 1)
        }
        None => {
            b = b.status(StatusCode::OK);
            (0, bytes.len())
        }
    };
    let mut data = bytes[first..last].to_vec();
    b = b.header(header::CONTENT_LENGTH, data.len());
    if head {
        return b.body(Body::empty()).unwrap();
    }
    let (cut, slow) = {
        let mut s = lock(&app.state);
        let f = &mut s.faults;
        let len = data.len() as u64;
        let cut = if len > 1 && f.cut_after.is_some_and(|n| n < len) {
            f.cut_after.take()
        } else {
            None
        };
        if len > 1 && f.corrupt_next {
            f.corrupt_next = false;
            let mid = data.len() / 2;
            data[mid] ^= 0xff;
        }
        (cut, f.slow_ms_per_mb)
    };
    b.body(Body::from_stream(body_stream(app.state.clone(), data, cut, slow)))
        .unwrap()
}

/// Streams `data` in 64 KiB chunks, counting served bytes; with `cut`, stops after that many bytes
/// and fails the body, which makes hyper close the connection mid-body.
fn body_stream(
    state: Arc<Mutex<HubState>>,
    data: Vec<u8>,
    cut: Option<u64>,
    slow_ms_per_mb: u64,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send {
    const CHUNK: usize = 64 * 1024;
    let limit = cut.map_or(data.len(), |n| n as usize);
    futures_util::stream::unfold((0usize, false), move |(pos, done)| {
        let state = state.clone();
        let chunk = data[pos.min(limit)..(pos + CHUNK).min(limit)].to_vec();
        async move {
            if done {
                return None;
            }
            if chunk.is_empty() {
                cut?;
                // Let hyper flush what was sent, then fail the body: the connection is closed.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        "fake hub: cut",
                    )),
                    (pos, true),
                ));
            }
            if slow_ms_per_mb > 0 {
                let micros = slow_ms_per_mb * 1000 * chunk.len() as u64 / (1024 * 1024);
                tokio::time::sleep(Duration::from_micros(micros)).await;
            }
            lock(&state).served_bytes += chunk.len() as u64;
            let next = pos + chunk.len();
            Some((Ok(chunk), (next, false)))
        }
    })
}

/// `%XX` decoding (invalid escapes are kept as they are).
pub fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 3 <= b.len()
            && let Ok(v) = u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The LFS pointer file git stores in place of an LFS file.
pub fn lfs_pointer(bytes: &[u8]) -> String {
    format!(
        "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize {}\n",
        sha256_hex(bytes),
        bytes.len()
    )
}

/// Git's blob id: sha1 of `"blob {len}\0"` followed by the content.
pub fn git_blob_sha1(bytes: &[u8]) -> String {
    let mut data = format!("blob {}\0", bytes.len()).into_bytes();
    data.extend_from_slice(bytes);
    hex(&sha1(&data))
}

/// A repo's commit: the configured one, else a sha1 of its id, branch and files (stable across runs).
pub fn repo_commit(r: &Repo) -> String {
    if !r.commit.is_empty() {
        return r.commit.clone();
    }
    let mut data = format!(
        "commit\0{}\0{}\0",
        r.id,
        if r.branch.is_empty() { "main" } else { &r.branch }
    )
    .into_bytes();
    for f in &r.files {
        data.extend_from_slice(format!("{}\0{}\0{}\0", f.path, f.lfs, sha256_hex(&f.bytes)).as_bytes());
    }
    hex(&sha1(&data))
}

/// SHA-1 (FIPS 180-4), for git ids only: sha2 has none and no sha1 crate is a dependency.
pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x6745_2301, 0xEFCD_AB89, 0x98BA_DCFE, 0x1032_5476, 0xC3D2_E1F0];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64).wrapping_mul(8)).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 80];
        for i in 0..16 {
            w[i] = u32::from_be_bytes(block[4 * i..4 * i + 4].try_into().unwrap());
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, &wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
                20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                _ => (b ^ c ^ d, 0xCA62_C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, x) in h.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}
