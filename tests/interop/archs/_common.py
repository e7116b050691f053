"""Shared numpy building blocks and GGUF-writing helpers for the arch modules.

Everything here follows Hugging Face transformers semantics (the reference side of the interop
tests); nothing is derived from the Rust code under test. Files starting with "_" are not arch
modules and are ignored by the registry.
"""
from __future__ import annotations

import numpy as np

# ---------------------------------------------------------------------------------------------
# numpy forward-pass pieces (float64 for a precise reference)
# ---------------------------------------------------------------------------------------------


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """HF (Llama/Qwen) RMSNorm over the last axis."""
    x = x.astype(np.float64)
    y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return y * weight.astype(np.float64)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """torch.nn.Linear: y = x @ W.T + b, W in HF layout [out, in]."""
    y = x @ w.astype(np.float64).T
    if b is not None:
        y = y + b.astype(np.float64)
    return y


def rope_rotate_half(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """HF `apply_rotary_pos_emb` (rotate-half / NeoX layout). x: [n_tok, n_head, head_dim]."""
    d = x.shape[-1]
    inv_freq = 1.0 / (theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    freqs = positions.astype(np.float64)[:, None] * inv_freq[None, :]  # [n, d/2]
    emb = np.concatenate([freqs, freqs], axis=-1)  # [n, d]
    cos = np.cos(emb)[:, None, :]
    sin = np.sin(emb)[:, None, :]
    rotated = np.concatenate([-x[..., d // 2:], x[..., :d // 2]], axis=-1)
    return x * cos + rotated * sin


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    """Grouped-query causal attention. q: [n, n_head, d], k/v: [n, n_kv, d] -> [n, n_head*d_v]."""
    n, n_head, _ = q.shape
    n_kv = k.shape[1]
    group = n_head // n_kv
    k = np.repeat(k, group, axis=1)
    v = np.repeat(v, group, axis=1)
    scores = np.einsum("ihd,jhd->hij", q, k) * scale  # [h, n, n]
    i = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    scores = np.where((j > i)[None], -np.inf, scores)
    scores = scores - scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    p = p / p.sum(axis=-1, keepdims=True)
    out = np.einsum("hij,jhd->ihd", p, v)
    return out.reshape(n, -1)


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


def as_gguf_dtype(arr: np.ndarray, dtype: str) -> np.ndarray:
    """Matrices in the requested dtype; 1-D tensors (norms, biases) stay f32 like the HF converter."""
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.ndim >= 2 and dtype == "f16":
        return arr.astype(np.float16)
    if dtype not in ("f32", "f16"):
        raise ValueError(f"unsupported base dtype {dtype!r}")
    return arr


def write_tensors_and_close(writer, tensors: dict[str, np.ndarray], dtype: str) -> None:
    for name, arr in tensors.items():
        writer.add_tensor(name, as_gguf_dtype(arr, dtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def randn(rng: np.random.Generator, shape, std: float) -> np.ndarray:
    return (rng.standard_normal(shape) * std).astype(np.float32)
