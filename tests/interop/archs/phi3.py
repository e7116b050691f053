"""Tiny Phi-3 model (Phi3ForCausalLM) for the interop suite -> GGUF arch "phi3".

Builds a tiny Hugging Face style config and random weights, writes a base-model GGUF the way
llama.cpp's converter (Phi3MiniModel in conversion/phi.py, formerly convert_hf_to_gguf.py)
does, and runs a float64 NumPy forward pass with transformers' Phi3ForCausalLM semantics.

Facts the code relies on (checked against llama.cpp's phi3 model code and the converter):
- The converter renames tensors only (gguf's tensor map) and reshapes nothing: the fused
  `qkv_proj` (rows: q, then k, then v) becomes `attn_qkv`, which llama.cpp splits at the same
  row offsets (n_head*head_dim, then n_head_kv*head_dim twice); the fused `gate_up_proj`
  (rows: gate half, then up half; HF `gate, up = chunk(2)`, `up * silu(gate)`) becomes
  `ffn_up`, which llama.cpp feeds to ggml_swiglu (silu of the first half times the second).
  No Q/K row permutation: llama.cpp runs phi3 with NeoX-style RoPE, HF's rotate_half layout.
- llama.cpp derives head_dim as hidden_size / num_attention_heads (the converter writes no
  key_length), so the tiny config keeps head_dim equal to that and write_gguf checks it.
- Queries are scaled by 1/sqrt(head_dim); RMSNorm weights are used as is (no +1).
- lm_head is untied and written as `output.weight`.
- Plain RoPE: no rope_scaling (the longrope/su factors would add rope_factors_* tensors).
  sliding_window None is written as 0, the converter's "no SWA" marker (llama.cpp disables
  Phi SWA anyway when it finds a non-zero window).
"""

from __future__ import annotations

import math

import numpy as np

# HF module name -> its path inside model.layers.{i}
_LORA_MODULES = {
    "qkv_proj": "self_attn.qkv_proj",
    "o_proj": "self_attn.o_proj",
    "gate_up_proj": "mlp.gate_up_proj",
    "down_proj": "mlp.down_proj",
}

# GGUF tensor stem inside blk.{i}. for each; no row reordering for any of them.
_GGUF_STEMS = {
    "qkv_proj": "attn_qkv",
    "o_proj": "attn_output",
    "gate_up_proj": "ffn_up",
    "down_proj": "ffn_down",
}


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    # Phi3RMSNorm: w * x * rsqrt(mean(x^2) + eps)
    var = np.mean(x * x, axis=-1, keepdims=True)
    return x / np.sqrt(var + eps) * w


