//! Download throughput of `fetch-adapter` against curl, from the local test Hub
//! (tests/common/hub_server.rs). A benchmark, not a test: ignored by default, never fails on timing.
//!
//! ```sh
//! cargo test --release --test fetch_bench -- --ignored --nocapture     # or: bash benches/fetch.sh
//! ```
//!
//! The repo `bench/lora-512m` holds `adapter_config.json` (small, kept in git) and a 512 MiB
//! `adapter_model.safetensors` (LFS: the resolve URL redirects to the Hub's "CDN" host; pseudo-random
//! bytes, not a valid safetensors file, which `--download-only` does not read). Three runs each,
//! interleaved, of
//!   a. `ollama-tools fetch-adapter bench/lora-512m --download-only` with `HF_ENDPOINT` = the Hub and a
//!      fresh `HF_HOME`: repo listing, `HEAD` + `GET` of the config, `HEAD` of the weights, `GET` from
//!      the CDN, sha256 of the result, links into the cache;
//!   b. `curl -sSL -o FILE -w '%{time_starttransfer} %{time_total}' <resolve URL of the weights>`: the
//!      same redirect and body, nothing else;
//! each under `/usr/bin/time -v` when it is there (peak RSS, CPU time). Prints for each the wall times
//! and their median as MB/s (MB = 10^6 bytes of the weights file), and the body phase alone: for a,
//! from the `.incomplete` file's creation to its full size (polled every 2 ms), then the time to the
//! checked blob; for b, curl's `time_total - time_starttransfer`. Then the ratios a / b. The test
//! server has a cost of its own on every request for the file (it clones the repo and hashes the
//! 512 MiB file to answer), paid by a and b alike; one `curl -sI` of the resolve URL is timed to show it.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::hub_server::{self, File, Repo};

const REPO: &str = "bench/lora-512m";
const SIZE: usize = 512 << 20;
const RUNS: usize = 3;

/// Pseudo-random bytes (xorshift64*), so nothing along the way can compress or dedupe them.
fn weights(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(n);
    out
}

/// `/usr/bin/time -v` when present (GNU time), for the peak RSS.
fn gnu_time() -> Option<PathBuf> {
    let p = Path::new("/usr/bin/time");
    let ok = p.is_file()
        && Command::new(p)
            .args(["-v", "true"])
            .output()
            .is_ok_and(|o| o.status.success());
    ok.then(|| p.to_path_buf())
}

