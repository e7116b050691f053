//! The example shipped in `examples/` and the README's first command on it: the files are there and
//! are what the README says; the command's steps, read from README.md and run in a temporary folder,
//! validate, merge and write a Modelfile that Ollama's reader (the independent port in
//! `common::modelfile_parser`) turns into a request without adapters. The merged model in llama.cpp
//! is tests/interop/test_example_interop.py's part.

mod common;
use common::modelfile_parser;
use common::*;
use ollama_tools::formats::gguf::{self, GgmlType};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;

const BASE: &str = "examples/tiny-llama-q4_k_m.gguf";
const ADAPTER: &str = "examples/tiny-llama-adapter";
/// What the README's command reads, relative to the repository.
const LINKED: [&str; 2] = ["examples", "templates"];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Shell words of a plain command line: whitespace-separated, `"..."` quoting (no escapes), `&&`
/// between steps. Anything else a shell would interpret is refused, so the test runs what a shell
/// would.
fn shell_words(line: &str) -> Vec<String> {
    let (mut words, mut cur, mut quoted, mut in_word) = (Vec::new(), String::new(), false, false);
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' | '\\' | '$' | '`' | ';' | '|' | '<' | '>' | '(' | ')' | '*' if !quoted => {
                panic!("README command uses `{c}`: this reader handles plain words, \"quotes\" and &&")
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    assert!(!quoted, "unterminated quote in {line}");
    if in_word {
        words.push(cur);
    }
    words
}

/// The tool's arguments of each step of the README's first command (the first ```sh block under
/// "## Try it": `cargo run ... -- ARGS` steps joined by `&&`).
fn readme_steps() -> Vec<Vec<String>> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = readme
        .split_once("\n## Try it\n")
        .expect("README.md has a '## Try it' section")
        .1;
    let block = section.split_once("```sh\n").expect("a ```sh block under Try it").1;
    let block = block.split_once("```").unwrap().0;
    shell_words(block)
        .split(|w| w == "&&")
        .map(|step| {
            assert_eq!(
                step[..2],
                ["cargo", "run"],
                "README step does not run the tool with cargo: {step:?}"
            );
            let at = step
                .iter()
                .position(|w| w == "--")
                .expect("`--` before the tool's arguments");
            step[at + 1..].to_vec()
        })
        .collect()
}

/// The value after `flag` in a step.
fn opt<'a>(step: &'a [String], flag: &str) -> &'a str {
    let at = step
        .iter()
        .position(|w| w == flag)
        .unwrap_or_else(|| panic!("{flag} missing in {step:?}"));
    &step[at + 1]
}

struct Work {
    d: tempfile::TempDir,
}

impl Work {
    /// A folder with links to the repository's examples/ and templates/, so the README's relative
    /// paths work and everything the command writes lands outside the repository.
    fn new() -> Self {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("work")).unwrap();
        for l in LINKED {
            std::os::unix::fs::symlink(repo().join(l), d.path().join("work").join(l)).unwrap();
        }
        Work { d }
    }
    fn dir(&self) -> PathBuf {
        self.d.path().join("work")
    }
    fn cache(&self) -> PathBuf {
        self.d.path().join("cache")
    }
    /// The tool with `args`, offline: its own cache, an empty model store, and a server address
    /// where nothing listens.
    fn run(&self, args: &[String]) -> Output {
        let out = bin()
            .args(args)
            .current_dir(self.dir())
            .env("OLLAMA_TOOLS_CACHE", self.cache())
            .env("OLLAMA_MODELS", self.d.path().join("store"))
            .env("OLLAMA_HOST", "http://127.0.0.1:9")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ollama-tools {args:?} failed:\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
    /// The `/api/create` body `ollama create -f` builds from a Modelfile, by Ollama's reader.
    fn request(&self, modelfile: &str) -> Value {
        let text = std::fs::read_to_string(self.dir().join(modelfile)).unwrap();
        let cmds = modelfile_parser::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        modelfile_parser::create_request(&cmds).unwrap()
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Per tensor: its type and its bytes.
fn tensors(path: &Path) -> Vec<(String, GgmlType, Vec<u8>)> {
    let h = gguf::read_header(path).unwrap();
    let file = std::fs::File::open(path).unwrap();
    h.tensors
        .iter()
        .map(|t| {
            let mut buf = Vec::new();
            gguf::read_tensor_data(&file, &h, t, &mut buf).unwrap();
            (t.name.clone(), t.ty, buf)
        })
        .collect()
}

#[test]
fn shipped_example_is_what_the_readme_says() {
    let base = repo().join(BASE);
    let size = std::fs::metadata(&base).unwrap().len();
    assert!(
        size < 4 << 20,
        "{BASE} is {size} bytes: the example is committed, keep it a few MB"
    );
    let h = gguf::read_header(&base).unwrap();
    assert_eq!(h.get_str("general.architecture"), Some("llama"));
    assert_eq!(
        h.get("general.file_type").and_then(|v| v.as_u64()),
        Some(15),
        "MOSTLY_Q4_K_M"
    );
    assert_eq!(
        h.get_str("tokenizer.ggml.model"),
        Some("llama"),
        "a SentencePiece vocabulary"
    );
    let tokens = h
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.as_array())
        .map(|a| a.len());
    assert_eq!(tokens, Some(512));
    assert!(
        h.get_str("tokenizer.chat_template")
            .is_some_and(|t| t.contains("<|im_start|>"))
    );
    let types: std::collections::BTreeSet<String> = h.tensors.iter().map(|t| t.ty.name()).collect();
    assert_eq!(
        types,
        ["F32", "Q4_K", "Q6_K"].map(String::from).into(),
        "the Q4_K_M mix"
    );
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        assert!(repo().join(ADAPTER).join(f).is_file(), "{ADAPTER}/{f} missing");
    }
    assert!(repo().join("examples/make_example.py").is_file());
}

