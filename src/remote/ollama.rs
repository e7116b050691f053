//! Talking to Ollama: where its server is (`OLLAMA_HOST`, parsed as the ollama CLI does), what a
//! model name means (`llama3.2`, `user/model:tag`, `host/ns/model:tag`), its HTTP API (show, version,
//! blobs, create, pull, push, tags), and its local model store (`OLLAMA_MODELS`: manifests pointing at
//! content-addressed blobs).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{ErrorKind, Patience, printable};
use crate::progress::Progress;

use serde::Deserialize;
use serde_json::Value as Json;

/// The registry of a model name without a host ([`ModelName::registry`]): ollama.com's.
pub const DEFAULT_REGISTRY: &str = "registry.ollama.ai";
/// The namespace of a model name without one ([`ModelName::namespace`]): Ollama's own models.
pub const DEFAULT_NAMESPACE: &str = "library";
/// The tag of a model name without one ([`ModelName::tag`]).
pub const DEFAULT_TAG: &str = "latest";
/// The media type of a manifest layer holding the model's GGUF weights.
pub const MODEL_LAYER: &str = "application/vnd.ollama.image.model";
/// The media type of a layer holding a GGUF LoRA adapter (`ADAPTER` in a Modelfile).
pub const ADAPTER_LAYER: &str = "application/vnd.ollama.image.adapter";
/// The media type of a layer holding the chat template (text, Go template syntax).
pub const TEMPLATE_LAYER: &str = "application/vnd.ollama.image.template";
/// The media type of a layer holding the system prompt (text).
pub const SYSTEM_LAYER: &str = "application/vnd.ollama.image.system";
/// The media type of a layer holding a license (text).
pub const LICENSE_LAYER: &str = "application/vnd.ollama.image.license";
/// The media type of a layer holding the parameters (a JSON object).
pub const PARAMS_LAYER: &str = "application/vnd.ollama.image.params";
/// The media type of a layer holding the example messages (a JSON list).
pub const MESSAGES_LAYER: &str = "application/vnd.ollama.image.messages";

/// The server's base URL from `OLLAMA_HOST`, with the ollama CLI's rules: no scheme means http;
/// no port means 11434 (80 or 443 when the scheme is given); no host means 127.0.0.1.
pub fn host() -> String {
    host_from(std::env::var("OLLAMA_HOST").ok().as_deref().unwrap_or(""))
}

/// [`host`] for the value `value` of `OLLAMA_HOST` (`""` when unset): always a base URL
/// `scheme://host:port[/path]`, whatever the value holds.
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
    let path = if path.is_empty() {
        String::new()
    } else {
        format!("/{}", path.trim_end_matches('/'))
    };
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
pub(crate) fn store_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("OLLAMA_MODELS").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .or_else(|| std::env::var_os("USERPROFILE"))
        .unwrap_or_default();
    Path::new(&home).join(".ollama").join("models")
}

