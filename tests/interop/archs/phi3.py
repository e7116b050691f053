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

import numpy as np

from . import _common as C

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


def _rot_dim(cfg: dict) -> int:
    # HF: int(head_dim * partial_rotary_factor); converter: int(pct * hidden) // n_head
    return int(C.head_dim(cfg) * cfg.get("partial_rotary_factor", 1.0))


def _forward(cfg: dict, weights: dict, tokens: list[int]) -> np.ndarray:
    # HF Phi3 applies sliding_window when set; the tiny config sets None (see docstring)
    window = cfg.get("sliding_window")
    return C.decoder_forward(cfg, weights, tokens, fused_qkv=True, fused_gate_up=True,
                             rope_dim=_rot_dim(cfg), layer_attention=lambda il: (cfg["rope_theta"], window))


def _random_weights(cfg: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    H, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], C.head_dim(cfg)

    def lin(out_f, in_f, gain=1.0):
        return C.lin_weight(rng, out_f, in_f, gain)

    def norm(dim):
        # Phi3RMSNorm's neutral weight is 1
        return C.norm_weight(rng, dim, neutral=1.0)

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
    H, nh = cfg["hidden_size"], cfg["num_attention_heads"]
    if C.head_dim(cfg) * nh != H:
        raise ValueError("llama.cpp's phi3 needs head_dim == hidden_size / num_attention_heads")
    if cfg.get("rope_scaling"):
        raise ValueError("rope_scaling (longrope) is not modelled by this tiny Phi-3")

    w = C.gguf_writer(path, Phi3.ARCH, cfg, dtype)
    w.add_rope_scaling_orig_ctx_len(cfg["original_max_position_embeddings"])
    w.add_rope_dimension_count(int(cfg.get("partial_rotary_factor", 1.0) * H) // nh)
    w.add_sliding_window(cfg.get("sliding_window") or 0)
    # the converter renames tensors only (see module docstring)
    C.write_tensors_and_close(w, C.gguf_tensor_names(Phi3.ARCH, cfg["num_hidden_layers"], weights), dtype)


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
