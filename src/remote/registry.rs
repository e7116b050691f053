//! Downloading a model's GGUF weights from an Ollama registry the way `ollama pull` does (the OCI
//! distribution API: a manifest, then the model layer's blob), for when the Ollama server is remote
//! and the local model store does not hold the base's blob.
//!
//! Blobs land in a cache laid out like Ollama's store (`blobs/sha256-<hex>`). A download streams to
//! `sha256-<hex>.partial`, hashing as it goes; an interrupted one resumes with a `Range` request
//! (re-hashing the bytes it already has), and only a blob whose sha256 matches its digest is renamed
//! into place.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::blocking::{Client, Response};
use reqwest::header::{ACCEPT, CONTENT_RANGE, RANGE, RETRY_AFTER};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use crate::engine::base::{self, BaseModel};
use crate::error::{ErrorKind, Patience, printable, retry_after};
use crate::progress::Progress;
use crate::remote::ollama::{
    MESSAGE_CHARS, MODEL_LAYER, Manifest, ModelName, blob_path, error_body, read_capped, root_cause,
};
use crate::{Error, Result};

/// What registries answer a manifest request with, as Ollama's registry does.
pub(crate) const MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// How much of the body is read and written at a time.
const CHUNK: usize = 1 << 20;
/// The most read of a manifest (a model's has a handful of layers: some hundred bytes each).
const MANIFEST_CAP: usize = 4 << 20;

/// Where downloaded blobs are cached: `$OLLAMA_TOOLS_CACHE`, else `$XDG_CACHE_HOME/ollama-tools`,
/// else `~/.cache/ollama-tools`; blobs go under `blobs/sha256-<hex>`, as in Ollama's store.
pub fn cache_dir() -> PathBuf {
    cache_dir_from(|name| std::env::var_os(name))
}

