"""Tiny Gemma 4 text model for the interop suite (GGUF arch "gemma4", text decoder only).

HF side: transformers 5.24 `Gemma4ForCausalLM` (config model_type "gemma4_text"), parameter names
`model.layers.{i}....`; the multimodal `Gemma4ForConditionalGeneration` has the same decoder under
`model.language_model.` (llama.cpp's converter strips "language_model.", conversion/base.py:596).
GGUF side: what llama.cpp's converter (conversion/gemma.py, class Gemma4Model, on top of
Gemma3Model and TextModel) writes, checked against llama.cpp's models/gemma4.cpp through
llama-cpp-python 0.3.36.

What the tiny default config exercises (every feature checked against the real llama.cpp):
- two head dims: sliding layers head_dim (16), full layers global_head_dim (32); per-layer KV
  heads (full layers num_global_key_value_heads = 1, sliding ones num_key_value_heads = 2),
  written as an array gemma4.attention.head_count_kv;
- attention_k_eq_v: full layers have no v_proj, V is the (un-normed) k_proj output;
- sliding window 3 < len(harness.TOKENS) = 8 (key j visible from query i iff 0 <= i - j < 3);
- proportional RoPE on full layers (partial_rotary_factor 0.25 of global_head_dim, the rest of
  each half passes through; llama.cpp: rope_freqs.weight with 1e30 factors), default RoPE with
  another base on sliding layers;
- KV sharing: num_kv_shared_layers = 2, layer types S S S F | S F; the shared layers (4, 5) have no
  k_proj / v_proj / k_norm (HF creates none) and reuse K/V of the last non-shared layer of their
  type (2 and 3); llama.cpp hard-codes that reuse as layer n_kv_from_start - 2 (sliding) /
  n_kv_from_start - 1 (full), so the non-shared part must end "sliding, full" (write_gguf checks);
- use_double_wide_mlp: the KV-shared layers' MLP is 2 * intermediate_size wide (GGUF
  feed_forward_length becomes a per-layer array);
- per-layer embeddings (PLE): embed_tokens_per_layer, per_layer_model_projection,
  per_layer_projection_norm, and per layer per_layer_input_gate / per_layer_projection /
  post_per_layer_input_norm;
- layer_scalar (a persistent HF buffer, GGUF blk.{i}.layer_output_scale.weight), v_norm without
  weight, q_norm / k_norm, sandwich norms, scaling 1.0 (no 1/sqrt(head_dim)), final softcap.

RMSNorm: Gemma4RMSNorm multiplies by w itself (not 1 + w as Gemma 1-3), and the Gemma 4 converter
adds nothing (Gemma4Model.norm_shift returns 0): norm weights are copied as they are.

tiny_config(**overrides) keys that matter (HF Gemma4TextConfig names); the derived ones follow
the overrides unless given explicitly:
    hidden_size, intermediate_size, num_attention_heads, num_key_value_heads, head_dim,
    global_head_dim              default 2 * head_dim
    num_global_key_value_heads   default max(1, num_key_value_heads // 2) when attention_k_eq_v,
                                 else None (HF ignores it then; see write_gguf)
    hidden_size_per_layer_input  default hidden_size (0 turns PLE off)
    vocab_size_per_layer_input   default vocab_size (llama.cpp requires them equal)
    num_hidden_layers / num_kv_shared_layers / layer_types
                                 default layer_types: the non-shared layers all sliding but the
                                 last, which is full; the shared ones alternate ending in full
So tiny_config(hidden_size=256, intermediate_size=512, num_attention_heads=4,
num_key_value_heads=2, head_dim=64) gives global_head_dim 128, PLE width 256: every matrix row
(in-features) is a multiple of 256 (q/k/v/gate/up/inp_gate/per_layer_model_proj: 256; o_proj
256 or 512; down_proj 512 or 1024; per-layer proj 256; per_layer_token_embd 6 * 256).

Extra, non-HF key: "interop_shared_kv_weights" (default False). True gives the KV-shared layers
k_proj / k_norm (and v_proj where the layer type has one) weights too, as google's released E2B
checkpoint does (a llama.cpp load log of its GGUF lists blk.15-34.attn_k / attn_v / attn_k_norm:
601 tensors). HF 5.24 drops them on load (modeling_gemma4.py:1582-1588); the converter writes them
and llama.cpp loads them (TENSOR_NOT_REQUIRED) without ever using them (gemma4.cpp:74,83-84,234).
The forward ignores them.
"""

