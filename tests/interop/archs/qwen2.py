"""Tiny Qwen2 (q/k/v biases, GQA, untied lm_head) for the interop tests.

Qwen2's GGUF keeps the HF rotate-half (NeoX) RoPE layout, so no Q/K row permutation; the biases
are untouched by LoRA but must be carried into both sides.
"""
from __future__ import annotations

import numpy as np

from . import _common as C

ARCH = "qwen2"

LORA_MODULES = {module: (path,) for module, path in C.LLAMA_LORA_PATHS.items()}


def tiny_config(**overrides) -> dict:
    cfg = {
        "model_type": "qwen2",
        "vocab_size": 300,
        "hidden_size": 64,
        "intermediate_size": 160,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 128,
        "tie_word_embeddings": False,
    }
    cfg.update(overrides)
    return cfg


def random_weights(cfg: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return C.llama_random_weights(cfg, rng, qkv_bias=True)


def write_gguf(path, cfg: dict, weights: dict[str, np.ndarray], dtype: str = "f32") -> None:
    # no key_length: llama.cpp takes hidden_size / num_attention_heads, as HF does without head_dim
    wr = C.gguf_writer(path, ARCH, cfg, dtype, name="tiny-qwen2-interop")
    C.write_tensors_and_close(wr, C.gguf_tensor_names(ARCH, cfg["num_hidden_layers"], weights), dtype)


def forward(cfg: dict, weights: dict[str, np.ndarray], tokens: list[int]) -> np.ndarray:
    return C.decoder_forward(cfg, weights, tokens, qkv_bias=True)
