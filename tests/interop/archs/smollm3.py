"""Tiny SmolLM3 (GGUF arch "smollm3") for the interop suite.

What llama.cpp does:
- Converter: conversion/llama.py SmolLM3Model(LlamaModel), model_arch SMOLLM3, nothing
  overridden: llama GGUF keys, q_proj/k_proj rows permuted (undo_permute=True); llama.cpp's
  smollm3 uses LLAMA_ROPE_TYPE_NORM on the permuted rows. A LoRA's lora_B rows on q/k need the
  same permutation.
- NoPE layers: the converter writes nothing about HF's no_rope_layers; llama.cpp's smollm3
  (src/models/smollm3.cpp) hard-codes n_no_rope_layer_step = 4 and skips RoPE in layer il iff
  (il + 1) % 4 == 0, which is HF's default no_rope_layers for no_rope_layer_interval = 4
  ([1, 1, 1, 0, ...], 1 = RoPE). The tiny model has 4 layers, so layer 3 runs without RoPE, and
  write_gguf refuses any other no_rope_layers (llama.cpp could not express it).
- Tied embeddings (SmolLM3-3B ties; llama.cpp falls back to token_embd without output.weight).
"""
from __future__ import annotations

import copy

import numpy as np

from . import _common as C

ARCH = "smollm3"

LORA_MODULES = {module: (path,) for module, path in C.LLAMA_LORA_PATHS.items()}
PERMUTE_QK = True

_NO_ROPE_STEP = 4  # llama.cpp's hparams.n_no_rope_layer_step for smollm3

_CONFIG = {
    "architectures": ["SmolLM3ForCausalLM"],
    "model_type": "smollm3",
    "vocab_size": 288,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "rope_theta": 5000000.0,
    "max_position_embeddings": 128,
    "tie_word_embeddings": True,
    "use_sliding_window": False,
    "sliding_window": None,
    "no_rope_layer_interval": 4,
    "attention_bias": False,
    "mlp_bias": False,
}


def _default_no_rope_layers(n_layers: int, interval: int) -> list[int]:
    # SmolLM3Config.__post_init__: 1 = this layer uses RoPE
    return [int((i + 1) % interval != 0) for i in range(n_layers)]


def tiny_config(**overrides) -> dict:
    cfg = copy.deepcopy(_CONFIG)
    cfg.update(overrides)
    if cfg.get("no_rope_layers") is None:
        cfg["no_rope_layers"] = _default_no_rope_layers(cfg["num_hidden_layers"], cfg["no_rope_layer_interval"])
    return cfg


def random_weights(cfg: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return C.llama_random_weights(cfg, rng)


def write_gguf(path, cfg: dict, weights: dict[str, np.ndarray], dtype: str = "f32") -> None:
    expect = _default_no_rope_layers(cfg["num_hidden_layers"], _NO_ROPE_STEP)
    if list(cfg["no_rope_layers"]) != expect:
        raise ValueError(f"llama.cpp's smollm3 always uses no_rope_layers {expect}")
    if cfg.get("use_sliding_window"):
        raise ValueError("llama.cpp's smollm3 has no sliding window")
    # head_dim: written (key/value length) only when the config has it, as TextModel does
    wr = C.gguf_writer(path, ARCH, cfg, dtype, name="tiny-smollm3-interop", key_value_length=cfg.get("head_dim"))
    wr.add_rope_dimension_count(C.head_dim(cfg))  # LlamaModel.set_gguf_parameters
    hf = C.permute_qk_weights(cfg, weights)
    C.write_tensors_and_close(wr, C.gguf_tensor_names(ARCH, cfg["num_hidden_layers"], hf), dtype)


def forward(cfg: dict, weights: dict[str, np.ndarray], tokens: list[int]) -> np.ndarray:
    """SmolLM3ForCausalLM: Llama, without RoPE in the layers whose no_rope_layers entry is 0."""
    rope = (C.rope_inv_freq(cfg["rope_theta"], C.head_dim(cfg)), 1.0)
    return C.decoder_forward(cfg, weights, tokens,
                             layer_rope=lambda il: rope if cfg["no_rope_layers"][il] else None)
