#!/usr/bin/env bash
# Merge benchmark for `ollama-tools merge` (a benchmark, not a test: it never fails on timing).
#
# Fixture (generated once by benches/gen_q4km.py, then reused):
#   - base.gguf: a Llama-3.1-8B-shaped GGUF with random but valid weights and llama.cpp's Q4_K_M type
#     mix (token_embd Q4_K, output Q6_K, attn_v / ffn_down Q6_K on llama.cpp's 16 "more bits" layers
#     and Q4_K elsewhere, the other linear weights Q4_K, norms F32) and Llama 3.1's metadata (~4.9 GB);
#   - adapter/: a PEFT LoRA adapter, r=16, lora_alpha 32, BF16, on q/k/v/o/gate/up/down of all layers;
#   - adapter.gguf: `ollama-tools convert` of it (F16), for llama.cpp.
# Runs, each once with a warm page cache (`cat` of the inputs first, `sync` before each):
#   a. ollama-tools merge adapter --base base.gguf -o merged.gguf --force --quiet
#   b. llama-export-lora -m base.gguf --lora adapter.gguf -o merged-f16.gguf, then
#      llama-quantize merged-f16.gguf merged-q4km.gguf Q4_K_M   (built from the vendored llama.cpp of
#      the llama-cpp-python sdist, targets llama-export-lora and llama-quantize only)
# and reports wall time, CPU time, peak RSS (/usr/bin/time -v) and output size against the base's.
#
# Usage: benches/merge.sh [WORK_DIR]        (default: target/bench-merge, fixture reused if present)
# Environment:
#   OLLAMA_TOOLS_BIN   binary to benchmark (default: `cargo build --release`, copied into WORK_DIR so
#                      a rebuild during the run does not change what is measured)
#   BENCH_LAYERS       decoder layers of the fixture (default 32; e.g. 4 for a quick run)
#   BENCH_SKIP_LLAMA=1 do not build or run llama.cpp
#   LLAMA_CPP_BIN      directory with llama-export-lora and llama-quantize (default: build them)
#   LLAMA_CPP_PYTHON_VERSION  sdist whose vendored llama.cpp is built (default 0.3.36)
#   BENCH_KEEP_F16=1   keep llama.cpp's F16 intermediate (~14.7 GB) after the run
#   BENCH_BREAKDOWN=1  also time merge on a 4-layer fixture with --merged-type keep / q8_0 / f16 and a
#                      plain cp of it, to separate quantization cost from the rest
#   PYTHON             python with numpy + gguf + safetensors (default tests/interop/.venv/bin/python)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LAYERS=${BENCH_LAYERS:-32}
WORK=${1:-$ROOT/target/bench-merge$([[ $LAYERS == 32 ]] || echo "-L$LAYERS")}
LLAMA_DIR=$ROOT/target/bench-merge   # llama.cpp sources and build, shared by every WORK_DIR
LLAMA_VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
NPROC=$(nproc)
mkdir -p "$WORK" "$LLAMA_DIR" "$WORK/logs"
WORK=$(cd "$WORK" && pwd)
LOGS=$WORK/logs

log() { printf '%s\n' "$*" >&2; }
gb() { awk -v b="$1" 'BEGIN { printf "%.2f", b / 1e9 }'; }

BASE=$WORK/base.gguf
ADAPTER=$WORK/adapter
ADAPTER_GGUF=$WORK/adapter.gguf
MERGED=$WORK/merged.gguf
F16=$WORK/merged-f16.gguf
Q4KM=$WORK/merged-q4km.gguf

# ---- 0. python ----------------------------------------------------------------------------------
if [[ -n ${PYTHON:-} ]]; then
    PY=$PYTHON
else
    VENV=$ROOT/tests/interop/.venv
    if [[ ! -x $VENV/bin/python ]]; then
        log "== creating $VENV"
        python3 -m venv "$VENV"
    fi
    PY=$VENV/bin/python
fi
if ! "$PY" -c 'import numpy, gguf, safetensors' 2>/dev/null; then
    log "== pip install numpy gguf safetensors"
    "$PY" -m pip install --quiet numpy gguf safetensors
fi

