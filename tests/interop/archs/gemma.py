"""Tiny Gemma-family models for the interop suite: Gemma 1, Gemma 2 and Gemma 3 (text only).

Each variant (see VARIANTS at the bottom) builds a tiny Hugging Face style config and random
weights, writes a base-model GGUF the way llama.cpp's converter (conversion/gemma.py,
formerly convert_hf_to_gguf.py: GemmaModel, Gemma2Model, Gemma3Model) would, and runs a
float64 NumPy forward pass with the semantics of transformers' GemmaForCausalLM,
Gemma2ForCausalLM and Gemma3ForCausalLM (model_type "gemma3_text").

Facts the code below relies on (checked against llama.cpp's model code and converter):
- Every HF RMSNorm in these models computes x_normed * (1 + w); the converter adds 1 to
  every tensor whose name ends in "norm.weight" (q_norm/k_norm of Gemma 3 included), and
  llama.cpp then multiplies by the stored weight.
- Embeddings are multiplied by sqrt(hidden_size); the output projection is the embedding
  matrix (tied). For gemma and gemma2 the converter drops lm_head.weight even if present;
  gemma3 would accept an `output.weight`, but Gemma3ForCausalLM ties it, so none is written.
- llama.cpp scales queries by 1/sqrt(head_dim) (except a "27B" model recognised by its
  layer count, 46 for gemma2 and 62 for gemma3, which uses hidden/n_head) and never reads
  HF's query_pre_attn_scalar. The tiny configs therefore set query_pre_attn_scalar =
  head_dim, and write_gguf refuses a config where the two would disagree.
- Sliding-window layers: llama.cpp's set_swa_pattern(p) makes layer il local iff
  il % p < p - 1; HF's layer_types make layer i sliding iff (i + 1) % p != 0: the same
  layers. Gemma 2 uses p = 2. For Gemma 3 the converter writes no pattern key and llama.cpp
  uses p = 6, so the tiny Gemma 3 has 6 layers (5 local + 1 global). The window itself is
  "key visible iff 0 <= q - k < window" in both (LLAMA_SWA_TYPE_STANDARD; HF's
  sliding_window mask), so the tiny window (4) is shorter than the test sequences and the
  masking is exercised rather than avoided.
- Gemma 3 local layers use RoPE base rope_local_base_freq (llama.cpp: rope.freq_base_swa,
  default 10000), global layers rope_theta (rope.freq_base).
- Activation: gelu with the tanh approximation (HF "gelu_pytorch_tanh", ggml_gelu /
  ggml_geglu).
"""

from __future__ import annotations

import math

import numpy as np

# HF module name -> its path inside model.layers.{i}: what a PEFT target_modules entry names.
_GEMMA_LORA_MODULES = {
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "o_proj": "self_attn.o_proj",
    "gate_proj": "mlp.gate_proj",
    "up_proj": "mlp.up_proj",
    "down_proj": "mlp.down_proj",
}

# The GGUF tensor stem (inside blk.{i}.) llama.cpp uses for each of them; no row reordering
# for any Gemma (llama.cpp applies NeoX-style RoPE to the HF layout as is). Checked by
# test_archs_gemma_phi3.py against gguf.get_tensor_name_map.
_GEMMA_GGUF_STEMS = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_output",
    "gate_proj": "ffn_gate",
    "up_proj": "ffn_up",
    "down_proj": "ffn_down",
}


# ----------------------------------------------------------------------------------------
# float64 building blocks (transformers semantics)


