//! create-from-base: a base model and (optionally) a LoRA adapter into a model on an Ollama server,
//! through its HTTP API, on old and current Ollama alike.
//!
//! Two ways to get an adapter in. *Adapter mode* converts it to a GGUF LoRA adapter and creates the
//! model `from` the base with an `adapters` layer (Ollama runs it with llama.cpp's `--lora`).
//! *Merge mode* merges it into the base's GGUF at the base's own quantization and creates the model
//! from that file, carrying over the base's template, parameters, system prompt, license and
//! messages. Ollama 0.34.1 and later refuse new adapter layers ([`ADAPTERS_REFUSED_SINCE`],
//! [`ADAPTER_REFUSALS`]), so `auto` asks the server's version, and falls back to merging when an
//! adapter is refused anyway.
//!
//! Every step that costs time is done once: converted and merged files are kept in this tool's cache
//! (`builds/`), keyed by the content hashes of adapter, base and options; blobs the server already
//! holds are not uploaded again. No model on the server is created or replaced before the last step,
//! `/api/create` (before it: blobs uploaded, and a missing base pulled if the user agrees), and an
//! existing model is only replaced with `--force` or the user's yes.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::engine::base::BaseModel;
use crate::engine::cache::{self, sha256_file};
use crate::engine::quant_mix::Scheme;
use crate::engine::{convert, merge, output};
use crate::error::{Error, Result};
use crate::formats::modelfile::{Message, Modelfile, Parameters};
use crate::formats::peft::Adapter;
use crate::progress::{Progress, check_cancelled};
use crate::remote::ollama::{self, ApiError, Client, ModelName};
use crate::remote::registry;

/// How to get the adapter into Ollama.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Adapter mode where the server still creates adapter layers, merge mode otherwise.
    #[default]
    Auto,
    /// Merge the adapter into the base's weights (works on every Ollama version).
    Merge,
    /// A GGUF adapter layer on top of the base (Ollama before 0.34.1).
    Adapter,
}

/// The first Ollama version that no longer creates models with new adapter layers.
pub const ADAPTERS_REFUSED_SINCE: (u64, u64, u64) = (0, 34, 1);

/// What Ollama answers when it refuses an adapter layer (lower case; matched as substrings of its
/// error text). The server's `/api/create` since 0.34.1; keep this table and the version above together.
pub const ADAPTER_REFUSALS: &[&str] = &["lora adapters are no longer supported"];

/// Whether Ollama's error text is its refusal of adapter layers.
pub fn is_adapter_refusal(message: &str) -> bool {
    let m = message.to_lowercase();
    ADAPTER_REFUSALS.iter().any(|r| m.contains(r))
}

/// `0.34.2` -> (0, 34, 2); a pre-release (`0.34.1-rc0`) counts as its release. `None` for `0.0.0`
/// (what a build from source reports) and anything unparsable.
pub fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let core = v.trim().trim_start_matches('v').split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    let version = (
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
        parts.next().flatten().unwrap_or(0),
    );
    (version != (0, 0, 0)).then_some(version)
}

/// What was done with the adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Used {
    /// The converted adapter attached as an adapter layer (Ollama before 0.34.1).
    Adapter,
    /// The adapter merged into the base's GGUF.
    Merge,
    /// No adapter: a model from the base with the given options.
    Base,
}

/// The mode to start with, and why. `server_version` is `None` without a server; `Some("")` would
/// not happen (a server always reports something). `can_merge`: the base has, or can get, a GGUF file.
pub fn choose_mode(
    requested: Mode,
    has_adapter: bool,
    server_version: Option<&str>,
    can_merge: bool,
) -> (Used, String) {
    if !has_adapter {
        return (
            Used::Base,
            "no adapter given: a model from the base with the given options".into(),
        );
    }
    let threshold = format!(
        "{}.{}.{}",
        ADAPTERS_REFUSED_SINCE.0, ADAPTERS_REFUSED_SINCE.1, ADAPTERS_REFUSED_SINCE.2
    );
    match (requested, server_version) {
        (Mode::Merge, _) => (Used::Merge, "--mode merge".into()),
        (Mode::Adapter, _) => (Used::Adapter, "--mode adapter".into()),
        (Mode::Auto, Some(v)) => match parse_version(v) {
            Some(parsed) if parsed < ADAPTERS_REFUSED_SINCE => (
                Used::Adapter,
                format!("Ollama {v} creates models with adapter layers (refused only since {threshold})"),
            ),
            Some(_) => (
                Used::Merge,
                format!(
                    "Ollama {v} no longer creates models with adapter layers (since {threshold}), so the adapter is merged into the base"
                ),
            ),
            None => (
                Used::Adapter,
                format!(
                    "Ollama reports version `{v}` (a build from source?): trying an adapter layer first, merging if it is refused"
                ),
            ),
        },
        (Mode::Auto, None) if can_merge => (
            Used::Merge,
            "no server to ask: merged into the base, which every Ollama version runs".into(),
        ),
        (Mode::Auto, None) => (
            Used::Adapter,
            "no server to ask, and the base has no GGUF to merge into: an ADAPTER Modelfile (Ollama before 0.34.1)"
                .into(),
        ),
    }
}

/// `opts` with the adapter's own chat template, when asked for (`--chat-template adapter`): its
/// Ollama form as the template, its stop sequences unless the user gave some, and the Jinja for a
/// merged GGUF. `None` keeps `opts`; with the base's template kept, a notice says the adapter has
/// its own.
fn adapter_chat(adapter: Option<&AdapterInput>, opts: &Options, ui: &dyn Progress) -> Result<Option<Options>> {
    use crate::formats::chat_template::{self, Choice};
    let jinja = match adapter {
        Some(AdapterInput::Peft(a)) => chat_template::read(a.config_path.parent().unwrap_or(Path::new(".")))?,
        _ => None,
    };
    let jinja = match (opts.chat_template, jinja) {
        (Choice::Base, Some(j)) if opts.template.is_none() => {
            let format = chat_template::to_ollama(&j).map_or("a format ollama-tools does not know", |m| m.format);
            ui.notice(&format!(
                "the adapter's tokenizer has its own chat template ({format}); the model gets the base's template: \
                 pass --chat-template adapter to use the adapter's, or --template FILE"
            ));
            return Ok(None);
        }
        (Choice::Base, _) => return Ok(None),
        (Choice::Adapter, None) => return Err(chat_template::missing()),
        (Choice::Adapter, Some(j)) => j,
    };
    let Some(mapped) = chat_template::to_ollama(&jinja) else {
        return Err(Error::Usage(format!(
            "the adapter's chat template is in a format ollama-tools cannot write as an Ollama template (it knows {}): \
             write its Go template form and pass --template FILE",
            chat_template::known_formats()
        )));
    };
    let mut o = opts.clone();
    o.template = Some(mapped.go.to_string());
    if o.parameters.get("stop").is_none() {
        for s in mapped.stop {
            o.parameters.push("stop", s).map_err(|e| Error::Usage(e.to_string()))?;
        }
    }
    o.gguf_chat_template = Some(jinja);
    ui.notice(&format!(
        "the model uses the adapter's chat template ({})",
        mapped.format
    ));
    Ok(Some(o))
}

