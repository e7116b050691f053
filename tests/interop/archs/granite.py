"""Tiny dense Granite (GGUF arch "granite") for the interop suite.

The module itself is Granite 3.x (GraniteForCausalLM, model_type "granite"); the class
Granite4Dense below is the dense, all-attention Granite 4 (GraniteMoeHybridForCausalLM,
model_type "granitemoehybrid", every layer_types entry "attention", num_local_experts 0), which
llama.cpp's converter also writes as arch "granite". It is registered as ID "granite4" (VARIANTS
at the end) and has other LoRA modules (shared_mlp.input_linear, a fused gate+up, and
shared_mlp.output_linear).

What llama.cpp does (conversion/granite.py GraniteModel(LlamaModel); GraniteHybridModel switches
model_arch to GRANITE when there are no SSM layers and no experts; src/models/granite.cpp):
- q_proj/k_proj rows permuted like llama (LlamaModel.modify_tensors, undo_permute=True;
  llama.cpp's granite uses LLAMA_ROPE_TYPE_NORM). A LoRA's lora_B rows on q/k need the same
  permutation. No weight is scaled: the multipliers stay hyperparameters.
- head_dim is popped from the config ("No head_dim support"): llama.cpp uses
  hidden_size / num_attention_heads, so write_gguf refuses a config where they differ.
- Multipliers: embedding_multiplier -> granite.embedding_scale (embeddings * s),
  residual_multiplier -> granite.residual_scale (attention and MLP outputs * s before the
  residual adds), attention_multiplier -> granite.attention.scale (the softmax scale, replacing
  1/sqrt(head_dim)), logits_scaling -> granite.logit_scale (logits / s; required by llama.cpp).
  The converter writes each only when truthy.
- Granite 4 dense: shared_mlp.input_linear [2 * shared_intermediate_size, hidden] is split by
  rows, first half -> ffn_gate, second half -> ffn_up (GraniteMoeModel.modify_tensors; HF
  chunks the output the same way: act(first) * second); shared_mlp.output_linear -> ffn_down.
  llama.cpp sizes ffn_* by feed_forward_length = intermediate_size, so intermediate_size must
  equal shared_intermediate_size.

The tiny model uses realistic multipliers (embedding 12, residual 0.22, attention 1/16 instead of
1/sqrt(16), logits 8), each of which changes the logits well beyond the test tolerance.
"""
from __future__ import annotations

import copy
import sys

import numpy as np

from . import _common as C

ARCH = "granite"

LORA_MODULES = {module: (path,) for module, path in C.LLAMA_LORA_PATHS.items()}
PERMUTE_QK = True

_CONFIG = {
    "architectures": ["GraniteForCausalLM"],
    "model_type": "granite",
    "vocab_size": 288,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 128,
    "tie_word_embeddings": True,
    "attention_bias": False,
    "mlp_bias": False,
    "embedding_multiplier": 12.0,
    "residual_multiplier": 0.22,
    "attention_multiplier": 0.0625,
    "logits_scaling": 8.0,
}


def tiny_config(**overrides) -> dict:
    cfg = copy.deepcopy(_CONFIG)
    cfg.update(overrides)
    return cfg


def _check_head_dim(cfg: dict) -> None:
    hd = cfg.get("head_dim")
    if hd is not None and hd * cfg["num_attention_heads"] != cfg["hidden_size"]:
        raise ValueError("the granite converter drops head_dim: it must be hidden_size / num_attention_heads")


