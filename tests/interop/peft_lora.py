"""Write Hugging Face PEFT LoRA adapters and merge them with PEFT semantics.

Independent of the Rust code under test: the merge follows PEFT's documented behaviour
(`W' = W + scale * B @ A`, scale = alpha / r or alpha / sqrt(r) with rsLoRA, rank_pattern /
alpha_pattern matched like peft.utils.other.get_pattern_key: the first pattern key K, in dict
order, with re.match(rf"(.*\\.)?({K})$", full_module_name)).
"""
from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

EMBED = "model.embed_tokens"


# ---------------------------------------------------------------------------------------------
# dtype helpers
# ---------------------------------------------------------------------------------------------


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even (finite inputs)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    return ((bits + rounding) >> 16).astype(np.uint16)


def bf16_bits_to_f32(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


def round_to(x: np.ndarray, dtype: str) -> np.ndarray:
    """The float32 values a tensor has after being stored as `dtype` (what the reference must use)."""
    x = np.asarray(x, dtype=np.float32)
    if dtype == "f32":
        return x
    if dtype == "f16":
        return x.astype(np.float16).astype(np.float32)
    if dtype == "bf16":
        return bf16_bits_to_f32(f32_to_bf16_bits(x))
    raise ValueError(dtype)


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], dtype: str) -> None:
    """F32/F16 through the safetensors library; BF16 (which numpy lacks) written by hand."""
    metadata = {"format": "pt"}
    if dtype in ("f32", "f16"):
        np_dtype = np.float32 if dtype == "f32" else np.float16
        save_file({k: np.ascontiguousarray(v, dtype=np_dtype) for k, v in tensors.items()},
                  str(path), metadata=metadata)
        return
    assert dtype == "bf16"
    header: dict = {"__metadata__": metadata}
    blobs, offset = [], 0
    for name in sorted(tensors):
        raw = f32_to_bf16_bits(tensors[name]).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hjson += b" " * ((8 - len(hjson) % 8) % 8)  # the format pads the header with spaces
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in blobs:
            f.write(b)


# ---------------------------------------------------------------------------------------------
# adapter description, writer and merge
# ---------------------------------------------------------------------------------------------


def pattern_lookup(patterns: dict, module_name: str):
    """PEFT's get_pattern_key: first key K (dict order) with ^(.*\\.)?(K)$ matching the name."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module_name):
            return value
    return None


@dataclass
class LoraModule:
    name: str            # full HF module name, e.g. "model.layers.0.self_attn.q_proj"
    A: np.ndarray        # [r, in]   (embedding: lora_embedding_A [r, vocab]) as stored (rounded)
    B: np.ndarray        # [out, r]  (embedding: lora_embedding_B [hidden, r])
    r: int
    alpha: float
    scale: float         # the PEFT scale for this module

    @property
    def is_embedding(self) -> bool:
        return self.name == EMBED

    def delta(self, scale: float | None = None) -> np.ndarray:
        """PEFT delta for the module's weight in HF layout, optionally with another scale."""
        s = self.scale if scale is None else scale
        d = s * (self.B.astype(np.float64) @ self.A.astype(np.float64))
        return d.T if self.is_embedding else d  # embedding weight is [vocab, hidden]


@dataclass
class PeftAdapter:
    path: Path
    config: dict
    modules: list[LoraModule] = field(default_factory=list)


def module_names(arch, cfg: dict, targets) -> list[str]:
    """Full module names PEFT would wrap for `targets` (names matched as name or '*.name')."""
    out = []
    for i in range(cfg["num_hidden_layers"]):
        for mod, how in arch.LORA_MODULES.items():
            path = how if isinstance(how, str) else how[0]
            # `{e}` in a path: one module per expert (per-expert modules, transformers v4)
            n = cfg.get("num_experts") or cfg.get("num_local_experts") or 0
            paths = [path.format(e=e) for e in range(n)] if "{e}" in path else [path]
            for p in paths:
                full = f"model.layers.{i}.{p}"
                if any(full == t or full.endswith("." + t) for t in targets):
                    out.append(full)
    if "embed_tokens" in targets:
        out.append(EMBED)
    if "lm_head" in targets:
        out.append("lm_head")
    return out