fn have(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

struct Run {
    secs: f64,
    rss_kib: Option<u64>,
    /// User + system CPU seconds.
    cpu: Option<f64>,
    /// Seconds from the first to the last byte of the weights' body.
    body: Option<f64>,
    /// fetch-adapter only: seconds from the last byte to the checked blob in place (the sha256).
    verify: Option<f64>,
    stdout: String,
}

/// Runs `cmd` (under GNU time when given), timing the wall clock around it. With `blob`, watches
/// `blob.incomplete` grow (polled every 2 ms) and `blob` appear, for the body and check phases.
fn timed(time: Option<&Path>, cmd: Command, scratch: &Path, blob: Option<&Path>) -> Run {
    let report = scratch.join("time.txt");
    let _ = std::fs::remove_file(&report);
    let mut cmd = match time {
        Some(t) => {
            let mut w = Command::new(t);
            w.arg("-v")
                .arg("-o")
                .arg(&report)
                .arg(cmd.get_program())
                .args(cmd.get_args());
            for (k, v) in cmd.get_envs() {
                match v {
                    Some(v) => w.env(k, v),
                    None => w.env_remove(k),
                };
            }
            w
        }
        None => cmd,
    };
    let partial = blob.map(|b| PathBuf::from(format!("{}.incomplete", b.display())));
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command starts");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let (out, err) = (
        drain(Box::new(child.stdout.take().unwrap())),
        drain(Box::new(child.stderr.take().unwrap())),
    );
    let (mut first, mut last, mut placed) = (None, None, None);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if let (Some(partial), Some(blob)) = (&partial, blob) {
            let t = start.elapsed().as_secs_f64();
            if let Ok(m) = std::fs::metadata(partial) {
                first = first.or(Some(t));
                if m.len() >= SIZE as u64 {
                    last = last.or(Some(t));
                }
            } else if placed.is_none() && blob.exists() {
                placed = Some(t);
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let secs = start.elapsed().as_secs_f64();
    let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
    assert!(status.success(), "{cmd:?} failed: {status}\n{stderr}");
    let report = std::fs::read_to_string(&report).unwrap_or_default();
    let field = |name: &str| {
        report
            .lines()
            .find_map(|l| l.trim().strip_prefix(name).and_then(|v| v.trim().parse::<f64>().ok()))
    };
    let rss_kib = field("Maximum resident set size (kbytes):").map(|k| k as u64);
    let cpu = field("User time (seconds):")
        .zip(field("System time (seconds):"))
        .map(|(u, s)| u + s);
    let body = first.zip(last).map(|(f, l)| l - f);
    let verify = last.zip(placed.or(Some(secs))).map(|(l, p)| p - l);
    Run {
        secs,
        rss_kib,
        cpu,
        body,
        verify,
        stdout,
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[s.len() / 2]
}

fn mb_s(secs: f64) -> f64 {
    SIZE as f64 / 1e6 / secs
}

fn fmt_times(v: &[f64]) -> String {
    v.iter().map(|s| format!("{s:.3}")).collect::<Vec<_>>().join(", ")
}

/// Peak RSS (the largest of the runs) and median CPU time, from GNU time.
fn fmt_usage(runs: &[Run]) -> String {
    let cpu: Vec<f64> = runs.iter().filter_map(|r| r.cpu).collect();
    match runs.iter().filter_map(|r| r.rss_kib).max() {
        Some(k) if !cpu.is_empty() => format!("peak RSS {:.1} MiB, CPU {:.2} s", k as f64 / 1024.0, median(&cpu)),
        _ => "peak RSS not measured (no /usr/bin/time)".into(),
    }
}

fn report(label: &str, runs: &[Run]) {
    let secs: Vec<f64> = runs.iter().map(|r| r.secs).collect();
    let m = median(&secs);
    println!(
        "{label}: wall {} s; median {m:.3} s = {:.0} MB/s; {}",
        fmt_times(&secs),
        mb_s(m),
        fmt_usage(runs)
    );
    let body: Vec<f64> = runs.iter().filter_map(|r| r.body).collect();
    if !body.is_empty() {
        let b = median(&body);
        print!(
            "{:width$}  body (first to last byte): {} s; median {b:.3} s = {:.0} MB/s",
            "",
            fmt_times(&body),
            mb_s(b),
            width = label.len()
        );
        let verify: Vec<f64> = runs.iter().filter_map(|r| r.verify).collect();
        if !verify.is_empty() {
            print!("; then sha256 and rename: median {:.3} s", median(&verify));
        }
        println!();
    }
}

fn median_of(runs: &[Run], f: impl Fn(&Run) -> Option<f64>) -> Option<f64> {
    let v: Vec<f64> = runs.iter().filter_map(f).collect();
    (!v.is_empty()).then(|| median(&v))
}

#[test]
#[ignore = "benchmark: cargo test --release --test fetch_bench -- --ignored --nocapture"]
fn fetch_adapter_download_throughput_against_curl() {
    let data = weights(SIZE);
    let config = br#"{"peft_type":"LORA","r":16,"lora_alpha":32,"target_modules":["q_proj","v_proj"],"base_model_name_or_path":"meta-llama/Llama-3.2-1B"}"#.to_vec();
    let hub = hub_server::start(vec![Repo::new(
        REPO,
        vec![
            File::git("adapter_config.json", config.clone()),
            File::lfs("adapter_model.safetensors", data.clone()),
        ],
    )]);
    let commit = hub.commit(REPO);
    let sha = hub_server::sha256_hex(&data);
    let url = hub.resolve_url(REPO, "main", "adapter_model.safetensors");
    let bin = env!("CARGO_BIN_EXE_ollama-tools");
    let time = gnu_time();
    let curl = have("curl");
    let work = tempfile::tempdir().unwrap();
    println!(
        "fetch bench: {REPO}, adapter_model.safetensors {SIZE} bytes ({:.1} MB, LFS via the CDN host {}), {RUNS} runs each",
        SIZE as f64 / 1e6,
        hub.cdn_host
    );
    if !curl {
        println!("  curl not found: only fetch-adapter is measured (Debian: apt-get install curl)");
    }
    if time.is_none() {
        println!("  /usr/bin/time (GNU time) not found: no peak RSS or CPU time (Debian: apt-get install time)");
    }

    let (mut ours, mut theirs) = (vec![], vec![]);
    for run in 0..RUNS {
        // a. fetch-adapter into a fresh cache.
        let hf_home = work.path().join(format!("hf-{run}"));
        let repo_dir = hf_home.join("hub/models--bench--lora-512m");
        let mut cmd = Command::new(bin);
        cmd.args(["fetch-adapter", REPO, "--download-only"])
            .env("HF_ENDPOINT", &hub.url)
            .env("HF_HOME", &hf_home);
        for k in [
            "HF_TOKEN",
            "HUGGING_FACE_HUB_TOKEN",
            "HF_TOKEN_PATH",
            "HF_HUB_CACHE",
            "HF_HUB_OFFLINE",
        ] {
            cmd.env_remove(k);
        }
        let r = timed(
            time.as_deref(),
            cmd,
            work.path(),
            Some(&repo_dir.join("blobs").join(&sha)),
        );
        let snapshot = repo_dir.join("snapshots").join(&commit);
        assert_eq!(
            Path::new(r.stdout.trim()),
            snapshot,
            "fetch-adapter prints the adapter's snapshot folder"
        );
        assert_eq!(
            std::fs::read_link(snapshot.join("adapter_model.safetensors")).unwrap(),
            Path::new("../../blobs").join(&sha)
        );
        assert!(
            std::fs::read(snapshot.join("adapter_model.safetensors")).unwrap() == data,
            "fetch-adapter's weights differ from the Hub's"
        );
        assert_eq!(std::fs::read(snapshot.join("adapter_config.json")).unwrap(), config);
        std::fs::remove_dir_all(&hf_home).unwrap();
        println!("  run {}: fetch-adapter {:.3} s", run + 1, r.secs);
        ours.push(r);

        // b. curl of the same file, following the redirect to the CDN host as fetch-adapter does.
        if curl {
            let out = work.path().join("curl.bin");
            let mut cmd = Command::new("curl");
            cmd.arg("-sSL")
                .arg("-o")
                .arg(&out)
                .args(["-w", "%{time_starttransfer} %{time_total}"])
                .arg(&url);
            let mut r = timed(time.as_deref(), cmd, work.path(), None);
            let t: Vec<f64> = r.stdout.split_whitespace().filter_map(|v| v.parse().ok()).collect();
            r.body = (t.len() == 2).then(|| t[1] - t[0]);
            assert!(
                std::fs::read(&out).unwrap() == data,
                "curl's file differs from the Hub's"
            );
            std::fs::remove_file(&out).unwrap();
            println!("  run {}: curl          {:.3} s", run + 1, r.secs);
            theirs.push(r);
        }
    }

    report("a. fetch-adapter --download-only", &ours);
    if curl {
        report("b. curl -sSL <resolve URL>      ", &theirs);
        let wall = |v: &[Run]| median_of(v, |r| Some(r.secs)).unwrap();
        println!("ratio a / b, MB/s: whole command {:.2}", wall(&theirs) / wall(&ours));
        if let (Some(a), Some(b)) = (median_of(&ours, |r| r.body), median_of(&theirs, |r| r.body)) {
            println!("ratio a / b, MB/s: body only     {:.2}", b / a);
        }
        // What answering costs the test server itself: it clones the repo (with the 512 MiB file) for
        // every request, and hashes the file for every resolve and CDN request of it.
        let ask = |args: &[&str]| {
            let mut c = Command::new("curl");
            c.args(args);
            timed(None, c, work.path(), None).secs
        };
        let listing = ask(&[
            "-sS",
            "-o",
            "/dev/null",
            &format!("{}/api/models/{REPO}/revision/main", hub.url),
        ]);
        let head = ask(&["-sSI", "-o", "/dev/null", &url]);
        println!(
            "test server: the listing takes {listing:.3} s (a only), a HEAD of the weights' resolve URL {head:.3} s (a's HEAD, b's first GET)"
        );
    }
    println!(
        "served {} content bytes in all ({} requests logged)",
        hub.served_bytes(),
        hub.requests(|_| true)
    );
}