# ---- 1. disk ------------------------------------------------------------------------------------
# base + merged + merged-q4km + merged-f16 (~3x base) + llama.cpp build (~1 GB); nothing is written twice.
base_est=$(( 4190 * 1000 * 1000 / 32 * LAYERS + 730 * 1000 * 1000 ))   # layers + token_embd/output
need=$(( base_est * 3 + 1000000000 ))
[[ -n ${BENCH_SKIP_LLAMA:-} ]] || need=$(( need + base_est * 3 ))
have_now=0
for f in "$BASE" "$MERGED" "$F16" "$Q4KM"; do [[ -f $f ]] && have_now=$(( have_now + $(stat -c %s "$f") )); done
avail=$(( $(df -k --output=avail "$WORK" | tail -1) * 1024 ))
log "== disk: ~$(gb "$need") GB needed in $WORK (of which $(gb $have_now) GB already there), $(gb $avail) GB free"
if (( avail + have_now < need + 2000000000 )); then
    log "error: not enough free disk space"; exit 2
fi

# ---- 2. binary ----------------------------------------------------------------------------------
if [[ -n ${OLLAMA_TOOLS_BIN:-} ]]; then
    SRC_BIN=$OLLAMA_TOOLS_BIN
else
    log "== cargo build --release"
    for attempt in 1 2 3 4 5; do
        if (cd "$ROOT" && cargo build --release --quiet 2>"$LOGS/cargo.log"); then break; fi
        (( attempt < 5 )) || { cat "$LOGS/cargo.log" >&2; log "error: cargo build failed 5 times"; exit 2; }
        log "   build failed (someone editing the sources?), retrying in 60 s"
        sleep 60
    done
    SRC_BIN=$ROOT/target/release/ollama-tools
fi
BIN=$WORK/ollama-tools
cp "$SRC_BIN" "$BIN.tmp" && mv "$BIN.tmp" "$BIN"
BIN_DESC="$("$BIN" --version 2>/dev/null || echo '?'), sha256 $(sha256sum "$BIN" | cut -c1-12)"
if [[ -z ${OLLAMA_TOOLS_BIN:-} ]]; then
    BIN_DESC+=", tree $(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo '+uncommitted changes')"
fi

# ---- 3. fixture ---------------------------------------------------------------------------------
if [[ -f $BASE ]]; then
    log "== reusing $BASE"
else
    log "== generating $BASE ($LAYERS layers, once)"
    "$PY" "$ROOT/benches/gen_q4km.py" base "$BASE" --layers "$LAYERS"
fi
if [[ -f $ADAPTER/adapter_model.safetensors && -f $ADAPTER/adapter_config.json ]]; then
    log "== reusing $ADAPTER"
else
    log "== generating $ADAPTER (r=16, alpha 32, BF16, all linear modules)"
    "$PY" "$ROOT/benches/gen_q4km.py" adapter "$ADAPTER" --layers "$LAYERS"
fi
if [[ ! -f $ADAPTER_GGUF ]]; then
    log "== ollama-tools convert -> $ADAPTER_GGUF"
    "$BIN" convert "$ADAPTER" --base "$BASE" -o "$ADAPTER_GGUF" --force --quiet
fi

