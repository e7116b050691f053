"""Shared numpy building blocks and GGUF-writing helpers for the arch modules.

Everything here follows Hugging Face transformers semantics (the reference side of the interop
tests); nothing is derived from the Rust code under test. Files starting with "_" are not arch
modules and are ignored by the registry.

All the tiny architectures are Llama-style decoders (pre-norm, or OLMo 2's post-norm):
`decoder_forward` is their one forward pass, and its keyword options are the ways they differ.
"""
from __future__ import annotations

import math
from typing import Callable

import gguf
import numpy as np

# HF module name -> its path inside model.layers.{i}: the seven linear layers of a Llama-style
# decoder layer, i.e. what a PEFT target_modules entry names.
LLAMA_LORA_PATHS = {
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "o_proj": "self_attn.o_proj",
    "gate_proj": "mlp.gate_proj",
    "up_proj": "mlp.up_proj",
    "down_proj": "mlp.down_proj",
}


# The GGUF stem inside blk.{i}. of each of those modules (gguf-py's tensor map).
LLAMA_GGUF_STEMS = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_output",
    "gate_proj": "ffn_gate",
    "up_proj": "ffn_up",
    "down_proj": "ffn_down",
}


def head_dim(cfg: dict) -> int:
    """cfg["head_dim"], or HF's default hidden_size / num_attention_heads where it is unset."""
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp converter's LlamaModel.permute (conversion/llama.py): the rows of a q_proj /
    k_proj weight (or bias, or a LoRA B) go from HF's rotate-half order to GGUF's per-head
    interleaved order. n_head: num_attention_heads for q, num_key_value_heads for k."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def permute_qk_weights(cfg: dict, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A copy of HF weights with every layer's q_proj / k_proj rows in llama.cpp's order
    (permute_qk with num_attention_heads for q, num_key_value_heads for k), as the llama
    converter and its descendants (mistral3, smollm3, granite) write them."""
    hf = dict(weights)
    for i in range(cfg["num_hidden_layers"]):
        for proj, n_head in (("q_proj", cfg["num_attention_heads"]), ("k_proj", cfg["num_key_value_heads"])):
            name = f"model.layers.{i}.self_attn.{proj}.weight"
            hf[name] = permute_qk(hf[name], n_head)
    return hf


# ---------------------------------------------------------------------------------------------
# numpy forward-pass pieces (float64 for a precise reference)
# ---------------------------------------------------------------------------------------------


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float, plus_one: bool = False) -> np.ndarray:
    """HF RMSNorm over the last axis: x / rms(x) * w (Llama, Qwen, Phi-3), or with plus_one
    x / rms(x) * (1 + w) (GemmaRMSNorm, Gemma2RMSNorm, Gemma3RMSNorm)."""
    x = x.astype(np.float64)
    w = weight.astype(np.float64)
    if plus_one:
        w = 1.0 + w
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """ACT2FN["gelu_pytorch_tanh"] (ggml_gelu / ggml_geglu)."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def tanh_softcap(x: np.ndarray, cap: float) -> np.ndarray:
    """Gemma 2 style logit soft-capping: tanh(x / cap) * cap."""
    return np.tanh(x / cap) * cap


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """torch.nn.Linear: y = x @ W.T + b, W in HF layout [out, in]."""
    y = x @ w.astype(np.float64).T
    if b is not None:
        y = y + b.astype(np.float64)
    return y


def rope_inv_freq(theta: float, dim: int) -> np.ndarray:
    """HF's default RoPE inverse frequencies for a rotary dimension `dim`: theta^(-2i/dim)."""
    return 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))


