"""Tiny OLMo 2 (GGUF arch "olmo2") for the interop suite; OLMo 3 via tiny_config(model_type="olmo3").

What llama.cpp does (conversion/olmo.py Olmo2Model, registered for Olmo2ForCausalLM and
Olmo3ForCausalLM, model_arch OLMO2; src/models/olmo2.cpp):
- No Q/K row permutation (Olmo2Model is a plain TextModel; llama.cpp's olmo2 uses
  LLAMA_ROPE_TYPE_NEOX = HF's rotate-half on the HF row order). LoRA B rows stay as they are.
- Post-norm blocks: no input_layernorm; x += post_attention_norm(attn(x)),
  x += post_ffw_norm(mlp(x)). q_norm / k_norm are RMSNorms over the whole q_proj / k_proj
  output (num_heads * head_dim and num_kv_heads * head_dim wide), before RoPE.
- llama.cpp creates attn_q / attn_output as [n_embd, n_embd]: head_dim must be
  hidden_size / num_attention_heads. output.weight is required (no tied-embedding fallback).
- OLMo 3: the converter writes attention.sliding_window and a per-layer
  attention.sliding_window_pattern (bool array from layer_types, default sliding iff
  (i + 1) % 4 != 0) when the config has "sliding_window"; llama.cpp's sliding layers use plain
  RoPE (freq_scale 1, no YaRN), the full ones the rope.scaling.* keys. The tiny OLMo 3 has 4
  layers and a window of 4, so masking is exercised at the 8 test positions; no YaRN.
"""
from __future__ import annotations

import copy

import numpy as np

from . import _common as C

ARCH = "olmo2"

LORA_MODULES = {module: (path,) for module, path in C.LLAMA_LORA_PATHS.items()}
PERMUTE_QK = False  # NEOX RoPE in llama.cpp: the HF row order is kept

_CONFIG = {
    "architectures": ["Olmo2ForCausalLM"],
    "model_type": "olmo2",
    "vocab_size": 288,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    # GQA (OLMo 2 32B has 8 KV heads for 40): k_norm is then num_kv_heads * head_dim wide
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "rope_theta": 500000.0,
    "max_position_embeddings": 128,
    "tie_word_embeddings": False,
    "attention_bias": False,
}

_OLMO3 = {
    "architectures": ["Olmo3ForCausalLM"],
    "model_type": "olmo3",
    "num_hidden_layers": 4,
    "sliding_window": 4,
}


def tiny_config(**overrides) -> dict:
    cfg = copy.deepcopy(_CONFIG)
    if overrides.get("model_type") == "olmo3":
        cfg.update(_OLMO3)
    cfg.update(overrides)
    if cfg["model_type"] == "olmo3" and cfg.get("layer_types") is None:
        # Olmo3Config.__post_init__
        cfg["layer_types"] = ["sliding_attention" if (i + 1) % 4 != 0 else "full_attention"
                              for i in range(cfg["num_hidden_layers"])]
    return cfg


def _check(cfg: dict) -> None:
    if C.head_dim(cfg) * cfg["num_attention_heads"] != cfg["hidden_size"]:
        raise ValueError("llama.cpp's olmo2 needs head_dim == hidden_size / num_attention_heads")
    if cfg["tie_word_embeddings"]:
        raise ValueError("llama.cpp's olmo2 requires output.weight (no tied embeddings)")


def random_weights(cfg: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    h, ff, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd, nh, nkv = C.head_dim(cfg), cfg["num_attention_heads"], cfg["num_key_value_heads"]

    def norm(dim):
        return C.norm_weight(rng, dim, neutral=1.0)

    w = {"model.embed_tokens.weight": C.randn(rng, (v, h), 1.0)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = C.randn(rng, (nh * hd, h), h ** -0.5)
        w[p + "self_attn.k_proj.weight"] = C.randn(rng, (nkv * hd, h), h ** -0.5)
        w[p + "self_attn.v_proj.weight"] = C.randn(rng, (nkv * hd, h), h ** -0.5)
        w[p + "self_attn.o_proj.weight"] = C.randn(rng, (h, nh * hd), (nh * hd) ** -0.5)
        w[p + "self_attn.q_norm.weight"] = norm(nh * hd)
        w[p + "self_attn.k_norm.weight"] = norm(nkv * hd)
        w[p + "post_attention_layernorm.weight"] = norm(h)
        w[p + "mlp.gate_proj.weight"] = C.randn(rng, (ff, h), h ** -0.5)
        w[p + "mlp.up_proj.weight"] = C.randn(rng, (ff, h), h ** -0.5)
        w[p + "mlp.down_proj.weight"] = C.randn(rng, (h, ff), ff ** -0.5)
        w[p + "post_feedforward_layernorm.weight"] = norm(h)
    w["model.norm.weight"] = norm(h)
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = C.randn(rng, (v, h), 2.0 * h ** -0.5)
    return w


def _sliding(cfg: dict) -> list[bool] | None:
    if "sliding_window" not in cfg:
        return None
    if cfg.get("layer_types"):
        return [t == "sliding_attention" for t in cfg["layer_types"]]
    return [(i + 1) % 4 != 0 for i in range(cfg["num_hidden_layers"])]


def write_gguf(path, cfg: dict, weights: dict[str, np.ndarray], dtype: str = "f32") -> None:
    _check(cfg)
    if cfg.get("rope_scaling") or cfg.get("rope_parameters"):
        raise ValueError("RoPE scaling not modelled here")
    wr = C.gguf_writer(path, ARCH, cfg, dtype, name="tiny-olmo2-interop", key_value_length=cfg.get("head_dim"))
    sliding = _sliding(cfg)
    if sliding is not None:  # Olmo2Model.set_gguf_parameters
        wr.add_sliding_window(cfg["sliding_window"])
        wr.add_sliding_window_pattern(sliding)
    C.write_tensors_and_close(wr, C.gguf_tensor_names(ARCH, cfg["num_hidden_layers"], weights), dtype)


def forward(cfg: dict, weights: dict[str, np.ndarray], tokens: list[int]) -> np.ndarray:
    """Olmo2ForCausalLM / Olmo3ForCausalLM."""
    sliding = _sliding(cfg)

    def layer_attention(il):
        window = cfg["sliding_window"] if sliding is not None and sliding[il] else None
        return cfg["rope_theta"], window

    return C.decoder_forward(cfg, weights, tokens, post_norms=True, qk_norm_full=True,
                             layer_attention=layer_attention)
