"""What fine-tunes of the 2026 families carry beyond a text decoder's LoRA, in the real llama.cpp.

- Multimodal wrappers (Gemma 4, Qwen3.5, Ministral 3 are published as *ForConditionalGeneration):
  PEFT keys say `model.language_model.layers.N...`, and a plain target_modules list also wraps
  modules of the vision/audio towers. The language model's LoRA must be applied exactly; the
  towers' pairs are left out with a warning (the text GGUF has no tower), and --strict refuses.
- Gemma 4's `per_layer_model_projection` is multiplied without LoRA by llama.cpp: `convert`
  refuses it, `merge` applies it (checked against the numpy forward on the PEFT-merged weights).
- Gemma 4's KV-shared layers: a k/v LoRA there is skipped with a notice (transformers has no such
  modules; llama.cpp never uses those projections), and the rest is applied exactly.
- A base that carries the tower (Ollama's own GGUFs keep it beside the language model, as `v.*`):
  `merge` applies the tower's LoRA there, by the names Ollama's converters give those tensors
  (convert/convert_qwen35.go splits the fused qkv into thirds; convert_gemma3.go keeps `mlp.fc1`
  and names the output `attn_output`), checked tensor by tensor against W + scale * B @ A. llama.cpp
  cannot load such a file (it counts the extra tensors), so the check is on the weights.
"""
from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import archs
import harness
import peft_lora
from harness import TOKENS, convert_ok, merge_ok, rel
from llama_runner import llama_logits

TOL = 5e-3          # F16 adapter tensors (convert's default output type)
MERGE_TOL = 1e-3    # F32 base merged in F32
MIN_EFFECT = 0.1


def _rewrite_keys(adapter_dir, rename, extra: dict | None = None) -> None:
    """Renames every PEFT key of a written adapter with `rename`, and adds `extra` tensors."""
    path = adapter_dir / "adapter_model.safetensors"
    tensors = {rename(k): v for k, v in load_file(str(path)).items()}
    tensors.update(extra or {})
    save_file(tensors, str(path), metadata={"format": "pt"})


def _tower_pairs(rng, prefix: str) -> dict:
    """LoRA pairs as PEFT saves them for tower modules a plain target list also matches."""
    out = {}
    for name in (f"{prefix}.layers.0.self_attn.q_proj", f"{prefix}.layers.0.mlp.down_proj"):
        out[f"base_model.model.{name}.lora_A.weight"] = rng.standard_normal((8, 48)).astype(np.float32)
        out[f"base_model.model.{name}.lora_B.weight"] = rng.standard_normal((48, 8)).astype(np.float32)
    return out


TOWERS = {"gemma4": "model.audio_tower", "qwen35": "model.visual.blocks", "mistral3": "model.vision_tower.transformer"}


@pytest.mark.parametrize("arch_name", sorted(TOWERS))
def test_wrapper_keys_and_towers(arch_name, tmp_path):
    """The multimodal model's adapter: language model exact in llama.cpp, towers left out."""
    harness.require_binary()
    arch = archs.ARCHS[arch_name]
    base = harness.build_base(arch, tmp_path / "base", seed=77)
    ad = peft_lora.write_peft_adapter(tmp_path / "adapter", arch, base.cfg, base.weights, r=8, alpha=16,
                                      targets=list(arch.LORA_MODULES), rng=np.random.default_rng(5))
    _rewrite_keys(ad.path, lambda k: k.replace("base_model.model.model.", "base_model.model.model.language_model."),
                  _tower_pairs(np.random.default_rng(6), TOWERS[arch_name]))

    out = tmp_path / "adapter.gguf"
    p = convert_ok([ad.path, "--base", base.path, "-o", out])
    assert "vision/audio tower" in p.stderr and "2 LoRA pairs" in p.stderr, p.stderr
    got = llama_logits(base.path, TOKENS, tmp_path, adapters=[(out, 1.0)])
    ref = arch.forward(base.cfg, peft_lora.merge(base.weights, [(ad, 1.0)]), TOKENS)
    r, effect = rel(got, ref), rel(ref, base.ref_logits)
    harness.record(f"{arch_name} multimodal keys + towers", r, TOL, effect=effect)
    assert effect > MIN_EFFECT and r < TOL, f"rel {r:.3e}, effect {effect:.3f}"

    strict = harness.run_convert([ad.path, "--base", base.path, "-o", tmp_path / "strict.gguf", "--strict"])
    assert strict.returncode != 0 and "vision/audio tower" in strict.stderr, strict.stderr
    assert not (tmp_path / "strict.gguf").exists()


