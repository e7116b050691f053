"""Self-check of archs/gemma.py (gemma, gemma2, gemma3) and archs/phi3.py (phi3).

For every variant: the base GGUF written by write_gguf, run in the real llama.cpp (through
llama-cpp-python), must give the logits of the variant's float64 HF-semantics forward():
rel = ||llama - ref|| / ||ref|| < 1e-3. On top of that the GGUF's LoRA-targetable tensors are
checked by name and content (the names a GGUF LoRA adapter must use, and that no row reordering
happened), and a few negative controls show that the comparison would notice a wrong sliding
window, softcap, RoPE base or fused-weight split, i.e. that the tiny configs exercise them.

Self-contained on purpose (own llama.cpp helper), so it does not depend on the rest of the
suite. llama.cpp runs in a child process: a GGML_ASSERT abort then fails one test instead of
killing pytest.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import gguf
import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from archs import gemma, phi3  # noqa: E402

VARIANTS = [*gemma.VARIANTS, *phi3.VARIANTS]
IDS = [v.ARCH for v in VARIANTS]
INTERFACE = ("ARCH", "tiny_config", "random_weights", "write_gguf", "forward", "LORA_MODULES")

# 12 positions: longer than the tiny sliding window (4), so local layers really mask.
TOKENS = [2, 17, 42, 99, 3, 250, 128, 7, 64, 201, 11, 180]
SEED = 20261123
TOL = 1e-3

# llama.cpp in a child process. F32 KV cache and no flash attention: the default F16 cache
# alone costs ~4e-4 relative error on these models, which would blur the check.
_WORKER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import llama_cpp
    from llama_cpp import Llama
    req = json.loads(sys.argv[1])
    extra = {"lora_path": req["lora"], "lora_scale": 1.0} if req.get("lora") else {}
    llm = Llama(model_path=req["model"], logits_all=True, n_ctx=64, n_batch=64, n_ubatch=64,
                n_threads=2, verbose=False, flash_attn=False,
                type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32, **extra)
    llm.eval(req["tokens"])
    np.save(req["out"], np.array(llm.scores[: len(req["tokens"])], dtype=np.float32))
    llm.close()
    """
)


