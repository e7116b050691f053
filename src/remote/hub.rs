//! The Hugging Face Hub: which adapter a repo holds, and its files downloaded into the standard
//! Hugging Face cache, where `huggingface_hub` (Python), `hf-hub` (Rust) and this tool share them.
//!
//! The cache layout is the `hf-hub` crate's (`models--ORG--NAME/{blobs,refs,snapshots}`, from
//! `HF_HUB_CACHE`, else `HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub` or
//! `~/.cache/huggingface/hub`). The transfers are ours, done the way `huggingface_hub` does them,
//! because `hf-hub` 0.5's downloader (checked in its source) sends the token to the CDN host an LFS
//! file redirects to, never checks a file's sha256, drops the Hub's error codes and messages, ignores
//! `HF_TOKEN` and `HF_HUB_OFFLINE`, and would bring a second HTTP and TLS stack: here a `HEAD` of the
//! resolve URL without following redirects gives the commit, ETag and size; an LFS file is fetched
//! from its redirect without the token, into `blobs/<etag>.incomplete` (the name `huggingface_hub`
//! resumes from too), resumed with `Range`, and renamed into place only when its content matches the
//! ETag (an LFS file's sha256; a git-stored file's blob id).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::time::{Duration, Instant, SystemTime};

use hf_hub::{Cache, Repo, RepoType};
use reqwest::StatusCode;
use reqwest::blocking::{Client, Response};
use reqwest::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, ETAG, LOCATION, RANGE, RETRY_AFTER};

use crate::engine::cache::sha256_file;
use crate::error::{Error, ErrorKind, Patience, Result, json_problem, printable, retry_after};
use crate::progress::Progress;
use crate::remote::ollama::{BodyError, MESSAGE_CHARS, error_body, read_capped};

/// The Hub's address when `HF_ENDPOINT` is not set.
pub(crate) const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Where and how to reach the Hub, from the environment variables `huggingface_hub` reads. Its
/// `Debug` leaves the token out.
#[derive(Clone)]
pub struct Settings {
    /// `HF_ENDPOINT`, without a trailing slash.
    pub endpoint: String,
    /// `HF_TOKEN`, else the token file `huggingface-cli login` writes (`HF_TOKEN_PATH`, else `HF_HOME/token`).
    pub token: Option<String>,
    /// The hub cache folder.
    pub cache: PathBuf,
    /// `HF_HUB_OFFLINE`: answer from the cache only.
    pub offline: bool,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("cache", &self.cache)
            .field("offline", &self.offline)
            .finish()
    }
}

impl Settings {
    /// The settings from this process's environment (empty variables count as unset).
    pub fn from_env() -> Self {
        Self::from_vars(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// The settings from the variables `var` gives (`None`: unset), read as `huggingface_hub`
    /// reads them; the token file is read when no token variable is set.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let home = var("HOME").or_else(|| var("USERPROFILE")).unwrap_or_default();
        let hf_home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            var("XDG_CACHE_HOME")
                .map_or_else(|| Path::new(&home).join(".cache"), PathBuf::from)
                .join("huggingface")
        });
        let cache = var("HF_HUB_CACHE").map_or_else(|| hf_home.join("hub"), PathBuf::from);
        let token_file = var("HF_TOKEN_PATH").map_or_else(|| hf_home.join("token"), PathBuf::from);
        let token = var("HF_TOKEN")
            .or_else(|| var("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| fs::read_to_string(token_file).ok())
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        let truthy =
            |k: &str| var(k).is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "on" | "yes" | "true"));
        Settings {
            endpoint: var("HF_ENDPOINT")
                .unwrap_or_else(|| DEFAULT_ENDPOINT.into())
                .trim_end_matches('/')
                .to_string(),
            token,
            cache,
            offline: truthy("HF_HUB_OFFLINE"),
        }
    }
}

/// A repo's listing at one revision.
#[derive(Clone, Debug)]
pub struct RepoInfo {
    /// The commit the revision points at.
    pub sha: String,
    /// Every file's path in the repo.
    pub files: Vec<String>,
}

/// What a `HEAD` of a file's resolve URL says.
#[derive(Clone, Debug)]
struct FileMeta {
    commit: String,
    /// The content's sha256 for an LFS file, the git blob id otherwise.
    etag: String,
    size: Option<u64>,
    /// Where an LFS file's bytes are (another host: asked without the token).
    location: Option<String>,
}

/// One adapter a repo offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Candidate {
    /// A PEFT adapter folder (`""` for the repo root) with `adapter_config.json` and `adapter_model.safetensors`.
    Peft(String),
    /// A GGUF file.
    Gguf(String),
}

impl std::fmt::Display for Candidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Candidate::Peft(dir) if dir.is_empty() => write!(f, "the PEFT adapter at the repo's root"),
            Candidate::Peft(dir) => write!(f, "the PEFT adapter in {}/", printable(dir, 200)),
            Candidate::Gguf(path) => write!(f, "the GGUF file {}", printable(path, 200)),
        }
    }
}

impl Candidate {
    /// The files to download for it.
    pub fn files(&self) -> Vec<String> {
        let join = |dir: &str, f: &str| {
            if dir.is_empty() {
                f.to_string()
            } else {
                format!("{dir}/{f}")
            }
        };
        match self {
            Candidate::Peft(dir) => vec![join(dir, "adapter_config.json"), join(dir, "adapter_model.safetensors")],
            Candidate::Gguf(path) => vec![path.clone()],
        }
    }
}

/// The tokenizer files transformers saves beside a model or adapter.
pub(crate) const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "added_tokens.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];

fn tokenizer_files(dir: &str, listing: &[String]) -> Vec<String> {
    TOKENIZER_FILES
        .iter()
        .map(|f| {
            if dir.is_empty() {
                f.to_string()
            } else {
                format!("{dir}/{f}")
            }
        })
        .filter(|f| listing.contains(f))
        .collect()
}

