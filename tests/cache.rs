//! The cache policy: builds kept for re-runs and marked used, dropped on request once Ollama holds
//! the model, pruned when unused for 30 days; `ollama-tools cache` lists, prunes and clears.

mod common;
use common::ollama_server::{self, Config, RefuseAdapters};
use common::*;
use predicates::prelude::PredicateBooleanExt;
use predicates::str::contains;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

fn builds(cache: &Path) -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir(cache.join("builds")) else {
        return vec![];
    };
    dir.map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect()
}

#[test]
fn create_keeps_or_drops_its_build_and_the_cache_command_manages_the_rest() {
    let d = tempfile::tempdir().unwrap();
    let (_, store, adapter) = tiny_world(d.path(), "adapter");
    let cache = d.path().join("cache");
    let fake = ollama_server::start(Config {
        version: "0.34.2".into(),
        refuse_adapters: RefuseAdapters::Http400,
        models: vec![("tiny".into(), show_json(TINY, "F32", true))],
        ..Config::default()
    });
    let tool = || {
        let mut cmd = bin();
        cmd.env("OLLAMA_HOST", &fake.url)
            .env("OLLAMA_MODELS", &store)
            .env("OLLAMA_TOOLS_CACHE", &cache);
        cmd
    };
    let create = |extra: &[&str]| {
        tool()
            .args([
                "create-from-base",
                "--base",
                "tiny",
                "--name",
                "m",
                "--force",
                "--adapter",
            ])
            .arg(&adapter)
            .args(extra)
            .assert()
            .success()
    };
    // Kept by default, and marked used when a re-run takes it.
    create(&[]);
    let kept = builds(&cache);
    assert_eq!(kept.len(), 1);
    let long_ago = SystemTime::now() - Duration::from_secs(10 * 86400);
    let sidecar = PathBuf::from(format!("{}.sha256", kept[0].display()));
    for f in [&kept[0], &sidecar] {
        let file = std::fs::File::options().append(true).open(f).unwrap();
        file.set_modified(long_ago).unwrap();
    }
    create(&[]);
    // The build is not rewritten; the cache's listing says it was used now.
    assert_eq!(std::fs::metadata(&kept[0]).unwrap().modified().unwrap(), long_ago);
    let listed = tool().args(["cache", "list", "--json"]).output().unwrap().stdout;
    let listed: serde_json::Value = serde_json::from_slice(&listed).unwrap();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        now - listed[0]["last_used"].as_u64().unwrap() < 3600,
        "reuse marks the build used: {listed}"
    );

    // An entry unused for longer than 30 days goes after the next create.
    let stale = cache.join("builds").join("adapter-0123456789abcdef.gguf");
    std::fs::write(&stale, b"old").unwrap();
    std::fs::File::options()
        .append(true)
        .open(&stale)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(40 * 86400))
        .unwrap();
    create(&[]).stderr(contains("removed 1 cache entries unused for 30 days"));
    assert!(!stale.exists());

    // --no-keep-build: once Ollama holds the model, the build goes.
    create(&["--no-keep-build"]).stderr(contains("from the cache (--no-keep-build)"));
    assert!(builds(&cache).is_empty());
    assert_eq!(
        std::fs::read_dir(cache.join("builds")).unwrap().count(),
        0,
        "the sidecar goes too"
    );

    // The cache command.
    create(&[]);
    tool()
        .args(["cache", "list"])
        .assert()
        .success()
        .stdout(contains("build").and(contains("1 entries")));
    let listed: serde_json::Value =
        serde_json::from_slice(&tool().args(["cache", "list", "--json"]).output().unwrap().stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    tool()
        .args(["cache", "prune", "--older-than", "1"])
        .assert()
        .success()
        .stdout(contains("removed 0 entries"));
    tool()
        .args(["cache", "clear"])
        .assert()
        .success()
        .stdout(contains("removed 1 entries"));
    assert!(builds(&cache).is_empty());
}
