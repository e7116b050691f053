"""Tiny Llama 4 (text): transformers' Llama4ForCausalLM semantics, written out here.

- Attention: RoPE on consecutive pairs (HF's complex `apply_rotary_emb`, llama.cpp's NORM rope, so
  the converter keeps q/k rows as they are), then an L2 norm of every q and k head (`use_qk_norm`)
  on the RoPE layers. Every 4th layer is NoPE (`no_rope_layer_interval`): no RoPE, no norm, and a
  query temperature that is exactly 1 below 8192 tokens. Chunked attention (8192) is plain causal
  attention for these few tokens.
- MLP: every `interleave_moe_layer_step`-th layer is sparse, the others a dense MLP of
  `intermediate_size_mlp`. The sparse block: router (an nn.Linear) top-k by logit, sigmoid of the
  chosen logits multiplies each expert's *input*; experts `gate_up_proj` [E, H, 2F] and
  `down_proj` [E, F, H] used as x @ W (gate = first F columns); plus a shared expert on the input.
- llama.cpp's converter (conversion/llama.py, Llama4Model) transposes the experts and splits
  gate_up by halves: ffn_gate_exps[e] = gate_up_proj[e][:, :F].T, ffn_up_exps[e] = [:, F:].T,
  ffn_down_exps[e] = down_proj[e].T.

The experts are parameters, not modules: LoRA reaches them only through PEFT's target_parameters
(test_moe_interop.py). Routing is discontinuous: forward records the smallest gap between the k-th
and (k+1)-th router logit in ROUTING_MARGIN.
"""
from __future__ import annotations

import numpy as np

from . import _common as C

ARCH = "llama4"
ROUTING_MARGIN: list = [None]

LORA_MODULES = {
    **{m: (f"self_attn.{m}",) for m in ("q_proj", "k_proj", "v_proj", "o_proj")},
    # the dense layers' MLP (layers 0 and 2); PEFT wraps only the modules that exist
    **{m: (f"feed_forward.{m}",) for m in ("gate_proj", "up_proj", "down_proj")},
    "router": ("feed_forward.router",),
    **{f"shared_expert.{m}": (f"feed_forward.shared_expert.{m}",) for m in ("gate_proj", "up_proj", "down_proj")},
}


def tiny_config(**overrides) -> dict:
    cfg = {
        "model_type": "llama4_text",
        "vocab_size": 256,
        "hidden_size": 64,
        "intermediate_size": 32,          # each expert and the shared expert
        "intermediate_size_mlp": 96,      # the dense layers
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "interleave_moe_layer_step": 2,   # layers 1 and 3 sparse
        "num_hidden_layers": 4,           # layer 3 NoPE
        "no_rope_layer_interval": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "max_position_embeddings": 256,
        "use_qk_norm": True,
        "tie_word_embeddings": False,
    }
    cfg.update(overrides)
    return cfg


def is_sparse(cfg: dict, il: int) -> bool:
    return (il + 1) % cfg["interleave_moe_layer_step"] == 0


def uses_rope(cfg: dict, il: int) -> bool:
    return (il + 1) % cfg["no_rope_layer_interval"] != 0