def _random_weights(cfg: dict, rng: np.random.Generator, mlp: str) -> dict[str, np.ndarray]:
    h, ff, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd, nh, nkv = C.head_dim(cfg), cfg["num_attention_heads"], cfg["num_key_value_heads"]

    def norm(dim):
        return C.norm_weight(rng, dim, neutral=1.0)

    # embeddings ~ 1 / embedding_multiplier (as Granite's are, std 0.02 vs multiplier 12), so the
    # residual stream starts at ~1; o_proj / down_proj 1 / residual_multiplier times larger than
    # usual, so each branch adds ~1 to it and an adapter on any module moves the logits
    w = {"model.embed_tokens.weight": C.randn(rng, (v, h), 1.0 / cfg["embedding_multiplier"])}
    out_gain = 1.0 / cfg["residual_multiplier"]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm(h)
        w[p + "self_attn.q_proj.weight"] = C.randn(rng, (nh * hd, h), 2.0 * h ** -0.5)
        w[p + "self_attn.k_proj.weight"] = C.randn(rng, (nkv * hd, h), 2.0 * h ** -0.5)
        w[p + "self_attn.v_proj.weight"] = C.randn(rng, (nkv * hd, h), h ** -0.5)
        w[p + "self_attn.o_proj.weight"] = C.randn(rng, (h, nh * hd), out_gain * (nh * hd) ** -0.5)
        w[p + "post_attention_layernorm.weight"] = norm(h)
        if mlp == "mlp":
            w[p + "mlp.gate_proj.weight"] = C.randn(rng, (ff, h), h ** -0.5)
            w[p + "mlp.up_proj.weight"] = C.randn(rng, (ff, h), h ** -0.5)
            w[p + "mlp.down_proj.weight"] = C.randn(rng, (h, ff), out_gain * ff ** -0.5)
        else:
            sff = cfg["shared_intermediate_size"]
            w[p + "shared_mlp.input_linear.weight"] = C.randn(rng, (2 * sff, h), h ** -0.5)
            w[p + "shared_mlp.output_linear.weight"] = C.randn(rng, (h, sff), out_gain * sff ** -0.5)
    w["model.norm.weight"] = norm(h)
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = C.randn(rng, (v, h), 2.0 * h ** -0.5)
    return w