def _rms_norm_plus_one(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    # GemmaRMSNorm / Gemma2RMSNorm / Gemma3RMSNorm: x * rsqrt(mean(x^2) + eps) * (1 + w)
    x = np.asarray(x, dtype=np.float64)
    var = np.mean(x * x, axis=-1, keepdims=True)
    return x / np.sqrt(var + eps) * (1.0 + np.asarray(w, dtype=np.float64))


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    # ACT2FN["gelu_pytorch_tanh"]
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _rope_neox(x: np.ndarray, positions: np.ndarray, base: float) -> np.ndarray:
    """HF apply_rotary_pos_emb (rotate_half) on x of shape [n_heads, n_tokens, head_dim]."""
    d = x.shape[-1]
    inv_freq = 1.0 / (base ** (np.arange(0, d, 2, dtype=np.float64) / d))
    freqs = positions[:, None].astype(np.float64) * inv_freq[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    cos, sin = np.cos(emb), np.sin(emb)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    rotated = np.concatenate([-x2, x1], axis=-1)
    return x * cos + rotated * sin


def _layer_is_sliding(cfg: dict, il: int) -> bool:
    if cfg["model_type"] == "gemma":
        return False
    if cfg.get("layer_types"):
        return cfg["layer_types"][il] == "sliding_attention"
    return (il + 1) % cfg["sliding_window_pattern"] != 0


def _pattern_layer_types(n_layers: int, pattern: int) -> list[str]:
    # HF's default layer_types for a sliding_window_pattern; also llama.cpp's set_swa_pattern
    return ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n_layers)]


def _forward(cfg: dict, weights: dict, tokens: list[int]) -> np.ndarray:
    mt = cfg["model_type"]
    is_g1, is_g3 = mt == "gemma", mt == "gemma3_text"
    H = cfg["hidden_size"]
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    eps = cfg["rms_norm_eps"]
    n = len(tokens)
    W = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
    pos = np.arange(n)

    emb = W["model.embed_tokens.weight"]
    h = emb[np.asarray(tokens, dtype=np.int64)] * math.sqrt(H)

    scaling = hd**-0.5 if is_g1 else cfg["query_pre_attn_scalar"] ** -0.5
    attn_cap = None if is_g1 else cfg.get("attn_logit_softcapping")
    final_cap = None if is_g1 else cfg.get("final_logit_softcapping")

    qi = np.arange(n)[:, None]
    ki = np.arange(n)[None, :]
    causal = ki <= qi

    for il in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{il}."
        sliding = _layer_is_sliding(cfg, il)
        if is_g3:
            base = cfg["rope_local_base_freq"] if sliding else cfg["rope_theta"]
        else:
            base = cfg["rope_theta"]

        x = _rms_norm_plus_one(h, W[p + "input_layernorm.weight"], eps)
        q = (x @ W[p + "self_attn.q_proj.weight"].T).reshape(n, nh, hd).transpose(1, 0, 2)
        k = (x @ W[p + "self_attn.k_proj.weight"].T).reshape(n, nkv, hd).transpose(1, 0, 2)
        v = (x @ W[p + "self_attn.v_proj.weight"].T).reshape(n, nkv, hd).transpose(1, 0, 2)
        if is_g3:
            q = _rms_norm_plus_one(q, W[p + "self_attn.q_norm.weight"], eps)
            k = _rms_norm_plus_one(k, W[p + "self_attn.k_norm.weight"], eps)
        q = _rope_neox(q, pos, base)
        k = _rope_neox(k, pos, base)
        rep = nh // nkv
        k = np.repeat(k, rep, axis=0)
        v = np.repeat(v, rep, axis=0)

        s = (q @ k.transpose(0, 2, 1)) * scaling
        if attn_cap is not None:
            s = np.tanh(s / attn_cap) * attn_cap
        mask = causal
        if sliding:
            mask = mask & (qi - ki < cfg["sliding_window"])
        s = np.where(mask[None], s, -np.inf)
        s = s - s.max(axis=-1, keepdims=True)
        pr = np.exp(s)
        pr /= pr.sum(axis=-1, keepdims=True)
        a = (pr @ v).transpose(1, 0, 2).reshape(n, nh * hd)
        a = a @ W[p + "self_attn.o_proj.weight"].T

        if is_g1:
            h = h + a
            x = _rms_norm_plus_one(h, W[p + "post_attention_layernorm.weight"], eps)
        else:
            h = h + _rms_norm_plus_one(a, W[p + "post_attention_layernorm.weight"], eps)
            x = _rms_norm_plus_one(h, W[p + "pre_feedforward_layernorm.weight"], eps)

        g = x @ W[p + "mlp.gate_proj.weight"].T
        u = x @ W[p + "mlp.up_proj.weight"].T
        m = (_gelu_tanh(g) * u) @ W[p + "mlp.down_proj.weight"].T
        if is_g1:
            h = h + m
        else:
            h = h + _rms_norm_plus_one(m, W[p + "post_feedforward_layernorm.weight"], eps)

    h = _rms_norm_plus_one(h, W["model.norm.weight"], eps)
    # tied: lm_head is embed_tokens (an lm_head.weight entry, if any, is the same matrix)
    logits = h @ W.get("lm_head.weight", emb).T
    if final_cap is not None:
        logits = np.tanh(logits / final_cap) * final_cap
    return logits


