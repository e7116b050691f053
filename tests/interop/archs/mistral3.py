"""Tiny Ministral 3 text decoder (GGUF arch "mistral3") for the interop suite.

What llama.cpp's converter does (conversion/mistral3.py: Mistral3Model, registered for
Mistral3ForConditionalGeneration and Ministral3ForCausalLM; its text part is Ministral3Model, a
LlamaModel subclass with model_arch MISTRAL3):
- The multimodal wrapper's text_config is merged into the top level (TextModel.__init__), so the
  text_config's model_type decides: "ministral3" (Ministral 3) or "mistral" (Mistral Small
  3.1/3.2); both become GGUF arch "mistral3" (only "mistral4" goes elsewhere).
- q_proj/k_proj rows are permuted like llama (LlamaModel.modify_tensors, undo_permute=True):
  llama.cpp's mistral3 uses LLAMA_ROPE_TYPE_NORM (interleaved pairs) on the permuted rows,
  which equals HF's rotate-half RoPE on the unpermuted ones. A LoRA's lora_B rows on q/k must be
  permuted the same way.
- head_dim != hidden_size / num_attention_heads is the norm (Ministral 3: 128 vs 3072/32), written
  as attention.key_length / value_length and rope.dimension_count.
- YaRN (Ministral 3's rope_parameters): rope.scaling.type=yarn, .factor,
  .original_context_length, .yarn_beta_fast, .yarn_beta_slow, .yarn_log_multiplier
  (= mscale_all_dim) and attention.temperature_scale (= llama_4_scaling_beta). llama.cpp's
  attention temperature is 1 + beta * log(1 + floor(pos / original_context_length)) on the
  queries after RoPE, exactly transformers' get_llama_4_attn_scale.

The tiny config sets the YaRN / temperature parameters so that they matter at the test positions
0..7: original_max_position_embeddings = 4 (positions 4..7 get a temperature of
1 + 0.3 * log 2), factor 8, and beta_fast / beta_slow = 4 / 0.25 so that the YaRN correction
range stays inside the rotary dims for such a short original context (with the real 32 / 1, a
context of 4 gives an inverted range, where HF and llama.cpp's ramps disagree).
mscale_all_dim = 0.5 makes the YaRN attention factor (get_mscale(8, 1) / get_mscale(8, 0.5))
differ from 1; llama.cpp assumes mscale == 1, so write_gguf refuses any other mscale.
"""
from __future__ import annotations

import copy

import gguf
import numpy as np

from . import _common as C

ARCH = "mistral3"

LORA_MODULES = {module: (path,) for module, path in C.LLAMA_LORA_PATHS.items()}
PERMUTE_QK = True  # q_proj / k_proj rows (and LoRA B rows) reordered by C.permute_qk

_CONFIG = {
    "architectures": ["Ministral3ForCausalLM"],
    "model_type": "ministral3",
    "vocab_size": 288,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    # != hidden_size / num_attention_heads (16), as in Ministral 3 (128 vs 3072 / 32)
    "head_dim": 32,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 128,
    "tie_word_embeddings": False,
    "sliding_window": None,
    "rope_parameters": {
        "rope_type": "yarn",
        "type": "yarn",
        "rope_theta": 1000000.0,
        "factor": 8.0,
        "original_max_position_embeddings": 4,
        "max_position_embeddings": 128,
        "beta_fast": 4.0,
        "beta_slow": 0.25,
        "mscale": 1.0,
        "mscale_all_dim": 0.5,
        "llama_4_scaling_beta": 0.3,
    },
}


def tiny_config(**overrides) -> dict:
    cfg = copy.deepcopy(_CONFIG)
    cfg.update(overrides)
    return cfg


def _rope_params(cfg: dict) -> dict:
    """rope_parameters (transformers 5) or the older rope_theta + rope_scaling, as one dict."""
    rp = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    rp.setdefault("rope_type", rp.get("type", "default"))
    if "rope_theta" not in rp:
        rp["rope_theta"] = cfg.get("rope_theta", 1000000.0)
    return rp


def _temperature(cfg: dict) -> tuple[float, int] | None:
    """(beta, original_max_position_embeddings) of the Llama-4 attention temperature, which only
    Ministral 3 (text model_type "ministral3") has."""
    if cfg["model_type"] != "ministral3":
        return None
    rp = _rope_params(cfg)
    return rp["llama_4_scaling_beta"], rp["original_max_position_embeddings"]


def random_weights(cfg: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return C.llama_random_weights(cfg, rng)


def write_gguf(path, cfg: dict, weights: dict[str, np.ndarray], dtype: str = "f32") -> None:
    rp = _rope_params(cfg)
    hd = C.head_dim(cfg)
    wr = C.gguf_writer(path, ARCH, {**cfg, "rope_theta": rp["rope_theta"]}, dtype,
                       name="tiny-mistral3-interop", key_value_length=cfg.get("head_dim"))
    wr.add_rope_dimension_count(hd)  # LlamaModel.set_gguf_parameters
    if rp["rope_type"] == "yarn":
        # TextModel.set_gguf_parameters (conversion/base.py)
        wr.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        wr.add_rope_scaling_factor(rp["factor"])
        wr.add_rope_scaling_orig_ctx_len(rp["original_max_position_embeddings"])
        if rp.get("attention_factor") is not None:
            # written by the converter, but llama.cpp's mistral3 never reads yarn_attn_factor
            raise ValueError("llama.cpp's mistral3 ignores an explicit YaRN attention_factor")
        if rp.get("beta_fast") is not None:
            wr.add_rope_scaling_yarn_beta_fast(rp["beta_fast"])
        if rp.get("beta_slow") is not None:
            wr.add_rope_scaling_yarn_beta_slow(rp["beta_slow"])
        if rp.get("mscale_all_dim") and rp.get("mscale") != 1.0:
            raise ValueError("llama.cpp assumes YaRN mscale == 1 when mscale_all_dim is set")
    elif rp["rope_type"] != "default":
        raise ValueError(f"rope_type {rp['rope_type']!r} not modelled here")
    if cfg["model_type"] == "ministral3":
        # Mistral3Model.Ministral3Model.set_gguf_parameters (conversion/mistral3.py)
        if rp["rope_type"] != "yarn":
            raise ValueError("the converter asserts ministral3 rope_type == 'yarn'")
        wr.add_rope_scaling_yarn_log_mul(rp["mscale_all_dim"])
        wr.add_attn_temperature_scale(rp["llama_4_scaling_beta"])
    hf = C.permute_qk_weights(cfg, weights)
    C.write_tensors_and_close(wr, C.gguf_tensor_names(ARCH, cfg["num_hidden_layers"], hf), dtype)


def forward(cfg: dict, weights: dict[str, np.ndarray], tokens: list[int]) -> np.ndarray:
    """Ministral3ForCausalLM (or, for model_type "mistral", MistralForCausalLM): Llama with
    YaRN RoPE and, for ministral3, the Llama-4 query temperature after RoPE."""
    rp = _rope_params(cfg)
    hd = C.head_dim(cfg)
    if rp["rope_type"] == "yarn":
        rope = C.yarn_inv_freq(rp["rope_theta"], hd, rp, cfg["max_position_embeddings"])
    else:
        rope = (C.rope_inv_freq(rp["rope_theta"], hd), 1.0)
    temp = _temperature(cfg)
    query_scale = None if temp is None else (lambda pos: C.llama4_attn_scale(pos, *temp))
    return C.decoder_forward(cfg, weights, tokens, layer_rope=lambda il: rope, query_scale=query_scale)