#[test]
fn readme_first_command_validates_merges_and_writes_a_modelfile_without_adapter() {
    let steps = readme_steps();
    let names: Vec<&str> = steps.iter().map(|s| s[0].as_str()).collect();
    assert_eq!(
        names,
        ["validate", "create-from-base"],
        "the README's first command changed: {steps:?}"
    );
    let (validate, create) = (&steps[0], &steps[1]);
    assert_eq!((validate[1].as_str(), opt(validate, "--base")), (ADAPTER, BASE));
    assert_eq!((opt(create, "--adapter"), opt(create, "--base")), (ADAPTER, BASE));
    assert!(
        create.iter().any(|w| w == "--no-create"),
        "the first command must need no Ollama server"
    );

    let w = Work::new();
    let v = stdout(&w.run(validate));
    assert!(v.contains("4 layers, 16 tensors, all shapes match"), "{v}");
    assert!(v.contains("base tensor types Q4_K, Q6_K take an adapter"), "{v}");
    let c = stdout(&w.run(create));
    assert!(c.contains("merged into the base"), "{c}");

    // What `ollama create NAME -f Modelfile` would send: FROM the merged file, no adapter (which
    // Ollama 0.34.1 and later refuse), the README's template and system prompt.
    let req = w.request(opt(create, "--out-modelfile"));
    assert!(req.get("adapters").is_none(), "{req}");
    let from = PathBuf::from(req["from"].as_str().unwrap());
    assert_eq!(from.parent(), Some(w.cache().join("builds").as_path()), "FROM {from:?}");
    assert!(
        from.file_name().unwrap().to_str().unwrap().starts_with("merge-"),
        "{from:?}"
    );
    let template = std::fs::read_to_string(repo().join(opt(create, "--template"))).unwrap();
    assert_eq!(req["template"], template.as_str());
    assert_eq!(req["system"], opt(create, "--system"));

    // The merge kept every type; it changed q and v of each layer and copied everything else.
    let (base, merged) = (tensors(&repo().join(BASE)), tensors(&from));
    assert_eq!(base.len(), merged.len());
    let mut changed = Vec::new();
    for ((name, ty, data), (m_name, m_ty, m_data)) in base.iter().zip(&merged) {
        assert_eq!((name, ty), (m_name, m_ty), "tensor order or type changed");
        if data != m_data {
            changed.push(name.clone());
        }
    }
    let mut expected: Vec<String> = (0..4)
        .flat_map(|i| [format!("blk.{i}.attn_q.weight"), format!("blk.{i}.attn_v.weight")])
        .collect();
    expected.sort();
    changed.sort();
    assert_eq!(changed, expected);
}

#[test]
fn readme_older_ollama_path_is_an_adapter_layer() {
    // The README's sentence for Ollama before 0.34.1: the same create step with `--mode adapter`.
    let mut create = readme_steps().pop().unwrap();
    create.extend(["--mode", "adapter"].map(String::from));
    let w = Work::new();
    let c = stdout(&w.run(&create));
    assert!(c.contains("adapter layer"), "{c}");
    let req = w.request(opt(&create, "--out-modelfile"));
    assert_eq!(req["from"], w.dir().join(BASE).display().to_string(), "{req}");
    let adapters = req["adapters"].as_array().unwrap();
    assert_eq!(adapters.len(), 1);
    let adapter = Path::new(adapters[0].as_str().unwrap());
    assert_eq!(adapter.parent(), Some(w.cache().join("builds").as_path()));
    let h = gguf::read_header(adapter).unwrap();
    assert_eq!(h.get_str("general.type"), Some("adapter"));
    assert_eq!(h.tensors.len(), 16, "8 lora_a / lora_b pairs");
}
