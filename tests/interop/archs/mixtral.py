"""Tiny Mixtral: Llama attention (llama.cpp's Q/K row permutation) and a sparse MoE block in every
layer, 4 experts, top-2, softmax router, top-2 weights renormalised. llama.cpp runs it as arch
`llama` with experts (its converter stacks `block_sparse_moe.experts.{e}.w1/w3/w2` into
ffn_gate_exps / ffn_up_exps / ffn_down_exps, conversion/llama.py); registered as ID "mixtral".

The weights are the per-expert layout of transformers v4 and Mixtral's checkpoints, where
per-expert LoRA keys (`block_sparse_moe.experts.3.w1.lora_A.weight`) come from.
"""
from __future__ import annotations

import numpy as np

from . import _common as C
from . import llama as L
from . import qwen3moe as Q

ARCH = "llama"
ID = "mixtral"
PERMUTE_QK = True
permute_qk = C.permute_qk

STEMS = {"w1": "ffn_gate_exps", "w3": "ffn_up_exps", "w2": "ffn_down_exps"}

LORA_MODULES = {
    **{m: (f"self_attn.{m}",) for m in ("q_proj", "k_proj", "v_proj", "o_proj")},
    "gate": ("block_sparse_moe.gate",),
    **{m: (f"block_sparse_moe.experts.{{e}}.{m}",) for m in STEMS},
}

ROUTING_MARGIN = Q.ROUTING_MARGIN


def tiny_config(**overrides) -> dict:
    """Tiny Llama (archs/llama.py) with Mixtral's sparse block (experts of intermediate_size)."""
    moe = {"model_type": "mixtral", "intermediate_size": 32, "num_local_experts": 4, "num_experts_per_tok": 2,
           "rope_theta": 1000000.0}
    return L.tiny_config(**{**moe, **overrides})


def random_weights(cfg: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    w = C.llama_random_weights(cfg, rng)
    h, ff, n = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_local_experts"]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for k in ("gate_proj", "up_proj", "down_proj"):
            del w[p + f"mlp.{k}.weight"]
        w[p + "block_sparse_moe.gate.weight"] = C.randn(rng, (n, h), 4.0 * h ** -0.5)
        for e in range(n):
            q = p + f"block_sparse_moe.experts.{e}."
            w[q + "w1.weight"] = C.randn(rng, (ff, h), h ** -0.5)
            w[q + "w3.weight"] = C.randn(rng, (ff, h), h ** -0.5)
            w[q + "w2.weight"] = C.randn(rng, (h, ff), ff ** -0.5)
    return w


def gguf_names(cfg: dict, hf_names) -> set[str]:
    return Q.expert_gguf_names(ARCH, cfg, hf_names, STEMS)


def write_gguf(path, cfg: dict, weights: dict[str, np.ndarray], dtype: str = "f32") -> None:
    wr = C.gguf_writer(path, ARCH, cfg, dtype, name="tiny-mixtral-interop", key_value_length=cfg["head_dim"])
    wr.add_rope_dimension_count(cfg["head_dim"])
    wr.add_expert_count(cfg["num_local_experts"])
    wr.add_expert_used_count(cfg["num_experts_per_tok"])
    both = Q.stacked(cfg, C.permute_qk_weights(cfg, weights), "block_sparse_moe", STEMS)
    plain = {k: v for k, v in both.items() if not k.startswith("blk.")}
    tensors = C.gguf_tensor_names(ARCH, cfg["num_hidden_layers"], plain)
    tensors.update({k: v for k, v in both.items() if k.startswith("blk.")})
    C.write_tensors_and_close(wr, tensors, dtype)


def forward(cfg: dict, weights: dict[str, np.ndarray], tokens: list[int]) -> np.ndarray:
    mlp = Q.moe_mlp(cfg, weights, "block_sparse_moe", ("w1", "w3", "w2"), renorm=True)
    return C.decoder_forward(cfg, weights, tokens, mlp=mlp)
