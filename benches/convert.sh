#!/usr/bin/env bash
# Conversion benchmark for `ollama-tools convert` (a benchmark, not a test: it never fails on timing).
#
# Generates once a PEFT LoRA adapter shaped like Llama-3.1-8B (r=64 on all seven linear modules, BF16,
# ~336 MB) plus a Hugging Face base config.json, then times, with a warm page cache:
#   - cp of the adapter's safetensors file (the I/O floor),
#   - convert with the default outtype (auto -> f16),
#   - convert with --outtype bf16 (mostly a byte copy),
# and measures the peak RSS of each with /usr/bin/time -v.
#
# Usage: benches/convert.sh [WORK_DIR]          (default: target/bench, reused if present)
# Environment:
#   OLLAMA_TOOLS_BIN  binary to benchmark (default: build with `cargo build --release`)
#   BENCH_RUNS        timed runs per command (default 7, at least 5)
#   BENCH_LAYERS      decoder layers of the generated adapter (default 32, Llama-3.1-8B; 96 makes a
#                     1 GB adapter, to see that peak memory does not grow with the adapter)
#   BENCH_NO_HYPERFINE=1  time with a bash loop even if hyperfine is installed
#   PYTHON            python with numpy + safetensors (default tests/interop/.venv/bin/python, created if missing)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export BENCH_LAYERS=${BENCH_LAYERS:-32}
WORK=${1:-${BENCH_DIR:-$ROOT/target/bench$([[ $BENCH_LAYERS == 32 ]] || echo "-L$BENCH_LAYERS")}}
RUNS=${BENCH_RUNS:-7}
(( RUNS >= 5 )) || RUNS=5
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)

log() { printf '%s\n' "$*" >&2; }

# ---- 1. binary ---------------------------------------------------------------------------------
if [[ -n ${OLLAMA_TOOLS_BIN:-} ]]; then
    BIN=$OLLAMA_TOOLS_BIN
else
    log "== cargo build --release"
    (cd "$ROOT" && cargo build --release --quiet)
    BIN=$ROOT/target/release/ollama-tools
fi
[[ -x $BIN ]] || { log "error: $BIN is not executable"; exit 2; }

# ---- 2. fixture ----------------------------------------------------------------------------------
if [[ -n ${PYTHON:-} ]]; then
    PY=$PYTHON
else
    VENV=$ROOT/tests/interop/.venv
    if [[ ! -x $VENV/bin/python ]]; then
        log "== creating $VENV"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install --quiet numpy safetensors
    fi
    PY=$VENV/bin/python
fi

ADAPTER=$WORK/adapter
BASE=$WORK/base
WEIGHTS=$ADAPTER/adapter_model.safetensors
if [[ -f $WEIGHTS && -f $ADAPTER/adapter_config.json && -f $BASE/config.json ]]; then
    log "== reusing fixture in $WORK"
else
    log "== generating Llama-3.1-8B-shaped r=64 adapter in $WORK (once)"
    "$PY" - "$WORK" <<'PYEOF'
import json, os, struct, sys
import numpy as np

work = sys.argv[1]
adapter, base = os.path.join(work, "adapter"), os.path.join(work, "base")
os.makedirs(adapter, exist_ok=True)
os.makedirs(base, exist_ok=True)

L = int(os.environ["BENCH_LAYERS"])
H, NH, NKV, HD, FFN, VOCAB, R = 4096, 32, 8, 128, 14336, 128256, 64
KV = NKV * HD
modules = [  # (prefix, name, in, out)
    ("self_attn", "q_proj", H, NH * HD), ("self_attn", "k_proj", H, KV), ("self_attn", "v_proj", H, KV),
    ("self_attn", "o_proj", NH * HD, H), ("mlp", "gate_proj", H, FFN), ("mlp", "up_proj", H, FFN),
    ("mlp", "down_proj", FFN, H),
]

with open(os.path.join(base, "config.json"), "w") as f:
    json.dump({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H,
        "num_hidden_layers": L, "num_attention_heads": NH, "num_key_value_heads": NKV, "head_dim": HD,
        "intermediate_size": FFN, "vocab_size": VOCAB, "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "hidden_act": "silu", "tie_word_embeddings": False,
        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "torch_dtype": "bfloat16",
    }, f, indent=2)

with open(os.path.join(adapter, "adapter_config.json"), "w") as f:
    json.dump({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": R, "lora_alpha": 128,
        "target_modules": [m[1] for m in modules], "base_model_name_or_path": "meta-llama/Llama-3.1-8B",
        "use_rslora": False, "use_dora": False, "bias": "none",
    }, f, indent=2)

# (key, shape, std) in file order
tensors = []
for i in range(L):
    for prefix, name, n_in, n_out in modules:
        k = f"base_model.model.model.layers.{i}.{prefix}.{name}"
        tensors.append((f"{k}.lora_A.weight", (R, n_in), 0.02))
        tensors.append((f"{k}.lora_B.weight", (n_out, R), 0.01))

header, off = {"__metadata__": {"format": "pt"}}, 0
for key, shape, _ in tensors:
    n = 2 * shape[0] * shape[1]
    header[key] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
    off += n
hjson = json.dumps(header, separators=(",", ":")).encode()
hjson += b" " * (-len(hjson) % 8)  # pad so tensor data starts 8-byte aligned

def bf16(x):  # float32 -> bf16 bits, round to nearest even (no NaN/Inf here)
    b = x.view(np.uint32)
    return ((b + (0x7FFF + ((b >> 16) & 1))) >> 16).astype("<u2")

