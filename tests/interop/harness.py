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


def run_tool(command: str, args: list, timeout: float = 120) -> subprocess.CompletedProcess:
    """`ollama-tools COMMAND ARGS...`, output captured."""
    cmd = [str(require_binary()), command, *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def tool_ok(command: str, args: list) -> subprocess.CompletedProcess:
    """run_tool, asserting success (the failure message carries the command and its output)."""
    p = run_tool(command, args)
    assert p.returncode == 0, (f"ollama-tools {command} {' '.join(map(str, args))} failed with "
                               f"{p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


def run_convert(args: list) -> subprocess.CompletedProcess:
    return run_tool("convert", args)


def convert_ok(args: list) -> subprocess.CompletedProcess:
    return tool_ok("convert", args)


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
    path = workdir / f"base-{arch.ID}-{dtype}.gguf"
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


# ---------------------------------------------------------------------------------------------
# merge command, quantized bases, raw GGUF contents (used by test_merge_interop.py)
# ---------------------------------------------------------------------------------------------


def run_merge(args: list) -> subprocess.CompletedProcess:
    return run_tool("merge", args)


def merge_ok(args: list) -> subprocess.CompletedProcess:
    return tool_ok("merge", args)


def llama_quantize(src: Path, dst: Path, ftype: int, timeout: float = 300, allow_requantize: bool = False) -> None:
    """llama.cpp's own quantizer (what llama-quantize runs, no imatrix) on a GGUF, in a child
    process so a GGML_ASSERT abort cannot take pytest down. ftype: llama_cpp.LLAMA_FTYPE_*;
    allow_requantize: llama-quantize's --allow-requantize (quantized input tensors re-quantized)."""
    import sys
    code = ("import sys, llama_cpp as L\n"
            "p = L.llama_model_quantize_default_params()\n"
            "p.ftype = int(sys.argv[3]); p.nthread = 2; p.allow_requantize = sys.argv[4] == '1'\n"
            "sys.exit(L.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p))\n")
    env = dict(os.environ, GGML_NO_BACKTRACE="1")
    r = subprocess.run([sys.executable, "-c", code, str(src), str(dst), str(ftype), "1" if allow_requantize else "0"],
                       capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0 and Path(dst).is_file(), (
        f"llama_model_quantize(ftype={ftype}) failed with {r.returncode}:\n{r.stderr[-3000:]}")


def rewrite_gguf(src: Path, dst: Path, tensor_fn, alignment: int | None = None,
                 kv_overrides: dict | None = None, extra: dict | None = None) -> None:
    """Copy a GGUF through the gguf package: every KV (general.alignment aside) as is, except
    kv_overrides {key: (value, GGUFValueType)}; every tensor as tensor_fn(name, array) returns it:
    a float array, or (quantized uint8 array, GGMLQuantizationType); quantized source tensors come
    as their bytes and pass through when returned as is. alignment: a custom
    general.alignment for the new file. extra: tensors appended, {name: float array or
    (quantized uint8 array, GGMLQuantizationType)}."""
    r = gguf.GGUFReader(str(src))
    kv_overrides = dict(kv_overrides or {})
    w = gguf.GGUFWriter(str(dst), str(r.fields["general.architecture"].contents()))
    if alignment is not None:
        w.add_custom_alignment(alignment)
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", "general.alignment"):
            continue
        if name in kv_overrides:
            val, vtype = kv_overrides.pop(name)
            w.add_key_value(name, val, vtype)
            continue
        vtype = gguf.GGUFValueType(f.types[0])
        sub = gguf.GGUFValueType(f.types[-1]) if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(name, f.contents(), vtype, sub_type=sub)
    for name, (val, vtype) in kv_overrides.items():
        w.add_key_value(name, val, vtype)
    floats = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
    for t in r.tensors:
        arr = np.array(t.data)  # float tensors in numpy-order shape, others as their bytes
        out = tensor_fn(t.name, arr)
        if isinstance(out, tuple):
            w.add_tensor(t.name, out[0], raw_dtype=out[1])
        elif t.tensor_type in floats or out is not arr:
            w.add_tensor(t.name, out)
        else:  # a quantized tensor passed through
            w.add_tensor(t.name, out, raw_dtype=t.tensor_type)
    for name, out in (extra or {}).items():
        if isinstance(out, tuple):
            w.add_tensor(name, out[0], raw_dtype=out[1])
        else:
            w.add_tensor(name, out)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@dataclass
class RawTensor:
    type: str            # ggml type name
    shape: tuple         # numpy order
    data: bytes          # the tensor's bytes as stored
    offset: int          # absolute file offset of the data

    def values(self) -> np.ndarray:
        """float32 values (dequantized), numpy-order shape."""
        qt = gguf.GGMLQuantizationType[self.type]
        if qt == gguf.GGMLQuantizationType.F32:
            arr = np.frombuffer(self.data, dtype=np.float32)
        elif qt == gguf.GGMLQuantizationType.F16:
            arr = np.frombuffer(self.data, dtype=np.float16).astype(np.float32)
        else:
            arr = gguf.quants.dequantize(np.frombuffer(self.data, dtype=np.uint8).reshape(1, -1), qt)
        return np.asarray(arr, dtype=np.float32).reshape(self.shape)


@dataclass
class RawGguf:
    kv: dict             # key -> (tuple of GGUFValueType ints, contents)
    tensors: dict        # name -> RawTensor, file order
    alignment: int


def read_gguf_raw(path: Path) -> RawGguf:
    """Every KV with its value types, and every tensor's stored bytes."""
    r = gguf.GGUFReader(str(path))
    kv = {}
    for name, f in r.fields.items():
        if name.startswith("GGUF."):
            continue
        try:
            val = f.contents()
        except Exception:  # noqa: BLE001 - compared by raw parts instead
            val = [bytes(p) for p in f.parts]
        kv[name] = (tuple(int(t) for t in f.types), val)
    tensors = {t.name: RawTensor(t.tensor_type.name, tuple(int(d) for d in reversed(t.shape.tolist())),
                                 np.asarray(t.data).tobytes(), int(t.data_offset))
               for t in r.tensors}
    return RawGguf(kv, tensors, int(r.alignment))


_GGML_BASE = None


def ggml_quantize_ref(type_name: str, x: np.ndarray) -> bytes:
    """ggml's own reference quantizer (quantize_row_<type>_ref from llama-cpp-python's
    libggml-base) of x, a whole number of blocks; the quantizer llama_model_quantize uses without
    an importance matrix."""
    import ctypes

    global _GGML_BASE
    if _GGML_BASE is None:
        import llama_cpp
        _GGML_BASE = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    qt = gguf.GGMLQuantizationType[type_name]
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    if qt == gguf.GGMLQuantizationType.F32:
        return x.tobytes()
    if qt == gguf.GGMLQuantizationType.F16:
        return x.astype(np.float16).tobytes()
    qk, bs = gguf.GGML_QUANT_SIZES[qt]
    assert x.size % qk == 0, (type_name, x.size)
    out = np.zeros(x.size // qk * bs, dtype=np.uint8)
    fn = getattr(_GGML_BASE, f"quantize_row_{type_name.lower().replace('_k', '_K')}_ref")
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn(x.ctypes.data, out.ctypes.data, x.size)
    return out.tobytes()


# llama.cpp with its extra CPU buffer types off. On a CPU with AMX (Sapphire Rapids and later)
# llama.cpp 0.3.36 repacks Q8_0/Q4_K/Q6_K... weights into its AMX buffer type, and here decoding
# then dies with SIGSEGV (F32/F16 models are unaffected). use_extra_bufts = False keeps every
# weight in the plain CPU buffer (the ordinary ggml kernels); both sides of every comparison run
# the same way. The stock llama_worker.py is wrapped, not changed.
_PLAIN_CPU_WRAPPER = '''\
import runpy, sys
import llama_cpp as L
_default = L.llama_model_default_params
def _plain_cpu_params():
    p = _default()
    p.use_extra_bufts = False
    return p
L.llama_model_default_params = _plain_cpu_params
sys.argv = [{worker!r}, sys.argv[1]]
runpy.run_path({worker!r}, run_name="__main__")
'''


def run_llama_plain_cpu(model: Path, tokens: list[int], workdir: Path, adapters=()):
    """llama_runner.run_llama, with llama.cpp's extra buffer types (AMX / CPU repack) off."""
    import llama_runner

    workdir.mkdir(parents=True, exist_ok=True)
    wrapper = workdir / "llama_worker_plain_cpu.py"
    wrapper.write_text(_PLAIN_CPU_WRAPPER.format(worker=str(llama_runner.WORKER)))
    saved = llama_runner.WORKER
    llama_runner.WORKER = wrapper
    try:
        return llama_runner.run_llama(model, tokens, workdir, adapters)
    finally:
        llama_runner.WORKER = saved


def llama_logits_plain_cpu(model: Path, tokens: list[int], workdir: Path, adapters=()) -> np.ndarray:
    r = run_llama_plain_cpu(model, tokens, workdir, adapters)
    if r.returncode != 0 or r.logits is None:
        raise AssertionError(r.describe())
    return r.logits
