"""Shared helpers for the interop tests: the binary under test, base models, GGUF inspection."""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# A fixed prompt of token ids (no tokenizer involved); distinct ids spread over the vocab.
TOKENS = [1, 17, 42, 99, 3, 250, 128, 7]


def binary_path() -> Path:
    """OLLAMA_TOOLS_BIN, else $CARGO_TARGET_DIR (or <repo>/target)/release/ollama-tools."""
    env = os.environ.get("OLLAMA_TOOLS_BIN")
    if env:
        return Path(env)
    target = Path(os.environ.get("CARGO_TARGET_DIR") or "target")
    if not target.is_absolute():
        target = REPO_ROOT / target
    return target / "release" / "ollama-tools"


def require_binary() -> Path:
    p = binary_path()
    if not (p.is_file() and os.access(p, os.X_OK)):
        pytest.fail(f"binary under test not found at {p}: run `cargo build --release` in {REPO_ROOT} "
                    f"(or set OLLAMA_TOOLS_BIN)", pytrace=False)
    return p


def run_convert(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [str(require_binary()), "convert", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def convert_ok(args: list[str]) -> subprocess.CompletedProcess:
    p = run_convert(args)
    assert p.returncode == 0, (f"ollama-tools convert {' '.join(map(str, args))} failed with "
                               f"{p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


def rel(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b||"""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@dataclass
class BaseModel:
    arch: object
    cfg: dict
    weights: dict
    path: Path          # f32 base GGUF
    ref_logits: np.ndarray


def build_base(arch, workdir: Path, seed: int = 1234, dtype: str = "f32", **cfg_overrides) -> BaseModel:
    cfg = arch.tiny_config(**cfg_overrides)
    weights = arch.random_weights(cfg, np.random.default_rng(seed))
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"base-{arch.ARCH}-{dtype}.gguf"
    arch.write_gguf(path, cfg, weights, dtype=dtype)
    return BaseModel(arch, cfg, weights, path, np.asarray(arch.forward(cfg, weights, TOKENS)))


@dataclass
class GgufInfo:
    kv: dict
    tensors: dict  # name -> (ggml type name, numpy-order shape)


def read_gguf(path: Path) -> GgufInfo:
    r = gguf.GGUFReader(str(path))
    kv = {}
    for name, f in r.fields.items():
        if name.startswith("GGUF."):
            continue
        try:
            kv[name] = f.contents()
        except Exception:  # noqa: BLE001 - exotic field types are irrelevant here
            kv[name] = None
    tensors = {t.name: (t.tensor_type.name, tuple(int(d) for d in reversed(t.shape.tolist())))
               for t in r.tensors}
    return GgufInfo(kv, tensors)


# Figures collected during the run, printed by conftest's terminal summary.
FIGURES: list[tuple[str, float, float, float | None]] = []
NOTES: list[tuple[str, str]] = []


def record(label: str, rel_err: float, tol: float, effect: float | None = None) -> None:
    FIGURES.append((label, rel_err, tol, effect))


def record_note(label: str, text: str) -> None:
    NOTES.append((label, text))
