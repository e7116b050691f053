//! Real adapter configs and adapters from public repositories (../shared/corpus, see its INDEX.md):
//! every one must parse, or be refused with a reason that names the file.

use std::path::{Path, PathBuf};

use ollama_tools::formats::peft::{Adapter, LoraConfig, Report};

fn corpus() -> Option<PathBuf> {
    let dir = std::env::var_os("OLLAMA_TOOLS_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus"));
    if dir.is_dir() {
        return Some(dir);
    }
    // CI always has shared/ beside the clone; elsewhere the corpus is optional.
    assert!(
        std::env::var_os("CI").is_none(),
        "corpus not found at {}",
        dir.display()
    );
    eprintln!("corpus not found at {}; set OLLAMA_TOOLS_CORPUS", dir.display());
    None
}

/// The corpus' adapter_config.json files, in name order.
fn config_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("configs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

#[test]
fn every_config_parses_or_is_refused_with_a_reason() {
    let Some(dir) = corpus() else { return };
    let files = config_files(&dir);
    assert!(
        files.len() >= 50,
        "expected the corpus' 57 configs, found {}",
        files.len()
    );
    let (mut lora, mut other_peft, mut refused) = (0, 0, Vec::new());
    for f in &files {
        let text = String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned();
        match LoraConfig::parse(f, &text) {
            Ok(c) if c.peft_type.as_deref() == Some("LORA") => {
                lora += 1;
                assert!(c.r.is_some_and(|r| r > 0), "{}: LORA config without r", f.display());
            }
            Ok(_) => other_peft += 1,
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(&*f.file_name().unwrap().to_string_lossy()),
                    "error must name the file: {msg}"
                );
                assert!(msg.contains("hint:"), "refusal without a hint: {msg}");
                refused.push(f.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
    }
    // Counted file by file (INDEX.md's summary line adds up to 60 for its 57 files): 48 LORA configs;
    // 6 other peft types (ADALORA x2, IA3, PREFIX_TUNING, PROMPT_TUNING, lowercase "none"), which
    // parse and are refused by analyze(); refused at parsing: the MLX-LM config, the JAX/qwix export
    // and a Git LFS pointer.
    assert_eq!(lora, 48, "LORA configs");
    assert_eq!(other_peft, 6, "configs of other peft types");
    assert_eq!(refused.len(), 3, "refused: {refused:?}");
}

/// What each real adapter must come out as: convertible, or refused with this reason.
const ADAPTERS: &[(&str, Option<&str>)] = &[
    ("0112LY__logo-gemma-lora__adapter", None),
    ("Jr1407__SQL__root", None),
    ("Jrajeev88__WithYourMind__root", Some("holds no tensors")),
    (
        "MatthewZhang473__LoRA_Qwen0.5B__fine_tuned_models_20251017_101834_r6_alpha32",
        None,
    ),
    (
        "RifqiCah__Adalora_indonesiaDataset__models_emot_adalora_best",
        Some("`ADALORA`"),
    ),
    (
        "abrhaleyarefaine1997__gpt2-tigrinya-lora__root",
        Some("not part of a supported decoder"),
    ),
    ("anirudh-ak__peft-gpt2__model_lora_model", Some("not a LoRA weight")),
    (
        "hazemzidan4545__medical-qa-fine-tuning-phi-3-5-mini__prompt_tuning_adapter",
        Some("`PROMPT_TUNING`"),
    ),
    ("justbautista__fine-tuning__emotion_lora_model", None),
    ("merkulovsvt__NLP__lora_model", None),
];

#[test]
fn every_real_adapter_converts_or_is_refused_with_a_reason() {
    let Some(dir) = corpus() else { return };
    for (name, refusal) in ADAPTERS {
        let adapter = Adapter::open(&dir.join("adapters").join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let analysis = adapter.analyze();
        let report = Report::new(&adapter, &analysis);
        match refusal {
            None => {
                assert!(report.convertible, "{name} should convert: {:?}", report.problems);
                assert_eq!(
                    report.tensor_count,
                    analysis.modules.len() * 2,
                    "{name}: every tensor is in a pair"
                );
            }
            Some(why) => {
                assert!(!report.convertible, "{name} must be refused");
                let all: Vec<String> = report
                    .problems
                    .iter()
                    .map(|p| format!("{}: {}", p.subject, p.why))
                    .collect();
                assert!(
                    all.iter().any(|p| p.contains(why)),
                    "{name}: expected `{why}` in {all:?}"
                );
                assert!(
                    report.problems.iter().all(|p| !p.hint.is_empty()),
                    "{name}: every problem says what to do"
                );
            }
        }
    }
}

/// How one config would fare with its weights: which of the two ways it can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fate {
    Both,
    MergeOnly,
    AdapterOnly,
    /// Its base is a local path or an unfamiliar name: it depends on the base the user passes.
    BaseUnknown,
    Refused,
}

/// The fate a config's own fields give it (its weights aside): PEFT type, the family of its base
/// (from `base_model_name_or_path`, as validate guesses it), and what it carries. `old_rules`: as
/// before DoRA, full embedding copies, trainable tokens and activated LoRA were supported (refused).
fn fate(c: &LoraConfig, old_rules: bool) -> (Fate, String) {
    use ollama_tools::engine::arch;
    if c.peft_type.as_deref() != Some("LORA") {
        return (Fate::Refused, format!("peft_type {:?}", c.peft_type));
    }
    let family = c
        .base_model_name_or_path
        .as_deref()
        .and_then(ollama_tools::engine::validate::family_of);
    match family {
        None => return (Fate::BaseUnknown, format!("base {:?}", c.base_model_name_or_path)),
        Some(f) if arch::by_name(f).is_none() => return (Fate::Refused, format!("{f} models are not supported")),
        Some(_) => {}
    }
    let full = ["embed_tokens", "lm_head"];
    let others: Vec<&String> = c
        .modules_to_save
        .iter()
        .filter(|m| !full.contains(&m.as_str()))
        .collect();
    if !others.is_empty() {
        return (
            Fate::Refused,
            format!("modules_to_save {others:?} (not a decoder weight)"),
        );
    }
    let merge_only = c.use_dora || !c.modules_to_save.is_empty() || !c.trainable_token_indices.is_empty();
    let adapter_only = !c.alora_invocation_tokens.is_empty();
    match (merge_only, adapter_only) {
        (true, true) => (Fate::Refused, "merge-only and adapter-only at once".into()),
        _ if old_rules && (merge_only || adapter_only) => (Fate::Refused, "refused before".into()),
        (true, false) => (Fate::MergeOnly, String::new()),
        (false, true) => (Fate::AdapterOnly, String::new()),
        (false, false) => (Fate::Both, String::new()),
    }
}

/// The corpus walk: every config's fate now and under the rules before, printed and pinned, so a
/// change in what works shows up here.
#[test]
fn corpus_walk_counts_what_works_now_and_before() {
    let Some(dir) = corpus() else { return };
    let files = config_files(&dir);
    let (mut now, mut before) = (std::collections::BTreeMap::new(), std::collections::BTreeMap::new());
    for f in &files {
        let text = String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned();
        let (fate_now, fate_before, why) = match LoraConfig::parse(f, &text) {
            Ok(c) => {
                let (n, why) = fate(&c, false);
                (n, fate(&c, true).0, why)
            }
            Err(_) => (Fate::Refused, Fate::Refused, "not a PEFT LoRA config".into()),
        };
        eprintln!("{fate_now:?}\t{}\t{why}", f.file_name().unwrap().to_string_lossy());
        *now.entry(fate_now).or_insert(0) += 1;
        *before.entry(fate_before).or_insert(0) += 1;
    }
    eprintln!("corpus walk, {} configs: now {now:?}; before {before:?}", files.len());
    let count = |m: &std::collections::BTreeMap<Fate, usize>, f| m.get(&f).copied().unwrap_or(0);
    // docs/CORPUS.md records these numbers.
    assert_eq!(count(&now, Fate::Both), count(&before, Fate::Both));
    assert_eq!(
        count(&now, Fate::MergeOnly),
        1,
        "TinyLlama with embed_tokens + lm_head copies"
    );
    assert_eq!(count(&before, Fate::Refused), count(&now, Fate::Refused) + 1);
}