def llama_logits(model: Path, tokens: list[int], workdir: Path, lora: Path | None = None) -> np.ndarray:
    out = workdir / f"{model.stem}-{lora.stem if lora else 'base'}-logits.npy"
    req = json.dumps({"model": str(model), "tokens": [int(t) for t in tokens], "out": str(out),
                      "lora": str(lora) if lora else None})
    p = subprocess.run([sys.executable, "-c", _WORKER, req], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0 and out.exists(), (
        f"llama.cpp failed on {model} (exit {p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return np.load(out).astype(np.float64)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


class Built:
    def __init__(self, variant, workdir: Path):
        self.v = variant
        self.cfg = variant.tiny_config()
        self.weights = variant.random_weights(self.cfg, np.random.default_rng(SEED))
        self.path = workdir / f"{variant.ARCH}-f32.gguf"
        variant.write_gguf(self.path, self.cfg, self.weights, "f32")
        self.ref = np.asarray(variant.forward(self.cfg, self.weights, TOKENS), dtype=np.float64)
        self.llama = llama_logits(self.path, TOKENS, workdir)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cache: dict[str, Built] = {}

    def get(variant) -> Built:
        if variant.ARCH not in cache:
            cache[variant.ARCH] = Built(variant, tmp_path_factory.mktemp(f"arch-{variant.ARCH}"))
        return cache[variant.ARCH]

    return get


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_interface(variant):
    missing = [a for a in INTERFACE if not hasattr(variant, a)]
    assert not missing, f"{variant.__name__} lacks {missing}"
    cfg = variant.tiny_config()
    assert cfg["num_attention_heads"] == 4 and cfg["num_key_value_heads"] == 2
    assert "head_dim" in cfg
    assert 64 <= cfg["hidden_size"] <= 128 and 256 <= cfg["vocab_size"] <= 320
    assert max(TOKENS) < cfg["vocab_size"]
    if variant.ARCH in ("gemma2", "gemma3"):
        # both kinds of layer are present, and the window is shorter than the test prompt
        assert set(cfg["layer_types"]) == {"sliding_attention", "full_attention"}
        assert cfg["sliding_window"] < len(TOKENS)
    w = variant.random_weights(cfg, np.random.default_rng(0))
    assert all(a.dtype == np.float32 for a in w.values())
    for module, path in variant.LORA_MODULES.items():
        assert f"model.layers.0.{path}.weight" in w, module


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_base_f32_matches_reference(variant, built):
    b = built(variant)
    assert b.llama.shape == b.ref.shape == (len(TOKENS), b.cfg["vocab_size"])
    r = rel(b.llama, b.ref)
    print(f"{variant.ARCH}: f32 base rel={r:.3e}")
    assert r < TOL, f"{variant.ARCH}: llama.cpp vs numpy rel={r:.3e}"


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_base_f16_matches_reference(variant, built, tmp_path):
    """dtype='f16': 2-D weights stored as F16; compared with forward() on the rounded weights."""
    b = built(variant)
    path = tmp_path / f"{variant.ARCH}-f16.gguf"
    variant.write_gguf(path, b.cfg, b.weights, "f16")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}
    assert {ty for n, ty in types.items() if n.endswith("norm.weight")} == {"F32"}
    assert {ty for n, ty in types.items() if not n.endswith("norm.weight")} == {"F16"}
    rounded = {k: (v.astype(np.float16).astype(np.float32) if v.ndim == 2 else v)
               for k, v in b.weights.items()}
    ref = variant.forward(b.cfg, rounded, TOKENS)
    r = rel(llama_logits(path, TOKENS, tmp_path), ref)
    print(f"{variant.ARCH}: f16 base rel={r:.3e}")
    assert r < TOL, f"{variant.ARCH}: llama.cpp f16 vs numpy rel={r:.3e}"


def _tensor_data(reader: gguf.GGUFReader) -> dict[str, np.ndarray]:
    # GGUFReader gives data in numpy order (the reverse of ggml's ne), i.e. HF's [out, in]
    return {t.name: np.asarray(t.data) for t in reader.tensors}


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_gguf_names_and_layout(variant, built):
    """What a GGUF LoRA for this arch must be named after, and that no row reordering happened."""
    b = built(variant)
    reader = gguf.GGUFReader(str(b.path))
    kv = {f.name: f for f in reader.fields.values()}
    arch_field = kv["general.architecture"]
    assert bytes(arch_field.parts[-1]).decode() == variant.ARCH
    assert bytes(kv["tokenizer.ggml.model"].parts[-1]).decode() == "no_vocab"
    data = _tensor_data(reader)

    arch_enum = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == variant.ARCH)
    n_layers = b.cfg["num_hidden_layers"]
    tmap = gguf.get_tensor_name_map(arch_enum, n_layers)
    for module, path in variant.LORA_MODULES.items():
        stem = variant.GGUF_STEMS[module]
        for il in range(n_layers):
            hf = f"model.layers.{il}.{path}.weight"
            name = f"blk.{il}.{stem}.weight"
            assert tmap.get_name(hf, try_suffixes=(".weight",)) == name, (module, hf)
            assert name in data, f"{name} missing from the base GGUF"
            # identical bytes: the converter keeps HF's row order for this arch
            np.testing.assert_array_equal(data[name], b.weights[hf], err_msg=name)

    np.testing.assert_array_equal(data["token_embd.weight"], b.weights["model.embed_tokens.weight"])
    if variant.ARCH == "phi3":
        np.testing.assert_array_equal(data["output.weight"], b.weights["lm_head.weight"])
        np.testing.assert_array_equal(data["blk.0.ffn_norm.weight"],
                                      b.weights["model.layers.0.post_attention_layernorm.weight"])
    else:
        # tied output: llama.cpp reuses token_embd; Gemma norms are stored with the +1 folded in
        assert "output.weight" not in data
        np.testing.assert_array_equal(data["output_norm.weight"], b.weights["model.norm.weight"] + 1)


def _swap_halves(weights: dict, key_suffix: str) -> dict:
    out = dict(weights)
    for k, v in weights.items():
        if k.endswith(key_suffix):
            half = v.shape[0] // 2
            out[k] = np.concatenate([v[half:], v[:half]])
    return out


