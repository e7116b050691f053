//! Talking to Ollama: where its server is (`OLLAMA_HOST`, parsed as the ollama CLI does), what a
//! model name means (`llama3.2`, `user/model:tag`, `host/ns/model:tag`), its `/api/show` answer, and
//! its local model store (`OLLAMA_MODELS`: manifests pointing at content-addressed blobs).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value as Json;

pub const DEFAULT_REGISTRY: &str = "registry.ollama.ai";
pub const DEFAULT_NAMESPACE: &str = "library";
pub const DEFAULT_TAG: &str = "latest";
/// The media type of a manifest layer holding the model's GGUF weights.
pub const MODEL_LAYER: &str = "application/vnd.ollama.image.model";

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
}

/// A blocking client for the few calls that need no streaming.
pub struct Client {
    base: String,
    http: reqwest::blocking::Client,
}

impl Client {
    pub fn new(base: &str) -> Self {
        let http = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(60))
            .build()
            .expect("the HTTP client builds with the compiled-in TLS backend");
        Client { base: base.trim_end_matches('/').to_string(), http }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `POST /api/show` with `verbose: true`.
    pub fn show(&self, model: &str) -> Result<Show, ApiError> {
        let url = format!("{}/api/show", self.base);
        let resp = self
            .http
            .post(&url)
            .json(&serde_json::json!({ "model": model, "verbose": true }))
            .send()
            .map_err(|e| ApiError::Unreachable { url: self.base.clone(), err: root_cause(&e) })?;
        let status = resp.status();
        let body = resp.text().map_err(|e| ApiError::Unreachable { url: self.base.clone(), err: root_cause(&e) })?;
        if !status.is_success() {
            // Ollama's error bodies are `{"error": "..."}`; pass the text on as it is.
            let message = serde_json::from_str::<Json>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(Json::as_str).map(str::to_string))
                .unwrap_or(body);
            return Err(ApiError::Status { url: self.base.clone(), status: status.as_u16(), message });
        }
        serde_json::from_str(&body).map_err(|e| ApiError::Malformed { url: url.clone(), err: e.to_string() })
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