/// The mode an adapter needs when it can go only one way and `used` is the other: DoRA merges only,
/// activated LoRA is an adapter only. `None` when `used` suits it.
fn only_mode(adapter: &Adapter, used: Used) -> Option<(Used, String)> {
    let analysis = adapter.analyze();
    let subjects =
        |ps: &[crate::formats::peft::Problem]| ps.iter().map(|p| p.subject.clone()).collect::<Vec<_>>().join(", ");
    match used {
        Used::Adapter if !analysis.merge_only.is_empty() => Some((
            Used::Merge,
            format!(
                "the adapter can only be merged ({}): llama.cpp cannot apply it as an adapter layer",
                subjects(&analysis.merge_only)
            ),
        )),
        Used::Merge if !analysis.adapter_only.is_empty() => Some((
            Used::Adapter,
            format!(
                "the adapter cannot be merged ({}): an ADAPTER Modelfile, which only Ollama before 0.34.1 creates \
                 (current Ollama refuses adapter layers; llama.cpp's llama-server runs the GGUF adapter)",
                subjects(&analysis.adapter_only)
            ),
        )),
        _ => None,
    }
}

/// What to do about an existing model of the target name: go on or stop. `ask` is only called when
/// the answer matters; it returns `None` when nobody can answer.
pub fn may_replace(name: &str, exists: bool, force: bool, ask: impl FnOnce() -> Option<bool>) -> Result<()> {
    if !exists || force {
        return Ok(());
    }
    match ask() {
        Some(true) => Ok(()),
        Some(false) => Err(Error::Usage(format!("kept the existing model `{name}`; nothing was changed"))),
        None => Err(Error::Refused {
            path: PathBuf::from(name),
            msg: "a model of this name exists, and there is no terminal to ask whether to replace it; nothing was changed".into(),
            hint: Some("pass --force to replace it, or choose another --name".into()),
            kind: crate::ErrorKind::Usage,
        }),
    }
}

/// Whether to pull a base the server does not have: `--yes`, or the user's answer.
pub fn may_pull(base: &str, server: &str, yes: bool, ask: impl FnOnce() -> Option<bool>) -> Result<()> {
    if yes {
        return Ok(());
    }
    let hint = format!("pass --yes to pull it, or run `ollama pull {base}` first");
    match ask() {
        Some(true) => Ok(()),
        Some(false) => Err(Error::Usage(format!(
            "{base} was not pulled; nothing was changed ({hint})"
        ))),
        None => Err(Error::Refused {
            path: PathBuf::from(base),
            msg: format!(
                "the Ollama server at {server} does not have this model, and there is no terminal to ask whether to pull it"
            ),
            hint: Some(hint),
            kind: crate::ErrorKind::Usage,
        }),
    }
}

/// Everything `create-from-base` takes.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The model to create; required unless `no_create`.
    pub name: Option<String>,
    /// The base: an Ollama model name, a GGUF file, or (with `no_create`) a Hugging Face folder.
    pub base: String,
    /// A PEFT adapter folder (or either of its files), or a ready GGUF LoRA adapter.
    pub adapter: Option<PathBuf>,
    /// How the adapter gets in (auto: by the server's version).
    pub mode: Mode,
    /// Quantize the merged model with llama-quantize's mix for this scheme (merges the adapter).
    pub quantize: Option<Scheme>,
    /// The system prompt (already read from its file).
    pub system: Option<String>,
    /// The Go prompt template (already read from its file); `None`: the base's.
    pub template: Option<String>,
    /// The adapter's own chat template instead of the base's.
    pub chat_template: crate::formats::chat_template::Choice,
    /// A Jinja chat template a merged GGUF gets as `tokenizer.chat_template` (set from the
    /// adapter's with `chat_template: Adapter`).
    pub gguf_chat_template: Option<String>,
    /// The license text (already read from its file); `None`: the base's.
    pub license: Option<String>,
    /// Checked against Ollama's parameter table.
    pub parameters: Parameters,
    /// Where to write the Modelfile that makes the same model.
    pub out_modelfile: Option<PathBuf>,
    /// Where to leave a copy of the GGUF that goes to Ollama (merged model or adapter).
    pub out_gguf: Option<PathBuf>,
    /// A user's Modelfile template: (its path, for messages; its text).
    pub modelfile_template: Option<(PathBuf, String)>,
    /// Build and write `out_modelfile` only; no server is asked.
    pub no_create: bool,
    /// Replace an existing model and existing output files without asking.
    pub force: bool,
    /// Pull a missing base without asking.
    pub yes: bool,
    /// The server's base URL.
    pub host: String,
    /// Refuse on validation warnings too.
    pub strict: bool,
    /// Keep the build (merged model or converted adapter) in the cache once Ollama holds it.
    pub keep_build: bool,
    /// Push the created model to its registry (`POST /api/push`); `insecure`: over plain http.
    pub push: bool,
    /// Push over plain http (a private registry).
    pub insecure: bool,
}

/// What was done.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The model created (or that would be, with `no_create`).
    pub name: Option<String>,
    /// How the adapter got in.
    pub mode: Used,
    /// Why this mode, in words.
    pub reason: String,
    /// The server's base URL; `None` with `no_create`.
    pub server: Option<String>,
    /// The version the server reported.
    pub server_version: Option<String>,
    /// The GGUF uploaded (or that the Modelfile points at): the adapter, or the merged model.
    pub file: Option<PathBuf>,
    /// Its `sha256:` digest, the blob name Ollama knows it by.
    pub digest: Option<String>,
    /// Its size in bytes.
    pub file_bytes: Option<u64>,
    /// The file came from the cache of an earlier run.
    pub reused_build: bool,
    /// Blobs sent to the server (0 when it already had them).
    pub uploaded: usize,
    /// Where the Modelfile was written.
    pub modelfile: Option<PathBuf>,
    /// Whether the server created the model.
    pub created: bool,
    /// The created model's size as `/api/tags` reports it.
    pub size: Option<u64>,
    /// The created model's parameters as `/api/show` reports them.
    pub parameters: Option<String>,
    /// Where the pushed model can be found (`https://ollama.com/me/model`); `None` without `--push`.
    pub pushed: Option<String>,
    /// Everything the run noted on the way (also reported through `Progress::notice`).
    pub notices: Vec<String>,
}

/// The base's template, system prompt, license, parameters and messages, which a model created
/// from a merged GGUF file must be given (a model created `from` the base inherits them).
#[derive(Clone, Debug, Default)]
struct Inherited {
    template: Option<String>,
    system: Option<String>,
    license: Option<String>,
    parameters: Parameters,
    messages: Vec<Message>,
    renderer: Option<String>,
    parser: Option<String>,
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

impl Inherited {
    fn from_show(show: &ollama::Show, base: &str) -> Result<Self> {
        let parameters = Parameters::from_show_text(&show.parameters).map_err(|e| {
            Error::invalid(
                Path::new(base),
                format!("the server's parameters for this model do not parse: {e}"),
            )
        })?;
        Ok(Inherited {
            template: non_empty(&show.template),
            system: non_empty(&show.system),
            license: non_empty(&show.license_text()),
            parameters,
            messages: show.messages.clone(),
            renderer: non_empty(&show.renderer),
            parser: non_empty(&show.parser),
        })
    }

