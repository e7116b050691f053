"""Mixture-of-experts adapters in the real llama.cpp, beyond what the generic convert and merge
suites cover with per-expert modules (archs/qwen3moe.py):

- PEFT `target_parameters` on transformers 5's fused expert parameters (`mlp.experts.gate_up_proj`
  [E, 2F, H], `mlp.experts.down_proj` [E, H, F]) and on the router weight (`mlp.gate.weight`). The
  reference applies PEFT's ParamWrapper semantics written out here from PEFT 0.21.2's source
  (tuners/lora/layer.py): lora_A [r*E, in] holds expert e's rows at e*r, lora_B [out, r*E] its
  columns at e + k*E, delta_e = alpha/r * B_e @ A_e in the nn.Linear orientation; gate_up's rows are
  gate then up. The keys name the module, not the parameter: with both targeted, the
  first-registered gate_up_proj is the inner wrapper (`mlp.experts.base_layer.lora_A`).
- Llama 4's experts, for which PEFT swaps the roles of lora_A and lora_B (its experts class stores
  [E, in, out] without `is_transposed`), converted and merged into F32, F16, Q8_0 and Q4_K experts.
- A top-k choice near a tie would make llama.cpp and the reference route differently for reasons
  that have nothing to do with the adapter: every reference forward records its smallest gap between
  the k-th and (k+1)-th router probability, and the test requires it to stay clear of rounding.
"""
from __future__ import annotations

import json

import gguf
import numpy as np
import pytest

import archs
import harness
import peft_lora
from harness import TOKENS, convert_ok, merge_ok, rel
from llama_runner import llama_logits

TOL = 5e-3            # F16 adapter tensors
MERGE_TOL = 1e-3      # F32 base merged in F32
MIN_EFFECT = 0.1
MIN_ROUTING_GAP = 2e-3   # seeds 120 / 96 chosen by search: gaps 5.7e-3 (base), 7.6e-3 (adapted)


def fused_adapter(path, cfg, weights, rng, r=4, alpha=8.0, experts=None):
    """A PEFT adapter as PEFT 0.21.2 saves target_parameters on Qwen3-MoE: fused experts of every
    layer, the router, and q_proj. Returns (dir, merged HF weights by PEFT's semantics)."""
    n, h, f = cfg["num_experts"], cfg["hidden_size"], cfg["moe_intermediate_size"]
    n_saved = n if experts is None else experts
    s = alpha / r
    merged = {k: v.astype(np.float64) for k, v in weights.items()}
    tensors = {}

    def pair(key, out_f, in_f, width):
        A = (rng.standard_normal((r * width, in_f)) / np.sqrt(in_f)).astype(np.float32)
        B = (rng.standard_normal((out_f, r * width)) * 0.6 / np.sqrt(r)).astype(np.float32)
        tensors[f"base_model.model.{key}.lora_A.weight"], tensors[f"base_model.model.{key}.lora_B.weight"] = A, B
        return A.astype(np.float64), B.astype(np.float64)

    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        A, B = pair(p + "mlp.experts.base_layer", 2 * f, h, n_saved)     # gate_up_proj (inner wrapper)
        for e in range(min(n, n_saved)):
            delta = s * B[:, e::n_saved] @ A[e * r:(e + 1) * r]        # [2F, H], gate rows then up rows
            merged[p + f"mlp.experts.{e}.gate_proj.weight"] += delta[:f]
            merged[p + f"mlp.experts.{e}.up_proj.weight"] += delta[f:]
        A, B = pair(p + "mlp.experts", h, f, n_saved)                   # down_proj (outer wrapper)
        for e in range(min(n, n_saved)):
            merged[p + f"mlp.experts.{e}.down_proj.weight"] += s * B[:, e::n_saved] @ A[e * r:(e + 1) * r]
        A, B = pair(p + "mlp.gate", n, h, 1)                            # router weight, a 2-d parameter
        merged[p + "mlp.gate.weight"] += 0.5 * s * B @ A
        A, B = pair(p + "self_attn.q_proj", weights[p + "self_attn.q_proj.weight"].shape[0], h, 1)
        merged[p + "self_attn.q_proj.weight"] += s * B @ A
    # The router's pair is scaled down a little (routing stays clear of ties), through its own B.
    for key in [k for k in tensors if k.endswith("mlp.gate.lora_B.weight")]:
        tensors[key] = tensors[key] * 0.5
    path.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": alpha, "bias": "none",
        "base_model_name_or_path": "Qwen/Qwen3-30B-A3B", "peft_version": "0.21.2",
        "target_modules": ["q_proj"],
        "target_parameters": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj", "mlp.gate.weight"],
    }
    (path / "adapter_config.json").write_text(json.dumps(config))
    peft_lora.write_safetensors(path / "adapter_model.safetensors", tensors, "f32")
    return path, {k: v.astype(np.float32) for k, v in merged.items()}