def yarn_inv_freq(theta: float, dim: int, params: dict,
                  max_position_embeddings: int | None = None) -> tuple[np.ndarray, float]:
    """(inv_freq, attention_factor) of HF's YaRN RoPE (modeling_rope_utils._compute_yarn_parameters)
    for rotary dimension `dim`.

    params is the rope_parameters dict: factor, original_max_position_embeddings, beta_fast
    (default 32), beta_slow (default 1), attention_factor or mscale / mscale_all_dim, truncate
    (default True). The attention factor multiplies cos and sin, i.e. both q and k.
    """
    factor = params.get("factor")
    orig = params["original_max_position_embeddings"]
    if factor is None:
        factor = max_position_embeddings / orig

    def get_mscale(scale, mscale=1.0):
        return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0

    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)
        else:
            attention_factor = get_mscale(factor)
    beta_fast = params.get("beta_fast") or 32
    beta_slow = params.get("beta_slow") or 1

    def correction_dim(num_rotations):
        return (dim * math.log(orig / (num_rotations * 2 * math.pi))) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    extrapolation = 1.0 - ramp  # 1: keep the original frequency, 0: divide it by factor
    pos_freqs = theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    inv_freq = (1.0 / (factor * pos_freqs)) * (1.0 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv_freq, float(attention_factor)


def rope_apply(x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray,
               attention_scaling: float = 1.0) -> np.ndarray:
    """HF `apply_rotary_pos_emb` (rotate-half / NeoX layout) with explicit inverse frequencies.
    x: [n_tok, n_head, head_dim]; the first 2 * len(inv_freq) dims of each head rotate, the rest
    pass through; cos and sin are multiplied by attention_scaling (YaRN's attention factor)."""
    d = 2 * len(inv_freq)
    freqs = positions.astype(np.float64)[:, None] * np.asarray(inv_freq, dtype=np.float64)[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)  # [n, d]
    cos = (np.cos(emb) * attention_scaling)[:, None, :]
    sin = (np.sin(emb) * attention_scaling)[:, None, :]
    xr, rest = x[..., :d], x[..., d:]
    rotated = np.concatenate([-xr[..., d // 2:], xr[..., :d // 2]], axis=-1)
    return np.concatenate([xr * cos + rotated * sin, rest], axis=-1)


def rope_rotate_half(x: np.ndarray, positions: np.ndarray, theta: float,
                     rot_dim: int | None = None) -> np.ndarray:
    """HF `apply_rotary_pos_emb` (rotate-half / NeoX layout). x: [n_tok, n_head, head_dim].

    rot_dim (default: all of head_dim) rotates only the first rot_dim dims of each head, as HF's
    partial_rotary_factor does; the rest pass through.
    """
    d = x.shape[-1] if rot_dim is None else rot_dim
    return rope_apply(x, positions, rope_inv_freq(theta, d))


def llama4_attn_scale(positions: np.ndarray, beta: float, original_max_position_embeddings: int) -> np.ndarray:
    """Per-position query multiplier of Llama 4 / Ministral 3 attention temperature tuning
    (transformers' get_llama_4_attn_scale): 1 + beta * log(1 + floor(pos / original_max))."""
    pos = positions.astype(np.float64)
    return 1.0 + beta * np.log(1.0 + np.floor(pos / original_max_position_embeddings))


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float,
                     softcap: float | None = None, window: int | None = None) -> np.ndarray:
    """Grouped-query causal attention. q: [n, n_head, d], k/v: [n, n_kv, d] -> [n, n_head*d_v].

    softcap: tanh soft-capping of the scaled scores (Gemma 2). window: sliding window, key j
    visible from query i iff 0 <= i - j < window (HF's sliding_window mask, llama.cpp's
    LLAMA_SWA_TYPE_STANDARD).
    """
    n, n_head, _ = q.shape
    n_kv = k.shape[1]
    group = n_head // n_kv
    k = np.repeat(k, group, axis=1)
    v = np.repeat(v, group, axis=1)
    scores = np.einsum("ihd,jhd->hij", q, k) * scale  # [h, n, n]
    if softcap is not None:
        scores = tanh_softcap(scores, softcap)
    i = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    visible = j <= i
    if window is not None:
        visible = visible & (i - j < window)
    scores = np.where(visible[None], scores, -np.inf)
    scores = scores - scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    p = p / p.sum(axis=-1, keepdims=True)
    out = np.einsum("hij,jhd->ihd", p, v)
    return out.reshape(n, -1)


def decoder_forward(cfg: dict, weights: dict[str, np.ndarray], tokens: list[int], *,
                    qkv_bias: bool = False, fused_qkv: bool = False, qk_norm: bool = False,
                    rope_dim: int | None = None, attn_scale: float | None = None,
                    attn_softcap: float | None = None,
                    layer_attention: Callable[[int], tuple[float, int | None]] | None = None,
                    fused_gate_up: bool = False, act: Callable = silu,
                    norm_plus_one: bool = False, sandwich_norms: bool = False,
                    embed_scale: float | None = None,
                    final_softcap: float | None = None,
                    layer_rope: Callable[[int], tuple[np.ndarray, float] | None] | None = None,
                    query_scale: Callable[[np.ndarray], np.ndarray] | None = None,
                    post_norms: bool = False, qk_norm_full: bool = False,
                    residual_scale: float | None = None,
                    logits_scaling: float | None = None,
                    mlp: Callable[[int, np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Logits [n_tokens, vocab] of a HF Llama-style decoder (HF parameter names, HF layout).

    Per layer, with h = norm(x): x += o_proj(attention(RoPE(q_proj(h)), RoPE(k_proj(h)), v_proj(h)));
    then, with h = norm(x) again: x += down_proj(act(gate_proj(h)) * up_proj(h)). Then a final norm
    and the output projection lm_head.weight (the embedding matrix when there is none: tied). The
    defaults are Llama; the options are what other architectures change:

    qkv_bias       q/k/v projections have biases (Qwen2)
    fused_qkv      one self_attn.qkv_proj, rows q then k then v (Phi-3)
    qk_norm        per-head q_norm/k_norm (RMSNorm over head_dim) before RoPE (Qwen3, Gemma 3)
    rope_dim       RoPE on the first rope_dim dims of each head only (partial rotary)
    attn_scale     query scale, default head_dim ** -0.5
    attn_softcap   tanh soft-capping of the attention scores
    layer_attention  il -> (RoPE base, sliding window or None) of layer il; default
                   (cfg["rope_theta"], None) for every layer
    fused_gate_up  one mlp.gate_up_proj, rows gate then up (Phi-3)
    act            activation of the gate (default SiLU)
    norm_plus_one  every RMSNorm multiplies by (1 + w) (Gemma)
    sandwich_norms post_attention_layernorm norms the attention output before the residual add,
                   pre_feedforward_layernorm / post_feedforward_layernorm surround the MLP
                   (Gemma 2/3); otherwise post_attention_layernorm is the MLP's input norm
    embed_scale    embeddings multiplied by this (Gemma: sqrt(hidden_size); Granite:
                   embedding_multiplier)
    final_softcap  tanh soft-capping of the logits
    layer_rope     il -> (inv_freq, attention_scaling) of layer il's RoPE (see rope_inv_freq,
                   yarn_inv_freq), or None for a layer without RoPE (SmolLM3's NoPE layers).
                   When given it replaces the RoPE base from layer_attention and rope_dim (the
                   rotary dimension is 2 * len(inv_freq)); the window still comes from
                   layer_attention
    query_scale    positions [n] -> per-position factor [n] multiplied into the queries after RoPE
                   (Llama 4 / Ministral 3 attention temperature, see llama4_attn_scale)
    post_norms     OLMo 2: no input_layernorm; the attention output goes through
                   post_attention_layernorm and the MLP output through
                   post_feedforward_layernorm before their residual adds, the MLP reading the
                   un-normed residual stream
    qk_norm_full   q_norm / k_norm are RMSNorms over the whole q_proj / k_proj output (all heads
                   at once, OLMo 2), applied before the split into heads and RoPE
    residual_scale the attention and MLP branch outputs are multiplied by this right before their
                   residual adds (Granite: residual_multiplier)
    logits_scaling the logits are divided by this (Granite: logits_scaling), before final_softcap
    mlp            (il, h) -> the MLP output of layer il for its normed input h, replacing the
                   dense gate/up/down MLP (mixtures of experts, see moe_mlp)
    """
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], head_dim(cfg)
    eps, n = cfg["rms_norm_eps"], len(tokens)
    pos = np.arange(n)
    scale = hd ** -0.5 if attn_scale is None else attn_scale

    def norm(x, w):
        return rms_norm(x, w, eps, plus_one=norm_plus_one)

    emb = weights["model.embed_tokens.weight"]
    x = emb.astype(np.float64)[np.asarray(tokens)]
    if embed_scale is not None:
        x = x * embed_scale
    for i in range(cfg["num_hidden_layers"]):
        g = lambda k: weights[f"model.layers.{i}.{k}"]  # noqa: E731
        theta, window = layer_attention(i) if layer_attention else (cfg.get("rope_theta"), None)
        h = x if post_norms else norm(x, g("input_layernorm.weight"))
        if fused_qkv:
            q, k, v = np.split(linear(h, g("self_attn.qkv_proj.weight")), [nh * hd, (nh + nkv) * hd], axis=-1)
        else:
            q, k, v = (linear(h, g(f"self_attn.{m}.weight"), g(f"self_attn.{m}.bias") if qkv_bias else None)
                       for m in ("q_proj", "k_proj", "v_proj"))
        if qk_norm_full:
            q = norm(q, g("self_attn.q_norm.weight"))
            k = norm(k, g("self_attn.k_norm.weight"))
        q, k, v = q.reshape(n, nh, hd), k.reshape(n, nkv, hd), v.reshape(n, nkv, hd)
        if qk_norm:
            q = norm(q, g("self_attn.q_norm.weight"))
            k = norm(k, g("self_attn.k_norm.weight"))
        if layer_rope is not None:
            rope = layer_rope(i)
            if rope is not None:
                inv_freq, attention_scaling = rope
                q = rope_apply(q, pos, inv_freq, attention_scaling)
                k = rope_apply(k, pos, inv_freq, attention_scaling)
        else:
            q = rope_rotate_half(q, pos, theta, rope_dim)
            k = rope_rotate_half(k, pos, theta, rope_dim)
        if query_scale is not None:
            q = q * np.asarray(query_scale(pos), dtype=np.float64)[:, None, None]
        a = linear(causal_attention(q, k, v, scale, attn_softcap, window), g("self_attn.o_proj.weight"))
        if sandwich_norms or post_norms:
            a = norm(a, g("post_attention_layernorm.weight"))
        if residual_scale is not None:
            a = a * residual_scale
        x = x + a
        if sandwich_norms:
            h = norm(x, g("pre_feedforward_layernorm.weight"))
        elif post_norms:
            h = x
        else:
            h = norm(x, g("post_attention_layernorm.weight"))
        if mlp is not None:
            m = mlp(i, h)
        elif fused_gate_up:
            gate, up = np.split(linear(h, g("mlp.gate_up_proj.weight")), 2, axis=-1)
            m = linear(act(gate) * up, g("mlp.down_proj.weight"))
        else:
            gate, up = linear(h, g("mlp.gate_proj.weight")), linear(h, g("mlp.up_proj.weight"))
            m = linear(act(gate) * up, g("mlp.down_proj.weight"))
        if sandwich_norms or post_norms:
            m = norm(m, g("post_feedforward_layernorm.weight"))
        if residual_scale is not None:
            m = m * residual_scale
        x = x + m
    x = norm(x, weights["model.norm.weight"])
    logits = linear(x, weights.get("lm_head.weight", emb))
    if logits_scaling is not None:
        logits = logits / logits_scaling
    return logits if final_softcap is None else tanh_softcap(logits, final_softcap)


# ---------------------------------------------------------------------------------------------
# random weights
# ---------------------------------------------------------------------------------------------


def randn(rng: np.random.Generator, shape, std: float) -> np.ndarray:
    return (rng.standard_normal(shape) * std).astype(np.float32)


def lin_weight(rng: np.random.Generator, out_f: int, in_f: int, gain: float = 1.0) -> np.ndarray:
    """[out_f, in_f] Linear weight with std gain / sqrt(in_f) (the Gemma / Phi-3 modules)."""
    return (rng.standard_normal((out_f, in_f)) * gain / math.sqrt(in_f)).astype(np.float32)


def norm_weight(rng: np.random.Generator, dim: int, neutral: float) -> np.ndarray:
    """RMSNorm weight: the norm's neutral value (1 for x * w, 0 for x * (1 + w)) + N(0, 0.1^2)."""
    return (neutral + 0.1 * rng.standard_normal(dim)).astype(np.float32)


def llama_random_weights(cfg: dict, rng: np.random.Generator, *, qkv_bias: bool = False,
                         qk_norm: bool = False) -> dict[str, np.ndarray]:
    """Random HF weights of the Llama-style decoder (llama.py, qwen2.py, qwen3.py), with q/k/v
    biases (qkv_bias) or per-head q_norm/k_norm (qk_norm); lm_head unless tied."""
    h, ff, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd, nh, nkv = head_dim(cfg), cfg["num_attention_heads"], cfg["num_key_value_heads"]

    def norm(dim, std):
        return (1.0 + randn(rng, (dim,), std)).astype(np.float32)

    w: dict[str, np.ndarray] = {"model.embed_tokens.weight": randn(rng, (v, h), 1.0)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm(h, 0.1)
        for proj, rows in (("q", nh * hd), ("k", nkv * hd), ("v", nkv * hd)):
            w[p + f"self_attn.{proj}_proj.weight"] = randn(rng, (rows, h), h ** -0.5)
            if qkv_bias:
                w[p + f"self_attn.{proj}_proj.bias"] = randn(rng, (rows,), 0.3)
            if qk_norm and proj != "v":
                w[p + f"self_attn.{proj}_norm.weight"] = norm(hd, 0.2)
        w[p + "self_attn.o_proj.weight"] = randn(rng, (h, nh * hd), (nh * hd) ** -0.5)
        w[p + "post_attention_layernorm.weight"] = norm(h, 0.1)
        w[p + "mlp.gate_proj.weight"] = randn(rng, (ff, h), h ** -0.5)
        w[p + "mlp.up_proj.weight"] = randn(rng, (ff, h), h ** -0.5)
        w[p + "mlp.down_proj.weight"] = randn(rng, (h, ff), ff ** -0.5)
    w["model.norm.weight"] = norm(h, 0.1)
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = randn(rng, (v, h), 2.0 * h ** -0.5)
    return w


# ---------------------------------------------------------------------------------------------
# GGUF helpers
# ---------------------------------------------------------------------------------------------


def add_no_vocab_tokenizer(writer, vocab_size: int) -> None:
    """No tokenizer: the tests feed token ids directly.

    llama.cpp accepts tokenizer.ggml.model = "no_vocab" and then takes the number of (dummy) tokens
    from `<arch>.vocab_size` (verified against llama.cpp in llama-cpp-python 0.3.36).
    """
    writer.add_tokenizer_model("no_vocab")
    writer.add_vocab_size(vocab_size)


def check_dtype(dtype: str) -> None:
    """A base model is written in "f32" or "f16" (2-D weights; 1-D tensors stay f32)."""
    if dtype not in ("f32", "f16"):
        raise ValueError(f"dtype must be 'f32' or 'f16', not {dtype!r}")


def gguf_writer(path, arch: str, cfg: dict, dtype: str, *, name: str | None = None,
                key_value_length: int | None = None) -> gguf.GGUFWriter:
    """A GGUFWriter for a base model of `arch` ("f32" | "f16") holding the hyperparameters every
    tiny arch writes and no tokenizer; key_value_length, when given, is written as both
    key_length and value_length. The caller adds its arch's own keys, then the tensors
    (write_tensors_and_close)."""
    check_dtype(dtype)
    wr = gguf.GGUFWriter(str(path), arch)
    if name is not None:
        wr.add_name(name)
    wr.add_context_length(cfg["max_position_embeddings"])
    wr.add_embedding_length(cfg["hidden_size"])
    wr.add_block_count(cfg["num_hidden_layers"])
    wr.add_feed_forward_length(cfg["intermediate_size"])
    wr.add_head_count(cfg["num_attention_heads"])
    wr.add_head_count_kv(cfg["num_key_value_heads"])
    if key_value_length is not None:
        wr.add_key_length(key_value_length)
        wr.add_value_length(key_value_length)
    wr.add_rope_freq_base(float(cfg["rope_theta"]))
    wr.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    wr.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    add_no_vocab_tokenizer(wr, cfg["vocab_size"])
    return wr


def gguf_tensor_names(arch: str, n_layers: int, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """HF name -> GGUF name of every tensor (in sorted HF-name order), by gguf-py's tensor name
    map as the converter's map_tensor_name does; an HF name it does not know is an error."""
    arch_enum = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch)
    tmap = gguf.get_tensor_name_map(arch_enum, n_layers)
    out = {}
    for name in sorted(weights):
        new_name = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise ValueError(f"no GGUF name for {name!r} in arch {arch}")
        out[new_name] = weights[name]
    return out


def as_gguf_dtype(arr: np.ndarray, dtype: str) -> np.ndarray:
    """Matrices in the requested dtype; 1-D tensors (norms, biases) stay f32 like the HF converter."""
    check_dtype(dtype)
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    return arr.astype(np.float16) if arr.ndim >= 2 and dtype == "f16" else arr


def write_tensors_and_close(writer, tensors: dict[str, np.ndarray], dtype: str) -> None:
    for name, arr in tensors.items():
        writer.add_tensor(name, as_gguf_dtype(arr, dtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