def write_peft_adapter(path: Path, arch, cfg: dict, weights: dict, *, r: int, alpha: float,
                       targets: list[str], rng: np.random.Generator, use_rslora: bool = False,
                       rank_pattern: dict | None = None, alpha_pattern: dict | None = None,
                       dtype: str = "f32", default_keys: bool = False,
                       strength: float = 0.8) -> PeftAdapter:
    """Create a PEFT adapter folder with random nonzero A and B.

    `strength` sets ||scale * B @ A|| relative to ||W|| per module (about), so that the adapter
    moves the logits well beyond the test tolerance whatever r / alpha / rsLoRA are.
    """
    rank_pattern = dict(rank_pattern or {})
    alpha_pattern = dict(alpha_pattern or {})
    path.mkdir(parents=True, exist_ok=True)
    config = {
        "alpha_pattern": alpha_pattern,
        "auto_mapping": None,
        "base_model_name_or_path": f"interop/tiny-{arch.ID}",
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "layers_pattern": None,
        "layers_to_transform": None,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": r,
        "rank_pattern": rank_pattern,
        "revision": None,
        "target_modules": list(targets),
        "task_type": "CAUSAL_LM",
        "use_dora": False,
        "use_rslora": use_rslora,
    }
    adapter = PeftAdapter(path, config)
    tensors: dict[str, np.ndarray] = {}
    tag = ".default" if default_keys else ""
    for name in module_names(arch, cfg, targets):
        if name + ".weight" not in weights:
            continue  # layers differ (hybrid or KV-sharing models): PEFT wraps only modules that exist
        mr = pattern_lookup(rank_pattern, name)
        ma = pattern_lookup(alpha_pattern, name)
        mr = int(r if mr is None else mr)
        ma = float(alpha if ma is None else ma)
        scale = ma / math.sqrt(mr) if use_rslora else ma / mr
        W = weights[name + ".weight"]
        if name == EMBED:
            vocab, hidden = W.shape
            A = rng.standard_normal((mr, vocab))
            b_std = strength * float(np.std(W)) / (scale * math.sqrt(mr))
            B = rng.standard_normal((hidden, mr)) * b_std
            ka, kb = f"base_model.model.{name}.lora_embedding_A{tag}", f"base_model.model.{name}.lora_embedding_B{tag}"
        else:
            out_f, in_f = W.shape
            A = rng.standard_normal((mr, in_f)) / math.sqrt(in_f)
            # (B @ A) entries have std ~ sqrt(r) * b_std / sqrt(in); W's entries ~ std(W)
            b_std = strength * float(np.std(W)) * math.sqrt(in_f) / (scale * math.sqrt(mr))
            B = rng.standard_normal((out_f, mr)) * b_std
            ka, kb = f"base_model.model.{name}.lora_A{tag}.weight", f"base_model.model.{name}.lora_B{tag}.weight"
        A, B = round_to(A, dtype), round_to(B, dtype)
        tensors[ka], tensors[kb] = A, B
        adapter.modules.append(LoraModule(name, A, B, mr, ma, scale))
    if not adapter.modules:
        raise ValueError(f"targets {targets} match no module of {arch.ARCH}")
    (path / "adapter_config.json").write_text(json.dumps(config, indent=2))
    write_safetensors(path / "adapter_model.safetensors", tensors, dtype)
    return adapter


def merge(weights: dict, adapters: list[tuple[PeftAdapter, float]], global_scale: float = 1.0,
          naive_scale: bool = False) -> dict:
    """Base weights plus global_scale * sum_k weight_k * delta_k (PEFT semantics).

    naive_scale=True uses lora_alpha / r for every module, ignoring use_rslora and alpha_pattern:
    what llama.cpp's convert_lora_to_gguf.py produces, used to show a test would catch that.
    """
    out = {k: v.astype(np.float64) for k, v in weights.items()}
    for ad, w in adapters:
        for m in ad.modules:
            s = float(ad.config["lora_alpha"]) / m.r if naive_scale else m.scale
            out[m.name + ".weight"] = out[m.name + ".weight"] + global_scale * w * m.delta(s)
    return out