# ----------------------------------------------------------------------------------------
# random weights


def _random_weights(cfg: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    H, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    mt = cfg["model_type"]

    def lin(out_f, in_f, gain=1.0):
        return (rng.standard_normal((out_f, in_f)) * gain / math.sqrt(in_f)).astype(np.float32)

    def norm(dim):
        # neutral value of a Gemma norm weight is 0 (HF multiplies by 1 + w)
        return (0.1 * rng.standard_normal(dim)).astype(np.float32)

    w: dict[str, np.ndarray] = {}
    # std 0.3: after the sqrt(hidden) scaling the residual stream starts at ~2.4, and the tied
    # logits come out at a few units, so the final softcap (gemma2) is in its non-linear range.
    w["model.embed_tokens.weight"] = (0.3 * rng.standard_normal((V, H))).astype(np.float32)
    for il in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{il}."
        w[p + "input_layernorm.weight"] = norm(H)
        # gain 2 on q makes attention scores large enough for the attention softcap to bite
        w[p + "self_attn.q_proj.weight"] = lin(nh * hd, H, 2.0)
        w[p + "self_attn.k_proj.weight"] = lin(nkv * hd, H)
        w[p + "self_attn.v_proj.weight"] = lin(nkv * hd, H)
        w[p + "self_attn.o_proj.weight"] = lin(H, nh * hd)
        if mt == "gemma3_text":
            w[p + "self_attn.q_norm.weight"] = norm(hd)
            w[p + "self_attn.k_norm.weight"] = norm(hd)
        w[p + "post_attention_layernorm.weight"] = norm(H)
        if mt != "gemma":
            w[p + "pre_feedforward_layernorm.weight"] = norm(H)
            w[p + "post_feedforward_layernorm.weight"] = norm(H)
        w[p + "mlp.gate_proj.weight"] = lin(I, H)
        w[p + "mlp.up_proj.weight"] = lin(I, H)
        w[p + "mlp.down_proj.weight"] = lin(H, I)
    w["model.norm.weight"] = norm(H)
    return w


# ----------------------------------------------------------------------------------------
# GGUF writing


def _gguf_tensors(arch_enum, cfg: dict, weights: dict, dtype: str):
    """HF tensors -> (gguf name, array), as the converter's modify_tensors + map_tensor_name do."""
    import gguf

    if dtype not in ("f32", "f16"):
        raise ValueError(f"dtype must be 'f32' or 'f16', not {dtype!r}")
    tmap = gguf.get_tensor_name_map(arch_enum, cfg["num_hidden_layers"])
    out = []
    for name in sorted(weights):
        data = np.asarray(weights[name], dtype=np.float32)
        if name == "lm_head.weight" and arch_enum in (gguf.MODEL_ARCH.GEMMA, gguf.MODEL_ARCH.GEMMA2):
            # GemmaModel / Gemma2Model.filter_tensors: "lm_head is not used in llama.cpp"
            continue
        if name == "lm_head.weight" and cfg.get("tie_word_embeddings", True):
            # tied Gemma 3: HF does not even save it; llama.cpp falls back to token_embd
            continue
        if name.endswith("norm.weight"):
            data = data + np.float32(1.0)
        new_name = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise ValueError(f"no GGUF name for {name!r} in arch {arch_enum.name}")
        # the converter keeps 1-D tensors (norms) in F32 and converts 2-D weights to the ftype
        if dtype == "f16" and data.ndim == 2:
            data = data.astype(np.float16)
        out.append((new_name, data))
    return out


def _write_gguf(path, cfg: dict, weights: dict, dtype: str = "f32") -> None:
    import gguf

    mt = cfg["model_type"]
    arch_enum = {
        "gemma": gguf.MODEL_ARCH.GEMMA,
        "gemma2": gguf.MODEL_ARCH.GEMMA2,
        "gemma3_text": gguf.MODEL_ARCH.GEMMA3,
    }[mt]
    arch = gguf.MODEL_ARCH_NAMES[arch_enum]
    hd = cfg["head_dim"]
    if mt != "gemma":
        # llama.cpp hard-codes the query scale (see module docstring): a GGUF cannot say otherwise
        big = cfg["num_hidden_layers"] == (46 if mt == "gemma2" else 62)  # its "27B" by layer count
        llama_dim = cfg["hidden_size"] // cfg["num_attention_heads"] if big else hd
        if cfg["query_pre_attn_scalar"] != llama_dim:
            raise ValueError(f"llama.cpp ignores query_pre_attn_scalar and uses {llama_dim} here")
    if mt != "gemma":
        # the converters write no pattern key; llama.cpp assumes 2 (gemma2) or 6 (gemma3)
        pattern = 2 if mt == "gemma2" else 6
        expect = _pattern_layer_types(cfg["num_hidden_layers"], pattern)
        got = [
            "sliding_attention" if _layer_is_sliding(cfg, i) else "full_attention"
            for i in range(cfg["num_hidden_layers"])
        ]
        if got != expect:
            raise ValueError(f"llama.cpp's {arch} uses sliding-window pattern {pattern}: {expect}")

    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_key_length(hd)
    w.add_value_length(hd)
    # GemmaModel/Gemma2Model write no rope base (llama.cpp's default is 10000, as is HF's);
    # writing it explicitly keeps a non-default rope_theta honest.
    w.add_rope_freq_base(float(cfg["rope_theta"]))
    if mt == "gemma2":
        if cfg.get("attn_logit_softcapping") is None or cfg.get("final_logit_softcapping") is None:
            # llama.cpp's gemma2 always caps (defaults 50 and 30): "no cap" cannot be written
            raise ValueError("llama.cpp's gemma2 always applies both logit softcaps")
        w.add_attn_logit_softcapping(float(cfg["attn_logit_softcapping"]))
        w.add_final_logit_softcapping(float(cfg["final_logit_softcapping"]))
        w.add_sliding_window(cfg["sliding_window"])
    elif mt == "gemma3_text":
        if cfg.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(float(cfg["final_logit_softcapping"]))
        w.add_sliding_window(cfg["sliding_window"])
        # Gemma3Model does not write this (llama.cpp defaults the local base to 10000); newer
        # llama.cpp reads it when present, so it is written to keep both in step.
        w.add_rope_freq_base_swa(float(cfg["rope_local_base_freq"]))
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    # no tokenizer: llama.cpp accepts "no_vocab" and sizes the vocab from <arch>.vocab_size
    w.add_tokenizer_model("no_vocab")
    w.add_vocab_size(cfg["vocab_size"])

    for name, data in _gguf_tensors(arch_enum, cfg, weights, dtype):
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ----------------------------------------------------------------------------------------
# the three variants


def _common_config() -> dict:
    cfg = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        # deliberately != hidden_size / num_attention_heads (16), as in Gemma 7B (3072/16 vs 256)
        "head_dim": 32,
        "vocab_size": 288,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_activation": "gelu_pytorch_tanh",
        "tie_word_embeddings": True,
        "attention_bias": False,
        "bos_token_id": 2,
        "eos_token_id": 1,
        "pad_token_id": 0,
        "torch_dtype": "float32",
    }
    return cfg


