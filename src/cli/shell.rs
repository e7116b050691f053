//! Shell completion scripts and man pages, made from the command line's own definition (clap), so
//! they list exactly the commands and options this binary takes.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::CommandFactory;

use crate::engine::{convert, output};
use crate::error::{Error, Result};

/// The completion script for `shell`. Made in memory: clap_complete panics on a failed write, and
/// stdout may be a closed pipe.
pub fn completions(shell: clap_complete::Shell) -> Vec<u8> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut super::Cli::command(), "ollama-tools", &mut script);
    if shell != clap_complete::Shell::Bash {
        return script;
    }
    // clap_complete (4.6.11, clap issue #6421) spells the state of a hyphenated binary's
    // subcommands `ollama__tools__subcmd__convert` where it tracks it and
    // `ollama__subcmd__tools__subcmd__convert` in the arms that complete it, so no option after a
    // subcommand would complete. The arms are respelled; once clap fixes it this changes nothing.
    String::from_utf8_lossy(&script)
        .replace("ollama__subcmd__tools", "ollama__tools")
        .into_bytes()
}

/// The man pages, as (file name, roff text): `ollama-tools.1`, and `ollama-tools-<command>.1` for
/// every command and `ollama-tools-<command>-<action>.1` for their own subcommands (hidden ones and
/// `help` left out).
pub fn man_pages() -> Vec<(String, Vec<u8>)> {
    let mut cmd = super::Cli::command().disable_help_subcommand(true);
    // Built, every subcommand has its display name (`ollama-tools-convert`) and its usage line.
    cmd.build();
    let mut pages = Vec::new();
    collect(&cmd, &mut pages);
    pages
}

fn collect(cmd: &clap::Command, pages: &mut Vec<(String, Vec<u8>)>) {
    let man = clap_mangen::Man::new(cmd.clone())
        .source(format!("ollama-tools {}", env!("CARGO_PKG_VERSION")))
        .manual("ollama-tools");
    let mut text = Vec::new();
    man.render(&mut text).expect("rendering into memory does not fail");
    pages.push((man.get_filename(), text));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        collect(sub, pages);
    }
}

/// Writes every man page into `dir` (created if missing). Every name is checked first, so a page
/// that exists stops the run before any is written (unless `force`); each page is written to a
/// temporary file beside it and renamed, so none is ever half-written.
pub fn write_man_pages(dir: &Path, force: bool) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let pages = man_pages();
    let paths: Vec<PathBuf> = pages.iter().map(|(name, _)| dir.join(name)).collect();
    for path in &paths {
        convert::check_output(path, "--dir", force, &[])?;
    }
    for ((_, text), path) in pages.iter().zip(&paths) {
        let tmp = output::temp_beside(path)?;
        (&mut tmp.as_file()).write_all(text).map_err(|e| Error::io(path, e))?;
        output::persist(tmp, path, force)?;
    }
    Ok(paths)
}