def random_weights(cfg: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    h, f, fm, n = cfg["hidden_size"], cfg["intermediate_size"], cfg["intermediate_size_mlp"], cfg["num_local_experts"]
    w = C.llama_random_weights({**cfg, "intermediate_size": fm}, rng)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        mlp = {k: w.pop(p + f"mlp.{k}.weight") for k in ("gate_proj", "up_proj", "down_proj")}
        if not is_sparse(cfg, i):
            for k, v in mlp.items():
                w[p + f"feed_forward.{k}.weight"] = v
            continue
        q = p + "feed_forward."
        # A router spread wide enough that the top-2 choices are clear.
        w[q + "router.weight"] = C.randn(rng, (n, h), 4.0 * h ** -0.5)
        w[q + "experts.gate_up_proj"] = C.randn(rng, (n, h, 2 * f), h ** -0.5)
        w[q + "experts.down_proj"] = C.randn(rng, (n, f, h), f ** -0.5)
        w[q + "shared_expert.gate_proj.weight"] = C.lin_weight(rng, f, h)
        w[q + "shared_expert.up_proj.weight"] = C.lin_weight(rng, f, h)
        w[q + "shared_expert.down_proj.weight"] = C.lin_weight(rng, h, f)
    return w


def gguf_tensors(cfg: dict, weights: dict) -> dict[str, np.ndarray]:
    """GGUF name -> numpy array, as conversion/llama.py's Llama4Model writes them."""
    plain, out = {}, {}
    for name, arr in weights.items():
        if ".experts." not in name:
            plain[name] = arr
            continue
        i, f = name.split(".")[2], cfg["intermediate_size"]
        t = np.transpose(arr, (0, 2, 1))   # [E, out, in]
        if name.endswith("gate_up_proj"):
            out[f"blk.{i}.ffn_gate_exps.weight"], out[f"blk.{i}.ffn_up_exps.weight"] = t[:, :f], t[:, f:]
        else:
            out[f"blk.{i}.ffn_down_exps.weight"] = t
    out.update(C.gguf_tensor_names(ARCH, cfg["num_hidden_layers"], plain))
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def write_gguf(path, cfg: dict, weights: dict[str, np.ndarray], dtype: str = "f32", quant=None) -> None:
    """quant: optional (name, array) -> (raw bytes array, GGMLQuantizationType) or None, to store
    some tensors in another type."""
    # llama.cpp sizes the dense MLP by feed_forward_length, the experts by expert_feed_forward_length
    wr = C.gguf_writer(path, ARCH, {**cfg, "intermediate_size": cfg["intermediate_size_mlp"]}, dtype,
                       name="tiny-llama4-interop", key_value_length=cfg["head_dim"])
    wr.add_rope_dimension_count(cfg["head_dim"])
    wr.add_expert_count(cfg["num_local_experts"])
    wr.add_expert_used_count(cfg["num_experts_per_tok"])
    wr.add_expert_feed_forward_length(cfg["intermediate_size"])
    wr.add_interleave_moe_layer_step(cfg["interleave_moe_layer_step"])
    for name, arr in gguf_tensors(cfg, weights).items():
        q = quant(name, arr) if quant else None
        if q is None:
            wr.add_tensor(name, C.as_gguf_dtype(arr, dtype))
        else:
            wr.add_tensor(name, q[0], raw_dtype=q[1])
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()


def _rope_pairs(x: np.ndarray, pos: np.ndarray, theta: float) -> np.ndarray:
    """HF Llama 4's apply_rotary_emb: dims (2i, 2i + 1) of each head rotate as one complex number."""
    ang = pos.astype(np.float64)[:, None] * C.rope_inv_freq(theta, x.shape[-1])[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    out = np.empty_like(x)
    out[..., 0::2] = x[..., 0::2] * cos - x[..., 1::2] * sin
    out[..., 1::2] = x[..., 0::2] * sin + x[..., 1::2] * cos
    return out


def _l2_norm(x: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def _attention(cfg: dict, g, h: np.ndarray, il: int) -> np.ndarray:
    nh, nkv, hd, n = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"], h.shape[0]
    assert n < 8191, "the NoPE layers' query temperature is 1 only below 8192 tokens"
    pos = np.arange(n)
    q = C.linear(h, g("self_attn.q_proj.weight")).reshape(n, nh, hd)
    k = C.linear(h, g("self_attn.k_proj.weight")).reshape(n, nkv, hd)
    v = C.linear(h, g("self_attn.v_proj.weight")).reshape(n, nkv, hd)
    if uses_rope(cfg, il):
        q, k = _rope_pairs(q, pos, cfg["rope_theta"]), _rope_pairs(k, pos, cfg["rope_theta"])
        if cfg["use_qk_norm"]:
            q, k = _l2_norm(q, cfg["rms_norm_eps"]), _l2_norm(k, cfg["rms_norm_eps"])
    return C.linear(C.causal_attention(q, k, v, hd ** -0.5), g("self_attn.o_proj.weight"))


def _dense(g, h: np.ndarray, prefix: str) -> np.ndarray:
    gate, up = C.linear(h, g(f"{prefix}gate_proj.weight")), C.linear(h, g(f"{prefix}up_proj.weight"))
    return C.linear(C.silu(gate) * up, g(f"{prefix}down_proj.weight"))


def _moe(cfg: dict, g, h: np.ndarray, margin: list) -> np.ndarray:
    k, f = cfg["num_experts_per_tok"], cfg["intermediate_size"]
    logits = C.linear(h, g("feed_forward.router.weight"))
    out = _dense(g, h, "feed_forward.shared_expert.")
    gate_up, down = g("feed_forward.experts.gate_up_proj"), g("feed_forward.experts.down_proj")
    for t in range(h.shape[0]):
        order = np.argsort(-logits[t])
        margin[0] = min(margin[0], logits[t, order[k - 1]] - logits[t, order[k]])
        for e in order[:k]:
            x = h[t] / (1.0 + np.exp(-logits[t, e]))      # the router weight scales the input
            gu = x @ gate_up[e].astype(np.float64)
            out[t] += (C.silu(gu[:f]) * gu[f:]) @ down[e].astype(np.float64)
    return out


def forward(cfg: dict, weights: dict[str, np.ndarray], tokens: list[int]) -> np.ndarray:
    eps = cfg["rms_norm_eps"]
    x = weights["model.embed_tokens.weight"].astype(np.float64)[np.asarray(tokens)]
    margin = [np.inf]
    for il in range(cfg["num_hidden_layers"]):
        g = lambda key, il=il: weights[f"model.layers.{il}.{key}"]  # noqa: E731
        x = x + _attention(cfg, g, C.rms_norm(x, g("input_layernorm.weight"), eps), il)
        h = C.rms_norm(x, g("post_attention_layernorm.weight"), eps)
        x = x + (_moe(cfg, g, h, margin) if is_sparse(cfg, il) else _dense(g, h, "feed_forward."))
    ROUTING_MARGIN[0] = (margin[0], None, None)
    head = weights.get("lm_head.weight", weights["model.embed_tokens.weight"])  # tied: the embeddings
    return C.linear(C.rms_norm(x, weights["model.norm.weight"], eps), head)