def reference(arch, cfg, weights, min_gap=MIN_ROUTING_GAP):
    """The numpy logits, refusing a top-k choice within `min_gap` of a tie (router probability, or
    router logit for the archs that route by logit)."""
    logits = arch.forward(cfg, weights, TOKENS)
    gap = arch.ROUTING_MARGIN[0][0]
    assert gap > min_gap, f"a top-k choice sits near a tie (gap {gap:.2e}): pick other seeds"
    return logits


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    arch = archs.ARCHS["qwen3moe"]
    d = tmp_path_factory.mktemp("moe")
    base = harness.build_base(arch, d / "base", seed=120)
    reference(arch, base.cfg, base.weights)
    adapter, merged = fused_adapter(d / "fused", base.cfg, base.weights, np.random.default_rng(96))
    return arch, base, adapter, merged, reference(arch, base.cfg, merged)


def test_fused_expert_parameters_convert_exactly(moe, tmp_path):
    harness.require_binary()
    arch, base, adapter, merged, ref = moe
    out = tmp_path / "adapter.gguf"
    p = convert_ok([adapter, "--base", base.path, "-o", out])
    tensors = harness.read_gguf(out).tensors
    # Stacked pairs, one per expert tensor: lora_a [E, r, in], lora_b [E, out, r] (numpy order).
    assert tensors["blk.0.ffn_gate_exps.weight.lora_a"][1] == (4, 4, 64), tensors
    assert tensors["blk.0.ffn_up_exps.weight.lora_b"][1] == (4, 32, 4), tensors
    got = llama_logits(base.path, TOKENS, tmp_path, adapters=[(out, 1.0)])
    r, effect = rel(got, ref), rel(ref, base.ref_logits)
    harness.record("qwen3moe target_parameters convert", r, TOL, effect=effect)
    assert effect > MIN_EFFECT and r < TOL, f"rel {r:.3e}, effect {effect:.3f}\n{p.stderr}"


def test_fused_expert_parameters_merge_exactly(moe, tmp_path):
    harness.require_binary()
    arch, base, adapter, merged, ref = moe
    out = tmp_path / "merged.gguf"
    merge_ok([adapter, "--base", base.path, "-o", out])
    got = harness.llama_logits_plain_cpu(out, TOKENS, tmp_path / "run")
    r = rel(got, ref)
    harness.record("qwen3moe target_parameters merge F32", r, MERGE_TOL, effect=rel(ref, base.ref_logits))
    assert r < MERGE_TOL, f"merged vs numpy rel {r:.3e}"


def test_an_adapter_for_another_expert_count_is_refused(moe, tmp_path):
    harness.require_binary()
    arch, base, _, _, _ = moe
    adapter, _ = fused_adapter(tmp_path / "eight", base.cfg, base.weights, np.random.default_rng(93), experts=8)
    p = harness.run_convert([adapter, "--base", base.path, "-o", tmp_path / "x.gguf"])
    assert p.returncode != 0 and "ffn_gate_exps" in p.stderr and "8 experts" in p.stderr, p.stderr
    assert not (tmp_path / "x.gguf").exists()


