#!/usr/bin/env sh
# Builds ollama-tools from this checkout and installs it as $PREFIX/bin/ollama-tools, with its shell
# completions (bash, zsh, fish) and man pages under $PREFIX/share. PREFIX defaults to ~/.local.
# Needs a Rust toolchain (cargo); OLLAMA_TOOLS_BIN=FILE installs that binary instead of building one.
set -eu
PREFIX=${PREFIX:-$HOME/.local}
# Both are read relative to where this was started, before the cd below.
case $PREFIX in /*) ;; *) PREFIX=$(pwd)/$PREFIX ;; esac
bin=${OLLAMA_TOOLS_BIN:-}
case $bin in '' | /*) ;; *) bin=$(pwd)/$bin ;; esac
cd "$(dirname "$0")"
if [ -z "$bin" ]; then
  if ! command -v cargo >/dev/null 2>&1; then
    echo "install.sh: cargo not found; install Rust (https://rustup.rs) and run this again" >&2
    exit 1
  fi
  cargo build --release --locked
  bin=target/release/ollama-tools
fi

# Everything is generated first, so a failure installs nothing.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$bin" completions bash >"$tmp/ollama-tools"
"$bin" completions zsh >"$tmp/_ollama-tools"
"$bin" completions fish >"$tmp/ollama-tools.fish"
"$bin" man --dir "$tmp/man1" >/dev/null

# put MODE FILE DEST: installs FILE as DEST, its folder made if missing, and says so.
put() {
  install -d "$(dirname "$3")"
  install -m "$1" "$2" "$3"
  echo "installed $3"
}
put 755 "$bin" "$PREFIX/bin/ollama-tools"
put 644 "$tmp/ollama-tools" "$PREFIX/share/bash-completion/completions/ollama-tools"
put 644 "$tmp/_ollama-tools" "$PREFIX/share/zsh/site-functions/_ollama-tools"
put 644 "$tmp/ollama-tools.fish" "$PREFIX/share/fish/vendor_completions.d/ollama-tools.fish"
for page in "$tmp"/man1/*.1; do
  put 644 "$page" "$PREFIX/share/man/man1/$(basename "$page")"
done

case ":$PATH:" in
  *":$PREFIX/bin:"*) ;;
  *) echo "note: $PREFIX/bin is not on your PATH; add it, e.g. export PATH=\"$PREFIX/bin:\$PATH\"" ;;
esac
# zsh reads only the site-functions folders of its own prefix unless told.
case $PREFIX in
  /usr | /usr/local) ;;
  *) echo "note: for zsh, add fpath=($PREFIX/share/zsh/site-functions \$fpath) to ~/.zshrc before compinit" ;;
esac
