#!/usr/bin/env sh
# Builds ollama-tools from this checkout and installs it as $PREFIX/bin/ollama-tools
# (PREFIX defaults to ~/.local). Needs a Rust toolchain (cargo).
set -eu
cd "$(dirname "$0")"
PREFIX=${PREFIX:-$HOME/.local}
if ! command -v cargo >/dev/null 2>&1; then
  echo "install.sh: cargo not found; install Rust (https://rustup.rs) and run this again" >&2
  exit 1
fi
cargo build --release --locked
install -d "$PREFIX/bin"
install -m 755 target/release/ollama-tools "$PREFIX/bin/ollama-tools"
echo "installed $PREFIX/bin/ollama-tools"
case ":$PATH:" in
  *":$PREFIX/bin:"*) ;;
  *) echo "note: $PREFIX/bin is not on your PATH; add it, e.g. export PATH=\"$PREFIX/bin:\$PATH\"" ;;
esac
