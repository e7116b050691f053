#!/usr/bin/env bash
# Download benchmark for `ollama-tools fetch-adapter` (a benchmark, not a test: it never fails on timing).
#
# Runs the ignored test tests/fetch_bench.rs in release mode. It starts the test Hub
# (tests/common/hub_server.rs) on loopback with a repo holding adapter_config.json (git) and a 512 MiB
# adapter_model.safetensors (LFS, redirected to the Hub's "CDN" host), then times 3 runs each of
#   a. ollama-tools fetch-adapter bench/lora-512m --download-only   (HF_ENDPOINT = the test Hub, fresh HF_HOME)
#   b. curl -sSL -o FILE <resolve URL of the weights>                (follows the redirect, as ours does)
# and prints the median MB/s of each, their ratio, and peak RSS (/usr/bin/time -v, when present).
# Both downloads are checked byte for byte against the Hub's file.
#
# Usage: benches/fetch.sh
# Needs: curl (Debian: apt-get install curl; without it only fetch-adapter is timed), GNU time for RSS.
# Environment: CARGO_TARGET_DIR as usual.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

command -v curl >/dev/null || echo "note: curl not found: only fetch-adapter is timed (apt-get install curl)" >&2
[ -x /usr/bin/time ] || echo "note: /usr/bin/time not found: no peak RSS (apt-get install time)" >&2

echo "== cargo build --release" >&2
cargo build --release --quiet
echo "== cargo test --release --test fetch_bench -- --ignored --nocapture" >&2
cargo test --release --quiet --test fetch_bench -- --ignored --nocapture