def test_per_expert_adapter_with_some_experts_left_out(moe, tmp_path):
    """A per-expert (transformers 4) adapter on experts 0 and 2 only: the stacked pair gets zero
    blocks for experts 1 and 3 (llama.cpp indexes every expert), and merging touches only 0 and 2."""
    harness.require_binary()
    arch, base, _, _, _ = moe
    targets = [f"mlp.experts.{e}.{m}" for e in (0, 2) for m in ("gate_proj", "down_proj")]
    ad = peft_lora.write_peft_adapter(tmp_path / "a", arch, base.cfg, base.weights, r=4, alpha=8,
                                      targets=targets, rng=np.random.default_rng(95))
    assert {m.name.split(".")[5] for m in ad.modules} == {"0", "2"}
    ref = reference(arch, base.cfg, peft_lora.merge(base.weights, [(ad, 1.0)]))
    out = tmp_path / "adapter.gguf"
    convert_ok([ad.path, "--base", base.path, "-o", out, "--outtype", "f32"])
    got = llama_logits(base.path, TOKENS, tmp_path, adapters=[(out, 1.0)])
    r, effect = rel(got, ref), rel(ref, base.ref_logits)
    harness.record("qwen3moe experts 0 and 2 only, convert", r, 1e-3, effect=effect)
    assert effect > MIN_EFFECT and r < 1e-3, f"rel {r:.3e}, effect {effect:.3f}"
    merged = tmp_path / "merged.gguf"
    merge_ok([ad.path, "--base", base.path, "-o", merged])
    m, b = harness.read_gguf_raw(merged).tensors, harness.read_gguf_raw(base.path).tensors
    gate_m, gate_b = m["blk.0.ffn_gate_exps.weight"].values(), b["blk.0.ffn_gate_exps.weight"].values()
    assert [bool(np.any(gate_m[e] != gate_b[e])) for e in range(4)] == [True, False, True, False]
    r = rel(harness.llama_logits_plain_cpu(merged, TOKENS, tmp_path / "run"), ref)
    harness.record("qwen3moe experts 0 and 2 only, merge F32", r, MERGE_TOL)
    assert r < MERGE_TOL, f"merged vs numpy rel {r:.3e}"


def test_rank_pattern_on_a_fused_parameter(moe, tmp_path):
    """rank_pattern / alpha_pattern name the parameter (`gate_up_proj`): its lora_A holds 8 rows per
    expert, down_proj's the default 4, each with its own scale."""
    harness.require_binary()
    arch, base, _, _, _ = moe
    cfg, n, h, f = base.cfg, base.cfg["num_experts"], base.cfg["hidden_size"], base.cfg["moe_intermediate_size"]
    rng, merged, tensors = np.random.default_rng(98), {k: v.astype(np.float64) for k, v in base.weights.items()}, {}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for key, r, alpha, out_f, in_f in (("mlp.experts.base_layer", 8, 32.0, 2 * f, h), ("mlp.experts", 4, 8.0, h, f)):
            A = (rng.standard_normal((r * n, in_f)) / np.sqrt(in_f)).astype(np.float32)
            B = (rng.standard_normal((out_f, r * n)) * 0.4 / np.sqrt(r)).astype(np.float32)
            tensors[f"base_model.model.{p}{key}.lora_A.weight"], tensors[f"base_model.model.{p}{key}.lora_B.weight"] = A, B
            for e in range(n):
                delta = alpha / r * B[:, e::n].astype(np.float64) @ A[e * r:(e + 1) * r]
                if key.endswith("base_layer"):
                    merged[p + f"mlp.experts.{e}.gate_proj.weight"] += delta[:f]
                    merged[p + f"mlp.experts.{e}.up_proj.weight"] += delta[f:]
                else:
                    merged[p + f"mlp.experts.{e}.down_proj.weight"] += delta
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 4, "lora_alpha": 8, "rank_pattern": {"gate_up_proj": 8},
        "alpha_pattern": {"gate_up_proj": 32}, "target_parameters": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]}))
    peft_lora.write_safetensors(tmp_path / "a" / "adapter_model.safetensors", tensors, "f32")
    ref = reference(arch, cfg, {k: v.astype(np.float32) for k, v in merged.items()})
    out = tmp_path / "adapter.gguf"
    convert_ok([tmp_path / "a", "--base", base.path, "-o", out, "--outtype", "f32"])
    got = llama_logits(base.path, TOKENS, tmp_path, adapters=[(out, 1.0)])
    r, effect = rel(got, ref), rel(ref, base.ref_logits)
    harness.record("qwen3moe target_parameters rank/alpha patterns", r, 1e-3, effect=effect)
    assert effect > MIN_EFFECT and r < 1e-3, f"rel {r:.3e}, effect {effect:.3f}"