fn cache_dir_from(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    let var = |name| var(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("OLLAMA_TOOLS_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return Path::new(&dir).join("ollama-tools");
    }
    let home = var("HOME").or_else(|| var("USERPROFILE")).unwrap_or_default();
    Path::new(&home).join(".cache").join("ollama-tools")
}

/// The registry's base URL for a model name: `https://<registry>`, or `http://` for a registry on
/// this machine (`localhost`, `127.0.0.1`, `[::1]`, with or without a port), which runs without TLS.
pub(crate) fn registry_url(name: &ModelName) -> String {
    let host = name.registry.as_str();
    let bare = if host.starts_with('[') {
        host.split_once(']').map_or(host, |(h, _)| h).trim_start_matches('[')
    } else {
        host.split_once(':').map_or(host, |(h, _)| h)
    };
    let local = bare.eq_ignore_ascii_case("localhost") || bare == "127.0.0.1" || bare == "::1";
    format!("{}://{host}", if local { "http" } else { "https" })
}

/// Fetches `name`'s manifest from its registry and downloads the model layer's blob into
/// `cache/blobs/sha256-<hex>`, resuming an earlier partial download and verifying the sha256 before
/// the blob is put in place. A blob already in the cache is reused without a download. Bytes are
/// reported through `progress`; when it is cancelled the download stops with [`Error::Cancelled`] and
/// keeps its `.partial` file for the next run to resume. Returns the blob's path. A model or tag the
/// registry does not have is [`ErrorKind::NotFound`], one it refuses [`ErrorKind::Unauthorized`]
/// (this pulls without credentials), a registry still answering 429 after the retries
/// [`ErrorKind::RateLimited`], and one that is unreachable, breaks off or sends other bytes
/// [`ErrorKind::Server`].
pub fn pull_model_blob(name: &ModelName, cache: &Path, progress: &dyn Progress) -> Result<PathBuf> {
    pull_model_blob_with(name, cache, progress, Patience::from_env())
}

/// [`pull_model_blob`] with its timeouts and retries given rather than taken from the environment.
pub fn pull_model_blob_with(
    name: &ModelName,
    cache: &Path,
    progress: &dyn Progress,
    patience: Patience,
) -> Result<PathBuf> {
    let base = registry_url(name);
    let http = Client::builder()
        .connect_timeout(Duration::from_secs(10))
        // Per phase: the request until headers, then each read of the body (a stalled download).
        .timeout(patience.idle)
        .user_agent(concat!("ollama-tools/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| {
            Error::invalid(
                Path::new(&base),
                format!("cannot set up an HTTPS client: {}", root_cause(&e)),
            )
        })?;
    let repo = format!("{base}/v2/{}/{}", name.namespace, name.model);

    let manifest_url = format!("{repo}/manifests/{}", name.tag);
    let layer = fetch_model_layer(&http, name, &base, &manifest_url)?;
    let dest = blob_path(cache, &layer.digest).ok_or_else(|| {
        Error::invalid(
            Path::new(&manifest_url),
            format!("the model layer's digest `{}` is not a sha256 digest", layer.digest),
        )
        .with_kind(ErrorKind::Server)
    })?;
    if let Ok(meta) = fs::metadata(&dest) {
        if meta.is_file() && (layer.size == 0 || meta.len() == layer.size) {
            return Ok(dest);
        }
        // Not what the manifest describes (blobs are only put in place verified, so someone else
        // wrote it): download it again.
        fs::remove_file(&dest).map_err(|e| Error::io(&dest, e))?;
    }
    let blob_url = format!("{repo}/blobs/{}", layer.digest);
    Download::open(&dest, &layer.digest, layer.size)?.run(&http, &blob_url, name, progress, patience)?;
    Ok(dest)
}

/// GET the manifest and pick its GGUF model layer.
fn fetch_model_layer(http: &Client, name: &ModelName, base: &str, url: &str) -> Result<crate::remote::ollama::Layer> {
    let path = Path::new(url);
    let resp = http.get(url).header(ACCEPT, MANIFEST_V2).send().map_err(|e| {
        Error::invalid(
            Path::new(base),
            format!("no registry answers there ({})", net_cause(&e)),
        )
        .with_hint(format!(
            "check the network and the registry host `{}` in the model name",
            name.registry
        ))
        .with_kind(ErrorKind::Server)
    })?;
    let status = resp.status();
    if !status.is_success() {
        let body = error_body(resp);
        if status == StatusCode::NOT_FOUND {
            let text = registry_message(&body).unwrap_or_else(|| "not found".to_string());
            return Err(Error::invalid(path, format!("model or tag not found: the registry has no {name} (404: {text})"))
                .with_hint("check the model name and tag (as in `llama3.2:3b`); a model's tags are listed on its page at ollama.com")
                .with_kind(ErrorKind::NotFound));
        }
        return Err(status_error(status, &body, path, &format!("the manifest of {name}")));
    }
    let announced = resp.content_length();
    let body = read_capped(resp, announced, MANIFEST_CAP).map_err(|e| {
        Error::invalid(path, format!("the registry's answer for the manifest of {name}: {e}"))
            .with_hint("run the command again")
            .with_kind(ErrorKind::Server)
    })?;
    let manifest: Manifest = serde_json::from_slice(&body).map_err(|e| {
        Error::invalid(
            path,
            format!(
                "the registry's manifest for {name} is not a manifest: {}",
                crate::error::json_problem(&e, &body)
            ),
        )
        .with_kind(ErrorKind::Server)
    })?;
    manifest
        .layers
        .iter()
        .find(|l| l.media_type == MODEL_LAYER)
        .cloned()
        .ok_or_else(|| {
            let types: Vec<String> = manifest.layers.iter().map(|l| printable(&l.media_type, 100)).collect();
            Error::refused(
                path,
                format!(
                    "the manifest of {name} has no GGUF model layer ({MODEL_LAYER}); its layers are: {}",
                    if types.is_empty() {
                        "none".to_string()
                    } else {
                        types.join(", ")
                    }
                ),
                "check that the name points at an Ollama model with weights, not an adapter or another kind of image",
            )
        })
}

/// A request that got no answer, in words: a redirect loop and a timeout said as such.
fn net_cause(e: &reqwest::Error) -> String {
    match () {
        _ if e.is_redirect() => "it redirects in a loop (too many redirects)".into(),
        _ if e.is_timeout() => "no answer in time".into(),
        _ => root_cause(e),
    }
}

/// The error for a registry's non-success answer about `what`, carrying the registry's own text.
fn status_error(status: StatusCode, body: &str, path: &Path, what: &str) -> Error {
    let text = registry_message(body).unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_string());
    let code = status.as_u16();
    match code {
        401 | 403 => Error::refused(
            path,
            format!("the registry refused access to {what} ({code}: {text})"),
            "ollama-tools pulls without credentials, so only public models can be downloaded; check the name, or pull \
             the model with `ollama pull` where Ollama's store is readable and pass the base as a GGUF file",
        )
        .with_kind(ErrorKind::Unauthorized),
        _ => Error::invalid(path, format!("the registry answered {code} for {what}: {text}"))
            .with_hint("run the command again later")
            .with_kind(match code {
                404 | 410 => ErrorKind::NotFound,
                429 => ErrorKind::RateLimited,
                _ => ErrorKind::Server,
            }),
    }
}

