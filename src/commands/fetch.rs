//! fetch-adapter: from a Hugging Face repo to an Ollama model. The Hub client ([`crate::remote::hub`])
//! downloads the adapter; this module decides what the Hub cannot: which Ollama base the adapter was
//! trained on, what the model is called, and then creates it as create-from-base does.

use std::path::PathBuf;

use crate::commands::create::{self, Report};
use crate::error::{Error, Result};
use crate::formats::peft::Adapter;
use crate::progress::Progress;
use crate::remote::hub::{self, Fetched, Hub};

/// What to fetch and, unless `download_only`, what to create from it.
pub struct Request<'a> {
    /// `ORG/NAME` on the Hub.
    pub repo: &'a str,
    /// Branch, tag or commit.
    pub revision: &'a str,
    /// Which adapter, when the repo holds several (a folder, `.` for the root, or a `.gguf` file).
    pub subfolder: Option<&'a str>,
    /// The base to create on; `None`: the one the adapter names, after asking (or with `yes`).
    pub base: Option<String>,
    /// The model to create; `None`: the repo's name, lower-cased ([`slug`]).
    pub name: Option<String>,
    /// Take the suggested base without asking.
    pub yes: bool,
    /// Only download; create nothing.
    pub download_only: bool,
}

impl Request<'_> {
    /// The model name to create: the one given, else the repo's slug (none with `--no-create`).
    pub fn model_name(&self, no_create: bool) -> Option<String> {
        self.name.clone().or_else(|| (!no_create).then(|| slug(self.repo)))
    }
}

/// Downloads the adapter of `req.repo` (or finds it in the Hugging Face cache). `create` holds the
/// create-from-base options the model will get; they are checked first (the name to push among
/// them), before a possibly long download.
pub fn download(hub: &Hub, req: &Request, create: &create::Options, ui: &dyn Progress) -> Result<Fetched> {
    // --download-only ignores the create options, --push among them.
    create::check_push(
        create.name.as_deref(),
        create.push && !req.download_only,
        create.no_create,
    )?;
    hub::fetch_adapter(hub, req.repo, req.revision, req.subfolder, ui)
}

/// Creates the Ollama model from a fetched adapter: the base chosen ([`choose_base`]), then
/// create-from-base with `create` (whose base and adapter this fills in).
pub fn create(req: &Request, fetched: &Fetched, mut create: create::Options, ui: &dyn Progress) -> Result<Report> {
    let adapter_base = if fetched.gguf {
        None
    } else {
        Adapter::open(&fetched.path)?.config.base_model_name_or_path.clone()
    };
    create.base = choose_base(req.base.as_deref(), adapter_base.as_deref(), req.yes, ui)?;
    create.adapter = Some(PathBuf::from(&fetched.path));
    create::create(&create, ui)
}

/// Which base to create on: the one given, else the Ollama model this adapter's
/// `base_model_name_or_path` suggests, confirmed by the user (or by `--yes`).
pub fn choose_base(given: Option<&str>, adapter_base: Option<&str>, yes: bool, ui: &dyn Progress) -> Result<String> {
    if let Some(b) = given {
        return Ok(b.to_string());
    }
    let Some(id) = adapter_base.filter(|s| !s.is_empty()) else {
        return Err(Error::Usage(
            "the adapter does not name its base model (base_model_name_or_path): pass --base".into(),
        ));
    };
    let Some(suggested) = suggest_base(id) else {
        return Err(Error::Usage(format!(
            "the adapter was trained on `{id}`, which this tool cannot match to an Ollama library model: pass --base (an Ollama name or the base's GGUF file)"
        )));
    };
    if yes {
        return Ok(suggested);
    }
    match ui.confirm(
        &format!("The adapter was trained on `{id}`. Use the Ollama model `{suggested}` as the base?"),
        true,
    ) {
        Some(true) => Ok(suggested),
        Some(false) => Err(Error::Usage("no base chosen: pass --base".into())),
        None => Err(Error::Usage(format!(
            "the adapter was trained on `{id}`; its Ollama base is probably `{suggested}`: pass --base {suggested} (or --yes to take it)"
        ))),
    }
}