def _rope_neox(x: np.ndarray, positions: np.ndarray, base: float, rot_dim: int) -> np.ndarray:
    """HF apply_rotary_pos_emb (rotate_half) on the first rot_dim dims of [heads, tokens, hd]."""
    inv_freq = 1.0 / (base ** (np.arange(0, rot_dim, 2, dtype=np.float64) / rot_dim))
    freqs = positions[:, None].astype(np.float64) * inv_freq[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    cos, sin = np.cos(emb), np.sin(emb)
    xr, xp = x[..., :rot_dim], x[..., rot_dim:]
    x1, x2 = xr[..., : rot_dim // 2], xr[..., rot_dim // 2 :]
    rotated = np.concatenate([-x2, x1], axis=-1)
    return np.concatenate([xr * cos + rotated * sin, xp], axis=-1)


def _head_dim(cfg: dict) -> int:
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def _rot_dim(cfg: dict) -> int:
    # HF: int(head_dim * partial_rotary_factor); converter: int(pct * hidden) // n_head
    return int(_head_dim(cfg) * cfg.get("partial_rotary_factor", 1.0))


def _forward(cfg: dict, weights: dict, tokens: list[int]) -> np.ndarray:
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], _head_dim(cfg)
    eps = cfg["rms_norm_eps"]
    I = cfg["intermediate_size"]
    n = len(tokens)
    W = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
    pos = np.arange(n)
    rot = _rot_dim(cfg)
    window = cfg.get("sliding_window")

    h = W["model.embed_tokens.weight"][np.asarray(tokens, dtype=np.int64)]
    qi = np.arange(n)[:, None]
    ki = np.arange(n)[None, :]
    mask = ki <= qi
    if window is not None:
        # HF Phi3 applies sliding_window when set; the tiny config sets None (see docstring)
        mask = mask & (qi - ki < window)

    for il in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{il}."
        x = _rms_norm(h, W[p + "input_layernorm.weight"], eps)
        qkv = x @ W[p + "self_attn.qkv_proj.weight"].T
        qpos = nh * hd
        q = qkv[:, :qpos].reshape(n, nh, hd).transpose(1, 0, 2)
        k = qkv[:, qpos : qpos + nkv * hd].reshape(n, nkv, hd).transpose(1, 0, 2)
        v = qkv[:, qpos + nkv * hd :].reshape(n, nkv, hd).transpose(1, 0, 2)
        q = _rope_neox(q, pos, cfg["rope_theta"], rot)
        k = _rope_neox(k, pos, cfg["rope_theta"], rot)
        k = np.repeat(k, nh // nkv, axis=0)
        v = np.repeat(v, nh // nkv, axis=0)
        s = (q @ k.transpose(0, 2, 1)) * hd**-0.5
        s = np.where(mask[None], s, -np.inf)
        s = s - s.max(axis=-1, keepdims=True)
        pr = np.exp(s)
        pr /= pr.sum(axis=-1, keepdims=True)
        a = (pr @ v).transpose(1, 0, 2).reshape(n, nh * hd)
        h = h + a @ W[p + "self_attn.o_proj.weight"].T

        x = _rms_norm(h, W[p + "post_attention_layernorm.weight"], eps)
        gu = x @ W[p + "mlp.gate_up_proj.weight"].T
        gate, up = gu[:, :I], gu[:, I:]
        silu = gate / (1.0 + np.exp(-gate))
        h = h + (up * silu) @ W[p + "mlp.down_proj.weight"].T

    h = _rms_norm(h, W["model.norm.weight"], eps)
    lm = W.get("lm_head.weight")
    if lm is None:  # only when a caller ties embeddings; the tiny config does not
        lm = W["model.embed_tokens.weight"]
    return h @ lm.T


def _random_weights(cfg: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    H, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], _head_dim(cfg)

    def lin(out_f, in_f, gain=1.0):
        return (rng.standard_normal((out_f, in_f)) * gain / math.sqrt(in_f)).astype(np.float32)

    def norm(dim):
        # Phi3RMSNorm's neutral weight is 1
        return (1.0 + 0.1 * rng.standard_normal(dim)).astype(np.float32)

    w: dict[str, np.ndarray] = {}
    w["model.embed_tokens.weight"] = rng.standard_normal((V, H)).astype(np.float32)
    for il in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{il}."
        w[p + "input_layernorm.weight"] = norm(H)
        qkv = np.concatenate([lin(nh * hd, H, 2.0), lin(nkv * hd, H), lin(nkv * hd, H)], axis=0)
        w[p + "self_attn.qkv_proj.weight"] = qkv
        w[p + "self_attn.o_proj.weight"] = lin(H, nh * hd)
        w[p + "post_attention_layernorm.weight"] = norm(H)
        w[p + "mlp.gate_up_proj.weight"] = lin(2 * I, H)
        w[p + "mlp.down_proj.weight"] = lin(H, I)
    w["model.norm.weight"] = norm(H)
    w["lm_head.weight"] = lin(V, H, 2.0)
    return w


def _write_gguf(path, cfg: dict, weights: dict, dtype: str = "f32") -> None:
    import gguf

    if dtype not in ("f32", "f16"):
        raise ValueError(f"dtype must be 'f32' or 'f16', not {dtype!r}")
    H, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    if _head_dim(cfg) * nh != H:
        raise ValueError("llama.cpp's phi3 needs head_dim == hidden_size / num_attention_heads")
    if cfg.get("rope_scaling"):
        raise ValueError("rope_scaling (longrope) is not modelled by this tiny Phi-3")

    arch_enum = gguf.MODEL_ARCH.PHI3
    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch_enum])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_rope_scaling_orig_ctx_len(cfg["original_max_position_embeddings"])
    w.add_embedding_length(H)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_head_count(nh)
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_dimension_count(int(cfg.get("partial_rotary_factor", 1.0) * H) // nh)
    w.add_rope_freq_base(float(cfg["rope_theta"]))
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    w.add_sliding_window(cfg.get("sliding_window") or 0)
    # no tokenizer: llama.cpp accepts "no_vocab" and sizes the vocab from phi3.vocab_size
    w.add_tokenizer_model("no_vocab")
    w.add_vocab_size(cfg["vocab_size"])

    tmap = gguf.get_tensor_name_map(arch_enum, cfg["num_hidden_layers"])
    for name in sorted(weights):
        data = np.asarray(weights[name], dtype=np.float32)
        new_name = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise ValueError(f"no GGUF name for {name!r} in arch phi3")
        # 1-D tensors (norms) stay F32, as in the converter
        if dtype == "f16" and data.ndim == 2:
            data = data.astype(np.float16)
        w.add_tensor(new_name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


class Phi3:
    """Phi-3 (Phi3ForCausalLM) -> GGUF arch "phi3"."""

    ARCH = "phi3"
    LORA_MODULES = dict(_LORA_MODULES)
    GGUF_STEMS = dict(_GGUF_STEMS)

    @staticmethod
    def tiny_config(**overrides) -> dict:
        cfg = {
            "architectures": ["Phi3ForCausalLM"],
            "model_type": "phi3",
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,  # = hidden_size / num_attention_heads, the only value llama.cpp takes
            "vocab_size": 320,
            "max_position_embeddings": 256,
            "original_max_position_embeddings": 256,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "rope_scaling": None,
            "partial_rotary_factor": 1.0,
            "sliding_window": None,
            "hidden_act": "silu",
            "tie_word_embeddings": False,
            "attention_bias": False,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
            "torch_dtype": "float32",
        }
        cfg.update(overrides)
        return cfg

    random_weights = staticmethod(_random_weights)
    write_gguf = staticmethod(_write_gguf)
    forward = staticmethod(_forward)


VARIANTS = [Phi3]
