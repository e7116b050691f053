//! The command line: argument definitions, human and JSON output, and the indicatif progress display.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::commands::create::{self, Mode};
use crate::commands::fetch;
use crate::engine::base;
use crate::engine::convert::{self, Input, OutType};
use crate::engine::merge::{self, MergedType};
use crate::engine::quant_mix::Scheme;
use crate::engine::validate::{self, Validation};
use crate::formats::chat_template::Choice as ChatChoice;
use crate::formats::modelfile::Parameters;
use crate::formats::peft::{Adapter, Report};
use crate::progress::Progress;

pub mod shell;

/// The command line. Its types are documented by their clap attributes and doc comments, which are
/// the `--help` text, man pages and completions: field docs added for rustdoc alone would change what
/// users read, hence `allow(missing_docs)` on them.
#[allow(missing_docs)]
#[derive(Parser, Debug)]
#[command(
    name = "ollama-tools",
    version,
    about = "Fine-tuned LoRA adapters into Ollama and llama.cpp, exactly"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// No progress bars.
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

/// What `cache` does.
#[allow(missing_docs)]
#[derive(Subcommand, Debug)]
pub enum CacheAction {
    /// Every cached file with its size and when a run last used it, oldest first.
    List {
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove what no run has used for DAYS days (after every create: 30).
    Prune {
        #[arg(long, value_name = "DAYS", default_value_t = crate::engine::cache::MAX_AGE_DAYS)]
        older_than: u64,
    },
    /// Remove everything cached (the Hugging Face cache is not touched).
    Clear,
}

/// The subcommands.
#[allow(missing_docs)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Convert PEFT LoRA adapter(s) into one GGUF LoRA adapter for llama.cpp / Ollama.
    Convert {
        /// Adapter folder (or its adapter_config.json / .safetensors), optionally with a weight:
        /// `./a:0.7`. Several adapters are stacked into one.
        #[arg(required = true, value_name = "ADAPTER[:WEIGHT]")]
        adapters: Vec<String>,
        /// The base model: an Ollama model name (asked of the server at OLLAMA_HOST, else read from the
        /// local store), a GGUF file, or a Hugging Face model directory with config.json.
        #[arg(long, value_name = "BASE")]
        base: String,
        /// Treat validation warnings (other family or size, vocabulary, low-bit base) as errors.
        #[arg(long)]
        strict: bool,
        /// Output GGUF file.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// Tensor type of the output.
        #[arg(long, value_enum, default_value_t = OutType::Auto)]
        outtype: OutType,
        /// Multiply the adapter's effect (0.5 = half strength).
        #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
        scale: f64,
        /// general.name of the adapter (default: the adapter folder name).
        #[arg(long)]
        name: Option<String>,
        /// Replace the output file if it exists.
        #[arg(long)]
        force: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Merge PEFT LoRA adapter(s) into the base model's GGUF, keeping its quantization (or quantizing it: --quantize).
    Merge {
        /// Adapter folder (or either file of it), optionally with a weight: `./a:0.7`. Several are
        /// merged together. One GGUF LoRA adapter file is merged as llama.cpp applies it.
        #[arg(required = true, value_name = "ADAPTER[:WEIGHT]")]
        adapters: Vec<String>,
        /// The base model: a GGUF file, or an Ollama model name (its GGUF blob is read from the local
        /// store, or downloaded from its registry when the store is elsewhere).
        #[arg(long, value_name = "BASE")]
        base: String,
        /// The base's GGUF file, when --base names a model whose store is not on this machine.
        #[arg(long, value_name = "FILE")]
        base_gguf: Option<PathBuf>,
        /// Output GGUF file.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// Type of the merged tensors: the base tensor's own (keep), or f16 / q8_0.
        #[arg(long, value_enum, default_value_t = MergedType::Keep, conflicts_with = "quantize")]
        merged_type: MergedType,
        #[command(flatten)]
        quantize: QuantizeArgs,
        /// Multiply the adapters' effect (0.5 = half strength).
        #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
        scale: f64,
        /// The chat template the merged GGUF carries (`tokenizer.chat_template`): the base's, or
        /// the first adapter tokenizer's own.
        #[arg(long, value_enum, default_value_t = ChatChoice::Base)]
        chat_template: ChatChoice,
        /// Treat validation warnings as errors.
        #[arg(long)]
        strict: bool,
        /// Replace the output file if it exists.
        #[arg(long)]
        force: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check that an adapter fits a base model, and say what was checked.
    Validate {
        /// Adapter folder (or its adapter_config.json / .safetensors).
        adapter: PathBuf,
        /// The base model: an Ollama model name, a GGUF file, or a Hugging Face model directory.
        #[arg(long, value_name = "BASE")]
        base: String,
        /// Treat warnings as errors (exit status 1).
        #[arg(long)]
        strict: bool,
        /// Print a stable JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Create an Ollama model from a base and a LoRA adapter (merged or as an adapter layer, whichever
    /// the server supports), and/or write the Modelfile that does the same.
    CreateFromBase {
        /// The base model: an Ollama model name (pulled when the server lacks it, after asking), a GGUF
        /// file, or (with --no-create) a Hugging Face model directory with config.json.
        #[arg(long, value_name = "BASE")]
        base: String,
        /// Name of the model to create, e.g. `my-model` or `me/my-model:v2`.
        #[arg(long)]
        name: Option<String>,
        /// A PEFT adapter folder, or a ready GGUF LoRA adapter. Without it the model is the base with
        /// your options.
        #[arg(long, value_name = "ADAPTER")]
        adapter: Option<PathBuf>,
        #[command(flatten)]
        create: CreateArgs,
    },
    /// Download a LoRA adapter from a Hugging Face repo (into the Hugging Face cache) and create the
    /// Ollama model from it, as create-from-base does.
    FetchAdapter {
        /// The Hugging Face repo, ORG/NAME.
        repo: String,
        /// The base model (as for create-from-base); default: the Ollama model matching the adapter's
        /// base_model_name_or_path, after asking (or with --yes).
        #[arg(long, value_name = "BASE")]
        base: Option<String>,
        /// Name of the model to create; default: the repo's name as an Ollama name.
        #[arg(long)]
        name: Option<String>,
        /// Branch, tag or commit of the repo.
        #[arg(long, default_value = "main")]
        revision: String,
        /// The adapter's folder in the repo (`.` for the root), or a .gguf file in it, when the repo
        /// holds several adapters.
        #[arg(long, value_name = "DIR")]
        subfolder: Option<String>,
        /// Only download the adapter and print where it is.
        #[arg(long)]
        download_only: bool,
        #[command(flatten)]
        create: CreateArgs,
    },
    /// List, prune or clear this tool's cache of merged models, converted adapters and pulled bases.
    Cache {
        #[command(subcommand)]
        action: CacheAction,
    },
    /// Show what an adapter is and whether it converts.
    Inspect {
        /// Adapter folder (or its adapter_config.json / .safetensors).
        adapter: PathBuf,
        /// Print a stable JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the shell completion script for SHELL to stdout (install.sh installs bash, zsh and fish's).
    #[command(after_help = "Load it now, e.g.: source <(ollama-tools completions bash)\n\
        PowerShell: ollama-tools completions powershell | Out-String | Invoke-Expression (in $PROFILE to keep it)")]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (ollama-tools.1, ollama-tools-COMMAND.1) into DIR, as install.sh does.
    // Not hidden: clap_complete would still complete it, and packagers want it too.
    Man {
        /// The folder to write them to (created if missing), e.g. $PREFIX/share/man/man1.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Replace pages that exist (otherwise refused, before any is written).
        #[arg(long)]
        force: bool,
    },
}

/// `--quantize`, on merge and on the commands that merge.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct QuantizeArgs {
    /// Quantize the whole merged model, in the same pass, choosing each tensor's type as
    /// llama-quantize does for TYPE: q4_k_m, q4_k_s, q5_k_m, q5_k_s, q6_k, q8_0, q5_0, q5_1, q4_0,
    /// q4_1, q3_k_m, q3_k_s, q3_k_l, q2_k, mxfp4_moe, f16, bf16, f32. No importance matrix, so no
    /// IQ types.
    #[arg(long, value_name = "TYPE", value_parser = Scheme::parse)]
    quantize: Option<Scheme>,
    /// Not supported: importance-matrix quantization (here to say so, for llama-quantize users).
    #[arg(long, value_name = "FILE", hide = true)]
    imatrix: Option<PathBuf>,
}

impl QuantizeArgs {
    /// The scheme, or the refusal of --imatrix.
    fn scheme(&self) -> anyhow::Result<Option<Scheme>> {
        if self.imatrix.is_some() {
            anyhow::bail!(
                "--imatrix: importance-matrix quantization is not supported: --quantize writes what \
                 llama-quantize writes without an imatrix, and this tool computes none.\n  hint: for \
                 imatrix-weighted K-quants or IQ types, merge with --quantize f16 and run llama-quantize \
                 --imatrix on the result"
            );
        }
        Ok(self.quantize)
    }
}

/// The options create-from-base and fetch-adapter share.
#[derive(clap::Args, Debug, Clone)]
pub struct CreateArgs {
    /// merge: into the base's weights (every Ollama); adapter: as an adapter layer (Ollama before
    /// 0.34.1); auto: ask the server's version, and merge if an adapter is refused.
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    mode: Mode,
    /// With the adapter merged (implies --mode merge), see `merge --quantize`.
    #[command(flatten)]
    quantize: QuantizeArgs,
    /// System prompt.
    #[arg(long, conflicts_with = "system_file")]
    system: Option<String>,
    /// System prompt read from a file.
    #[arg(long, value_name = "FILE")]
    system_file: Option<PathBuf>,
    /// Sampling temperature (PARAMETER temperature).
    #[arg(long)]
    temperature: Option<f64>,
    /// Context window in tokens (PARAMETER num_ctx).
    #[arg(long)]
    num_ctx: Option<u64>,
    /// Any Ollama parameter, checked against Ollama's names and types; repeat for several (and for
    /// several `stop` strings).
    #[arg(long = "parameter", value_name = "KEY=VALUE")]
    parameters: Vec<String>,
    /// Prompt template (Ollama's Go template syntax) read from a file; default: the base's.
    #[arg(long, value_name = "FILE", conflicts_with = "chat_template")]
    template: Option<PathBuf>,
    /// Which chat template the model gets when the adapter's tokenizer carries its own: the base's
    /// (with a notice), or the adapter's (in its Ollama form, and in the merged GGUF).
    #[arg(long, value_enum, default_value_t = ChatChoice::Base)]
    chat_template: ChatChoice,
    /// License text read from a file; default: the base's.
    #[arg(long, value_name = "FILE")]
    license: Option<PathBuf>,
    /// Also write the Modelfile here (`ollama create NAME -f PATH` makes the same model).
    #[arg(long, value_name = "PATH")]
    out_modelfile: Option<PathBuf>,
    /// Also leave the GGUF that goes to Ollama here (the merged model, or the GGUF adapter), for llama.cpp.
    #[arg(long, value_name = "FILE")]
    out_gguf: Option<PathBuf>,
    /// Render the Modelfile with this minijinja template instead of the built-in one.
    #[arg(long, value_name = "FILE")]
    modelfile_template: Option<PathBuf>,
    /// Ask no server: build, and write --out-modelfile (a named base is read from the local store).
    #[arg(long, requires = "out_modelfile")]
    no_create: bool,
    /// Replace an existing model of that name, and existing --out-modelfile / --out-gguf files.
    #[arg(long)]
    force: bool,
    /// Answer yes: pull a base the server lacks, take the suggested base.
    #[arg(long, short = 'y')]
    yes: bool,
    /// The Ollama server (default: OLLAMA_HOST, else http://127.0.0.1:11434).
    #[arg(long, value_name = "URL")]
    host: Option<String>,
    /// Treat validation warnings as errors.
    #[arg(long)]
    strict: bool,
    /// Remove the merged model (or converted adapter) from this tool's cache once Ollama holds it;
    /// by default it is kept, so a re-run costs nothing (see `ollama-tools cache`).
    #[arg(long)]
    no_keep_build: bool,
    /// Once created, push the model to its registry (ollama.com for `USER/model`): the name must be
    /// under your ollama.com user, and the Ollama server's public key added to your account.
    #[arg(long)]
    push: bool,
    /// With --push: let Ollama reach the registry over plain http (your own registry, for development).
    #[arg(long, requires = "push")]
    insecure: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

impl CreateArgs {
    /// The library's options, with the files read and the parameters checked.
    fn options(&self, base: String, name: Option<String>, adapter: Option<PathBuf>) -> anyhow::Result<create::Options> {
        let mut params = Parameters::default();
        let typed = [
            ("temperature", self.temperature.map(|t| t.to_string())),
            ("num_ctx", self.num_ctx.map(|n| n.to_string())),
        ];
        for (key, value) in typed.iter().filter_map(|(k, v)| v.as_ref().map(|v| (k, v))) {
            params.push(key, value)?;
        }
        for p in &self.parameters {
            params.push_arg(p)?;
        }
        let read = |p: &Option<PathBuf>| -> anyhow::Result<Option<String>> {
            p.as_ref()
                .map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())))
                .transpose()
        };
        Ok(create::Options {
            name,
            base,
            adapter,
            mode: self.mode,
            quantize: self.quantize.scheme()?,
            system: self.system.clone().or(read(&self.system_file)?),
            template: read(&self.template)?,
            chat_template: self.chat_template,
            gguf_chat_template: None,
            license: read(&self.license)?,
            parameters: params,
            out_modelfile: self.out_modelfile.clone(),
            out_gguf: self.out_gguf.clone(),
            modelfile_template: match &self.modelfile_template {
                Some(p) => Some((p.clone(), read(&Some(p.clone()))?.unwrap_or_default())),
                None => None,
            },
            no_create: self.no_create,
            force: self.force,
            yes: self.yes,
            host: self
                .host
                .as_ref()
                .map_or_else(crate::remote::ollama::host, |h| crate::remote::ollama::host_from(h)),
            strict: self.strict,
            keep_build: !self.no_keep_build,
            push: self.push,
            insecure: self.insecure,
        })
    }
}

/// Set by Ctrl-C; long operations see it through [`Progress::cancelled`], stop, and clean up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Runs a parsed command line; errors are printed here, once, with their cause chain.
pub fn run(cli: Cli) -> ExitCode {
    // A second Ctrl-C ends the process at once, for whoever does not want to wait for the clean-up.
    // SIGINT, SIGTERM and SIGHUP (ctrlc's `termination` feature): the first asks the work to stop
    // and clean up; a second ends the process at once, after deleting temporary outputs.
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            crate::engine::output::remove_temporaries();
            std::process::exit(130);
        }
    });
    ignore_file_size_signal();
    let result = dispatch(cli.command, cli.quiet);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e)
            if e.chain()
                .any(|c| matches!(c.downcast_ref(), Some(crate::Error::Cancelled))) =>
        {
            eprintln!("interrupted; nothing half-written was left behind (a download in progress resumes next time)");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one command.
fn dispatch(command: Command, quiet: bool) -> anyhow::Result<()> {
    match command {
        Command::Convert {
            adapters,
            base,
            strict,
            output,
            outtype,
            scale,
            name,
            force,
            json,
        } => {
            let opts = convert::Options {
                outtype,
                scale,
                name,
                force,
                strict,
                ..Default::default()
            };
            run_convert(&adapters, &base, &output, &opts, json, quiet)
        }
        Command::Validate {
            adapter,
            base,
            strict,
            json,
        } => run_validate(&adapter, &base, strict, json),
        Command::Merge {
            adapters,
            base,
            base_gguf,
            output,
            merged_type,
            quantize,
            scale,
            chat_template,
            strict,
            force,
            json,
        } => quantize.scheme().and_then(|quantize| {
            let opts = merge::Options {
                merged_type,
                quantize,
                scale,
                force,
                strict,
                chat_template: merge_chat_template(chat_template, &adapters)?,
            };
            run_merge(&adapters, &base, base_gguf.as_deref(), &output, &opts, json, quiet)
        }),
        Command::Inspect { adapter, json } => run_inspect(&adapter, json),
        Command::Completions { shell } => run_completions(shell),
        Command::Man { dir, force } => run_man(&dir, force),
        Command::Cache { action } => run_cache(&action),
        Command::CreateFromBase {
            base,
            name,
            adapter,
            create,
        } => create
            .options(base, name, adapter)
            .and_then(|opts| run_create(&opts, create.json, quiet)),
        Command::FetchAdapter {
            repo,
            base,
            name,
            revision,
            subfolder,
            download_only,
            create,
        } => run_fetch(
            &repo,
            base,
            name,
            &revision,
            subfolder.as_deref(),
            download_only,
            &create,
            quiet,
        ),
    }
}

fn run_completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    use std::io::Write;
    // A closed pipe (`| head`) is an error message, not a panic.
    std::io::stdout()
        .write_all(&shell::completions(shell))
        .context("writing the completion script to stdout")
}