from __future__ import annotations

import copy
import math

import gguf
import numpy as np

from . import _common as C

ARCH = "gemma4"

SLIDING, FULL = "sliding_attention", "full_attention"

# HF module -> path inside model.layers.{i} (PEFT target names). Paths under "self_attn." are
# attention modules. Not every layer has every module: KV-shared layers have no k_proj / v_proj,
# full layers of an attention_k_eq_v model no v_proj (peft_lora skips absent weights, as PEFT).
LORA_MODULES = {
    **C.LLAMA_LORA_PATHS,
    "per_layer_input_gate": "per_layer_input_gate",
    "per_layer_projection": "per_layer_projection",
}

# GGUF tensor stem inside blk.{i}. for each LoRA module (gguf-py's tensor map; no transform of
# any of these weights by the converter, llama.cpp applies the LoRA to all of them).
GGUF_STEMS = {**C.LLAMA_GGUF_STEMS, "per_layer_input_gate": "inp_gate", "per_layer_projection": "proj"}

_BASE_CONFIG = {
    "architectures": ["Gemma4ForCausalLM"],
    "model_type": "gemma4_text",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 6,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "attention_k_eq_v": True,
    "num_kv_shared_layers": 2,
    "use_double_wide_mlp": True,
    "sliding_window": 3,
    "vocab_size": 288,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                           "rope_theta": 1000000.0},
    },
    # 30 in the released models; small here so that the tanh cap is in its non-linear range
    "final_logit_softcapping": 5.0,
    "hidden_activation": "gelu_pytorch_tanh",
    "tie_word_embeddings": True,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "enable_moe_block": False,
    "num_experts": None,
    "top_k_experts": None,
    "moe_intermediate_size": None,
    "use_bidirectional_attention": None,
    "bos_token_id": 2,
    "eos_token_id": 1,
    "pad_token_id": 0,
    "torch_dtype": "float32",
}


def _default_layer_types(n_layers: int, n_shared: int) -> list[str]:
    """Non-shared layers sliding except the last (full); shared ones alternate, ending full.
    Gives llama.cpp's fixed KV reuse (n_kv_from_start - 2 sliding, - 1 full) HF's producers."""
    first = n_layers - n_shared
    own = [SLIDING] * (first - 1) + [FULL]
    shared = [FULL if (n_shared - 1 - k) % 2 == 0 else SLIDING for k in range(n_shared)]
    return own + shared


