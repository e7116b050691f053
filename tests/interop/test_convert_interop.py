"""End-to-end interop: PEFT adapter -> `ollama-tools convert` -> GGUF adapter -> real llama.cpp.

For every registered tiny architecture and every case below, the logits llama.cpp computes for
base + converted adapter must match a numpy forward pass (HF semantics) on the PEFT-merged
weights W + scale * B @ A. The reference never looks at the converter's output.
"""
from __future__ import annotations

import signal
from dataclasses import dataclass

import numpy as np
import pytest

import archs
import harness
import peft_lora
from harness import TOKENS, convert_ok, read_gguf, rel
from llama_runner import llama_logits, run_llama

ARCH_LIST = [archs.ARCHS[k] for k in sorted(archs.ARCHS)]
ARCH_IDS = [a.ID for a in ARCH_LIST]

# llama.cpp vs numpy tolerance by the GGUF type of the adapter tensors (bf16/f16 storage and
# ggml converting activations to that type in the LoRA matmuls both cost precision).
TOL_BY_TYPE = {"F32": 1e-3, "F16": 5e-3, "BF16": 2e-2}
MIN_ADAPTER_EFFECT = 0.1   # the adapter must move the reference logits at least this much


# ---------------------------------------------------------------------------------------------
# case table
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdapterSpec:
    r: int = 8
    alpha: float = 16
    targets: str = "plain"       # plain | attn | all | embed | lm_head | stack_b (resolved per arch)
    use_rslora: bool = False
    patterns: tuple = ()         # subset of ("rank", "alpha")
    dtype: str = "f32"           # safetensors dtype of A/B
    default_keys: bool = False   # "...lora_A.default.weight" key variant
    seed: int = 0
    cli_weight: float | None = None  # ADAPTER:WEIGHT on the command line


@dataclass(frozen=True)
class Case:
    adapters: tuple
    args: tuple = ()
    global_scale: float = 1.0        # what --scale should multiply the effect by
    expect_type: str | None = None   # ggml type all lora tensors must have (--outtype)
    naive_check: bool = False        # show that alpha/r-everywhere would be caught
    needs_untied: bool = False       # embedding / lm_head LoRA: only on bases with an lm_head


CASES = {
    "plain": Case((AdapterSpec(),)),
    "rslora": Case((AdapterSpec(r=16, alpha=16, targets="attn", use_rslora=True),), naive_check=True),
    "rank_pattern": Case((AdapterSpec(targets="attn", patterns=("rank",)),)),
    "alpha_pattern": Case((AdapterSpec(targets="attn", patterns=("alpha",)),), naive_check=True),
    "rslora_rank_alpha_pattern": Case((AdapterSpec(r=8, alpha=8, targets="all", use_rslora=True,
                                                   patterns=("rank", "alpha")),), naive_check=True),
    "bf16_input": Case((AdapterSpec(dtype="bf16", seed=3),)),
    "f16_input": Case((AdapterSpec(dtype="f16", seed=4),)),
    "outtype_f16": Case((AdapterSpec(seed=5),), args=("--outtype", "f16"), expect_type="F16"),
    "outtype_f32": Case((AdapterSpec(dtype="bf16", seed=6),), args=("--outtype", "f32"), expect_type="F32"),
    "outtype_bf16": Case((AdapterSpec(seed=7),), args=("--outtype", "bf16"), expect_type="BF16"),
    "default_keys": Case((AdapterSpec(default_keys=True, seed=8),)),
    "embedding": Case((AdapterSpec(targets="embed", seed=9),), needs_untied=True),
    "scale_0.5": Case((AdapterSpec(seed=10),), args=("--scale", "0.5"), global_scale=0.5),
    "scale_negative": Case((AdapterSpec(seed=15),), args=("--scale", "-1"), global_scale=-1.0),
    "lm_head": Case((AdapterSpec(targets="lm_head", seed=16),), needs_untied=True),
    "stacked_A1_B0.5": Case((AdapterSpec(r=8, alpha=16, targets="plain", seed=11, cli_weight=1.0),
                             AdapterSpec(r=4, alpha=32, targets="stack_b", seed=12, cli_weight=0.5))),
    "attn_only": Case((AdapterSpec(targets="attn", seed=13),)),
    "all_modules": Case((AdapterSpec(targets="all", seed=14),)),
}