/// The adapters among a repo's files, within `subfolder` (a folder, or a `.gguf` file) when given.
/// A repo with none gets an error that says what it holds instead and what to do.
pub fn candidates(repo: &str, files: &[String], subfolder: Option<&str>) -> Result<Vec<Candidate>> {
    // `--subfolder .` is the PEFT adapter at the root; a `.gguf` path is that file.
    let sub = subfolder
        .map(|s| s.trim_matches('/'))
        .map(|s| if s == "." { "" } else { s });
    let has = |p: &str| files.iter().any(|f| f == p);
    let dir_of = |p: &str| p.rsplit_once('/').map_or(String::new(), |(d, _)| d.to_string());
    let is_gguf = |p: &str| p.to_ascii_lowercase().ends_with(".gguf");
    let within = |p: &str| match sub {
        None => true,
        Some("") => !p.contains('/'),
        Some(s) if is_gguf(s) => p == s,
        Some(s) => p.starts_with(&format!("{s}/")),
    };
    let mut found = Vec::new();
    for f in files.iter().filter(|f| within(f)) {
        if f.rsplit('/').next() == Some("adapter_config.json") {
            let dir = dir_of(f);
            let weights = if dir.is_empty() {
                "adapter_model.safetensors".to_string()
            } else {
                format!("{dir}/adapter_model.safetensors")
            };
            if has(&weights) && sub.is_none_or(|s| s == dir) {
                found.push(Candidate::Peft(dir));
            }
        } else if is_gguf(f) && sub != Some("") {
            found.push(Candidate::Gguf(f.clone()));
        }
    }
    if !found.is_empty() {
        return Ok(found);
    }
    let where_ = sub.map_or_else(
        || format!("`{repo}`"),
        |s| format!("`{}` of `{repo}`", printable(s, 200)),
    );
    let path = PathBuf::from(repo);
    let in_scope: Vec<&String> = files.iter().filter(|f| within(f)).collect();
    let any = |pred: &dyn Fn(&str) -> bool| in_scope.iter().any(|f| pred(f.rsplit('/').next().unwrap_or(f)));
    if any(&|n| n == "adapter_model.bin") {
        return Err(Error::refused(
            &path,
            format!(
                "{where_} holds its adapter only as adapter_model.bin (a PyTorch pickle), which this tool does not load: it can run code"
            ),
            "ask the author for adapter_model.safetensors, or load it with PEFT and save it again with `model.save_pretrained(dir, safe_serialization=True)`",
        ));
    }
    if any(&|n| n == "config.json")
        && any(&|n| n.ends_with(".safetensors") || (n.starts_with("pytorch_model") && n.ends_with(".bin")))
    {
        return Err(Error::refused(
            &path,
            format!("{where_} holds a full model, not a LoRA adapter"),
            "import a full model with Ollama directly (`ollama create NAME -f Modelfile` with `FROM <its folder>`), or convert it with llama.cpp's convert_hf_to_gguf.py",
        ));
    }
    let listing: Vec<String> = in_scope.iter().take(12).map(|s| printable(s, 200)).collect();
    Err(Error::refused(
        &path,
        format!(
            "{where_} holds no LoRA adapter (adapter_config.json with adapter_model.safetensors, or a .gguf file); it has: {}",
            if listing.is_empty() {
                "no files".into()
            } else {
                listing.join(", ")
            }
        ),
        if sub.is_some() {
            "check --subfolder against the repo's files"
        } else {
            "check the repo name, or pass --subfolder for an adapter in a folder"
        },
    )
    .with_kind(ErrorKind::NotFound))
}

/// A Hub client for one endpoint, with the token sent only to it.
pub struct Hub {
    /// Where the Hub is, the token, the cache, whether offline.
    pub(crate) settings: Settings,
    /// Timeouts and retries (`OLLAMA_TOOLS_TIMEOUT`, ...; see [`Patience`]).
    pub(crate) patience: Patience,
    /// How long the peeks at GGUF files' headers may take together (they run side by side).
    pub probe_time: Duration,
    http: Client,
}

/// The most read of a repo listing: a sibling is some 60 to 100 bytes, so this holds well over
/// 100 000 files.
const LISTING_CAP: usize = 16 << 20;
/// How many redirects a request follows (the Hub gives one or two: a renamed repo, a CDN).
const MAX_REDIRECTS: usize = 5;
/// How many GGUF headers are peeked at side by side.
const PROBES: usize = 8;

/// Why a request got no answer to read.
enum NetError {
    Http(reqwest::Error),
    /// More than [`MAX_REDIRECTS`] redirects; the last `Location`.
    Redirects(String),
    /// The answer's body broke off.
    Broken(String),
    Cancelled,
}

impl Hub {
    /// A client for `settings`, with the timeouts and retries of [`Patience::from_env`]. Nothing is
    /// asked of the Hub yet.
    pub fn new(settings: Settings) -> Self {
        Self::with_patience(settings, Patience::from_env())
    }