fn run_man(dir: &Path, force: bool) -> anyhow::Result<()> {
    for page in shell::write_man_pages(dir, force)? {
        println!("wrote {}", page.display());
    }
    Ok(())
}

fn run_cache(action: &CacheAction) -> anyhow::Result<()> {
    let dir = crate::remote::registry::cache_dir();
    let removed = match action {
        CacheAction::List { json } => {
            let entries = crate::engine::cache::list(&dir)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
                return Ok(());
            }
            let now = std::time::SystemTime::now();
            for e in &entries {
                let days = now.duration_since(e.last_used).map_or(0, |d| d.as_secs() / 86400);
                println!(
                    "{:>10}  {:>4} days  {:5}  {}",
                    human_bytes(e.bytes),
                    days,
                    e.kind,
                    e.path.display()
                );
            }
            let total: u64 = entries.iter().map(|e| e.bytes).sum();
            println!("{} entries, {} in {}", entries.len(), human_bytes(total), dir.display());
            return Ok(());
        }
        CacheAction::Prune { older_than } => {
            crate::engine::cache::prune(&dir, std::time::Duration::from_secs(older_than.saturating_mul(86400)))?
        }
        CacheAction::Clear => crate::engine::cache::clear(&dir)?,
    };
    println!("removed {} entries, {}", removed.files, human_bytes(removed.bytes));
    Ok(())
}