def gptoss_adapter(path, cfg, weights, rng, r=4, alpha=8.0):
    """target_parameters on gpt-oss's fused experts as PEFT saves them: its experts class is
    `is_transposed` (parameters [E, in, out], used as x @ W), so PEFT's delta is (B_e @ A_e)^T,
    still A [r*E, in] expert-major and B [out, r*E] expert-minor; gate_up's out is interleaved."""
    n = cfg["num_local_experts"]
    s, merged, tensors = alpha / r, {k: v.astype(np.float64) for k, v in weights.items()}, {}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for key, param in (("mlp.experts.base_layer", "gate_up_proj"), ("mlp.experts", "down_proj")):
            W = weights[p + "mlp.experts." + param]                     # [E, in, out]
            in_f, out_f = W.shape[1], W.shape[2]
            A = (rng.standard_normal((r * n, in_f)) / np.sqrt(in_f)).astype(np.float32)
            B = (rng.standard_normal((out_f, r * n)) * 0.5 / np.sqrt(r)).astype(np.float32)
            tensors[f"base_model.model.{p}{key}.lora_A.weight"] = A
            tensors[f"base_model.model.{p}{key}.lora_B.weight"] = B
            for e in range(n):
                merged[p + "mlp.experts." + param][e] += (s * B[:, e::n].astype(np.float64) @ A[e * r:(e + 1) * r]).T
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": r, "lora_alpha": alpha, "base_model_name_or_path": "openai/gpt-oss-20b",
        "target_parameters": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]}))
    peft_lora.write_safetensors(path / "adapter_model.safetensors", tensors, "f32")
    return path, {k: v.astype(np.float32) for k, v in merged.items()}


def test_gptoss_interleaved_experts_convert_and_merge_exactly(tmp_path):
    """gpt-oss's gate/up rows alternate: each expert's lora_B rows split even -> gate, odd -> up."""
    harness.require_binary()
    arch = archs.ARCHS["gptoss"]
    # seeds chosen by search: router logit gaps 0.20 (base) and 0.25 (adapted)
    base = harness.build_base(arch, tmp_path / "base", seed=132)
    adapter, merged = gptoss_adapter(tmp_path / "a", base.cfg, base.weights, np.random.default_rng(133))
    ref = reference(arch, base.cfg, merged, min_gap=0.05)
    effect = rel(ref, base.ref_logits)
    convert_and_merge_exactly("gpt-oss target_parameters", adapter, base, ref, effect, tmp_path)


def convert_and_merge_exactly(label, adapter, base, ref, effect, tmp_path):
    """The adapter converted to F32 and applied by llama.cpp, and merged into the F32 base, both
    matching the numpy reference. Returns the converted adapter's path."""
    out = tmp_path / "adapter.gguf"
    convert_ok([adapter, "--base", base.path, "-o", out, "--outtype", "f32"])
    got = llama_logits(base.path, TOKENS, tmp_path, adapters=[(out, 1.0)])
    r = rel(got, ref)
    harness.record(f"{label} convert", r, 1e-3, effect=effect)
    assert effect > MIN_EFFECT and r < 1e-3, f"rel {r:.3e}, effect {effect:.3f}"
    m = tmp_path / "merged.gguf"
    merge_ok([adapter, "--base", base.path, "-o", m])
    r = rel(harness.llama_logits_plain_cpu(m, TOKENS, tmp_path / "run"), ref)
    harness.record(f"{label} merge F32", r, MERGE_TOL, effect=effect)
    assert r < MERGE_TOL, f"merged vs numpy rel {r:.3e}"
    return out