class Gemma:
    """Gemma 1 (GemmaForCausalLM) -> GGUF arch "gemma"."""

    ARCH = "gemma"
    LORA_MODULES = dict(_GEMMA_LORA_MODULES)
    GGUF_STEMS = dict(_GEMMA_GGUF_STEMS)

    @staticmethod
    def tiny_config(**overrides) -> dict:
        cfg = _common_config()
        cfg.update(
            {
                "architectures": ["GemmaForCausalLM"],
                "model_type": "gemma",
                "num_hidden_layers": 2,
            }
        )
        cfg.update(overrides)
        return cfg

    random_weights = staticmethod(_random_weights)
    write_gguf = staticmethod(_write_gguf)
    forward = staticmethod(_forward)


class Gemma2:
    """Gemma 2 (Gemma2ForCausalLM) -> GGUF arch "gemma2"."""

    ARCH = "gemma2"
    LORA_MODULES = dict(_GEMMA_LORA_MODULES)
    GGUF_STEMS = dict(_GEMMA_GGUF_STEMS)

    @staticmethod
    def tiny_config(**overrides) -> dict:
        cfg = _common_config()
        cfg.update(
            {
                "architectures": ["Gemma2ForCausalLM"],
                "model_type": "gemma2",
                # layer 0 sliding, layer 1 global (pattern 2)
                "num_hidden_layers": 2,
                # query_pre_attn_scalar follows head_dim (set below): the only value llama.cpp
                # can express for a model of this size
                # small caps (real models: 50 and 30) so that both tanh caps change the result
                "attn_logit_softcapping": 3.0,
                "final_logit_softcapping": 4.0,
                "sliding_window": 4,
                "sliding_window_pattern": 2,
                "cache_implementation": "hybrid",
            }
        )
        cfg.update(overrides)
        if "query_pre_attn_scalar" not in overrides:
            cfg["query_pre_attn_scalar"] = cfg["head_dim"]
        if "layer_types" not in overrides:
            cfg["layer_types"] = _pattern_layer_types(cfg["num_hidden_layers"], 2)
        return cfg

    random_weights = staticmethod(_random_weights)
    write_gguf = staticmethod(_write_gguf)
    forward = staticmethod(_forward)