    /// From the manifest's layers in the local store (no server to ask).
    fn from_store(name: &ModelName, store: &Path) -> Result<Self> {
        let path = name.manifest_path(store);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let manifest: ollama::Manifest =
            serde_json::from_str(&text).map_err(|e| Error::invalid(&path, e.to_string()))?;
        let mut out = Inherited::default();
        // Ollama keeps a built-in renderer and parser in the model's config blob, not in a layer.
        if let Some(blob) = manifest
            .config
            .as_ref()
            .and_then(|c| ollama::blob_path(store, &c.digest))
            && let Ok(serde_json::Value::Object(config)) =
                std::fs::read_to_string(&blob).map(|t| serde_json::from_str(&t).unwrap_or_default())
        {
            let field = |k: &str| config.get(k).and_then(serde_json::Value::as_str).and_then(non_empty);
            (out.renderer, out.parser) = (field("renderer"), field("parser"));
        }
        for layer in &manifest.layers {
            let Some(blob) = ollama::blob_path(store, &layer.digest) else {
                continue;
            };
            let read = || std::fs::read_to_string(&blob).map_err(|e| Error::io(&blob, e));
            let json = |text: String| {
                serde_json::from_str::<serde_json::Value>(&text).map_err(|e| Error::invalid(&blob, e.to_string()))
            };
            match layer.media_type.as_str() {
                ollama::TEMPLATE_LAYER => out.template = Some(read()?),
                ollama::SYSTEM_LAYER => out.system = Some(read()?),
                ollama::LICENSE_LAYER => {
                    let text = read()?;
                    out.license = Some(match out.license.take() {
                        Some(prev) => format!("{prev}\n\n{text}"),
                        None => text,
                    });
                }
                ollama::PARAMS_LAYER => {
                    if let serde_json::Value::Object(map) = json(read()?)? {
                        out.parameters = Parameters::from_json(&map);
                    }
                }
                ollama::MESSAGES_LAYER => {
                    out.messages =
                        serde_json::from_value(json(read()?)?).map_err(|e| Error::invalid(&blob, e.to_string()))?;
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

/// The file that goes to the server, with its digest.
#[derive(Clone, Debug)]
struct Built {
    path: PathBuf,
    digest: String,
    bytes: u64,
    reused: bool,
}

/// Runs create-from-base. The steps, in order: options checked; the server asked (version, whether
/// the name exists, whether the base exists; pulled if wanted); the base described and the adapter
/// validated; the adapter converted or merged (or taken from the cache); the Modelfile written; the
/// file uploaded; the model created; the result read back.
pub fn create(opts: &Options, ui: &dyn Progress) -> Result<Report> {
    let recorder = Recorder {
        inner: ui,
        notices: Mutex::new(Vec::new()),
    };
    let ui: &dyn Progress = &recorder;
    let name = check_request(opts)?;
    let base_path = Path::new(&opts.base);
    let base_is_file = base_path.exists();
    // A base given as a file is described from it, once.
    let file_base = base_is_file.then(|| BaseModel::load(base_path)).transpose()?;
    let client = (!opts.no_create).then(|| Client::new(&opts.host));
    let server = match (&client, &name) {
        (Some(client), Some(name)) => consult_server(client, name, file_base.as_ref(), opts, ui)?,
        _ => Server::default(),
    };
    check_cancelled(ui)?;

    let base_name = (!base_is_file).then(|| ModelName::parse(&opts.base)).flatten();
    let base = describe_base(file_base, server.base_show.as_ref(), base_name.as_ref(), opts)?;
    let adapter = opts.adapter.as_deref().map(AdapterInput::open).transpose()?;
    let (mut used, mut reason) = choose_used(opts, adapter.as_ref(), server.version.as_deref(), &base, &base_name);
    let with_chat;
    let opts = match adapter_chat(adapter.as_ref(), opts, ui)? {
        Some(o) => {
            with_chat = o;
            &with_chat
        }
        None => opts,
    };
    let job = Job {
        opts,
        base_path,
        base_is_file,
        base: &base,
        base_name: base_name.as_ref(),
        base_show: server.base_show.as_ref(),
        adapter: adapter.as_ref(),
    };
    let mut report = Report::new(opts, used, client.as_ref(), server.version.clone());
    let mut replacing = server.replacing;
    loop {
        check_cancelled(ui)?;
        match job.attempt(used, &reason, client.as_ref(), &mut replacing, &mut report, ui)? {
            Attempt::Done => break,
            Attempt::MergeInstead(msg) => {
                ui.notice(&format!(
                    "Ollama refused the adapter layer (\"{msg}\"): merging it into the base instead"
                ));
                used = Used::Merge;
                reason =
                    format!("Ollama refused an adapter layer (\"{msg}\"), so the adapter was merged into the base");
            }
        }
    }
    if let (Some(out), Some(file)) = (&opts.out_gguf, &report.file) {
        copy_out(file, out, opts.force, ui)?;
    }
    tidy_cache(&report, opts, ui);
    // Last: a refused push leaves everything else done, and the error says how to push again.
    if let (Some(client), Some(name), true) = (&client, &opts.name, opts.push && report.created) {
        report.pushed = Some(push(client, name, opts.insecure, ui)?);
    }
    report.notices = recorder.notices.into_inner().unwrap_or_default();
    Ok(report)
}

/// Checks the options that need no file and no server; returns the model name, parsed.
fn check_request(opts: &Options) -> Result<Option<ModelName>> {
    if opts.name.is_none() && !opts.no_create {
        return Err(Error::Usage(
            "--name is required to create a model (or pass --no-create with --out-modelfile)".into(),
        ));
    }
    if opts.no_create && opts.out_modelfile.is_none() {
        return Err(Error::Usage(
            "--no-create writes nothing without --out-modelfile PATH".into(),
        ));
    }
    let name = match &opts.name {
        Some(n) => Some(ModelName::parse(n).ok_or_else(|| {
            Error::Usage(format!("`{n}` is not a model name Ollama accepts: letters, digits, `-`, `_`, `.`, as `model`, `model:tag` or `namespace/model:tag`"))
        })?),
        None => None,
    };
    check_push(opts.name.as_deref(), opts.push, opts.no_create)?;
    // The same rules as convert's and merge's -o: not an input, not a special file, not replaced
    // without --force.
    let inputs: Vec<&Path> = [Some(Path::new(&opts.base)), opts.adapter.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    for (out, flag) in [(&opts.out_modelfile, "--out-modelfile"), (&opts.out_gguf, "--out-gguf")] {
        if let Some(out) = out {
            convert::check_output(out, flag, opts.force, &inputs)?;
        }
    }
    if opts.out_gguf.is_some() && opts.adapter.is_none() {
        return Err(Error::Usage(
            "--out-gguf leaves the merged model or the GGUF adapter, and there is no --adapter".into(),
        ));
    }
    check_quantize(opts)?;
    Ok(name)
}

/// What the server said before anything is built: its version, the base's `/api/show` (when the
/// base is a model name), and whether the user agreed to replace an existing model of the name.
#[derive(Default)]
struct Server {
    version: Option<String>,
    base_show: Option<ollama::Show>,
    replacing: bool,
}

/// Asks the server its version, whether `name` exists (and may be replaced) and whether the base
/// exists (pulling it after asking); refuses a config.json base, which the server cannot create from.
fn consult_server(
    client: &Client,
    name: &ModelName,
    file_base: Option<&BaseModel>,
    opts: &Options,
    ui: &dyn Progress,
) -> Result<Server> {
    let version = client
        .version()
        .map_err(|e| api_error(e, client.base(), "asking its version"))?;
    let existing = client
        .find(&name.to_string())
        .map_err(|e| api_error(e, client.base(), "looking for the model"))?;
    may_replace(&name.to_string(), existing.is_some(), opts.force, || {
        let what = existing.as_ref().map_or(String::new(), describe_show);
        ui.confirm(
            &format!(
                "`{name}` exists on {} ({what}). Replace it with the new model?",
                client.base()
            ),
            false,
        )
    })?;
    let base_show = match file_base {
        Some(b) if b.gguf_path.is_none() => {
            return Err(Error::refused(
                Path::new(&opts.base),
                "a Hugging Face config.json describes the base but is not a model Ollama can create from",
                "pass the base's Ollama model name (or its GGUF file); or use --no-create --out-modelfile",
            ));
        }
        Some(_) => None,
        None => Some(base_on_server(client, opts, ui)?),
    };
    Ok(Server {
        version: Some(version),
        base_show,
        replacing: existing.is_some(),
    })
}

/// The base's `/api/show`, pulled first (after asking, or with `--yes`) when the server lacks it.
fn base_on_server(client: &Client, opts: &Options, ui: &dyn Progress) -> Result<ollama::Show> {
    if let Some(show) = client
        .find(&opts.base)
        .map_err(|e| api_error(e, client.base(), "looking for the base"))?
    {
        return Ok(show);
    }
    may_pull(&opts.base, client.base(), opts.yes, || {
        ui.confirm(
            &format!(
                "The base `{}` is not on the Ollama server at {}. Pull it now?",
                opts.base,
                client.base()
            ),
            true,
        )
    })?;
    pull(client, &opts.base, ui)?;
    client
        .show(&opts.base)
        .map_err(|e| api_error(e, client.base(), "reading the pulled base"))
}

/// The base described: from its file, the server's `/api/show`, or (with `--no-create`) the local
/// model store.
fn describe_base(
    file_base: Option<BaseModel>,
    base_show: Option<&ollama::Show>,
    base_name: Option<&ModelName>,
    opts: &Options,
) -> Result<BaseModel> {
    Ok(match (file_base, base_show, base_name) {
        (Some(b), _, _) => b,
        (None, Some(show), Some(n)) => BaseModel::from_show(n, show, &opts.host)?,
        // --no-create asks no server: a named base comes from the local store.
        (None, None, Some(n)) => BaseModel::from_store(n, &ollama::store_dir()).map_err(|e| {
            e.with_hint(format!(
                "with --no-create the base is read from the local model store (OLLAMA_MODELS); pull it there (`ollama pull {n}`), or pass its GGUF file"
            ))
        })?,
        // Neither a file nor a name Ollama accepts: the load says what is wrong.
        (None, _, None) => BaseModel::load(Path::new(&opts.base))?,
    })
}

/// How the adapter gets in, and why: `--mode`, `--quantize` (which merges), the server's version,
/// whether the base can be merged into, and what only one mode can carry.
fn choose_used(
    opts: &Options,
    adapter: Option<&AdapterInput>,
    server_version: Option<&str>,
    base: &BaseModel,
    base_name: &Option<ModelName>,
) -> (Used, String) {
    let can_merge = base.gguf_path.is_some() || base_name.is_some();
    // Quantizing happens in the merge, so --quantize asks for one.
    let requested = if opts.quantize.is_some() {
        Mode::Merge
    } else {
        opts.mode
    };
    let (mut used, mut reason) = choose_mode(requested, adapter.is_some(), server_version, can_merge);
    if let (Some(q), Mode::Auto) = (opts.quantize, opts.mode) {
        reason = format!(
            "--quantize {}: the adapter is merged into the base and the result quantized",
            q.name()
        );
    }
    if let (Some(AdapterInput::Peft(a)), Mode::Auto) = (adapter, requested)
        && let Some((mode, why)) = only_mode(a, used)
    {
        (used, reason) = (mode, why);
    }
    (used, reason)
}

/// Everything an attempt at building and creating the model reads.
struct Job<'a> {
    opts: &'a Options,
    base_path: &'a Path,
    base_is_file: bool,
    base: &'a BaseModel,
    base_name: Option<&'a ModelName>,
    base_show: Option<&'a ollama::Show>,
    adapter: Option<&'a AdapterInput>,
}

/// How an attempt ended: done (created, or written with `--no-create`), or the server refused the
/// adapter layer in auto mode and the adapter is to be merged instead.
enum Attempt {
    Done,
    MergeInstead(String),
}

impl Report {
    /// The report before anything is built.
    fn new(opts: &Options, used: Used, client: Option<&Client>, server_version: Option<String>) -> Self {
        Report {
            name: opts.name.clone(),
            mode: used,
            reason: String::new(),
            server: client.map(|c| c.base().to_string()),
            server_version,
            file: None,
            digest: None,
            file_bytes: None,
            reused_build: false,
            uploaded: 0,
            modelfile: None,
            created: false,
            size: None,
            parameters: None,
            pushed: None,
            notices: vec![],
        }
    }
}

impl Job<'_> {
    /// Builds what mode `used` needs, renders the Modelfile, and creates the model (or, without a
    /// server, writes the Modelfile).
    fn attempt(
        &self,
        used: Used,
        reason: &str,
        client: Option<&Client>,
        replacing: &mut bool,
        report: &mut Report,
        ui: &dyn Progress,
    ) -> Result<Attempt> {
        let opts = self.opts;
        let built = match (self.adapter, used) {
            (Some(a), Used::Adapter) => Some(build_adapter(a, self.base, opts, ui)?),
            (Some(a), Used::Merge) => Some(build_merged(a, self.base_name, self.base, opts, ui)?),
            _ => None,
        };
        let modelfile = self.modelfile(used, built.as_ref(), ui)?;
        // Rendered now, so a value the Modelfile grammar cannot carry stops us before the server is
        // touched; written once the mode is final (a refused adapter layer changes it).
        let rendered = match &opts.out_modelfile {
            Some(out) => Some((out, render_modelfile(&modelfile, out, opts)?)),
            None => None,
        };
        if used != Used::Merge && self.base_is_file && self.base.gguf_path.is_none() && !has_weights(self.base_path) {
            ui.notice(&format!(
                "FROM {} names a folder without weights: Ollama can only create from it if it holds the model's safetensors files; else use the base's Ollama name",
                self.base_path.display()
            ));
        }
        report.mode = used;
        report.reason = reason.to_string();
        if let Some(b) = &built {
            report.file = Some(b.path.clone());
            report.digest = Some(b.digest.clone());
            report.file_bytes = Some(b.bytes);
            report.reused_build = b.reused;
        }
        let Some(client) = client else {
            if let Some((out, text)) = rendered {
                write_modelfile(&text, out, opts)?;
                report.modelfile = Some(out.clone());
            }
            return Ok(Attempt::Done);
        };
        // As typed, the way `ollama create NAME` sends it.
        let name = opts.name.clone().expect("checked by check_request");
        let request = self.upload(client, used, built.as_ref(), &name, &modelfile, report, ui)?;
        check_cancelled(ui)?;
        if let Some(msg) = self.create_on(client, &name, &request, used, replacing, ui)? {
            return Ok(Attempt::MergeInstead(msg));
        }
        report.created = true;
        if let Some((out, text)) = rendered {
            write_modelfile(&text, out, opts)?;
            report.modelfile = Some(out.clone());
        }
        created_details(client, &name, report)?;
        Ok(Attempt::Done)
    }

    /// Sends the create request (after asking again if a model of the name appeared meanwhile);
    /// `Some(message)` when the server refused an adapter layer in auto mode, so merging is next.
    fn create_on(
        &self,
        client: &Client,
        name: &str,
        request: &serde_json::Value,
        used: Used,
        replacing: &mut bool,
        ui: &dyn Progress,
    ) -> Result<Option<String>> {
        let opts = self.opts;
        // A model of this name made meanwhile (the build can take minutes) is not replaced unasked either.
        if !opts.force && !*replacing {
            let now = client
                .find(name)
                .map_err(|e| api_error(e, client.base(), "looking for the model"))?;
            may_replace(name, now.is_some(), false, || {
                ui.confirm(
                    &format!(
                        "`{name}` was created on {} meanwhile. Replace it with the new model?",
                        client.base()
                    ),
                    false,
                )
            })?;
            *replacing = now.is_some();
        }
        ui.stage(&format!("creating {name}"), 0);
        let result = client.create(request, ui, &mut |s| ui.status(&s.status));
        ui.finish();
        match result {
            Ok(()) => {}
            Err(e)
                if used == Used::Adapter && opts.mode == Mode::Auto && e.message().is_some_and(is_adapter_refusal) =>
            {
                return Ok(Some(e.message().unwrap_or_default().to_string()));
            }
            Err(e) => {
                let hint = (used == Used::Adapter && e.message().is_some_and(is_adapter_refusal))
                    .then_some("this Ollama no longer creates models with adapter layers: use --mode merge (or auto)");
                let err = api_error(e, client.base(), &format!("creating `{name}`"));
                return Err(match hint {
                    Some(h) => err.with_hint(h),
                    None => err,
                });
            }
        }
        Ok(None)
    }

    /// The Modelfile for mode `used`: FROM the base (or the merged file), the adapter layer, and what
    /// a merged model inherits from its base.
    fn modelfile(&self, used: Used, built: Option<&Built>, ui: &dyn Progress) -> Result<Modelfile> {
        let opts = self.opts;
        let inherited = match used {
            Used::Merge => match (self.base_show, self.base_name) {
                (Some(show), _) => Inherited::from_show(show, &opts.base)?,
                // Without a server the base was read from the store, so its manifest is there.
                (None, Some(n)) => Inherited::from_store(n, &ollama::store_dir())?,
                (None, None) => Inherited::default(),
            },
            _ => Inherited::default(),
        };
        let from = if self.base_is_file {
            absolute(self.base_path)?.display().to_string()
        } else {
            opts.base.clone()
        };
        if used != Used::Merge && opts.template.is_some() && self.base_show.is_some_and(|s| !s.renderer.is_empty()) {
            ui.notice("the base formats prompts with a built-in renderer, which a model created from it keeps: --template may not take effect (--mode merge replaces the renderer)");
        }
        modelfile_for(used, &from, built, &inherited, opts)
    }

    /// Uploads what the server does not have (the base file for an adapter layer, the built file)
    /// and returns the create request.
    #[allow(clippy::too_many_arguments)]
    fn upload(
        &self,
        client: &Client,
        used: Used,
        built: Option<&Built>,
        name: &str,
        modelfile: &Modelfile,
        report: &mut Report,
        ui: &dyn Progress,
    ) -> Result<serde_json::Value> {
        let mut files = serde_json::Map::new();
        let mut adapters = serde_json::Map::new();
        if self.base_is_file && used != Used::Merge {
            let digest = format!("sha256:{}", sha256_file(self.base_path, ui)?);
            report.uploaded += upload(client, &digest, self.base_path, ui)?;
            files.insert("model.gguf".into(), digest.into());
        }
        if let Some(b) = built {
            report.uploaded += upload(client, &b.digest, &b.path, ui)?;
            let (slot, key) = if used == Used::Merge {
                (&mut files, "model.gguf")
            } else {
                (&mut adapters, "adapter.gguf")
            };
            slot.insert(key.into(), b.digest.clone().into());
        }
        Ok(create_request(
            name,
            modelfile,
            files,
            adapters,
            used == Used::Merge || self.base_is_file,
        ))
    }
}

/// The new model's parameters and size, as the server reports them.
fn created_details(client: &Client, name: &str, report: &mut Report) -> Result<()> {
    let show = client
        .show(name)
        .map_err(|e| api_error(e, client.base(), "reading the new model"))?;
    report.parameters = non_empty(&show.parameters);
    let full = ModelName::parse(name).map(|n| n.to_string());
    // /api/tags names models in full (`name:tag`).
    report.size = client.tags().ok().and_then(|tags| {
        tags.into_iter()
            .find(|t| Some(&t.name) == full.as_ref())
            .map(|t| t.size)
    });
    Ok(())
}

/// What a push to ollama.com needs besides the name: Ollama's server signs the push with its own
/// key, so the key to add is the server's, not this machine's user's.
const PUSH_KEY: &str = "the Ollama server's public key must be added to your ollama.com account at \
     https://ollama.com/settings/keys: ~/.ollama/id_ed25519.pub of the user the server runs as, on the machine it runs on \
     (a Linux service install: /usr/share/ollama/.ollama/id_ed25519.pub)";

/// What Ollama's push answers when the registry refuses the name or the key (lower case; matched as
/// substrings of its error text): `unauthorized: access denied` (its errUnauthorized, after a second
/// 401), `unauthorized: unknown ollama key "ssh-ed25519 ..."`, the registry's own `403: {"errors":
/// [{"code":"ACCESS DENIED", ...}]}`, an OCI registry's `unauthorized: authentication required` and
/// `denied: requested access to the resource is denied`. The ollama CLI itself matches "access
/// denied" and "unauthorized".
pub const PUSH_REFUSALS: &[&str] = &[
    "unauthorized",
    "access denied",
    "unknown ollama key",
    "authentication required",
    "denied",
];

/// Whether Ollama's error text for a push is the registry refusing the name or the key.
pub fn is_push_refusal(message: &str) -> bool {
    let m = message.to_lowercase();
    PUSH_REFUSALS.iter().any(|r| m.contains(r))
}

/// `--push` needs a model to push, named under a user's namespace: checked before anything is
/// built, since ollama.com refuses every push to its `library` namespace (a name without one).
pub fn check_push(name: Option<&str>, push: bool, no_create: bool) -> Result<()> {
    if !push {
        return Ok(());
    }
    if no_create {
        return Err(Error::Usage(
            "--push publishes the model this run creates on the Ollama server, and --no-create creates none: leave out \
             one of them (a model created later is pushed with `ollama push NAME`)"
                .into(),
        ));
    }
    let Some(parsed) = name.and_then(ModelName::parse) else {
        return Ok(());
    };
    if parsed.registry == ollama::DEFAULT_REGISTRY && parsed.namespace == ollama::DEFAULT_NAMESPACE {
        return Err(Error::Refused {
            path: PathBuf::from(name.unwrap_or_default()),
            msg: "--push: this name has no namespace, so it would go to ollama.com's `library` namespace, which \
                  only Ollama's own models are pushed to; nothing was built or sent"
                .into(),
            hint: Some(format!(
                "name it under your ollama.com user, e.g. --name USER/{}; and {PUSH_KEY}",
                parsed.model
            )),
            kind: crate::ErrorKind::Usage,
        });
    }
    Ok(())
}

/// `POST /api/push` of the created model, a bar per layer; returns where the model can now be found.
pub fn push(client: &Client, name: &str, insecure: bool, ui: &dyn Progress) -> Result<String> {
    let mut layers = Layers::new(ui, "pushing");
    ui.stage(&format!("pushing {name}"), 0);
    let result = client.push(name, insecure, ui, &mut |s| layers.on(s));
    ui.finish();
    result.map_err(|e| push_error(e, client.base(), name))?;
    Ok(match ModelName::parse(name) {
        // As the ollama CLI prints it.
        Some(n) if n.registry == ollama::DEFAULT_REGISTRY => {
            format!("https://ollama.com/{}", n.to_string().trim_end_matches(":latest"))
        }
        _ => name.to_string(),
    })
}

/// A failed push as the user should read it: Ollama's own words, that the model exists on the
/// server, and, for a refusal by the registry, what to set up.
fn push_error(e: ApiError, server: &str, name: &str) -> Error {
    let refused = matches!(e, ApiError::Status { status: 401 | 403, .. }) || e.message().is_some_and(is_push_refusal);
    let hint = match refused {
        true => format!(
            "the registry refused the name or the key: the name's namespace must be your ollama.com user name \
             (`USER/model`; `ollama cp` renames a model), and {PUSH_KEY}. `{name}` was created on {server}: once \
             that is set up, push it with `ollama push {name}`"
        ),
        false => format!(
            "`{name}` was created on {server}: push it again with `ollama push {name}` (what the registry already \
             has is not sent again)"
        ),
    };
    match e {
        ApiError::Cancelled => Error::Cancelled,
        e if refused => api_error(e, server, &format!("pushing `{name}`"))
            .with_hint(hint)
            .with_kind(crate::ErrorKind::Unauthorized),
        e => api_error(e, server, &format!("pushing `{name}`")).with_hint(hint),
    }
}

/// The cache policy after a create (see [`cache`]): the run's build dropped on request once Ollama
/// holds it, and entries unused for [`cache::MAX_AGE_DAYS`] removed. Failing to tidy up only
/// costs disk space, so it is a notice, not an error.
fn tidy_cache(report: &Report, opts: &Options, ui: &dyn Progress) {
    let dir = registry::cache_dir();
    if let Some(build) = report
        .file
        .as_deref()
        .filter(|f| report.created && !opts.keep_build && cache::is_build(&dir, f))
    {
        match cache::remove(build) {
            Ok(()) => ui.notice(&format!(
                "removed {} from the cache (--no-keep-build): Ollama holds the model",
                build.display()
            )),
            Err(e) => ui.notice(&format!("could not remove the build from the cache: {e}")),
        }
    }
    match cache::prune(&dir, Duration::from_secs(cache::MAX_AGE_DAYS * 86400)) {
        Ok(r) if r.files > 0 => ui.notice(&format!(
            "removed {} cache entries unused for {} days",
            r.files,
            cache::MAX_AGE_DAYS
        )),
        Ok(_) => {}
        Err(e) => ui.notice(&format!("could not tidy the cache: {e}")),
    }
}

/// Passes everything on to the user's display, keeping the notices for the report.
struct Recorder<'a> {
    inner: &'a dyn Progress,
    notices: Mutex<Vec<String>>,
}

impl Progress for Recorder<'_> {
    fn stage(&self, name: &str, total: u64) {
        self.inner.stage(name, total)
    }
    fn advance(&self, n: u64) {
        self.inner.advance(n)
    }
    fn notice(&self, msg: &str) {
        self.notices
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(msg.to_string());
        self.inner.notice(msg)
    }
    fn finish(&self) {
        self.inner.finish()
    }
    fn status(&self, msg: &str) {
        self.inner.status(msg)
    }
    fn confirm(&self, question: &str, default: bool) -> Option<bool> {
        self.inner.confirm(question, default)
    }
    fn cancelled(&self) -> bool {
        self.inner.cancelled()
    }
}

/// The adapter the user gave: a PEFT folder, or a ready GGUF LoRA adapter.
enum AdapterInput {
    Peft(Box<Adapter>),
    Gguf(PathBuf),
}

impl AdapterInput {
    fn open(path: &Path) -> Result<Self> {
        if path.is_file() && crate::formats::gguf::is_gguf(path) {
            return Ok(AdapterInput::Gguf(absolute(path)?));
        }
        Ok(AdapterInput::Peft(Box::new(Adapter::open(path)?)))
    }

    /// The files whose content decides what is built from this adapter.
    fn files(&self) -> Vec<PathBuf> {
        match self {
            AdapterInput::Peft(a) => {
                // The tokenizer beside it decides a resized vocabulary's tokens and the chat template.
                let dir = a.config_path.parent().unwrap_or(Path::new("."));
                let tokenizer = crate::remote::hub::TOKENIZER_FILES
                    .iter()
                    .map(|f| dir.join(f))
                    .filter(|p| p.is_file());
                [a.config_path.clone(), a.weights_path.clone()]
                    .into_iter()
                    .chain(tokenizer)
                    .collect()
            }
            AdapterInput::Gguf(p) => vec![p.clone()],
        }
    }
}

/// A GGUF adapter for the base: the user's own (checked, not copied), or the PEFT adapter converted
/// into the cache.
fn build_adapter(adapter: &AdapterInput, base: &BaseModel, opts: &Options, ui: &dyn Progress) -> Result<Built> {
    match adapter {
        AdapterInput::Gguf(path) => {
            crate::engine::validate::check_gguf_adapter(path, base)?;
            let digest = format!("sha256:{}", sha256_file(path, ui)?);
            let bytes = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
            Ok(Built {
                path: path.clone(),
                digest,
                bytes,
                reused: false,
            })
        }
        AdapterInput::Peft(a) => {
            // The base enters a conversion only through its architecture, head counts and shapes.
            let shapes: Vec<String> = base.tensors.iter().map(|(n, t)| format!("{n}{:?}", t.ne)).collect();
            let identity = format!(
                "{} {} {} {}",
                base.arch,
                base.head_count,
                base.head_count_kv,
                shapes.join(",")
            );
            cached(
                &["adapter", &identity, &format!("strict={}", opts.strict)],
                adapter,
                ui,
                |out| {
                    let inputs = [convert::Input {
                        adapter: Adapter::open(&a.path)?,
                        weight: 1.0,
                    }];
                    let copts = convert::Options {
                        force: true,
                        strict: opts.strict,
                        ..Default::default()
                    };
                    convert::convert(&inputs, base, out, &copts, ui).map(|s| s.notices)
                },
            )
        }
    }
}

/// --quantize needs an adapter merged: refused without one, and with --mode adapter.
fn check_quantize(opts: &Options) -> Result<()> {
    if opts.quantize.is_none() {
        return Ok(());
    }
    if opts.adapter.is_none() {
        return Err(Error::Usage(
            "--quantize quantizes the model the adapter is merged into, and there is no --adapter \
             (to quantize a model alone, use llama-quantize)"
                .into(),
        ));
    }
    if opts.mode == Mode::Adapter {
        return Err(Error::Usage(
            "--quantize quantizes the merged model, and --mode adapter keeps the base as it is: use \
             --mode merge, or leave --mode out"
                .into(),
        ));
    }
    Ok(())
}

/// The base's GGUF with the adapter merged in, at the base's own quantization (or --quantize's).
fn build_merged(
    adapter: &AdapterInput,
    name: Option<&ModelName>,
    base: &BaseModel,
    opts: &Options,
    ui: &dyn Progress,
) -> Result<Built> {
    let gguf_base = match (&base.gguf_path, name) {
        (Some(_), _) => base.clone(),
        (None, Some(n)) => registry::local_or_pulled(n, ui)?,
        (None, None) => {
            return Err(Error::refused(
                &base.source,
                "merging needs the base model's GGUF file, and a Hugging Face config.json describes only its shapes",
                "pass the base's GGUF file or Ollama name, or use --mode adapter",
            ));
        }
    };
    let base_file = gguf_base
        .gguf_path
        .clone()
        .expect("a GGUF file or a store or registry blob");
    // A store or cache blob is named by its digest; any other file is hashed.
    let base_id = match base_file
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("sha256-"))
    {
        Some(hex) if hex.len() == 64 => hex.to_string(),
        _ => crate::engine::cache::file_digest(&crate::remote::registry::cache_dir(), &base_file, || {
            sha256_file(&base_file, ui)
        })?,
    };
    let quantize = opts.quantize.map_or("keep", |q| q.name());
    let chat = opts.gguf_chat_template.as_deref().unwrap_or_default();
    cached(
        &[
            "merge",
            &base_id,
            &format!("strict={}", opts.strict),
            &format!("quantize={quantize}"),
            &format!("chat_template={chat}"),
        ],
        adapter,
        ui,
        |out| {
            let mopts = merge::Options {
                force: true,
                strict: opts.strict,
                scale: 1.0,
                quantize: opts.quantize,
                chat_template: opts.gguf_chat_template.clone(),
                ..Default::default()
            };
            let summary = match adapter {
                AdapterInput::Peft(a) => merge::merge(
                    &[convert::Input {
                        adapter: Adapter::open(&a.path)?,
                        weight: 1.0,
                    }],
                    &gguf_base,
                    out,
                    &mopts,
                    ui,
                )?,
                AdapterInput::Gguf(p) => merge::merge_gguf_adapter(p, &gguf_base, out, &mopts, ui)?,
            };
            Ok(summary.notices)
        },
    )
}

/// The file built by `build` for this key, from the cache when an earlier run made it. The key
/// hashes this tool's version, `parts` and the adapter files' contents; the file's own digest is
/// kept beside it, so a reuse costs no hashing.
fn cached(
    parts: &[&str],
    adapter: &AdapterInput,
    ui: &dyn Progress,
    build: impl FnOnce(&Path) -> Result<Vec<String>>,
) -> Result<Built> {
    let mut key = Sha256::new();
    key.update(format!("ollama-tools {}\n", env!("CARGO_PKG_VERSION")));
    for p in parts {
        key.update(p.as_bytes());
        key.update(b"\n");
    }
    for f in adapter.files() {
        key.update(sha256_file(&f, ui)?.as_bytes());
        key.update(b"\n");
    }
    let key = cache::hex(&key.finalize());
    // Absolute: the Modelfile names these files, and Ollama reads relative paths from its own folder.
    let dir = absolute(&registry::cache_dir().join("builds"))?;
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let path = dir.join(format!("{}-{}.gguf", parts[0], &key[..32]));
    let sidecar = cache::sidecar(&path);
    if let (Ok(text), Ok(meta)) = (std::fs::read_to_string(&sidecar), std::fs::metadata(&path))
        && let Some((digest, bytes)) = text.trim().split_once(' ')
        && bytes.parse::<u64>().ok() == Some(meta.len())
        && digest.len() == 64
    {
        cache::touch(&path);
        return Ok(Built {
            path,
            digest: format!("sha256:{digest}"),
            bytes: meta.len(),
            reused: true,
        });
    }
    for n in build(&path)? {
        ui.notice(&n);
    }
    let digest = sha256_file(&path, ui)?;
    let bytes = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?.len();
    let tmp = output::temp_beside(&sidecar)?;
    std::fs::write(tmp.path(), format!("{digest} {bytes}\n")).map_err(|e| Error::io(&sidecar, e))?;
    output::persist(tmp, &sidecar, true)?;
    Ok(Built {
        path,
        digest: format!("sha256:{digest}"),
        bytes,
        reused: false,
    })
}

/// Copies `file` to `out` through a temporary file beside it.
fn copy_out(file: &Path, out: &Path, force: bool, ui: &dyn Progress) -> Result<()> {
    let tmp = output::temp_beside(out)?;
    let mut src = File::open(file).map_err(|e| Error::io(file, e))?;
    ui.stage("copying", std::fs::metadata(file).map(|m| m.len()).unwrap_or(0));
    std::io::copy(&mut src, &mut tmp.as_file()).map_err(|e| Error::io(out, e))?;
    ui.finish();
    output::persist(tmp, out, force)
}

/// The Modelfile that says what the create request says.
fn modelfile_for(
    used: Used,
    from: &str,
    built: Option<&Built>,
    inherited: &Inherited,
    opts: &Options,
) -> Result<Modelfile> {
    let mut m = Modelfile {
        from: from.to_string(),
        ..Default::default()
    };
    let user = |o: &Option<String>, i: &Option<String>| o.clone().or_else(|| i.clone());
    match used {
        Used::Merge => {
            m.from = built.expect("merge mode builds a file").path.display().to_string();
            m.parameters = inherited.parameters.clone();
            m.parameters.overlay(&opts.parameters);
            m.messages = inherited.messages.clone();
            m.renderer = inherited.renderer.clone();
            m.parser = inherited.parser.clone();
        }
        Used::Adapter => {
            m.adapter = Some(built.expect("adapter mode builds a file").path.display().to_string());
            m.parameters = opts.parameters.clone();
        }
        Used::Base => m.parameters = opts.parameters.clone(),
    }
    m.template = user(&opts.template, &inherited.template);
    // A renderer formats prompts in place of the template: the user's template must win.
    if opts.template.is_some() {
        m.renderer = None;
    }
    m.system = user(&opts.system, &inherited.system);
    m.license = user(&opts.license, &inherited.license);
    Ok(m)
}

fn render_modelfile(m: &Modelfile, out: &Path, opts: &Options) -> Result<String> {
    let (name, source) = match &opts.modelfile_template {
        Some((path, text)) => (path.display().to_string(), Some(text.as_str())),
        None => ("templates/Modelfile".to_string(), None),
    };
    m.render(source, &name).map_err(|e| Error::invalid(out, e.to_string()))
}

fn write_modelfile(text: &str, out: &Path, opts: &Options) -> Result<()> {
    let tmp = output::temp_beside(out)?;
    (&mut tmp.as_file())
        .write_all(text.as_bytes())
        .map_err(|e| Error::io(out, e))?;
    output::persist(tmp, out, opts.force)
}

/// The `/api/create` body for `m`, as `ollama create -f` would send it: the FROM file and the
/// ADAPTER as uploaded digests, a FROM name as `from`.
fn create_request(
    name: &str,
    m: &Modelfile,
    files: serde_json::Map<String, serde_json::Value>,
    adapters: serde_json::Map<String, serde_json::Value>,
    from_files: bool,
) -> serde_json::Value {
    let mut r = serde_json::Map::new();
    r.insert("model".into(), name.into());
    if from_files {
        r.insert("files".into(), files.into());
    } else {
        r.insert("from".into(), m.from.clone().into());
    }
    if !adapters.is_empty() {
        r.insert("adapters".into(), adapters.into());
    }
    for (key, value) in [
        ("template", &m.template),
        ("system", &m.system),
        ("license", &m.license),
        ("renderer", &m.renderer),
        ("parser", &m.parser),
    ] {
        if let Some(v) = value {
            r.insert(key.into(), v.clone().into());
        }
    }
    if !m.parameters.is_empty() {
        r.insert("parameters".into(), m.parameters.to_json().into());
    }
    if !m.messages.is_empty() {
        r.insert(
            "messages".into(),
            serde_json::to_value(&m.messages).expect("messages serialize"),
        );
    }
    r.insert("stream".into(), true.into());
    r.into()
}

/// Sends the blob unless the server has it; retried with backoff ([`crate::error::Patience`]) when
/// the connection breaks. Returns 1 when it was sent, 0 when the server had it.
fn upload(client: &Client, digest: &str, path: &Path, ui: &dyn Progress) -> Result<usize> {
    if client
        .has_blob(digest)
        .map_err(|e| api_error(e, client.base(), "asking for a blob"))?
    {
        return Ok(0);
    }
    let bytes = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    let patience = crate::error::Patience::from_env();
    for attempt in 0.. {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        ui.stage("uploading", bytes);
        let result = client.push_blob(digest, file, bytes, ui);
        ui.finish();
        match result {
            Ok(()) => return Ok(1),
            Err(ApiError::Cut { err, url }) => {
                match patience.delay(attempt, None) {
                    Some(wait) => {
                        ui.notice(&format!(
                            "the upload of {digest} broke off ({err}); sending it again in {:.1} s",
                            wait.as_secs_f64()
                        ));
                        patience.sleep(wait, || ui.cancelled())?;
                    }
                    None => {
                        return Err(Error::Refused {
                        path: path.to_path_buf(),
                        msg: format!("the upload of {digest} to {url} broke off {} times ({err})", attempt + 1),
                        hint: Some("check the server's free disk space and its log, then run again (what was built is cached)".into()),
                        kind: crate::ErrorKind::Server,
                    });
                    }
                }
            }
            Err(ApiError::Status {
                status: 400,
                message,
                url,
            }) => {
                return Err(Error::Refused {
                    path: path.to_path_buf(),
                    msg: format!("Ollama at {url} refused the upload of {digest}: {message}"),
                    hint: Some(format!(
                        "the file changed while it was sent, or something between here and the server altered it; run again, and if it repeats remove {} (a cached build) first",
                        path.display()
                    )),
                    kind: crate::ErrorKind::Server,
                });
            }
            Err(e) => return Err(api_error(e, client.base(), &format!("uploading {digest}"))),
        }
    }
    unreachable!("the loop returns once the retries are spent")
}

/// `POST /api/pull` with a progress bar per layer.
fn pull(client: &Client, model: &str, ui: &dyn Progress) -> Result<()> {
    let mut layers = Layers::new(ui, "pulling");
    let result = client.pull(model, ui, &mut |s| layers.on(s));
    ui.finish();
    result.map_err(|e| api_error(e, client.base(), &format!("pulling `{model}`")))
}

/// The statuses of a pull or push shown as Ollama's CLI shows them: a bar per layer digest (its
/// `total`, advanced to its `completed`), any other status as passing text.
struct Layers<'a> {
    ui: &'a dyn Progress,
    verb: &'static str,
    current: String,
    shown: u64,
}

impl<'a> Layers<'a> {
    fn new(ui: &'a dyn Progress, verb: &'static str) -> Self {
        Layers {
            ui,
            verb,
            current: String::new(),
            shown: 0,
        }
    }

