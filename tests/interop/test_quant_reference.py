"""Cross-check of src/engine/quant.rs (ggml block formats) against independent references.

References:
- ggml itself, as llama-cpp-python ships it: `quantize_row_*_ref` / `dequantize_row_*` called
  through ctypes from libggml-base, and `llama_model_quantize` (what `llama-quantize` runs) on a tiny
  F32 llama GGUF, without an importance matrix, for mixed (Q4_K_M, Q3_K_M, ...) and pure ftypes;
- the `gguf` package's numpy code: `gguf.quants.quantize` (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, MXFP4, BF16,
  F16) and `gguf.quants.dequantize` (every type).

This file writes cases (input f32 values, expected bytes, expected decoded values; layout in
tests/quant_reference.rs) into a directory and runs `cargo test --release --test quant_reference`
with OLLAMA_TOOLS_QUANT_REF pointing there, so the Rust side is checked against all of them.

    python tests/interop/test_quant_reference.py --write-fixtures tests/fixtures/quant

writes the small committed set that `cargo test` checks on its own.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gguf
from gguf import GGMLQuantizationType as T

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

BLOCK_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
# Block types with a power-of-two (E8M0) scale. Kept apart from BLOCK_TYPES and iterated last, so the
# seeded random draws for the older types, hence their committed fixtures, stay as they were.
E8M0_TYPES = ["MXFP4"]
GGUFPY_QUANTIZES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "BF16", "F16", "MXFP4"]
FLOAT_TYPES = ["F16", "BF16"]
ALL_TYPES = BLOCK_TYPES + FLOAT_TYPES + E8M0_TYPES
# llama_ftype values (llama.h): mixes as llama-quantize names them, then one per block type.
FTYPES_MIXED = {"Q2_K": 10, "Q3_K_M": 12, "Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18}
FTYPES_PURE = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10, "Q3_K": 12,
               "Q4_K": 15, "Q5_K": 17, "Q6_K": 18, "MXFP4": 38}


def block(tname: str) -> tuple[int, int]:
    """(elements, bytes) per block."""
    return gguf.GGML_QUANT_SIZES[T[tname]]


# ---------------------------------------------------------------------------------------------
# ggml through ctypes
# ---------------------------------------------------------------------------------------------

_GGML = None


def ggml():
    global _GGML
    if _GGML is None:
        import llama_cpp
        lib = Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"
        _GGML = ctypes.CDLL(str(lib))
    return _GGML


def _fn(name: str):
    f = getattr(ggml(), name)
    f.restype = None
    f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    return f


def _sym(tname: str) -> str:
    """ggml's spelling in function names: q4_0, q4_K."""
    return tname.lower().replace("_k", "_K")


