"""Tiny Qwen2 (q/k/v biases, GQA, untied lm_head) for the interop tests.

Qwen2's GGUF keeps the HF rotate-half (NeoX) RoPE layout, so no Q/K row permutation; the biases
are untouched by LoRA but must be carried into both sides.
"""
from __future__ import annotations

import gguf
import numpy as np

from . import _common as C

ARCH = "qwen2"

LORA_MODULES = {
    "q_proj": ("self_attn.q_proj",),
    "k_proj": ("self_attn.k_proj",),
    "v_proj": ("self_attn.v_proj",),
    "o_proj": ("self_attn.o_proj",),
    "gate_proj": ("mlp.gate_proj",),
    "up_proj": ("mlp.up_proj",),
    "down_proj": ("mlp.down_proj",),
}

_GGUF_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


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


def _head_dim(cfg: dict) -> int:
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def random_weights(cfg: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    h, ff, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd, nh, nkv = _head_dim(cfg), cfg["num_attention_heads"], cfg["num_key_value_heads"]
    w: dict[str, np.ndarray] = {"model.embed_tokens.weight": C.randn(rng, (v, h), 1.0)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = (1.0 + C.randn(rng, (h,), 0.1)).astype(np.float32)
        w[p + "self_attn.q_proj.weight"] = C.randn(rng, (nh * hd, h), h ** -0.5)
        w[p + "self_attn.q_proj.bias"] = C.randn(rng, (nh * hd,), 0.3)
        w[p + "self_attn.k_proj.weight"] = C.randn(rng, (nkv * hd, h), h ** -0.5)
        w[p + "self_attn.k_proj.bias"] = C.randn(rng, (nkv * hd,), 0.3)
        w[p + "self_attn.v_proj.weight"] = C.randn(rng, (nkv * hd, h), h ** -0.5)
        w[p + "self_attn.v_proj.bias"] = C.randn(rng, (nkv * hd,), 0.3)
        w[p + "self_attn.o_proj.weight"] = C.randn(rng, (h, nh * hd), (nh * hd) ** -0.5)
        w[p + "post_attention_layernorm.weight"] = (1.0 + C.randn(rng, (h,), 0.1)).astype(np.float32)
        w[p + "mlp.gate_proj.weight"] = C.randn(rng, (ff, h), h ** -0.5)
        w[p + "mlp.up_proj.weight"] = C.randn(rng, (ff, h), h ** -0.5)
        w[p + "mlp.down_proj.weight"] = C.randn(rng, (h, ff), ff ** -0.5)
    w["model.norm.weight"] = (1.0 + C.randn(rng, (h,), 0.1)).astype(np.float32)
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = C.randn(rng, (v, h), 2.0 * h ** -0.5)
    return w


def write_gguf(path, cfg: dict, weights: dict[str, np.ndarray], dtype: str = "f32") -> None:
    wr = gguf.GGUFWriter(str(path), ARCH)
    wr.add_name("tiny-qwen2-interop")
    wr.add_context_length(cfg["max_position_embeddings"])
    wr.add_embedding_length(cfg["hidden_size"])
    wr.add_block_count(cfg["num_hidden_layers"])
    wr.add_feed_forward_length(cfg["intermediate_size"])
    wr.add_head_count(cfg["num_attention_heads"])
    wr.add_head_count_kv(cfg["num_key_value_heads"])
    wr.add_rope_freq_base(cfg["rope_theta"])
    wr.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    wr.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    C.add_no_vocab_tokenizer(wr, cfg["vocab_size"])
    t = {"token_embd.weight": weights["model.embed_tokens.weight"]}
    for i in range(cfg["num_hidden_layers"]):
        for hf, gg in _GGUF_LAYER.items():
            t[f"blk.{i}.{gg}"] = weights[f"model.layers.{i}.{hf}"]
    t["output_norm.weight"] = weights["model.norm.weight"]
    if "lm_head.weight" in weights:
        t["output.weight"] = weights["lm_head.weight"]
    C.write_tensors_and_close(wr, t, dtype)


def forward(cfg: dict, weights: dict[str, np.ndarray], tokens: list[int]) -> np.ndarray:
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], _head_dim(cfg)
    eps, n = cfg["rms_norm_eps"], len(tokens)
    pos = np.arange(n)
    x = weights["model.embed_tokens.weight"].astype(np.float64)[np.asarray(tokens)]
    for i in range(cfg["num_hidden_layers"]):
        g = lambda k: weights[f"model.layers.{i}.{k}"]  # noqa: E731
        h = C.rms_norm(x, g("input_layernorm.weight"), eps)
        q = C.linear(h, g("self_attn.q_proj.weight"), g("self_attn.q_proj.bias")).reshape(n, nh, hd)
        k = C.linear(h, g("self_attn.k_proj.weight"), g("self_attn.k_proj.bias")).reshape(n, nkv, hd)
        v = C.linear(h, g("self_attn.v_proj.weight"), g("self_attn.v_proj.bias")).reshape(n, nkv, hd)
        q = C.rope_rotate_half(q, pos, cfg["rope_theta"])
        k = C.rope_rotate_half(k, pos, cfg["rope_theta"])
        a = C.causal_attention(q, k, v, hd ** -0.5)
        x = x + C.linear(a, g("self_attn.o_proj.weight"))
        h = C.rms_norm(x, g("post_attention_layernorm.weight"), eps)
        x = x + C.linear(C.silu(C.linear(h, g("mlp.gate_proj.weight"))) * C.linear(h, g("mlp.up_proj.weight")),
                         g("mlp.down_proj.weight"))
    x = C.rms_norm(x, weights["model.norm.weight"], eps)
    return C.linear(x, weights.get("lm_head.weight", weights["model.embed_tokens.weight"]))