# ---- 4. llama.cpp -------------------------------------------------------------------------------
LLAMA_STATUS=""
EXPORT_LORA="" QUANTIZE=""
build_llama() {
    local venv_bin sdist src bld
    venv_bin=$(dirname "$PY")
    export PATH=$venv_bin:$PATH
    if ! command -v cmake >/dev/null || ! command -v ninja >/dev/null; then
        log "   pip install cmake ninja"
        "$PY" -m pip install --quiet cmake ninja || return 1
    fi
    sdist=$LLAMA_DIR/llama_cpp_python-$LLAMA_VERSION.tar.gz
    if [[ ! -f $sdist ]]; then
        log "   pip download llama-cpp-python==$LLAMA_VERSION (sdist)"
        # --no-build-isolation: preparing the sdist's metadata needs scikit-build-core; with isolation
        # and --no-binary :all: pip would build cmake itself from source first.
        "$PY" -m pip install --quiet scikit-build-core || return 1
        "$PY" -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation \
            "llama-cpp-python==$LLAMA_VERSION" -d "$LLAMA_DIR" || return 1
    fi
    src=$LLAMA_DIR/llama_cpp_python-$LLAMA_VERSION/vendor/llama.cpp
    [[ -f $src/CMakeLists.txt ]] || tar xzf "$sdist" -C "$LLAMA_DIR" || return 1
    bld=$LLAMA_DIR/llama-build-$LLAMA_VERSION
    log "   cmake build of llama-export-lora and llama-quantize (log: $LLAMA_DIR/llama-build.log)"
    {
        cmake -S "$src" -B "$bld" -G Ninja -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=ON \
            -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF &&
        cmake --build "$bld" --target llama-export-lora llama-quantize -j"$NPROC"
    } >"$LLAMA_DIR/llama-build.log" 2>&1
}
if [[ -n ${BENCH_SKIP_LLAMA:-} ]]; then
    LLAMA_STATUS="skipped (BENCH_SKIP_LLAMA)"
else
    LLAMA_BIN=${LLAMA_CPP_BIN:-$LLAMA_DIR/llama-build-$LLAMA_VERSION/bin}
    if [[ ! -x $LLAMA_BIN/llama-export-lora || ! -x $LLAMA_BIN/llama-quantize ]]; then
        if [[ -n ${LLAMA_CPP_BIN:-} ]]; then
            LLAMA_STATUS="not found in LLAMA_CPP_BIN=$LLAMA_CPP_BIN"
        else
            log "== building llama.cpp tools from llama-cpp-python $LLAMA_VERSION (once; takes a few minutes)"
            if ! build_llama; then
                LLAMA_STATUS="build failed: $(tail -3 "$LLAMA_DIR/llama-build.log" 2>/dev/null | tr '\n' ' ')"
            fi
        fi
    fi
    if [[ -z $LLAMA_STATUS ]]; then
        EXPORT_LORA=$LLAMA_BIN/llama-export-lora
        QUANTIZE=$LLAMA_BIN/llama-quantize
    fi
fi
[[ -z $LLAMA_STATUS ]] || log "== llama.cpp: $LLAMA_STATUS"

# ---- 5. runs ------------------------------------------------------------------------------------
# run NAME CMD...: once, under /usr/bin/time -v; stdout+stderr to $LOGS/NAME.log
run() {
    local name=$1; shift
    sync
    if ! /usr/bin/time -v -o "$LOGS/$name.time" "$@" >"$LOGS/$name.log" 2>&1; then
        log "error: $name failed: $*"; tail -20 "$LOGS/$name.log" >&2
        return 1
    fi
}
# field NAME: "wall user sys cpu% rss_kib" from $LOGS/NAME.time
fields() {
    awk -F': ' '
        /Elapsed \(wall clock\)/ { n = split($2, p, ":"); w = 0; for (i = 1; i <= n; i++) w = w * 60 + p[i] }
        /User time/ { u = $2 } /System time/ { s = $2 } /Percent of CPU/ { c = $2 + 0 }
        /Maximum resident set size/ { r = $2 }
        END { printf "%.2f %.2f %.2f %d %d\n", w, u, s, c, r }' "$LOGS/$1.time"
}
warm() { for f in "$@"; do cat "$f" >/dev/null; done; }

BASE_BYTES=$(stat -c %s "$BASE")
CMD_OURS=("$BIN" merge "$ADAPTER" --base "$BASE" -o "$MERGED" --force --quiet)
CMD_EXPORT=("$EXPORT_LORA" -m "$BASE" --lora "$ADAPTER_GGUF" -o "$F16" -t "$NPROC")
CMD_QUANT=("$QUANTIZE" "$F16" "$Q4KM" Q4_K_M "$NPROC")

log "== a. ollama-tools merge"
rm -f "$MERGED"
warm "$BASE" "$ADAPTER/adapter_model.safetensors"
run ours "${CMD_OURS[@]}" || exit 1