def ggml_quantize(tname: str, x: np.ndarray) -> bytes:
    x = np.ascontiguousarray(x, dtype=np.float32)
    qk, bs = block(tname)
    out = np.zeros(x.size // qk * bs, dtype=np.uint8)
    name = {"F16": "ggml_fp32_to_fp16_row", "BF16": "ggml_fp32_to_bf16_row_ref"}.get(
        tname, f"quantize_row_{_sym(tname)}_ref")
    _fn(name)(x.ctypes.data, out.ctypes.data, x.size)
    return out.tobytes()


def ggml_dequantize(tname: str, raw: bytes) -> np.ndarray:
    qk, bs = block(tname)
    src = np.frombuffer(raw, dtype=np.uint8).copy()
    out = np.zeros(len(raw) // bs * qk, dtype=np.float32)
    name = {"F16": "ggml_fp16_to_fp32_row", "BF16": "ggml_bf16_to_fp32_row"}.get(
        tname, f"dequantize_row_{_sym(tname)}")
    _fn(name)(src.ctypes.data, out.ctypes.data, out.size)
    return out


def gguf_quantize(tname: str, x: np.ndarray) -> bytes:
    q = gguf.quants.quantize(np.asarray(x, dtype=np.float32).reshape(1, -1), T[tname])
    return np.ascontiguousarray(q).view(np.uint8).tobytes()


def gguf_dequantize(tname: str, raw: bytes) -> np.ndarray:
    arr = np.frombuffer(raw, dtype=np.uint8).reshape(1, -1)
    return np.asarray(gguf.quants.dequantize(arr, T[tname]), dtype=np.float32).reshape(-1)


# ---------------------------------------------------------------------------------------------
# Test data
# ---------------------------------------------------------------------------------------------

def special_blocks(rng: np.random.Generator) -> np.ndarray:
    """256-value super-blocks that take the quantizers' unusual paths."""
    n = 256
    out = []
    z = np.zeros(n, np.float32)
    out.append(z)                                                  # all zero
    out.append(np.full(n, 1.5, np.float32))                       # constant positive
    out.append(np.full(n, -0.75, np.float32))                     # constant negative
    x = rng.standard_normal(n).astype(np.float32); x[:16] = 0; x[64:96] = 0
    out.append(x)                                                  # zero sub-blocks
    out.append(np.abs(rng.standard_normal(n)).astype(np.float32) + 0.1)  # all positive
    out.append(-np.abs(rng.standard_normal(n)).astype(np.float32) - 0.1)  # all negative
    x = rng.standard_normal(n).astype(np.float32) * 0.01; x[rng.integers(0, n, 4)] = [3, -5, 8, -2]
    out.append(x)                                                  # outliers
    out.append((rng.integers(-8, 8, n) * 0.5).astype(np.float32))  # exact grid: rounding ties
    out.append(rng.standard_t(3, n).astype(np.float32))           # heavy tails
    out.append((rng.standard_normal(n) * 1e-6).astype(np.float32))  # tiny: f16 subnormal scales
    out.append((rng.standard_normal(n) * 1e3).astype(np.float32))   # large
    x = rng.standard_normal(n).astype(np.float32); x[::2] = 0
    out.append(x)                                                  # sparse
    x = np.zeros(n, np.float32); x[5] = 1.0
    out.append(x)                                                  # one non-zero
    out.append(np.linspace(-1, 1, n, dtype=np.float32))           # ramp
    out.append((rng.standard_normal(n) * 1e4).astype(np.float32))   # near the f16 range's top
    return np.concatenate(out)                                     # 15 blocks: an odd count


def mxfp4_edge_blocks(full: bool) -> np.ndarray:
    """32-value blocks for MXFP4's own corners: grid values and the midpoints between them (ties go
    to the lower code), NaN, infinities, an amax under 2^-125 (ggml's float -> uint8 cast of a
    negative exponent wraps round), subnormals, f32's top, and amax a few ulps under a power of two
    (log2f rounds up to the integer there, which moves the exponent). Own seed: adding cases here
    leaves every other draw alone."""
    rng = np.random.default_rng(39)
    f32 = np.float32
    grid = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], f32)
    mids = (grid[:-1] + grid[1:]) / 2
    ties = np.concatenate([grid, mids, -grid, -mids, [7.0, -0.0]]).astype(f32)  # 32 values, amax 7
    out = [np.zeros(32, f32), np.full(32, np.nan, f32)]
    for s in [1.0, 0.75, 2.0**-126, 2.0**-140, 2.0**100] + ([2.0**-149 * 4, 2.0**60, 2.0**-30] if full else []):
        out.append((ties * f32(s)).astype(f32))
        out.append((np.append(np.delete(ties, 30), f32(6.0)) * f32(s)).astype(f32))  # amax on the grid
    x = rng.standard_normal(32).astype(f32); x[[3, 20]] = np.nan
    out.append(x)                                                  # NaN among values
    for inf in [np.inf, -np.inf]:
        x = rng.standard_normal(32).astype(f32) * f32(2.0**-120); x[7] = inf
        out.append(x)                                              # infinity: e = 0
    tops = [np.finfo(f32).max, -np.finfo(f32).max, 3e38, 2.0**127, 1.5 * 2.0**127, 1.75 * 2.0**127]
    for top in tops:
        x = rng.standard_normal(32).astype(f32) * f32(2.0**120); x[11] = top
        out.append(x)
    shifts = range(110, 150) if full else [120, 124, 125, 126, 127, 130, 140, 149]
    for k in shifts:                                               # tiny and subnormal amax
        out.append((rng.standard_normal(32) * 2.0**-k).astype(f32))
    exps = range(-149, 128) if full else [-140, -126, -125, -3, 0, 1, 4, 20, 100, 127]
    ulps = range(1, 65) if full else [1, 2, 9, 40, 64]
    for k in exps:                                                 # amax just under 2^k
        for n in ulps:
            top = (np.array([2.0**k], f32).view(np.uint32) - np.uint32(n)).view(f32)[0]
            x = (rng.uniform(-1, 1, 32) * top).astype(f32); x[rng.integers(32)] = top * rng.choice([-1, 1])
            out.append(x)
    scales = np.exp2(rng.uniform(-135, 125, 512 if full else 16))
    out.extend((rng.standard_normal((len(scales), 32)) * scales[:, None]).astype(f32))
    return np.concatenate([np.asarray(b, f32).reshape(32) for b in out])