    fn on(&mut self, s: &ollama::StreamStatus) {
        if s.digest.is_empty() {
            self.ui.status(&s.status);
            return;
        }
        if s.digest != self.current {
            (self.current, self.shown) = (s.digest.clone(), 0);
            let short: String = s.digest.trim_start_matches("sha256:").chars().take(12).collect();
            self.ui.stage(&format!("{} {short}", self.verb), s.total);
        }
        self.ui.advance(s.completed.saturating_sub(self.shown));
        self.shown = self.shown.max(s.completed);
    }
}

/// Whether a Hugging Face folder holds weights Ollama could import.
fn has_weights(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
    })
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| Error::io(path, e))
}

/// A line about an existing model for the replace question.
fn describe_show(s: &ollama::Show) -> String {
    let d = &s.details;
    let mut parts: Vec<String> = [&d.family, &d.parameter_size, &d.quantization_level]
        .iter()
        .filter(|v| !v.is_empty())
        .map(|v| v.to_string())
        .collect();
    if s.modelfile.contains("ADAPTER") {
        parts.push("with an adapter layer".into());
    }
    if !s.modified_at.is_empty() {
        parts.push(format!(
            "modified {}",
            s.modified_at.get(..19).unwrap_or(&s.modified_at)
        ));
    }
    parts.join(", ")
}

