"""Tiny gpt-oss: attention with q/k/v/o biases and per-head attention sinks (an extra logit column
in every softmax, dropped after it), RMSNorms, and a sparse MoE block in every layer: router with a
bias, top-2 of 4 by logit, softmax over the two chosen (llama.cpp's SOFTMAX_WEIGHT gating), experts
with biases and the clamped SwiGLU of transformers' GptOssExperts (gate <= 7, -7 <= up <= 7,
(up + 1) * gate * sigmoid(1.702 * gate)).

Weights are transformers 5's layout: `mlp.experts.gate_up_proj` [E, H, 2F] used as x @ W, gate and
up *interleaved* (columns ::2 / 1::2), `down_proj` [E, F, H]. llama.cpp's converter (conversion/
gpt_oss.py, the bf16 path) transposes and de-interleaves them: ffn_gate_exps[e, f, h] =
gate_up_proj[e, h, 2f], ffn_up_exps[e, f, h] = gate_up_proj[e, h, 2f + 1], ffn_down_exps[e, h, f] =
down_proj[e, f, h], biases likewise. RoPE is plain NeoX here (no YaRN: rope_scaling left out of the
tiny config and the GGUF alike); the sliding window (every other layer) is wider than the tokens.

Only attention and the router are modules LoRA can target by name; the experts are reached with
PEFT's target_parameters (test_moe_interop.py). The sinks are a 1-D parameter PEFT cannot wrap.
"""
from __future__ import annotations

import gguf
import numpy as np

from . import _common as C

ARCH = "gpt-oss"
ID = "gptoss"
ROUTING_MARGIN: list = [None]

LORA_MODULES = {
    **{m: (f"self_attn.{m}",) for m in ("q_proj", "k_proj", "v_proj", "o_proj")},
    "router": ("mlp.router",),
}


def tiny_config(**overrides) -> dict:
    cfg = {
        "model_type": "gpt_oss",
        "vocab_size": 256,
        "hidden_size": 64,
        "intermediate_size": 64,
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "rms_norm_eps": 1e-5,
        "rope_theta": 150000.0,
        "sliding_window": 128,
        "max_position_embeddings": 256,
        "tie_word_embeddings": False,
        "swiglu_limit": 7.0,
    }
    cfg.update(overrides)
    return cfg