def test_gptoss_mxfp4_experts_merge_keeps_mxfp4_bit_for_bit(tmp_path):
    """A base whose experts are MXFP4, as gpt-oss ships: the merged experts stay MXFP4 and equal
    ggml's own MXFP4 quantization of dequant(base) + delta (the delta from our F32 adapter file, as
    llama.cpp applies it), and the model runs in llama.cpp."""
    harness.require_binary()
    arch = archs.ARCHS["gptoss"]
    cfg = arch.tiny_config()
    weights = arch.random_weights(cfg, np.random.default_rng(140))
    mx = gguf.GGMLQuantizationType.MXFP4

    def quant(name, arr):
        return (gguf.quants.quantize(arr, mx), mx) if name.endswith("_exps.weight") else None

    base = tmp_path / "base.gguf"
    arch.write_gguf(base, cfg, weights, quant=quant)
    adapter, _ = gptoss_adapter(tmp_path / "a", cfg, weights, np.random.default_rng(141))
    lora = tmp_path / "lora.gguf"
    convert_ok([adapter, "--base", base, "-o", lora, "--outtype", "f32"])
    merged = tmp_path / "merged.gguf"
    merge_ok([adapter, "--base", base, "-o", merged])
    b, mg, lo = (harness.read_gguf_raw(x) for x in (base, merged, lora))
    alpha = float(lo.kv["adapter.lora.alpha"][1])
    same = total = 0
    for name, t in mg.tensors.items():
        if not name.endswith("_exps.weight"):
            continue
        assert t.type == "MXFP4", f"{name} became {t.type}"
        A, B = lo.tensors[name + ".lora_a"].values(), lo.tensors[name + ".lora_b"].values()
        target = b.tensors[name].values().astype(np.float64) + alpha / B.shape[-1] * (B.astype(np.float64) @ A)
        want = np.frombuffer(harness.ggml_quantize_ref("MXFP4", target.astype(np.float32)), dtype=np.uint8)
        got = np.frombuffer(t.data, dtype=np.uint8)
        same += int(np.sum(got == want))
        total += got.size
    harness.record_note("gpt-oss MXFP4 merge", f"{same / total:.4%} of the expert bytes as ggml's MXFP4 of the same target")
    # f32 sums in a different order may flip a value across a rounding boundary: nearly every byte agrees
    assert same / total > 0.99, f"only {same / total:.4%} of the MXFP4 expert bytes match ggml's"
    harness.llama_logits_plain_cpu(merged, TOKENS, tmp_path / "run")  # loads and runs


def llama4_adapter(path, cfg, weights, rng, r=4, alpha=8.0):
    """target_parameters on Llama 4's fused experts as PEFT 0.21.2 saves them. Llama4TextExperts
    stores [E, in, out] (used as x @ W) but does not say so (`is_transposed`), so PEFT swaps what
    it calls in and out: lora_A is [r*E, out], lora_B [in, r*E], and its delta B_e @ A_e
    ([in, out], the parameter's own layout) is added to W[e] (tuners/lora/layer.py,
    get_delta_weight's `e o i` branch). Plus the router and the shared expert's up_proj."""
    n = cfg["num_local_experts"]
    s, merged, tensors = alpha / r, {k: v.astype(np.float64) for k, v in weights.items()}, {}

    def pair(key, a_shape, b_shape, gain=0.5):
        A = (rng.standard_normal(a_shape) / np.sqrt(a_shape[1])).astype(np.float32)
        B = (rng.standard_normal(b_shape) * gain / np.sqrt(r)).astype(np.float32)
        tensors[f"base_model.model.{key}.lora_A.weight"], tensors[f"base_model.model.{key}.lora_B.weight"] = A, B
        return A.astype(np.float64), B.astype(np.float64)

    for i in (i for i in range(cfg["num_hidden_layers"]) if archs.ARCHS["llama4"].is_sparse(cfg, i)):
        p = f"model.layers.{i}.feed_forward."
        for key, param in (("experts.base_layer", "gate_up_proj"), ("experts", "down_proj")):
            W = weights[p + "experts." + param]                          # [E, in, out]
            A, B = pair(p + key, (r * n, W.shape[2]), (W.shape[1], r * n))
            for e in range(n):
                merged[p + "experts." + param][e] += s * B[:, e::n] @ A[e * r:(e + 1) * r]
        for module in ("router", "shared_expert.up_proj"):
            W = weights[p + module + ".weight"]
            A, B = pair(p + module, (r, W.shape[1]), (W.shape[0], r), 0.3 if module == "router" else 0.5)
            merged[p + module + ".weight"] += s * B @ A
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": r, "lora_alpha": alpha, "peft_version": "0.21.2",
        "base_model_name_or_path": "meta-llama/Llama-4-Scout-17B-16E-Instruct",
        "target_modules": ["router", "up_proj"],
        "target_parameters": ["feed_forward.experts.gate_up_proj", "feed_forward.experts.down_proj"]}))
    peft_lora.write_safetensors(path / "adapter_model.safetensors", tensors, "f32")
    return path, {k: v.astype(np.float32) for k, v in merged.items()}


