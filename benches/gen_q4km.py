#!/usr/bin/env python3
"""Fixtures for benches/merge.sh (random weights, valid formats).

  gen_q4km.py base OUT.gguf [--layers N]
      A Llama-3.1-8B-shaped GGUF (32 layers, hidden 4096, 32 heads / 8 KV heads, head_dim 128,
      ffn 14336, vocab 128256, untied output) with llama.cpp's Q4_K_M type mix, as Ollama's
      llama3.1:8b blob has it:
        token_embd Q4_K, output Q6_K, attn_q/attn_k/attn_output/ffn_gate/ffn_up Q4_K,
        attn_v and ffn_down Q6_K on the layers llama.cpp's `use_more_bits` picks (0-3, 28-31 and
        every third one between: 16 of 32), Q4_K on the others,
        norms and rope_freqs F32.
      Block data is random but valid: random quant bytes, with the f16 scales (d, dmin) set to small
      finite values so every dequantized value is finite and of weight-like size (|w| < ~0.2).
      Metadata: the llama.* hyper-parameters, rope (llama3 rope_freqs), and a placeholder "gpt2" BPE
      vocabulary of 128256 tokens and 280147 merges (Llama 3's counts), so the metadata is the size
      of a real one. Written tensor by tensor (peak memory ~ the largest tensor, 431 MB).

  gen_q4km.py adapter DIR [--layers N] [--rank 16] [--alpha 32]
      A PEFT LoRA adapter folder: r=16, lora_alpha 32, BF16, on q/k/v/o/gate/up/down of every layer
      (keys base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight, ...).
"""
import argparse
import json
import math
import os
import struct
import sys

import numpy as np

H, NH, NKV, HD, FFN, VOCAB = 4096, 32, 8, 128, 14336, 128256
KV = NKV * HD
N_MERGES = 280147
QK_K = 256
# bytes per 256-value super-block
BLOCK_BYTES = {"Q4_K": 144, "Q6_K": 210}


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's rule (src/llama-quant.cpp) for the Q6_K half of attn_v / ffn_down in Q4_K_M."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def llama3_rope_freqs() -> np.ndarray:
    """rope_freqs.weight as convert_hf_to_gguf.py computes it for Llama 3.1 (factor 8, 8192 original ctx)."""
    base, dim, factor, low, high, old_ctx = 500000.0, HD, 8.0, 1.0, 4.0, 8192
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def random_blocks(rng: np.random.Generator, qtype: str, rows: int, cols: int) -> np.ndarray:
    """[rows, cols / 256 * block_bytes] uint8 of valid random Q4_K / Q6_K super-blocks."""
    nb = cols // QK_K
    bb = BLOCK_BYTES[qtype]
    data = np.frombuffer(rng.bytes(rows * nb * bb), dtype=np.uint8).reshape(rows * nb, bb).copy()
    if qtype == "Q4_K":
        # block_q4_K: f16 d, f16 dmin, u8 scales[12] (6-bit scales/mins), u8 qs[128].
        # w = d * sc * q - dmin * m, sc/m <= 63, q <= 15.
        d = np.float16(2e-4).view(np.uint16)
        data[:, 0:2] = np.frombuffer(struct.pack("<H", int(d)), dtype=np.uint8)
        data[:, 2:4] = np.frombuffer(struct.pack("<H", int(d)), dtype=np.uint8)
    else:
        # block_q6_K: u8 ql[128], u8 qh[64], i8 scales[16], f16 d.  w = d * sc * (q - 32), |sc| <= 128.
        d = np.float16(5e-5).view(np.uint16)
        data[:, 208:210] = np.frombuffer(struct.pack("<H", int(d)), dtype=np.uint8)
    return data.reshape(rows, nb * bb)