/// A model name split the way Ollama splits it: `[host/][namespace/]model[:tag]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelName {
    /// The registry's host (and port): [`DEFAULT_REGISTRY`] unless the name gives one.
    pub registry: String,
    /// [`DEFAULT_NAMESPACE`] unless the name gives one (a user's, for `user/model`).
    pub namespace: String,
    /// The model.
    pub model: String,
    /// [`DEFAULT_TAG`] unless the name gives one.
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
        store
            .join("manifests")
            .join(&self.registry)
            .join(&self.namespace)
            .join(&self.model)
            .join(&self.tag)
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
    /// Format, family, size and quantization, in words.
    #[serde(default, deserialize_with = "null_as_default")]
    pub details: Details,
    /// The base GGUF's metadata (`general.architecture`, `llama.block_count`, ...).
    #[serde(default, deserialize_with = "null_as_default")]
    pub model_info: serde_json::Map<String, Json>,
    /// Tensor names, types and shapes (ggml order), where the server lists them.
    #[serde(default, deserialize_with = "null_as_default")]
    pub tensors: Vec<ShowTensor>,
    /// The chat template (Go template syntax) the model carries; empty without one.
    #[serde(default, deserialize_with = "null_as_default")]
    pub template: String,
    /// The system prompt the model carries; empty without one.
    #[serde(default, deserialize_with = "null_as_default")]
    pub system: String,
    /// The license: a string; some servers send a list of licenses ([`Show::license_text`] reads both).
    #[serde(default)]
    pub license: Json,
    /// Parameters as text: one `name value` line each, values printed as Go's `%#v`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub parameters: String,
    /// The example messages the model carries (Modelfile `MESSAGE`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub messages: Vec<crate::formats::modelfile::Message>,
    /// The built-in prompt renderer (current Ollama's alternative to a template); empty without one.
    #[serde(default, deserialize_with = "null_as_default")]
    pub renderer: String,
    /// The built-in output parser that goes with [`Show::renderer`]; empty without one.
    #[serde(default, deserialize_with = "null_as_default")]
    pub parser: String,
    /// When the model was last changed, as the server writes it (RFC 3339).
    #[serde(default, deserialize_with = "null_as_default")]
    pub modified_at: String,
    /// The model's Modelfile as the server prints it (`ADAPTER` lines show an adapter layer).
    #[serde(default, deserialize_with = "null_as_default")]
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

/// `details` of `/api/show`; a field the server leaves out is empty.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Details {
    /// `gguf`, or `safetensors` for a model the MLX runner runs.
    #[serde(default, deserialize_with = "null_as_default")]
    pub format: String,
    /// The architecture family (`llama`, `qwen2`, ...).
    #[serde(default, deserialize_with = "null_as_default")]
    pub family: String,
    /// The size in words (`3.2B`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub parameter_size: String,
    /// The file type (`Q4_K_M`, `F16`, ...).
    #[serde(default, deserialize_with = "null_as_default")]
    pub quantization_level: String,
}

/// A tensor `/api/show` lists.
#[derive(Clone, Debug, Deserialize)]
pub struct ShowTensor {
    /// Its GGUF name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Its ggml type's name (`Q4_K`, `F32`, ...).
    #[serde(rename = "type")]
    pub ty: String,
    /// Its shape in ggml order (innermost dimension first).
    pub shape: Vec<u64>,
}

/// Why the server did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Nobody answered: no server there (the caller may fall back to the local store).
    #[error("no Ollama server answers at {url} ({err})")]
    Unreachable {
        /// The server's base URL.
        url: String,
        /// Why, in words (the innermost cause: "Connection refused").
        err: String,
    },
    /// The server answered with an error; `message` is Ollama's own text.
    #[error("Ollama at {url} answered {status}: {message}")]
    Status {
        /// The server's base URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// Ollama's `{"error": ...}` text, else the body, with control characters escaped.
        message: String,
    },
    /// An answer that is not what Ollama's API documents: not JSON, another shape, too large, a
    /// stream that ends without `success`, a redirect loop.
    #[error("Ollama at {url} sent an answer that is not what its API documents: {err}")]
    Malformed {
        /// The URL asked.
        url: String,
        /// What is wrong with the answer.
        err: String,
    },
    /// A streamed call ended with an `{"error": ...}` line; `message` is Ollama's own text.
    #[error("Ollama at {url}: {message}")]
    Failed {
        /// The server's base URL.
        url: String,
        /// Ollama's text, with control characters escaped.
        message: String,
    },
    /// The connection broke while the server was streaming its answer (a create, pull or push
    /// cut half-way): unlike [`ApiError::Unreachable`], the server was there.
    #[error("the connection to Ollama at {url} broke off while it was streaming its answer to {path} ({err})")]
    BrokeOff {
        /// The server's base URL.
        url: String,
        /// The API path called (`/api/push`).
        path: String,
        /// Why, in words.
        err: String,
    },
    /// The connection broke while a request body was being sent (an upload cut half-way).
    #[error("the connection to Ollama at {url} broke during the upload ({err})")]
    Cut {
        /// The server's base URL.
        url: String,
        /// Why, in words.
        err: String,
    },
    /// A long call (upload, create, pull) got no byte for the idle timeout.
    #[error(
        "Ollama at {url} sent nothing for {secs} s while {doing}: it may be stuck or overloaded; check its log, or set \
         OLLAMA_TOOLS_TIMEOUT (seconds) to wait longer"
    )]
    Stalled {
        /// The server's base URL.
        url: String,
        /// What was being waited for, in words.
        doing: String,
        /// The idle timeout that ran out, in seconds.
        secs: u64,
    },
    /// The user pressed Ctrl-C.
    #[error("interrupted")]
    Cancelled,
}

