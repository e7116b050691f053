"""Writes the example shipped in examples/: a tiny Llama base model as a Q4_K_M GGUF and a PEFT LoRA
adapter that fits it, both seeded random values (they change the model but teach it nothing).

    examples/tiny-llama-q4_k_m.gguf   llama architecture, 4 layers, hidden 256, 4 heads (head_dim 64),
                                      2 KV heads, MLP 512, a 512-token SentencePiece-style vocabulary
                                      (byte fallback, BPE pieces learnt from CORPUS below, ChatML
                                      <|im_start|> / <|im_end|>) and a ChatML chat template. Tensors
                                      in the types `llama-quantize Q4_K_M` gives this shape: Q4_K,
                                      Q6_K for output and for attn_v / ffn_down in layers 2 and 3,
                                      norms F32. 1.6 MB.
    examples/tiny-llama-adapter/      adapter_config.json + adapter_model.safetensors: LoRA on q_proj
                                      and v_proj of every layer, r=8, lora_alpha=16, bfloat16, so a
                                      merge touches both Q4_K and Q6_K tensors.

Run from the repository root with any Python that has numpy and the `gguf` package, for instance
the interop suite's venv:

    tests/interop/.venv/bin/python examples/make_example.py

The output is the same bytes on every run (fixed seed, deterministic quantizer). The quantizer is a
plain one written here (per-sub-block min/max, not llama.cpp's search for the best scales): any
valid Q4_K / Q6_K encoding serves for random weights, and the gguf package can only read those types.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import gguf
import numpy as np

HERE = Path(__file__).resolve().parent
BASE_FILE = HERE / "tiny-llama-q4_k_m.gguf"
ADAPTER_DIR = HERE / "tiny-llama-adapter"
SEED = 2026

# Hugging Face names, as a transformers LlamaConfig would carry them. Every matrix row is a whole
# number of 256-value K-quant super-blocks.
CONFIG = {
    "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 64, "vocab_size": 512, "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
}
ADAPTER_CONFIG = {
    "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "ollama-tools/tiny-llama-example",
    "r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"],
    "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
    "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {}, "inference_mode": True,
}
# ||scale * B @ A|| about this share of ||W|| per module: a change well above the base's Q4_K noise.
ADAPTER_STRENGTH = 0.5

# What the tokenizer learns its pieces from (written for this example).
CORPUS = """
You are a pirate. Ahoy, matey! Where is the treasure? The treasure is buried on the island, under
the old palm tree, where the parrot sings at night. The captain of the ship keeps the map in his
coat, and the crew sails the sea in search of gold and silver. A good pirate knows the wind, the
stars and the tides. The model answers the user, and the assistant speaks like a pirate to every
user who asks a question. This tiny model was made for an example: it runs in llama.cpp and in
Ollama, and its adapter is merged into the base at the base's own quantization. The weights are
random numbers, so the answers make no sense, but every step of the path is the real one.
"""
SPECIAL = ["<unk>", "<s>", "</s>"]
CHATML = ["<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
                 "+ '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                 "{% endif %}")


# ---------------------------------------------------------------------------------------------
# tokenizer: SentencePiece-style (llama.cpp's "llama" model): pieces with scores, byte fallback
# ---------------------------------------------------------------------------------------------


def learn_pieces(text: str, n_merges: int) -> tuple[list[str], list[str]]:
    """BPE over the corpus' words, each prefixed with SentencePiece's word marker U+2581: the merged
    pieces in merge order (llama.cpp merges the highest-scoring pair first, so a piece's score is
    minus its rank) and the single characters, most frequent first. Ties break on the strings, so
    the result does not depend on dict order."""
    words = Counter("\u2581" + w for w in text.split())
    split = {w: list(w) for w in words}
    chars = Counter()
    for w, n in words.items():
        for c in w:
            chars[c] += n
    merges: list[str] = []
    for _ in range(n_merges):
        pairs: Counter = Counter()
        for w, n in words.items():
            s = split[w]
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += n
        if not pairs:
            break
        (a, b), _ = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        merges.append(a + b)
        for w in words:
            s, out, i = split[w], [], 0
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            split[w] = out
    return merges, [c for c, _ in sorted(chars.items(), key=lambda kv: (-kv[1], kv[0]))]


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    """<unk> <s> </s>, the 256 byte tokens, learnt pieces, characters, then the ChatML tokens."""
    T = gguf.TokenType
    n_chars = len(set("".join("\u2581" + w for w in CORPUS.split())))
    n_merges = CONFIG["vocab_size"] - len(SPECIAL) - 256 - n_chars - len(CHATML)
    merges, chars = learn_pieces(CORPUS, n_merges)
    assert len(merges) == n_merges, "the corpus is too small for the vocabulary size"
    tokens = SPECIAL + [f"<0x{b:02X}>" for b in range(256)] + merges + chars + CHATML
    scores = [0.0] * (len(SPECIAL) + 256) + [-float(i) for i in range(len(merges) + len(chars))] + [0.0] * 2
    types = ([T.UNKNOWN, T.CONTROL, T.CONTROL] + [T.BYTE] * 256 + [T.NORMAL] * (len(merges) + len(chars))
             + [T.CONTROL] * len(CHATML))
    assert len(tokens) == len(set(tokens)) == CONFIG["vocab_size"]
    return tokens, scores, [int(t) for t in types]


# ---------------------------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------------------------


def random_weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Hugging Face names and layout, float32: projections with std 1/sqrt(fan_in), norms 1 + 0.1 N."""
    c = CONFIG
    h, ff, v, hd = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["head_dim"]

    def mat(rows, cols, gain=1.0):
        return (rng.standard_normal((rows, cols)) * gain / np.sqrt(cols)).astype(np.float32)

    def norm():
        return (1.0 + 0.1 * rng.standard_normal(h)).astype(np.float32)

    w = {"model.embed_tokens.weight": rng.standard_normal((v, h)).astype(np.float32)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm()
        w[p + "self_attn.q_proj.weight"] = mat(c["num_attention_heads"] * hd, h)
        w[p + "self_attn.k_proj.weight"] = mat(c["num_key_value_heads"] * hd, h)
        w[p + "self_attn.v_proj.weight"] = mat(c["num_key_value_heads"] * hd, h)
        w[p + "self_attn.o_proj.weight"] = mat(h, c["num_attention_heads"] * hd)
        w[p + "post_attention_layernorm.weight"] = norm()
        w[p + "mlp.gate_proj.weight"] = mat(ff, h)
        w[p + "mlp.up_proj.weight"] = mat(ff, h)
        w[p + "mlp.down_proj.weight"] = mat(h, ff)
    w["model.norm.weight"] = norm()
    w["lm_head.weight"] = mat(v, h, gain=2.0)
    return w


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter (LlamaModel.permute): q_proj / k_proj rows from Hugging Face's
    rotate-half order to GGUF's per-head interleaved order."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_NAMES = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def gguf_tensors(w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """GGUF names and layout, in the converter's order."""
    c = CONFIG
    out = {"token_embd.weight": w["model.embed_tokens.weight"]}
    for i in range(c["num_hidden_layers"]):
        for hf, stem in GGUF_NAMES.items():
            x = w[f"model.layers.{i}.{hf}.weight"]
            if hf == "self_attn.q_proj":
                x = permute_qk(x, c["num_attention_heads"])
            elif hf == "self_attn.k_proj":
                x = permute_qk(x, c["num_key_value_heads"])
            out[f"blk.{i}.{stem}.weight"] = x
    out["output_norm.weight"] = w["model.norm.weight"]
    out["output.weight"] = w["lm_head.weight"]
    return out


def q4_k_m_type(name: str) -> gguf.GGMLQuantizationType:
    """llama-quantize's Q4_K_M choice (src/llama-quant.cpp) for this model: Q6_K for the output
    matrix and for attn_v / ffn_down in the layers use_more_bits picks (the first and last eighth,
    every third between), Q4_K for the other matrices, F32 for norms."""
    Q = gguf.GGMLQuantizationType
    n = CONFIG["num_hidden_layers"]
    if name.endswith("_norm.weight"):
        return Q.F32
    if name == "output.weight":
        return Q.Q6_K
    if name.endswith(("attn_v.weight", "ffn_down.weight")):
        i = int(name.split(".")[1])
        if i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2:
            return Q.Q6_K
    return Q.Q4_K


# ---------------------------------------------------------------------------------------------
# K-quant encoders (block layouts of ggml-common.h; checked against gguf's decoders below)
# ---------------------------------------------------------------------------------------------


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """Q4_K: super-blocks of 256 = 8 sub-blocks of 32 values; value = d * sc * q - dmin * m with q in
    0..15 and 6-bit sc, m per sub-block. 144 bytes per block: d, dmin (f16), 12 bytes of packed
    scales and mins, 128 bytes of nibbles (sub-blocks 2k and 2k+1 share 32 bytes, low / high)."""
    blocks = x.astype(np.float32).reshape(-1, 8, 32)
    lo = np.minimum(blocks.min(axis=-1), 0.0)
    scale = (blocks.max(axis=-1) - lo) / 15.0
    d = (scale.max(axis=-1) / 63.0).astype(np.float16)
    dmin = ((-lo).max(axis=-1) / 63.0).astype(np.float16)
    d32, dmin32 = d.astype(np.float32)[:, None], dmin.astype(np.float32)[:, None]
    sc = np.clip(np.rint(np.divide(scale, d32, out=np.zeros_like(scale), where=d32 > 0)), 0, 63).astype(np.uint8)
    m = np.clip(np.rint(np.divide(-lo, dmin32, out=np.zeros_like(lo), where=dmin32 > 0)), 0, 63).astype(np.uint8)
    step = (d32 * sc)[..., None]
    offset = (dmin32 * m)[..., None]
    q = np.clip(np.rint(np.divide(blocks + offset, step, out=np.zeros_like(blocks), where=step > 0)), 0, 15)
    q = q.astype(np.uint8).reshape(-1, 4, 2, 32)
    packed = np.empty((blocks.shape[0], 12), dtype=np.uint8)
    packed[:, 0:4] = (sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6)
    packed[:, 4:8] = (m[:, :4] & 63) | ((m[:, 4:] >> 4) << 6)
    packed[:, 8:12] = (sc[:, 4:] & 15) | ((m[:, 4:] & 15) << 4)
    nibbles = (q[:, :, 0, :] | (q[:, :, 1, :] << 4)).reshape(-1, 128)
    return np.concatenate([d.view(np.uint8).reshape(-1, 2), dmin.view(np.uint8).reshape(-1, 2), packed, nibbles],
                          axis=1)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    """Q6_K: super-blocks of 256 = 16 sub-blocks of 16 values; value = d * sc * (q - 32), q 6-bit,
    sc int8. 210 bytes per block: 128 bytes of low nibbles, 64 of high bit pairs, 16 scales, d (f16)."""
    blocks = x.astype(np.float32).reshape(-1, 16, 16)
    scale = np.abs(blocks).max(axis=-1) / 31.0
    d = (scale.max(axis=-1) / 127.0).astype(np.float16)
    d32 = d.astype(np.float32)[:, None]
    sc = np.clip(np.rint(np.divide(scale, d32, out=np.zeros_like(scale), where=d32 > 0)), -128, 127).astype(np.int8)
    step = (d32 * sc)[..., None]
    q = np.clip(np.rint(np.divide(blocks, step, out=np.zeros_like(blocks), where=step != 0)), -32, 31)
    q = (q + 32).astype(np.uint8).reshape(-1, 2, 128)  # two halves of 128 values
    # In each half, value p < 64 keeps its low nibble in byte p's low half, value p >= 64 in byte
    # p - 64's high half; the two high bits of value 32 * k + l go to bits 2k, 2k + 1 of byte l.
    ql = (q[:, :, :64] & 15) | ((q[:, :, 64:] & 15) << 4)
    hi = (q >> 4).reshape(-1, 2, 4, 32)
    qh = hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)
    return np.concatenate([ql.reshape(-1, 128), qh.reshape(-1, 64), sc.view(np.uint8),
                           d.view(np.uint8).reshape(-1, 2)], axis=1)


ENCODERS = {gguf.GGMLQuantizationType.Q4_K: quantize_q4_k, gguf.GGMLQuantizationType.Q6_K: quantize_q6_k}


def encode(x: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """The tensor's bytes as [rows, bytes per row], after checking that the gguf package decodes
    them back to x within the type's usual error (a wrong layout would be far off)."""
    raw = ENCODERS[qtype](x).reshape(x.shape[0], -1)
    back = gguf.quants.dequantize(raw, qtype).reshape(x.shape)
    err = float(np.linalg.norm(back - x) / np.linalg.norm(x))
    assert err < {gguf.GGMLQuantizationType.Q4_K: 0.12, gguf.GGMLQuantizationType.Q6_K: 0.03}[qtype], (qtype, err)
    return raw


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------


def write_base(path: Path, weights: dict[str, np.ndarray]) -> None:
    c = CONFIG
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama-example")
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_block_count(c["num_hidden_layers"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(c["num_attention_heads"])
    w.add_head_count_kv(c["num_key_value_heads"])
    w.add_rope_dimension_count(c["head_dim"])
    w.add_rope_freq_base(c["rope_theta"])
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_vocab_size(c["vocab_size"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    tokens, scores, types = vocabulary()
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(tokens.index("<|im_end|>"))  # a ChatML turn ends the answer
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    # No space put before each piece of text: ChatML's turns start right after a special token, and
    # with the prefix a prompt would not read back as written.
    w.add_add_space_prefix(False)
    w.add_chat_template(CHAT_TEMPLATE)
    for name, x in gguf_tensors(weights).items():
        qtype = q4_k_m_type(name)
        if qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, x)
        else:
            w.add_tensor(name, encode(x, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (round to nearest even), as uint16: numpy has no bfloat16."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def write_adapter(path: Path, weights: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    """PEFT's file layout: base_model.model.<module>.lora_A.weight [r, in], lora_B.weight [out, r]."""
    r, alpha = ADAPTER_CONFIG["r"], ADAPTER_CONFIG["lora_alpha"]
    tensors = {}
    for i in range(CONFIG["num_hidden_layers"]):
        for module in ADAPTER_CONFIG["target_modules"]:
            key = f"model.layers.{i}.self_attn.{module}"
            out_f, in_f = weights[key + ".weight"].shape
            # (B @ A) entries have std sqrt(r) * std(B) / sqrt(in_f), W's 1 / sqrt(in_f)
            tensors[f"base_model.model.{key}.lora_A.weight"] = rng.standard_normal((r, in_f)) / np.sqrt(in_f)
            tensors[f"base_model.model.{key}.lora_B.weight"] = (
                rng.standard_normal((out_f, r)) * ADAPTER_STRENGTH / (alpha / r * np.sqrt(r)))
    path.mkdir(exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps(ADAPTER_CONFIG, indent=2) + "\n")
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, value in tensors.items():
        data = bf16_bits(value).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(value.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the format pads the header with spaces to 8 bytes
    with open(path / "adapter_model.safetensors", "wb") as f:
        f.write(len(head).to_bytes(8, "little") + head + b"".join(blobs))


def main() -> None:
    rng = np.random.default_rng(SEED)
    weights = random_weights(rng)
    write_base(BASE_FILE, weights)
    write_adapter(ADAPTER_DIR, weights, rng)
    print(f"wrote {BASE_FILE.relative_to(HERE.parent)} ({BASE_FILE.stat().st_size} bytes) and "
          f"{ADAPTER_DIR.relative_to(HERE.parent)}/")


if __name__ == "__main__":
    main()
