#!/usr/bin/env bash
# The project's whole test suite, on a fresh machine or a used one: installs what is missing
# (Debian build tools, the Rust crates, a Python venv with llama-cpp-python built from PyPI's source
# package), then runs the Rust tests and the llama.cpp interop suite.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v cc >/dev/null || missing+=(gcc)
command -v c++ >/dev/null || missing+=(g++)
command -v make >/dev/null || missing+=(make)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo sudo)
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi

# Format and lints first: CI refuses unformatted code and any clippy warning.
if command -v rustup >/dev/null; then rustup component add rustfmt clippy >/dev/null 2>&1 || true; fi
cargo fmt --check
cargo clippy --release --locked --all-targets -- -D warnings

cargo build --release --locked
cargo test --release --locked

venv=tests/interop/.venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
# llama-cpp-python compiles llama.cpp the first time (about 15 minutes on 2 cores); pip caches the wheel.
CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
  "$venv/bin/pip" install --disable-pip-version-check -q -r tests/interop/requirements.txt
OLLAMA_TOOLS_BIN=${OLLAMA_TOOLS_BIN:-$PWD/target/release/ollama-tools} \
  "$venv/bin/python" -m pytest -q tests/interop