/// An API failure as the user should read it: which server, what we were doing, Ollama's own words.
fn api_error(e: ApiError, server: &str, doing: &str) -> Error {
    let path = PathBuf::from(server);
    let kind = e.kind();
    match e {
        ApiError::Cancelled => Error::Cancelled,
        ApiError::Unreachable { url, err } => Error::Refused {
            path,
            msg: format!("no Ollama server answers at {url} ({err}) while {doing}"),
            hint: Some("start it with `ollama serve`, or point OLLAMA_HOST (or --host) at it; --no-create --out-modelfile works without a server".into()),
            kind,
        },
        ApiError::Status { status, message, .. } => Error::Refused { path, msg: format!("{doing}: Ollama answered {status}: {message}"), hint: None, kind },
        ApiError::Failed { message, .. } => Error::Refused { path, msg: format!("{doing}: Ollama says: {message}"), hint: None, kind },
        other => Error::Refused { path, msg: format!("{doing}: {other}"), hint: None, kind },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("0.34.2"), Some((0, 34, 2)));
        assert_eq!(parse_version("0.34.1-rc0"), Some((0, 34, 1)));
        assert_eq!(parse_version("v0.5"), Some((0, 5, 0)));
        assert_eq!(parse_version("0.0.0"), None);
        assert_eq!(parse_version("dev"), None);
    }

    #[test]
    fn modes() {
        let m = |req, v: Option<&str>, can_merge| choose_mode(req, true, v, can_merge).0;
        assert_eq!(m(Mode::Auto, Some("0.33.9"), true), Used::Adapter);
        assert_eq!(m(Mode::Auto, Some("0.34.0"), true), Used::Adapter);
        assert_eq!(m(Mode::Auto, Some("0.34.1"), true), Used::Merge);
        assert_eq!(m(Mode::Auto, Some("0.34.1-rc1"), true), Used::Merge);
        assert_eq!(m(Mode::Auto, Some("1.0.0"), true), Used::Merge);
        assert_eq!(m(Mode::Auto, Some("0.0.0"), true), Used::Adapter);
        assert_eq!(m(Mode::Auto, None, true), Used::Merge);
        assert_eq!(m(Mode::Auto, None, false), Used::Adapter);
        assert_eq!(m(Mode::Adapter, Some("0.40.0"), true), Used::Adapter);
        assert_eq!(m(Mode::Merge, Some("0.20.0"), true), Used::Merge);
        assert_eq!(choose_mode(Mode::Merge, false, Some("0.34.2"), true).0, Used::Base);
    }

    #[test]
    fn refusal_texts() {
        assert!(is_adapter_refusal("LoRA adapters are no longer supported"));
        assert!(is_adapter_refusal("error: LoRA adapters are no longer supported."));
        assert!(!is_adapter_refusal("only one adapter is currently supported"));
    }

    #[test]
    fn replace_decisions() {
        let never = || -> Option<bool> { panic!("must not ask") };
        assert!(may_replace("m", false, false, never).is_ok());
        assert!(may_replace("m", true, true, never).is_ok());
        assert!(may_replace("m", true, false, || Some(true)).is_ok());
        let no = may_replace("m", true, false, || Some(false)).unwrap_err().to_string();
        assert!(
            no.contains("kept the existing model") && no.contains("nothing was changed"),
            "{no}"
        );
        let tty = may_replace("m", true, false, || None).unwrap_err().to_string();
        assert!(tty.contains("--force") && tty.contains("no terminal"), "{tty}");
    }

    #[test]
    fn push_refusals_and_names() {
        for refused in [
            "unauthorized: access denied",
            "unauthorized: unknown ollama key \"ssh-ed25519 AAAA\"",
            "403: {\"errors\":[{\"code\":\"ACCESS DENIED\", \"message\":\"access denied\"}]}",
            "denied: requested access to the resource is denied",
        ] {
            assert!(is_push_refusal(refused), "{refused}");
        }
        assert!(!is_push_refusal(
            "open /root/.ollama/models/manifests/x: no such file or directory"
        ));
        assert!(check_push(Some("me/model:v1"), true, false).is_ok());
        assert!(check_push(Some("localhost:5000/team/model"), true, false).is_ok());
        assert!(check_push(Some("model"), false, false).is_ok(), "no --push, no check");
        for bare in ["model", "library/model:v1"] {
            let e = check_push(Some(bare), true, false).unwrap_err().to_string();
            assert!(e.contains("no namespace") && e.contains("--name USER/model"), "{e}");
        }
        let e = check_push(Some("me/model"), true, true).unwrap_err().to_string();
        assert!(e.contains("--no-create"), "{e}");
    }

    #[test]
    fn pull_decisions() {
        assert!(may_pull("b", "http://s", true, || -> Option<bool> { panic!("must not ask") }).is_ok());
        assert!(may_pull("b", "http://s", false, || Some(true)).is_ok());
        let e = may_pull("b", "http://s", false, || None).unwrap_err().to_string();
        assert!(e.contains("--yes") && e.contains("ollama pull b"), "{e}");
        assert!(may_pull("b", "http://s", false, || Some(false)).is_err());
    }
}
