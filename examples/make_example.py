"""Writes the example shipped in examples/: a PEFT LoRA adapter shaped for TinyLlama-1.1B-Chat
(q_proj and v_proj, r=8, alpha=16, bfloat16, seeded random values, so it changes the model but
teaches it nothing) and the base model's config.json. Run with any Python that has numpy:
python examples/make_example.py"""
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
BASE = {
    "_name_or_path": "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
    "architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
    "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 32000,
    "max_position_embeddings": 2048, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16",
}
CONFIG = {
    "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": BASE["_name_or_path"],
    "r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"],
    "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
    "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {}, "inference_mode": True,
}


def bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (round to nearest even), as uint16 viewed by safetensors' BF16."""
    bits = x.astype(np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def main() -> None:
    rng = np.random.default_rng(2026)
    r, hidden = CONFIG["r"], BASE["hidden_size"]
    kv = BASE["num_key_value_heads"] * hidden // BASE["num_attention_heads"]
    tensors = {}
    for i in range(BASE["num_hidden_layers"]):
        for module, out in (("q_proj", hidden), ("v_proj", kv)):
            key = f"base_model.model.model.layers.{i}.self_attn.{module}"
            tensors[f"{key}.lora_A.weight"] = rng.normal(0, 0.02, (r, hidden))
            tensors[f"{key}.lora_B.weight"] = rng.normal(0, 0.005, (out, r))
    adapter = HERE / "tinyllama-adapter"
    adapter.mkdir(exist_ok=True)
    (adapter / "adapter_config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    # numpy has no bfloat16 dtype: write the header ourselves around the uint16 bits.
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, value in tensors.items():
        data = bf16(value).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(value.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(adapter / "adapter_model.safetensors", "wb") as f:
        f.write(len(head).to_bytes(8, "little") + head + b"".join(blobs))
    base = HERE / "tinyllama-base"
    base.mkdir(exist_ok=True)
    (base / "config.json").write_text(json.dumps(BASE, indent=2) + "\n")


if __name__ == "__main__":
    main()
