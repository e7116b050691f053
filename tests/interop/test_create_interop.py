"""End-to-end interop of `ollama-tools create-from-base --no-create`: what the Modelfile points at
runs in the real llama.cpp and gives the logits of base + adapter under PEFT (HF) semantics.

With `--no-create` the tool talks to no server (OLLAMA_HOST points at a closed port here) and
writes a Modelfile whose files are byte for byte what it would upload: in merge mode `FROM` names
the merged GGUF in the tool's cache (`$OLLAMA_TOOLS_CACHE/builds/merge-*.gguf`), in adapter mode
`FROM` names the base file and `ADAPTER` the converted GGUF LoRA in the same cache (or, for a ready
GGUF adapter, that file itself). The tests read the Modelfile with their own small reader, load
what it names in llama.cpp and compare against references that never look at the tool's output:

- numpy forward (HF semantics) on W + scale * B @ A of the PEFT adapter (archs/, peft_lora.py);
- for the merged files, per touched tensor: the merged values against base + that delta, where the
  delta in GGUF layout comes from writing the PEFT-merged HF weights with the arch's own GGUF
  writer (so the Q/K row order is the test's, not the tool's) minus the base's tensors.

Cases, for llama and qwen2 (the merge suite's tiny configs: 256-wide, every matrix whole Q8_0 and
K-quant blocks):
  merge, F32 base, rsLoRA (alpha / sqrt(r)) PEFT adapter: llama.cpp on FROM vs numpy, tol 1e-3
      (an F32 model with F32 merged tensors: nothing is rounded but the f32 arithmetic; the
      convert suite's F32 tolerance); second run reuses the cached build;
  auto (= merge without a server), Q8_0 base, alpha_pattern PEFT adapter: merged tensors are
      re-quantized, so the logits are held to bounds measured in the same test (see
      test_merge_q8_0_base);
  adapter mode, F32 base, rank_pattern + alpha_pattern PEFT adapter: llama.cpp FROM --lora ADAPTER
      vs numpy, tolerance by the adapter's tensor type as in the convert suite (F16: 5e-3);
  a ready GGUF adapter (`convert`, default outtype) of an rsLoRA + rank_pattern adapter, merged:
      vs numpy with the adapter type's tolerance, per tensor against llama.cpp's own reading of
      that adapter; adapter mode passes it through as is; `merge ADAPTER.gguf` writes the same
      tensors.
Every PEFT case with a scale other than alpha / r also shows that a tool using alpha / r
everywhere would fail the comparison.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import pytest

import archs
import harness
import peft_lora
from harness import TOKENS, read_gguf_raw, rel
from test_convert_interop import MIN_ADAPTER_EFFECT, TOL_BY_TYPE, AdapterSpec, resolve_patterns
from test_merge_interop import (CFG, Q8_ALIGNMENT, MergeBase, _q8_0_tensor, check_structure, check_weights,
                                convert_f32, gguf_names, lora_deltas, reference_merge, touched_targets)

CREATE_ARCHS = ["llama", "qwen2"]
F32_TOL = TOL_BY_TYPE["F32"]     # F32 model, F32 merged tensors
NOISE_FACTOR = 3.0               # Q8_0: bound vs base + --lora = 3 x the ggml-merge noise (merge suite)
IDEAL_FACTOR = 2.0               # Q8_0: vs numpy, at most 2 x what ggml's own merge at Q8_0 gets
REUSED = "reused from an earlier run"
BUILT = "built now"


# ---------------------------------------------------------------------------------------------
# the Modelfile, as Ollama's reader takes it (enough of it for the lines this tool writes)
# ---------------------------------------------------------------------------------------------


def read_modelfile(text: str) -> list[tuple[str, str]]:
    """(command lowercased, value) per instruction; values bare, "quoted" or \"\"\"quoted\"\"\"
    (possibly over several lines), unquoted the way Ollama's parser unquotes (no escapes)."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        cmd, _, rest = line.partition(" ")
        rest = rest.strip()
        if cmd.lower() in ("parameter", "message"):       # a name / role before the value
            key, _, rest = rest.partition(" ")
            cmd = f"{cmd} {key}"
            rest = rest.strip()
        if rest.startswith('"""'):
            body = rest[3:]
            while not (body.endswith('"""') and (len(body) >= 3)):
                assert i < len(lines), f"unterminated \"\"\" value for {cmd}"
                body += "\n" + lines[i]
                i += 1
            value = body[:-3]
        elif rest.startswith('"'):
            assert len(rest) >= 2 and rest.endswith('"'), f"unterminated \" value for {cmd}: {rest!r}"
            value = rest[1:-1]
        else:
            value = rest
        out.append((cmd.lower(), value))
    return out