def _with_model_level_pair(ad, arch, base, rng):
    """Adds a LoRA on Gemma 4's per_layer_model_projection to a written adapter (file and model)."""
    name = "model.per_layer_model_projection"
    W = base.weights[name + ".weight"]
    out_f, in_f = W.shape
    r, alpha = 8, 16.0
    A = (rng.standard_normal((r, in_f)) / np.sqrt(in_f)).astype(np.float32)
    B = (rng.standard_normal((out_f, r)) * 0.8 * float(np.std(W)) * np.sqrt(in_f) / (alpha / r * np.sqrt(r))).astype(np.float32)
    _rewrite_keys(ad.path, lambda k: k, {f"base_model.model.{name}.lora_A.weight": A,
                                          f"base_model.model.{name}.lora_B.weight": B})
    ad.modules.append(peft_lora.LoraModule(name, A, B, r, alpha, alpha / r))
    cfg = json.loads((ad.path / "adapter_config.json").read_text())
    cfg["target_modules"] = cfg["target_modules"] + ["per_layer_model_projection"]
    (ad.path / "adapter_config.json").write_text(json.dumps(cfg))


def test_gemma4_per_layer_model_projection_merges_but_does_not_convert(tmp_path):
    harness.require_binary()
    arch = archs.ARCHS["gemma4"]
    base = harness.build_base(arch, tmp_path / "base", seed=78)
    assert "model.per_layer_model_projection.weight" in base.weights, "the tiny Gemma 4 needs per-layer inputs"
    ad = peft_lora.write_peft_adapter(tmp_path / "adapter", arch, base.cfg, base.weights, r=8, alpha=16,
                                      targets=["q_proj"], rng=np.random.default_rng(7))
    _with_model_level_pair(ad, arch, base, np.random.default_rng(8))

    refused = harness.run_convert([ad.path, "--base", base.path, "-o", tmp_path / "a.gguf"])
    assert refused.returncode != 0 and "per_layer_model_proj" in refused.stderr and "merge" in refused.stderr, refused.stderr

    merged = tmp_path / "merged.gguf"
    merge_ok([ad.path, "--base", base.path, "-o", merged])
    got = harness.llama_logits_plain_cpu(merged, TOKENS, tmp_path / "run")
    ref = arch.forward(base.cfg, peft_lora.merge(base.weights, [(ad, 1.0)]), TOKENS)
    only_q = arch.forward(base.cfg, peft_lora.merge(base.weights, [(peft_lora.PeftAdapter(ad.path, ad.config, ad.modules[:-1]), 1.0)]), TOKENS)
    r = rel(got, ref)
    harness.record("gemma4 per_layer_model_projection merged", r, MERGE_TOL, effect=rel(ref, only_q))
    assert rel(ref, only_q) > 0.02, "the projection's LoRA must matter for the test to mean anything"
    assert r < MERGE_TOL, f"merged vs numpy rel {r:.3e}"


def test_gemma4_kv_shared_layers_are_skipped_with_a_notice(tmp_path):
    """A base whose KV-shared layers still carry k/v weights (as Google's own GGUFs do) and an
    adapter made against it: their k/v LoRA is skipped, the rest applied exactly."""
    harness.require_binary()
    arch = archs.ARCHS["gemma4"]
    base = harness.build_base(arch, tmp_path / "base", seed=79, interop_shared_kv_weights=True)
    ad = peft_lora.write_peft_adapter(tmp_path / "adapter", arch, base.cfg, base.weights, r=8, alpha=16,
                                      targets=["q_proj", "k_proj"], rng=np.random.default_rng(9))
    n = base.cfg["num_hidden_layers"]
    shared = range(n - base.cfg["num_kv_shared_layers"], n)
    assert any(m.name == f"model.layers.{shared[0]}.self_attn.k_proj" for m in ad.modules)
    out = tmp_path / "adapter.gguf"
    p = convert_ok([ad.path, "--base", base.path, "-o", out])
    assert "reuse an earlier layer's keys and values" in p.stderr, p.stderr
    written = harness.read_gguf(out).tensors
    assert not any(f"blk.{i}.attn_k" in t for i in shared for t in written), sorted(written)
    got = llama_logits(base.path, TOKENS, tmp_path, adapters=[(out, 1.0)])
    ref = arch.forward(base.cfg, peft_lora.merge(base.weights, [(ad, 1.0)]), TOKENS)
    r = rel(got, ref)
    harness.record("gemma4 KV-shared k_proj skipped", r, TOL, effect=rel(ref, base.ref_logits))
    assert r < TOL, f"rel {r:.3e}"


# HF module -> the tensors its rows go to in an Ollama GGUF, from Ollama's converters (independent
# of ollama-tools' tables): Qwen3.5 splits the vision qkv into q, k, v; Gemma 3 keeps SigLIP's
# `mlp.fc1` and calls the output projection `attn_output`.
OLLAMA_TOWERS = {
    "qwen35": {
        "model.visual.blocks.0.attn.qkv": ["v.blk.0.attn_q", "v.blk.0.attn_k", "v.blk.0.attn_v"],
        "model.visual.blocks.0.attn.proj": ["v.blk.0.attn_out"],
        "model.visual.blocks.0.mlp.linear_fc1": ["v.blk.0.mlp.linear_fc1"],
    },
    "gemma3": {
        "model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj": ["v.blk.0.attn_q"],
        "model.vision_tower.vision_model.encoder.layers.0.self_attn.out_proj": ["v.blk.0.attn_output"],
        "model.vision_tower.vision_model.encoder.layers.0.mlp.fc1": ["v.blk.0.mlp.fc1"],
    },
}
VISION = 64                            # tower width: Q8_0 rows need a multiple of 32
TOWER_TYPES = ["F16", "Q8_0", "F32"]   # the modules' tensors take these types in turn


