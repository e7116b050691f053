//! `completions`, `man` and install.sh: what a user's shell and `man` get.

mod common;
use clap::CommandFactory;
use common::bin;
use predicates::str::contains;
use std::path::Path;

/// The names of the visible commands and of their subcommands (`cache-list`), from the CLI's
/// definition: a command added later is covered without touching this test.
fn commands(cmd: &clap::Command, prefix: &str, out: &mut Vec<String>) {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("{prefix}{}", sub.get_name());
        out.push(name.clone());
        commands(sub, &format!("{name}-"), out);
    }
}

fn all_commands() -> Vec<String> {
    let mut names = Vec::new();
    commands(&ollama_tools::cli::Cli::command(), "", &mut names);
    names
}

#[test]
fn every_shells_script_names_every_command_and_the_options() {
    let names = all_commands();
    assert!(
        names.contains(&"create-from-base".to_string()) && names.contains(&"cache-list".to_string()),
        "{names:?}"
    );
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let out = bin()
            .args(["completions", shell])
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        let script = String::from_utf8(out).unwrap();
        for name in &names {
            // Nested commands appear by their own name (`list` under `cache`).
            let own = name.rsplit('-').next().unwrap();
            let word = if name.starts_with("cache-") { own } else { name.as_str() };
            assert!(script.contains(word), "{shell}: no `{word}`");
        }
        for option in ["push", "insecure", "quantize", "out-modelfile"] {
            // fish names long options as `-l push`.
            let written = if shell == "fish" {
                format!("-l {option}")
            } else {
                format!("--{option}")
            };
            assert!(script.contains(&written), "{shell}: no `{written}`");
        }
    }
    bin()
        .args(["completions", "tcsh"])
        .assert()
        .code(2)
        .stderr(contains("possible values: bash, elvish, fish, powershell, zsh"));
}

/// What bash's completion offers for `line` (the word being completed last), with the script that
/// `completions bash` prints loaded as bash-completion loads it.
fn bash_completes(line: &[&str]) -> Vec<String> {
    let script = bin().args(["completions", "bash"]).output().unwrap().stdout;
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("ollama-tools.bash");
    std::fs::write(&file, script).unwrap();
    let words = line.iter().map(|w| format!("'{w}'")).collect::<Vec<_>>().join(" ");
    let (cword, cur, prev) = (line.len() - 1, line[line.len() - 1], line[line.len() - 2]);
    let probe = format!(
        "source '{}'; COMP_WORDS=({words}); COMP_CWORD={cword}; _ollama__tools ollama-tools '{cur}' '{prev}'; \
         printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        file.display()
    );
    let out = std::process::Command::new("bash")
        .args(["--norc", "-c", &probe])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completes_commands_and_each_commands_own_options() {
    assert_eq!(bash_completes(&["ollama-tools", "create-f"]), ["create-from-base"]);
    assert_eq!(
        bash_completes(&["ollama-tools", "create-from-base", "--pu"]),
        ["--push"]
    );
    assert_eq!(
        bash_completes(&["ollama-tools", "fetch-adapter", "--ins"]),
        ["--insecure"]
    );
    assert_eq!(bash_completes(&["ollama-tools", "cache", "pr"]), ["prune"]);
    assert_eq!(
        bash_completes(&["ollama-tools", "cache", "prune", "--old"]),
        ["--older-than"]
    );
    assert_eq!(bash_completes(&["ollama-tools", "completions", "fi"]), ["fish"]);
}

#[test]
fn man_writes_a_page_per_command_and_replaces_none_without_force() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("man1");
    bin()
        .args(["man", "--dir"])
        .arg(&dir)
        .assert()
        .success()
        .stdout(contains("wrote "));
    let mut written: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    let mut expected: Vec<String> = all_commands().iter().map(|c| format!("ollama-tools-{c}.1")).collect();
    expected.push("ollama-tools.1".into());
    expected.sort();
    assert_eq!(written, expected);
    let page = std::fs::read_to_string(dir.join("ollama-tools-create-from-base.1")).unwrap();
    assert!(page.starts_with(".ie \\n(.g .ds Aq"), "roff: {}", &page[..80]);
    assert!(
        page.contains(".TH ollama-tools-create-from-base 1") && page.contains("\\-\\-push"),
        "{page}"
    );
    let top = std::fs::read_to_string(dir.join("ollama-tools.1")).unwrap();
    assert!(
        top.contains("ollama\\-tools\\-fetch\\-adapter(1)"),
        "the top page lists the commands: {top}"
    );

    // One page edited by hand: without --force nothing is replaced, not even the others.
    std::fs::write(dir.join("ollama-tools-merge.1"), "mine").unwrap();
    std::fs::remove_file(dir.join("ollama-tools-inspect.1")).unwrap();
    bin()
        .args(["man", "--dir"])
        .arg(&dir)
        .assert()
        .code(1)
        .stderr(contains("ollama-tools.1: already exists"))
        .stderr(contains("--force"));
    assert_eq!(
        std::fs::read_to_string(dir.join("ollama-tools-merge.1")).unwrap(),
        "mine"
    );
    assert!(!dir.join("ollama-tools-inspect.1").exists());
    bin().args(["man", "--force", "--dir"]).arg(&dir).assert().success();
    assert!(
        std::fs::read_to_string(dir.join("ollama-tools-merge.1"))
            .unwrap()
            .contains(".TH")
    );
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), expected.len(), "no temporary file left: {left:?}");
}

