"""Tiny Qwen3 (per-head q_norm/k_norm before RoPE, no biases, head_dim != hidden/n_head).

head_dim is 32 with 4 heads on a 64-wide model, so q_proj is [128, 64] and o_proj [64, 128]:
an adapter writer that assumes square attention projections fails here.
"""
from __future__ import annotations

import numpy as np

from . import _common as C

ARCH = "qwen3"

LORA_MODULES = {module: (path,) for module, path in C.LLAMA_LORA_PATHS.items()}


def tiny_config(**overrides) -> dict:
    cfg = {
        "model_type": "qwen3",
        "vocab_size": 320,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 128,
        "tie_word_embeddings": False,
    }
    cfg.update(overrides)
    return cfg


def random_weights(cfg: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return C.llama_random_weights(cfg, rng, qk_norm=True)


def write_gguf(path, cfg: dict, weights: dict[str, np.ndarray], dtype: str = "f32") -> None:
    wr = C.gguf_writer(path, ARCH, cfg, dtype, name="tiny-qwen3-interop",
                       key_value_length=cfg["head_dim"])
    C.write_tensors_and_close(wr, C.gguf_tensor_names(ARCH, cfg["num_hidden_layers"], weights), dtype)


def forward(cfg: dict, weights: dict[str, np.ndarray], tokens: list[int]) -> np.ndarray:
    # per-head RMSNorm of q and k, then RoPE (HF Qwen3)
    return C.decoder_forward(cfg, weights, tokens, qk_norm=True)