def random_weights(cfg: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    h, f, n, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_local_experts"], cfg["vocab_size"]
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    w = {"model.embed_tokens.weight": C.randn(rng, (v, h), 1.0)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = C.norm_weight(rng, h, 1.0)
        for m, rows in (("q_proj", nh * hd), ("k_proj", nkv * hd), ("v_proj", nkv * hd)):
            w[p + f"self_attn.{m}.weight"] = C.lin_weight(rng, rows, h)
            w[p + f"self_attn.{m}.bias"] = C.randn(rng, (rows,), 0.1)
        w[p + "self_attn.o_proj.weight"] = C.lin_weight(rng, h, nh * hd)
        w[p + "self_attn.o_proj.bias"] = C.randn(rng, (h,), 0.1)
        w[p + "self_attn.sinks"] = C.randn(rng, (nh,), 1.0)
        w[p + "post_attention_layernorm.weight"] = C.norm_weight(rng, h, 1.0)
        w[p + "mlp.router.weight"] = C.randn(rng, (n, h), 4.0 * h ** -0.5)
        w[p + "mlp.router.bias"] = C.randn(rng, (n,), 0.3)
        w[p + "mlp.experts.gate_up_proj"] = C.randn(rng, (n, h, 2 * f), h ** -0.5)
        w[p + "mlp.experts.gate_up_proj_bias"] = C.randn(rng, (n, 2 * f), 0.1)
        w[p + "mlp.experts.down_proj"] = C.randn(rng, (n, f, h), f ** -0.5)
        w[p + "mlp.experts.down_proj_bias"] = C.randn(rng, (n, h), 0.1)
    w["model.norm.weight"] = C.norm_weight(rng, h, 1.0)
    w["lm_head.weight"] = C.lin_weight(rng, v, h, 2.0)
    return w


def gguf_tensors(cfg: dict, weights: dict) -> dict[str, np.ndarray]:
    """GGUF name -> numpy array, as conversion/gpt_oss.py writes them (bf16 path)."""
    plain, out = {}, {}
    for name, arr in weights.items():
        if ".mlp.experts." not in name:
            plain[name + ("" if name.endswith((".weight", ".bias", ".sinks")) else ".weight")] = arr
            continue
        i, what = name.split(".")[2], name.split(".")[-1]
        p = f"blk.{i}."
        if what == "gate_up_proj":
            t = np.transpose(arr, (0, 2, 1))  # [E, 2F, H]
            out[p + "ffn_gate_exps.weight"], out[p + "ffn_up_exps.weight"] = t[:, ::2], t[:, 1::2]
        elif what == "gate_up_proj_bias":
            out[p + "ffn_gate_exps.bias"], out[p + "ffn_up_exps.bias"] = arr[:, ::2], arr[:, 1::2]
        elif what == "down_proj":
            out[p + "ffn_down_exps.weight"] = np.transpose(arr, (0, 2, 1))  # [E, H, F]
        else:
            out[p + "ffn_down_exps.bias"] = arr
    sinks = {k: v for k, v in plain.items() if k.endswith(".sinks")}
    rest = {k: v for k, v in plain.items() if not k.endswith(".sinks")}
    out.update(C.gguf_tensor_names(ARCH, cfg["num_hidden_layers"], rest))
    for k, v in sinks.items():
        out[f"blk.{k.split('.')[2]}.attn_sinks.weight"] = v
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def gguf_names(cfg: dict, hf_names) -> set[str]:
    return set(C.gguf_tensor_names(ARCH, cfg["num_hidden_layers"], dict.fromkeys(hf_names)))


def write_gguf(path, cfg: dict, weights: dict[str, np.ndarray], dtype: str = "f32", quant=None) -> None:
    """quant: optional (name, array) -> (raw bytes array, GGMLQuantizationType) or None, to store some
    tensors quantized (the MXFP4 experts of a real gpt-oss)."""
    wr = C.gguf_writer(path, ARCH, cfg, dtype, name="tiny-gpt-oss-interop", key_value_length=cfg["head_dim"])
    wr.add_expert_count(cfg["num_local_experts"])
    wr.add_expert_used_count(cfg["num_experts_per_tok"])
    wr.add_expert_feed_forward_length(cfg["intermediate_size"])
    wr.add_sliding_window(cfg["sliding_window"])
    for name, arr in gguf_tensors(cfg, weights).items():
        q = quant(name, arr) if quant else None
        if q is not None:
            wr.add_tensor(name, q[0], raw_dtype=q[1])
        elif name.endswith(".bias"):  # the converter keeps biases (2-d expert biases too) in F32
            wr.add_tensor(name, arr)
        else:
            wr.add_tensor(name, C.as_gguf_dtype(arr, dtype))
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()


def _attention(cfg, g, h, pos):
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    n = h.shape[0]
    q = C.linear(h, g("self_attn.q_proj.weight"), g("self_attn.q_proj.bias")).reshape(n, nh, hd)
    k = C.linear(h, g("self_attn.k_proj.weight"), g("self_attn.k_proj.bias")).reshape(n, nkv, hd)
    v = C.linear(h, g("self_attn.v_proj.weight"), g("self_attn.v_proj.bias")).reshape(n, nkv, hd)
    q, k = C.rope_rotate_half(q, pos, cfg["rope_theta"]), C.rope_rotate_half(k, pos, cfg["rope_theta"])
    k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)
    scores = np.einsum("ihd,jhd->hij", q, k) * hd ** -0.5
    scores = np.where((np.arange(n)[None, :] <= np.arange(n)[:, None])[None], scores, -np.inf)
    sinks = g("self_attn.sinks").astype(np.float64)[:, None, None] * np.ones((1, n, 1))
    full = np.concatenate([scores, sinks], axis=-1)
    full = np.exp(full - full.max(axis=-1, keepdims=True))
    p = (full / full.sum(axis=-1, keepdims=True))[..., :n]
    out = np.einsum("hij,jhd->ihd", p, v).reshape(n, -1)
    return C.linear(out, g("self_attn.o_proj.weight"), g("self_attn.o_proj.bias"))


def _moe(cfg, g, h, margin):
    k, lim = cfg["num_experts_per_tok"], cfg["swiglu_limit"]
    logits = C.linear(h, g("mlp.router.weight"), g("mlp.router.bias"))
    out = np.zeros_like(h)
    for t in range(h.shape[0]):
        order = np.argsort(-logits[t])
        margin[0] = min(margin[0], logits[t, order[k - 1]] - logits[t, order[k]])
        top = order[:k]
        wts = np.exp(logits[t, top] - logits[t, top].max())
        wts /= wts.sum()
        for e, we in zip(top, wts):
            gu = h[t] @ g("mlp.experts.gate_up_proj")[e].astype(np.float64) + g("mlp.experts.gate_up_proj_bias")[e]
            gate, up = np.minimum(gu[::2], lim), np.clip(gu[1::2], -lim, lim)
            act = (up + 1.0) * gate / (1.0 + np.exp(-1.702 * gate))
            out[t] += we * (act @ g("mlp.experts.down_proj")[e].astype(np.float64) + g("mlp.experts.down_proj_bias")[e])
    return out


def forward(cfg: dict, weights: dict[str, np.ndarray], tokens: list[int]) -> np.ndarray:
    eps, pos = cfg["rms_norm_eps"], np.arange(len(tokens))
    x = weights["model.embed_tokens.weight"].astype(np.float64)[np.asarray(tokens)]
    margin = [np.inf]
    for il in range(cfg["num_hidden_layers"]):
        g = lambda k, il=il: weights[f"model.layers.{il}.{k}"]  # noqa: E731
        x = x + _attention(cfg, g, C.rms_norm(x, g("input_layernorm.weight"), eps), pos)
        x = x + _moe(cfg, g, C.rms_norm(x, g("post_attention_layernorm.weight"), eps), margin)
    # the router gap is in logits here (top-k by logit): kept as the margin
    ROUTING_MARGIN[0] = (margin[0], None, None)
    return C.linear(C.rms_norm(x, weights["model.norm.weight"], eps), weights["lm_head.weight"])
