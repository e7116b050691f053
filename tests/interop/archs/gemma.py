"""Tiny Gemma-family models for the interop suite: Gemma 1, Gemma 2 and Gemma 3 (text only).

Each variant (see VARIANTS at the bottom) builds a tiny Hugging Face style config and random
weights, writes a base-model GGUF the way llama.cpp's converter (conversion/gemma.py,
formerly convert_hf_to_gguf.py: GemmaModel, Gemma2Model, Gemma3Model) would, and runs a
float64 NumPy forward pass with the semantics of transformers' GemmaForCausalLM,
Gemma2ForCausalLM and Gemma3ForCausalLM (model_type "gemma3_text").

Facts the code below relies on (checked against llama.cpp's model code and converter):
- Every HF RMSNorm in these models computes x_normed * (1 + w); the converter adds 1 to
  every tensor whose name ends in "norm.weight" (q_norm/k_norm of Gemma 3 included), and
  llama.cpp then multiplies by the stored weight.
- Embeddings are multiplied by sqrt(hidden_size); the output projection is the embedding
  matrix (tied). For gemma and gemma2 the converter drops lm_head.weight even if present;
  gemma3 would accept an `output.weight`, but Gemma3ForCausalLM ties it, so none is written.
- llama.cpp scales queries by 1/sqrt(head_dim) (except a "27B" model recognised by its
  layer count, 46 for gemma2 and 62 for gemma3, which uses hidden/n_head) and never reads
  HF's query_pre_attn_scalar. The tiny configs therefore set query_pre_attn_scalar =
  head_dim, and write_gguf refuses a config where the two would disagree.
- Sliding-window layers: llama.cpp's set_swa_pattern(p) makes layer il local iff
  il % p < p - 1; HF's layer_types make layer i sliding iff (i + 1) % p != 0: the same
  layers. Gemma 2 uses p = 2. For Gemma 3 the converter writes no pattern key and llama.cpp
  uses p = 6, so the tiny Gemma 3 has 6 layers (5 local + 1 global). The window itself is
  "key visible iff 0 <= q - k < window" in both (LLAMA_SWA_TYPE_STANDARD; HF's
  sliding_window mask), so the tiny window (4) is shorter than the test sequences and the
  masking is exercised rather than avoided.
- Gemma 3 local layers use RoPE base rope_local_base_freq (llama.cpp: rope.freq_base_swa,
  default 10000), global layers rope_theta (rope.freq_base).
- Activation: gelu with the tanh approximation (HF "gelu_pytorch_tanh", ggml_gelu /
  ggml_geglu).
"""

from __future__ import annotations

import copy
import math

import numpy as np

from . import _common as C

# The GGUF tensor stem (inside blk.{i}.) llama.cpp uses for each LoRA module; no row reordering
# for any Gemma (llama.cpp applies NeoX-style RoPE to the HF layout as is). Checked by
# test_archs_gemma_phi3.py against gguf.get_tensor_name_map.
_GEMMA_GGUF_STEMS = C.LLAMA_GGUF_STEMS


# The converters write no sliding-window pattern key; llama.cpp assumes 2 (gemma2) or 6 (gemma3).
_SWA_PATTERN = {"gemma2": 2, "gemma3_text": 6}


def _layer_is_sliding(cfg: dict, il: int) -> bool:
    if cfg["model_type"] == "gemma":
        return False
    if cfg.get("layer_types"):
        return cfg["layer_types"][il] == "sliding_attention"
    return (il + 1) % cfg["sliding_window_pattern"] != 0


def _pattern_layer_types(n_layers: int, pattern: int) -> list[str]:
    # HF's default layer_types for a sliding_window_pattern; also llama.cpp's set_swa_pattern
    return ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n_layers)]


# ----------------------------------------------------------------------------------------
# float64 forward pass (transformers semantics)


def _forward(cfg: dict, weights: dict, tokens: list[int]) -> np.ndarray:
    mt = cfg["model_type"]
    is_g1, is_g3 = mt == "gemma", mt == "gemma3_text"

    def layer_attention(il: int) -> tuple[float, int | None]:
        sliding = _layer_is_sliding(cfg, il)
        base = cfg["rope_local_base_freq"] if is_g3 and sliding else cfg["rope_theta"]
        return base, (cfg["sliding_window"] if sliding else None)

    return C.decoder_forward(
        cfg, weights, tokens,
        qk_norm=is_g3,
        attn_scale=None if is_g1 else cfg["query_pre_attn_scalar"] ** -0.5,  # None: head_dim ** -0.5
        attn_softcap=None if is_g1 else cfg.get("attn_logit_softcapping"),
        layer_attention=layer_attention,
        act=C.gelu_tanh,
        norm_plus_one=True,
        sandwich_norms=not is_g1,
        embed_scale=math.sqrt(cfg["hidden_size"]),
        final_softcap=None if is_g1 else cfg.get("final_logit_softcapping"),
    )