    /// [`Hub::new`] with its timeouts and retries given rather than taken from the environment.
    pub fn with_patience(settings: Settings, patience: Patience) -> Self {
        let http = Client::builder()
            // Redirects are followed by hand: an LFS file's redirect to another host must go there
            // without the token.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            // Until the answer's headers, then for each read of its body: a stalled server.
            .timeout(patience.idle)
            .user_agent(concat!("ollama-tools/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the HTTP client builds with the compiled-in TLS backend");
        Hub {
            settings,
            patience,
            probe_time: Duration::from_secs(30),
            http,
        }
    }

    fn cache_repo(&self, repo: &str, revision: &str) -> hf_hub::CacheRepo {
        Cache::new(self.settings.cache.clone()).repo(Repo::with_revision(
            repo.to_string(),
            RepoType::Model,
            revision.to_string(),
        ))
    }

    /// The repo's folder in the cache.
    pub(crate) fn repo_dir(&self, repo: &str) -> PathBuf {
        self.settings.cache.join(Repo::model(repo.to_string()).folder_name())
    }

    /// A request to `url`, with the token only when `url` is on the endpoint: the one place the
    /// token is attached, so it can reach no other host. With a deadline, the whole request
    /// (body included) must end by then.
    fn request(
        &self,
        method: reqwest::Method,
        url: &str,
        deadline: Option<Instant>,
    ) -> reqwest::blocking::RequestBuilder {
        let mut req = self.http.request(method, url);
        if let Some(d) = deadline {
            req = req.timeout(
                d.saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            );
        }
        match &self.settings.token {
            Some(t) if same_origin(url, &self.settings.endpoint) => req.header(AUTHORIZATION, format!("Bearer {t}")),
            _ => req,
        }
    }

    /// Sends `method url` with [`Hub::follow`]; an answer that says "later" (429, 5xx) is asked
    /// again after a backoff or its `Retry-After`, while [`Patience`] allows (not before a
    /// deadline: that is a quick peek).
    fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        range: Option<u64>,
        stop_at_other_host: bool,
        deadline: Option<Instant>,
        ui: &dyn Progress,
    ) -> Result<Response, NetError> {
        for retry in 0.. {
            let resp = self.follow(method.clone(), url, range, stop_at_other_host, deadline)?;
            let status = resp.status();
            let after = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| retry_after(v, SystemTime::now()));
            let wait = match status.as_u16() {
                429 | 500 | 502 | 503 | 504 if deadline.is_none() => self.patience.delay(retry, after),
                _ => None,
            };
            let Some(wait) = wait else { return Ok(resp) };
            ui.notice(&format!(
                "the Hub answered {status} for {}; asking again in {:.1} s",
                without_query(url),
                wait.as_secs_f64()
            ));
            self.patience
                .sleep(wait, || ui.cancelled())
                .map_err(|_| NetError::Cancelled)?;
        }
        unreachable!("the loop returns once the retries are spent")
    }

    /// Sends `method url`, following up to [`MAX_REDIRECTS`] redirects (relative ones resolved on
    /// the endpoint); `stop_at_other_host` leaves a redirect to another host unfollowed (an LFS
    /// file's CDN), for the caller to read. More redirects than that is a loop: an error naming it.
    fn follow(
        &self,
        method: reqwest::Method,
        url: &str,
        range: Option<u64>,
        stop_at_other_host: bool,
        deadline: Option<Instant>,
    ) -> Result<Response, NetError> {
        let mut url = url.to_string();
        for _ in 0..=MAX_REDIRECTS {
            let mut req = self.request(method.clone(), &url, deadline);
            if let Some(from) = range {
                req = req.header(RANGE, format!("bytes={from}-"));
            }
            let resp = req.send().map_err(NetError::Http)?;
            let next = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(|l| absolute_url(l, &self.settings.endpoint));
            match next {
                Some(next)
                    if resp.status().is_redirection()
                        && (!stop_at_other_host || same_origin(&next, &self.settings.endpoint)) =>
                {
                    url = next
                }
                _ => return Ok(resp),
            }
        }
        Err(NetError::Redirects(url))
    }

    /// A request that got no answer to read, in words.
    fn unreachable(&self, url: &str, e: &NetError) -> Error {
        let path = PathBuf::from(without_query(url));
        let mirror = "if HF_ENDPOINT points at a mirror or a proxy, check its configuration";
        let (msg, hint) = match e {
            NetError::Cancelled => return Error::Cancelled,
            NetError::Redirects(last) => (
                format!("the Hub redirects in a loop: more than {MAX_REDIRECTS} redirects, the last to {}", printable(&without_query(last), 200)),
                format!("run again later; {mirror}"),
            ),
            NetError::Broken(why) => (format!("the Hub's answer broke off ({why})"), "run again".into()),
            NetError::Http(e) if e.is_timeout() => (
                format!("the Hub sent nothing for {} s", self.patience.idle.as_secs_f64().ceil()),
                format!("check the network, or set OLLAMA_TOOLS_TIMEOUT (seconds) to wait longer; {mirror}"),
            ),
            NetError::Http(e) => (
                format!("cannot reach the Hub ({})", crate::remote::ollama::root_cause(e)),
                "check the network (and HF_ENDPOINT if you use a mirror); with HF_HUB_OFFLINE=1 files already in the Hugging Face cache are used without asking".into(),
            ),
        };
        Error::Refused {
            path,
            msg,
            hint: Some(hint),
            kind: ErrorKind::Server,
        }
    }

    /// The files of `repo` at `revision` (a branch, tag or commit), and the commit it is at. A repo
    /// or revision the Hub does not have is [`ErrorKind::NotFound`], a gated or private one
    /// [`ErrorKind::Unauthorized`], a Hub still answering 429 after the retries
    /// [`ErrorKind::RateLimited`], no Hub [`ErrorKind::Server`].
    pub fn info(&self, repo: &str, revision: &str) -> Result<RepoInfo> {
        self.try_info(repo, revision, &crate::progress::Silent)?
    }

    /// [`Hub::info`], with a failure to reach the Hub at all given apart (`Ok(Err(..))`), for a
    /// caller that can fall back to the cache.
    fn try_info(&self, repo: &str, revision: &str, ui: &dyn Progress) -> Result<Result<RepoInfo>> {
        check_revision(revision)?;
        let url = format!(
            "{}/api/models/{repo}/revision/{}",
            self.settings.endpoint,
            encode(revision)
        );
        let resp = match self.send(reqwest::Method::GET, &url, None, false, None, ui) {
            Ok(resp) => resp,
            Err(NetError::Http(e)) if e.is_connect() || e.is_timeout() => {
                return Ok(Err(self.unreachable(&url, &NetError::Http(e))));
            }
            Err(e) => return Err(self.unreachable(&url, &e)),
        };
        let resp = self.check(resp, repo, revision, None)?;
        if resp.status().is_redirection() {
            return Err(Error::invalid(
                Path::new(&url),
                format!("the Hub answered {} without a Location to follow", resp.status()),
            )
            .with_hint("if HF_ENDPOINT points at a mirror or a proxy, check its configuration")
            .with_kind(ErrorKind::Server));
        }
        #[derive(serde::Deserialize)]
        struct Info {
            sha: String,
            #[serde(default, deserialize_with = "crate::remote::ollama::null_as_default")]
            siblings: Vec<Sibling>,
        }
        #[derive(serde::Deserialize)]
        struct Sibling {
            rfilename: String,
        }
        let announced = resp.content_length();
        let body = read_capped(resp, announced, LISTING_CAP).map_err(|e| match e {
            BodyError::Read(e) => self.unreachable(&url, &NetError::Broken(crate::remote::ollama::root_cause(&e))),
            too_large => Error::invalid(Path::new(&url), format!("the Hub's repo listing: {too_large}"))
                .with_kind(ErrorKind::Server),
        })?;
        let info: Info = serde_json::from_slice(&body).map_err(|e| {
            Error::invalid(
                Path::new(&url),
                format!("the Hub's answer is not a repo listing: {}", json_problem(&e, &body)),
            )
            .with_kind(ErrorKind::Server)
        })?;
        if !is_commit(&info.sha) {
            return Err(Error::invalid(
                Path::new(&url),
                format!(
                    "the Hub's listing gives the commit {:?}, not 40 hex digits",
                    printable(&info.sha, 80)
                ),
            )
            .with_kind(ErrorKind::Server));
        }
        Ok(Ok(RepoInfo {
            sha: info.sha,
            files: info.siblings.into_iter().map(|s| s.rfilename).collect(),
        }))
    }

    /// The Hub's error answers, in words: its own `X-Error-Message`, and what to do.
    fn check(&self, resp: Response, repo: &str, revision: &str, file: Option<&str>) -> Result<Response> {
        let status = resp.status();
        if status.is_success() || status.is_redirection() {
            return Ok(resp);
        }
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let code = header("x-error-code").unwrap_or_default();
        let retry = header(RETRY_AFTER.as_str());
        let mut message = printable(&header("x-error-message").unwrap_or_default(), MESSAGE_CHARS);
        if message.is_empty() {
            message = crate::remote::ollama::error_text(&error_body(resp));
        }
        let page = format!("{}/{repo}", self.settings.endpoint);
        let login = "set HF_TOKEN to a token with read access (or run `huggingface-cli login`)";
        let (kind, msg, hint) = match (status.as_u16(), code.as_str()) {
            (_, "GatedRepo") => (
                ErrorKind::Unauthorized,
                format!("`{repo}` is gated: {message}"),
                if self.settings.token.is_some() {
                    format!("accept its conditions at {page} with the account whose token you use")
                } else {
                    format!("accept its conditions at {page}, then {login}")
                },
            ),
            (_, "RepoNotFound") => (
                ErrorKind::NotFound,
                format!(
                    "repository `{repo}` not found on {} ({message})",
                    self.settings.endpoint
                ),
                if self.settings.token.is_some() {
                    "check the name (ORG/REPO); a private repo needs a token of an account that can read it".to_string()
                } else {
                    format!("check the name (ORG/REPO); if it is private, {login}")
                },
            ),
            (_, "RevisionNotFound") => (
                ErrorKind::NotFound,
                format!("revision `{revision}` of `{repo}` not found ({message})"),
                format!("check --revision against the branches and commits at {page}"),
            ),
            (_, "EntryNotFound") => (
                ErrorKind::NotFound,
                format!(
                    "`{}` is not in `{repo}` at `{revision}` ({message})",
                    printable(file.unwrap_or("?"), 200)
                ),
                "the repo changed since it was listed; run again".into(),
            ),
            (429, _) => (
                ErrorKind::RateLimited,
                format!("the Hub is rate-limiting requests: {message}"),
                rate_limit_hint(retry.as_deref()),
            ),
            (401 | 403, _) => (
                ErrorKind::Unauthorized,
                format!("the Hub refused access to `{repo}` ({status}: {message})"),
                login.to_string(),
            ),
            _ => (
                // A mirror or proxy may answer a plain 404, without the Hub's error code.
                if matches!(status.as_u16(), 404 | 410) {
                    ErrorKind::NotFound
                } else {
                    ErrorKind::Server
                },
                format!("the Hub answered {status} for `{repo}`: {message}"),
                "try again later".into(),
            ),
        };
        Err(Error::Refused {
            path: PathBuf::from(format!("{page}/tree/{revision}")),
            msg,
            hint: Some(hint),
            kind,
        })
    }

    /// `HEAD` of a file's resolve URL at `at` (a commit, or the revision), following redirects on the
    /// endpoint and stopping at one to another host (an LFS file's CDN).
    fn meta(
        &self,
        repo: &str,
        revision: &str,
        at: &str,
        file: &str,
        deadline: Option<Instant>,
        ui: &dyn Progress,
    ) -> Result<FileMeta> {
        let url = format!(
            "{}/{repo}/resolve/{}/{}",
            self.settings.endpoint,
            encode(at),
            encode_path(file)
        );
        let resp = self
            .send(reqwest::Method::HEAD, &url, None, true, deadline, ui)
            .map_err(|e| self.unreachable(&url, &e))?;
        let resp = self.check(resp, repo, revision, Some(file))?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let etag = header("x-linked-etag")
            .or_else(|| header(ETAG.as_str()))
            .unwrap_or_default();
        let etag = etag.trim_start_matches("W/").trim_matches('"').to_string();
        let commit = header("x-repo-commit").unwrap_or_default();
        // Both become file names in the cache: only the Hub's own forms are taken.
        if !(is_sha256(&etag) || is_commit(&etag)) || !is_commit(&commit) {
            return Err(Error::invalid(
                Path::new(&url),
                format!(
                    "the Hub's answer has no usable X-Repo-Commit ({:?}) or ETag ({:?}): a 40-hex commit and a sha256 or git blob id were expected",
                    printable(&commit, 80),
                    printable(&etag, 80)
                ),
            )
            .with_hint("if HF_ENDPOINT points at a mirror, check that it forwards the Hub's headers")
            .with_kind(ErrorKind::Server));
        }
        let redirect = resp.status().is_redirection();
        // A redirect's Content-Length is that of the redirect's own body, not the file's.
        let size = header("x-linked-size")
            .or_else(|| {
                if redirect {
                    None
                } else {
                    header(CONTENT_LENGTH.as_str())
                }
            })
            .and_then(|s| s.parse().ok());
        let location = if redirect {
            header(LOCATION.as_str()).map(|l| absolute_url(&l, &self.settings.endpoint))
        } else {
            None
        };
        Ok(FileMeta {
            commit,
            etag,
            size,
            location,
        })
    }

    /// `file` of `repo` at `revision` in the cache, downloaded when it is not there (or, offline,
    /// an error saying so). Returns the snapshot path (`snapshots/<commit>/<file>`).
    /// `at` is the commit the listing gave, so every file comes from one commit even if the branch
    /// moves meanwhile (`None`: the revision as it is now).
    pub(crate) fn fetch(
        &self,
        repo: &str,
        revision: &str,
        at: Option<&str>,
        file: &str,
        ui: &dyn Progress,
    ) -> Result<PathBuf> {
        check_revision(revision)?;
        check_file_path(repo, file)?;
        let cached = self.cached(repo, revision, file);
        if self.settings.offline {
            return cached.ok_or_else(|| {
                Error::refused(
                    &self.repo_dir(repo),
                    format!("HF_HUB_OFFLINE is set and `{file}` of `{repo}` at `{revision}` is not in the Hugging Face cache"),
                    "unset HF_HUB_OFFLINE to download it, or point HF_HOME / HF_HUB_CACHE at the cache that has it",
                )
                .with_kind(ErrorKind::NotFound)
            });
        }
        let meta = self.meta(repo, revision, at.unwrap_or(revision), file, None, ui)?;
        let dir = self.repo_dir(repo);
        let blob = dir.join("blobs").join(&meta.etag);
        let pointer = dir.join("snapshots").join(&meta.commit).join(file);
        if !self.usable(&blob, &meta, ui)? {
            // Held until the blob is in place: another run of this tool downloading the same blob
            // meanwhile waits rather than writing into the same `.incomplete` file.
            let lock = self.lock_blob(repo, &blob, file, ui)?;
            if !self.usable(&blob, &meta, ui)? {
                let url = meta.location.clone().unwrap_or_else(|| {
                    format!(
                        "{}/{repo}/resolve/{}/{}",
                        self.settings.endpoint,
                        encode(&meta.commit),
                        encode_path(file)
                    )
                });
                self.download(&url, &blob, &meta, file, lock.as_ref(), ui)?;
            }
        }
        link(&blob, &pointer)?;
        if revision != meta.commit {
            self.cache_repo(repo, revision)
                .create_ref(&meta.commit)
                .map_err(|e| Error::io(&dir.join("refs"), e))?;
        }
        Ok(pointer)
    }

    /// Whether `blob` is in the cache with the content its ETag names. Another tool may have put
    /// it there: it is checked before it is used, and deleted when it is not that content.
    fn usable(&self, blob: &Path, meta: &FileMeta, ui: &dyn Progress) -> Result<bool> {
        if !blob.is_file() {
            return Ok(false);
        }
        if content_id(blob, &meta.etag, ui)?.is_some_and(|found| found != meta.etag) {
            fs::remove_file(blob).map_err(|e| Error::io(blob, e))?;
            return Ok(false);
        }
        Ok(true)
    }

    /// The lock on downloading one blob, in the folder `huggingface_hub` keeps its own in
    /// (`.locks/models--ORG--NAME/`), so two runs of this tool never write one `.incomplete` file.
    /// (Its `<etag>.lock` is an `flock` on a file that stays, which std offers only from Rust 1.89:
    /// ours has a name of its own, and excludes our runs only.) While another run holds it
    /// this waits; a lock whose holder has ended (Linux: its PID is gone) or has shown no sign of
    /// life for longer than it could be waiting on a server is taken over. `None` where no lock
    /// file can be made (a read-only cache folder, say).
    fn lock_blob(&self, repo: &str, blob: &Path, file: &str, ui: &dyn Progress) -> Result<Option<BlobLock>> {
        let name = blob.file_name().expect("blob paths have a name").to_string_lossy();
        let dir = self
            .settings
            .cache
            .join(".locks")
            .join(Repo::model(repo.to_string()).folder_name());
        let path = dir.join(format!("{name}.ollama-tools.lock"));
        // The holder beats at least this often, unless a server keeps it waiting (then at most
        // an idle timeout and a retry's wait).
        let stale_after = self.patience.idle * 2 + self.patience.max_wait;
        let mut told = false;
        loop {
            match BlobLock::try_new(&dir, &path) {
                Ok(Some(lock)) => return Ok(Some(lock)),
                Ok(None) => {}
                Err(e) => {
                    ui.notice(&format!(
                        "cannot make the lock file {} ({e}); downloading without it",
                        path.display()
                    ));
                    return Ok(None);
                }
            }
            if BlobLock::take_over_if_stale(&path, stale_after) {
                ui.notice(&format!(
                    "took over the lock {}: the run that held it has ended or stopped",
                    path.display()
                ));
                continue;
            }
            if !told {
                ui.notice(&format!(
                    "another run is downloading {}; waiting for it",
                    printable(file, 200)
                ));
                told = true;
            }
            if ui.cancelled() {
                return Err(Error::Cancelled);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The `general.type` of each GGUF file in the repo (`adapter`, `model`; `None` when it cannot
    /// be told), peeked at [`PROBES`] at a time and all within [`Hub::probe_time`]: a repo full of
    /// files that never answer costs that long, not that long per file.
    fn gguf_types(&self, repo: &str, revision: &str, at: &str, files: &[String]) -> Vec<Option<String>> {
        let deadline = Instant::now() + self.probe_time;
        let next = AtomicUsize::new(0);
        let found = Mutex::new(vec![None; files.len()]);
        std::thread::scope(|s| {
            for _ in 0..files.len().min(PROBES) {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, AtomicOrdering::Relaxed);
                        if i >= files.len() || Instant::now() >= deadline {
                            break;
                        }
                        let t = self.gguf_type(repo, revision, at, &files[i], deadline);
                        found.lock().unwrap_or_else(|e| e.into_inner())[i] = t;
                    }
                });
            }
        });
        found.into_inner().unwrap_or_else(|e| e.into_inner())
    }

    /// The `general.type` of a GGUF file in the repo, from its first 256 KiB, asked by `deadline`.
    fn gguf_type(&self, repo: &str, revision: &str, at: &str, file: &str, deadline: Instant) -> Option<String> {
        let meta = self
            .meta(repo, revision, at, file, Some(deadline), &crate::progress::Silent)
            .ok()?;
        let url = meta.location.clone().unwrap_or_else(|| {
            format!(
                "{}/{repo}/resolve/{}/{}",
                self.settings.endpoint,
                encode(at),
                encode_path(file)
            )
        });
        let resp = self
            .request(reqwest::Method::GET, &url, Some(deadline))
            .header(RANGE, "bytes=0-262143")
            .send()
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let mut prefix = Vec::new();
        resp.take(1 << 18).read_to_end(&mut prefix).ok()?;
        match crate::formats::gguf::kv_in_prefix(&prefix, meta.size?, "general.type")? {
            crate::formats::gguf::Value::String(t) => Some(t),
            _ => None,
        }
    }

    /// The commit a revision points at in the cache (`refs/<revision>`), or the revision itself when
    /// it is a commit; `None` for a revision that is not a valid name.
    pub(crate) fn cached_commit(&self, repo: &str, revision: &str) -> Option<String> {
        if is_commit(revision) {
            return Some(revision.to_string());
        }
        check_revision(revision).ok()?;
        let commit = fs::read_to_string(self.repo_dir(repo).join("refs").join(revision))
            .ok()?
            .trim()
            .to_string();
        // It becomes a folder name: only a commit is taken.
        is_commit(&commit).then_some(commit)
    }

    /// The file in the cache for this revision, if a download (ours or another tool's) put it there.
    pub(crate) fn cached(&self, repo: &str, revision: &str, file: &str) -> Option<PathBuf> {
        check_file_path(repo, file).ok()?;
        let commit = self.cached_commit(repo, revision)?;
        let p = self.repo_dir(repo).join("snapshots").join(commit).join(file);
        p.exists().then_some(p)
    }

    /// Streams `url` into `blob.incomplete`, resuming what is there, retrying with backoff while
    /// the transfer breaks, and renames it to `blob` when its content is what the ETag names.
    fn download(
        &self,
        url: &str,
        blob: &Path,
        meta: &FileMeta,
        file: &str,
        lock: Option<&BlobLock>,
        ui: &dyn Progress,
    ) -> Result<()> {
        let beat = || {
            if let Some(l) = lock {
                l.beat();
            }
        };
        let dir = blob.parent().expect("blob paths have a parent");
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let partial = incomplete(blob);
        let mut retries = 0;
        ui.stage(file, meta.size.unwrap_or(0));
        loop {
            let have = fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
            ui.advance(have);
            let why = match self.transfer(url, &partial, have, meta, &beat, ui) {
                Ok(()) => break,
                Err(Transfer::Failed(e)) => return Err(e),
                Err(Transfer::Cut(why)) => why,
            };
            let now = fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
            let Some(wait) = self.patience.delay(retries, None) else {
                return Err(Error::Refused {
                    path: PathBuf::from(without_query(url)),
                    msg: format!(
                        "the download of {file} broke off {} times, the last at {now} bytes ({why})",
                        retries + 1
                    ),
                    hint: Some(format!("run the command again: it resumes from {}", partial.display())),
                    kind: ErrorKind::Server,
                });
            };
            retries += 1;
            ui.notice(&format!(
                "the download of {file} broke off at {now} bytes ({why}); resuming in {:.1} s",
                wait.as_secs_f64()
            ));
            self.patience.sleep(wait, || {
                beat();
                ui.cancelled()
            })?;
            ui.stage(file, meta.size.unwrap_or(0));
        }
        ui.finish();
        if let Some(found) = content_id(&partial, &meta.etag, ui)?.filter(|found| *found != meta.etag) {
            let _ = fs::remove_file(&partial);
            let kind = if is_sha256(&meta.etag) { "sha256" } else { "git blob id" };
            return Err(Error::Refused {
                path: PathBuf::from(without_query(url)),
                msg: format!("{file} downloaded with {kind} {found}, and the Hub says it is {}: the file was deleted", meta.etag),
                hint: Some("something between here and the Hub altered it; run again, and if it repeats, check any proxy or mirror (HF_ENDPOINT)".into()),
                kind: ErrorKind::Server,
            });
        }
        fs::rename(&partial, blob).map_err(|e| Error::io(blob, e))
    }

    /// One GET of the file from byte `have` on, appended to `partial` (or written afresh when the
    /// server sends it all), never past the size announced for it.
    fn transfer(
        &self,
        url: &str,
        partial: &Path,
        have: u64,
        meta: &FileMeta,
        beat: &dyn Fn(),
        ui: &dyn Progress,
    ) -> Result<(), Transfer> {
        if meta.size.is_some_and(|s| have == s && s > 0) {
            return Ok(());
        }
        // More than the file's size is not a prefix of it: start over.
        let from = if meta.size.is_some_and(|s| have > s) { 0 } else { have };
        let mut resp = match self.send(reqwest::Method::GET, url, (from > 0).then_some(from), false, None, ui) {
            Ok(resp) => resp,
            Err(NetError::Http(e)) => return Err(Transfer::Cut(crate::remote::ollama::root_cause(&e))),
            Err(e) => return Err(Transfer::Failed(self.unreachable(url, &e))),
        };
        let status = resp.status();
        let append = status == StatusCode::PARTIAL_CONTENT
            && resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|r| r.starts_with(&format!("bytes {from}-")));
        if !status.is_success() {
            let retry = resp
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let hint = match (status.as_u16(), retry) {
                (429, retry) => rate_limit_hint(retry.as_deref()),
                _ => "run again; if it repeats, the file may have moved".into(),
            };
            return Err(Transfer::Failed(Error::Refused {
                path: PathBuf::from(without_query(url)),
                msg: format!("the download answered {status}"),
                hint: Some(hint),
                kind: match status.as_u16() {
                    429 => ErrorKind::RateLimited,
                    401 | 403 => ErrorKind::Unauthorized,
                    404 | 410 => ErrorKind::NotFound,
                    _ => ErrorKind::Server,
                },
            }));
        }
        let start = if append { from } else { 0 };
        // The end the file may not pass: its announced size, and what this answer announces.
        let limit = [meta.size, resp.content_length().map(|n| start + n)]
            .into_iter()
            .flatten()
            .min();
        let mut out = if append {
            OpenOptions::new().append(true).open(partial)
        } else {
            File::create(partial)
        }
        .map_err(|e| Transfer::Failed(Error::io(partial, e)))?;
        if !append && have > 0 {
            ui.stage(
                &partial
                    .file_name()
                    .map_or(String::new(), |n| n.to_string_lossy().into_owned()),
                meta.size.unwrap_or(0),
            );
        }
        let len = copy_body(&mut resp, &mut out, partial, start, limit, beat, ui)?;
        if let Some(limit) = limit.filter(|l| len > *l) {
            drop(out);
            let _ = fs::remove_file(partial);
            return Err(Transfer::Failed(Error::Refused {
                path: PathBuf::from(without_query(url)),
                msg: format!("the server sent more than the {limit} bytes announced for it; the partial file was deleted"),
                hint: Some("something between here and the Hub is broken; run again later, and check any proxy or mirror (HF_ENDPOINT)".into()),
                kind: ErrorKind::Server,
            }));
        }
        match meta.size {
            Some(size) if len < size => Err(Transfer::Cut(format!("the connection closed at {len} of {size} bytes"))),
            _ => Ok(()),
        }
    }
}