def mxfp4_edge_case(root: Path, full: bool) -> None:
    """ggml's bytes for mxfp4_edge_blocks, decoded by ggml and by gguf-py."""
    x = mxfp4_edge_blocks(full)
    raw = ggml_quantize("MXFP4", x)
    write_case(root / "ggml-ref" / "mxfp4-edge", x, {"MXFP4": raw},
               {"MXFP4.deq": gguf_dequantize("MXFP4", raw), "MXFP4.deq-ggml": ggml_dequantize("MXFP4", raw)})


def normal_data(rng: np.random.Generator, n_blocks: int) -> np.ndarray:
    scales = np.exp(rng.uniform(np.log(1e-3), np.log(10.0), n_blocks)).astype(np.float32)
    x = rng.standard_normal((n_blocks, 256)).astype(np.float32) * scales[:, None]
    return x.reshape(-1)


def random_block_bytes(rng: np.random.Generator, tname: str, n_blocks: int) -> bytes:
    """Random bit patterns for every field, with the f16 scales set to finite values (random
    exponents would give inf/NaN scales that say nothing about the decoding)."""
    qk, bs = block(tname)
    raw = rng.integers(0, 256, (n_blocks, bs), dtype=np.uint8)
    half_fields = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
                   "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
                   "F16": list(range(0, bs, 2)), "BF16": [], "MXFP4": []}[tname]
    for off in half_fields:
        vals = (rng.standard_normal(n_blocks) * np.exp(rng.uniform(-8, 4, n_blocks))).astype(np.float16)
        raw[:, off:off + 2] = vals.view(np.uint8).reshape(n_blocks, 2)
    if tname == "BF16":
        f = (rng.standard_normal(n_blocks * bs // 2) * 10).astype(np.float32)
        raw = (f.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(n_blocks, bs)
    return raw.tobytes()


# ---------------------------------------------------------------------------------------------
# Case writing
# ---------------------------------------------------------------------------------------------

def write_case(d: Path, x: np.ndarray | None, bins: dict[str, bytes],
               deqs: dict[str, np.ndarray] | None = None) -> None:
    d.mkdir(parents=True, exist_ok=True)
    if x is not None:
        np.asarray(x, dtype="<f4").tofile(d / "input.f32")
    for t, b in bins.items():
        (d / f"{t}.bin").write_bytes(b)
    for name, v in (deqs or {}).items():
        np.asarray(v, dtype="<f4").tofile(d / f"{name}.f32")


def llama_quantize(src: Path, dst: Path, ftype: int, pure: bool) -> None:
    """llama_model_quantize in a child process (a GGML_ASSERT abort must not take pytest down)."""
    code = ("import sys, llama_cpp as L\n"
            "p = L.llama_model_quantize_default_params()\n"
            "p.ftype = int(sys.argv[3]); p.pure = sys.argv[4] == '1'; p.nthread = 2\n"
            "sys.exit(L.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p))\n")
    r = subprocess.run([sys.executable, "-c", code, str(src), str(dst), str(ftype), "1" if pure else "0"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and dst.exists(), f"llama_model_quantize failed ({r.returncode}):\n{r.stderr[-3000:]}"


def tiny_f32_model(workdir: Path) -> Path:
    """A 2-layer llama with every weight matrix a whole number of 256-value rows."""
    from archs import llama
    cfg = llama.tiny_config(hidden_size=256, intermediate_size=512, num_attention_heads=4,
                            num_key_value_heads=2, head_dim=64, vocab_size=288)
    weights = llama.random_weights(cfg, np.random.default_rng(7))
    path = workdir / "tiny-f32.gguf"
    llama.write_gguf(path, cfg, weights, dtype="f32")
    return path


def gguf_tensors(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    r = gguf.GGUFReader(str(path))
    return {t.name: (t.tensor_type.name, np.asarray(t.data)) for t in r.tensors}


def llama_quantize_cases(root: Path, workdir: Path, max_blocks: int, small: bool) -> list[str]:
    """One case per quantized tensor of each llama_model_quantize output: input = the tensor's f32
    values, TYPE.bin = its bytes, TYPE.deq.f32 = gguf-py's decoding. Blocks are independent, so a
    case keeps at most max_blocks of them (from both ends of the tensor). With small, only the
    first tensor of each type over all runs, and no decoding (the other cases cover it)."""
    model = tiny_f32_model(workdir)
    done_types: set[str] = set()
    f32 = {n: a.reshape(-1).astype(np.float32) for n, (t, a) in gguf_tensors(model).items() if t == "F32"}
    seen = []
    runs = [(f"mix-{k}", v, False) for k, v in FTYPES_MIXED.items()] + \
           [(f"pure-{k}", v, True) for k, v in FTYPES_PURE.items()]
    for label, ftype, pure in runs:
        out = workdir / f"tiny-{label}.gguf"
        llama_quantize(model, out, ftype, pure)
        if not small:
            done_types = set()
        for name, (tname, data) in gguf_tensors(out).items():
            if tname not in ALL_TYPES:
                continue
            if small and tname in done_types:
                continue
            done_types.add(tname)
            raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1).tobytes()
            x = f32[name]
            qk, bs = block(tname)
            nb = x.size // qk
            if nb > max_blocks:
                pick = list(range(max_blocks // 2)) + list(range(nb - (max_blocks - max_blocks // 2), nb))
                x = np.concatenate([x[b * qk:(b + 1) * qk] for b in pick])
                raw = b"".join(raw[b * bs:(b + 1) * bs] for b in pick)
            write_case(root / "llama-quantize" / label / name, x, {tname: raw},
                       {} if small else {f"{tname}.deq": gguf_dequantize(tname, raw)})
            seen.append(f"{label}/{name}:{tname}")
    return seen


def ggml_ref_cases(root: Path, x: np.ndarray, label: str, decode: bool = True) -> None:
    """quantize_row_*_ref bytes of x for every type; ggml's and gguf-py's decodings of them."""
    bins, deqs = {}, {}
    for t in ALL_TYPES:
        raw = ggml_quantize(t, x)
        bins[t] = raw
        if decode:
            deqs[f"{t}.deq"] = gguf_dequantize(t, raw)
            deqs[f"{t}.deq-ggml"] = ggml_dequantize(t, raw)
    write_case(root / "ggml-ref" / label, x, bins, deqs)


def gguf_py_cases(root: Path, x: np.ndarray, label: str) -> None:
    """gguf-py's quantizers (the types it has) and its decodings."""
    bins, deqs = {}, {}
    for t in GGUFPY_QUANTIZES:
        raw = gguf_quantize(t, x)
        bins[t] = raw
        deqs[f"{t}.deq"] = gguf_dequantize(t, raw)
    write_case(root / "gguf-py" / label, x, bins, deqs)


def random_bytes_cases(root: Path, rng: np.random.Generator, n_blocks: int, with_ggml: bool = True) -> None:
    """Decoding only, of random bit patterns (every quant value, sign and scale bit), by gguf-py and
    (with_ggml) by ggml."""
    for t in ALL_TYPES:
        raw = random_block_bytes(rng, t, n_blocks if block(t)[0] > 1 else n_blocks * 128)
        deqs = {f"{t}.deq": gguf_dequantize(t, raw)}
        if with_ggml:
            deqs[f"{t}.deq-ggml"] = ggml_dequantize(t, raw)
        write_case(root / "random-bytes" / t, None, {t: raw}, deqs)


def write_full_cases(root: Path, workdir: Path) -> None:
    rng = np.random.default_rng(20261)
    special = special_blocks(rng)
    normal = normal_data(rng, 64)
    ggml_ref_cases(root, special, "special")
    ggml_ref_cases(root, normal, "normal")
    gguf_py_cases(root, special, "special")
    gguf_py_cases(root, normal, "normal")
    random_bytes_cases(root, rng, 64)
    mxfp4_edge_case(root, True)
    llama_quantize_cases(root, workdir, 96, False)


def write_fixtures(root: Path, workdir: Path) -> None:
    """The committed set: a few KB per file."""
    if root.exists():
        shutil.rmtree(root)
    rng = np.random.default_rng(4242)
    special = special_blocks(rng).reshape(-1, 256)
    # zero sub-blocks, all positive, outliers, rounding ties, tiny, large, one non-zero, f16 top
    ggml_ref_cases(root, special[[3, 4, 6, 7, 9, 10, 12, 14]].reshape(-1), "special", decode=False)
    gguf_py_cases(root, normal_data(rng, 2), "normal")
    random_bytes_cases(root, rng, 2, with_ggml=False)
    mxfp4_edge_case(root, False)
    llama_quantize_cases(root, workdir, 2, True)
    (root / "README.md").write_text(
        "Reference cases for `tests/quant_reference.rs` (layout described there), written by\n"
        "`tests/interop/.venv/bin/python tests/interop/test_quant_reference.py --write-fixtures "
        "tests/fixtures/quant`\n"
        "with gguf 0.19.0 and llama-cpp-python 0.3.36 (ggml 0.25.3): `ggml-ref/` from ggml's\n"
        "`quantize_row_*_ref` via ctypes, `llama-quantize/` from `llama_model_quantize` on a tiny\n"
        "F32 llama (no imatrix), `gguf-py/` from `gguf.quants`, `random-bytes/` random blocks\n"
        "decoded by `gguf.quants.dequantize`, `ggml-ref/mxfp4-edge/` MXFP4's corner cases (ties, NaN,\n"
        "infinities, tiny, huge, amax just under a power of two) decoded by ggml and gguf-py. The pytest\n"
        "of that file checks many more cases.\n")


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------

def run_rust(cases: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OLLAMA_TOOLS_QUANT_REF=str(cases))
    return subprocess.run(["cargo", "test", "--release", "--test", "quant_reference", "--", "--nocapture"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=3600)


def test_references_agree_with_each_other():
    """The two references must agree before either is trusted: gguf-py's quantizers against ggml's
    reference quantizers, and gguf-py's dequantizers against ggml's, bit for bit."""
    rng = np.random.default_rng(5)
    x = np.concatenate([special_blocks(rng), normal_data(rng, 16)])
    for t in GGUFPY_QUANTIZES:
        a, b = gguf_quantize(t, x), ggml_quantize(t, x)
        assert a == b, f"{t}: gguf-py and ggml quantize differently"
    # MXFP4's corner cases too, but for blocks with a NaN: gguf-py's max lets it through, ggml's skips it.
    edge = mxfp4_edge_blocks(True).reshape(-1, 32)
    edge = edge[~np.isnan(edge).any(axis=1)].reshape(-1)
    with np.errstate(all="ignore"):  # numpy warns on the infinities and the wrapping exponent casts
        assert gguf_quantize("MXFP4", edge) == ggml_quantize("MXFP4", edge), "MXFP4 corner cases differ"
    for t in ALL_TYPES:
        raw = random_block_bytes(rng, t, 64 if block(t)[0] > 1 else 4096)
        a, b = gguf_dequantize(t, raw), ggml_dequantize(t, raw)
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32)), f"{t}: decodings differ"


def test_rust_matches_references(tmp_path):
    """Our quantizer and dequantizer against every reference, through tests/quant_reference.rs."""
    cases = tmp_path / "cases"
    write_full_cases(cases, tmp_path)
    r = run_rust(cases)
    summary = [l for l in (r.stdout + r.stderr).splitlines() if "checks over" in l or "differ" in l]
    print("\n".join(summary))
    assert r.returncode == 0, f"cargo test --test quant_reference failed:\n{r.stdout[-5000:]}\n{r.stderr[-20000:]}"
    assert any("0 failures" in l for l in summary), r.stderr[-5000:]


def test_committed_fixtures_are_current(tmp_path):
    """The committed fixtures are what this script writes today (so they stay reproducible)."""
    fixtures = REPO_ROOT / "tests" / "fixtures" / "quant"
    if not fixtures.exists():
        pytest.fail("tests/fixtures/quant is missing: run this file with --write-fixtures")
    fresh = tmp_path / "fixtures"
    write_fixtures(fresh, tmp_path)
    old = sorted(p.relative_to(fixtures) for p in fixtures.rglob("*") if p.is_file())
    new = sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
    assert old == new
    changed = [str(p) for p in new if (fresh / p).read_bytes() != (fixtures / p).read_bytes()]
    assert not changed, f"fixtures differ from a fresh run: {changed[:10]}"


if __name__ == "__main__":
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write-fixtures", type=Path, help="write the small committed case set here")
    ap.add_argument("--write-cases", type=Path, help="write the full case set here (for debugging)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if a.write_fixtures:
            write_fixtures(a.write_fixtures, Path(tmp))
        if a.write_cases:
            write_full_cases(a.write_cases, Path(tmp))