impl ApiError {
    /// Ollama's own message, for an error the server answered.
    pub(crate) fn message(&self) -> Option<&str> {
        match self {
            ApiError::Status { message, .. } | ApiError::Failed { message, .. } => Some(message),
            _ => None,
        }
    }

    /// What went wrong, for matching: a 404 or Ollama's "file does not exist" / "not found" (a pull
    /// of a model no registry has) is [`ErrorKind::NotFound`], 401 and 403 [`ErrorKind::Unauthorized`],
    /// 429 [`ErrorKind::RateLimited`], Ctrl-C [`ErrorKind::Interrupted`]; anything else, no server
    /// included, [`ErrorKind::Server`].
    pub fn kind(&self) -> ErrorKind {
        match self {
            ApiError::Status { status: 404, .. } => ErrorKind::NotFound,
            ApiError::Status { status: 401 | 403, .. } => ErrorKind::Unauthorized,
            ApiError::Status { status: 429, .. } => ErrorKind::RateLimited,
            // A streamed error has no status: Ollama's words are all there is.
            ApiError::Failed { message, .. }
                if ["file does not exist", "not found"]
                    .iter()
                    .any(|m| message.to_lowercase().contains(m)) =>
            {
                ErrorKind::NotFound
            }
            ApiError::Cancelled => ErrorKind::Interrupted,
            _ => ErrorKind::Server,
        }
    }
}

/// One line of a streamed answer (`/api/create`, `/api/pull`, `/api/push`).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct StreamStatus {
    /// What the server is doing (`pulling manifest`, `success`), control characters escaped, on one line.
    #[serde(default, deserialize_with = "null_as_default")]
    pub status: String,
    /// The layer a transfer's status is about; empty for other statuses.
    #[serde(default, deserialize_with = "null_as_default")]
    pub digest: String,
    /// The layer's size in bytes; 0 when not given.
    #[serde(default, deserialize_with = "null_as_default")]
    pub total: u64,
    /// Bytes of the layer done so far.
    #[serde(default, deserialize_with = "null_as_default")]
    pub completed: u64,
    /// Ollama's error: the line that ends the stream (the client returns it as [`ApiError::Failed`]).
    #[serde(default)]
    pub error: Option<String>,
}

/// An entry of `GET /api/tags`.
#[derive(Clone, Debug, Deserialize)]
pub struct Tag {
    /// The model's name with its tag (`llama3.2:latest`).
    pub name: String,
    /// Its size in bytes, all layers together.
    #[serde(default, deserialize_with = "null_as_default")]
    pub size: u64,
    /// Its manifest's sha256, in hex.
    #[serde(default, deserialize_with = "null_as_default")]
    pub digest: String,
}

/// A blocking client for Ollama's API. Short calls time out after a minute; uploads and streamed
/// calls (create, pull, push) run as long as the server keeps sending, and fail with
/// [`ApiError::Stalled`] after [`Patience::idle`] without a byte.
#[derive(Clone)]
pub struct Client {
    base: String,
    /// Short calls (each with [`SHORT`]) and streams (the client's timeout: the idle one, per read).
    http: reqwest::blocking::Client,
    /// Uploads: no timeout of its own, since sending a large body takes long; watched instead.
    upload: reqwest::blocking::Client,
    idle: Duration,
}

