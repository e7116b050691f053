"""Registry of tiny test architectures.

Every module in this package (except names starting with "_") describes one architecture, or
several through a module-level list VARIANTS. An architecture is any object (module, class,
namespace) with:

    ARCH: str                                   GGUF general.architecture, e.g. "llama"
    ID: str (optional)                          registry key and test id when two variants share
                                                an ARCH (default: ARCH)
    tiny_config(**overrides) -> dict            tiny HF-style config (HF key names)
    random_weights(cfg, rng) -> dict[str, np.ndarray]
                                                HF parameter names -> float32 arrays, HF layout
    write_gguf(path, cfg, weights, dtype="f32") base model GGUF ("f32" | "f16")
    forward(cfg, weights, tokens) -> np.ndarray [n_tokens, vocab] logits, HF semantics
    LORA_MODULES: dict[str, str | tuple]        HF module name -> its path inside a decoder layer,
                                                as a string or a tuple whose first item is the
                                                path: weight "model.layers.{i}.<path>.weight",
                                                PEFT key "base_model.model.model.layers.{i}.<path>
                                                .lora_A.weight". Paths under "self_attn." count as
                                                attention modules.

Embedding LoRA uses "model.embed_tokens.weight"; an untied output head is "lm_head.weight".
A module that fails to import or lacks part of the interface is recorded in ERRORS (the test
suite turns each entry into a failing test) instead of silently disappearing.
"""
from __future__ import annotations

import importlib
import pkgutil
import traceback

REQUIRED = ("ARCH", "tiny_config", "random_weights", "write_gguf", "forward", "LORA_MODULES")


def _discover():
    found, errors = {}, {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        try:
            mod = importlib.import_module(f"{__name__}.{info.name}")
        except Exception:  # noqa: BLE001 - reported as a failing test
            errors[info.name] = traceback.format_exc()
            continue
        variants = getattr(mod, "VARIANTS", None)
        candidates = list(variants) if variants is not None else [mod]
        for obj in candidates:
            missing = [a for a in REQUIRED if not hasattr(obj, a)]
            label = f"{info.name}:{getattr(obj, 'ARCH', getattr(obj, '__name__', repr(obj)))}"
            if missing:
                errors[label] = f"missing interface attributes: {', '.join(missing)}"
            elif getattr(obj, "ID", obj.ARCH) in found:
                errors[label] = f"duplicate ID {getattr(obj, 'ID', obj.ARCH)!r}"
            else:
                obj.ID = getattr(obj, "ID", obj.ARCH)
                found[obj.ID] = obj
    return found, errors


ARCHS, ERRORS = _discover()


def module_path(arch, module: str) -> str:
    """Path inside a decoder layer of LORA_MODULES[module] (string or tuple form)."""
    how = arch.LORA_MODULES[module]
    return how if isinstance(how, str) else how[0]


def attention_modules(arch) -> list[str]:
    return [m for m in arch.LORA_MODULES if module_path(arch, m).startswith("self_attn.")]


def mlp_modules(arch) -> list[str]:
    return [m for m in arch.LORA_MODULES if not module_path(arch, m).startswith("self_attn.")]


def gguf_names(arch, cfg: dict, hf_weight_names) -> set[str]:
    """The GGUF base tensors these HF weights become, as the HF converter names them: gguf-py's
    tensor map, or the arch's own gguf_names where its converter splits a tensor (Granite 4)."""
    if hasattr(arch, "gguf_names"):
        return arch.gguf_names(cfg, hf_weight_names)
    from ._common import gguf_tensor_names

    return set(gguf_tensor_names(arch.ARCH, cfg["num_hidden_layers"], dict.fromkeys(hf_weight_names)))
