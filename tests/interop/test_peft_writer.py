"""Self-checks of the test-side PEFT writer (the reference must be right before it judges)."""
from __future__ import annotations

import json
import struct

import numpy as np
from safetensors import safe_open

import peft_lora


def test_bf16_rounding_is_nearest_even():
    x = np.array([1.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, -2.5, 1 + 2 ** -8 + 2 ** -20], dtype=np.float32)
    bits = peft_lora.f32_to_bf16_bits(x)
    # ties go to the even mantissa; above-tie rounds up
    assert bits.tolist() == [0x3F80, 0x3F80, 0x3F82, 0xC020, 0x3F81]
    assert np.array_equal(peft_lora.bf16_bits_to_f32(bits), np.array([1.0, 1.0, 1 + 2 ** -6, -2.5, 1 + 2 ** -7], np.float32))


def test_bf16_safetensors_file_is_valid(tmp_path):
    """The hand-written BF16 file parses with the reference safetensors library and holds the
    rounded bits in row-major order."""
    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    path = tmp_path / "a.safetensors"
    peft_lora.write_safetensors(path, {"m.lora_A.weight": x, "m.lora_B.weight": x[:2, :3]}, "bf16")
    with safe_open(str(path), "numpy") as f:
        assert sorted(f.keys()) == ["m.lora_A.weight", "m.lora_B.weight"]
        assert f.metadata() == {"format": "pt"}
        assert f.get_slice("m.lora_A.weight").get_dtype() == "BF16"
        assert f.get_slice("m.lora_A.weight").get_shape() == [3, 5]
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    start, end = header["m.lora_A.weight"]["data_offsets"]
    data = np.frombuffer(raw[8 + n + start:8 + n + end], dtype="<u2")
    assert np.array_equal(data, peft_lora.f32_to_bf16_bits(x).ravel())


def test_pattern_lookup_follows_peft():
    """PEFT matches ^(.*\\.)?(KEY)$ against the full module name; first key in dict order wins."""
    name = "model.layers.1.self_attn.o_proj"
    assert peft_lora.pattern_lookup({"o_proj": 4}, name) == 4
    assert peft_lora.pattern_lookup({"model.layers.1.self_attn.o_proj": 12}, name) == 12
    assert peft_lora.pattern_lookup({r"layers\.1\.self_attn\.(q|o)_proj": 6}, name) == 6
    assert peft_lora.pattern_lookup({"proj": 4}, name) is None          # no partial-name match
    assert peft_lora.pattern_lookup({"layers.0.self_attn.o_proj": 4}, name) is None
    assert peft_lora.pattern_lookup({"o_proj": 4, "model.layers.1.self_attn.o_proj": 12}, name) == 4