rng = np.random.default_rng(20240723)
path = os.path.join(adapter, "adapter_model.safetensors")
tmp = path + ".tmp"
with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(hjson)))
    f.write(hjson)
    for key, shape, std in tensors:  # one tensor in memory at a time
        x = rng.standard_normal(shape, dtype=np.float32)
        x *= np.float32(std)
        f.write(bf16(x).tobytes())
os.replace(tmp, path)

# sanity check with the reference reader
from safetensors import safe_open
with safe_open(path, "np") as st:
    assert len(list(st.keys())) == len(tensors)
print(f"wrote {path}: {len(tensors)} tensors, {os.path.getsize(path)} bytes", file=sys.stderr)
PYEOF
fi

IN_BYTES=$(stat -c %s "$WEIGHTS")
IN_MB=$(awk -v b="$IN_BYTES" 'BEGIN { printf "%.1f", b / 1e6 }')
CP_OUT=$WORK/cp-out.safetensors
OUT=$WORK/out.gguf
OUT_BF16=$WORK/out-bf16.gguf

CMD_CP="cp $WEIGHTS $CP_OUT"
CMD_F16="$BIN convert $ADAPTER --base $BASE -o $OUT --force --quiet"
CMD_BF16="$BIN convert $ADAPTER --base $BASE -o $OUT_BF16 --outtype bf16 --force --quiet"
NAMES=("cp (I/O floor)" "convert (auto -> f16)" "convert --outtype bf16")
CMDS=("$CMD_CP" "$CMD_F16" "$CMD_BF16")

# ---- 3. timings ----------------------------------------------------------------------------------
# Fail loudly (with the binary's own message) if the converter cannot handle the fixture.
for c in "$CMD_F16" "$CMD_BF16"; do
    if ! err=$($c 2>&1 >/dev/null); then
        log "error: conversion failed: $c"
        log "$err"
        exit 1
    fi
done

# prints "median min" in seconds for the command "$1"
time_cmd() {
    if [[ -z ${BENCH_NO_HYPERFINE:-} ]] && command -v hyperfine >/dev/null; then
        local json=$WORK/hyperfine.json
        # `sync` before each run so a run does not pay for the previous run's write-back.
        hyperfine --style none --warmup 1 --runs "$RUNS" --prepare sync --export-json "$json" "$1" >/dev/null
        "$PY" -c 'import json,sys; r=json.load(open(sys.argv[1]))["results"][0]; print(r["median"], r["min"])' "$json"
    else
        local t0 t1 ts=()
        $1 >/dev/null 2>&1  # warm-up
        for ((i = 0; i < RUNS; i++)); do
            sync
            t0=$(date +%s.%N); $1 >/dev/null 2>&1; t1=$(date +%s.%N)
            ts+=("$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f", b - a }')")
        done
        printf '%s\n' "${ts[@]}" | sort -g | awk '{ v[NR] = $1 } END {
            m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; print m, v[1] }'
    fi
}

# prints peak RSS in MiB for the command "$1"
peak_rss() {
    local out=$WORK/time-v.txt
    sync
    /usr/bin/time -v -o "$out" $1 >/dev/null 2>&1
    awk -F': ' '/Maximum resident set size/ { printf "%.1f", $2 / 1024 }' "$out"
}

log "== timing ($RUNS runs each, warm page cache, $( [[ -z ${BENCH_NO_HYPERFINE:-} ]] && command -v hyperfine >/dev/null && echo hyperfine || echo 'bash loop'))"
ROWS=()
for i in "${!CMDS[@]}"; do
    read -r med min < <(time_cmd "${CMDS[$i]}")
    rss=$(peak_rss "${CMDS[$i]}")
    ROWS+=("$(awk -v n="${NAMES[$i]}" -v med="$med" -v min="$min" -v b="$IN_BYTES" -v rss="$rss" \
        'BEGIN { printf "%-26s %9.3f %9.3f %9.0f %13s", n, med, min, b / 1e6 / med, rss }')")
done

# ---- 4. report -----------------------------------------------------------------------------------
LARGEST=$((14336 * 64))
echo
echo "Machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(awk '/MemTotal/ { printf "%.1f GiB RAM", $2 / 1048576 }' /proc/meminfo)"
echo "Binary:  $BIN ($("$BIN" --version 2>/dev/null || echo '?'))"
echo "Input:   $WEIGHTS ($IN_BYTES bytes = $IN_MB MB, $((BENCH_LAYERS * 14)) BF16 tensors, Llama-3.1-8B layer shapes x $BENCH_LAYERS layers, r=64)"
echo "Output:  f16 $(stat -c %s "$OUT") bytes, bf16 $(stat -c %s "$OUT_BF16") bytes"
echo "Largest tensor (mlp lora_B / down_proj lora_A, 14336x64): $(awk -v n=$LARGEST 'BEGIN { printf "%.2f MiB as BF16 input, %.2f MiB as f32", n * 2 / 1048576, n * 4 / 1048576 }')"
echo
printf '%-26s %9s %9s %9s %13s\n' "command" "median s" "min s" "MB/s" "peak RSS MiB"
printf '%s\n' "${ROWS[@]}"
echo
echo "MB/s = input size ($IN_MB MB) / median wall time. Runs: $RUNS after 1 warm-up, \`sync\` before each."
echo "Compare peak RSS with \"64 MiB + largest tensor\"."
echo
echo "Commands:"
for c in "${CMDS[@]}"; do echo "  $c"; done
echo "  /usr/bin/time -v <command>   # peak RSS ('Maximum resident set size')"