/// How long a call that answers at once may take.
const SHORT: Duration = Duration::from_secs(60);

/// The most read of a verbose `/api/show`: it carries the tokenizer's arrays (a 262k-token
/// vocabulary with scores and merges is some 20 MB).
const SHOW_CAP: usize = 64 << 20;
/// The most read of `/api/tags` (some 500 bytes a model).
const TAGS_CAP: usize = 16 << 20;
/// The most read of a small answer (`/api/version`, an upload's).
const SMALL_CAP: usize = 64 << 10;
/// The most read of an error answer: its message is all that is used.
pub(crate) const ERROR_BODY_CAP: usize = 64 << 10;
/// The longest line of a streamed answer (`{"status": ...}` lines are well under 1 KiB).
pub(crate) const LINE_CAP: usize = 1 << 20;
/// The most of a server's text put into a message.
pub(crate) const MESSAGE_CHARS: usize = 400;

impl Client {
    /// A client for the server at `base` (a URL such as [`host`] gives), with the timeouts of
    /// [`Patience::from_env`]. Nothing is asked of the server yet.
    pub fn new(base: &str) -> Self {
        Self::with_patience(base, Patience::from_env())
    }

    /// [`Client::new`] with its idle timeout ([`Patience::idle`]) given rather than taken from the
    /// environment.
    pub fn with_patience(base: &str, patience: Patience) -> Self {
        let build = |timeout: Option<Duration>| {
            reqwest::blocking::Client::builder()
                .connect_timeout(Duration::from_secs(3))
                .timeout(timeout)
                .build()
                .expect("the HTTP client builds with the compiled-in TLS backend")
        };
        Client {
            base: base.trim_end_matches('/').to_string(),
            http: build(Some(patience.idle)),
            upload: build(None),
            idle: patience.idle,
        }
    }

    /// The server's base URL, without a trailing slash.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// A request that got no answer, in words: nobody there, no answer in time, a redirect loop.
    fn unreachable(&self, e: &reqwest::Error) -> ApiError {
        if e.is_redirect() {
            return ApiError::Malformed {
                url: self.base.clone(),
                err: "it redirects in a loop (too many redirects); check OLLAMA_HOST and any proxy in front of it"
                    .into(),
            };
        }
        let err = if e.is_timeout() {
            "no answer in time".to_string()
        } else {
            root_cause(e)
        };
        ApiError::Unreachable {
            url: self.base.clone(),
            err,
        }
    }

    /// The body of a successful answer (at most `cap` bytes); Ollama's `{"error": ...}` text for
    /// any other.
    fn body(&self, path: &str, resp: reqwest::blocking::Response, cap: usize) -> Result<Vec<u8>, ApiError> {
        let status = resp.status();
        if !status.is_success() {
            return Err(ApiError::Status {
                url: self.base.clone(),
                status: status.as_u16(),
                message: error_text(&error_body(resp)),
            });
        }
        let announced = resp.content_length();
        read_capped(resp, announced, cap).map_err(|e| match e {
            BodyError::Read(e) => ApiError::Unreachable {
                url: self.base.clone(),
                err: format!("the answer to {path} broke off: {}", root_cause(&e)),
            },
            too_large => ApiError::Malformed {
                url: format!("{}{path}", self.base),
                err: too_large.to_string(),
            },
        })
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, path: &str, body: &[u8]) -> Result<T, ApiError> {
        serde_json::from_slice(body).map_err(|e| ApiError::Malformed {
            url: format!("{}{path}", self.base),
            err: crate::error::json_problem(&e, body),
        })
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
        let body = self.body("/api/show", resp, SHOW_CAP)?;
        let mut show: Show = self.parse("/api/show", &body)?;
        defuse_names(&mut show);
        Ok(show)
    }

