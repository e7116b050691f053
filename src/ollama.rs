//! Talking to Ollama: where its server is (`OLLAMA_HOST`, parsed as the ollama CLI does), what a
//! model name means (`llama3.2`, `user/model:tag`, `host/ns/model:tag`), its HTTP API (show, version,
//! blobs, create, pull, tags), and its local model store (`OLLAMA_MODELS`: manifests pointing at
//! content-addressed blobs).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::progress::Progress;

use serde::Deserialize;
use serde_json::Value as Json;

pub const DEFAULT_REGISTRY: &str = "registry.ollama.ai";
pub const DEFAULT_NAMESPACE: &str = "library";
pub const DEFAULT_TAG: &str = "latest";
/// The media type of a manifest layer holding the model's GGUF weights.
pub const MODEL_LAYER: &str = "application/vnd.ollama.image.model";
/// Media types of the other layers a model's manifest may carry (text, or JSON for params/messages).
pub const ADAPTER_LAYER: &str = "application/vnd.ollama.image.adapter";
pub const TEMPLATE_LAYER: &str = "application/vnd.ollama.image.template";
pub const SYSTEM_LAYER: &str = "application/vnd.ollama.image.system";
pub const LICENSE_LAYER: &str = "application/vnd.ollama.image.license";
pub const PARAMS_LAYER: &str = "application/vnd.ollama.image.params";
pub const MESSAGES_LAYER: &str = "application/vnd.ollama.image.messages";

/// The server's base URL from `OLLAMA_HOST`, with the ollama CLI's rules: no scheme means http;
/// no port means 11434 (80 or 443 when the scheme is given); no host means 127.0.0.1.
pub fn host() -> String {
    host_from(std::env::var("OLLAMA_HOST").ok().as_deref().unwrap_or(""))
}

pub fn host_from(value: &str) -> String {
    let value = value.trim();
    let (scheme, rest, default_port) = match value.split_once("://") {
        None => ("http", value, "11434"),
        Some(("https", rest)) => ("https", rest, "443"),
        Some((scheme, rest)) => (scheme, rest, if scheme == "http" { "80" } else { "11434" }),
    };
    let (hostport, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
    let (host, port) = match split_host_port(hostport) {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h.to_string(), p.to_string()),
        Some((h, _)) => (h.to_string(), default_port.to_string()),
        None if hostport.is_empty() => ("127.0.0.1".to_string(), default_port.to_string()),
        None => (hostport.trim_matches(['[', ']']).to_string(), default_port.to_string()),
    };
    let host = if host.is_empty() { "127.0.0.1".to_string() } else { host };
    let host = if host.contains(':') { format!("[{host}]") } else { host };
    let path = if path.is_empty() { String::new() } else { format!("/{}", path.trim_end_matches('/')) };
    format!("{scheme}://{host}:{port}{path}")
}

/// `host:port`, `[v6]:port`; `None` without a port.
fn split_host_port(s: &str) -> Option<(&str, &str)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        return after.strip_prefix(':').map(|p| (h, p));
    }
    let (h, p) = s.rsplit_once(':')?;
    // More than one colon without brackets is a bare IPv6 address, not host:port.
    (!h.contains(':')).then_some((h, p))
}

/// The model store: `OLLAMA_MODELS`, else `~/.ollama/models`.
pub fn store_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("OLLAMA_MODELS").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").or_else(|| std::env::var_os("USERPROFILE")).unwrap_or_default();
    Path::new(&home).join(".ollama").join("models")
}

/// A model name split the way Ollama splits it: `[host/][namespace/]model[:tag]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelName {
    pub registry: String,
    pub namespace: String,
    pub model: String,
    pub tag: String,
}