def tiny_config(**overrides) -> dict:
    cfg = copy.deepcopy(_BASE_CONFIG)
    cfg.update(overrides)
    cfg.setdefault("global_head_dim", 2 * cfg["head_dim"])
    if cfg.get("attention_k_eq_v"):
        cfg.setdefault("num_global_key_value_heads", max(1, cfg["num_key_value_heads"] // 2))
    else:
        cfg.setdefault("num_global_key_value_heads", None)
    cfg.setdefault("hidden_size_per_layer_input", cfg["hidden_size"])
    cfg.setdefault("vocab_size_per_layer_input", cfg["vocab_size"])
    cfg.setdefault("layer_types", _default_layer_types(cfg["num_hidden_layers"], cfg["num_kv_shared_layers"]))
    cfg.setdefault("interop_shared_kv_weights", False)
    return cfg


# ----------------------------------------------------------------------------------------
# per-layer geometry (HF semantics)


def is_sliding(cfg: dict, il: int) -> bool:
    return cfg["layer_types"][il] == SLIDING


def layer_head_dim(cfg: dict, il: int) -> int:
    """HF: per_layer_config[il].head_dim = global_head_dim on full layers (configuration_gemma4.py:208-221)."""
    return cfg["head_dim"] if is_sliding(cfg, il) else cfg["global_head_dim"]


def layer_kv_heads(cfg: dict, il: int) -> int:
    """HF 5.24 overrides the full layers' KV heads with num_global_key_value_heads only when
    attention_k_eq_v is set (configuration_gemma4.py:214)."""
    if not is_sliding(cfg, il) and cfg.get("attention_k_eq_v") and cfg.get("num_global_key_value_heads"):
        return cfg["num_global_key_value_heads"]
    return cfg["num_key_value_heads"]


def first_kv_shared(cfg: dict) -> int:
    return cfg["num_hidden_layers"] - cfg["num_kv_shared_layers"]


def is_kv_shared(cfg: dict, il: int) -> bool:
    return il >= first_kv_shared(cfg)


def has_v_proj(cfg: dict, il: int) -> bool:
    """use_alternative_attention = attention_k_eq_v and not sliding -> v_proj is None."""
    return not (cfg.get("attention_k_eq_v") and not is_sliding(cfg, il))


def layer_ffn(cfg: dict, il: int) -> int:
    """Gemma4TextMLP: intermediate_size * 2 on KV-shared layers when use_double_wide_mlp."""
    wide = cfg.get("use_double_wide_mlp") and is_kv_shared(cfg, il)
    return cfg["intermediate_size"] * (2 if wide else 1)


def kv_producers(cfg: dict) -> dict[str, int]:
    """layer type -> the last non-shared layer of that type (HF kv_sharing_modes 'store')."""
    first = first_kv_shared(cfg)
    return {t: max(i for i in range(first) if cfg["layer_types"][i] == t) for t in set(cfg["layer_types"][:first])}


# ----------------------------------------------------------------------------------------
# float64 forward pass (transformers semantics, modeling_gemma4.py)


def rope_proportional(x: np.ndarray, positions: np.ndarray, theta: float, factor: float) -> np.ndarray:
    """HF 'proportional' RoPE (modeling_rope_utils.py:194-263): rotate-half over the whole head,
    inv_freq[i] = theta ** (-2i / head_dim) for i < int(factor * head_dim // 2), 0 (no rotation)
    for the rest of each half."""
    hd = x.shape[-1]
    n_rot = int(factor * hd // 2)
    inv = np.zeros(hd // 2)
    inv[:n_rot] = 1.0 / (theta ** (np.arange(0, 2 * n_rot, 2, dtype=np.float64) / hd))
    freqs = positions.astype(np.float64)[:, None] * inv[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    cos, sin = np.cos(emb)[:, None, :], np.sin(emb)[:, None, :]
    rotated = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], axis=-1)
    return x * cos + rotated * sin


def _rope(cfg: dict, il: int, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
    rp = cfg["rope_parameters"][cfg["layer_types"][il]]
    if rp.get("rope_type", "default") == "proportional":
        return rope_proportional(x, pos, rp["rope_theta"], rp.get("partial_rotary_factor", 1.0))
    if rp.get("rope_type", "default") != "default":
        raise ValueError(f"unsupported rope_type {rp['rope_type']!r}")
    return C.rope_rotate_half(x, pos, rp["rope_theta"])


def forward(cfg: dict, weights: dict, tokens: list[int]) -> np.ndarray:
    if cfg.get("enable_moe_block"):
        raise ValueError("the tiny gemma4 has no MoE block")
    H, nh, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["rms_norm_eps"]
    L, ple = cfg["num_hidden_layers"], cfg.get("hidden_size_per_layer_input") or 0
    n = len(tokens)
    tok = np.asarray(tokens)
    pos = np.arange(n)

    def norm(x, w=None):
        return C.rms_norm(x, np.ones(x.shape[-1]) if w is None else w, eps)

    emb = weights["model.embed_tokens.weight"]
    x = emb.astype(np.float64)[tok] * math.sqrt(H)  # Gemma4TextScaledWordEmbedding

    pli = None
    if ple:
        # get_per_layer_inputs + project_per_layer_inputs (modeling_gemma4.py:1705-1784)
        pl_tok = weights["model.embed_tokens_per_layer.weight"].astype(np.float64)[tok] * math.sqrt(ple)
        proj = C.linear(x, weights["model.per_layer_model_projection.weight"]) * H ** -0.5
        proj = norm(proj.reshape(n, L, ple), weights["model.per_layer_projection_norm.weight"])
        pli = (proj + pl_tok.reshape(n, L, ple)) * 2.0 ** -0.5

    producers = kv_producers(cfg)
    shared: dict[str, tuple] = {}
    for il in range(L):
        g = lambda k: weights[f"model.layers.{il}.{k}"]  # noqa: E731
        hd, nkv = layer_head_dim(cfg, il), layer_kv_heads(cfg, il)
        ltype = cfg["layer_types"][il]
        h = norm(x, g("input_layernorm.weight"))
        q = C.linear(h, g("self_attn.q_proj.weight")).reshape(n, nh, hd)
        q = _rope(cfg, il, norm(q, g("self_attn.q_norm.weight")), pos)
        if is_kv_shared(cfg, il):
            k, v = shared[ltype]
        else:
            k = C.linear(h, g("self_attn.k_proj.weight")).reshape(n, nkv, hd)
            v = C.linear(h, g("self_attn.v_proj.weight")).reshape(n, nkv, hd) if has_v_proj(cfg, il) else k
            k = _rope(cfg, il, norm(k, g("self_attn.k_norm.weight")), pos)
            v = norm(v)  # v_norm: RMSNorm with_scale=False
            if producers.get(ltype) == il:
                shared[ltype] = (k, v)
        window = cfg["sliding_window"] if ltype == SLIDING else None
        a = C.causal_attention(q, k, v, 1.0, None, window)  # scaling = 1.0
        a = C.linear(a, g("self_attn.o_proj.weight"))
        x = x + norm(a, g("post_attention_layernorm.weight"))
        h = norm(x, g("pre_feedforward_layernorm.weight"))
        m = C.linear(C.gelu_tanh(C.linear(h, g("mlp.gate_proj.weight"))) * C.linear(h, g("mlp.up_proj.weight")),
                     g("mlp.down_proj.weight"))
        x = x + norm(m, g("post_feedforward_layernorm.weight"))
        if ple:
            p = C.gelu_tanh(C.linear(x, g("per_layer_input_gate.weight"))) * pli[:, il, :]
            p = C.linear(p, g("per_layer_projection.weight"))
            x = x + norm(p, g("post_per_layer_input_norm.weight"))
        x = x * g("layer_scalar").astype(np.float64)
    x = norm(x, weights["model.norm.weight"])
    logits = C.linear(x, weights.get("lm_head.weight", emb))
    cap = cfg.get("final_logit_softcapping")
    return C.tanh_softcap(logits, cap) if cap else logits


# ----------------------------------------------------------------------------------------
# random weights (HF names and layout)


def random_weights(cfg: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    if cfg.get("enable_moe_block"):
        raise ValueError("the tiny gemma4 has no MoE block")
    H, V, nh = cfg["hidden_size"], cfg["vocab_size"], cfg["num_attention_heads"]
    L, ple = cfg["num_hidden_layers"], cfg.get("hidden_size_per_layer_input") or 0

    def lin(out_f, in_f, gain=1.0):
        return C.lin_weight(rng, out_f, in_f, gain)

    def norm(dim, level=1.0):
        # Gemma4RMSNorm multiplies by w: values around `level` (1 = neutral), 10% spread
        return (level * (1.0 + 0.1 * rng.standard_normal(dim))).astype(np.float32)

    # Magnitudes: llama.cpp's CPU GELU goes through an fp16 table (ggml-cpu/vec.h:46,1000-1013),
    # ~3e-4 relative error per GELU output. With every sublayer at full strength that noise reached
    # rel 8e-4 in the logits of some seeds (tolerance 1e-3). A larger embedding (std 0.5: residual
    # RMS ~4) and post-norms of ~0.3 behind the two GELU paths (MLP, per-layer input) keep it at
    # ~2e-4 while every module still moves the logits by > 0.1 with a PEFT-strength adapter.
    w: dict[str, np.ndarray] = {"model.embed_tokens.weight": (0.5 * rng.standard_normal((V, H))).astype(np.float32)}
    if ple:
        w["model.embed_tokens_per_layer.weight"] = (
            0.25 * rng.standard_normal((cfg["vocab_size_per_layer_input"], L * ple))).astype(np.float32)
        w["model.per_layer_model_projection.weight"] = lin(L * ple, H)
        w["model.per_layer_projection_norm.weight"] = norm(ple)
    for il in range(L):
        p = f"model.layers.{il}."
        hd, nkv, ff = layer_head_dim(cfg, il), layer_kv_heads(cfg, il), layer_ffn(cfg, il)
        w[p + "input_layernorm.weight"] = norm(H)
        w[p + "self_attn.q_proj.weight"] = lin(nh * hd, H)
        w[p + "self_attn.q_norm.weight"] = norm(hd)
        if not is_kv_shared(cfg, il) or cfg.get("interop_shared_kv_weights"):
            w[p + "self_attn.k_proj.weight"] = lin(nkv * hd, H)
            w[p + "self_attn.k_norm.weight"] = norm(hd)
            if has_v_proj(cfg, il):
                w[p + "self_attn.v_proj.weight"] = lin(nkv * hd, H)
        w[p + "self_attn.o_proj.weight"] = lin(H, nh * hd)
        w[p + "post_attention_layernorm.weight"] = norm(H)
        w[p + "pre_feedforward_layernorm.weight"] = norm(H)
        w[p + "mlp.gate_proj.weight"] = lin(ff, H)
        w[p + "mlp.up_proj.weight"] = lin(ff, H)
        w[p + "mlp.down_proj.weight"] = lin(H, ff)
        w[p + "post_feedforward_layernorm.weight"] = norm(H, 0.3)
        if ple:
            w[p + "per_layer_input_gate.weight"] = lin(ple, H)
            w[p + "per_layer_projection.weight"] = lin(H, ple)
            w[p + "post_per_layer_input_norm.weight"] = norm(H, 0.3)
        # persistent buffer, saved in the checkpoint as "model.layers.{i}.layer_scalar" (shape [1])
        w[p + "layer_scalar"] = rng.uniform(0.6, 1.2, size=(1,)).astype(np.float32)
    w["model.norm.weight"] = norm(H)
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = (0.5 * rng.standard_normal((V, H))).astype(np.float32)
    return w


# ----------------------------------------------------------------------------------------
# GGUF writing (conversion/gemma.py Gemma4Model <- Gemma3Model <- TextModel)


def _check_llama_cpp_can_express(cfg: dict) -> None:
    L = cfg["num_hidden_layers"]
    types = cfg["layer_types"]
    if len(types) != L or set(types) - {SLIDING, FULL}:
        raise ValueError(f"layer_types must be {L} of {SLIDING!r} / {FULL!r}")
    if types[-1] != FULL:
        raise ValueError("Gemma4TextConfig forces the last layer to full_attention")
    if cfg.get("enable_moe_block"):
        raise ValueError("the tiny gemma4 has no MoE block")
    if cfg.get("use_bidirectional_attention"):
        raise ValueError("only causal attention is modelled")
    if cfg.get("vocab_size_per_layer_input", cfg["vocab_size"]) != cfg["vocab_size"] and cfg.get(
            "hidden_size_per_layer_input"):
        raise ValueError("llama.cpp's per_layer_token_embd has n_vocab rows (gemma4.cpp:59)")
    ns = cfg["num_kv_shared_layers"]
    if ns:
        first = L - ns
        if first < 2:
            raise ValueError("llama.cpp needs >= 2 non-shared layers (llama-model.cpp:2782)")
        # llama.cpp (llama-model.cpp:2780-2789): a shared layer reads the KV of layer
        # first - 2 if it is sliding, first - 1 if full. HF: the last non-shared one of its type.
        prod = kv_producers(cfg)
        for il in range(first, L):
            want = prod.get(types[il])
            got = first - (2 if types[il] == SLIDING else 1)
            if want != got:
                raise ValueError(f"KV-shared layer {il} ({types[il]}): HF reuses layer {want}, "
                                 f"llama.cpp layer {got}; the non-shared layers must end sliding, full")
    ngkv = cfg.get("num_global_key_value_heads")
    if ngkv is not None:
        # the converter writes [nkv if swa else ngkv] whatever attention_k_eq_v says (gemma.py:715-726)
        conv = [cfg["num_key_value_heads"] if t == SLIDING else ngkv for t in types]
        hf = [layer_kv_heads(cfg, i) for i in range(L)]
        if conv != hf:
            raise ValueError(f"converter would write head_count_kv {conv}, HF uses {hf} "
                             "(num_global_key_value_heads without attention_k_eq_v)")
    rp = cfg["rope_parameters"]
    if rp[FULL].get("rope_type") != "proportional":
        raise ValueError("the converter asserts proportional RoPE on full layers (gemma.py:743)")
    if rp[SLIDING].get("rope_type", "default") != "default" or rp[SLIDING].get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError("sliding layers: default RoPE over the whole head only")
    if "factor" in rp[FULL] and rp[FULL]["factor"] != 1.0:
        raise ValueError("a proportional RoPE factor is not written by the converter")


def _gguf_kvs(wr: gguf.GGUFWriter, cfg: dict, dtype: str) -> None:
    """The KVs the converter writes, each with its final value at the position of its first write
    (GGUFWriter overwrites a repeated key in place, gguf-py/gguf/gguf_writer.py:277-281)."""
    L, types = cfg["num_hidden_layers"], cfg["layer_types"]
    rp = cfg["rope_parameters"]
    swa = [t == SLIDING for t in types]
    hd_full, hd_swa = cfg["global_head_dim"], cfg["head_dim"]
    ff = cfg["intermediate_size"]
    if cfg.get("use_double_wide_mlp"):  # gemma.py:707-713
        ff = [ff if il < first_kv_shared(cfg) else 2 * ff for il in range(L)]
    n_kv = cfg["num_key_value_heads"]
    if cfg.get("num_global_key_value_heads") is not None:  # gemma.py:715-726
        n_kv = [cfg["num_key_value_heads"] if s else cfg["num_global_key_value_heads"] for s in swa]
    # TextModel.set_gguf_parameters (conversion/base.py:1434-1545)
    wr.add_block_count(L)
    wr.add_context_length(cfg["max_position_embeddings"])
    wr.add_embedding_length(cfg["hidden_size"])
    wr.add_feed_forward_length(ff)                     # overwritten by Gemma4Model if double-wide
    wr.add_head_count(cfg["num_attention_heads"])
    wr.add_head_count_kv(n_kv)                         # overwritten by Gemma4Model if per layer
    wr.add_rope_freq_base(float(rp[FULL]["rope_theta"]))
    wr.add_rope_freq_base_swa(float(rp[SLIDING]["rope_theta"]))
    wr.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    wr.add_key_length(hd_full)                         # head_dim first, global_head_dim at the end
    wr.add_value_length(hd_full)
    wr.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    # Gemma3Model.set_gguf_parameters (conversion/gemma.py:141-158)
    if cfg.get("final_logit_softcapping"):
        wr.add_final_logit_softcapping(float(cfg["final_logit_softcapping"]))
    wr.add_sliding_window(cfg["sliding_window"])
    # Gemma4Model.set_gguf_parameters (conversion/gemma.py:671-733)
    wr.add_shared_kv_layers(cfg["num_kv_shared_layers"])
    wr.add_embedding_length_per_layer_input(cfg.get("hidden_size_per_layer_input") or 0)
    wr.add_sliding_window_pattern(swa)
    wr.add_key_length_swa(hd_swa)
    wr.add_value_length_swa(hd_swa)
    wr.add_rope_dimension_count(int(hd_full))
    wr.add_rope_dimension_count_swa(int(hd_swa * 1.0))  # rope_parameters has no top-level partial factor
    C.add_no_vocab_tokenizer(wr, cfg["vocab_size"])


def rope_freqs(cfg: dict) -> np.ndarray:
    """Gemma4Model.generate_extra_tensors (conversion/gemma.py:735-762): 1 for the rotated pairs,
    1e30 (theta -> 0: no rotation) for the rest; used by the full layers only."""
    hd = cfg["global_head_dim"]
    n_rot = int(hd * cfg["rope_parameters"][FULL]["partial_rotary_factor"] / 2)
    return np.array([1.0] * n_rot + [1e30] * (hd // 2 - n_rot), dtype=np.float32)


def gguf_tensors(cfg: dict, weights: dict) -> dict[str, np.ndarray]:
    """GGUF name -> array, as the converter emits them: rope_freqs first, no transform of any
    weight (norm_shift 0), layer_scalar renamed to layer_scalar.weight (filter_tensors)."""
    hf = {}
    for name, data in weights.items():
        if name == "lm_head.weight" and cfg.get("tie_word_embeddings", True):
            continue  # tied: HF does not save it, llama.cpp falls back to token_embd
        if name.endswith("layer_scalar"):
            name += ".weight"
        hf[name] = data
    out = {"rope_freqs.weight": rope_freqs(cfg)}
    out.update(C.gguf_tensor_names(ARCH, cfg["num_hidden_layers"], hf))
    return out


def write_gguf(path, cfg: dict, weights: dict, dtype: str = "f32") -> None:
    C.check_dtype(dtype)
    _check_llama_cpp_can_express(cfg)
    wr = gguf.GGUFWriter(str(path), ARCH)
    _gguf_kvs(wr, cfg, dtype)
    C.write_tensors_and_close(wr, gguf_tensors(cfg, weights), dtype)