/// Copies the body into `out` (already holding `start` bytes) until it ends or would pass `limit`;
/// returns how long the file is, or `limit + 1` when the body has more than that.
fn copy_body(
    resp: &mut Response,
    out: &mut File,
    partial: &Path,
    start: u64,
    limit: Option<u64>,
    beat: &dyn Fn(),
    ui: &dyn Progress,
) -> Result<u64, Transfer> {
    let mut buf = vec![0u8; 1 << 20];
    let mut len = start;
    loop {
        if ui.cancelled() {
            return Err(Transfer::Failed(Error::Cancelled));
        }
        let n = match resp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if crate::remote::ollama::is_timeout(&e) => {
                return Err(Transfer::Cut(
                    "nothing arrived for the timeout (OLLAMA_TOOLS_TIMEOUT)".into(),
                ));
            }
            Err(e) => return Err(Transfer::Cut(crate::remote::ollama::root_cause(&e))),
        };
        if let Some(l) = limit.filter(|l| len + n as u64 > *l) {
            // What is past the announced size is not written: the disk is not filled.
            return Ok(l + 1);
        }
        out.write_all(&buf[..n])
            .map_err(|e| Transfer::Failed(Error::io(partial, e)))?;
        len += n as u64;
        ui.advance(n as u64);
        beat();
    }
    out.flush().map_err(|e| Transfer::Failed(Error::io(partial, e)))?;
    Ok(len)
}