#[test]
fn install_sh_installs_the_binary_completions_and_man_pages_under_prefix() {
    let d = tempfile::tempdir().unwrap();
    let prefix = d.path().join("prefix");
    let exe = assert_cmd::cargo::cargo_bin("ollama-tools");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("install.sh");
    // The test's own binary, not a build: cargo holds the build lock while tests run.
    let out = std::process::Command::new("sh")
        .arg(&script)
        .env("PREFIX", &prefix)
        .env("OLLAMA_TOOLS_BIN", &exe)
        .env("HOME", d.path())
        .env("PATH", format!("{}:/usr/bin:/bin", prefix.join("bin").display()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let share = prefix.join("share");
    let completions = [
        ("bash", share.join("bash-completion/completions/ollama-tools")),
        ("zsh", share.join("zsh/site-functions/_ollama-tools")),
        ("fish", share.join("fish/vendor_completions.d/ollama-tools.fish")),
    ];
    for (shell, path) in &completions {
        let expected = bin().args(["completions", shell]).output().unwrap().stdout;
        assert_eq!(std::fs::read(path).unwrap(), expected, "{}", path.display());
        assert!(stdout.contains(&format!("installed {}", path.display())), "{stdout}");
    }
    let installed = prefix.join("bin/ollama-tools");
    assert_eq!(std::fs::read(&installed).unwrap(), std::fs::read(&exe).unwrap());
    let version = std::process::Command::new(&installed)
        .arg("--version")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&version.stdout).starts_with("ollama-tools "),
        "{version:?}"
    );
    for c in all_commands() {
        let page = share.join(format!("man/man1/ollama-tools-{c}.1"));
        assert!(
            page.is_file() && stdout.contains(&format!("installed {}", page.display())),
            "{c}: {stdout}"
        );
    }
    assert!(share.join("man/man1/ollama-tools.1").is_file());
    assert!(!stdout.contains("is not on your PATH"), "{stdout}");
    assert!(
        stdout.contains("fpath=("),
        "a prefix zsh does not read says how: {stdout}"
    );

    // Run again over the installed files: replaced, not refused.
    let again = std::process::Command::new("sh")
        .arg(&script)
        .env("PREFIX", &prefix)
        .env("OLLAMA_TOOLS_BIN", &exe)
        .env("HOME", d.path())
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
}