/// `path:weight` -> (path, weight); a path that exists as written is taken whole, so paths with
/// colons still work.
fn parse_adapter_arg(arg: &str) -> anyhow::Result<(PathBuf, f64)> {
    if Path::new(arg).exists() {
        return Ok((arg.into(), 1.0));
    }
    if let Some((path, w)) = arg.rsplit_once(':')
        && let Ok(weight) = w.parse::<f64>()
    {
        return Ok((path.into(), weight));
    }
    Ok((arg.into(), 1.0))
}

fn run_convert(
    args: &[String],
    base: &str,
    output: &Path,
    opts: &convert::Options,
    json: bool,
    quiet: bool,
) -> anyhow::Result<()> {
    let inputs = open_inputs(args)?;
    let base = base::resolve(base)?;
    let bar = Bar::new(quiet);
    let summary = convert::convert(&inputs, &base, output, opts, &bar)
        .with_context(|| format!("converting to {}", output.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    let types: Vec<String> = summary.types.iter().map(|(t, n)| format!("{n} {t}")).collect();
    println!(
        "wrote {}: {} LoRA adapter, {} tensor pairs ({}), alpha {}, {}",
        summary.output.display(),
        summary.arch,
        summary.pairs,
        types.join(", "),
        summary.alpha,
        human_bytes(summary.bytes)
    );
    if summary.folded > 0 {
        println!(
            "  {} pairs carry a scale other than alpha/rank, folded into their lora_B",
            summary.folded
        );
    }
    Ok(())
}

fn open_inputs(args: &[String]) -> anyhow::Result<Vec<Input>> {
    args.iter()
        .map(|arg| {
            let (path, weight) = parse_adapter_arg(arg)?;
            Ok(Input {
                adapter: Adapter::open(&path)?,
                weight,
            })
        })
        .collect()
}

fn run_merge(
    args: &[String],
    base: &str,
    base_gguf: Option<&Path>,
    output: &Path,
    opts: &merge::Options,
    json: bool,
    quiet: bool,
) -> anyhow::Result<()> {
    // One ready GGUF LoRA adapter is merged as llama.cpp would apply it.
    let gguf_adapter = match args {
        [one] if Path::new(one).is_file() && crate::formats::gguf::is_gguf(Path::new(one)) => Some(Path::new(one)),
        _ => None,
    };
    let inputs = if gguf_adapter.is_some() {
        vec![]
    } else {
        open_inputs(args)?
    };
    let bar = Bar::new(quiet);
    let base = match base_gguf {
        Some(file) => base::BaseModel::from_gguf(file)?,
        None => crate::remote::registry::resolve_gguf(base, &bar)?,
    };
    let summary = match gguf_adapter {
        Some(adapter) => merge::merge_gguf_adapter(adapter, &base, output, opts, &bar),
        None => merge::merge(&inputs, &base, output, opts, &bar),
    }
    .with_context(|| format!("merging into {}", output.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    let types: Vec<String> = summary.merged_types.iter().map(|(t, n)| format!("{n} {t}")).collect();
    let converted = match &summary.quantize {
        Some(q) => format!(
            ", {} converted to the {} mix",
            summary.converted,
            q.to_ascii_uppercase()
        ),
        None => String::new(),
    };
    println!(
        "wrote {}: {} tensors merged ({}){converted}, {} copied unchanged, {} (base {})",
        summary.output.display(),
        summary.merged,
        types.join(", "),
        summary.copied,
        human_bytes(summary.bytes),
        human_bytes(summary.base_bytes)
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn run_fetch(
    repo: &str,
    base: Option<String>,
    name: Option<String>,
    revision: &str,
    subfolder: Option<&str>,
    download_only: bool,
    args: &CreateArgs,
    quiet: bool,
) -> anyhow::Result<()> {
    let req = fetch::Request {
        repo,
        revision,
        subfolder,
        base,
        name,
        yes: args.yes,
        download_only,
    };
    // Files and parameters are checked before a possibly long download.
    let opts = args.options(String::new(), req.model_name(args.no_create), None)?;
    let bar = Bar::new(quiet);
    let hub = crate::remote::hub::Hub::new(crate::remote::hub::Settings::from_env());
    let fetched = fetch::download(&hub, &req, &opts, &bar)?;
    if download_only {
        if args.json {
            println!("{}", serde_json::to_string_pretty(&fetched)?);
        } else {
            println!("{}", fetched.path.display());
        }
        return Ok(());
    }
    if !args.json && !quiet {
        eprintln!(
            "adapter: {} ({repo} at {})",
            fetched.path.display(),
            &fetched.commit.get(..12).unwrap_or(&fetched.commit)
        );
    }
    let report = fetch::create(&req, &fetched, opts, &bar)?;
    present_create(&report, args.json)
}

fn run_create(opts: &create::Options, json: bool, quiet: bool) -> anyhow::Result<()> {
    let bar = Bar::new(quiet);
    let report = create::create(opts, &bar)?;
    present_create(&report, json)
}

/// Prints what create-from-base (or fetch-adapter) did.
fn present_create(r: &create::Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    let mode = match r.mode {
        create::Used::Adapter => "adapter layer",
        create::Used::Merge => "merged into the base",
        create::Used::Base => "base with options",
    };
    match (&r.name, r.created) {
        (Some(name), true) => println!(
            "created {name} on {} (Ollama {})",
            r.server.as_deref().unwrap_or_default(),
            r.server_version.as_deref().unwrap_or("?")
        ),
        _ => println!("built; no model created (--no-create)"),
    }
    println!("  mode        {mode}: {}", r.reason);
    if let (Some(file), Some(digest), Some(bytes)) = (&r.file, &r.digest, r.file_bytes) {
        let how = if r.reused_build {
            "reused from an earlier run"
        } else {
            "built now"
        };
        println!(
            "  file        {} ({}, {}; {how})",
            file.display(),
            human_bytes(bytes),
            digest
        );
    }
    if r.created {
        println!(
            "  uploaded    {}",
            if r.uploaded == 0 {
                "nothing: the server had every blob".to_string()
            } else {
                format!("{} blob(s)", r.uploaded)
            }
        );
        if let Some(size) = r.size {
            println!("  size        {}", human_bytes(size));
        }
        if let Some(p) = &r.parameters {
            for (i, line) in p.lines().enumerate() {
                println!(
                    "  {:<11} {}",
                    if i == 0 { "parameters" } else { "" },
                    line.split_whitespace().collect::<Vec<_>>().join(" ")
                );
            }
        }
    }
    if let Some(m) = &r.modelfile {
        println!("  modelfile   {}", m.display());
    }
    if let Some(at) = &r.pushed {
        println!("  pushed      {at}");
    }
    match (&r.name, r.created, &r.modelfile) {
        (Some(name), true, _) => println!("run it: ollama run {name}"),
        (name, false, Some(m)) => println!(
            "create it: ollama create {} -f {}",
            name.as_deref().unwrap_or("NAME"),
            m.display()
        ),
        _ => {}
    }
    Ok(())
}

/// The Jinja template `merge --chat-template adapter` writes: the first adapter's own.
fn merge_chat_template(choice: ChatChoice, adapters: &[String]) -> anyhow::Result<Option<String>> {
    if choice == ChatChoice::Base {
        return Ok(None);
    }
    let first = match adapters.first() {
        Some(arg) => Some(Adapter::open(&parse_adapter_arg(arg)?.0)?),
        None => None,
    };
    let dir = first
        .as_ref()
        .and_then(|a| a.config_path.parent().map(Path::to_path_buf));
    let template = dir
        .map(|d| crate::formats::chat_template::read(&d))
        .transpose()?
        .flatten();
    Ok(Some(template.ok_or_else(crate::formats::chat_template::missing)?))
}

fn run_validate(path: &Path, base: &str, strict: bool, json: bool) -> anyhow::Result<()> {
    let adapter = Adapter::open(path)?;
    let base = base::resolve(base)?;
    let v = validate::validate(&adapter, &base);
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", format_validation(&v));
    }
    if !v.ok() {
        anyhow::bail!("{}: {}", path.display(), v.summary);
    }
    if strict && !v.warnings.is_empty() {
        anyhow::bail!(
            "{}: {} warning(s), and --strict makes them errors",
            path.display(),
            v.warnings.len()
        );
    }
    Ok(())
}

fn format_validation(v: &Validation) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "{} on {}", v.adapter.display(), v.base);
    for c in &v.checks {
        let _ = writeln!(s, "  ok       {c}");
    }
    for n in &v.notices {
        let _ = writeln!(s, "  note     {n}");
    }
    for (label, list) in [
        ("warning", &v.warnings),
        ("error", &v.errors),
        ("merge only", &v.merge_only),
        ("no merge", &v.adapter_only),
    ] {
        for f in list {
            let _ = writeln!(
                s,
                "  {label:<8} {}: {}\n           what to do: {}",
                f.subject, f.message, f.hint
            );
        }
    }
    let _ = writeln!(s, "{}", v.summary);
    s
}

fn run_inspect(path: &Path, json: bool) -> anyhow::Result<()> {
    let adapter = Adapter::open(path)?;
    let analysis = adapter.analyze();
    let report = Report::new(&adapter, &analysis);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", format_report(&report));
    }
    Ok(())
}

/// "0-3, 5, 7-9" for a sorted list of layers.
fn ranges(layers: &[u32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < layers.len() {
        let start = layers[i];
        while i + 1 < layers.len() && layers[i + 1] == layers[i] + 1 {
            i += 1;
        }
        out.push(if layers[i] == start {
            start.to_string()
        } else {
            format!("{start}-{}", layers[i])
        });
        i += 1;
    }
    out.join(", ")
}

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.2} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

fn format_report(r: &Report) -> String {
    let mut s = String::new();
    report_config(&mut s, r);
    report_tensors(&mut s, r);
    report_verdict(&mut s, r);
    s
}

/// inspect's lines about the adapter's configuration: PEFT type, base, rank, alpha, targets.
fn report_config(s: &mut String, r: &Report) {
    use std::fmt::Write;
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "(not set)".into());
    let _ = writeln!(s, "adapter       {}", r.adapter.display());
    let _ = writeln!(
        s,
        "peft type     {}{}{}",
        opt(&r.peft_type),
        r.task_type.as_ref().map_or(String::new(), |t| format!(" ({t})")),
        r.peft_version
            .as_ref()
            .map_or(String::new(), |v| format!(", written by PEFT {v}"))
    );
    let _ = writeln!(s, "base model    {}", opt(&r.base_model));
    let _ = writeln!(
        s,
        "rank          {}{}",
        r.r.map_or("(not set)".into(), |v| v.to_string()),
        if r.rank_pattern.is_empty() {
            String::new()
        } else {
            format!(
                "  rank_pattern {}",
                serde_json::to_string(&r.rank_pattern).unwrap_or_default()
            )
        }
    );
    let _ = writeln!(
        s,
        "alpha         {}  scale = {}{}",
        r.lora_alpha.map_or("(not set)".into(), |v| v.to_string()),
        if r.use_rslora {
            "alpha/sqrt(r) (rsLoRA)"
        } else {
            "alpha/r"
        },
        if r.alpha_pattern.is_empty() {
            String::new()
        } else {
            format!(
                "  alpha_pattern {}",
                serde_json::to_string(&r.alpha_pattern).unwrap_or_default()
            )
        }
    );
    let targets = match &r.target_modules {
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().unwrap_or("?").to_string())
            .collect::<Vec<_>>()
            .join(", "),
        Some(serde_json::Value::String(re)) => format!("regex {re}"),
        Some(other) => other.to_string(),
        None => "(not set)".into(),
    };
    let _ = writeln!(s, "targets       {targets}");
}