/// A lock file made with `create_new`, holding the holder's PID and a token; its holder refreshes
/// its modification time while it works ([`BlobLock::beat`]), and removes it when dropped.
struct BlobLock {
    path: PathBuf,
    file: File,
    token: String,
    last_beat: std::cell::Cell<Instant>,
}

impl BlobLock {
    /// The lock, or `None` when another run holds it.
    fn try_new(dir: &Path, path: &Path) -> std::io::Result<Option<BlobLock>> {
        fs::create_dir_all(dir)?;
        let mut file = match OpenOptions::new().write(true).create_new(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(None),
            Err(e) => return Err(e),
        };
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let token = format!("{} {nanos}\n", std::process::id());
        file.write_all(token.as_bytes())?;
        Ok(Some(BlobLock {
            path: path.to_path_buf(),
            file,
            token,
            last_beat: std::cell::Cell::new(Instant::now()),
        }))
    }

    /// Shows the lock's holder is alive (at most once a second).
    fn beat(&self) {
        if self.last_beat.get().elapsed() >= Duration::from_secs(1) {
            let _ = self.file.set_modified(SystemTime::now());
            self.last_beat.set(Instant::now());
        }
    }

    /// Removes the lock at `path` when its holder has ended (its PID gone, where `/proc` tells) or
    /// has not beaten for `stale_after`; whether it did. What is removed is what was judged, so a
    /// lock just taken by a third run is left alone.
    fn take_over_if_stale(path: &Path, stale_after: Duration) -> bool {
        let Ok(held) = fs::read_to_string(path) else {
            return false;
        };
        let quiet = fs::metadata(path)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|e| e > stale_after));
        let pid = held.split_whitespace().next().and_then(|p| p.parse::<u32>().ok());
        let ended = pid.is_some_and(|p| Path::new("/proc/self").exists() && !Path::new(&format!("/proc/{p}")).exists());
        (quiet || ended) && fs::read_to_string(path).is_ok_and(|now| now == held) && fs::remove_file(path).is_ok()
    }
}

