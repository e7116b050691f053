#!/usr/bin/env bash
# Benchmark of `ollama-tools merge --quantize q4_k_m` from an F16 base (a benchmark, not a test: it
# never fails on timing), against
#   b. llama-export-lora (-> F16 merged model) + llama-quantize Q4_K_M, the two-tool pipeline, and
#   c. llama-quantize Q4_K_M of the base alone (no merge: the cost of quantizing by itself).
#
# Fixture (made once in WORK_DIR, reused): benches/gen_q4km.py's Llama-3.1-8B-shaped base with
# BENCH_LAYERS layers (default 4), turned into F16 by `llama-quantize --allow-requantize ... F16`
# (random weights whichever way they were drawn), and gen_q4km.py's adapter (r=16, alpha 32, BF16, all
# linear modules), converted to a GGUF adapter for llama-export-lora.
# Each run once with a warm page cache; wall / CPU time and peak RSS from /usr/bin/time -v. The tensor
# types of (a) and (b) are compared (they must agree for every tensor).
#
# Usage: benches/quantize.sh [WORK_DIR]     (default: target/bench-quantize-L$BENCH_LAYERS)
# Environment: OLLAMA_TOOLS_BIN (default target/release/ollama-tools), LLAMA_CPP_BIN (directory with
#   llama-export-lora and llama-quantize; default target/bench-merge/llama-build-0.3.36/bin, as
#   benches/merge.sh builds it), BENCH_LAYERS, PYTHON (numpy + gguf + safetensors), BENCH_KEEP=1 keeps
#   the outputs (by default they are deleted; the fixture is kept).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LAYERS=${BENCH_LAYERS:-4}
WORK=${1:-$ROOT/target/bench-quantize-L$LAYERS}
LLAMA_BIN=${LLAMA_CPP_BIN:-$ROOT/target/bench-merge/llama-build-0.3.36/bin}
BIN=${OLLAMA_TOOLS_BIN:-$ROOT/target/release/ollama-tools}
PY=${PYTHON:-$ROOT/tests/interop/.venv/bin/python}
NPROC=$(nproc)
mkdir -p "$WORK/logs"
LOGS=$WORK/logs
export LD_LIBRARY_PATH=$LLAMA_BIN${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
log() { printf '%s\n' "$*" >&2; }
for tool in llama-export-lora llama-quantize; do
    [[ -x $LLAMA_BIN/$tool ]] || { log "error: $LLAMA_BIN/$tool not found (run benches/merge.sh once, or set LLAMA_CPP_BIN)"; exit 2; }
done

BASE=$WORK/base-f16.gguf
ADAPTER=$WORK/adapter
ADAPTER_GGUF=$WORK/adapter.gguf
OURS=$WORK/ours-q4km.gguf
F16=$WORK/merged-f16.gguf
THEIRS=$WORK/llama-q4km.gguf
ALONE=$WORK/base-q4km.gguf

# ---- fixture ------------------------------------------------------------------------------------
if [[ ! -f $BASE ]]; then
    log "== generating $BASE ($LAYERS layers)"
    "$PY" "$ROOT/benches/gen_q4km.py" base "$WORK/tmp-q4km.gguf" --layers "$LAYERS"
    "$LLAMA_BIN/llama-quantize" --allow-requantize "$WORK/tmp-q4km.gguf" "$BASE" F16 "$NPROC" >"$LOGS/fixture.log" 2>&1
    rm -f "$WORK/tmp-q4km.gguf"
fi
[[ -f $ADAPTER/adapter_model.safetensors ]] || "$PY" "$ROOT/benches/gen_q4km.py" adapter "$ADAPTER" --layers "$LAYERS"
[[ -f $ADAPTER_GGUF ]] || "$BIN" convert "$ADAPTER" --base "$BASE" -o "$ADAPTER_GGUF" --force --quiet

# ---- runs ---------------------------------------------------------------------------------------
run() {
    local name=$1; shift
    sync
    /usr/bin/time -v -o "$LOGS/$name.time" "$@" >"$LOGS/$name.log" 2>&1 || { log "error: $name failed"; tail -20 "$LOGS/$name.log" >&2; exit 1; }
}
fields() {
    awk -F': ' '
        /Elapsed \(wall clock\)/ { n = split($2, p, ":"); w = 0; for (i = 1; i <= n; i++) w = w * 60 + p[i] }
        /User time/ { u = $2 } /System time/ { s = $2 } /Maximum resident set size/ { r = $2 }
        END { printf "%.1f %.1f %.1f %.0f\n", w, u, s, r / 1024 }' "$LOGS/$1.time"
}
warm() { for f in "$@"; do cat "$f" >/dev/null; done; }

rm -f "$OURS" "$F16" "$THEIRS" "$ALONE"
log "== a. ollama-tools merge --quantize q4_k_m"
warm "$BASE" "$ADAPTER/adapter_model.safetensors"
load_a=$(cut -d' ' -f1 /proc/loadavg)
run ours "$BIN" merge "$ADAPTER" --base "$BASE" -o "$OURS" --quantize q4_k_m --force --quiet
log "== b. llama-export-lora + llama-quantize"
warm "$BASE" "$ADAPTER_GGUF"
load_b=$(cut -d' ' -f1 /proc/loadavg)
run export "$LLAMA_BIN/llama-export-lora" -m "$BASE" --lora "$ADAPTER_GGUF" -o "$F16" -t "$NPROC"
warm "$F16"
run quantize "$LLAMA_BIN/llama-quantize" "$F16" "$THEIRS" Q4_K_M "$NPROC"
log "== c. llama-quantize alone"
warm "$BASE"
load_c=$(cut -d' ' -f1 /proc/loadavg)
run alone "$LLAMA_BIN/llama-quantize" "$BASE" "$ALONE" Q4_K_M "$NPROC"

# ---- report -------------------------------------------------------------------------------------
same=$("$PY" - "$OURS" "$THEIRS" <<'PYEOF'
import sys, gguf
a, b = ({t.name: t.tensor_type.name for t in gguf.GGUFReader(p).tensors} for p in sys.argv[1:])
diff = [n for n in b if a.get(n) != b[n]] + sorted(set(a) - set(b))
print(f"{len(b)} tensors, " + ("same type for every tensor" if not diff else f"{len(diff)} differ: {diff[:5]}"))
PYEOF
)
size() { awk -v b="$(stat -c %s "$1")" 'BEGIN { printf "%.3f", b / 1e9 }'; }
echo "Machine: $NPROC CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), load before a/b/c: $load_a / $load_b / $load_c"
echo "Binary:  $("$BIN" --version), tree $(cd "$ROOT" && git rev-parse --short HEAD)"
echo "Base:    $BASE ($(size "$BASE") GB, $LAYERS layers of Llama-3.1-8B shape, F16)"
echo "Types:   ours vs llama.cpp's Q4_K_M: $same"
echo
printf '%-40s %8s %8s %7s %9s %8s\n' command "wall s" "user s" "sys s" "RSS MiB" "out GB"
for r in "a. merge --quantize q4_k_m:ours:$OURS" "b1. llama-export-lora (-> F16):export:$F16" \
         "b2. llama-quantize Q4_K_M:quantize:$THEIRS" "c. llama-quantize Q4_K_M (no merge):alone:$ALONE"; do
    IFS=: read -r label name out <<<"$r"
    read -r w u s m < <(fields "$name")
    printf '%-40s %8s %8s %7s %9s %8s\n' "$label" "$w" "$u" "$s" "$m" "$(size "$out")"
done
read -r ew eu es em < <(fields export); read -r qw qu qs qm < <(fields quantize)
awk -v ew="$ew" -v qw="$qw" -v eu="$eu" -v qu="$qu" -v es="$es" -v qs="$qs" -v em="$em" -v qm="$qm" 'BEGIN {
    printf "%-40s %8.1f %8.1f %7.1f %9.0f %8s\n", "b. total (sum; max RSS)", ew + qw, eu + qu, es + qs, (em > qm ? em : qm), "-" }'
[[ -n ${BENCH_KEEP:-} ]] || rm -f "$OURS" "$F16" "$THEIRS" "$ALONE"