    /// Whether `model` exists on the server: its `/api/show`, or `None` on 404.
    pub(crate) fn find(&self, model: &str) -> Result<Option<Show>, ApiError> {
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
        let resp = self
            .http
            .get(format!("{}/api/version", self.base))
            .timeout(SHORT)
            .send()
            .map_err(|e| self.unreachable(&e))?;
        let body = self.body("/api/version", resp, SMALL_CAP)?;
        Ok(printable(&self.parse::<V>("/api/version", &body)?.version, 80))
    }

    /// `GET /api/tags`: the models on the server.
    pub fn tags(&self) -> Result<Vec<Tag>, ApiError> {
        #[derive(Deserialize)]
        struct Tags {
            #[serde(default, deserialize_with = "null_as_default")]
            models: Vec<Tag>,
        }
        let resp = self
            .http
            .get(format!("{}/api/tags", self.base))
            .timeout(SHORT)
            .send()
            .map_err(|e| self.unreachable(&e))?;
        let body = self.body("/api/tags", resp, TAGS_CAP)?;
        Ok(self.parse::<Tags>("/api/tags", &body)?.models)
    }

    /// `HEAD /api/blobs/<digest>`: whether the server already holds the blob.
    pub(crate) fn has_blob(&self, digest: &str) -> Result<bool, ApiError> {
        let resp = self
            .http
            .head(format!("{}/api/blobs/{digest}", self.base))
            .timeout(SHORT)
            .send()
            .map_err(|e| self.unreachable(&e))?;
        match resp.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            status => Err(ApiError::Status {
                url: self.base.clone(),
                status,
                message: format!("HEAD /api/blobs/{digest}"),
            }),
        }
    }

    /// `POST /api/blobs/<digest>` with the file streamed from disk as the body. Bytes sent are reported
    /// through `progress`; Ctrl-C abandons the upload ([`ApiError::Cancelled`]). A connection that breaks
    /// mid-body is [`ApiError::Cut`]; a digest the server does not confirm is its 400 [`ApiError::Status`];
    /// a server that takes no byte, or does not answer, for the idle timeout is [`ApiError::Stalled`].
    pub fn push_blob(
        &self,
        digest: &str,
        file: std::fs::File,
        len: u64,
        progress: &dyn Progress,
    ) -> Result<(), ApiError> {
        let sent = Arc::new(AtomicU64::new(0));
        let body = reqwest::blocking::Body::sized(
            Counted {
                inner: file,
                sent: sent.clone(),
            },
            len,
        );
        let request = self.upload.post(format!("{}/api/blobs/{digest}", self.base)).body(body);
        let (mut shown, mut moved) = (0, Instant::now());
        let resp = cancellable(
            progress,
            move |_: &dyn Fn(())| request.send(),
            |_| {},
            || {
                let now = sent.load(Ordering::Relaxed);
                if now != shown {
                    progress.advance(now - shown);
                    (shown, moved) = (now, Instant::now());
                }
                // The clock runs from the last byte taken: a server that stops reading, or never
                // answers once it has everything, is given up on.
                match moved.elapsed() > self.idle {
                    true => Err(self.stalled(&format!("uploading {digest} ({shown} of {len} bytes taken)"))),
                    false => Ok(()),
                }
            },
        )?
        .map_err(|e| {
            if e.is_connect() {
                self.unreachable(&e)
            } else {
                ApiError::Cut {
                    url: self.base.clone(),
                    err: root_cause(&e),
                }
            }
        })?;
        self.body("/api/blobs", resp, SMALL_CAP).map(|_| ())
    }

    fn stalled(&self, doing: &str) -> ApiError {
        ApiError::Stalled {
            url: self.base.clone(),
            doing: doing.to_string(),
            secs: self.idle.as_secs_f64().ceil() as u64,
        }
    }

    /// `POST /api/create`, each streamed status passed to `on_status`. An `{"error": ...}` line is
    /// [`ApiError::Failed`] with Ollama's text. Ctrl-C stops waiting ([`ApiError::Cancelled`]); when
    /// the process then exits, the connection closes, and Ollama, which writes a model's manifest
    /// last, leaves no model.
    pub fn create(
        &self,
        request: &Json,
        progress: &dyn Progress,
        on_status: &mut dyn FnMut(&StreamStatus),
    ) -> Result<(), ApiError> {
        self.stream("/api/create", request, progress, on_status)
    }

    /// `POST /api/pull` for `model`, statuses (with digest, total, completed) passed to `on_status`.
    pub fn pull(
        &self,
        model: &str,
        progress: &dyn Progress,
        on_status: &mut dyn FnMut(&StreamStatus),
    ) -> Result<(), ApiError> {
        self.stream(
            "/api/pull",
            &serde_json::json!({ "model": model, "stream": true }),
            progress,
            on_status,
        )
    }

    /// `POST /api/push` for `model`: Ollama uploads it to the registry its name points at (ollama.com
    /// for `user/model`), streaming `{status, digest, total, completed}` per layer to `on_status`.
    /// The registry's refusals (`unauthorized: access denied`, an unknown key) arrive as an
    /// `{"error": ...}` line, [`ApiError::Failed`]. `insecure` lets Ollama use plain http for the registry.
    pub(crate) fn push(
        &self,
        model: &str,
        insecure: bool,
        progress: &dyn Progress,
        on_status: &mut dyn FnMut(&StreamStatus),
    ) -> Result<(), ApiError> {
        let mut request = serde_json::json!({ "model": model, "stream": true });
        if insecure {
            request["insecure"] = true.into();
        }
        self.stream("/api/push", &request, progress, on_status)
    }

    fn stream(
        &self,
        path: &'static str,
        request: &Json,
        progress: &dyn Progress,
        on_status: &mut dyn FnMut(&StreamStatus),
    ) -> Result<(), ApiError> {
        let this = self.clone();
        let request = request.clone();
        let call = move |emit: &dyn Fn(StreamStatus)| -> Result<(), ApiError> {
            let resp = this
                .http
                .post(format!("{}{path}", this.base))
                .json(&request)
                .send()
                .map_err(|e| match e.is_timeout() {
                    true => this.stalled(&format!("waiting for the answer to {path}")),
                    false => this.unreachable(&e),
                })?;
            if !resp.status().is_success() {
                return this.body(path, resp, SMALL_CAP).map(|_| ());
            }
            this.read_statuses(path, BufReader::new(resp), emit)
        };
        cancellable(progress, call, |s| on_status(&s), || Ok(()))?
    }

    /// The status lines of a streamed answer, each at most [`LINE_CAP`], until `success`.
    fn read_statuses(&self, path: &str, mut reader: impl BufRead, emit: &dyn Fn(StreamStatus)) -> Result<(), ApiError> {
        let mut last = String::new();
        loop {
            let line = match read_line_capped(&mut reader, LINE_CAP) {
                Ok(Some(line)) => line,
                Ok(None) => break,
                Err(BodyError::Read(e)) if is_timeout(&e) => {
                    return Err(self.stalled(&format!("reading the answer to {path} (last status: {last:?})")));
                }
                Err(BodyError::Read(e)) => {
                    return Err(ApiError::BrokeOff {
                        url: self.base.clone(),
                        path: path.to_string(),
                        err: root_cause(&e),
                    });
                }
                Err(too_long) => {
                    return Err(ApiError::Malformed {
                        url: format!("{}{path}", self.base),
                        err: too_long.to_string(),
                    });
                }
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let mut status: StreamStatus = self.parse(path, &line)?;
            if let Some(message) = status.error {
                return Err(ApiError::Failed {
                    url: self.base.clone(),
                    message: printable(&message, MESSAGE_CHARS),
                });
            }
            status.status = printable(&status.status, 200).replace('\n', " ");
            status.digest = printable(&status.digest, 80);
            last = status.status.clone();
            emit(status);
        }
        if last != "success" {
            return Err(ApiError::Malformed {
                url: format!("{}{path}", self.base),
                err: format!("the stream ended without \"success\" (last status: {last:?})"),
            });
        }
        Ok(())
    }
}