impl Drop for BlobLock {
    fn drop(&mut self) {
        // Only our own: a lock taken over from us (we looked dead) now belongs to another run.
        if fs::read_to_string(&self.path).is_ok_and(|t| t == self.token) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The `.incomplete` file a blob is downloaded into (the name `huggingface_hub` resumes from too).
fn incomplete(blob: &Path) -> PathBuf {
    PathBuf::from(format!("{}.incomplete", blob.display()))
}

enum Transfer {
    /// The connection broke: resumable.
    Cut(String),
    Failed(Error),
}

/// What to do about a 429, with its `Retry-After` (seconds) when the Hub sent one.
fn rate_limit_hint(retry: Option<&str>) -> String {
    let wait = match retry.and_then(|r| retry_after(r, SystemTime::now())) {
        Some(d) => format!("{} seconds", d.as_secs()),
        None => "a minute".into(),
    };
    format!("wait {wait} and run again; a token (HF_TOKEN) gets a higher limit")
}

/// A revision (`--revision`) before it is used in a URL or a path in the cache (`refs/<revision>`):
/// a commit, or a branch or tag name as git allows them (`main`, `v1.0`, `refs/pr/1`), so nothing
/// like `../..`, an absolute path, a backslash or a control character gets near the file system.
pub(crate) fn check_revision(revision: &str) -> Result<()> {
    let bad_part = |p: &str| p.is_empty() || p.starts_with('.') || p.ends_with(".lock") || p.ends_with('.');
    let bad_char = |c: char| c.is_control() || " ~^:?*[\\".contains(c);
    if is_commit(revision)
        || (!revision.is_empty()
            && revision.len() <= 255
            && !revision.contains("..")
            && !revision.contains("@{")
            && !revision.chars().any(bad_char)
            && !revision.split('/').any(bad_part))
    {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "`{}` is not a revision: give a branch or tag name (`main`, `v1.0`, `refs/pr/1`) or a 40-hex commit",
        printable(revision, 100)
    )))
}

/// A file path from the Hub's listing (or `--subfolder`), before it becomes a path in the cache:
/// relative, `/`-separated parts, none of them `.`, `..`, or holding a backslash or control
/// character (or, on Windows, a drive's `:`).
fn check_file_path(repo: &str, file: &str) -> Result<()> {
    let bad_part = |p: &str| {
        p.is_empty()
            || p == "."
            || p == ".."
            || p.contains('\\')
            || p.chars().any(char::is_control)
            || (cfg!(windows) && p.contains(':'))
    };
    if file.split('/').any(bad_part) {
        return Err(Error::invalid(Path::new(repo), format!("`{}` is not a file path inside a repo", printable(file, 200)))
            .with_hint("the Hub (or the mirror HF_ENDPOINT names) lists a file name this tool will not write; pick another adapter with --subfolder"));
    }
    Ok(())
}

/// A revision in a URL path, one segment: every byte outside RFC 3986's unreserved set
/// percent-encoded (`refs/pr/1` -> `refs%2Fpr%2F1`).
fn encode(revision: &str) -> String {
    encode_path(revision).replace('/', "%2F")
}