/// The text of a registry error body: OCI `{"errors":[{"code","message"}]}`, Ollama's `{"error": "..."}`,
/// or the body itself (shortened).
fn registry_message(body: &str) -> Option<String> {
    if let Ok(json) = serde_json::from_str::<Json>(body) {
        if let Some(errors) = json.get("errors").and_then(Json::as_array) {
            let parts: Vec<String> = errors
                .iter()
                .map(|e| {
                    let field = |k| e.get(k).and_then(Json::as_str).unwrap_or("");
                    match (field("code"), field("message")) {
                        ("", m) => m.to_string(),
                        (c, "") => c.to_string(),
                        (c, m) => format!("{c}: {m}"),
                    }
                })
                .filter(|s| !s.is_empty())
                .collect();
            if !parts.is_empty() {
                return Some(printable(&parts.join("; "), MESSAGE_CHARS));
            }
        }
        if let Some(msg) = json.get("error").and_then(Json::as_str) {
            return Some(printable(msg, MESSAGE_CHARS));
        }
    }
    let body = body.trim();
    if body.is_empty() {
        return None;
    }
    Some(printable(body, 300))
}

/// How one request for the blob ended, when nothing went wrong on our side.
enum Attempt {
    /// The body ended (or the registry says there is nothing past what we have).
    Complete,
    /// The connection failed or closed early, after the bytes we already count.
    Cut(String),
    /// The registry answered a passing error (429, 5xx): `error` unless a retry (after its
    /// `Retry-After`) goes better.
    Busy {
        status: u16,
        error: Error,
        after: Option<Duration>,
    },
    /// The body ran past the size the manifest gives.
    Overrun,
}

/// A download into `<dest>.partial`, hashing the bytes written so far.
struct Download<'a> {
    dest: &'a Path,
    partial: PathBuf,
    digest: &'a str,
    /// The layer's size from the manifest; 0 when the manifest does not say.
    size: u64,
    out: BufWriter<File>,
    hasher: Sha256,
    have: u64,
    /// The progress stage's name.
    label: String,
}

impl<'a> Download<'a> {
    fn open(dest: &'a Path, digest: &'a str, size: u64) -> Result<Self> {
        let dir = dest.parent().expect("blob paths have a parent");
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut name = dest.file_name().expect("blob paths have a file name").to_os_string();
        name.push(".partial");
        let partial = dest.with_file_name(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&partial)
            .map_err(|e| Error::io(&partial, e))?;
        Ok(Download {
            dest,
            partial,
            digest,
            size,
            out: BufWriter::with_capacity(CHUNK, file),
            hasher: Sha256::new(),
            have: 0,
            label: String::new(),
        })
    }