/// The names in a `/api/show` answer that end up in messages (family, sizes, architecture, tensor
/// names and types) made [`printable`]. Real ones hold no control characters, so nothing real
/// changes; the template, system prompt, license and parameters are data and stay verbatim.
fn defuse_names(show: &mut Show) {
    let d = &mut show.details;
    for field in [
        &mut d.family,
        &mut d.parameter_size,
        &mut d.quantization_level,
        &mut d.format,
        &mut show.modified_at,
    ] {
        *field = printable(field, 80);
    }
    for (_, value) in show.model_info.iter_mut().filter(|(k, _)| k.starts_with("general.")) {
        if let Json::String(s) = value {
            *s = printable(s, 200);
        }
    }
    for t in &mut show.tensors {
        (t.name, t.ty) = (printable(&t.name, 200), printable(&t.ty, 40));
    }
}

/// Runs a blocking `call` on its own thread while this one passes on what it emits, calls `tick`
/// every 50 ms (an error from it ends the wait), and watches for Ctrl-C: then it stops waiting
/// ([`ApiError::Cancelled`]) and the call's thread is abandoned. Its connection closes when the
/// process exits, which is what the caller does next (the CLI); a long-lived caller keeps the
/// request going until it ends.
fn cancellable<E: Send + 'static, R: Send + 'static>(
    progress: &dyn Progress,
    call: impl FnOnce(&dyn Fn(E)) -> R + Send + 'static,
    mut on_event: impl FnMut(E),
    mut tick: impl FnMut() -> Result<(), ApiError>,
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
                // The last bytes are reported; a stall cannot have happened after the answer.
                let _ = tick();
                return Ok(result);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                unreachable!("the call's thread sends Done before it ends")
            }
        }
        tick()?;
        if progress.cancelled() {
            return Err(ApiError::Cancelled);
        }
    }
}

