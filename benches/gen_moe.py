"""Fixtures for a mixture-of-experts merge benchmark (random weights, valid formats).

    base:    a Qwen3-30B-A3B-shaped GGUF (arch qwen3moe: hidden 2048, 32 heads of 128, 4 KV heads,
             128 experts of 768 per layer, vocab 151936, untied output) with llama.cpp's Q4_K_M
             type mix for it (src/llama-quant.cpp): token_embd / attn_q / attn_k / attn_output and
             the gate and up experts Q4_K; attn_v and the down experts Q6_K on the "more bits"
             layers of a 48-layer model, Q4_K elsewhere; output Q6_K; the router and norms F32.
    adapter: a PEFT LoRA, r=16, alpha 32, BF16, as PEFT 0.21 saves target_parameters on the fused
             experts (`mlp.experts.base_layer` = gate_up_proj, `mlp.experts` = down_proj) plus
             q/k/v/o_proj: attention and every expert of every layer.

Usage: gen_moe.py base OUT.gguf --layers N | gen_moe.py adapter OUT_DIR --layers N
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import gguf
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from gen_q4km import BLOCK_BYTES, QK_K, random_blocks, use_more_bits, write_bf16_safetensors  # noqa: E402

H, NH, HD, NKV, E, F, VOCAB = 2048, 32, 128, 4, 128, 768, 151936
FULL_LAYERS = 48  # the Q4_K_M mix follows the real model's depth


def tensors_of(layers: int) -> list:
    out = [("token_embd.weight", (VOCAB, H), "Q4_K")]
    for i in range(layers):
        p, more = f"blk.{i}.", use_more_bits(i, FULL_LAYERS)
        out += [
            (p + "attn_norm.weight", (H,), "F32"),
            (p + "attn_q.weight", (NH * HD, H), "Q4_K"),
            (p + "attn_k.weight", (NKV * HD, H), "Q4_K"),
            (p + "attn_v.weight", (NKV * HD, H), "Q6_K" if more else "Q4_K"),
            (p + "attn_output.weight", (H, NH * HD), "Q4_K"),
            (p + "attn_q_norm.weight", (HD,), "F32"),
            (p + "attn_k_norm.weight", (HD,), "F32"),
            (p + "ffn_norm.weight", (H,), "F32"),
            (p + "ffn_gate_inp.weight", (E, H), "F32"),
            (p + "ffn_gate_exps.weight", (E, F, H), "Q4_K"),
            (p + "ffn_up_exps.weight", (E, F, H), "Q4_K"),
            (p + "ffn_down_exps.weight", (E, H, F), "Q6_K" if more else "Q4_K"),
        ]
    return out + [("output_norm.weight", (H,), "F32"), ("output.weight", (VOCAB, H), "Q6_K")]


def gen_base(path: str, layers: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    tensors = tensors_of(layers)
    tmp = path + ".tmp"
    w = gguf.GGUFWriter(tmp, "qwen3moe")
    w.add_name("Bench Qwen3 30B-A3B (random weights)")
    w.add_block_count(layers)
    w.add_context_length(40960)
    w.add_embedding_length(H)
    w.add_feed_forward_length(6144)
    w.add_head_count(NH)
    w.add_head_count_kv(NKV)
    w.add_key_length(HD)
    w.add_value_length(HD)
    w.add_rope_freq_base(1000000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_expert_count(E)
    w.add_expert_used_count(8)
    w.add_expert_feed_forward_length(F)
    w.add_vocab_size(VOCAB)
    w.add_file_type(15)  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    w.add_quantization_version(2)
    w.add_tokenizer_model("no_vocab")
    for name, shape, ty in tensors:
        if ty == "F32":
            w.add_tensor_info(name, shape, np.dtype(np.float32), 4 * int(np.prod(shape)))
        else:
            *lead, cols = shape
            nbytes = int(np.prod(shape)) // QK_K * BLOCK_BYTES[ty]
            byte_shape = (*lead, cols // QK_K * BLOCK_BYTES[ty])
            w.add_tensor_info(name, byte_shape, np.dtype(np.uint8), nbytes, raw_dtype=getattr(gguf.GGMLQuantizationType, ty))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, shape, ty in tensors:
        if ty == "F32":
            arr = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            *lead, cols = shape
            arr = random_blocks(rng, ty, int(np.prod(lead)), cols)
        w.write_tensor_data(arr)
        del arr
    w.close()
    os.replace(tmp, path)
    print(f"wrote {path}: {len(tensors)} tensors, {os.path.getsize(path)} bytes", file=sys.stderr)


def gen_adapter(adapter: str, layers: int, rank: int, alpha: int, seed: int) -> None:
    os.makedirs(adapter, exist_ok=True)
    with open(os.path.join(adapter, "adapter_config.json"), "w") as f:
        json.dump({
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha, "bias": "none",
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
            "target_parameters": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
            "base_model_name_or_path": "Qwen/Qwen3-30B-A3B", "peft_version": "0.21.2",
        }, f, indent=2)
    pairs = []
    for i in range(layers):
        p = f"base_model.model.model.layers.{i}."
        pairs += [(p + "self_attn.q_proj", H, NH * HD, rank), (p + "self_attn.k_proj", H, NKV * HD, rank),
                  (p + "self_attn.v_proj", H, NKV * HD, rank), (p + "self_attn.o_proj", NH * HD, H, rank),
                  (p + "mlp.experts.base_layer", H, 2 * F, rank * E), (p + "mlp.experts", F, H, rank * E)]
    tensors = []
    for key, n_in, n_out, r in pairs:
        tensors += [(f"{key}.lora_A.weight", (r, n_in), 0.02), (f"{key}.lora_B.weight", (n_out, r), 0.01)]
    path = os.path.join(adapter, "adapter_model.safetensors")
    write_bf16_safetensors(path, tensors, np.random.default_rng(seed))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["base", "adapter"])
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seed", type=int, default=20251127)
    a = ap.parse_args()
    if a.what == "base":
        gen_base(a.out, a.layers, a.seed)
    else:
        gen_adapter(a.out, a.layers, 16, 32, a.seed + 1)


if __name__ == "__main__":
    main()