class Gemma3:
    """Gemma 3 text (Gemma3ForCausalLM, model_type gemma3_text) -> GGUF arch "gemma3"."""

    ARCH = "gemma3"
    LORA_MODULES = dict(_GEMMA_LORA_MODULES)
    GGUF_STEMS = dict(_GEMMA_GGUF_STEMS)

    @staticmethod
    def tiny_config(**overrides) -> dict:
        cfg = _common_config()
        cfg.update(
            {
                "architectures": ["Gemma3ForCausalLM"],
                "model_type": "gemma3_text",
                # 6 layers: llama.cpp's fixed pattern of 5 local layers then 1 global
                "num_hidden_layers": 6,
                # query_pre_attn_scalar = head_dim, set below (see module docstring)
                "attn_logit_softcapping": None,
                "final_logit_softcapping": None,
                "sliding_window": 4,
                "sliding_window_pattern": 6,
                "rope_theta": 1000000.0,  # global layers
                "rope_local_base_freq": 10000.0,  # sliding layers
                "rope_scaling": None,
            }
        )
        cfg.update(overrides)
        if "query_pre_attn_scalar" not in overrides:
            cfg["query_pre_attn_scalar"] = cfg["head_dim"]
        if "layer_types" not in overrides:
            cfg["layer_types"] = _pattern_layer_types(cfg["num_hidden_layers"], 6)
        return cfg

    random_weights = staticmethod(_random_weights)
    write_gguf = staticmethod(_write_gguf)
    forward = staticmethod(_forward)


VARIANTS = [Gemma, Gemma2, Gemma3]
