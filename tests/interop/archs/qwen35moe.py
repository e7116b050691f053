"""Tiny Qwen3.5-MoE: Qwen3.5's layers (gated full attention and Gated DeltaNet linear attention,
V-head reorder and all, archs/qwen35.py) with a sparse MoE block in every layer: 4 routed experts,
top-2, softmax router, top-2 weights renormalised (llama.cpp's qwen35moe passes norm_w = true),
plus a shared expert whose output is scaled by sigmoid(shared_expert_gate(h)) (transformers'
Qwen3_5MoeSparseMoeBlock; llama.cpp's qwen35moe.cpp: build_ffn on ffn_*_shexp times
sigmoid(build_lora_mm(ffn_gate_inp_shexp, cur))).

Experts are per-expert modules (stacked as the converter does for GGUF); the shared expert is
`mlp.shared_expert.{gate,up,down}_proj` -> ffn_{gate,up,down}_shexp and `mlp.shared_expert_gate`
[1, hidden] -> ffn_gate_inp_shexp.
"""
from __future__ import annotations

import numpy as np

from . import _common as C
from . import qwen35 as Q35
from . import qwen3moe as M

ARCH = "qwen35moe"
ROUTING_MARGIN = M.ROUTING_MARGIN

LORA_MODULES = {
    **{k: v for k, v in Q35.LORA_MODULES.items() if not k.endswith("_proj") or ".mlp." not in "." + v[0]},
    "gate": ("mlp.gate",),
    **{m: (f"mlp.experts.{{e}}.{m}",) for m in M.EXPERT_STEMS},
    **{f"shared_expert.{m}": (f"mlp.shared_expert.{m}",) for m in M.EXPERT_STEMS},
    "shared_expert_gate": ("mlp.shared_expert_gate",),
}


def tiny_config(**overrides) -> dict:
    cfg = Q35.tiny_config(**{"model_type": "qwen3_5_moe_text", "architectures": ["Qwen3_5MoeForCausalLM"],
                             "num_experts": 4, "num_experts_per_tok": 2, "norm_topk_prob": True,
                             "moe_intermediate_size": 32, "shared_expert_intermediate_size": 48, **overrides})
    return cfg


def random_weights(cfg: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    w = Q35.random_weights(cfg, rng)
    h, f, fs, n = cfg["hidden_size"], cfg["moe_intermediate_size"], cfg["shared_expert_intermediate_size"], cfg["num_experts"]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}.mlp."
        for k in ("gate_proj", "up_proj", "down_proj"):
            del w[p + k + ".weight"]
        w[p + "gate.weight"] = C.randn(rng, (n, h), 4.0 * h ** -0.5)
        for e in range(n):
            w[p + f"experts.{e}.gate_proj.weight"] = C.lin_weight(rng, f, h)
            w[p + f"experts.{e}.up_proj.weight"] = C.lin_weight(rng, f, h)
            w[p + f"experts.{e}.down_proj.weight"] = C.lin_weight(rng, h, f)
        w[p + "shared_expert.gate_proj.weight"] = C.lin_weight(rng, fs, h)
        w[p + "shared_expert.up_proj.weight"] = C.lin_weight(rng, fs, h)
        w[p + "shared_expert.down_proj.weight"] = C.lin_weight(rng, h, fs)
        w[p + "shared_expert_gate.weight"] = C.lin_weight(rng, 1, h)
    return w


def gguf_names(cfg: dict, hf_names) -> set[str]:
    return M.expert_gguf_names(ARCH, cfg, hf_names)


def write_gguf(path, cfg: dict, weights: dict[str, np.ndarray], dtype: str = "f32") -> None:
    experts = M.stacked(cfg, weights)
    stacked = {k: v for k, v in experts.items() if k.startswith("blk.")}
    plain = {k: v for k, v in experts.items() if not k.startswith("blk.")}

    def extra(wr):
        wr.add_expert_count(cfg["num_experts"])
        wr.add_expert_used_count(cfg["num_experts_per_tok"])
        wr.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
        wr.add_expert_shared_feed_forward_length(cfg["shared_expert_intermediate_size"])

    Q35.write_gguf(path, cfg, plain, dtype, arch=ARCH, extra_kv=extra, extra_tensors=stacked)


def moe_mlp(cfg: dict, weights: dict):
    routed = M.moe_mlp(cfg, weights)

    def mlp(il: int, h: np.ndarray) -> np.ndarray:
        g = lambda k: weights[f"model.layers.{il}.mlp.{k}"]  # noqa: E731
        shared = C.linear(C.silu(C.linear(h, g("shared_expert.gate_proj.weight"))) * C.linear(h, g("shared_expert.up_proj.weight")),
                          g("shared_expert.down_proj.weight"))
        gate = 1.0 / (1.0 + np.exp(-C.linear(h, g("shared_expert_gate.weight"))))
        return routed(il, h) + gate * shared

    return mlp


def forward(cfg: dict, weights: dict[str, np.ndarray], tokens: list[int]) -> np.ndarray:
    return Q35.forward(cfg, weights, tokens, mlp=moe_mlp(cfg, weights))