def random_weights(cfg: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return _random_weights(cfg, rng, "mlp")


def _writer(path, cfg: dict, dtype: str, name: str):
    """GraniteModel.set_gguf_parameters (via LlamaModel / TextModel), head_dim popped."""
    _check_head_dim(cfg)
    wr = C.gguf_writer(path, ARCH, cfg, dtype, name=name)
    wr.add_rope_dimension_count(cfg["hidden_size"] // cfg["num_attention_heads"])
    if cfg.get("attention_multiplier"):
        wr.add_attention_scale(cfg["attention_multiplier"])
    if cfg.get("embedding_multiplier"):
        wr.add_embedding_scale(cfg["embedding_multiplier"])
    if cfg.get("residual_multiplier"):
        wr.add_residual_scale(cfg["residual_multiplier"])
    if not cfg.get("logits_scaling"):
        raise ValueError("llama.cpp's granite requires granite.logit_scale")
    wr.add_logit_scale(cfg["logits_scaling"])
    return wr




def write_gguf(path, cfg: dict, weights: dict[str, np.ndarray], dtype: str = "f32") -> None:
    wr = _writer(path, cfg, dtype, "tiny-granite-interop")
    C.write_tensors_and_close(wr, C.gguf_tensor_names(ARCH, cfg["num_hidden_layers"], C.permute_qk_weights(cfg, weights)), dtype)


def _forward(cfg: dict, weights: dict, tokens: list[int]) -> np.ndarray:
    return C.decoder_forward(cfg, weights, tokens,
                             attn_scale=cfg["attention_multiplier"],
                             embed_scale=cfg["embedding_multiplier"],
                             residual_scale=cfg["residual_multiplier"],
                             logits_scaling=cfg["logits_scaling"])


def forward(cfg: dict, weights: dict[str, np.ndarray], tokens: list[int]) -> np.ndarray:
    """GraniteForCausalLM: Llama with the four multipliers."""
    return _forward(cfg, weights, tokens)


class Granite4Dense:
    """Dense all-attention Granite 4 (GraniteMoeHybridForCausalLM) -> GGUF arch "granite"."""

    ARCH = ARCH
    ID = "granite4"
    PERMUTE_QK = True
    permute_qk = staticmethod(C.permute_qk)
    LORA_MODULES = {
        "q_proj": ("self_attn.q_proj",),
        "k_proj": ("self_attn.k_proj",),
        "v_proj": ("self_attn.v_proj",),
        "o_proj": ("self_attn.o_proj",),
        "input_linear": ("shared_mlp.input_linear",),    # rows: gate, then up (ffn_gate / ffn_up)
        "output_linear": ("shared_mlp.output_linear",),  # ffn_down
    }

    @staticmethod
    def tiny_config(**overrides) -> dict:
        cfg = copy.deepcopy(_CONFIG)
        cfg.update({
            "architectures": ["GraniteMoeHybridForCausalLM"],
            "model_type": "granitemoehybrid",
            "num_local_experts": 0,
            "num_experts_per_tok": 0,
            "position_embedding_type": "rope",
        })
        cfg.update(overrides)
        cfg.setdefault("shared_intermediate_size", cfg["intermediate_size"])
        cfg.setdefault("layer_types", ["attention"] * cfg["num_hidden_layers"])
        return cfg

    @staticmethod
    def random_weights(cfg: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return _random_weights(cfg, rng, "shared_mlp")

    @staticmethod
    def write_gguf(path, cfg: dict, weights: dict[str, np.ndarray], dtype: str = "f32") -> None:
        if any(t != "attention" for t in cfg["layer_types"]) or cfg.get("num_local_experts"):
            raise ValueError("only the dense all-attention Granite 4 becomes GGUF arch granite")
        if cfg.get("position_embedding_type") != "rope":
            # the converter sets rope_finetuned (llama.cpp's granite RoPE switch) to True for any
            # non-hybrid model, so a NoPE Granite 4 would get RoPE in llama.cpp
            raise ValueError("the converter always enables RoPE for a non-hybrid Granite 4")
        sff = cfg["shared_intermediate_size"]
        if sff != cfg["intermediate_size"]:
            raise ValueError("llama.cpp sizes ffn_* by intermediate_size: it must equal shared_intermediate_size")
        wr = _writer(path, cfg, dtype, "tiny-granite4-dense-interop")
        # GraniteMoeModel / GraniteHybridModel.set_gguf_parameters extras that matter here
        wr.add_expert_shared_feed_forward_length(sff)
        wr.add_rope_scaling_finetuned(True)  # use_rope: no SSM layers
        # (the converter also writes the SSM keys and a per-layer head_count_kv array; llama.cpp's
        # granite reads neither differently, so they are left out)
        hf = Granite4Dense._split_shared_mlp(cfg, C.permute_qk_weights(cfg, weights))
        C.write_tensors_and_close(wr, C.gguf_tensor_names(ARCH, cfg["num_hidden_layers"], hf), dtype)

    @staticmethod
    def _split_shared_mlp(cfg: dict, weights: dict) -> dict:
        """GraniteMoeModel.modify_tensors without experts: input_linear rows -> gate, then up;
        output_linear -> down (named as the plain MLP so gguf-py's map gives ffn_*)."""
        sff, hf = cfg["shared_intermediate_size"], {}
        for name, arr in weights.items():
            if name.endswith("shared_mlp.input_linear.weight"):
                stem = name.removesuffix("shared_mlp.input_linear.weight")
                gate, up = (None, None) if arr is None else (arr[:sff], arr[sff:])
                hf[stem + "mlp.gate_proj.weight"], hf[stem + "mlp.up_proj.weight"] = gate, up
            elif name.endswith("shared_mlp.output_linear.weight"):
                hf[name.removesuffix("shared_mlp.output_linear.weight") + "mlp.down_proj.weight"] = arr
            else:
                hf[name] = arr
        return hf

    @staticmethod
    def gguf_names(cfg: dict, hf_names) -> set[str]:
        """GGUF base tensors the HF weights become (input_linear becomes two)."""
        hf = Granite4Dense._split_shared_mlp(cfg, {n: None for n in hf_names})
        return set(C.gguf_tensor_names(ARCH, cfg["num_hidden_layers"], hf))

    @staticmethod
    def forward(cfg: dict, weights: dict[str, np.ndarray], tokens: list[int]) -> np.ndarray:
        """GraniteMoeHybridForCausalLM without SSM layers or experts: Granite with the shared MLP."""
        w = {}
        for name, arr in weights.items():
            name = name.replace("shared_mlp.input_linear.", "mlp.gate_up_proj.")
            w[name.replace("shared_mlp.output_linear.", "mlp.down_proj.")] = arr
        return C.decoder_forward(cfg, w, tokens, fused_gate_up=True,
                                 attn_scale=cfg["attention_multiplier"],
                                 embed_scale=cfg["embedding_multiplier"],
                                 residual_scale=cfg["residual_multiplier"],
                                 logits_scaling=cfg["logits_scaling"])


# The module itself is Granite 3 (ID "granite"); Granite 4 dense shares its GGUF architecture.
VARIANTS = [sys.modules[__name__], Granite4Dense]