def modelfile_files(path: Path) -> tuple[Path, Path | None, list]:
    """FROM and ADAPTER of a Modelfile (exactly one FROM, at most one ADAPTER), and every entry."""
    entries = read_modelfile(path.read_text())
    froms = [v for c, v in entries if c == "from"]
    adapters = [v for c, v in entries if c == "adapter"]
    assert len(froms) == 1, f"{path}: FROM lines {froms}\n{path.read_text()}"
    assert len(adapters) <= 1, f"{path}: ADAPTER lines {adapters}"
    return Path(froms[0]), (Path(adapters[0]) if adapters else None), entries


# ---------------------------------------------------------------------------------------------
# running the tool
# ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    stdout: str
    modelfile: Path
    from_path: Path
    adapter_path: Path | None
    entries: list


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    """A fresh OLLAMA_TOOLS_CACHE (with a space in its path), an empty model store, and a server
    address where nothing listens: --no-create must not need one."""
    d = tmp_path / "tools cache"
    monkeypatch.setenv("OLLAMA_TOOLS_CACHE", str(d))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "ollama-store"))
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:9")
    return d


def create_from_base(base: Path, adapter: Path | None, mode: str, out: Path, cwd: Path, *extra) -> Run:
    """`create-from-base --no-create`, run in `cwd` with the paths as given (relative ones
    included: the Modelfile must still name absolute files)."""
    binary = harness.require_binary().resolve()
    args = ["create-from-base", "--base", base, "--mode", mode, "--no-create", "--out-modelfile", out, *extra]
    if adapter is not None:
        args += ["--adapter", adapter]
    cmd = [str(binary), *map(str, args)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=cwd)
    assert p.returncode == 0, (f"(cd {cwd} && {' '.join(cmd)}) failed with {p.returncode}\n"
                               f"OLLAMA_TOOLS_CACHE={os.environ.get('OLLAMA_TOOLS_CACHE')}\n"
                               f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    mf = out if out.is_absolute() else cwd / out
    assert mf.is_file(), f"no Modelfile at {mf}; stdout:\n{p.stdout}"
    from_path, adapter_path, entries = modelfile_files(mf)
    for what, f in (("FROM", from_path), ("ADAPTER", adapter_path)):
        if f is not None:
            assert f.is_absolute(), f"{what} {f} is not an absolute path:\n{mf.read_text()}"
            assert f.is_file(), f"{what} {f} does not exist:\n{mf.read_text()}"
    return Run(p.stdout, mf, from_path, adapter_path, entries)


def assert_in_builds(cache: Path, f: Path, prefix: str) -> None:
    builds = (cache / "builds").resolve()
    assert f.resolve().parent == builds, f"{f} is not in {builds}"
    assert f.name.startswith(prefix) and f.suffix == ".gguf", f"cache file name {f.name}, expected {prefix}*.gguf"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# bases and references
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def create_bases(tmp_path_factory):
    """Per arch, built once: the merge suite's tiny config as an F32 base GGUF and a Q8_0 copy
    (gguf package quantizer, custom general.alignment), with the numpy logits of the F32 base."""
    cache: dict = {}

    def get(arch_name: str) -> MergeBase:
        if arch_name not in cache:
            arch = archs.ARCHS[arch_name]
            d = tmp_path_factory.mktemp(f"create-base-{arch_name}")
            b = harness.build_base(arch, d, seed=8765, **CFG[arch_name])
            q8 = d / f"base-{arch_name}-q8_0.gguf"
            harness.rewrite_gguf(b.path, q8, _q8_0_tensor, alignment=Q8_ALIGNMENT,
                                 kv_overrides={"general.file_type": (int(gguf.LlamaFileType.MOSTLY_Q8_0),
                                                                     gguf.GGUFValueType.UINT32)})
            cache[arch_name] = MergeBase(arch, b.cfg, b.weights, b.ref_logits, {"f32": b.path, "q8_0": q8}, {})
        return cache[arch_name]

    return get


def peft_adapter(mb: MergeBase, path: Path, seed: int, *, r: int = 8, alpha: float = 16, use_rslora=False,
                 patterns: tuple = ()) -> peft_lora.PeftAdapter:
    """A PEFT adapter on every attention module and the first MLP one; rank / alpha patterns as
    the convert suite makes them (a bare module name and one full module name)."""
    rank_p, alpha_p = resolve_patterns(mb.arch, AdapterSpec(r=r, alpha=alpha, patterns=patterns))
    ad = peft_lora.write_peft_adapter(path, mb.arch, mb.cfg, mb.weights, r=r, alpha=alpha,
                                      targets=touched_targets(mb.arch), rng=np.random.default_rng(seed),
                                      use_rslora=use_rslora, rank_pattern=rank_p, alpha_pattern=alpha_p)
    if patterns:  # the patterns must really change ranks / scales, else the case proves nothing
        assert len({m.scale for m in ad.modules}) > 1, [(m.name, m.r, m.alpha) for m in ad.modules]
    if "rank" in patterns:
        assert len({m.r for m in ad.modules}) > 1
    return ad


def numpy_ref(mb: MergeBase, ad: peft_lora.PeftAdapter, naive: bool = False) -> np.ndarray:
    """HF forward on the F32 base weights + the PEFT delta (naive: alpha / r for every module)."""
    return np.asarray(mb.arch.forward(mb.cfg, peft_lora.merge(mb.weights, [(ad, 1.0)], naive_scale=naive), TOKENS))


def peft_deltas_gguf(mb: MergeBase, ad: peft_lora.PeftAdapter, workdir: Path) -> dict[str, np.ndarray]:
    """The PEFT delta per touched GGUF tensor, in GGUF layout, without the tool: the PEFT-merged HF
    weights written by the arch's own GGUF writer (its Q/K permutation, its names), minus the F32
    base's tensors."""
    merged_path = workdir / "peft-merged-f32.gguf"
    mb.arch.write_gguf(merged_path, mb.cfg, peft_lora.merge(mb.weights, [(ad, 1.0)]), dtype="f32")
    merged, base = read_gguf_raw(merged_path), read_gguf_raw(mb.paths["f32"])
    names = gguf_names(mb, ad)
    out = {n: merged.tensors[n].values().astype(np.float64) - base.tensors[n].values().astype(np.float64)
           for n in names}
    changed = {n for n, t in merged.tensors.items() if t.data != base.tensors[n].data}
    assert changed == names, f"PEFT merge changed {sorted(changed)}, the modules map to {sorted(names)}"
    return out


def logits(path: Path, workdir: Path, adapters=()) -> np.ndarray:
    return harness.llama_logits_plain_cpu(path, TOKENS, workdir, adapters=adapters)


def naive_scale_check(label: str, got: np.ndarray, mb: MergeBase, ad, tol: float) -> float:
    """What a tool writing alpha / r for every module would give must be far from llama.cpp's."""
    r_naive = rel(got, numpy_ref(mb, ad, naive=True))
    harness.record_note(f"create {label}", f"naive alpha/r reference vs llama.cpp rel {r_naive:.2e} "
                                           f"(must exceed {max(5 * tol, 0.05):g})")
    assert r_naive > 5 * tol and r_naive > 0.05, f"naive scale not distinguishable (rel {r_naive:.3e})"
    return r_naive


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------


def test_modelfile_reader():
    """The test's own reader: bare, "quoted" and \"\"\"multi-line\"\"\" values, comments, PARAMETER."""
    text = ('# Modelfile generated by ollama-tools\nFROM /a b/c.gguf\nADAPTER "/x/ y.gguf"\n'
            'PARAMETER stop "<|end|>"\nTEMPLATE """{{ .System }}\n{{ .Prompt }}"""\nSYSTEM """one line"""\n')
    assert read_modelfile(text) == [("from", "/a b/c.gguf"), ("adapter", "/x/ y.gguf"), ("parameter stop", "<|end|>"),
                                    ("template", "{{ .System }}\n{{ .Prompt }}"), ("system", "one line")]


@pytest.mark.parametrize("arch_name", CREATE_ARCHS)
def test_merge_f32_base_rslora_and_cache_reuse(arch_name, create_bases, cache_dir, tmp_path):
    """--mode merge on the F32 base with an rsLoRA adapter: FROM is the merged file in the cache,
    llama.cpp on it == numpy PEFT forward (tol 1e-3); a second run reuses the cached build."""
    mb = create_bases(arch_name)
    ad = peft_adapter(mb, tmp_path / "adapter", seed=11, r=16, alpha=16, use_rslora=True)
    base = mb.paths["f32"]
    # Relative paths, run from tmp_path: the Modelfile must name absolute files all the same.
    rel_base = Path(os.path.relpath(base, tmp_path))
    run = create_from_base(rel_base, Path("adapter"), "merge", Path("Modelfile"), tmp_path)
    assert_in_builds(cache_dir, run.from_path, "merge-")
    assert run.adapter_path is None, f"merge mode wrote an ADAPTER line: {run.entries}"
    assert BUILT in run.stdout and REUSED not in run.stdout, run.stdout
    sidecar = run.from_path.with_name(run.from_path.name + ".sha256")
    digest = sha256(run.from_path)
    assert sidecar.read_text().split()[0] == digest, "the cache's digest file does not match the merged file"
    assert digest in run.stdout, f"stdout does not name the file's digest sha256:{digest}:\n{run.stdout}"

    touched = gguf_names(mb, ad)
    merged = check_structure(base, run.from_path, touched, expect_type=lambda t: t)
    wf = check_weights(base, merged, peft_deltas_gguf(mb, ad, tmp_path))

    ref = numpy_ref(mb, ad)
    got = logits(run.from_path, tmp_path / "run-merged")
    r, effect = rel(got, ref), rel(ref, mb.ref_logits)
    label = f"{arch_name} merge f32 rslora"
    harness.record(f"create {label} vs numpy", r, F32_TOL, effect=effect)
    print(f"create {label}: rel {r:.2e} (tol {F32_TOL:g}), effect {effect:.3f}, worst tensor {wf.worst}, "
          f"delta gain deviation {wf.gain_dev:.1e}")
    assert effect > MIN_ADAPTER_EFFECT, f"adapter too weak to test anything (effect {effect:.3f})"
    assert r < F32_TOL, f"{label}: llama.cpp on the merged FROM vs numpy PEFT rel {r:.3e} >= {F32_TOL:g}"
    naive_scale_check(label, got, mb, ad, F32_TOL)

    # Second run, same inputs, same Modelfile path (--force): the cached build is reused untouched.
    first_text, mtime = run.modelfile.read_text(), run.from_path.stat().st_mtime_ns
    again = create_from_base(base, tmp_path / "adapter", "merge", run.modelfile, tmp_path, "--force")
    assert REUSED in again.stdout and BUILT not in again.stdout, again.stdout
    assert again.from_path == run.from_path, (again.from_path, run.from_path)
    assert again.modelfile.read_text() == first_text
    assert run.from_path.stat().st_mtime_ns == mtime and sha256(run.from_path) == digest, "cached build rewritten"
    assert sorted(p.name for p in (cache_dir / "builds").iterdir()) == sorted([run.from_path.name, sidecar.name])
    # Without --force an existing Modelfile is refused, and nothing else changes.
    p = subprocess.run([str(harness.require_binary().resolve()), "create-from-base", "--base", str(base), "--adapter",
                        str(tmp_path / "adapter"), "--mode", "merge", "--no-create", "--out-modelfile", str(run.modelfile)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "--force" in p.stderr, (p.returncode, p.stdout, p.stderr)


@pytest.mark.parametrize("arch_name", CREATE_ARCHS)
def test_merge_q8_0_base(arch_name, create_bases, cache_dir, tmp_path):
    """--mode auto (merge, with no server to ask) on the Q8_0 base with an alpha_pattern adapter.

    Merged tensors are re-quantized to Q8_0, so the logits carry quantization noise; bounds are
    measured in the same test, against llama.cpp and against numpy:
      ggml merge    the merge made without the tool: dequant(base) + the PEFT delta (GGUF layout,
                    from the arch's writer), quantized by ggml's reference Q8_0 quantizer;
      with --lora   llama.cpp on the Q8_0 base + the tool's F32-converted adapter (--lora);
      - vs --lora:  rel(FROM, with --lora) < 3 x rel(ggml merge, with --lora) (the merge suite's
                    bound; re-quantizing an unmerged Q8_0 base is idempotent, so its requant
                    noise term is 0);
      - vs numpy:   rel(FROM, numpy PEFT on the F32 weights) < 2 x rel(ggml merge, same): no worse
                    than twice what an ideal merge at Q8_0 gets;
      - per tensor: check_weights (error <= 1.5 x ggml's own Q8_0 error, delta gain within 1%).
    """
    mb = create_bases(arch_name)
    base = mb.paths["q8_0"]
    ad = peft_adapter(mb, tmp_path / "adapter", seed=21, patterns=("alpha",))
    run = create_from_base(base, tmp_path / "adapter", "auto", tmp_path / "Modelfile", tmp_path)
    assert_in_builds(cache_dir, run.from_path, "merge-")
    assert run.adapter_path is None, f"auto without a server wrote an ADAPTER line: {run.entries}"
    assert "merged into the base" in run.stdout, run.stdout

    touched = gguf_names(mb, ad)
    merged = check_structure(base, run.from_path, touched, expect_type=lambda t: t)
    assert {merged.tensors[n].type for n in touched} == {"Q8_0"}
    deltas = peft_deltas_gguf(mb, ad, tmp_path)
    wf = check_weights(base, merged, deltas)
    ggml_merge = tmp_path / "ggml-merge.gguf"
    reference_merge(base, ggml_merge, deltas, None)
    lora = tmp_path / "lora-f32.gguf"
    convert_f32(mb, ad, base, lora)

    got = logits(run.from_path, tmp_path / "run-merged")
    with_lora = logits(base, tmp_path / "run-lora", adapters=[(lora, 1.0)])
    ideal = logits(ggml_merge, tmp_path / "run-ggml-merge")
    ref = numpy_ref(mb, ad)
    f = {"lora": rel(got, with_lora), "ggml_noise": rel(ideal, with_lora), "np": rel(got, ref),
         "ideal_np": rel(ideal, ref), "vs_ggml": rel(got, ideal), "effect": rel(ref, mb.ref_logits)}
    bound_lora = NOISE_FACTOR * f["ggml_noise"]
    bound_np = IDEAL_FACTOR * f["ideal_np"]
    label = f"{arch_name} auto(merge) q8_0 alpha_pattern"
    harness.record(f"create {label} vs --lora", f["lora"], bound_lora, effect=f["effect"])
    harness.record(f"create {label} vs numpy", f["np"], bound_np, effect=f["effect"])
    same = sum(merged.tensors[n].data == read_gguf_raw(ggml_merge).tensors[n].data for n in touched)
    text = (f"vs --lora {f['lora']:.2e} < {bound_lora:.2e} (ggml-merge noise {f['ggml_noise']:.2e}); vs numpy "
            f"{f['np']:.2e} < {bound_np:.2e} (ggml merge vs numpy {f['ideal_np']:.2e}); vs ggml merge {f['vs_ggml']:.2e}; "
            f"{same}/{len(touched)} touched tensors byte-identical to ggml's; worst tensor {wf.worst}; "
            f"delta gain deviation {wf.gain_dev:.1e}; effect {f['effect']:.3f}")
    harness.record_note(f"create {label}", text)
    print(f"create {label}: {text}")
    assert f["effect"] > 1.5 * max(bound_lora, bound_np), "adapter effect too small against the bounds"
    assert f["lora"] < bound_lora, f"{label}: FROM vs Q8_0 base + --lora rel {f['lora']:.3e} >= {bound_lora:.3e}"
    assert f["np"] < bound_np, f"{label}: FROM vs numpy PEFT rel {f['np']:.3e} >= {bound_np:.3e}"


@pytest.mark.parametrize("arch_name", CREATE_ARCHS)
def test_adapter_mode_patterns(arch_name, create_bases, cache_dir, tmp_path):
    """--mode adapter with a rank_pattern + alpha_pattern PEFT adapter: FROM is the base file,
    ADAPTER the converted GGUF LoRA in the cache; llama.cpp FROM --lora ADAPTER == numpy PEFT."""
    mb = create_bases(arch_name)
    base = mb.paths["f32"]
    ad = peft_adapter(mb, tmp_path / "adapter", seed=31, patterns=("rank", "alpha"))
    run = create_from_base(base, tmp_path / "adapter", "adapter", tmp_path / "Modelfile", tmp_path)
    assert run.from_path == base.resolve(), f"FROM {run.from_path}, expected the base file {base.resolve()}"
    assert run.adapter_path is not None, f"adapter mode wrote no ADAPTER line: {run.entries}"
    assert_in_builds(cache_dir, run.adapter_path, "adapter-")
    assert "adapter layer" in run.stdout, run.stdout

    info = harness.read_gguf(run.adapter_path)
    assert info.kv.get("general.type") == "adapter" and info.kv.get("adapter.type") == "lora", info.kv
    assert info.kv.get("general.architecture") == arch_name
    pairs = {n[:-len(".lora_a")] for n in info.tensors if n.endswith(".lora_a")}
    assert pairs == gguf_names(mb, ad), f"adapter pairs {sorted(pairs)} != PEFT modules {sorted(gguf_names(mb, ad))}"
    types = {t for t, _ in info.tensors.values()}
    assert types <= set(TOL_BY_TYPE), types
    tol = max(TOL_BY_TYPE[t] for t in types)

    ref = numpy_ref(mb, ad)
    got = logits(run.from_path, tmp_path / "run-lora", adapters=[(run.adapter_path, 1.0)])
    r, effect = rel(got, ref), rel(ref, mb.ref_logits)
    label = f"{arch_name} adapter mode rank+alpha pattern"
    harness.record(f"create {label} vs numpy", r, tol, effect=effect)
    print(f"create {label}: rel {r:.2e} (tol {tol:g}, types {sorted(types)}), effect {effect:.3f}")
    assert effect > MIN_ADAPTER_EFFECT
    assert r < tol, f"{label}: llama.cpp FROM --lora ADAPTER vs numpy PEFT rel {r:.3e} >= {tol:g}"
    naive_scale_check(label, got, mb, ad, tol)


@pytest.mark.parametrize("arch_name", CREATE_ARCHS)
def test_ready_gguf_adapter(arch_name, create_bases, cache_dir, tmp_path):
    """A GGUF LoRA from `convert` (default outtype) of an rsLoRA + rank_pattern adapter, given as
    --adapter: merge mode merges it (FROM == numpy PEFT within the adapter type's tolerance; each
    merged tensor == base + llama.cpp's own reading of the adapter); adapter mode passes the file
    through as is; `merge ADAPTER.gguf` writes the same tensors as create's cached merge."""
    mb = create_bases(arch_name)
    base = mb.paths["f32"]
    ad = peft_adapter(mb, tmp_path / "adapter", seed=41, r=16, alpha=16, use_rslora=True, patterns=("rank",))
    gguf_adapter = tmp_path / "my adapter.gguf"
    harness.convert_ok([ad.path, "--base", base, "-o", gguf_adapter])
    types = {t for t, _ in harness.read_gguf(gguf_adapter).tensors.values()}
    tol = max(TOL_BY_TYPE[t] for t in types)
    adapter_bytes = sha256(gguf_adapter)

    run = create_from_base(base, gguf_adapter, "merge", tmp_path / "Modelfile", tmp_path)
    assert_in_builds(cache_dir, run.from_path, "merge-")
    assert run.adapter_path is None, run.entries
    touched = gguf_names(mb, ad)
    merged = check_structure(base, run.from_path, touched, expect_type=lambda t: t)
    wf = check_weights(base, merged, lora_deltas(gguf_adapter))

    ref = numpy_ref(mb, ad)
    got = logits(run.from_path, tmp_path / "run-merged")
    with_lora = logits(base, tmp_path / "run-lora", adapters=[(gguf_adapter, 1.0)])
    r, effect, r_lora = rel(got, ref), rel(ref, mb.ref_logits), rel(got, with_lora)
    label = f"{arch_name} merge of a ready GGUF adapter (rslora+rank_pattern, {'/'.join(sorted(types))})"
    harness.record(f"create {label} vs numpy", r, tol, effect=effect)
    harness.record(f"create {label} vs base --lora", r_lora, tol)
    print(f"create {label}: rel {r:.2e} (tol {tol:g}), vs base + --lora {r_lora:.2e}, effect {effect:.3f}, "
          f"worst tensor {wf.worst}, delta gain deviation {wf.gain_dev:.1e}")
    assert effect > MIN_ADAPTER_EFFECT
    assert r < tol, f"{label}: llama.cpp on the merged FROM vs numpy PEFT rel {r:.3e} >= {tol:g}"
    assert r_lora < tol, f"{label}: merged FROM vs llama.cpp base --lora the same adapter rel {r_lora:.3e}"
    naive_scale_check(label, got, mb, ad, tol)

    # `merge ADAPTER.gguf`: the same merged tensors as create's cached file.
    out = tmp_path / "merged-by-merge.gguf"
    harness.merge_ok([gguf_adapter, "--base", base, "-o", out])
    by_merge = read_gguf_raw(out)
    differ = [n for n, t in merged.tensors.items() if by_merge.tensors[n].data != t.data]
    assert not differ, f"`merge {gguf_adapter.name}` and create-from-base differ in {differ}"
    harness.record_note(f"create {arch_name} GGUF adapter", "merge command output byte-identical to create's cache file: "
                        f"{sha256(out) == sha256(run.from_path)}")

    # Adapter mode: the ready adapter is used where it is, unchanged, nothing added to the cache.
    before = sorted(p.name for p in (cache_dir / "builds").iterdir())
    run2 = create_from_base(base, gguf_adapter, "adapter", tmp_path / "Modelfile.adapter", tmp_path)
    assert run2.from_path == base.resolve(), run2.from_path
    assert run2.adapter_path == gguf_adapter.resolve(), f"ADAPTER {run2.adapter_path}, expected {gguf_adapter.resolve()}"
    assert sha256(gguf_adapter) == adapter_bytes, "the user's adapter file was changed"
    assert sorted(p.name for p in (cache_dir / "builds").iterdir()) == before, "adapter mode built something for a GGUF adapter"