/// A file path in a URL: every byte outside RFC 3986's unreserved set percent-encoded, `/` kept.
fn encode_path(path: &str) -> String {
    let mut out = String::new();
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The id the Hub's ETag gives for this file's content: its sha256 for an LFS file (64 hex), its git
/// blob id (sha1 of `blob <len>\0` + content; 40 hex) for a file kept in git. `None` for an ETag of
/// another form, which cannot be checked.
fn content_id(path: &Path, etag: &str, ui: &dyn Progress) -> Result<Option<String>> {
    if is_sha256(etag) {
        return sha256_file(path, ui).map(Some);
    }
    if !is_commit(etag) {
        return Ok(None);
    }
    let len = fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    crate::engine::cache::hash_file::<sha1::Sha1>(path, format!("blob {len}\0").as_bytes(), ui).map(Some)
}

fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `location` made absolute against `base` (the Hub answers relative redirects for renamed repos).
fn absolute_url(location: &str, base: &str) -> String {
    reqwest::Url::parse(base)
        .and_then(|b| b.join(location))
        .map_or_else(|_| location.to_string(), |u| u.to_string())
}

/// A URL without its query: a CDN's signed address is a short-lived credential, kept out of messages.
fn without_query(url: &str) -> String {
    url.split_once('?').map_or(url, |(u, _)| u).to_string()
}

/// Whether two URLs have the same scheme, host and port.
fn same_origin(a: &str, b: &str) -> bool {
    let origin = |u: &str| {
        reqwest::Url::parse(u).ok().map(|u| {
            (
                u.scheme().to_string(),
                u.host_str().map(str::to_string),
                u.port_or_known_default(),
            )
        })
    };
    origin(a).is_some() && origin(a) == origin(b)
}

/// `snapshots/<commit>/<file>` -> the blob, as a relative symlink the way `huggingface_hub` makes
/// it (a copy where symlinks cannot be made).
fn link(blob: &Path, pointer: &Path) -> Result<()> {
    let dir = pointer.parent().expect("snapshot paths have a parent");
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    // A link, or a copy as long as the blob (a copy is made whole or not at all, but one made by
    // an earlier version of this tool or by another tool may have been cut short).
    let whole = |m: fs::Metadata| m.file_type().is_symlink() || fs::metadata(blob).is_ok_and(|b| b.len() == m.len());
    if pointer.exists() && fs::symlink_metadata(pointer).is_ok_and(whole) {
        return Ok(());
    }
    let _ = fs::remove_file(pointer);
    #[cfg(unix)]
    {
        // From snapshots/<commit>/<a>/<b>: up to the repo folder, then blobs/<etag>.
        let depth = pointer
            .strip_prefix(blob.parent().and_then(Path::parent).expect("repo folder"))
            .map_or(0, |p| p.components().count() - 1);
        let mut target = PathBuf::new();
        for _ in 0..depth {
            target.push("..");
        }
        target.push("blobs");
        target.push(blob.file_name().expect("blob has a name"));
        if std::os::unix::fs::symlink(&target, pointer).is_ok() {
            return Ok(());
        }
    }
    copy_atomically(blob, pointer)
}

/// Copies `from` to `to` through a temporary file in `to`'s folder renamed into place, so that
/// `to` never exists half-written (an interrupted copy would otherwise be trusted forever).
fn copy_atomically(from: &Path, to: &Path) -> Result<()> {
    let dir = to.parent().expect("snapshot paths have a parent");
    let mut tmp = tempfile::Builder::new()
        .prefix(".copy-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    let mut src = File::open(from).map_err(|e| Error::io(from, e))?;
    std::io::copy(&mut src, tmp.as_file_mut()).map_err(|e| Error::io(to, e))?;
    tmp.as_file().sync_all().map_err(|e| Error::io(to, e))?;
    tmp.persist(to).map(|_| ()).map_err(|e| Error::io(to, e.error))
}

/// What `fetch-adapter` downloaded.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Fetched {
    /// The repo (`ORG/NAME`).
    pub repo: String,
    /// The revision asked for (a branch, tag or commit).
    pub revision: String,
    /// The commit the files come from (40 hex).
    pub commit: String,
    /// The adapter folder (PEFT) or file (GGUF) in the cache's snapshot.
    pub path: PathBuf,
    /// The adapter is a GGUF file, not a PEFT folder.
    pub gguf: bool,
    /// Every file downloaded or found in the cache.
    pub files: Vec<PathBuf>,
}

/// Finds the adapter in `repo` at `revision` (asking which one when there are several), and makes its
/// files available in the cache: downloaded, or as they are when another run or tool put them there.
/// Without the Hub, a revision the cache knows is served from it. Errors carry a kind: the Hub's as
/// for [`Hub::info`]; a repo without an adapter [`ErrorKind::NotFound`], one with only a pickle or a
/// full model [`ErrorKind::Unsupported`], several adapters and nobody to ask [`ErrorKind::Usage`];
/// Ctrl-C [`Error::Cancelled`], keeping what was downloaded for the next run to resume.
pub fn fetch_adapter(
    hub: &Hub,
    repo: &str,
    revision: &str,
    subfolder: Option<&str>,
    ui: &dyn Progress,
) -> Result<Fetched> {
    check_repo_id(repo)?;
    check_revision(revision)?;
    let (commit, listing) = if hub.settings.offline {
        (hub.cached_commit(repo, revision), None)
    } else {
        match hub.try_info(repo, revision, ui)? {
            Ok(info) => (Some(info.sha), Some(info.files)),
            // As huggingface_hub does: no network, but the cache knows this revision.
            Err(e) if hub.cached_commit(repo, revision).is_some() => {
                ui.notice(&format!(
                    "{e}; using what the Hugging Face cache holds for `{repo}` at `{revision}`"
                ));
                let offline = Hub::with_patience(
                    Settings {
                        offline: true,
                        ..hub.settings.clone()
                    },
                    hub.patience,
                );
                return fetch_adapter(&offline, repo, revision, subfolder, ui);
            }
            Err(e) => return Err(e),
        }
    };
    let candidate = match &listing {
        Some(files) => {
            let at = commit.as_deref().unwrap_or(revision);
            let found = adapters_only(hub, repo, revision, at, candidates(repo, files, subfolder)?, ui)?;
            pick_candidate(repo, found, ui)?
        }
        // Offline: what the cache holds decides.
        None => match subfolder {
            Some(s) if s.to_ascii_lowercase().ends_with(".gguf") => Candidate::Gguf(s.to_string()),
            Some(s) => Candidate::Peft(s.trim_matches('/').to_string()),
            None => Candidate::Peft(String::new()),
        },
    };
    let mut files = Vec::new();
    for f in candidate.files() {
        files.push(hub.fetch(repo, revision, commit.as_deref(), &f, ui)?);
    }
    // The tokenizer the adapter was trained with, where the repo has it beside the adapter: new
    // tokens and a chat template of its own come from there.
    if let (Candidate::Peft(dir), Some(listing)) = (&candidate, &listing) {
        for f in tokenizer_files(dir, listing) {
            files.push(hub.fetch(repo, revision, commit.as_deref(), &f, ui)?);
        }
    }
    let path = match &candidate {
        Candidate::Gguf(_) => files[0].clone(),
        Candidate::Peft(_) => files[0].parent().expect("a snapshot file has a folder").to_path_buf(),
    };
    let commit = commit.or_else(|| hub.cached_commit(repo, revision)).unwrap_or_default();
    Ok(Fetched {
        repo: repo.into(),
        revision: revision.into(),
        commit,
        gguf: matches!(candidate, Candidate::Gguf(_)),
        path,
        files,
    })
}

/// Refuses what is not `ORG/NAME` (and could name a path outside the cache).
fn check_repo_id(repo: &str) -> Result<()> {
    if repo.split('/').count() != 2
        || repo
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == ".." || p.contains('\\') || p.contains(char::is_control))
    {
        return Err(Error::Usage(format!(
            "`{}` is not a Hugging Face repo id: use ORG/NAME, e.g. `someone/llama3-lora`",
            printable(repo, 100)
        )));
    }
    Ok(())
}

