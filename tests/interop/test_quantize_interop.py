"""`merge --quantize TYPE` against llama.cpp's own quantizer (llama_model_quantize, what
`llama-quantize` runs; no importance matrix) on the same merged weights.

Per base and scheme, from one F16 base and one PEFT adapter:

- ours:      `merge --quantize TYPE` (merge and quantize in one pass, from the f32 merged values);
- reference: `merge --quantize f32` (the merged weights, every quantizable tensor written as F32: the
             exact f32 values ours quantizes; F16 base values widen exactly), then
             llama_model_quantize(TYPE) on that file.

Both quantize the same f32 values, so every tensor must have the same type and the same bytes, and
the files the same general.file_type / general.quantization_version. A reference that started from
the usual F16 merge (`merge` keeping the base's F16, then llama-quantize) quantizes f16-rounded merged
values instead: there the types must still all agree and every untouched tensor be byte-identical;
merged tensors differ by that rounding (counted in the notes, not asserted).

The bases have 10 layers (use_more_bits picks layers 0, 3, 6, 8, 9), rows of 352 values in ffn_down
(not a whole number of 256-value K blocks: Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0) and of 272 in
attn_output (not of 32 either: F16); one has tied embeddings (token_embd takes output's rule), and
two are expert models: Qwen3-MoE (4 experts, the block number read from each expert tensor's name)
and Mixtral with 8 experts (attn_v / attn_k in Q8_0, attn_output in Q5_K).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import archs
import harness
import peft_lora
from harness import merge_ok, read_gguf_raw

LAYERS = 10
# head_dim 68: attn_output rows of 4 x 68 = 272 (not a multiple of 32); ffn_down rows of 352
DENSE = dict(num_hidden_layers=LAYERS, hidden_size=256, intermediate_size=352, num_attention_heads=4,
             num_key_value_heads=2, head_dim=68)
BASES = {
    "llama": ("llama", DENSE),
    "llama-tied": ("llama", dict(DENSE, tie_word_embeddings=True)),
    "qwen3moe": ("qwen3moe", dict(DENSE, moe_intermediate_size=352, head_dim=64)),
    "mixtral8": ("mixtral", dict(DENSE, intermediate_size=352, head_dim=64, num_local_experts=8)),
}
# scheme -> LLAMA_FTYPE_MOSTLY_* (llama.h)
FTYPES = {"q4_k_m": 15, "q4_k_s": 14, "q5_k_m": 17, "q5_k_s": 16, "q6_k": 18, "q8_0": 7, "q5_0": 8,
          "q5_1": 9, "q4_0": 2, "q4_1": 3, "q3_k_m": 12, "q3_k_s": 11, "q3_k_l": 13, "q2_k": 10,
          "f16": 1, "bf16": 32}
MOE_ONLY = {"mxfp4_moe": 38}
CASES = ([(b, s) for b in ("llama", "qwen3moe", "mixtral8") for s in FTYPES]
         + [("llama-tied", s) for s in ("q4_k_m", "q4_0", "q8_0", "q6_k")]
         + [(b, s) for b in ("qwen3moe", "mixtral8") for s in MOE_ONLY])


@pytest.fixture(scope="session")
def quant_bases(tmp_path_factory):
    cache: dict = {}

    def get(key: str):
        if key not in cache:
            arch_id, cfg = BASES[key]
            arch = archs.ARCHS[arch_id]
            d = tmp_path_factory.mktemp(f"quant-{key}")
            b = harness.build_base(arch, d, seed=99, dtype="f16", **cfg)
            targets = [m for m in arch.LORA_MODULES if m != "gate"]
            ad = peft_lora.write_peft_adapter(d / "adapter", arch, b.cfg, b.weights, r=8, alpha=16,
                                              targets=targets[:5], rng=np.random.default_rng(7))
            cache[key] = (b, ad, d)
        return cache[key]

    return get


def tensor_diff(ours: harness.RawGguf, ref: harness.RawGguf, names) -> tuple[list, list]:
    """(names whose type differs, names whose bytes differ) among `names`."""
    types = [n for n in names if ours.tensors[n].type != ref.tensors[n].type]
    data = [n for n in names if n not in types and ours.tensors[n].data != ref.tensors[n].data]
    return types, data


@pytest.mark.parametrize("key,scheme", CASES, ids=[f"{b}-{s}" for b, s in CASES])
def test_quantize_matches_llama_quantize(quant_bases, key, scheme):
    b, ad, d = quant_bases(key)
    ftype = {**FTYPES, **MOE_ONLY}[scheme]
    ours, mid, ref = d / f"ours-{scheme}.gguf", d / f"mid-f32-{scheme}.gguf", d / f"ref-{scheme}.gguf"
    merge_ok([ad.path, "--base", b.path, "-o", ours, "--quantize", scheme, "--force"])
    merge_ok([ad.path, "--base", b.path, "-o", mid, "--quantize", "f32", "--force"])
    harness.llama_quantize(mid, ref, ftype)
    o, r = read_gguf_raw(ours), read_gguf_raw(ref)
    assert set(o.tensors) == set(r.tensors)
    types, data = tensor_diff(o, r, sorted(r.tensors))
    assert not types, "types differ from llama-quantize's: " + ", ".join(
        f"{n}: ours {o.tensors[n].type}, llama {r.tensors[n].type}" for n in types)
    assert not data, f"bytes differ from llama-quantize's in {data}"
    for k in ("general.file_type", "general.quantization_version"):
        assert o.kv[k][1] == r.kv[k][1], (k, o.kv[k], r.kv[k])
    mix = sorted({t.type for t in o.tensors.values()})
    if scheme == "q4_k_m":  # the rules and both fallbacks were reached, not only the default type
        assert {"Q4_K", "Q6_K", "Q5_0", "Q8_0", "F16"} <= set(mix), mix
    harness.record_note(f"quantize {key} {scheme}", f"{len(o.tensors)} tensors identical in type and bytes; "
                                                     f"types {', '.join(mix)}")
    for p in (ours, mid, ref):
        p.unlink()


@pytest.mark.parametrize("key", ["llama", "mixtral8"])
def test_quantize_vs_f16_merge_then_llama_quantize(quant_bases, key):
    """The two-tool pipeline a user runs today: merge at F16, then llama-quantize Q4_K_M."""
    b, ad, d = quant_bases(key)
    ours, mid, ref = d / "ours16.gguf", d / "mid-f16.gguf", d / "ref16.gguf"
    merge_ok([ad.path, "--base", b.path, "-o", ours, "--quantize", "q4_k_m", "--force"])
    merge_ok([ad.path, "--base", b.path, "-o", mid, "--force"])
    harness.llama_quantize(mid, ref, FTYPES["q4_k_m"])
    o, r, base = read_gguf_raw(ours), read_gguf_raw(ref), read_gguf_raw(b.path)
    merged = {n for n, t in read_gguf_raw(mid).tensors.items() if t.data != base.tensors[n].data}
    assert merged, "the adapter changed nothing"
    untouched = sorted(set(r.tensors) - merged)
    types, _ = tensor_diff(o, r, sorted(r.tensors))
    assert not types, f"types differ from llama-quantize's: {types}"
    _, data = tensor_diff(o, r, untouched)
    assert not data, f"untouched tensors differ from llama-quantize's: {data}"
    _, merged_diff = tensor_diff(o, r, sorted(merged))
    harness.record_note(f"quantize {key} q4_k_m vs F16 merge + llama-quantize",
                        f"{len(r.tensors)} types equal; {len(untouched)} untouched tensors identical; "
                        f"{len(merged) - len(merged_diff)} of {len(merged)} merged tensors identical "
                        "(the others quantize f16-rounded merged values there)")


@pytest.mark.parametrize("scheme", ["q4_k_m", "q6_k", "q4_0"])
def test_quantized_base_is_requantized_as_llama_quantize_allow_requantize(quant_bases, scheme):
    """A Q8_0 base: ours dequantizes and re-quantizes every untouched tensor whose type changes, and
    copies those that keep Q8_0. Reference: the Q8_0 base with the merged tensors replaced by our f32
    merged values, through llama_model_quantize with allow_requantize (llama-quantize
    --allow-requantize), which does the same to the untouched ones."""
    import gguf

    b, ad, d = quant_bases("llama")
    q8 = d / "base-q8_0.gguf"
    if not q8.exists():
        harness.rewrite_gguf(b.path, q8, lambda n, x: x if x.ndim < 2 or x.shape[-1] % 32 else (
            gguf.quants.quantize(x.astype(np.float32), gguf.GGMLQuantizationType.Q8_0),
            gguf.GGMLQuantizationType.Q8_0))
    ours, keep, mid = d / f"rq-ours-{scheme}.gguf", d / "rq-keep.gguf", d / "rq-mid-f32.gguf"
    hybrid, ref = d / "rq-hybrid.gguf", d / f"rq-ref-{scheme}.gguf"
    merge_ok([ad.path, "--base", q8, "-o", ours, "--quantize", scheme, "--force"])
    merge_ok([ad.path, "--base", q8, "-o", keep, "--force"])
    merge_ok([ad.path, "--base", q8, "-o", mid, "--quantize", "f32", "--force"])
    base_q8, kept, merged_f32 = read_gguf_raw(q8), read_gguf_raw(keep), read_gguf_raw(mid)
    merged = {n for n, t in kept.tensors.items() if t.data != base_q8.tensors[n].data}
    assert merged and any(t.type == "Q8_0" for t in base_q8.tensors.values())
    harness.rewrite_gguf(q8, hybrid, lambda n, x: merged_f32.tensors[n].values() if n in merged else x)
    harness.llama_quantize(hybrid, ref, FTYPES[scheme], allow_requantize=True)
    o, r = read_gguf_raw(ours), read_gguf_raw(ref)
    assert set(o.tensors) == set(r.tensors)
    types, data = tensor_diff(o, r, sorted(r.tensors))
    assert not types and not data, (types, data)
    harness.record_note(f"quantize llama Q8_0 base -> {scheme}",
                        f"{len(o.tensors)} tensors identical to llama-quantize --allow-requantize")


def test_quantize_refusals(quant_bases):
    b, ad, d = quant_bases("llama")
    for args, words in [(["--quantize", "iq4_xs"], "importance matrix"),
                        (["--quantize", "q2_k_s"], "importance matrix"),
                        (["--quantize", "q4_k_m", "--imatrix", d / "x.dat"], "importance-matrix"),
                        (["--quantize", "q4_k_m", "--merged-type", "f16"], "cannot be used with")]:
        p = harness.run_merge([ad.path, "--base", b.path, "-o", d / "no.gguf", *args])
        assert p.returncode != 0 and words in p.stderr, (args, p.stderr)
        assert not Path(d / "no.gguf").exists()