def _tower_base(base_path, out, layout: dict, rng) -> dict:
    """The text base plus a tower in Ollama's layout (and an untouched patch embedding); returns
    {tensor: float32 weight as stored}."""
    weights, extra = {}, {}
    for k, (module, names) in enumerate(layout.items()):
        rows = 2 * VISION if module.endswith(("fc1", "linear_fc1")) else VISION
        for name in names:
            w = (rng.standard_normal((rows, VISION)) * 0.05).astype(np.float32)
            ty = TOWER_TYPES[k % len(TOWER_TYPES)]
            if ty == "F16":
                w = w.astype(np.float16)
                extra[name + ".weight"] = w
            elif ty == "Q8_0":
                q = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0)
                extra[name + ".weight"] = (q, gguf.GGMLQuantizationType.Q8_0)
                w = gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0)
            else:
                extra[name + ".weight"] = w
            weights[name + ".weight"] = np.asarray(w, dtype=np.float32)
    extra["v.patch_embd.weight"] = rng.standard_normal((VISION, 48)).astype(np.float32)
    harness.rewrite_gguf(base_path, out, lambda name, arr: arr, extra=extra)
    return weights


@pytest.mark.parametrize("arch_name", sorted(OLLAMA_TOWERS))
def test_tower_lora_merges_into_a_base_that_carries_the_tower(arch_name, tmp_path):
    harness.require_binary()
    arch, layout = archs.ARCHS[arch_name], OLLAMA_TOWERS[arch_name]
    text = harness.build_base(arch, tmp_path / "base", seed=80)
    base = tmp_path / "base-with-tower.gguf"
    tower_w = _tower_base(text.path, base, layout, np.random.default_rng(10))
    ad = peft_lora.write_peft_adapter(tmp_path / "adapter", arch, text.cfg, text.weights, r=8, alpha=16,
                                      targets=["q_proj"], rng=np.random.default_rng(11))
    rng, pairs, deltas = np.random.default_rng(12), {}, {}
    for module, names in layout.items():
        rows = len(names) * (2 * VISION if module.endswith("fc1") else VISION)
        A = rng.standard_normal((8, VISION)).astype(np.float32) * 0.1
        B = rng.standard_normal((rows, 8)).astype(np.float32) * 0.1
        pairs[f"base_model.model.{module}.lora_A.weight"] = A
        pairs[f"base_model.model.{module}.lora_B.weight"] = B
        delta = 16 / 8 * (B.astype(np.float64) @ A)
        for name, part in zip(names, np.split(delta, len(names))):
            deltas[name + ".weight"] = part
    _rewrite_keys(ad.path, lambda k: k.replace("base_model.model.model.", "base_model.model.model.language_model."), pairs)

    merged = tmp_path / "merged.gguf"
    p = merge_ok([ad.path, "--base", base, "-o", merged])
    assert "map to the tower this base GGUF carries" in p.stderr, p.stderr
    got = harness.read_gguf_raw(merged).tensors
    before = harness.read_gguf_raw(base).tensors
    for name, delta in deltas.items():
        want = tower_w[name] + delta
        r = rel(got[name].values(), want)
        tol = 1e-6 if got[name].type == "F32" else 2e-2 if got[name].type == "Q8_0" else 2e-3
        harness.record(f"{arch_name} tower {name} ({got[name].type})", r, tol, effect=rel(want, tower_w[name]))
        assert got[name].type == before[name].type, f"{name} changed type"
        assert rel(want, tower_w[name]) > 10 * tol, "the tower delta must matter for the check to mean anything"
        assert r < tol, f"{name}: merged vs W + scale * B @ A rel {r:.3e}"
    assert got["v.patch_embd.weight"].data == before["v.patch_embd.weight"].data

    # A GGUF adapter cannot reach the tower: left out with a warning; --strict refuses.
    p = convert_ok([ad.path, "--base", base, "-o", tmp_path / "a.gguf"])
    assert "cannot go into" not in p.stderr and "left out" in p.stderr, p.stderr
    assert not any(n.startswith("v.") for n in harness.read_gguf(tmp_path / "a.gguf").tensors)
    strict = harness.run_convert([ad.path, "--base", base, "-o", tmp_path / "s.gguf", "--strict"])
    assert strict.returncode != 0 and "tower" in strict.stderr, strict.stderr