/// The candidates without the GGUF files that are whole models (a .gguf's header says which, from
/// its first bytes, before anything large is downloaded); refused when nothing is left.
fn adapters_only(
    hub: &Hub,
    repo: &str,
    revision: &str,
    at: &str,
    mut found: Vec<Candidate>,
    ui: &dyn Progress,
) -> Result<Vec<Candidate>> {
    let ggufs: Vec<String> = found
        .iter()
        .filter_map(|c| match c {
            Candidate::Gguf(f) => Some(f.clone()),
            Candidate::Peft(_) => None,
        })
        .collect();
    let types = hub.gguf_types(repo, revision, at, &ggufs);
    let mut models = Vec::new();
    for (f, t) in ggufs.iter().zip(&types) {
        if let Some(t) = t.as_deref().filter(|t| *t != "adapter") {
            models.push(format!("{} (general.type `{}`)", printable(f, 200), printable(t, 40)));
            found.retain(|c| c != &Candidate::Gguf(f.clone()));
        }
    }
    if found.is_empty() {
        return Err(Error::refused(
            Path::new(repo),
            format!(
                "`{repo}` holds no LoRA adapter; its GGUF files are not adapters: {}",
                models.join(", ")
            ),
            "a full-model GGUF is imported with Ollama directly (`FROM ./file.gguf` in a Modelfile), not with this command",
        ));
    }
    if !models.is_empty() {
        ui.notice(&format!("not adapters, left out: {}", models.join(", ")));
    }
    Ok(found)
}

/// The one adapter, or the one the user chooses; refused, with the `--subfolder` values, when there
/// are several and nobody to ask.
fn pick_candidate(repo: &str, found: Vec<Candidate>, ui: &dyn Progress) -> Result<Candidate> {
    if found.len() == 1 {
        return Ok(found.into_iter().next().expect("one"));
    }
    let items: Vec<String> = found.iter().map(|c| c.to_string()).collect();
    if let Some(i) = ui.choose(&format!("`{repo}` holds {} adapters; which one?", found.len()), &items) {
        return Ok(found[i].clone());
    }
    let list: Vec<String> = found
        .iter()
        .map(|c| match c {
            Candidate::Peft(d) if d.is_empty() => "  --subfolder .   (the PEFT adapter at the repo's root)".to_string(),
            Candidate::Peft(d) => format!("  --subfolder {}", printable(d, 200)),
            Candidate::Gguf(p) => format!("  --subfolder {}", printable(p, 200)),
        })
        .collect();
    Err(Error::Refused {
        path: PathBuf::from(repo),
        msg: format!(
            "the repo holds {} adapters and there is no terminal to ask which one:\n{}",
            found.len(),
            list.join("\n")
        ),
        hint: Some("pass --subfolder with one of them (a folder, or a .gguf file)".into()),
        kind: ErrorKind::Usage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_follow_huggingface_hub() {
        let s = Settings::from_vars(|k| match k {
            "HOME" => Some("/home/u".into()),
            _ => None,
        });
        assert_eq!(s.endpoint, DEFAULT_ENDPOINT);
        assert_eq!(s.cache, Path::new("/home/u/.cache/huggingface/hub"));
        assert!(!s.offline && s.token.is_none());
        let s = Settings::from_vars(|k| match k {
            "HF_HOME" => Some("/data/hf".into()),
            "HF_ENDPOINT" => Some("http://mirror:8080/".into()),
            "HF_TOKEN" => Some(" hf_abc \n".into()),
            "HF_HUB_OFFLINE" => Some("1".into()),
            _ => None,
        });
        assert_eq!(
            (s.endpoint.as_str(), s.cache.as_path(), s.token.as_deref(), s.offline),
            ("http://mirror:8080", Path::new("/data/hf/hub"), Some("hf_abc"), true)
        );
        let s = Settings::from_vars(|k| (k == "HF_HUB_CACHE" || k == "XDG_CACHE_HOME").then(|| format!("/x/{k}")));
        assert_eq!(s.cache, Path::new("/x/HF_HUB_CACHE"));
    }

    #[test]
    fn adapters_in_a_listing() {
        let files = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let root = files(&["README.md", "adapter_config.json", "adapter_model.safetensors"]);
        assert_eq!(
            candidates("o/r", &root, None).unwrap(),
            vec![Candidate::Peft(String::new())]
        );
        let several = files(&[
            "adapter_config.json",
            "adapter_model.safetensors",
            "checkpoint-500/adapter_config.json",
            "checkpoint-500/adapter_model.safetensors",
            "lora.gguf",
        ]);
        assert_eq!(candidates("o/r", &several, None).unwrap().len(), 3);
        assert_eq!(
            candidates("o/r", &several, Some("checkpoint-500")).unwrap(),
            vec![Candidate::Peft("checkpoint-500".into())]
        );
        assert_eq!(
            candidates("o/r", &several, Some("lora.gguf")).unwrap(),
            vec![Candidate::Gguf("lora.gguf".into())]
        );
        assert_eq!(
            candidates("o/r", &several, Some(".")).unwrap(),
            vec![Candidate::Peft(String::new())]
        );
        let bin = candidates("o/r", &files(&["adapter_config.json", "adapter_model.bin"]), None)
            .unwrap_err()
            .to_string();
        assert!(
            bin.contains("adapter_model.bin") && bin.contains("safe_serialization=True"),
            "{bin}"
        );
        let full = candidates(
            "o/r",
            &files(&["config.json", "model-00001-of-00002.safetensors"]),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(full.contains("full model"), "{full}");
        let none = candidates("o/r", &files(&["README.md"]), None).unwrap_err().to_string();
        assert!(none.contains("no LoRA adapter") && none.contains("README.md"), "{none}");
    }

    #[test]
    fn origins_and_encodings() {
        assert!(same_origin("http://127.0.0.1:5/a", "http://127.0.0.1:5"));
        assert!(!same_origin("http://localhost:5/cdn", "http://127.0.0.1:5"));
        assert_eq!(encode("refs/pr/1"), "refs%2Fpr%2F1");
        assert_eq!(encode("v1#2?x"), "v1%232%3Fx");
        assert_eq!(encode_path("dir/a b#1?.gguf"), "dir/a%20b%231%3F.gguf");
    }

    #[test]
    fn revisions_are_names_or_commits_never_paths() {
        for ok in [
            "main",
            "v1.0",
            "refs/pr/1",
            "feature/x-y_z",
            "0123456789abcdef0123456789abcdef01234567",
        ] {
            assert!(check_revision(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "..",
            "../../..",
            "a/../b",
            "/etc",
            "a//b",
            "a/",
            "main\\..",
            "ma\u{1b}in",
            "a\0b",
            ".git",
            "x.lock",
            "a b",
            "a:b",
            "a@{1}",
            "v1.",
        ] {
            let e = check_revision(bad).unwrap_err().to_string();
            assert!(e.contains("is not a revision") && !e.contains('\u{1b}'), "{bad:?}: {e}");
        }
        assert!(check_file_path("o/r", "dir/adapter_model.safetensors").is_ok());
        for bad in ["../x", "a/./b", "/abs", "a\\b", "a\u{7}b", "a//b", ""] {
            assert!(check_file_path("o/r", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_copy_in_the_snapshot_is_whole_or_replaced() {
        let d = tempfile::tempdir().unwrap();
        let blob = d.path().join("repo/blobs/abc");
        fs::create_dir_all(blob.parent().unwrap()).unwrap();
        fs::write(&blob, vec![5u8; 100_000]).unwrap();
        let pointer = d.path().join("repo/snapshots/c/sub/file");
        // A copy cut short by an interrupted run is not trusted.
        fs::create_dir_all(pointer.parent().unwrap()).unwrap();
        fs::write(&pointer, vec![5u8; 10]).unwrap();
        link(&blob, &pointer).unwrap();
        assert_eq!(fs::read(&pointer).unwrap().len(), 100_000);
        // The copy made where links cannot be: whole, and no temporary file left beside it.
        let other = d.path().join("repo/snapshots/c/copy");
        copy_atomically(&blob, &other).unwrap();
        assert_eq!(fs::read(&other).unwrap(), fs::read(&blob).unwrap());
        let names: Vec<String> = fs::read_dir(other.parent().unwrap())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }
}
