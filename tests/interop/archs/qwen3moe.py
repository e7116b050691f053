"""Tiny Qwen3-MoE: Qwen3's attention (per-head q_norm/k_norm) and a sparse MoE block in every
layer: 4 experts, top-2, softmax router, the top-2 weights renormalised (norm_topk_prob, which
llama.cpp's qwen3moe hard-codes).

The weights are in the transformers v4 layout (per-expert modules `mlp.experts.{e}.gate_proj`,
where per-expert LoRA keys come from); write_gguf stacks them as llama.cpp's converter does: expert
e takes the rows e * out .. (e + 1) * out of `blk.N.ffn_{gate,up,down}_exps.weight` (ggml
[in, out, n_expert]). The router `mlp.gate` [n_expert, hidden] is `ffn_gate_inp`.

Routing is discontinuous: forward records the smallest gap between the k-th and (k+1)-th router
probability over every token and layer in ROUTING_MARGIN, so a test can check that no top-k choice
sits near a tie (where llama.cpp's rounding could pick another expert).
"""
from __future__ import annotations

import numpy as np

from . import _common as C
from . import qwen3 as Q3

ARCH = "qwen3moe"

EXPERT_STEMS = {"gate_proj": "ffn_gate_exps", "up_proj": "ffn_up_exps", "down_proj": "ffn_down_exps"}

LORA_MODULES = {
    **{m: (f"self_attn.{m}",) for m in ("q_proj", "k_proj", "v_proj", "o_proj")},
    "gate": ("mlp.gate",),
    **{m: (f"mlp.experts.{{e}}.{m}",) for m in EXPERT_STEMS},
}

# Smallest top-k gap of the last forward: (gap, layer, token).
ROUTING_MARGIN: list = [None]


def tiny_config(**overrides) -> dict:
    """Tiny Qwen3 (archs/qwen3.py) with the sparse block's hyper-parameters."""
    moe = {"model_type": "qwen3_moe", "moe_intermediate_size": 32, "num_experts": 4, "num_experts_per_tok": 2,
           "norm_topk_prob": True}
    return Q3.tiny_config(**{**moe, **overrides})


def random_weights(cfg: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    w = C.llama_random_weights(cfg, rng, qk_norm=True)
    h, ff, n = cfg["hidden_size"], cfg["moe_intermediate_size"], cfg["num_experts"]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}.mlp."
        for k in ("gate_proj", "up_proj", "down_proj"):
            del w[p + k + ".weight"]
        # A router spread wide enough that the top-2 choices are clear.
        w[p + "gate.weight"] = C.randn(rng, (n, h), 4.0 * h ** -0.5)
        for e in range(n):
            w[p + f"experts.{e}.gate_proj.weight"] = C.randn(rng, (ff, h), h ** -0.5)
            w[p + f"experts.{e}.up_proj.weight"] = C.randn(rng, (ff, h), h ** -0.5)
            w[p + f"experts.{e}.down_proj.weight"] = C.randn(rng, (h, ff), ff ** -0.5)
    return w


def stacked(cfg: dict, weights: dict, block: str = "mlp", stems: dict = EXPERT_STEMS) -> dict[str, np.ndarray]:
    """HF names of the non-expert weights, plus the stacked expert tensors under their GGUF names
    (per-expert modules `model.layers.{i}.<block>.experts.{e}.<module>`, `stems` naming them)."""
    out, n = {}, experts_of(cfg)
    for name, arr in weights.items():
        if f".{block}.experts." not in name:
            out[name] = arr
    for i in range(cfg["num_hidden_layers"]):
        for module, stem in stems.items():
            parts = [weights[f"model.layers.{i}.{block}.experts.{e}.{module}.weight"] for e in range(n)]
            out[f"blk.{i}.{stem}.weight"] = np.stack(parts)  # numpy [E, out, in] = ggml [in, out, E]
    return out


def experts_of(cfg: dict) -> int:
    return cfg.get("num_experts") or cfg["num_local_experts"]


def expert_gguf_names(arch: str, cfg: dict, hf_names, stems: dict = EXPERT_STEMS) -> set[str]:
    """GGUF base tensors these HF weights become (an expert's weight: its layer's stacked tensor)."""
    out, plain = set(), {}
    for name in hf_names:
        if ".experts." in name:
            i, module = name.split(".")[2], name.split(".")[-2]
            out.add(f"blk.{i}.{stems[module]}.weight")
        else:
            plain[name] = None
    return out | set(C.gguf_tensor_names(arch, cfg["num_hidden_layers"], plain))


def gguf_names(cfg: dict, hf_names) -> set[str]:
    return expert_gguf_names(ARCH, cfg, hf_names)


def write_gguf(path, cfg: dict, weights: dict[str, np.ndarray], dtype: str = "f32") -> None:
    wr = C.gguf_writer(path, ARCH, cfg, dtype, name="tiny-qwen3moe-interop", key_value_length=cfg["head_dim"])
    wr.add_expert_count(cfg["num_experts"])
    wr.add_expert_used_count(cfg["num_experts_per_tok"])
    wr.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    both = stacked(cfg, weights)
    plain = {k: v for k, v in both.items() if not k.startswith("blk.")}
    tensors = C.gguf_tensor_names(ARCH, cfg["num_hidden_layers"], plain)
    tensors.update({k: v for k, v in both.items() if k.startswith("blk.")})
    C.write_tensors_and_close(wr, tensors, dtype)


def moe_mlp(cfg: dict, weights: dict, block: str = "mlp", names: tuple = ("gate_proj", "up_proj", "down_proj"),
            renorm: bool | None = None):
    """The HF sparse MoE block (Qwen3MoeSparseMoeBlock; Mixtral's with block "block_sparse_moe"
    and names w1/w3/w2) of layer il on normed input h [n, hidden]: softmax router, top-k, the
    top-k weights renormalised when `renorm` (default: cfg's norm_topk_prob)."""
    n, k = experts_of(cfg), cfg["num_experts_per_tok"]
    renorm = cfg.get("norm_topk_prob", True) if renorm is None else renorm
    gate_name, up_name, down_name = names
    margin = [np.inf, None, None]

    def mlp(il: int, h: np.ndarray) -> np.ndarray:
        g = lambda name: weights[f"model.layers.{il}.{block}.{name}"]  # noqa: E731
        logits = C.linear(h, g("gate.weight"))
        probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        out = np.zeros_like(h)
        for t in range(h.shape[0]):
            order = np.argsort(-probs[t])
            gap = probs[t, order[k - 1]] - probs[t, order[k]]
            if gap < margin[0]:
                margin[:] = [gap, il, t]
            top = order[:k]
            w = probs[t, top] / probs[t, top].sum() if renorm else probs[t, top]
            for e, we in zip(top, w):
                x = h[t:t + 1]
                gate = C.linear(x, g(f"experts.{e}.{gate_name}.weight"))
                up = C.linear(x, g(f"experts.{e}.{up_name}.weight"))
                out[t] += we * C.linear(C.silu(gate) * up, g(f"experts.{e}.{down_name}.weight"))[0]
        ROUTING_MARGIN[0] = tuple(margin)
        return out

    return mlp


def forward(cfg: dict, weights: dict[str, np.ndarray], tokens: list[int]) -> np.ndarray:
    return C.decoder_forward(cfg, weights, tokens, qk_norm=True, mlp=moe_mlp(cfg, weights))
