"""Tiny Llama (grouped-query attention, untied lm_head by default) for the interop tests.

GGUF `llama` stores q_proj/k_proj rows interleaved per head (the HF converter's permutation), while
HF computes rotate-half RoPE on the unpermuted rows; write_gguf applies that permutation and
forward() uses the HF layout, so a test passes only if the adapter got the layout right too.
"""
from __future__ import annotations

import numpy as np

from . import _common as C

ARCH = "llama"

# HF module name -> its path inside a decoder layer (weights are model.layers.{i}.<path>.weight)
LORA_MODULES = {module: (path,) for module, path in C.LLAMA_LORA_PATHS.items()}


def tiny_config(**overrides) -> dict:
    cfg = {
        "model_type": "llama",
        "vocab_size": 288,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 128,
        "tie_word_embeddings": False,
    }
    cfg.update(overrides)
    return cfg


def random_weights(cfg: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return C.llama_random_weights(cfg, rng)


permute_qk = C.permute_qk  # the HF->GGUF llama row reorder (test_merge_interop uses it)


def write_gguf(path, cfg: dict, weights: dict[str, np.ndarray], dtype: str = "f32") -> None:
    wr = C.gguf_writer(path, ARCH, cfg, dtype, name="tiny-llama-interop",
                       key_value_length=cfg["head_dim"])
    wr.add_rope_dimension_count(cfg["head_dim"])
    hf = C.permute_qk_weights(cfg, weights)
    C.write_tensors_and_close(wr, C.gguf_tensor_names(ARCH, cfg["num_hidden_layers"], hf), dtype)


def forward(cfg: dict, weights: dict[str, np.ndarray], tokens: list[int]) -> np.ndarray:
    return C.decoder_forward(cfg, weights, tokens)
