"""End-to-end interop of `ollama-tools merge`: PEFT adapter merged into a base GGUF -> real llama.cpp.

The reference for a merged GGUF is llama.cpp itself running the unmerged base with the adapter that
`ollama-tools convert --outtype f32` writes (`--lora` semantics: W x + alpha/r * B (A x)). The merged
file, loaded plainly (no adapter), must give the same logits within a bound:

- F32 / F16 merged tensors: rel 2e-2 (floor), and the same against a numpy forward pass (HF
  semantics) on W + scale * B @ A, which never looks at anything the tool wrote.
- Quantized bases (Q8_0 written by the gguf package; Q4_K_M written by llama.cpp's own
  llama_model_quantize, a mix of Q4_K and Q6_K): merged tensors are re-quantized, so they match
  within the noise that re-quantizing makes, measured in the same test:
    requant noise     the same merge with --scale 1e-6 (negligible delta) vs the base: re-quantizing
                      the unmerged base alone. Exactly 0 where re-quantizing dequantized values is
                      idempotent (Q8_0, and Q4_K here), so on its own it would give a bound of 0;
    ggml-merge noise  a merge built without the tool (dequant(base) + delta, quantized by ggml's own
                      reference quantizer, the one llama-quantize uses) vs base + --lora: what
                      re-quantizing the merged values to that type unavoidably costs.
  bound = 3 * max(requant noise, ggml-merge noise), floor 2e-2 for float merged tensors. The
  adapter's effect on the logits must exceed 1.5 x the bound (a merge that dropped the delta fails).
  type noise (the quantized base vs the F32 base it came from) is printed for scale only.
- The tight check next to the logit bound, per touched tensor: dequantized merged values vs
  dequant(base) + the converted adapter's delta, with an error at most 1.5 x what ggml's quantizer
  makes of the same values; a failure names the tensor and its types. The tool's file vs the
  ggml-quantized merge is reported (identical bytes, weight difference) and its logits held to the
  same bound; logits cannot be held tighter: any change of a weight, however small, re-draws the
  rounding of the activations that llama.cpp quantizes (to f16 for F16 weights, to Q8_K / Q8_0 for
  quantized ones), which alone moves the logits by about that path's own noise (measured: a merge
  differing from ggml's in 0.02% of its f16 values by one ulp gives rel 4e-4 on an F16 base).
- Every untouched tensor is byte-identical to the base's; every base KV is present with the same
  types and value (general.alignment aside: dropped, data aligned to 32); ollama_tools.* KVs added.

llama.cpp runs with its extra CPU buffer types off (harness.run_llama_plain_cpu): on an AMX CPU
llama-cpp-python 0.3.36 dies with SIGSEGV decoding any quantized model through its AMX repack.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest

import archs
import harness
import peft_lora
from archs import _common as C
from harness import TOKENS, convert_ok, merge_ok, read_gguf_raw, rel

# Every weight matrix a whole number of 256-value super-blocks (K-quants), head_dim 64, GQA.
CFG = {
    "llama": dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=64),
    "qwen2": dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2),
    "phi3": dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=64),
    "mistral3": dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
                     head_dim=64),
    "smollm3": dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2),
    "olmo2": dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2),
    # untied: with the tied default the tiny Granite's Q4_K_M noise comes within 1/4.3 of the
    # adapter's effect, under the 1.5 x 3 margin run_case asks for (untied: 1/4.7)
    "granite": dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
                    tie_word_embeddings=False),
    # the shared MLP's input_linear is touched: its LoRA becomes the ffn_gate and ffn_up merges
    "granite4": dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
                     tie_word_embeddings=False),
    # 4 experts, top-2: the gate experts are touched, the router, up and down experts copied
    "qwen3moe": dict(hidden_size=256, intermediate_size=512, moe_intermediate_size=256, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=64),
    # linear attention (every reordered tensor touched) and the gate experts; router and shared expert copied
    "qwen35moe": dict(hidden_size=256, intermediate_size=512, moe_intermediate_size=256,
                      shared_expert_intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=64),
    # attention with biases and sinks and the router touched; the experts (PEFT reaches them only as
    # target_parameters, test_moe_interop.py) copied
    "gptoss": dict(hidden_size=256, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
                   head_dim=64),
    # dense MLPs in layers 0 and 2 (their gate touched), experts and a shared expert in 1 and 3 (copied)
    "llama4": dict(hidden_size=256, intermediate_size=256, intermediate_size_mlp=512, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=64),
    # arch llama with experts: the w1 experts are touched; router, w3 and w2 copied
    "mixtral": dict(hidden_size=256, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
                    head_dim=64),
    # global_head_dim 128 and per-layer inputs of 256 follow; touches sliding, full, KV-shared and
    # double-wide layers and the per-layer-input modules
    "gemma4": dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
                   head_dim=64),
    # linear-attention heads follow hidden_size (value dim 3 x 256): every reordered tensor is touched
    "qwen35": dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
                   head_dim=64),
}
MERGE_ARCHS = list(CFG)
BASE_TYPES = ["f32", "f16", "q8_0", "q4_k_m"]
FLOAT_TYPES = ("f32", "f16")
FLOAT_FLOOR = 2e-2      # bound floor for float merged tensors
NOISE_FACTOR = 3.0      # bound = 3 x noise
WEIGHT_SLACK = 1.5      # per tensor: error <= 1.5 x ggml's own quantization error of the same values
GAIN_TOL = 0.01         # per tensor: |delta gain - ggml's| (a 1% wrong scale fails)
TINY_SCALE = 1e-6
Q8_ALIGNMENT = 64       # the Q8_0 base carries a custom general.alignment the merge must drop


# ---------------------------------------------------------------------------------------------
# bases, built once per session per arch
# ---------------------------------------------------------------------------------------------


@dataclass
class MergeBase:
    arch: object
    cfg: dict
    weights: dict               # HF float32 weights of the F32 base
    ref_logits: np.ndarray      # numpy forward on them
    paths: dict                 # base type -> GGUF path
    logits: dict                # base type -> llama.cpp logits


def _q8_0_tensor(name: str, x: np.ndarray):
    # norms, biases (gpt-oss's 2-d expert biases too), Qwen3.5's [channels, 4] conv kernel stay F32
    if x.ndim < 2 or x.shape[-1] % 32 or name.endswith(".bias"):
        return x
    return gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0


@pytest.fixture(scope="session")
def merge_bases(tmp_path_factory):
    cache: dict = {}

    def get(arch_name: str) -> MergeBase:
        if arch_name in cache:
            return cache[arch_name]
        if arch_name not in archs.ARCHS:
            pytest.fail(f"arch module {arch_name} not registered", pytrace=False)
        arch = archs.ARCHS[arch_name]
        d = tmp_path_factory.mktemp(f"merge-base-{arch_name}")
        b = harness.build_base(arch, d, seed=4321, **CFG[arch_name])
        paths = {"f32": b.path, "f16": d / f"base-{arch_name}-f16.gguf",
                 "q8_0": d / f"base-{arch_name}-q8_0.gguf", "q4_k_m": d / f"base-{arch_name}-q4_k_m.gguf"}
        arch.write_gguf(paths["f16"], b.cfg, b.weights, dtype="f16")
        harness.rewrite_gguf(b.path, paths["q8_0"], _q8_0_tensor, alignment=Q8_ALIGNMENT,
                             kv_overrides={"general.file_type": (int(gguf.LlamaFileType.MOSTLY_Q8_0),
                                                                 gguf.GGUFValueType.UINT32)})
        harness.llama_quantize(b.path, paths["q4_k_m"], llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M)
        logits = {t: harness.llama_logits_plain_cpu(p, TOKENS, d / f"run-{t}") for t, p in paths.items()}
        r = rel(logits["f32"], b.ref_logits)
        assert r < 1e-3, f"harness: llama.cpp on the F32 base vs numpy rel={r:.3e}"
        q4 = {t.type for t in read_gguf_raw(paths["q4_k_m"]).tensors.values()}
        assert {"Q4_K", "Q6_K"} <= q4, f"llama.cpp's Q4_K_M base is not the expected mix: {q4}"
        cache[arch_name] = MergeBase(arch, b.cfg, b.weights, b.ref_logits, paths, logits)
        return cache[arch_name]

    return get


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def touched_targets(arch) -> list[str]:
    """Every module but the MLP's, and the first MLP one: the other MLP weights stay untouched, so
    quantized untouched matrices get copied too (linear attention and per-layer modules count as
    attention here: each one's layout must be merged)."""
    mlp = [m for m in arch.LORA_MODULES if archs.module_path(arch, m).startswith(("mlp.", "shared_mlp.", "block_sparse_moe.", "feed_forward."))]
    experts = [m for m in mlp if "{e}" in archs.module_path(arch, m)]
    # MoE: one expert tensor instead (the router's LoRA is merged in test_moe_interop.py); fewer
    # re-quantized tensors keep the Q4_K_M noise well under the adapter's effect
    return [m for m in arch.LORA_MODULES if m not in mlp] + (experts[:1] or mlp[:1])


def make_adapter(mb: MergeBase, path: Path, seed: int, targets=None, r: int = 8, alpha: float = 16):
    return peft_lora.write_peft_adapter(path, mb.arch, mb.cfg, mb.weights, r=r, alpha=alpha,
                                        targets=targets or touched_targets(mb.arch),
                                        rng=np.random.default_rng(seed))


def gguf_names(mb: MergeBase, ad: peft_lora.PeftAdapter) -> set[str]:
    """GGUF names of the tensors a PEFT adapter touches (gguf-py's tensor map, as the HF converter
    names them), independent of the tool."""
    return archs.gguf_names(mb.arch, mb.cfg, [m.name + ".weight" for m in ad.modules])


def convert_f32(mb: MergeBase, ad: peft_lora.PeftAdapter, base: Path, out: Path) -> dict[str, np.ndarray]:
    """`convert --outtype f32` of one adapter; returns llama.cpp's delta per base tensor."""
    convert_ok([ad.path, "--base", base, "-o", out, "--outtype", "f32"])
    deltas = lora_deltas(out)
    assert set(deltas) == gguf_names(mb, ad), (
        f"converter touched {sorted(deltas)}, the PEFT modules map to {sorted(gguf_names(mb, ad))}")
    return deltas


def lora_deltas(adapter_gguf: Path) -> dict[str, np.ndarray]:
    """llama.cpp's delta per base tensor of a GGUF LoRA: alpha / r * lora_b @ lora_a (numpy
    order [rows, cols], the base tensor's GGUF layout), float64."""
    f = read_gguf_raw(adapter_gguf)
    alpha = float(f.kv["adapter.lora.alpha"][1])
    out = {}
    for name, t in f.tensors.items():
        if name.endswith(".lora_a"):
            base = name[:-len(".lora_a")]
            a = t.values().astype(np.float64)                            # [r, cols] ([E, r, cols])
            b = f.tensors[base + ".lora_b"].values().astype(np.float64)  # [rows, r] ([E, rows, r])
            out[base] = alpha / b.shape[-1] * (b @ a)                    # per expert for 3-d pairs
    return out


def combine(*weighted: tuple[float, dict]) -> dict[str, np.ndarray]:
    out: dict = {}
    for w, deltas in weighted:
        for k, v in deltas.items():
            out[k] = out.get(k, 0.0) + w * v
    return out


def check_structure(base_path: Path, merged_path: Path, touched: set[str], expect_type) -> harness.RawGguf:
    """Untouched tensors byte-identical, touched ones of type expect_type(base type), every base
    KV present and equal, general.alignment dropped and data aligned to 32, ollama_tools.* added."""
    base, out = read_gguf_raw(base_path), read_gguf_raw(merged_path)
    assert list(out.tensors) == list(base.tensors), "tensor names or order differ from the base"
    assert touched <= set(base.tensors), f"adapter touches tensors the base lacks: {sorted(touched - set(base.tensors))}"
    for name, bt in base.tensors.items():
        ot = out.tensors[name]
        assert ot.shape == bt.shape, f"{name}: shape {ot.shape} != base {bt.shape}"
        if name in touched:
            want = expect_type(bt.type)
            assert ot.type == want, f"touched {name}: type {ot.type}, expected {want} (base {bt.type})"
        else:
            assert ot.type == bt.type, f"untouched {name}: type {ot.type} != base {bt.type}"
            assert ot.data == bt.data, f"untouched {name} ({bt.type}) is not byte-identical to the base's"
    for key, (types, val) in base.kv.items():
        if key == "general.alignment":
            continue
        assert key in out.kv, f"base KV {key} missing from the merged file"
        assert out.kv[key] == (types, val), f"KV {key}: {out.kv[key]!r} != base {(types, val)!r}"
    assert "general.alignment" not in out.kv, f"general.alignment kept: {out.kv.get('general.alignment')}"
    assert out.alignment == 32
    unaligned = [n for n, t in out.tensors.items() if t.offset % 32]
    assert not unaligned, f"tensor data not 32-byte aligned: {unaligned}"
    for key in ("ollama_tools.version", "ollama_tools.merged.adapters", "ollama_tools.merged.weights",
                "ollama_tools.merged.scale"):
        assert key in out.kv, f"{key} missing"
    extra = set(out.kv) - set(base.kv) - {k for k in out.kv if k.startswith("ollama_tools.")}
    assert not extra, f"KVs neither from the base nor ollama_tools.*: {sorted(extra)}"
    return out


def ggml_roundtrip(type_name: str, target: np.ndarray) -> np.ndarray:
    """target quantized by ggml's reference quantizer and dequantized again."""
    raw = harness.ggml_quantize_ref(type_name, target.astype(np.float32))
    return harness.RawTensor(type_name, target.shape, raw, 0).values()


def delta_gain(values: np.ndarray, base_values: np.ndarray, delta: np.ndarray) -> float:
    """Least-squares factor g in values - base_values ~ g * delta: 1 for a merge that carries the
    delta, quantization noise aside (which projects onto a 65k-value delta as ~1e-3 at most)."""
    d = delta.reshape(-1)
    return float(np.dot((values.astype(np.float64) - base_values).reshape(-1), d) / np.dot(d, d))


@dataclass
class WeightFigures:
    worst_ratio: float = 0.0     # max over touched tensors of err / ggml's err
    worst: str = ""              # "name (type) err e = r x ggml's"
    gain_dev: float = 0.0        # max |gain - ggml's gain|


def check_weights(base_path: Path, merged: harness.RawGguf, deltas: dict[str, np.ndarray]) -> WeightFigures:
    """Per touched tensor, against ggml's reference quantization of the same target values
    dequant(base) + delta: the error must not exceed WEIGHT_SLACK x ggml's, and the delta the
    tensor carries (its least-squares gain along delta) must equal the gain of ggml's within
    GAIN_TOL, which catches a wrong scale far below the quantization noise."""
    base = read_gguf_raw(base_path)
    fig, failures = WeightFigures(), []
    for name, delta in sorted(deltas.items()):
        bt, t = base.tensors[name], merged.tensors[name]
        base_values = bt.values().astype(np.float64)
        target = base_values + delta
        got, ref = t.values(), ggml_roundtrip(t.type, target)
        err, ref_err = rel(got, target), rel(ref, target)
        gain, ref_gain = delta_gain(got, base_values, delta), delta_gain(ref, base_values, delta)
        ratio = err / max(ref_err, 1e-7)
        if ratio > fig.worst_ratio:
            fig.worst_ratio, fig.worst = ratio, f"{name} ({t.type}) err {err:.2e} = {ratio:.2f}x ggml's {ref_err:.2e}"
        fig.gain_dev = max(fig.gain_dev, abs(gain - ref_gain))
        where = f"{name} (base {bt.type} -> {t.type})"
        if err > WEIGHT_SLACK * ref_err + 1e-6:
            failures.append(f"{where}: rel error {err:.3e} vs target dequant(base) + delta; ggml's own "
                            f"{t.type} quantization of the same values: {ref_err:.3e}")
        if abs(gain - ref_gain) > GAIN_TOL:
            failures.append(f"{where}: carries {gain:.4f} x the expected delta (ggml's quantization of the "
                            f"target: {ref_gain:.4f})")
    assert not failures, "merged tensors off target:\n" + "\n".join(failures)
    return fig


def reference_merge(base_path: Path, out: Path, deltas: dict[str, np.ndarray], merged_type: str | None) -> None:
    """The merge without the tool: a copy of the base whose touched tensors are dequant(base) +
    delta quantized by ggml's reference quantizer to the base tensor's type (or merged_type)."""
    base = read_gguf_raw(base_path)

    def fn(name, arr):
        if name not in deltas:
            return arr
        t = base.tensors[name]
        ty = merged_type.upper() if merged_type else t.type
        target = (t.values().astype(np.float64) + deltas[name]).astype(np.float32)
        if ty in ("F32", "F16"):
            return target.astype(np.float16) if ty == "F16" else target
        raw = np.frombuffer(harness.ggml_quantize_ref(ty, target), dtype=np.uint8)
        return raw.reshape(*target.shape[:-1], -1), gguf.GGMLQuantizationType[ty]

    harness.rewrite_gguf(base_path, out, fn)


def compare_with_reference(merged: harness.RawGguf, ref: harness.RawGguf, deltas: dict) -> tuple[float, float]:
    """Touched tensors of the tool's file vs ggml's quantization of the same merge: the share of
    identical bytes, and the largest rel difference of the values (for the report)."""
    same = total = 0
    wdiff = 0.0
    for name in deltas:
        a = np.frombuffer(merged.tensors[name].data, np.uint8)
        b = np.frombuffer(ref.tensors[name].data, np.uint8)
        same += int(np.sum(a == b)) if a.size == b.size else 0
        total += a.size
        wdiff = max(wdiff, rel(merged.tensors[name].values(), ref.tensors[name].values()))
    return same / max(total, 1), wdiff


def numpy_reference(mb: MergeBase, adapters, base_type: str, global_scale: float = 1.0) -> np.ndarray:
    """HF forward on the base's float weights (f16-rounded for the F16 base) + PEFT deltas."""
    w = mb.weights
    if base_type == "f16":
        w = {k: (v.astype(np.float16).astype(np.float32) if v.ndim >= 2 else v) for k, v in w.items()}
    return mb.arch.forward(mb.cfg, peft_lora.merge(w, adapters, global_scale), TOKENS)


@dataclass
class Case:
    label: str
    base_type: str
    adapters_cli: list                   # merge's ADAPTER[:WEIGHT] arguments
    loras: list                          # [(converted f32 adapter, llama.cpp scale)]
    touched: set                         # GGUF names the adapters touch (independent mapping)
    deltas: dict                         # name -> the delta its merged tensor must carry
    scale: float | None = None           # merge --scale
    merged_type: str | None = None       # --merged-type (None: keep)
    numpy_adapters: list | None = None   # [(PeftAdapter, weight)] for the numpy reference
    global_scale: float = 1.0


def run_case(mb: MergeBase, case: Case, tmp_path: Path) -> harness.RawGguf:
    """Merge, then check the file, the touched tensors and the logits."""
    base = mb.paths[case.base_type]
    type_args = ("--merged-type", case.merged_type) if case.merged_type else ()
    args = [*case.adapters_cli, "--base", base, *type_args]
    scale_args = ("--scale", case.scale) if case.scale is not None else ()
    merged_path = tmp_path / "merged.gguf"
    p = merge_ok([*args, *scale_args, "-o", merged_path, "--json"])
    want = (lambda t: case.merged_type.upper()) if case.merged_type else (lambda t: t)
    merged = check_structure(base, merged_path, case.touched, expect_type=want)
    summary = json.loads(p.stdout)
    assert summary.get("merged") == len(case.touched), f"--json summary: {summary}"
    wf = check_weights(base, merged, case.deltas)

    noisy = tmp_path / "requant.gguf"   # the same merge, --scale 1e-6 instead of the case's
    merge_ok([*args, "--scale", TINY_SCALE, "-o", noisy])
    ref_path = tmp_path / "reference-merge.gguf"
    reference_merge(base, ref_path, case.deltas, case.merged_type)

    def run(path, name, adapters=()):
        return harness.llama_logits_plain_cpu(path, TOKENS, tmp_path / name, adapters=adapters)

    got, with_lora = run(merged_path, "run-merged"), run(base, "run-lora", case.loras)
    requant, ggml_merged = run(noisy, "run-requant"), run(ref_path, "run-reference-merge")
    base_logits = mb.logits[case.base_type]
    f = {
        "rel": rel(got, with_lora),
        "effect": rel(with_lora, base_logits),
        "requant": rel(requant, base_logits),
        "ggml_merge": rel(ggml_merged, with_lora),
        "vs_ggml_merge": rel(got, ggml_merged),
        "type": None if case.base_type in FLOAT_TYPES else rel(base_logits, mb.logits["f32"]),
    }
    bound = NOISE_FACTOR * max(f["requant"], f["ggml_merge"])
    if (case.merged_type or case.base_type) in FLOAT_TYPES:
        bound = max(bound, FLOAT_FLOOR)

    harness.record(f"merge {case.label}", f["rel"], bound, effect=f["effect"])
    harness.record(f"merge {case.label} vs ggml merge", f["vs_ggml_merge"], bound)
    same, wdiff = compare_with_reference(merged, read_gguf_raw(ref_path), case.deltas)
    tn = "-" if f["type"] is None else f"{f['type']:.2e}"
    text = (f"rel {f['rel']:.2e} < bound {bound:.2e} [requant noise {f['requant']:.2e}, ggml-merge noise "
            f"{f['ggml_merge']:.2e}; type noise {tn}]; vs ggml merge {f['vs_ggml_merge']:.2e}; effect "
            f"{f['effect']:.3f}; worst tensor {wf.worst}; max delta gain deviation {wf.gain_dev:.1e}; "
            f"bytes as ggml's {same:.2%}, max weight diff to ggml's {wdiff:.2e}")
    harness.record_note(f"merge {case.label}", text)
    print(f"merge {case.label}: {text}")

    # Routing turns a Q4_K_M base's noise into logit noise close to an adapter's effect in the tiny
    # mixtures of experts (a stronger adapter raises both): there the per-tensor gain check of
    # check_weights (1% of the delta) is what rules out a merge that dropped the delta.
    routed = case.base_type == "q4_k_m" and hasattr(mb.arch, "ROUTING_MARGIN")
    assert routed or f["effect"] > 1.5 * bound, (
        f"adapter effect {f['effect']:.3f} not above 1.5 x the bound {bound:.3e}: a merge that dropped the delta could pass")
    assert f["rel"] < bound, (
        f"{case.label}: merged GGUF vs llama.cpp base + --lora rel {f['rel']:.3e} >= bound {bound:.3e} "
        f"(requant noise {f['requant']:.2e}, ggml-merge noise {f['ggml_merge']:.2e})")
    assert f["vs_ggml_merge"] < bound, (
        f"{case.label}: merged GGUF vs the same merge quantized by ggml: rel {f['vs_ggml_merge']:.3e} >= {bound:.2e}")

    if case.numpy_adapters is not None:
        ref = numpy_reference(mb, case.numpy_adapters, case.base_type, case.global_scale)
        r_np = rel(got, ref)
        harness.record(f"merge {case.label} vs numpy", r_np, FLOAT_FLOOR, effect=rel(ref, mb.ref_logits))
        assert r_np < FLOAT_FLOOR, f"{case.label}: merged GGUF vs numpy PEFT reference rel {r_np:.3e}"
    return merged


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("base_type", BASE_TYPES)
@pytest.mark.parametrize("arch_name", MERGE_ARCHS)
def test_merge_matches_lora(arch_name, base_type, merge_bases, tmp_path):
    """One adapter (every attention module + the first MLP one), --merged-type keep."""
    harness.require_binary()
    mb = merge_bases(arch_name)
    base = mb.paths[base_type]
    ad = make_adapter(mb, tmp_path / "adapter", seed=100 + BASE_TYPES.index(base_type))
    lora = tmp_path / "lora-f32.gguf"
    deltas = convert_f32(mb, ad, base, lora)
    run_case(mb, Case(f"{arch_name} {base_type} keep", base_type, [ad.path], [(lora, 1.0)], gguf_names(mb, ad),
                      deltas, numpy_adapters=[(ad, 1.0)] if base_type in FLOAT_TYPES else None), tmp_path)


@pytest.mark.parametrize("merged_type", ["f16", "q8_0"])
def test_merged_type_on_q4_k_base(merged_type, merge_bases, tmp_path):
    """--merged-type f16 / q8_0 on the Q4_K_M llama base: every touched tensor (Q4_K and Q6_K in
    the base) gets that type, and the logits still match base + --lora."""
    harness.require_binary()
    mb = merge_bases("llama")
    base = mb.paths["q4_k_m"]
    ad = make_adapter(mb, tmp_path / "adapter", seed=200)
    lora = tmp_path / "lora-f32.gguf"
    deltas = convert_f32(mb, ad, base, lora)
    touched = gguf_names(mb, ad)
    assert {read_gguf_raw(base).tensors[n].type for n in touched} == {"Q4_K", "Q6_K"}
    run_case(mb, Case(f"llama q4_k_m --merged-type {merged_type}", "q4_k_m", [ad.path], [(lora, 1.0)], touched,
                      deltas, merged_type=merged_type), tmp_path)


def test_merge_stacked_adapters(merge_bases, tmp_path):
    """`merge a:1.0 b:0.5` (overlapping on q_proj) on the F32 llama base == llama.cpp with both
    converted adapters at scales 1.0 and 0.5 == numpy on W + delta_a + 0.5 * delta_b."""
    harness.require_binary()
    mb = merge_bases("llama")
    base = mb.paths["f32"]
    a = make_adapter(mb, tmp_path / "a", seed=300, targets=["q_proj", "v_proj", "o_proj"])
    b = make_adapter(mb, tmp_path / "b", seed=301, targets=["q_proj", "k_proj", "gate_proj"], r=4, alpha=32)
    lora_a, lora_b = tmp_path / "a-f32.gguf", tmp_path / "b-f32.gguf"
    deltas = combine((1.0, convert_f32(mb, a, base, lora_a)), (0.5, convert_f32(mb, b, base, lora_b)))
    merged = run_case(mb, Case("llama f32 stacked a:1.0 b:0.5", "f32", [f"{a.path}:1.0", f"{b.path}:0.5"],
                               [(lora_a, 1.0), (lora_b, 0.5)], gguf_names(mb, a) | gguf_names(mb, b), deltas,
                               numpy_adapters=[(a, 1.0), (b, 0.5)]), tmp_path)
    assert list(merged.kv["ollama_tools.merged.weights"][1]) == [1.0, 0.5], merged.kv["ollama_tools.merged.weights"]


def test_merge_scale_half_on_q4_k_base(merge_bases, tmp_path):
    """`merge --scale 0.5` on the Q4_K_M llama base == llama.cpp base + the adapter at scale 0.5."""
    harness.require_binary()
    mb = merge_bases("llama")
    base = mb.paths["q4_k_m"]
    ad = make_adapter(mb, tmp_path / "adapter", seed=400)
    lora = tmp_path / "lora-f32.gguf"
    deltas = combine((0.5, convert_f32(mb, ad, base, lora)))
    merged = run_case(mb, Case("llama q4_k_m --scale 0.5", "q4_k_m", [ad.path], [(lora, 0.5)], gguf_names(mb, ad),
                               deltas, scale=0.5), tmp_path)
    assert merged.kv["ollama_tools.merged.scale"][1] == 0.5, merged.kv["ollama_tools.merged.scale"]


@pytest.mark.parametrize("base_type", ["q4_k_m", "f16"])
def test_weight_checks_catch_wrong_merges(base_type, merge_bases, tmp_path):
    """Power of check_weights, without the tool: ggml's own merge of the PEFT deltas passes; the
    same merge with the delta 3% too weak, or with its rows in another order (a layout slip),
    fails and names the tensor. Modules without a Q/K row permutation, so the PEFT delta is the
    GGUF one."""
    mb = merge_bases("llama")
    base = mb.paths[base_type]
    ad = make_adapter(mb, tmp_path / "adapter", seed=500, targets=["v_proj", "o_proj", "gate_proj"])
    n_layers = mb.cfg["num_hidden_layers"]
    deltas = {next(iter(C.gguf_tensor_names("llama", n_layers, {m.name + ".weight": None}))): m.delta()
              for m in ad.modules}
    good = tmp_path / "good.gguf"
    reference_merge(base, good, deltas, None)
    check_weights(base, read_gguf_raw(good), deltas)

    victim = "blk.1.attn_v.weight"
    perm = mb.arch.permute_qk
    for label, bad_delta in (("3% weak", 0.97 * deltas[victim]),
                             ("rows permuted", perm(deltas[victim], mb.cfg["num_key_value_heads"]))):
        bad = tmp_path / f"bad-{label.replace(' ', '_').replace('%', '')}.gguf"
        reference_merge(base, bad, {**deltas, victim: bad_delta}, None)
        with pytest.raises(AssertionError, match=victim) as e:
            check_weights(base, read_gguf_raw(bad), deltas)
        harness.record_note(f"weight check on a {label} {base_type} merge", str(e.value).splitlines()[1].strip())


def test_merged_type_cli_spelling():
    """The CLI contract: `--merged-type keep|f16|q8_0`."""
    harness.require_binary()
    for value in ("keep", "f16", "q8_0"):
        p = harness.run_merge(["--merged-type", value, "--help"])
        assert p.returncode == 0, f"--merged-type {value} rejected: {p.stderr.strip()[:300]}"


def test_amx_probe_note(merge_bases, tmp_path):
    """Records (no assertion) whether the stock llama_worker, extra buffer types on, survives a
    quantized model on this machine: the reason this file turns them off."""
    from llama_runner import run_llama

    r = run_llama(merge_bases("llama").paths["q8_0"], TOKENS, tmp_path)
    harness.record_note("stock llama_worker on a Q8_0 model", f"returncode {r.returncode}, stages {r.stages}")