# ----------------------------------------------------------------------------------------
# random weights


def _random_weights(cfg: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    H, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    mt = cfg["model_type"]

    def lin(out_f, in_f, gain=1.0):
        return C.lin_weight(rng, out_f, in_f, gain)

    def norm(dim):
        # neutral value of a Gemma norm weight is 0 (HF multiplies by 1 + w)
        return C.norm_weight(rng, dim, neutral=0.0)

    w: dict[str, np.ndarray] = {}
    # std 0.3: after the sqrt(hidden) scaling the residual stream starts at ~2.4, and the tied
    # logits come out at a few units, so the final softcap (gemma2) is in its non-linear range.
    w["model.embed_tokens.weight"] = (0.3 * rng.standard_normal((V, H))).astype(np.float32)
    for il in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{il}."
        w[p + "input_layernorm.weight"] = norm(H)
        # gain 2 on q makes attention scores large enough for the attention softcap to bite
        w[p + "self_attn.q_proj.weight"] = lin(nh * hd, H, 2.0)
        w[p + "self_attn.k_proj.weight"] = lin(nkv * hd, H)
        w[p + "self_attn.v_proj.weight"] = lin(nkv * hd, H)
        w[p + "self_attn.o_proj.weight"] = lin(H, nh * hd)
        if mt == "gemma3_text":
            w[p + "self_attn.q_norm.weight"] = norm(hd)
            w[p + "self_attn.k_norm.weight"] = norm(hd)
        w[p + "post_attention_layernorm.weight"] = norm(H)
        if mt != "gemma":
            w[p + "pre_feedforward_layernorm.weight"] = norm(H)
            w[p + "post_feedforward_layernorm.weight"] = norm(H)
        w[p + "mlp.gate_proj.weight"] = lin(I, H)
        w[p + "mlp.up_proj.weight"] = lin(I, H)
        w[p + "mlp.down_proj.weight"] = lin(H, I)
    w["model.norm.weight"] = norm(H)
    return w


# ----------------------------------------------------------------------------------------
# GGUF writing


def _gguf_tensors(arch: str, cfg: dict, weights: dict) -> dict[str, np.ndarray]:
    """HF tensors -> GGUF name: array, as the converter's modify_tensors + map_tensor_name do."""
    hf = {}
    for name, data in weights.items():
        if name == "lm_head.weight" and arch in ("gemma", "gemma2"):
            # GemmaModel / Gemma2Model.filter_tensors: "lm_head is not used in llama.cpp"
            continue
        if name == "lm_head.weight" and cfg.get("tie_word_embeddings", True):
            # tied Gemma 3: HF does not even save it; llama.cpp falls back to token_embd
            continue
        if name.endswith("norm.weight"):
            data = np.asarray(data, dtype=np.float32) + np.float32(1.0)
        hf[name] = data
    return C.gguf_tensor_names(arch, cfg["num_hidden_layers"], hf)


def _write_gguf(path, cfg: dict, weights: dict, dtype: str = "f32") -> None:
    mt = cfg["model_type"]
    arch = {"gemma": "gemma", "gemma2": "gemma2", "gemma3_text": "gemma3"}[mt]
    hd = cfg["head_dim"]
    if mt != "gemma":
        # llama.cpp hard-codes the query scale (see module docstring): a GGUF cannot say otherwise
        big = cfg["num_hidden_layers"] == (46 if mt == "gemma2" else 62)  # its "27B" by layer count
        llama_dim = cfg["hidden_size"] // cfg["num_attention_heads"] if big else hd
        if cfg["query_pre_attn_scalar"] != llama_dim:
            raise ValueError(f"llama.cpp ignores query_pre_attn_scalar and uses {llama_dim} here")
    if mt != "gemma":
        pattern = _SWA_PATTERN[mt]
        expect = _pattern_layer_types(cfg["num_hidden_layers"], pattern)
        got = [
            "sliding_attention" if _layer_is_sliding(cfg, i) else "full_attention"
            for i in range(cfg["num_hidden_layers"])
        ]
        if got != expect:
            raise ValueError(f"llama.cpp's {arch} uses sliding-window pattern {pattern}: {expect}")

    # GemmaModel/Gemma2Model write no rope base (llama.cpp's default is 10000, as is HF's);
    # gguf_writer writes it explicitly, which keeps a non-default rope_theta honest.
    w = C.gguf_writer(path, arch, cfg, dtype, key_value_length=hd)
    if mt == "gemma2":
        if cfg.get("attn_logit_softcapping") is None or cfg.get("final_logit_softcapping") is None:
            # llama.cpp's gemma2 always caps (defaults 50 and 30): "no cap" cannot be written
            raise ValueError("llama.cpp's gemma2 always applies both logit softcaps")
        w.add_attn_logit_softcapping(float(cfg["attn_logit_softcapping"]))
        w.add_final_logit_softcapping(float(cfg["final_logit_softcapping"]))
        w.add_sliding_window(cfg["sliding_window"])
    elif mt == "gemma3_text":
        if cfg.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(float(cfg["final_logit_softcapping"]))
        w.add_sliding_window(cfg["sliding_window"])
        # Gemma3Model does not write this (llama.cpp defaults the local base to 10000); newer
        # llama.cpp reads it when present, so it is written to keep both in step.
        w.add_rope_freq_base_swa(float(cfg["rope_local_base_freq"]))
    C.write_tensors_and_close(w, _gguf_tensors(arch, cfg, weights), dtype)


# ----------------------------------------------------------------------------------------
# the three variants


class _GemmaFamily:
    """What the three variants share: tiny_config() is a fresh copy of CONFIG with the overrides
    applied; the sliding-window variants then default query_pre_attn_scalar to head_dim (see
    module docstring) and layer_types to llama.cpp's fixed pattern."""

    ARCH: str
    CONFIG: dict
    LORA_MODULES = dict(C.LLAMA_LORA_PATHS)
    GGUF_STEMS = dict(_GEMMA_GGUF_STEMS)

    @classmethod
    def tiny_config(cls, **overrides) -> dict:
        cfg = copy.deepcopy(cls.CONFIG)
        cfg.update(overrides)
        pattern = _SWA_PATTERN.get(cls.CONFIG["model_type"])
        if pattern is not None:
            cfg.setdefault("query_pre_attn_scalar", cfg["head_dim"])
            cfg.setdefault("layer_types", _pattern_layer_types(cfg["num_hidden_layers"], pattern))
        return cfg

    random_weights = staticmethod(_random_weights)
    write_gguf = staticmethod(_write_gguf)
    forward = staticmethod(_forward)


_COMMON_CONFIG = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    # deliberately != hidden_size / num_attention_heads (16), as in Gemma 7B (3072/16 vs 256)
    "head_dim": 32,
    "vocab_size": 288,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "hidden_act": "gelu_pytorch_tanh",
    "hidden_activation": "gelu_pytorch_tanh",
    "tie_word_embeddings": True,
    "attention_bias": False,
    "bos_token_id": 2,
    "eos_token_id": 1,
    "pad_token_id": 0,
    "torch_dtype": "float32",
}