def test_llama4_swapped_expert_factors_convert_and_merge_exactly(tmp_path):
    """Llama 4's expert LoRA has A and B the other way round (A faces the outputs): converted, the
    pair becomes lora_a = B_e^T, lora_b = A_e^T per expert; merged, W_e^T + s * A_e^T B_e^T."""
    harness.require_binary()
    arch = archs.ARCHS["llama4"]
    # seeds chosen by search: router logit gaps 0.58 (base) and 0.49 (adapted)
    base = harness.build_base(arch, tmp_path / "base", seed=150)
    adapter, merged = llama4_adapter(tmp_path / "a", base.cfg, base.weights, np.random.default_rng(152))
    ref = reference(arch, base.cfg, merged, min_gap=0.05)
    reference(arch, base.cfg, base.weights, min_gap=0.05)
    effect = rel(ref, base.ref_logits)
    out = convert_and_merge_exactly("llama4 target_parameters", adapter, base, ref, effect, tmp_path)
    tensors = harness.read_gguf(out).tensors
    assert tensors["blk.1.ffn_gate_exps.weight.lora_a"][1] == (4, 4, 64), tensors    # [E, r, H]
    assert tensors["blk.1.ffn_up_exps.weight.lora_b"][1] == (4, 32, 4), tensors      # [E, F, r]


@pytest.mark.parametrize("ty", ["F16", "Q8_0", "Q4_K"])
def test_llama4_expert_lora_merges_into_quantized_experts(ty, tmp_path):
    """Experts stored as F16 / Q8_0 / Q4_K keep their type, and hold ggml's own quantization of
    dequant(base) + the PEFT delta, computed here from PEFT's semantics in the HF layout and moved
    to llama.cpp's layout by the tiny model's converter (archs/llama4.py); the model then runs."""
    harness.require_binary()
    arch = archs.ARCHS["llama4"]
    cfg = arch.tiny_config(hidden_size=256, intermediate_size=256, intermediate_size_mlp=512, head_dim=64)
    weights = arch.random_weights(cfg, np.random.default_rng(160))
    qt = gguf.GGMLQuantizationType[ty]

    def quant(name, arr):
        if not name.endswith("_exps.weight"):
            return None
        raw = np.frombuffer(harness.ggml_quantize_ref(ty, arr), dtype=np.uint8)
        return raw.reshape(*arr.shape[:-1], -1), qt

    base = tmp_path / "base.gguf"
    arch.write_gguf(base, cfg, weights, quant=quant)
    adapter, merged_hf = llama4_adapter(tmp_path / "a", cfg, weights, np.random.default_rng(161))
    merged = tmp_path / "merged.gguf"
    merge_ok([adapter, "--base", base, "-o", merged])
    before, after = arch.gguf_tensors(cfg, weights), arch.gguf_tensors(cfg, merged_hf)
    b, m = harness.read_gguf_raw(base), harness.read_gguf_raw(merged)
    same = total = 0
    for name, t in m.tensors.items():
        if not name.endswith("_exps.weight"):
            continue
        assert t.type == ty, f"{name} became {t.type}"
        delta = after[name].astype(np.float64) - before[name]
        assert np.abs(delta).max() > 0, f"{name}: the test adapter does not touch it"
        target = b.tensors[name].values().astype(np.float64) + delta
        want = np.frombuffer(harness.ggml_quantize_ref(ty, target.astype(np.float32)), dtype=np.uint8)
        got = np.frombuffer(t.data, dtype=np.uint8)
        same += int(np.sum(got == want))
        total += got.size
    harness.record_note(f"llama4 experts merged into {ty}", f"{same / total:.4%} of the expert bytes as ggml's")
    # f32 sums in another order may move a value across a rounding boundary: nearly every byte agrees
    assert same / total > 0.99, f"only {same / total:.4%} of the {ty} expert bytes match ggml's"
    harness.llama_logits_plain_cpu(merged, TOKENS, tmp_path / "run")  # loads and runs