LLAMA_OK=""
if [[ -n $EXPORT_LORA ]]; then
    log "== b. llama-export-lora"
    rm -f "$F16" "$Q4KM"
    warm "$BASE" "$ADAPTER_GGUF"
    if run export "${CMD_EXPORT[@]}"; then
        log "== b. llama-quantize"
        warm "$F16"
        if run quantize "${CMD_QUANT[@]}"; then LLAMA_OK=1; else LLAMA_STATUS="llama-quantize failed (see $LOGS/quantize.log)"; fi
    else
        LLAMA_STATUS="llama-export-lora failed (see $LOGS/export.log)"
    fi
fi

# Tensor types of each output against the base's.
types_of() {
    "$PY" - "$@" <<'PYEOF'
import collections, sys
import gguf
ref = None
for path in sys.argv[1:]:
    r = gguf.GGUFReader(path)
    c = collections.Counter(t.tensor_type.name for t in r.tensors)
    s = ", ".join(f"{n} {k}" for k, n in sorted(c.items()))
    per = {t.name: t.tensor_type.name for t in r.tensors}
    if ref is None:
        ref = per
        print(f"{s}")
    else:
        diff = sum(1 for k, v in per.items() if ref.get(k) != v) + len(set(ref) - set(per))
        print(f"{s}; " + ("same type for every tensor as the base" if diff == 0 else f"{diff} tensors differ from the base"))
PYEOF
}

# ---- 6. report ----------------------------------------------------------------------------------
row() {  # label timefile-name size
    local w u s c r
    read -r w u s c r < <(fields "$2")
    awk -v n="$1" -v w="$w" -v u="$u" -v s="$s" -v c="$c" -v r="$r" -v sz="$3" -v b="$BASE_BYTES" 'BEGIN {
        size = sz == "" ? "-" : sprintf("%.3f", sz / 1e9); pct = sz == "" ? "-" : sprintf("%+.2f%%", (sz - b) * 100 / b)
        printf "%-32s %8.1f %8.1f %7.1f %5d%% %10.0f %9s %9s\n", n, w, u, s, c, r / 1024, size, pct }'
}
SUM_TYPES=$(types_of "$BASE" "$MERGED" ${LLAMA_OK:+"$Q4KM"})
echo
echo "Machine: $NPROC CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), $(awk '/MemTotal/ { printf "%.1f GiB RAM", $2 / 1048576 }' /proc/meminfo), $(uname -sr)"
echo "Binary:  $BIN_DESC"
echo "llama.cpp: $(if [[ -n $LLAMA_OK ]]; then echo "$(dirname "$EXPORT_LORA") (vendored llama.cpp of llama-cpp-python $LLAMA_VERSION unless LLAMA_CPP_BIN is set; -DGGML_NATIVE=ON Release), $NPROC threads"; else echo "$LLAMA_STATUS"; fi)"
echo "Base:    $BASE ($BASE_BYTES bytes, $LAYERS layers of Llama-3.1-8B shape, random weights)"
echo "         types: $(sed -n 1p <<<"$SUM_TYPES")"
echo "Adapter: $ADAPTER (r=16, alpha 32, BF16, q/k/v/o/gate/up/down x $LAYERS layers, $(stat -c %s "$ADAPTER/adapter_model.safetensors") bytes); llama.cpp gets $ADAPTER_GGUF (F16)"
echo
printf '%-32s %8s %8s %7s %6s %10s %9s %9s\n' "command" "wall s" "user s" "sys s" "CPU" "RSS MiB" "out GB" "vs base"
row "ollama-tools merge" ours "$(stat -c %s "$MERGED")"
if [[ -n $LLAMA_OK ]]; then
    row "llama-export-lora (-> F16)" export "$(stat -c %s "$F16")"
    row "llama-quantize Q4_K_M" quantize "$(stat -c %s "$Q4KM")"
    read -r ew eu es _ er < <(fields export)
    read -r qw qu qs _ qr < <(fields quantize)
    awk -v w="$ew+$qw" -v ew="$ew" -v qw="$qw" -v eu="$eu" -v qu="$qu" -v es="$es" -v qs="$qs" -v er="$er" -v qr="$qr" \
        -v sz="$(stat -c %s "$Q4KM")" -v b="$BASE_BYTES" 'BEGIN {
        w = ew + qw; u = eu + qu; s = es + qs; r = er > qr ? er : qr
        printf "%-32s %8.1f %8.1f %7.1f %5d%% %10.0f %9.3f %9s\n", "llama.cpp total (sum; max RSS)", w, u, s, (u + s) * 100 / w, r / 1024, sz / 1e9, sprintf("%+.2f%%", (sz - b) * 100 / b) }'