def resolve_targets(arch, kind: str) -> list[str]:
    attn, mlp = archs.attention_modules(arch), archs.mlp_modules(arch)
    if kind == "plain":      # q_proj + v_proj on llama-likes (PEFT's default), qkv_proj on phi3
        return attn[::2]
    if kind == "attn":
        return attn
    if kind == "all":
        return list(arch.LORA_MODULES)
    if kind == "embed":
        return attn[::2] + ["embed_tokens"]
    if kind == "lm_head":
        return attn[::2] + ["lm_head"]
    if kind == "stack_b":    # overlaps "plain" on attn[0], adds modules it lacks
        return list(dict.fromkeys([attn[0], attn[-1]] + mlp[:1]))
    raise ValueError(kind)


def resolve_patterns(arch, spec: AdapterSpec) -> tuple[dict, dict]:
    """Non-overlapping patterns: a bare module name (all layers) and a full module name."""
    attn = archs.attention_modules(arch)
    first, last = attn[0], archs.module_path(arch, attn[-1])
    rank = {first: spec.r // 2, f"model.layers.1.{last}": spec.r + 4} if "rank" in spec.patterns else {}
    alpha = ({first: spec.alpha * 4, f"model.layers.1.{last}": spec.alpha / 4}
             if "alpha" in spec.patterns else {})
    return rank, alpha


def has_untied_output(arch) -> bool:
    try:
        cfg = arch.tiny_config()
        return "lm_head.weight" in arch.random_weights(cfg, np.random.default_rng(0))
    except Exception:  # noqa: BLE001 - keep the case so the failure shows up in the test itself
        return True


PARAMS = [pytest.param(a, name, id=f"{a.ID}-{name}")
          for a in ARCH_LIST for name, case in CASES.items()
          if not case.needs_untied or has_untied_output(a)]


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------


def test_arch_registry():
    """Every arch module imports and exposes the interface; the required archs are covered."""
    assert not archs.ERRORS, "broken arch modules:\n" + "\n".join(f"{k}: {v}" for k, v in archs.ERRORS.items())
    missing = {"llama", "qwen2", "gemma2", "phi3"} - set(archs.ARCHS)
    assert not missing, f"required archs not registered yet: {sorted(missing)} (have {sorted(archs.ARCHS)})"


@pytest.mark.parametrize("arch", ARCH_LIST, ids=ARCH_IDS)
def test_base_matches_reference(arch, base_models, tmp_path):
    """Harness self-check, no adapter: llama.cpp on the f32 base GGUF == numpy HF forward."""
    base = base_models(arch)
    got = llama_logits(base.path, TOKENS, tmp_path)
    assert got.shape == base.ref_logits.shape, (got.shape, base.ref_logits.shape)
    r = rel(got, base.ref_logits)
    harness.record(f"base[{arch.ID}]", r, 1e-3)
    assert r < 1e-3, f"{arch.ID}: llama.cpp base vs numpy rel={r:.3e}"


@pytest.mark.parametrize("arch", ARCH_LIST, ids=ARCH_IDS)
def test_base_f16_matches_reference(arch, base_models, tmp_path):
    """write_gguf(dtype='f16') is sound: llama.cpp == numpy on f16-rounded weights."""
    base = base_models(arch)
    path = tmp_path / "base-f16.gguf"
    arch.write_gguf(path, base.cfg, base.weights, dtype="f16")
    info = read_gguf(path)
    assert "F16" in {t for t, _ in info.tensors.values()}, "dtype='f16' wrote no F16 tensor"
    rounded = {k: (v.astype(np.float16).astype(np.float32) if v.ndim >= 2 else v) for k, v in base.weights.items()}
    ref = arch.forward(base.cfg, rounded, TOKENS)
    r = rel(llama_logits(path, TOKENS, tmp_path), ref)
    harness.record(f"base_f16[{arch.ID}]", r, 1e-2)
    assert r < 1e-2, f"{arch.ID}: llama.cpp f16 base vs numpy rel={r:.3e}"


@pytest.mark.parametrize("arch,case_name", PARAMS)
def test_convert_matches_peft(arch, case_name, base_models, tmp_path):
    case = CASES[case_name]
    harness.require_binary()  # fail (not skip) early with the build hint
    base = base_models(arch)

    adapters, cli = [], []
    for k, spec in enumerate(case.adapters):
        rank_p, alpha_p = resolve_patterns(arch, spec)
        ad = peft_lora.write_peft_adapter(
            tmp_path / f"adapter{k}", arch, base.cfg, base.weights, r=spec.r, alpha=spec.alpha,
            targets=resolve_targets(arch, spec.targets), rng=np.random.default_rng(1000 + spec.seed),
            use_rslora=spec.use_rslora, rank_pattern=rank_p, alpha_pattern=alpha_p,
            dtype=spec.dtype, default_keys=spec.default_keys)
        if rank_p:  # the pattern must really change shapes, else the case proves nothing
            assert len({m.r for m in ad.modules}) > 1
        if alpha_p:
            assert len({m.alpha for m in ad.modules}) > 1
        adapters.append((ad, 1.0 if spec.cli_weight is None else spec.cli_weight))
        cli.append(str(ad.path) if spec.cli_weight is None else f"{ad.path}:{spec.cli_weight}")

    out = tmp_path / "adapter.gguf"
    convert_ok([*cli, "--base", base.path, "-o", out, *case.args])

    # The file itself: adapter metadata for this arch, complete lora pairs, requested dtype.
    info = read_gguf(out)
    assert info.kv.get("general.architecture") == arch.ARCH
    assert info.kv.get("general.type") == "adapter"
    assert info.kv.get("adapter.type") == "lora"
    assert "adapter.lora.alpha" in info.kv
    lora_a = {n[:-len(".lora_a")] for n in info.tensors if n.endswith(".lora_a")}
    lora_b = {n[:-len(".lora_b")] for n in info.tensors if n.endswith(".lora_b")}
    assert lora_a == lora_b and len(lora_a) == len(info.tensors) // 2, sorted(info.tensors)
    want = archs.gguf_names(arch, base.cfg, {m.name + ".weight" for ad, _ in adapters for m in ad.modules})
    assert lora_a == want, f"lora pairs for {sorted(lora_a)}, the PEFT modules map to {sorted(want)}"
    types = {t for t, _ in info.tensors.values()}
    if case.expect_type:
        assert types == {case.expect_type}, f"--outtype asked for {case.expect_type}, file has {types}"
    assert types <= set(TOL_BY_TYPE), f"unexpected tensor types {types}"
    tol = max(TOL_BY_TYPE[t] for t in types)

    got = llama_logits(base.path, TOKENS, tmp_path, adapters=[(out, 1.0)])
    ref = arch.forward(base.cfg, peft_lora.merge(base.weights, adapters, case.global_scale), TOKENS)
    r = rel(got, ref)
    effect = rel(ref, base.ref_logits)
    harness.record(f"{arch.ID}-{case_name}", r, tol, effect=effect)
    print(f"{arch.ID}-{case_name}: rel={r:.3e} (tol {tol:g}, types {sorted(types)}), adapter effect={effect:.3f}")
    assert effect > MIN_ADAPTER_EFFECT, f"adapter too weak to test anything (effect {effect:.3f})"
    assert r < tol, f"llama.cpp with converted adapter vs PEFT reference: rel={r:.3e} >= {tol:g}"

    if case.naive_check:
        # What a converter that writes alpha/r for every module (ignoring rsLoRA and
        # alpha_pattern, like llama.cpp's convert_lora_to_gguf.py) would produce: must be caught.
        naive = arch.forward(base.cfg, peft_lora.merge(base.weights, adapters, case.global_scale,
                                                       naive_scale=True), TOKENS)
        r_naive = rel(got, naive)
        harness.record_note(f"{arch.ID}-{case_name}", f"naive alpha/r reference vs llama.cpp rel {r_naive:.2e} "
                                                        f"(must exceed {max(5 * tol, 0.05):g})")
        print(f"  naive alpha/r reference vs llama.cpp: rel={r_naive:.3e}")
        assert r_naive > 5 * tol and r_naive > 0.05, f"naive scale not distinguishable (rel {r_naive:.3e})"


def _tied_embedding_probe_adapter(path, cfg, rng, r=4):
    """A GGUF LoRA on token_embd.weight written directly with the gguf package (no binary)."""
    import gguf

    vocab, hidden = cfg["vocab_size"], cfg["hidden_size"]
    A = rng.standard_normal((r, vocab)).astype(np.float32)          # PEFT lora_embedding_A
    B = (rng.standard_normal((hidden, r)) * 0.3).astype(np.float32)  # PEFT lora_embedding_B
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_string("general.type", "adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", float(r))  # scale 1
    w.add_tensor("token_embd.weight.lora_a", np.ascontiguousarray(A.T))  # stored transposed: [vocab, r]
    w.add_tensor("token_embd.weight.lora_b", B)                          # [hidden, r]
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return A, B


def test_probe_embedding_lora_untied_llama(tmp_path):
    """Control for the probe below: with an lm_head, llama.cpp applies a token_embd LoRA to the
    input embedding only, exactly as PEFT does."""
    llama = archs.ARCHS["llama"]
    base = harness.build_base(llama, tmp_path / "base", tie_word_embeddings=False)
    A, B = _tied_embedding_probe_adapter(tmp_path / "emb.gguf", base.cfg, np.random.default_rng(5))
    w = dict(base.weights)
    w["model.embed_tokens.weight"] = w["model.embed_tokens.weight"] + (B @ A).T
    ref = llama.forward(base.cfg, w, TOKENS)
    got = llama_logits(base.path, TOKENS, tmp_path, adapters=[(tmp_path / "emb.gguf", 1.0)])
    assert rel(ref, base.ref_logits) > MIN_ADAPTER_EFFECT
    assert rel(got, ref) < 1e-3


def test_probe_embedding_lora_tied_llama_aborts(tmp_path):
    """Probe (finding, pinned): with TIED embeddings llama.cpp reuses token_embd.weight as the
    output matrix, so the token_embd LoRA is also looked up for the output projection, where its
    transposed layout does not fit: ggml aborts with GGML_ASSERT(ggml_can_mul_mat(a, b)) during
    llama_decode (the adapter itself loads fine). Runs in a child process, so pytest survives.
    If this starts passing differently, llama.cpp changed: re-check the converter's tied-model rule."""
    llama = archs.ARCHS["llama"]
    base = harness.build_base(llama, tmp_path / "base", tie_word_embeddings=True)
    assert "output.weight" not in read_gguf(base.path).tensors
    _tied_embedding_probe_adapter(tmp_path / "emb.gguf", base.cfg, np.random.default_rng(5))
    res = run_llama(base.path, TOKENS, tmp_path, adapters=[(tmp_path / "emb.gguf", 1.0)])
    harness.record_note("tied token_embd LoRA", f"returncode {res.returncode}, stages {res.stages}")
    assert res.returncode == -signal.SIGABRT, res.describe()
    assert "adapters_set" in res.stages and "decoding" in res.stages, res.describe()
    assert "GGML_ASSERT(ggml_can_mul_mat(a, b)) failed" in res.stderr, res.describe()


def test_embedding_lora_on_tied_base_is_safe(tmp_path):
    """Given the probe above, the converter must never hand llama.cpp an embedding LoRA for a
    tied-embedding base: it either refuses (non-zero exit, a message) or writes an adapter that
    runs and matches PEFT (input embedding changed, output projection not)."""
    llama = archs.ARCHS["llama"]
    base = harness.build_base(llama, tmp_path / "base", tie_word_embeddings=True)
    ad = peft_lora.write_peft_adapter(tmp_path / "adapter", llama, base.cfg, base.weights, r=8, alpha=16,
                                      targets=["q_proj", "v_proj", "embed_tokens"],
                                      rng=np.random.default_rng(77))
    out = tmp_path / "adapter.gguf"
    p = harness.run_convert([ad.path, "--base", base.path, "-o", out])
    if p.returncode != 0:
        assert (p.stderr + p.stdout).strip(), "refused without any message"
        harness.record_note("converter on tied embedding LoRA", "refused: " + (p.stderr + p.stdout).strip()[:200])
        return
    res = run_llama(base.path, TOKENS, tmp_path, adapters=[(out, 1.0)])
    assert res.returncode == 0, "converter wrote an adapter that breaks llama.cpp:\n" + res.describe()
    # PEFT semantics on a tied model: only the input lookup gets the delta; lm_head keeps W_embed.
    w = peft_lora.merge(base.weights, [(ad, 1.0)])
    w["lm_head.weight"] = base.weights["model.embed_tokens.weight"].astype(np.float64)
    ref = llama.forward(base.cfg, w, TOKENS)
    r = rel(res.logits, ref)
    harness.record_note("converter on tied embedding LoRA", f"accepted, rel={r:.3e}")
    assert r < 2e-2, f"accepted, but llama.cpp result differs from PEFT: rel={r:.3e}"


def test_convert_rejects_module_missing_in_base(tmp_path):
    """An adapter for a deeper model (layer 2 exists only in the adapter) must be refused with a
    message, not written: llama.cpp would reject the file ("does not exist in base model")."""
    llama = archs.ARCHS["llama"]
    harness.require_binary()
    base = harness.build_base(llama, tmp_path / "base")
    deep_cfg = llama.tiny_config(num_hidden_layers=3)
    deep = llama.random_weights(deep_cfg, np.random.default_rng(3))
    ad = peft_lora.write_peft_adapter(tmp_path / "adapter", llama, deep_cfg, deep, r=8, alpha=16,
                                      targets=["q_proj", "v_proj"], rng=np.random.default_rng(4))
    p = harness.run_convert([ad.path, "--base", base.path, "-o", tmp_path / "out.gguf"])
    assert p.returncode != 0, "converter accepted LoRA tensors for a layer the base does not have"
    assert (p.stderr + p.stdout).strip(), "refused without any message"
