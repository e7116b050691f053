//! Real adapter configs and adapters from public repositories (../shared/corpus, see its INDEX.md):
//! every one must parse, or be refused with a reason that names the file.

use std::path::{Path, PathBuf};

use ollama_tools::peft::{Adapter, LoraConfig, Report};

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

#[test]
fn every_config_parses_or_is_refused_with_a_reason() {
    let Some(dir) = corpus() else { return };
    let mut files: Vec<_> = std::fs::read_dir(dir.join("configs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
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