# (description, config overrides, weight transform): each a plausible mistake in forward()
NEGATIVE_CONTROLS = {
    "gemma": [
        ("head_dim taken as hidden/n_head in the scale", None, "scale"),
        ("gate/up swapped", None, "swap_gate_up"),
    ],
    "gemma2": [
        ("no sliding window", {"sliding_window": 4096}, None),
        ("no attention softcap", {"attn_logit_softcapping": None}, None),
        ("no final softcap", {"final_logit_softcapping": None}, None),
        ("global/local layers swapped", {"layer_types": ["full_attention", "sliding_attention"]}, None),
    ],
    "gemma3": [
        ("no sliding window", {"sliding_window": 4096}, None),
        ("local layers with the global RoPE base", {"rope_local_base_freq": 1000000.0}, None),
        ("global layers with the local RoPE base", {"rope_theta": 10000.0}, None),
    ],
    "phi3": [
        ("gate_up halves swapped (up first)", None, "swap_gate_up_fused"),
        ("different RoPE base", {"rope_theta": 500000.0}, None),
    ],
}


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_check_is_sensitive(variant, built):
    """A forward() with one feature wrong must miss llama.cpp by far more than TOL."""
    b = built(variant)
    for what, overrides, transform in NEGATIVE_CONTROLS[variant.ARCH]:
        cfg = dict(b.cfg, **(overrides or {}))
        w = b.weights
        if transform == "swap_gate_up":
            w = dict(w)
            for il in range(cfg["num_hidden_layers"]):
                p = f"model.layers.{il}.mlp."
                w[p + "gate_proj.weight"], w[p + "up_proj.weight"] = w[p + "up_proj.weight"], w[p + "gate_proj.weight"]
        elif transform == "swap_gate_up_fused":
            w = _swap_halves(w, "mlp.gate_up_proj.weight")
        elif transform == "scale":
            # Gemma 1 scales by head_dim**-0.5; hidden/n_head (16) != head_dim (32) here.
            # Rescaling q by sqrt(32/16) is the same as using the wrong scale.
            w = dict(w)
            for il in range(cfg["num_hidden_layers"]):
                k = f"model.layers.{il}.self_attn.q_proj.weight"
                w[k] = w[k] * np.float32(np.sqrt(cfg["head_dim"] / (cfg["hidden_size"] // cfg["num_attention_heads"])))
        r = rel(b.llama, variant.forward(cfg, w, TOKENS))
        print(f"{variant.ARCH}: negative control '{what}': rel={r:.3e}")
        assert r > 10 * TOL, f"{variant.ARCH}: '{what}' is not detected (rel={r:.3e})"


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_handwritten_gguf_lora_uses_these_names(variant, built, tmp_path):
    """A GGUF LoRA written here with the GGUF_STEMS names, on every LORA_MODULES entry of every
    layer, loads in llama.cpp and gives the logits of the HF forward on W + alpha/r * B @ A.
    This pins down the name table and the absence of any row reordering (fused phi3 tensors
    included) independently of the converter under test."""
    b = built(variant)
    r, alpha = 4, 8.0
    rng = np.random.default_rng(7)
    merged = dict(b.weights)
    path = tmp_path / f"{variant.ARCH}-lora.gguf"
    w = gguf.GGUFWriter(str(path), variant.ARCH)
    w.add_string("general.type", "adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", alpha)
    for il in range(b.cfg["num_hidden_layers"]):
        for module, mpath in variant.LORA_MODULES.items():
            hf = f"model.layers.{il}.{mpath}.weight"
            out_f, in_f = b.weights[hf].shape
            a = (rng.standard_normal((r, in_f)) / np.sqrt(in_f)).astype(np.float32)
            bb = (rng.standard_normal((out_f, r)) * 0.3 / np.sqrt(r)).astype(np.float32)
            merged[hf] = (b.weights[hf].astype(np.float64) + alpha / r * (bb.astype(np.float64) @ a)).astype(np.float32)
            name = f"blk.{il}.{variant.GGUF_STEMS[module]}.weight"
            w.add_tensor(name + ".lora_a", a)  # numpy [r, in]  = ggml ne [in, r]
            w.add_tensor(name + ".lora_b", bb)  # numpy [out, r] = ggml ne [r, out]
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    ref = variant.forward(b.cfg, merged, TOKENS)
    effect = rel(b.ref, ref)
    got = llama_logits(b.path, TOKENS, tmp_path, lora=path)
    rr = rel(got, ref)
    print(f"{variant.ARCH}: handwritten LoRA rel={rr:.3e} (adapter effect {effect:.3f})")
    assert effect > 0.1, f"adapter too weak to prove anything (effect {effect:.3f})"
    assert rr < TOL, f"{variant.ARCH}: llama.cpp base+LoRA vs merged numpy rel={rr:.3e}"