/// The error text of an error body in Ollama's and the Hub's shape (`{"error": "..."}`), else the
/// body as it is; made [`printable`] and at most [`MESSAGE_CHARS`] long.
pub(crate) fn error_text(body: &str) -> String {
    let text = serde_json::from_str::<Json>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(Json::as_str).map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string());
    printable(&text, MESSAGE_CHARS)
}

/// The start of an error answer's body (at most [`ERROR_BODY_CAP`] is read: a server that answers
/// an error with 100 MB must not cost 100 MB); a body that breaks off gives what came.
pub(crate) fn error_body(resp: impl Read) -> String {
    let mut buf = Vec::new();
    let _ = resp.take(ERROR_BODY_CAP as u64).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Why an answer's body was not read whole.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("the answer is larger than {} (a server sends no answer this large here)", size(*.cap as u64))]
    TooLarge { cap: usize },
    #[error("the answer has a line longer than {} (a status line is well under 1 KiB)", size(*.cap as u64))]
    LineTooLong { cap: usize },
    #[error("{}", root_cause(.0))]
    Read(std::io::Error),
}

/// The body of `resp`, at most `cap` bytes: a larger one (announced, or found while reading) is
/// [`BodyError::TooLarge`] without being read further.
pub(crate) fn read_capped(resp: impl Read, announced: Option<u64>, cap: usize) -> Result<Vec<u8>, BodyError> {
    if announced.is_some_and(|n| n > cap as u64) {
        return Err(BodyError::TooLarge { cap });
    }
    let mut buf = Vec::new();
    resp.take(cap as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(BodyError::Read)?;
    if buf.len() > cap {
        return Err(BodyError::TooLarge { cap });
    }
    Ok(buf)
}

/// The next line of `reader` (without its newline), at most `cap` bytes; `None` at the end.
pub(crate) fn read_line_capped(reader: &mut impl BufRead, cap: usize) -> Result<Option<Vec<u8>>, BodyError> {
    let mut line = Vec::new();
    reader
        .take(cap as u64 + 1)
        .read_until(b'\n', &mut line)
        .map_err(BodyError::Read)?;
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > cap {
        return Err(BodyError::LineTooLong { cap });
    } else if line.is_empty() {
        return Ok(None);
    }
    Ok(Some(line))
}

/// Whether a read failed because the client's timeout ran out (no byte for that long).
pub(crate) fn is_timeout(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::TimedOut
        || e.get_ref()
            .and_then(|i| i.downcast_ref::<reqwest::Error>())
            .is_some_and(reqwest::Error::is_timeout)
}

/// `1 MiB`, `64 KiB`, `12 bytes`.
pub(crate) fn size(n: u64) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

/// A field Ollama's API documents as a string (or list, number, object) that proxies and older
/// servers send as `null`: read as absent.
pub(crate) fn null_as_default<'de, D: serde::Deserializer<'de>, T: Default + Deserialize<'de>>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
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
    printable(&cur.to_string(), MESSAGE_CHARS)
}