/// The Ollama library model for a Hugging Face base model id, for the families Ollama ships:
/// `meta-llama/Llama-3.2-3B-Instruct` -> `llama3.2:3b`. Unsloth and bnb-4bit mirrors map to their
/// originals. `None` when the id is not one of them.
pub fn suggest_base(hf_id: &str) -> Option<String> {
    let name = hf_id.trim_end_matches('/').rsplit('/').next()?.to_ascii_lowercase();
    // Mirrors' suffixes name a quantization or a packaging, not another model.
    let mut name = name.as_str();
    for suffix in ["-bnb-4bit", "-unsloth", "-4bit", "-8bit", "-gptq", "-awq", "-hf"] {
        name = name.strip_suffix(suffix).unwrap_or(name);
    }
    let name = name.strip_suffix("-unsloth").unwrap_or(name);
    type Rule = (&'static str, fn(&regex::Captures) -> String);
    let table: &[Rule] = &[
        (r"^(?:meta-)?llama-?3\.2-(1b|3b)(?:-instruct)?$", |c| {
            format!("llama3.2:{}", &c[1])
        }),
        (r"^(?:meta-)?llama-?3\.1-(8b|70b|405b)(?:-instruct)?$", |c| {
            format!("llama3.1:{}", &c[1])
        }),
        (r"^(?:meta-)?llama-?3\.3-(70b)(?:-instruct)?$", |c| {
            format!("llama3.3:{}", &c[1])
        }),
        (r"^(?:meta-)?llama-?3-(8b|70b)(?:-instruct)?$", |c| {
            format!("llama3:{}", &c[1])
        }),
        (r"^qwen2\.5-coder-(0\.5b|1\.5b|3b|7b|14b|32b)(?:-instruct)?$", |c| {
            format!("qwen2.5-coder:{}", &c[1])
        }),
        (r"^qwen2\.5-(0\.5b|1\.5b|3b|7b|14b|32b|72b)(?:-instruct)?$", |c| {
            format!("qwen2.5:{}", &c[1])
        }),
        (r"^qwen3-(0\.6b|1\.7b|4b|8b|14b|32b)(?:-base|-instruct)?$", |c| {
            format!("qwen3:{}", &c[1])
        }),
        // Qwen3's mixtures of experts: Ollama names them by total size.
        (
            r"^qwen3-(30b|235b)-a(?:3|22)b(?:-base|-instruct-2507|-thinking-2507)?$",
            |c| format!("qwen3:{}", &c[1]),
        ),
        (r"^mixtral-(8x7b|8x22b)(?:-instruct)?(?:-v0\.1)?$", |c| {
            format!("mixtral:{}", &c[1])
        }),
        (r"^gpt-oss-(20b|120b)$", |c| format!("gpt-oss:{}", &c[1])),
        (r"^llama-4-(scout|maverick)-17b-(?:16|128)e(?:-instruct)?$", |c| {
            format!("llama4:{}", &c[1])
        }),
        (r"^gemma-?2-(2b|9b|27b)(?:-it)?$", |c| format!("gemma2:{}", &c[1])),
        (r"^gemma-?3-(1b|4b|12b|27b)(?:-it|-pt)?$", |c| {
            format!("gemma3:{}", &c[1])
        }),
        (r"^phi-?3(\.5)?-(mini|medium)-(?:4k|128k)?-?instruct$", |c| {
            if c.get(1).is_some() {
                "phi3.5".to_string()
            } else {
                format!("phi3:{}", &c[2])
            }
        }),
        (r"^mistral-7b(?:-instruct)?(?:-v0\.[1-3])?$", |_| {
            "mistral:7b".to_string()
        }),
        // The 2026 families, dense sizes only (Gemma 4 26B-A4B and Qwen3.5's A3B sizes are MoE).
        (r"^gemma-?4-(e2b|e4b|31b)(?:-it|-pt)?$", |c| format!("gemma4:{}", &c[1])),
        (r"^qwen3\.5-(0\.8b|2b|4b|9b|27b)(?:-base|-instruct)?$", |c| {
            format!("qwen3.5:{}", &c[1])
        }),
        (
            r"^ministral-3-(3b|8b|14b)(?:-(?:base|instruct|reasoning)(?:-2512)?)?$",
            |c| format!("ministral-3:{}", &c[1]),
        ),
        (r"^olmo-2-1124-(7b|13b)(?:-instruct|-sft|-dpo)?$", |c| {
            format!("olmo2:{}", &c[1])
        }),
        (r"^granite-3\.3-(2b|8b)(?:-instruct|-base)?$", |c| {
            format!("granite3.3:{}", &c[1])
        }),
        // Granite 4 micro is the dense, all-attention size (the -h sizes are Mamba hybrids).
        (r"^granite-4\.0-micro(?:-base)?$", |_| "granite4:micro".to_string()),
    ];
    table.iter().find_map(|(p, f)| {
        regex::Regex::new(p)
            .expect("static pattern")
            .captures(name)
            .map(|c| f(&c))
    })
}

/// A model name from a repo name: `org/My_Adapter v2` -> `my_adapter-v2`.
pub fn slug(repo: &str) -> String {
    let name = repo.rsplit('/').next().unwrap_or(repo).to_ascii_lowercase();
    let mut out = String::new();
    for c in name.chars() {
        let c = if c.is_ascii_alphanumeric() || "-_.".contains(c) {
            c
        } else {
            '-'
        };
        if !(c == '-' && out.ends_with('-')) {
            out.push(c);
        }
    }
    let out = out.trim_matches(['-', '.', '_']).to_string();
    if out.is_empty() { "adapter".into() } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_suggestions() {
        for (id, want) in [
            ("meta-llama/Llama-3.2-3B-Instruct", Some("llama3.2:3b")),
            ("meta-llama/Llama-3.2-1B", Some("llama3.2:1b")),
            ("unsloth/Llama-3.2-3B-Instruct-bnb-4bit", Some("llama3.2:3b")),
            ("unsloth/llama-3-8b-bnb-4bit", Some("llama3:8b")),
            ("meta-llama/Meta-Llama-3.1-8B-Instruct", Some("llama3.1:8b")),
            ("Qwen/Qwen2.5-7B-Instruct", Some("qwen2.5:7b")),
            ("unsloth/Qwen2.5-Coder-1.5B-Instruct", Some("qwen2.5-coder:1.5b")),
            ("Qwen/Qwen3-4B", Some("qwen3:4b")),
            ("google/gemma-2-9b-it", Some("gemma2:9b")),
            ("unsloth/gemma-3-4b-it-unsloth-bnb-4bit", Some("gemma3:4b")),
            ("microsoft/Phi-3-mini-4k-instruct", Some("phi3:mini")),
            ("microsoft/Phi-3.5-mini-instruct", Some("phi3.5")),
            ("mistralai/Mistral-7B-Instruct-v0.3", Some("mistral:7b")),
            ("google/gemma-4-E4B-it", Some("gemma4:e4b")),
            ("unsloth/gemma-4-31b-it-unsloth-bnb-4bit", Some("gemma4:31b")),
            ("google/gemma-4-26B-A4B-it", None),
            ("Qwen/Qwen3.5-9B", Some("qwen3.5:9b")),
            ("unsloth/Qwen3.5-0.8B", Some("qwen3.5:0.8b")),
            ("unsloth/Ministral-3-3B-Instruct-2512", Some("ministral-3:3b")),
            ("mistralai/Ministral-3-14B-Reasoning-2512", Some("ministral-3:14b")),
            ("allenai/OLMo-2-1124-7B-Instruct", Some("olmo2:7b")),
            ("ibm-granite/granite-3.3-8b-instruct", Some("granite3.3:8b")),
            ("ibm-granite/granite-4.0-micro", Some("granite4:micro")),
            ("Qwen/Qwen3-30B-A3B", Some("qwen3:30b")),
            ("unsloth/Qwen3-30B-A3B-Instruct-2507", Some("qwen3:30b")),
            ("mistralai/Mixtral-8x7B-Instruct-v0.1", Some("mixtral:8x7b")),
            ("openai/gpt-oss-20b", Some("gpt-oss:20b")),
            ("meta-llama/Llama-4-Scout-17B-16E-Instruct", Some("llama4:scout")),
            ("ibm-granite/granite-4.0-h-tiny", None),
            ("TinyLlama/TinyLlama-1.1B-Chat-v1.0", None),
        ] {
            assert_eq!(suggest_base(id).as_deref(), want, "{id}");
        }
    }

    #[test]
    fn slugs() {
        assert_eq!(slug("org/My_Adapter v2"), "my_adapter-v2");
        assert_eq!(slug("org/--x--"), "x");
    }
}