fi
echo
echo "Output tensor types:"
echo "  ollama-tools merge:     $(sed -n 2p <<<"$SUM_TYPES")"
[[ -z $LLAMA_OK ]] || echo "  llama.cpp Q4_K_M:       $(sed -n 3p <<<"$SUM_TYPES")"
echo
read -r ow _ _ _ orss < <(fields ours)
osz=$(stat -c %s "$MERGED")
echo "Goals (ollama-tools merge):"
awk -v w="$ow" 'BEGIN { printf "  wall time under 180 s:            %s (%.1f s)\n", w < 180 ? "yes" : "NO", w }'
[[ -z $LLAMA_OK ]] || awk -v w="$ow" -v l="$(awk -v a="$ew" -v b="$qw" 'BEGIN { print a + b }')" \
    'BEGIN { printf "  faster than llama.cpp (2 steps):  %s (%.1f s vs %.1f s, %.1fx)\n", w < l ? "yes" : "NO", w, l, l / w }'
awk -v r="$orss" 'BEGIN { printf "  peak RSS under 512 MiB:           %s (%.0f MiB)\n", r < 512 * 1024 ? "yes" : "NO", r / 1024 }'
awk -v s="$osz" -v b="$BASE_BYTES" 'BEGIN { d = (s - b) * 100 / b; printf "  output within 1%% of the base:     %s (%+.3f%%, %d bytes)\n", (d < 1 && d > -1) ? "yes" : "NO", d, s - b }'
echo
echo "Commands (each run once after \`cat\` of its inputs to /dev/null and \`sync\`, under /usr/bin/time -v):"
echo "  ${CMD_OURS[*]}"
if [[ -n $EXPORT_LORA ]]; then
    echo "  ${CMD_EXPORT[*]}"
    echo "  ${CMD_QUANT[*]}"
fi
echo "Logs and /usr/bin/time -v output: $LOGS"

# ---- 7. optional breakdown ----------------------------------------------------------------------
if [[ -n ${BENCH_BREAKDOWN:-} ]]; then
    BD=$WORK/breakdown-L4
    mkdir -p "$BD"
    [[ -f $BD/base.gguf ]] || "$PY" "$ROOT/benches/gen_q4km.py" base "$BD/base.gguf" --layers 4
    [[ -f $BD/adapter/adapter_model.safetensors ]] || "$PY" "$ROOT/benches/gen_q4km.py" adapter "$BD/adapter" --layers 4
    echo
    echo "Breakdown on a 4-layer fixture ($(stat -c %s "$BD/base.gguf") bytes: 28 merged tensors, ~0.55 GB of them; token_embd, output and norms, ~0.73 GB, copied):"
    printf '  %-40s %8s %8s %10s\n' "command" "wall s" "user s" "RSS MiB"
    warm "$BD/base.gguf"
    run bd-cp cp "$BD/base.gguf" "$BD/copy.gguf" || true
    read -r w u _ _ r < <(fields bd-cp)
    printf '  %-40s %8.2f %8.2f %10.0f\n' "cp base (I/O floor)" "$w" "$u" "$(( r / 1024 ))"
    for mt in keep q8_0 f16; do
        warm "$BD/base.gguf"
        run "bd-$mt" "$BIN" merge "$BD/adapter" --base "$BD/base.gguf" -o "$BD/merged-$mt.gguf" --merged-type "$mt" --force --quiet || continue
        read -r w u _ _ r < <(fields "bd-$mt")
        printf '  %-40s %8.2f %8.2f %10.0f\n' "merge --merged-type $mt" "$w" "$u" "$(( r / 1024 ))"
    done
    rm -f "$BD/copy.gguf" "$BD"/merged-*.gguf
fi

if [[ -z ${BENCH_KEEP_F16:-} ]]; then rm -f "$F16"; fi