impl ModelName {
    /// `None` when `s` cannot be an Ollama model name (empty parts, too many slashes, spaces).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.split_once('@').map_or(s, |(n, _)| n);
        let slash = s.rfind('/').map_or(0, |i| i + 1);
        let (path, tag) = match s[slash..].rfind(':') {
            Some(i) => (&s[..slash + i], &s[slash + i + 1..]),
            None => (s, DEFAULT_TAG),
        };
        let parts: Vec<&str> = path.split('/').collect();
        let (registry, namespace, model) = match parts[..] {
            [m] => (DEFAULT_REGISTRY, DEFAULT_NAMESPACE, m),
            [ns, m] => (DEFAULT_REGISTRY, ns, m),
            [host, ns, m] => (host, ns, m),
            _ => return None,
        };
        let ok = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
        (ok(registry) && ok(namespace) && ok(model) && ok(tag) && !model.contains(':')).then(|| ModelName {
            registry: registry.to_string(),
            namespace: namespace.to_string(),
            model: model.to_string(),
            tag: tag.to_string(),
        })
    }

    /// The manifest's path inside the store.
    pub fn manifest_path(&self, store: &Path) -> PathBuf {
        store.join("manifests").join(&self.registry).join(&self.namespace).join(&self.model).join(&self.tag)
    }
}

impl std::fmt::Display for ModelName {
    /// The short form Ollama shows: `llama3.2:latest`, `user/model:tag`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.registry != DEFAULT_REGISTRY {
            write!(f, "{}/", self.registry)?;
        }
        if self.registry != DEFAULT_REGISTRY || self.namespace != DEFAULT_NAMESPACE {
            write!(f, "{}/", self.namespace)?;
        }
        write!(f, "{}:{}", self.model, self.tag)
    }
}

/// `POST /api/show` with `verbose: true`, the parts we use.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Show {
    #[serde(default)]
    pub details: Details,
    /// The base GGUF's metadata (`general.architecture`, `llama.block_count`, ...).
    #[serde(default)]
    pub model_info: serde_json::Map<String, Json>,
    /// Tensor names, types and shapes (ggml order), where the server lists them.
    #[serde(default)]
    pub tensors: Vec<ShowTensor>,
    /// The chat template (Go template syntax), system prompt and license the model carries.
    #[serde(default)]
    pub template: String,
    #[serde(default)]
    pub system: String,
    /// A string; some servers send a list of licenses.
    #[serde(default)]
    pub license: Json,
    /// Parameters as text: one `name value` line each, values printed as Go's `%#v`.
    #[serde(default)]
    pub parameters: String,
    #[serde(default)]
    pub messages: Vec<crate::modelfile::Message>,
    /// Built-in prompt renderer and output parser (current Ollama's alternative to a template).
    #[serde(default)]
    pub renderer: String,
    #[serde(default)]
    pub parser: String,
    #[serde(default)]
    pub modified_at: String,
    /// The model's Modelfile as the server prints it (`ADAPTER` lines show an adapter layer).
    #[serde(default)]
    pub modelfile: String,
}