/// inspect's lines about what the adapter holds: modules, layers, tensors.
fn report_tensors(s: &mut String, r: &Report) {
    use std::fmt::Write;
    if !r.modules.is_empty() {
        let _ = writeln!(
            s,
            "modules       {:<14} {:<12} {:>5} {:>8} {:>10}",
            "module", "layers", "rank", "alpha", "scale"
        );
        for m in &r.modules {
            let layers = if m.layers.is_empty() {
                "-".to_string()
            } else {
                ranges(&m.layers)
            };
            let _ = writeln!(
                s,
                "              {:<14} {:<12} {:>5} {:>8} {:>10.4}",
                m.module, layers, m.rank, m.alpha, m.scale
            );
        }
    }
    let _ = writeln!(
        s,
        "layers        {} ({} layers)",
        if r.layers.is_empty() {
            "-".into()
        } else {
            ranges(&r.layers)
        },
        r.layers.len()
    );
    let dtypes: Vec<String> = r.dtypes.iter().map(|(t, n)| format!("{n} {t}")).collect();
    let _ = writeln!(
        s,
        "tensors       {} ({}), {} parameters, {}",
        r.tensor_count,
        dtypes.join(", "),
        r.parameter_count,
        human_bytes(r.file_size)
    );
}

/// inspect's notices, and whether the adapter converts and merges (with each problem).
fn report_verdict(s: &mut String, r: &Report) {
    use std::fmt::Write;
    for n in &r.notices {
        let _ = writeln!(s, "note          {n}");
    }
    for c in &r.carries {
        let _ = writeln!(s, "carries       {c}");
    }
    let problems = |s: &mut String, ps: &[crate::formats::peft::Problem]| {
        for p in ps {
            let _ = writeln!(s, "  - {}: {}\n    what to do: {}", p.subject, p.why, p.hint);
        }
    };
    if r.convertible {
        let _ = writeln!(s, "converts      yes (a GGUF adapter)");
    } else if r.problems.is_empty() && r.merge_only.is_empty() {
        let _ = writeln!(s, "converts      no: it holds no LoRA weights");
    } else {
        let n = r.problems.len() + r.merge_only.len();
        let _ = writeln!(s, "converts      no, {n} problem(s):");
        problems(s, &r.problems);
        problems(s, &r.merge_only);
    }
    if r.mergeable {
        let _ = writeln!(s, "merges        yes (merge, create-from-base)");
    } else if !r.adapter_only.is_empty() {
        let _ = writeln!(s, "merges        no:");
        problems(s, &r.adapter_only);
    }
}