def gen_base(path: str, layers: int, seed: int) -> None:
    import gguf
    from gguf import GGMLQuantizationType as Q

    rng = np.random.default_rng(seed)
    # (name, numpy-order shape [rows, cols], type)
    tensors = [("token_embd.weight", (VOCAB, H), "Q4_K"), ("rope_freqs.weight", (HD // 2,), "F32")]
    for i in range(layers):
        more = use_more_bits(i, layers)
        p = f"blk.{i}."
        tensors += [
            (p + "attn_norm.weight", (H,), "F32"),
            (p + "attn_q.weight", (NH * HD, H), "Q4_K"),
            (p + "attn_k.weight", (KV, H), "Q4_K"),
            (p + "attn_v.weight", (KV, H), "Q6_K" if more else "Q4_K"),
            (p + "attn_output.weight", (H, NH * HD), "Q4_K"),
            (p + "ffn_norm.weight", (H,), "F32"),
            (p + "ffn_gate.weight", (FFN, H), "Q4_K"),
            (p + "ffn_up.weight", (FFN, H), "Q4_K"),
            (p + "ffn_down.weight", (H, FFN), "Q6_K" if more else "Q4_K"),
        ]
    tensors += [("output_norm.weight", (H,), "F32"), ("output.weight", (VOCAB, H), "Q6_K")]

    tmp = path + ".tmp"
    w = gguf.GGUFWriter(tmp, "llama")
    w.add_type("model")
    w.add_name("Bench Llama 3.1 8B (random weights)")
    w.add_size_label("8B")
    w.add_block_count(layers)
    w.add_context_length(131072)
    w.add_embedding_length(H)
    w.add_feed_forward_length(FFN)
    w.add_head_count(NH)
    w.add_head_count_kv(NKV)
    w.add_key_length(HD)
    w.add_value_length(HD)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(HD)
    w.add_vocab_size(VOCAB)
    w.add_file_type(15)  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    w.add_quantization_version(2)
    # placeholder BPE vocabulary with Llama 3's sizes (nothing here tokenizes text with it)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list([f"<t{i}>" for i in range(VOCAB)])
    types = np.ones(VOCAB, dtype=np.int32)  # NORMAL
    types[128000:] = 3  # CONTROL, like Llama 3's reserved special tokens
    w.add_token_types(types.tolist())
    w.add_token_merges([f"<t{i % 128000}> <t{(i * 7 + 1) % 128000}>" for i in range(N_MERGES)])
    w.add_bos_token_id(128000)
    w.add_eos_token_id(128009)

    for name, shape, ty in tensors:
        if ty == "F32":
            w.add_tensor_info(name, shape, np.dtype(np.float32), 4 * int(np.prod(shape)))
        else:
            rows, cols = shape
            nbytes = rows * cols // QK_K * BLOCK_BYTES[ty]
            w.add_tensor_info(name, (rows, nbytes // rows), np.dtype(np.uint8), nbytes, raw_dtype=getattr(Q, ty))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    total = 0
    for n, (name, shape, ty) in enumerate(tensors):
        if name == "rope_freqs.weight":
            arr = llama3_rope_freqs()
        elif ty == "F32":
            arr = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            arr = random_blocks(rng, ty, *shape)
        w.write_tensor_data(arr)
        total += arr.nbytes
        del arr
        if n % 45 == 0:
            print(f"  {name}: {total / 1e9:.2f} GB written", file=sys.stderr)
    w.close()
    os.replace(tmp, path)
    print(f"wrote {path}: {len(tensors)} tensors, {os.path.getsize(path)} bytes", file=sys.stderr)


def bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits, round to nearest even (no NaN/Inf here)."""
    b = x.view(np.uint32)
    return ((b + (0x7FFF + ((b >> 16) & 1))) >> 16).astype("<u2")


def gen_adapter(adapter: str, layers: int, rank: int, alpha: int, seed: int) -> None:
    os.makedirs(adapter, exist_ok=True)
    modules = [  # (prefix, name, in, out)
        ("self_attn", "q_proj", H, NH * HD), ("self_attn", "k_proj", H, KV), ("self_attn", "v_proj", H, KV),
        ("self_attn", "o_proj", NH * HD, H), ("mlp", "gate_proj", H, FFN), ("mlp", "up_proj", H, FFN),
        ("mlp", "down_proj", FFN, H),
    ]
    with open(os.path.join(adapter, "adapter_config.json"), "w") as f:
        json.dump({
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha,
            "target_modules": [m[1] for m in modules], "base_model_name_or_path": "meta-llama/Llama-3.1-8B",
            "use_rslora": False, "use_dora": False, "bias": "none",
        }, f, indent=2)
    tensors = []
    for i in range(layers):
        for prefix, name, n_in, n_out in modules:
            k = f"base_model.model.model.layers.{i}.{prefix}.{name}"
            tensors.append((f"{k}.lora_A.weight", (rank, n_in), 0.02))
            tensors.append((f"{k}.lora_B.weight", (n_out, rank), 0.01))
    write_bf16_safetensors(os.path.join(adapter, "adapter_model.safetensors"), tensors, np.random.default_rng(seed))


def write_bf16_safetensors(path: str, tensors: list, rng: np.random.Generator) -> None:
    """(key, shape, std) -> normal BF16 values, written through a temporary file."""
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for key, shape, _ in tensors:
        n = 2 * shape[0] * shape[1]
        header[key] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hjson += b" " * (-len(hjson) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for _, shape, std in tensors:
            x = rng.standard_normal(shape, dtype=np.float32)
            x *= np.float32(std)
            f.write(bf16(x).tobytes())
    os.replace(tmp, path)
    print(f"wrote {path}: {len(tensors)} tensors, {os.path.getsize(path)} bytes", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["base", "adapter"])
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=int, default=32)
    ap.add_argument("--seed", type=int, default=20240723)
    a = ap.parse_args()
    if a.what == "base":
        gen_base(a.out, a.layers, a.seed)
    else:
        gen_adapter(a.out, a.layers, a.rank, a.alpha, a.seed + 1)


if __name__ == "__main__":
    main()