@pytest.mark.parametrize("params,seed", [(("gate_up_proj", "down_proj"), 97), (("gate_up_proj",), 101)])
def test_fused_experts_saved_by_peft_before_0_19(params, seed, moe, tmp_path):
    """PEFT before 0.19 took a fused parameter's middle dimension for lora_A's input (PEFT 0.18.1,
    tuners/lora/layer.py ParamWrapper): on Qwen3-MoE's [E, 2F, H] gate_up_proj that is 2F, so
    lora_A [r*E, 2F] faces the outputs and lora_B [H, r*E] the inputs, the delta is
    (B_e @ A_e)^T. With gate_up_proj alone its shapes fit both ways (2F = H here): the recorded
    peft_version decides; with down_proj too, down_proj's shapes do. (Seeds chosen by search for
    routing gaps above MIN_ROUTING_GAP.)"""
    harness.require_binary()
    arch, base, _, _, _ = moe
    cfg, n, h, f = base.cfg, base.cfg["num_experts"], base.cfg["hidden_size"], base.cfg["moe_intermediate_size"]
    r, alpha = 4, 8.0
    rng, merged, tensors = np.random.default_rng(seed), {k: v.astype(np.float64) for k, v in base.weights.items()}, {}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for param in params:
            key = p + ("mlp.experts.base_layer" if param == "gate_up_proj" and len(params) == 2 else "mlp.experts")
            d1, d2 = (2 * f, h) if param == "gate_up_proj" else (h, f)     # the parameter's [E, d1, d2]
            A = (rng.standard_normal((r * n, d1)) / np.sqrt(d1)).astype(np.float32)
            B = (rng.standard_normal((d2, r * n)) * 0.4 / np.sqrt(r)).astype(np.float32)
            tensors[f"base_model.model.{key}.lora_A.weight"], tensors[f"base_model.model.{key}.lora_B.weight"] = A, B
            for e in range(n):
                delta = (alpha / r * B[:, e::n].astype(np.float64) @ A[e * r:(e + 1) * r]).T   # [d1, d2]
                if param == "gate_up_proj":
                    merged[p + f"mlp.experts.{e}.gate_proj.weight"] += delta[:f]
                    merged[p + f"mlp.experts.{e}.up_proj.weight"] += delta[f:]
                else:
                    merged[p + f"mlp.experts.{e}.down_proj.weight"] += delta
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": r, "lora_alpha": alpha, "peft_version": "0.18.1",
        "target_parameters": [f"mlp.experts.{p}" for p in params]}))
    peft_lora.write_safetensors(tmp_path / "a" / "adapter_model.safetensors", tensors, "f32")
    ref = reference(arch, cfg, {k: v.astype(np.float32) for k, v in merged.items()})
    out = tmp_path / "adapter.gguf"
    convert_ok([tmp_path / "a", "--base", base.path, "-o", out, "--outtype", "f32"])
    got = llama_logits(base.path, TOKENS, tmp_path, adapters=[(out, 1.0)])
    r_, effect = rel(got, ref), rel(ref, base.ref_logits)
    harness.record(f"qwen3moe PEFT 0.18 layout ({', '.join(params)}) convert", r_, 1e-3, effect=effect)
    assert effect > MIN_EFFECT and r_ < 1e-3, f"rel {r_:.3e}, effect {effect:.3f}"
    m = tmp_path / "merged.gguf"
    merge_ok([tmp_path / "a", "--base", base.path, "-o", m])
    r_ = rel(harness.llama_logits_plain_cpu(m, TOKENS, tmp_path / "run"), ref)
    assert r_ < MERGE_TOL, f"merged vs numpy rel {r_:.3e}"
