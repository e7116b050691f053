"""Tiny dense Qwen3.5 text model (GGUF arch "qwen35"): gated full attention + Gated DeltaNet.

Hugging Face side: transformers' Qwen3_5ForCausalLM (model_type "qwen3_5_text"; the text part of
Qwen3_5ForConditionalGeneration, whose weights live under model.language_model.* instead of
model.*). GGUF side: llama.cpp's converter (conversion/qwen.py: Qwen3_5TextModel ->
_LinearAttentionVReorderBase -> Qwen3NextModel) and runtime (src/models/qwen35.cpp).

Decoder layer i is a linear-attention layer (Gated DeltaNet, modules under `linear_attn.`) or a
full-attention layer (`self_attn.`), by cfg["layer_types"][i]; every layer has the SwiGLU MLP and
two zero-centred RMSNorms. Facts the code below relies on (see /tmp/research/qwen35.md):

- Every Qwen3_5RMSNorm computes x_normed * (1 + w): the converter adds 1 to every tensor whose
  name ends in "norm.weight" (input/post_attention layernorms, q_norm, k_norm, model.norm), except
  linear_attn.norm.weight (Qwen3_5RMSNormGated, plain x_normed * w * silu(z)).
- self_attn.q_proj has 2 * n_head * head_dim rows, per head [query(head_dim), gate(head_dim)]
  interleaved; llama.cpp keeps that layout (attn_q, views at offsets 0 and head_dim): no transform.
  The attention output is multiplied by sigmoid(gate) before o_proj.
- Linear attention with linear_num_value_heads > linear_num_key_heads: HF stores V heads grouped
  by K head (V head h uses K head h // (nv/nk)); llama.cpp wants them tiled (V head h' uses K head
  h' % nk). The converter reorders the V-head axis everywhere it appears (v_head_perm below):
  rows of the V part of in_proj_qkv and of conv1d, rows of in_proj_z, in_proj_a, in_proj_b,
  entries of A_log and dt_bias, columns of out_proj.
- A_log -> ssm_a = -exp(A_log); dt_bias -> ssm_dt.bias; conv1d.weight [C, 1, K] -> [C, K] (kept F32
  even in an F16 model, like the converter and llama-quant).
- llama.cpp derives both linear head sizes from ssm.state_size: linear_key_head_dim must equal
  linear_value_head_dim.
- RoPE: interleaved M-RoPE over the first int(head_dim * partial_rotary_factor) dims; for text all
  three position components are equal, so it is plain rotate-half partial RoPE. llama.cpp (IMROPE)
  needs rope.dimension_sections that map every rotary pair to t/h/w (else the pair gets the 4th
  position component, 0 for text): _mrope_section picks them like Qwen's [11, 11, 10].

Sizes (tiny_config): linear_key_head_dim = linear_value_head_dim = hidden_size // 2 unless given,
linear_num_key_heads = 2, linear_num_value_heads = 6 (3 V heads per K head: the reorder
permutation [0, 3, 1, 4, 2, 5] is not its own inverse). Every matrix row length (input size) is
then hidden_size, intermediate_size, num_attention_heads * head_dim or the value dim
3 * hidden_size: with hidden_size=256, intermediate_size=512, num_attention_heads=4, head_dim=64
all are multiples of 256. Layers follow full_attention_interval = 2 (linear, full, linear, full):
layer 1 is a full-attention layer, as the per-layer rank/alpha patterns of the tests expect.
"""
from __future__ import annotations

import copy

import gguf
import numpy as np

from . import _common as C

ARCH = "qwen35"

# HF module name -> path inside model.layers.{i}. Full-attention modules exist on full-attention
# layers only, linear_attn ones on linear-attention layers only (the PEFT writer skips layers
# where a module does not exist). linear_attn.conv1d (nn.Conv1d, depthwise) is not a LoRA target
# (PEFT only allows it with r divisible by the channel count; llama.cpp applies no LoRA to it).
LORA_MODULES = {
    "q_proj": ("self_attn.q_proj",),
    "k_proj": ("self_attn.k_proj",),
    "v_proj": ("self_attn.v_proj",),
    "o_proj": ("self_attn.o_proj",),
    "in_proj_qkv": ("linear_attn.in_proj_qkv",),
    "in_proj_z": ("linear_attn.in_proj_z",),
    "in_proj_b": ("linear_attn.in_proj_b",),
    "in_proj_a": ("linear_attn.in_proj_a",),
    "out_proj": ("linear_attn.out_proj",),
    "gate_proj": ("mlp.gate_proj",),
    "up_proj": ("mlp.up_proj",),
    "down_proj": ("mlp.down_proj",),
}