/// A manifest in the local store, the parts we use.
#[derive(Clone, Debug, Deserialize)]
pub struct Manifest {
    /// The model's config blob (architecture, file type, renderer, parser...).
    #[serde(default)]
    pub config: Option<Layer>,
    /// The model's parts: weights ([`MODEL_LAYER`]), template, parameters, ... in the order Ollama
    /// applies them.
    pub layers: Vec<Layer>,
}

/// One layer of a [`Manifest`]: a blob and what it holds.
#[derive(Clone, Debug, Deserialize)]
pub struct Layer {
    /// What the blob holds ([`MODEL_LAYER`], [`TEMPLATE_LAYER`], ...).
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// The blob's digest, `sha256:<64 hex>` in a well-formed manifest ([`blob_path`] checks).
    pub digest: String,
    /// The blob's size in bytes; 0 when not given.
    #[serde(default, deserialize_with = "null_as_default")]
    pub size: u64,
}

/// The blob file of a digest (`sha256:<hex>` -> `blobs/sha256-<hex>`), or `None` for a malformed digest.
pub fn blob_path(store: &Path, digest: &str) -> Option<PathBuf> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| store.join("blobs").join(format!("sha256-{hex}")))
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
        assert_eq!(
            (
                n.registry.as_str(),
                n.namespace.as_str(),
                n.model.as_str(),
                n.tag.as_str()
            ),
            (DEFAULT_REGISTRY, "library", "llama3.2", "latest")
        );
        assert_eq!(n.to_string(), "llama3.2:latest");
        let n = ModelName::parse("llama3.2:3b").unwrap();
        assert_eq!((n.model.as_str(), n.tag.as_str()), ("llama3.2", "3b"));
        let n = ModelName::parse("user/model:q4").unwrap();
        assert_eq!(
            (n.namespace.as_str(), n.to_string().as_str()),
            ("user", "user/model:q4")
        );
        let n = ModelName::parse("localhost:5000/team/model").unwrap();
        assert_eq!(
            (n.registry.as_str(), n.namespace.as_str(), n.tag.as_str()),
            ("localhost:5000", "team", "latest")
        );
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
        assert_eq!(
            blob_path(Path::new("/s"), &format!("sha256:{hex}")).unwrap(),
            Path::new(&format!("/s/blobs/sha256-{hex}"))
        );
        assert_eq!(blob_path(Path::new("/s"), "sha256:../../etc"), None);
    }
}