    fn run(
        mut self,
        http: &Client,
        url: &str,
        name: &ModelName,
        progress: &dyn Progress,
        patience: Patience,
    ) -> Result<()> {
        self.label = format!("pulling {name}");
        progress.stage(&self.label, self.size);
        self.rehash(progress)?;
        if self.have > 0 {
            progress.notice(&format!(
                "resuming the download of {} at {} bytes",
                self.digest, self.have
            ));
        }
        let mut retries = 0;
        while self.size == 0 || self.have < self.size {
            let (why, after, error) = match self.attempt(http, url, progress)? {
                Attempt::Complete => break,
                Attempt::Overrun => return Err(self.discard_overrun(url)),
                Attempt::Cut(cause) => (cause, None, None),
                Attempt::Busy { status, error, after } => {
                    (format!("the registry answered {status}"), after, Some(error))
                }
            };
            self.out.flush().map_err(|e| Error::io(&self.partial, e))?;
            let Some(wait) = patience.delay(retries, after) else {
                return Err(error.unwrap_or_else(|| self.broke_off(url, retries, &why)));
            };
            retries += 1;
            progress.notice(&format!(
                "the download broke off at {} bytes ({why}); retrying from there in {:.1} s",
                self.have,
                wait.as_secs_f64()
            ));
            patience.sleep(wait, || progress.cancelled())?;
        }
        self.finish(url)?;
        progress.finish();
        Ok(())
    }

    fn broke_off(&self, url: &str, retries: u32, why: &str) -> Error {
        let size = if self.size > 0 {
            self.size.to_string()
        } else {
            "?".to_string()
        };
        let after = match retries {
            0 => String::new(),
            1 => ", also after a retry".into(),
            n => format!(", also after {n} retries"),
        };
        Error::invalid(
            Path::new(url),
            format!(
                "the download of {} broke off at {} of {size} bytes{after} ({why})",
                self.digest, self.have
            ),
        )
        .with_hint(format!(
            "run the command again: it resumes from {}",
            self.partial.display()
        ))
        .with_kind(ErrorKind::Server)
    }

    /// The error for a body longer than the manifest says, its partial file deleted: what came is
    /// not that blob, and a resume would only append to it.
    fn discard_overrun(self, url: &str) -> Error {
        let Download {
            partial,
            digest,
            size,
            out,
            ..
        } = self;
        drop(out);
        let _ = fs::remove_file(&partial);
        Error::invalid(Path::new(url), format!("the registry sent more than the {size} bytes the manifest gives for {digest}; the partial file was deleted"))
            .with_hint("the registry or something between it and here is broken; try again later")
            .with_kind(ErrorKind::Server)
    }