# GGUF tensor stem inside blk.{i}. for each LoRA module (gguf.get_tensor_name_map(QWEN35)).
GGUF_STEMS = {
    **C.LLAMA_GGUF_STEMS,
    "in_proj_qkv": "attn_qkv",
    "in_proj_z": "attn_gate",
    "in_proj_b": "ssm_beta",
    "in_proj_a": "ssm_alpha",
    "out_proj": "ssm_out",
}


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------


def _mrope_section(rope_dim: int) -> list[int]:
    """[t, h, w] section sizes (in rotary pairs) covering rope_dim // 2 pairs under llama.cpp's
    interleaved M-RoPE: pair k uses t if k % 3 == 0, h if 1, w if 2 (for k < 3 * section)."""
    p = rope_dim // 2
    return [(p + 2) // 3, (p + 1) // 3, p // 3]


def layer_types(cfg: dict) -> list[str]:
    """HF Qwen3_5TextConfig: layer_types, else linear unless (i + 1) % full_attention_interval == 0."""
    if cfg.get("layer_types"):
        return list(cfg["layer_types"])
    interval = cfg.get("full_attention_interval", 4)
    return ["linear_attention" if (i + 1) % interval else "full_attention" for i in range(cfg["num_hidden_layers"])]


def is_linear(cfg: dict, il: int) -> bool:
    return layer_types(cfg)[il] == "linear_attention"


def rope_dim(cfg: dict) -> int:
    """Rotary dims per head: int(head_dim * partial_rotary_factor) (HF and the converter)."""
    return int(cfg["head_dim"] * cfg["rope_parameters"].get("partial_rotary_factor", 0.25))


def tiny_config(**overrides) -> dict:
    """Tiny Qwen3_5TextConfig-style dict. Keys that matter for the shapes: hidden_size,
    intermediate_size, num_attention_heads, num_key_value_heads, head_dim (full attention; q_proj
    has 2 * heads * head_dim rows), linear_num_key_heads, linear_num_value_heads,
    linear_key_head_dim = linear_value_head_dim (default hidden_size // 2), linear_conv_kernel_dim,
    num_hidden_layers + full_attention_interval (or an explicit layer_types), vocab_size,
    tie_word_embeddings. rope_parameters (rope_theta, partial_rotary_factor, mrope_section) are
    re-derived from head_dim unless given."""
    cfg = {
        "architectures": ["Qwen3_5ForCausalLM"],
        "model_type": "qwen3_5_text",
        "vocab_size": 288,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 256,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "full_attention_interval": 2,
        "linear_conv_kernel_dim": 4,
        "linear_num_key_heads": 2,
        "linear_num_value_heads": 6,
    }
    cfg.update(overrides)
    for key in ("linear_key_head_dim", "linear_value_head_dim"):
        cfg.setdefault(key, cfg["hidden_size"] // 2)
    if "layer_types" not in overrides:
        cfg["layer_types"] = layer_types({k: v for k, v in cfg.items() if k != "layer_types"})
    rp = copy.deepcopy(overrides.get("rope_parameters") or {})
    rp.setdefault("rope_type", "default")
    rp.setdefault("rope_theta", 10000000.0)
    rp.setdefault("partial_rotary_factor", 0.25)
    rp.setdefault("mrope_interleaved", True)
    rp.setdefault("mrope_section", _mrope_section(int(cfg["head_dim"] * rp["partial_rotary_factor"])))
    cfg["rope_parameters"] = rp
    if cfg["linear_key_head_dim"] != cfg["linear_value_head_dim"]:
        raise ValueError("llama.cpp's qwen35 needs linear_key_head_dim == linear_value_head_dim")
    if cfg["linear_num_value_heads"] % cfg["linear_num_key_heads"]:
        raise ValueError("linear_num_value_heads must be a multiple of linear_num_key_heads")
    return cfg


def _dims(cfg: dict):
    nk, nv = cfg["linear_num_key_heads"], cfg["linear_num_value_heads"]
    dk, dv = cfg["linear_key_head_dim"], cfg["linear_value_head_dim"]
    return nk, nv, dk, dv, nk * dk, nv * dv  # ..., key_dim, value_dim


# ---------------------------------------------------------------------------------------------
# the converter's V-head reorder (conversion/qwen.py _LinearAttentionVReorderBase)
# ---------------------------------------------------------------------------------------------


def v_head_perm(cfg: dict, head_dim: int) -> np.ndarray:
    """Index array idx (length nv * head_dim): GGUF row j = HF row idx[j] of a V-head axis.

    idx = arange(n).reshape(nk, nv/nk, head_dim).transpose(1, 0, 2).reshape(n): GGUF V head
    r * nk + g holds HF V head g * (nv/nk) + r (grouped by K head -> tiled)."""
    nk, nv = cfg["linear_num_key_heads"], cfg["linear_num_value_heads"]
    n = nv * head_dim
    return np.arange(n).reshape(nk, nv // nk, head_dim).transpose(1, 0, 2).reshape(n)


def qkv_row_perm(cfg: dict) -> np.ndarray:
    """Row index array for in_proj_qkv / conv1d: q and k rows as they are, V rows v_head_perm."""
    _, _, _, dv, key_dim, _ = _dims(cfg)
    return np.concatenate([np.arange(2 * key_dim), 2 * key_dim + v_head_perm(cfg, dv)])


def out_row_perm(cfg: dict, module: str) -> np.ndarray | None:
    """GGUF row j = HF row perm[j] of the module's weight (None: rows unchanged)."""
    dv = cfg["linear_value_head_dim"]
    return {"in_proj_qkv": qkv_row_perm(cfg), "in_proj_z": v_head_perm(cfg, dv),
            "in_proj_a": v_head_perm(cfg, 1), "in_proj_b": v_head_perm(cfg, 1)}.get(module)


def in_col_perm(cfg: dict, module: str) -> np.ndarray | None:
    """GGUF column j = HF column perm[j] of the module's weight (None: columns unchanged)."""
    return v_head_perm(cfg, cfg["linear_value_head_dim"]) if module == "out_proj" else None


def lora_to_gguf(cfg: dict, module: str, A: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PEFT lora_A [r, in], lora_B [out, r] of `module` -> the GGUF .lora_a [r, in], .lora_b
    [out, r] (numpy shapes) that convert_lora_to_gguf.py writes: W' = B' A' is the converter's
    transform of W = B A (rows of B and/or columns of A permuted; nothing else for qwen35)."""
    rows, cols = out_row_perm(cfg, module), in_col_perm(cfg, module)
    if rows is not None:
        B = B[rows]
    if cols is not None:
        A = A[:, cols]
    return A, B


# ---------------------------------------------------------------------------------------------
# random weights
# ---------------------------------------------------------------------------------------------


def random_weights(cfg: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    H, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    nk, nv, dk, dv, key_dim, value_dim = _dims(cfg)
    K = cfg["linear_conv_kernel_dim"]

    def lin(out_f, in_f, gain=1.0):
        return C.lin_weight(rng, out_f, in_f, gain)

    def norm(dim, neutral=0.0):  # zero-centred Qwen3_5RMSNorm: neutral 0; gated norm: neutral 1
        return C.norm_weight(rng, dim, neutral)

    w: dict[str, np.ndarray] = {"model.embed_tokens.weight": C.randn(rng, (V, H), 1.0)}
    for il in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{il}."
        w[p + "input_layernorm.weight"] = norm(H)
        if is_linear(cfg, il):
            a = p + "linear_attn."
            w[a + "in_proj_qkv.weight"] = lin(2 * key_dim + value_dim, H)
            w[a + "in_proj_z.weight"] = lin(value_dim, H)
            w[a + "in_proj_b.weight"] = lin(nv, H)
            w[a + "in_proj_a.weight"] = lin(nv, H)
            # depthwise causal conv: [conv_dim, 1, K] like nn.Conv1d(groups=conv_dim)
            w[a + "conv1d.weight"] = (rng.standard_normal((2 * key_dim + value_dim, 1, K)) * 0.6).astype(np.float32)
            w[a + "dt_bias"] = (0.5 + 0.5 * rng.standard_normal(nv)).astype(np.float32)
            # A = exp(A_log) in [0.2, 3]: decays that keep a few tokens of memory
            w[a + "A_log"] = np.log(rng.uniform(0.2, 3.0, nv)).astype(np.float32)
            w[a + "norm.weight"] = norm(dv, neutral=1.0)
            w[a + "out_proj.weight"] = lin(H, value_dim)
        else:
            s = p + "self_attn."
            w[s + "q_proj.weight"] = lin(2 * nh * hd, H)
            w[s + "k_proj.weight"] = lin(nkv * hd, H)
            w[s + "v_proj.weight"] = lin(nkv * hd, H)
            w[s + "o_proj.weight"] = lin(H, nh * hd)
            w[s + "q_norm.weight"] = norm(hd)
            w[s + "k_norm.weight"] = norm(hd)
        w[p + "post_attention_layernorm.weight"] = norm(H)
        w[p + "mlp.gate_proj.weight"] = lin(I, H)
        w[p + "mlp.up_proj.weight"] = lin(I, H)
        w[p + "mlp.down_proj.weight"] = lin(H, I)
    w["model.norm.weight"] = norm(H)
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = lin(V, H, 2.0)
    return w


# ---------------------------------------------------------------------------------------------
# GGUF writing (what convert_hf_to_gguf.py writes for Qwen3_5ForCausalLM)
# ---------------------------------------------------------------------------------------------


def gguf_tensors(cfg: dict, weights: dict[str, np.ndarray], arch: str = ARCH) -> dict[str, np.ndarray]:
    """GGUF name -> array (numpy layout), with every transform of the converter applied."""
    hf: dict[str, np.ndarray] = {}
    dv = cfg["linear_value_head_dim"]
    for name, data in weights.items():
        if name == "lm_head.weight" and cfg["tie_word_embeddings"]:
            continue
        data = np.asarray(data, dtype=np.float32)
        if ".linear_attn." in name:
            # _LinearAttentionVReorderBase.modify_tensors (V-head reorder) ...
            if ".in_proj_qkv." in name:
                data = data[qkv_row_perm(cfg)]
            elif ".in_proj_z." in name:
                data = data[v_head_perm(cfg, dv)]
            elif ".in_proj_b." in name or ".in_proj_a." in name:
                data = data[v_head_perm(cfg, 1)]
            elif name.endswith(".A_log") or name.endswith(".dt_bias"):
                data = data[v_head_perm(cfg, 1)]
            elif ".conv1d." in name:
                data = data.reshape(data.shape[0], -1)[qkv_row_perm(cfg)]  # squeeze [C, 1, K] -> [C, K]
            elif ".out_proj." in name:
                data = data[:, v_head_perm(cfg, dv)]
            # ... then Qwen3NextModel.modify_tensors (value transforms / renames)
            if name.endswith(".A_log"):
                data = -np.exp(data.astype(np.float64)).astype(np.float32)
            elif name.endswith(".dt_bias"):
                name = name[: -len(".dt_bias")] + ".dt_proj.bias"
        if name.endswith("norm.weight") and not name.endswith("linear_attn.norm.weight"):
            data = data + np.float32(1.0)
        hf[name] = data
    return C.gguf_tensor_names(arch, cfg["num_hidden_layers"], hf)


def _gguf_dtype(name: str, arr: np.ndarray, dtype: str) -> np.ndarray:
    # the converter keeps 1-D tensors, *_norm.weight and ssm_conv1d in F32
    if name.endswith(".ssm_conv1d.weight"):
        return np.ascontiguousarray(arr, dtype=np.float32)
    return C.as_gguf_dtype(arr, dtype)


def write_gguf(path, cfg: dict, weights: dict[str, np.ndarray], dtype: str = "f32", *, arch: str = ARCH,
               extra_kv=None, extra_tensors: dict | None = None) -> None:
    """The GGUF of `arch` (qwen35; qwen35moe passes its own name, keys and stacked expert tensors)."""
    C.check_dtype(dtype)
    nk, nv, dk, dv, key_dim, value_dim = _dims(cfg)
    rp = cfg["rope_parameters"]
    wr = gguf.GGUFWriter(str(path), arch)
    wr.add_name("tiny-qwen35-interop")
    # TextModel.set_gguf_parameters
    wr.add_block_count(cfg["num_hidden_layers"])
    wr.add_context_length(cfg["max_position_embeddings"])
    wr.add_embedding_length(cfg["hidden_size"])
    wr.add_feed_forward_length(cfg["intermediate_size"])
    wr.add_head_count(cfg["num_attention_heads"])
    wr.add_head_count_kv(cfg["num_key_value_heads"])
    sections = list(rp["mrope_section"]) + [0] * (4 - len(rp["mrope_section"]))
    wr.add_rope_dimension_sections(sections[:4])
    wr.add_rope_freq_base(float(rp["rope_theta"]))
    wr.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    wr.add_key_length(cfg["head_dim"])
    wr.add_value_length(cfg["head_dim"])
    wr.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    # Qwen3NextModel.set_gguf_parameters
    wr.add_ssm_conv_kernel(cfg["linear_conv_kernel_dim"])
    wr.add_ssm_state_size(dk)
    wr.add_ssm_group_count(nk)
    wr.add_ssm_time_step_rank(nv)
    wr.add_ssm_inner_size(value_dim)
    # add_recurrent_layers (Keys.Attention.RECURRENT_LAYERS; both missing from the gguf 0.19
    # package): one bool per layer, true for a linear-attention layer
    wr.add_array(f"{arch}.attention.recurrent_layers", [t == "linear_attention" for t in layer_types(cfg)])
    wr.add_full_attention_interval(int(cfg.get("full_attention_interval", 4)))
    wr.add_rope_dimension_count(rope_dim(cfg))
    if extra_kv is not None:
        extra_kv(wr)
    C.add_no_vocab_tokenizer(wr, cfg["vocab_size"])
    tensors = gguf_tensors(cfg, weights, arch)
    tensors.update(extra_tensors or {})
    for name, arr in tensors.items():
        wr.add_tensor(name, _gguf_dtype(name, arr, dtype))
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()


# ---------------------------------------------------------------------------------------------
# float64 forward pass (transformers semantics)
# ---------------------------------------------------------------------------------------------


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _l2norm(x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """transformers' l2norm (FLA): x * rsqrt(sum(x^2) + eps) over the last axis."""
    return x / np.sqrt(np.sum(x * x, axis=-1, keepdims=True) + eps)


def _gated_delta_net(cfg: dict, g, h: np.ndarray) -> np.ndarray:
    """Qwen3_5GatedDeltaNet.forward (no cache), recurrent form of the gated delta rule."""
    n = h.shape[0]
    nk, nv, dk, dv, key_dim, value_dim = _dims(cfg)
    eps = cfg["rms_norm_eps"]
    mixed = C.linear(h, g("linear_attn.in_proj_qkv.weight"))  # [n, conv_dim]
    z = C.linear(h, g("linear_attn.in_proj_z.weight")).reshape(n, nv, dv)
    b = C.linear(h, g("linear_attn.in_proj_b.weight"))  # [n, nv]
    a = C.linear(h, g("linear_attn.in_proj_a.weight"))
    # causal depthwise conv1d (padding K-1, first n outputs) + SiLU
    wconv = g("linear_attn.conv1d.weight").astype(np.float64)[:, 0, :]  # [conv_dim, K]
    K = wconv.shape[1]
    padded = np.concatenate([np.zeros((K - 1, mixed.shape[1])), mixed], axis=0)
    conv = sum(padded[k:k + n] * wconv[:, k] for k in range(K))
    mixed = C.silu(conv)
    q = mixed[:, :key_dim].reshape(n, nk, dk)
    k = mixed[:, key_dim:2 * key_dim].reshape(n, nk, dk)
    v = mixed[:, 2 * key_dim:].reshape(n, nv, dv)
    beta = _sigmoid(b)
    decay = -np.exp(g("linear_attn.A_log").astype(np.float64)) * _softplus(a + g("linear_attn.dt_bias"))
    # each q/k head serves nv/nk consecutive v heads (repeat_interleave)
    q = np.repeat(q, nv // nk, axis=1)
    k = np.repeat(k, nv // nk, axis=1)
    q = _l2norm(q) * dk ** -0.5
    k = _l2norm(k)
    state = np.zeros((nv, dk, dv))
    out = np.zeros((n, nv, dv))
    for t in range(n):
        state = state * np.exp(decay[t])[:, None, None]
        kv_mem = np.einsum("hkv,hk->hv", state, k[t])
        delta = (v[t] - kv_mem) * beta[t][:, None]
        state = state + k[t][:, :, None] * delta[:, None, :]
        out[t] = np.einsum("hkv,hk->hv", state, q[t])
    # Qwen3_5RMSNormGated: rms_norm(out) * w * silu(z), per head
    normed = C.rms_norm(out, g("linear_attn.norm.weight"), eps) * C.silu(z)
    return C.linear(normed.reshape(n, value_dim), g("linear_attn.out_proj.weight"))


def _attention(cfg: dict, g, h: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Qwen3_5Attention.forward: q_proj -> per head [query, gate]; q/k norms; partial RoPE;
    causal GQA attention; times sigmoid(gate); o_proj."""
    n = h.shape[0]
    nh, nkv, hd, eps = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"], cfg["rms_norm_eps"]
    qg = C.linear(h, g("self_attn.q_proj.weight")).reshape(n, nh, 2 * hd)
    q, gate = qg[..., :hd], qg[..., hd:].reshape(n, nh * hd)
    q = C.rms_norm(q, g("self_attn.q_norm.weight"), eps, plus_one=True)
    k = C.rms_norm(C.linear(h, g("self_attn.k_proj.weight")).reshape(n, nkv, hd), g("self_attn.k_norm.weight"),
                   eps, plus_one=True)
    v = C.linear(h, g("self_attn.v_proj.weight")).reshape(n, nkv, hd)
    theta = cfg["rope_parameters"]["rope_theta"]
    q = C.rope_rotate_half(q, pos, theta, rope_dim(cfg))
    k = C.rope_rotate_half(k, pos, theta, rope_dim(cfg))
    o = C.causal_attention(q, k, v, hd ** -0.5) * _sigmoid(gate)
    return C.linear(o, g("self_attn.o_proj.weight"))


def forward(cfg: dict, weights: dict[str, np.ndarray], tokens: list[int], mlp=None) -> np.ndarray:
    """mlp: (il, h) -> the MLP output replacing the dense one (qwen35moe's sparse block)."""
    eps, n = cfg["rms_norm_eps"], len(tokens)
    pos = np.arange(n)
    emb = weights["model.embed_tokens.weight"]
    x = emb.astype(np.float64)[np.asarray(tokens)]
    for il in range(cfg["num_hidden_layers"]):
        g = lambda k, il=il: weights[f"model.layers.{il}.{k}"]  # noqa: E731
        h = C.rms_norm(x, g("input_layernorm.weight"), eps, plus_one=True)
        x = x + (_gated_delta_net(cfg, g, h) if is_linear(cfg, il) else _attention(cfg, g, h, pos))
        h = C.rms_norm(x, g("post_attention_layernorm.weight"), eps, plus_one=True)
        if mlp is not None:
            x = x + mlp(il, h)
            continue
        x = x + C.linear(C.silu(C.linear(h, g("mlp.gate_proj.weight"))) * C.linear(h, g("mlp.up_proj.weight")),
                         g("mlp.down_proj.weight"))
    x = C.rms_norm(x, weights["model.norm.weight"], eps, plus_one=True)
    return C.linear(x, weights["lm_head.weight"] if "lm_head.weight" in weights else emb)