/// indicatif progress on stderr; hidden when stderr is not a terminal or with --quiet.
struct Bar {
    bar: ProgressBar,
}

impl Bar {
    fn new(quiet: bool) -> Self {
        let bar = if quiet || !std::io::stderr().is_terminal() {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(0)
        };
        bar.set_style(
            ProgressStyle::with_template("{msg:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
                .expect("static template")
                .progress_chars("=> "),
        );
        Bar { bar }
    }
}

impl Progress for Bar {
    fn stage(&self, name: &str, total: u64) {
        self.bar.reset();
        // A stage of unknown length (a server working) gets a spinner and its status text.
        let template = if total == 0 {
            "{spinner} {msg}"
        } else {
            "{msg:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}"
        };
        self.bar.set_style(
            ProgressStyle::with_template(template)
                .expect("static template")
                .progress_chars("=> "),
        );
        if total == 0 {
            self.bar.enable_steady_tick(std::time::Duration::from_millis(120));
        }
        self.bar.set_length(total);
        self.bar.set_message(name.to_string());
    }
    fn status(&self, msg: &str) {
        self.bar.set_message(msg.to_string());
    }
    fn confirm(&self, question: &str, default: bool) -> Option<bool> {
        // Only a person at a terminal can answer; anything else must decide by flags.
        if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
            return None;
        }
        self.bar.suspend(|| {
            dialoguer::Confirm::new()
                .with_prompt(question)
                .default(default)
                .interact_opt()
                .ok()
                .map(|a| a.unwrap_or(false))
        })
    }
    fn advance(&self, n: u64) {
        self.bar.inc(n);
    }
    fn notice(&self, msg: &str) {
        // Notices are part of the result, so they go to stderr even when the bar is hidden.
        self.bar.suspend(|| eprintln!("note: {msg}"));
    }
    fn choose(&self, question: &str, items: &[String]) -> Option<usize> {
        if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
            return None;
        }
        self.bar.suspend(|| {
            dialoguer::Select::new()
                .with_prompt(question)
                .items(items)
                .default(0)
                .interact_opt()
                .ok()
                .flatten()
        })
    }
    fn finish(&self) {
        self.bar.disable_steady_tick();
        self.bar.finish_and_clear();
    }
    fn cancelled(&self) -> bool {
        INTERRUPTED.load(Ordering::SeqCst)
    }
}

/// With a file-size limit (`ulimit -f`), the kernel kills a writer with SIGXFSZ, silently and
/// leaving the temporary output behind. Ignored, the write fails with EFBIG instead, which ends in
/// an error message and a deleted temporary file.
fn ignore_file_size_signal() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to SIG_IGN runs no handler code.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_ranges() {
        assert_eq!(ranges(&[0, 1, 2, 3, 5, 7, 8]), "0-3, 5, 7-8");
        assert_eq!(ranges(&[4]), "4");
    }

    #[test]
    fn adapter_weights() {
        assert_eq!(
            parse_adapter_arg("/no/such/a:0.5").unwrap(),
            (PathBuf::from("/no/such/a"), 0.5)
        );
        assert_eq!(
            parse_adapter_arg("/no/such/b").unwrap(),
            (PathBuf::from("/no/such/b"), 1.0)
        );
        assert_eq!(
            parse_adapter_arg("/no/such/c:-1").unwrap(),
            (PathBuf::from("/no/such/c"), -1.0)
        );
    }
}