    /// Hashes what an earlier run left in the partial file, leaving the file positioned at its end.
    fn rehash(&mut self, progress: &dyn Progress) -> Result<()> {
        let file = self.out.get_mut();
        let len = file.metadata().map_err(|e| Error::io(&self.partial, e))?.len();
        if self.size > 0 && len > self.size {
            return self.restart(progress);
        }
        let mut buf = vec![0u8; CHUNK];
        loop {
            if progress.cancelled() {
                return Err(Error::Cancelled);
            }
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(&self.partial, e)),
            };
            self.hasher.update(&buf[..n]);
            self.have += n as u64;
            progress.advance(n as u64);
        }
        Ok(())
    }

    /// Drops the bytes we have and starts over from the blob's first byte.
    fn restart(&mut self, progress: &dyn Progress) -> Result<()> {
        self.out.flush().map_err(|e| Error::io(&self.partial, e))?;
        let file = self.out.get_mut();
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)).map(drop))
            .map_err(|e| Error::io(&self.partial, e))?;
        self.hasher = Sha256::new();
        self.have = 0;
        // A new stage of the same size resets the bar.
        progress.stage(&self.label, self.size);
        Ok(())
    }

    /// One GET of the blob from `self.have` on, streamed into the partial file.
    fn attempt(&mut self, http: &Client, url: &str, progress: &dyn Progress) -> Result<Attempt> {
        if progress.cancelled() {
            return Err(Error::Cancelled);
        }
        let mut req = http.get(url);
        if self.have > 0 {
            req = req.header(RANGE, format!("bytes={}-", self.have));
        }
        let mut resp = match req.send() {
            Ok(r) => r,
            Err(e) => return Ok(Attempt::Cut(root_cause(&e))),
        };
        let path = Path::new(url);
        match resp.status() {
            StatusCode::PARTIAL_CONTENT => {
                let start = range_start(&resp);
                if start != Some(self.have) {
                    return Err(Error::invalid(
                        path,
                        format!(
                            "asked for {} from byte {}, the registry sent a range starting at {}",
                            self.digest,
                            self.have,
                            start.map_or_else(|| "an unknown byte".to_string(), |s| s.to_string())
                        ),
                    )
                    .with_hint(format!("delete {} and run the command again", self.partial.display()))
                    .with_kind(ErrorKind::Server));
                }
            }
            // The whole blob: the registry ignored our Range (or we asked for none).
            StatusCode::OK => {
                if self.have > 0 {
                    self.restart(progress)?;
                }
            }
            // Nothing past what we have: the partial file already holds the whole blob (the
            // manifest gave no size); the digest check decides.
            StatusCode::RANGE_NOT_SATISFIABLE if self.have > 0 => return Ok(Attempt::Complete),
            status => {
                let after = resp
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| retry_after(v, SystemTime::now()));
                let error = status_error(status, &error_body(resp), path, &format!("blob {}", self.digest));
                if matches!(status.as_u16(), 429 | 500 | 502 | 503 | 504) {
                    return Ok(Attempt::Busy {
                        status: status.as_u16(),
                        error,
                        after,
                    });
                }
                return Err(error);
            }
        }
        self.stream(&mut resp, progress)
    }

    fn stream(&mut self, resp: &mut Response, progress: &dyn Progress) -> Result<Attempt> {
        let mut buf = vec![0u8; CHUNK];
        loop {
            if progress.cancelled() {
                self.out.flush().map_err(|e| Error::io(&self.partial, e))?;
                return Err(Error::Cancelled);
            }
            let n = match resp.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if crate::remote::ollama::is_timeout(&e) => {
                    return Ok(Attempt::Cut(
                        "nothing arrived for the timeout, OLLAMA_TOOLS_TIMEOUT".into(),
                    ));
                }
                Err(e) => return Ok(Attempt::Cut(root_cause(&e))),
            };
            // Never past the announced size: a body that keeps coming must not fill the disk.
            if self.size > 0 && self.have + n as u64 > self.size {
                return Ok(Attempt::Overrun);
            }
            self.out.write_all(&buf[..n]).map_err(|e| Error::io(&self.partial, e))?;
            self.hasher.update(&buf[..n]);
            self.have += n as u64;
            progress.advance(n as u64);
        }
        if self.size > 0 && self.have < self.size {
            return Ok(Attempt::Cut("the connection closed early".to_string()));
        }
        Ok(Attempt::Complete)
    }

    /// Checks the digest and puts the blob in place, or deletes the partial file.
    fn finish(self, url: &str) -> Result<()> {
        let Download {
            dest,
            partial,
            digest,
            size,
            out,
            hasher,
            have,
            ..
        } = self;
        let file = out.into_inner().map_err(|e| Error::io(&partial, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&partial, e))?;
        drop(file);
        let found = crate::engine::cache::hex(&hasher.finalize());
        let expected = digest.strip_prefix("sha256:").unwrap_or(digest);
        if found != expected || (size > 0 && have != size) {
            fs::remove_file(&partial).map_err(|e| Error::io(&partial, e))?;
            return Err(Error::invalid(
                Path::new(url),
                format!(
                    "the downloaded blob does not match its digest: expected sha256:{expected}, found sha256:{found} \
                     ({have} bytes{})",
                    if size > 0 { format!(", the manifest says {size}") } else { String::new() }
                ),
            )
            .with_hint("the download was corrupted on the way or the registry sent other content; the partial file was deleted, so running the command again downloads it afresh")
            .with_kind(ErrorKind::Server));
        }
        fs::rename(&partial, dest).map_err(|e| Error::io(dest, e))
    }
}