impl Show {
    /// The license text, several licenses joined by blank lines.
    pub fn license_text(&self) -> String {
        match &self.license {
            Json::String(s) => s.clone(),
            Json::Array(items) => items.iter().filter_map(Json::as_str).collect::<Vec<_>>().join("\n\n"),
            _ => String::new(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Details {
    #[serde(default)]
    pub format: String,
    #[serde(default)]
    pub family: String,
    #[serde(default)]
    pub parameter_size: String,
    #[serde(default)]
    pub quantization_level: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ShowTensor {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub shape: Vec<u64>,
}

/// Why the server did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Nobody answered: no server there (the caller may fall back to the local store).
    #[error("no Ollama server answers at {url} ({err})")]
    Unreachable { url: String, err: String },
    /// The server answered with an error; `message` is Ollama's own text.
    #[error("Ollama at {url} answered {status}: {message}")]
    Status { url: String, status: u16, message: String },
    #[error("Ollama at {url} sent an answer that is not what its API documents: {err}")]
    Malformed { url: String, err: String },
    /// A streamed call ended with an `{"error": ...}` line; `message` is Ollama's own text.
    #[error("Ollama at {url}: {message}")]
    Failed { url: String, message: String },
    /// The connection broke while a request body was being sent (an upload cut half-way).
    #[error("the connection to Ollama at {url} broke during the upload ({err})")]
    Cut { url: String, err: String },
    /// The user pressed Ctrl-C.
    #[error("interrupted")]
    Cancelled,
}

impl ApiError {
    /// Ollama's own message, for an error the server answered.
    pub fn message(&self) -> Option<&str> {
        match self {
            ApiError::Status { message, .. } | ApiError::Failed { message, .. } => Some(message),
            _ => None,
        }
    }
}

/// One line of a streamed answer (`/api/create`, `/api/pull`).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct StreamStatus {
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub digest: String,
    #[serde(default)]
    pub total: u64,
    #[serde(default)]
    pub completed: u64,
    #[serde(default)]
    pub error: Option<String>,
}

/// An entry of `GET /api/tags`.
#[derive(Clone, Debug, Deserialize)]
pub struct Tag {
    pub name: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub digest: String,
}

/// A blocking client for Ollama's API. Short calls time out after a minute; uploads and streamed
/// calls (create, pull) run as long as the server keeps sending.
#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::blocking::Client,
}

/// How long a call that answers at once may take.
const SHORT: Duration = Duration::from_secs(60);

impl Client {
    pub fn new(base: &str) -> Self {
        let http = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(None)
            .build()
            .expect("the HTTP client builds with the compiled-in TLS backend");
        Client { base: base.trim_end_matches('/').to_string(), http }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn unreachable(&self, e: &reqwest::Error) -> ApiError {
        ApiError::Unreachable { url: self.base.clone(), err: root_cause(e) }
    }

    /// The body of a successful answer; Ollama's `{"error": ...}` text for any other.
    fn body(&self, resp: reqwest::blocking::Response) -> Result<String, ApiError> {
        let status = resp.status();
        let body = resp.text().map_err(|e| self.unreachable(&e))?;
        if !status.is_success() {
            return Err(ApiError::Status { url: self.base.clone(), status: status.as_u16(), message: error_text(&body) });
        }
        Ok(body)
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, path: &str, body: &str) -> Result<T, ApiError> {
        serde_json::from_str(body).map_err(|e| ApiError::Malformed { url: format!("{}{path}", self.base), err: e.to_string() })
    }

    /// `POST /api/show` with `verbose: true`.
    pub fn show(&self, model: &str) -> Result<Show, ApiError> {
        let resp = self
            .http
            .post(format!("{}/api/show", self.base))
            .timeout(SHORT)
            .json(&serde_json::json!({ "model": model, "verbose": true }))
            .send()
            .map_err(|e| self.unreachable(&e))?;
        let body = self.body(resp)?;
        self.parse("/api/show", &body)
    }

    /// Whether `model` exists on the server: its `/api/show`, or `None` on 404.
    pub fn find(&self, model: &str) -> Result<Option<Show>, ApiError> {
        match self.show(model) {
            Ok(show) => Ok(Some(show)),
            Err(ApiError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /api/version`: the server's version string (`0.34.2`; `0.0.0` for a build from source).
    pub fn version(&self) -> Result<String, ApiError> {
        #[derive(Deserialize)]
        struct V {
            version: String,
        }
        let resp = self.http.get(format!("{}/api/version", self.base)).timeout(SHORT).send().map_err(|e| self.unreachable(&e))?;
        let body = self.body(resp)?;
        Ok(self.parse::<V>("/api/version", &body)?.version)
    }

    /// `GET /api/tags`: the models on the server.
    pub fn tags(&self) -> Result<Vec<Tag>, ApiError> {
        #[derive(Deserialize)]
        struct Tags {
            #[serde(default)]
            models: Vec<Tag>,
        }
        let resp = self.http.get(format!("{}/api/tags", self.base)).timeout(SHORT).send().map_err(|e| self.unreachable(&e))?;
        let body = self.body(resp)?;
        Ok(self.parse::<Tags>("/api/tags", &body)?.models)
    }

    /// `HEAD /api/blobs/<digest>`: whether the server already holds the blob.
    pub fn has_blob(&self, digest: &str) -> Result<bool, ApiError> {
        let resp = self.http.head(format!("{}/api/blobs/{digest}", self.base)).timeout(SHORT).send().map_err(|e| self.unreachable(&e))?;
        match resp.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            status => Err(ApiError::Status { url: self.base.clone(), status, message: format!("HEAD /api/blobs/{digest}") }),
        }
    }

    /// `POST /api/blobs/<digest>` with the file streamed from disk as the body. Bytes sent are reported
    /// through `progress`; Ctrl-C abandons the upload ([`ApiError::Cancelled`]). A connection that breaks
    /// mid-body is [`ApiError::Cut`]; a digest the server does not confirm is its 400 [`ApiError::Status`].
    pub fn push_blob(&self, digest: &str, file: std::fs::File, len: u64, progress: &dyn Progress) -> Result<(), ApiError> {
        let sent = Arc::new(AtomicU64::new(0));
        let body = reqwest::blocking::Body::sized(Counted { inner: file, sent: sent.clone() }, len);
        let request = self.http.post(format!("{}/api/blobs/{digest}", self.base)).body(body);
        let mut shown = 0;
        let resp = cancellable(progress, move |_: &dyn Fn(())| request.send(), |_| {}, || {
            let now = sent.load(Ordering::Relaxed);
            progress.advance(now - shown);
            shown = now;
        })?
        .map_err(|e| if e.is_connect() { self.unreachable(&e) } else { ApiError::Cut { url: self.base.clone(), err: root_cause(&e) } })?;
        self.body(resp).map(|_| ())
    }

    /// `POST /api/create`, each streamed status passed to `on_status`. An `{"error": ...}` line is
    /// [`ApiError::Failed`] with Ollama's text. Ctrl-C stops waiting ([`ApiError::Cancelled`]); when
    /// the process then exits, the connection closes, and Ollama, which writes a model's manifest
    /// last, leaves no model.
    pub fn create(&self, request: &Json, progress: &dyn Progress, on_status: &mut dyn FnMut(&StreamStatus)) -> Result<(), ApiError> {
        self.stream("/api/create", request, progress, on_status)
    }

    /// `POST /api/pull` for `model`, statuses (with digest, total, completed) passed to `on_status`.
    pub fn pull(&self, model: &str, progress: &dyn Progress, on_status: &mut dyn FnMut(&StreamStatus)) -> Result<(), ApiError> {
        self.stream("/api/pull", &serde_json::json!({ "model": model, "stream": true }), progress, on_status)
    }

    fn stream(&self, path: &'static str, request: &Json, progress: &dyn Progress, on_status: &mut dyn FnMut(&StreamStatus)) -> Result<(), ApiError> {
        let this = self.clone();
        let request = request.clone();
        let call = move |emit: &dyn Fn(StreamStatus)| -> Result<(), ApiError> {
            let resp = this.http.post(format!("{}{path}", this.base)).json(&request).send().map_err(|e| this.unreachable(&e))?;
            if !resp.status().is_success() {
                return this.body(resp).map(|_| ());
            }
            let mut last = String::new();
            for line in BufReader::new(resp).lines() {
                let line = line.map_err(|e| ApiError::Unreachable { url: this.base.clone(), err: format!("the answer to {path} broke off: {e}") })?;
                if line.trim().is_empty() {
                    continue;
                }
                let status: StreamStatus = this.parse(path, &line)?;
                if let Some(message) = status.error {
                    return Err(ApiError::Failed { url: this.base.clone(), message });
                }
                last = status.status.clone();
                emit(status);
            }
            if last != "success" {
                return Err(ApiError::Malformed { url: format!("{}{path}", this.base), err: format!("the stream ended without \"success\" (last status: {last:?})") });
            }
            Ok(())
        };
        cancellable(progress, call, |s| on_status(&s), || {})?
    }
}

/// Runs a blocking `call` on its own thread while this one passes on what it emits, calls `tick`
/// every 50 ms, and watches for Ctrl-C: then it stops waiting ([`ApiError::Cancelled`]) and the
/// call's thread is abandoned. Its connection closes when the process exits, which is what the
/// caller does next (the CLI); a long-lived caller keeps the request going until it ends.
fn cancellable<E: Send + 'static, R: Send + 'static>(
    progress: &dyn Progress,
    call: impl FnOnce(&dyn Fn(E)) -> R + Send + 'static,
    mut on_event: impl FnMut(E),
    mut tick: impl FnMut(),
) -> Result<R, ApiError> {
    enum Msg<E, R> {
        Event(E),
        Done(R),
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let emit_tx = tx.clone();
        let result = call(&move |e| {
            let _ = emit_tx.send(Msg::Event(e));
        });
        let _ = tx.send(Msg::Done(result));
    });
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(Msg::Event(e)) => on_event(e),
            Ok(Msg::Done(result)) => {
                tick();
                return Ok(result);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => unreachable!("the call's thread sends Done before it ends"),
        }
        tick();
        if progress.cancelled() {
            return Err(ApiError::Cancelled);
        }
    }
}

/// The error text of an error body in Ollama's and the Hub's shape (`{"error": "..."}`), else the
/// body as it is.
pub(crate) fn error_text(body: &str) -> String {
    serde_json::from_str::<Json>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(Json::as_str).map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string())
}

/// A file read as a request body, counting the bytes handed to the client.
struct Counted {
    inner: std::fs::File,
    sent: Arc<AtomicU64>,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// The innermost error's text ("Connection refused"), which says more than reqwest's outer one.
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// A manifest in the local store, the parts we use.
#[derive(Clone, Debug, Deserialize)]
pub struct Manifest {
    /// The model's config blob (architecture, file type, renderer, parser...).
    #[serde(default)]
    pub config: Option<Layer>,
    pub layers: Vec<Layer>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Layer {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
}

/// The blob file of a digest (`sha256:<hex>` -> `blobs/sha256-<hex>`), or `None` for a malformed digest.
pub fn blob_path(store: &Path, digest: &str) -> Option<PathBuf> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| store.join("blobs").join(format!("sha256-{hex}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ollama_host_rules() {
        assert_eq!(host_from(""), "http://127.0.0.1:11434");
        assert_eq!(host_from("0.0.0.0"), "http://0.0.0.0:11434");
        assert_eq!(host_from("example.com:8080"), "http://example.com:8080");
        assert_eq!(host_from("https://example.com"), "https://example.com:443");
        assert_eq!(host_from("http://example.com"), "http://example.com:80");
        assert_eq!(host_from("http://example.com/ollama/"), "http://example.com:80/ollama");
        assert_eq!(host_from("[::1]:11435"), "http://[::1]:11435");
        assert_eq!(host_from("::1"), "http://[::1]:11434");
        assert_eq!(host_from(":7777"), "http://127.0.0.1:7777");
        assert_eq!(host_from("localhost:notaport"), "http://localhost:11434");
    }

    #[test]
    fn model_names() {
        let n = ModelName::parse("llama3.2").unwrap();
        assert_eq!((n.registry.as_str(), n.namespace.as_str(), n.model.as_str(), n.tag.as_str()), (DEFAULT_REGISTRY, "library", "llama3.2", "latest"));
        assert_eq!(n.to_string(), "llama3.2:latest");
        let n = ModelName::parse("llama3.2:3b").unwrap();
        assert_eq!((n.model.as_str(), n.tag.as_str()), ("llama3.2", "3b"));
        let n = ModelName::parse("user/model:q4").unwrap();
        assert_eq!((n.namespace.as_str(), n.to_string().as_str()), ("user", "user/model:q4"));
        let n = ModelName::parse("localhost:5000/team/model").unwrap();
        assert_eq!((n.registry.as_str(), n.namespace.as_str(), n.tag.as_str()), ("localhost:5000", "team", "latest"));
        assert_eq!(
            n.manifest_path(Path::new("/s")),
            Path::new("/s/manifests/localhost:5000/team/model/latest")
        );
        assert_eq!(ModelName::parse("a/b/c/d"), None);
        assert_eq!(ModelName::parse("with space"), None);
        assert_eq!(ModelName::parse(""), None);
    }

    #[test]
    fn blob_paths() {
        let hex = "a".repeat(64);
        assert_eq!(blob_path(Path::new("/s"), &format!("sha256:{hex}")).unwrap(), Path::new(&format!("/s/blobs/sha256-{hex}")));
        assert_eq!(blob_path(Path::new("/s"), "sha256:../../etc"), None);
    }
}