class Gemma(_GemmaFamily):
    """Gemma 1 (GemmaForCausalLM) -> GGUF arch "gemma"."""

    ARCH = "gemma"
    CONFIG = {
        **_COMMON_CONFIG,
        "architectures": ["GemmaForCausalLM"],
        "model_type": "gemma",
        "num_hidden_layers": 2,
    }


class Gemma2(_GemmaFamily):
    """Gemma 2 (Gemma2ForCausalLM) -> GGUF arch "gemma2"."""

    ARCH = "gemma2"
    CONFIG = {
        **_COMMON_CONFIG,
        "architectures": ["Gemma2ForCausalLM"],
        "model_type": "gemma2",
        # layer 0 sliding, layer 1 global (pattern 2)
        "num_hidden_layers": 2,
        # query_pre_attn_scalar follows head_dim (set by tiny_config): the only value llama.cpp
        # can express for a model of this size
        # small caps (real models: 50 and 30) so that both tanh caps change the result
        "attn_logit_softcapping": 3.0,
        "final_logit_softcapping": 4.0,
        "sliding_window": 4,
        "sliding_window_pattern": 2,
        "cache_implementation": "hybrid",
    }


class Gemma3(_GemmaFamily):
    """Gemma 3 text (Gemma3ForCausalLM, model_type gemma3_text) -> GGUF arch "gemma3"."""

    ARCH = "gemma3"
    CONFIG = {
        **_COMMON_CONFIG,
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        # 6 layers: llama.cpp's fixed pattern of 5 local layers then 1 global
        "num_hidden_layers": 6,
        # query_pre_attn_scalar = head_dim, set by tiny_config (see module docstring)
        "attn_logit_softcapping": None,
        "final_logit_softcapping": None,
        "sliding_window": 4,
        "sliding_window_pattern": 6,
        "rope_theta": 1000000.0,  # global layers
        "rope_local_base_freq": 10000.0,  # sliding layers
        "rope_scaling": None,
    }


VARIANTS = [Gemma, Gemma2, Gemma3]