/// The first byte of a 206 answer's `Content-Range: bytes <start>-<end>/<total>`.
fn range_start(resp: &Response) -> Option<u64> {
    let value = resp.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    value
        .trim()
        .strip_prefix("bytes")?
        .trim()
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Like `base::resolve`, but the base comes with its GGUF file (a merge reads its tensors): a GGUF path
/// as given; for an Ollama model name, the blob in the local store, else the model's GGUF layer
/// downloaded from its registry (as `ollama pull` does) into this tool's cache.
pub fn resolve_gguf(spec: &str, progress: &dyn Progress) -> Result<BaseModel> {
    let base = base::resolve(spec)?;
    if base.gguf_path.is_some() || Path::new(spec).exists() {
        return Ok(base);
    }
    let Some(name) = ModelName::parse(spec) else {
        return Ok(base);
    };
    local_or_pulled(&name, progress)
}

/// A named model with its GGUF file: the blob in the local store, else the model's GGUF layer
/// downloaded from its registry (as `ollama pull` does) into this tool's cache.
pub(crate) fn local_or_pulled(name: &ModelName, progress: &dyn Progress) -> Result<BaseModel> {
    if let Ok(local) = BaseModel::from_store(name, &crate::remote::ollama::store_dir()) {
        return Ok(local);
    }
    let blob = pull_model_blob(name, &cache_dir(), progress)?;
    let mut pulled = BaseModel::from_gguf(&blob)?;
    pulled.source = PathBuf::from(name.to_string());
    Ok(pulled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(name: &str) -> String {
        registry_url(&ModelName::parse(name).unwrap())
    }

    #[test]
    fn registry_urls() {
        assert_eq!(url("llama3.2"), "https://registry.ollama.ai");
        assert_eq!(url("example.com/team/model:q4"), "https://example.com");
        assert_eq!(url("example.com:5000/team/model"), "https://example.com:5000");
        assert_eq!(url("localhost:5000/team/model"), "http://localhost:5000");
        assert_eq!(url("127.0.0.1:41234/library/tiny:latest"), "http://127.0.0.1:41234");
        assert_eq!(url("127.0.0.1/library/tiny"), "http://127.0.0.1");
        let v6 = ModelName {
            registry: "[::1]:5000".into(),
            namespace: "library".into(),
            model: "m".into(),
            tag: "latest".into(),
        };
        assert_eq!(registry_url(&v6), "http://[::1]:5000");
    }

    #[test]
    fn cache_dirs() {
        fn env(vars: &[(&str, &str)]) -> PathBuf {
            cache_dir_from(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).into()))
        }
        assert_eq!(
            env(&[
                ("OLLAMA_TOOLS_CACHE", "/c/tools"),
                ("XDG_CACHE_HOME", "/xdg"),
                ("HOME", "/home/u")
            ]),
            Path::new("/c/tools")
        );
        assert_eq!(
            env(&[
                ("OLLAMA_TOOLS_CACHE", ""),
                ("XDG_CACHE_HOME", "/xdg"),
                ("HOME", "/home/u")
            ]),
            Path::new("/xdg/ollama-tools")
        );
        assert_eq!(env(&[("HOME", "/home/u")]), Path::new("/home/u/.cache/ollama-tools"));
        assert_eq!(
            env(&[("USERPROFILE", "C:/Users/u")]),
            Path::new("C:/Users/u/.cache/ollama-tools")
        );
    }

    #[test]
    fn registry_messages() {
        let oci = r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
        assert_eq!(registry_message(oci).unwrap(), "MANIFEST_UNKNOWN: manifest unknown");
        assert_eq!(
            registry_message(r#"{"error":"pull model manifest: file does not exist"}"#).unwrap(),
            "pull model manifest: file does not exist"
        );
        assert_eq!(registry_message("not found\n").unwrap(), "not found");
        assert_eq!(registry_message("  "), None);
    }
}
