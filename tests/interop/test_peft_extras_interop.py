"""What real fine-tunes carry beyond LoRA pairs, in the real llama.cpp: DoRA (merged exactly) and
activated LoRA (a GGUF adapter with its invocation tokens).

DoRA's reference is PEFT's merge written out here from PEFT 0.21.2's source (tuners/lora/
variants.py DoraLinearVariant.merge_safe, dora.py get_weight_norm): with ΔW = s · B @ A in the
nn.Linear layout [out, in], W' = m / ||W + ΔW||_row · (W + ΔW), one L2 norm per output row, the
magnitude vector `lora_magnitude_vector` [out] saved without `.weight`. The base is llama (its
converter reorders q/k rows, so the magnitudes must follow) and the numpy forward runs on W'.
"""
from __future__ import annotations

import json

import gguf
import numpy as np
import pytest

import archs
import harness
import peft_lora
from harness import TOKENS, merge_ok, rel
from llama_runner import llama_logits

MIN_EFFECT = 0.1


def assert_runs_as(label, model, ref, base, tmp_path, tol=1e-3):
    """llama.cpp's logits of `model` on TOKENS within `tol` of the reference, which differs from the
    base's by more than MIN_EFFECT (a merge that lost the change would pass otherwise)."""
    got = harness.llama_logits_plain_cpu(model, TOKENS, tmp_path / "run")
    r, effect = rel(got, ref), rel(ref, base.ref_logits)
    harness.record(label, r, tol, effect=effect)
    assert effect > MIN_EFFECT and r < tol, f"rel {r:.3e}, effect {effect:.3f}"


def dora_adapter(path, arch, cfg, weights, rng, targets, r=4, alpha=8.0):
    """A PEFT DoRA adapter on `targets` of every layer; returns (dir, merged HF weights)."""
    s = alpha / r
    merged, tensors = dict(weights), {}
    for name in peft_lora.module_names(arch, cfg, targets):
        if name + ".weight" not in weights:
            continue  # a layer without it (hybrid or KV-sharing models): PEFT wraps only what exists
        W = weights[name + ".weight"].astype(np.float64)
        out_f, in_f = W.shape
        A = (rng.standard_normal((r, in_f)) / np.sqrt(in_f)).astype(np.float32)
        B = (rng.standard_normal((out_f, r)) * 0.3 * np.std(W) * np.sqrt(in_f / r)).astype(np.float32)
        V = W + s * B.astype(np.float64) @ A.astype(np.float64)
        norm = np.linalg.norm(V, axis=1)
        # trained magnitudes: the initial ||W + sBA|| moved by up to +-40% per row
        m = (norm * rng.uniform(0.6, 1.4, out_f)).astype(np.float32)
        tensors[f"base_model.model.{name}.lora_A.weight"] = A
        tensors[f"base_model.model.{name}.lora_B.weight"] = B
        tensors[f"base_model.model.{name}.lora_magnitude_vector"] = m
        merged[name + ".weight"] = ((m.astype(np.float64) / norm)[:, None] * V).astype(np.float32)
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": r, "lora_alpha": alpha, "use_dora": True, "peft_version": "0.21.2",
        "target_modules": targets, "base_model_name_or_path": "meta-llama/Llama-3.2-1B"}))
    peft_lora.write_safetensors(path / "adapter_model.safetensors", tensors, "f32")
    return path, merged


ARCHS = ["llama", "qwen2", "gemma3", "gemma4", "qwen35", "mistral3", "llama4"]


@pytest.fixture(scope="module", params=ARCHS)
def dora(request, tmp_path_factory):
    arch = archs.ARCHS[request.param]
    d = tmp_path_factory.mktemp("dora")
    base = harness.build_base(arch, d / "base", seed=170)
    adapter, merged = dora_adapter(d / "a", arch, base.cfg, base.weights, np.random.default_rng(171),
                                   ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj"])
    return arch, base, adapter, arch.forward(base.cfg, merged, TOKENS), merged


@pytest.mark.parametrize("base_type", ["f32", "f16", "q8_0"])
def test_dora_merges_exactly(base_type, dora, tmp_path):
    harness.require_binary()
    arch, base, adapter, ref, merged = dora
    path = base.path
    if base_type != "f32":
        path = tmp_path / f"base-{base_type}.gguf"
        if base_type == "f16":
            arch.write_gguf(path, base.cfg, base.weights, dtype="f16")
        else:
            write_q8_0(arch, base, path)
    out = tmp_path / "merged.gguf"
    merge_ok([adapter, "--base", path, "-o", out])
    # the merged weights go through the base type once more (f16 / q8_0 rounding of W')
    tol = {"f32": 1e-3, "f16": 1e-2, "q8_0": 5e-2}[base_type]
    assert_runs_as(f"{arch.ID} DoRA merge {base_type}", out, ref, base, tmp_path, tol)
    if base_type == "f32" and arch.ARCH == "llama":
        # weight level: q_proj of layer 1 in llama.cpp's row order, against PEFT's W'
        got_w = harness.read_gguf_raw(out).tensors["blk.1.attn_q.weight"].values()
        want = arch.permute_qk(merged["model.layers.1.self_attn.q_proj.weight"], base.cfg["num_attention_heads"])
        assert np.abs(got_w - want).max() < 1e-5 * np.abs(want).max()


def write_q8_0(arch, base, path):
    """The F32 base with every 2-d weight stored as Q8_0 (gguf-py's quantizer)."""
    r = gguf.GGUFReader(str(base.path))
    w = gguf.GGUFWriter(str(path), arch.ARCH)
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        w.add_key_value(f.name, f.contents(), f.types[0], f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None)
    for t in r.tensors:
        x = np.asarray(t.data, dtype=np.float32).reshape([int(n) for n in reversed(t.shape.tolist())])
        if x.ndim == 2 and x.shape[-1] % 32 == 0:
            w.add_tensor(t.name, gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0),
                         raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(t.name, x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_dora_is_refused_as_an_adapter_with_the_way_to_merge(dora, tmp_path):
    harness.require_binary()
    _, base, adapter, _, _ = dora
    p = harness.run_convert([adapter, "--base", base.path, "-o", tmp_path / "x.gguf"])
    assert p.returncode != 0 and "use_dora" in p.stderr and "ollama-tools merge" in p.stderr, p.stderr
    assert not (tmp_path / "x.gguf").exists()


def test_activated_lora_carries_its_invocation_tokens_to_llama_cpp(tmp_path):
    """aLoRA: convert writes `adapter.alora.invocation_tokens` (u32), which llama.cpp reads back
    (llama_adapter_get_alora_invocation_tokens); merge refuses, naming the reason."""
    harness.require_binary()
    import llama_cpp

    arch = archs.ARCHS["llama"]
    base = harness.build_base(arch, tmp_path / "base", seed=172)
    ad = peft_lora.write_peft_adapter(tmp_path / "a", arch, base.cfg, base.weights, r=4, alpha=8,
                                      targets=["q_proj", "v_proj"], rng=np.random.default_rng(173))
    cfg = json.loads((ad.path / "adapter_config.json").read_text())
    cfg["alora_invocation_tokens"] = [7, 42, 250]
    (ad.path / "adapter_config.json").write_text(json.dumps(cfg))
    out = tmp_path / "alora.gguf"
    harness.convert_ok([ad.path, "--base", base.path, "-o", out])
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    model = llama_cpp.llama_model_load_from_file(str(base.path).encode(), params)
    assert model, "the base did not load"
    try:
        lora = llama_cpp.llama_adapter_lora_init(model, str(out).encode())
        assert lora, "llama.cpp refused the adapter"
        n = llama_cpp.llama_adapter_get_alora_n_invocation_tokens(lora)
        ptr = llama_cpp.llama_adapter_get_alora_invocation_tokens(lora)
        got = [ptr[i] for i in range(n)]
        assert got == [7, 42, 250], got
        llama_cpp.llama_adapter_lora_free(lora)
    finally:
        llama_cpp.llama_model_free(model)
    p = harness.run_merge([ad.path, "--base", base.path, "-o", tmp_path / "m.gguf"])
    assert p.returncode != 0 and "alora_invocation_tokens" in p.stderr and "cannot be merged" in p.stderr, p.stderr


@pytest.mark.parametrize("arch_name", ARCHS)
@pytest.mark.parametrize("target", ["embed_tokens", "lm_head"])
def test_tied_embedding_lora_merges_untied(target, arch_name, tmp_path):
    """A LoRA on embed_tokens or lm_head of a base that ties them (Llama 3.2 1B, Gemma, small Qwen):
    PEFT's model changes only the module it wraps (the other use keeps the shared base weight), so
    the merge writes its own output.weight, which llama.cpp then uses."""
    harness.require_binary()
    arch = archs.ARCHS[arch_name]
    base = harness.build_base(arch, tmp_path / "base", seed=174, tie_word_embeddings=True)
    assert "lm_head.weight" not in base.weights
    emb = base.weights["model.embed_tokens.weight"]
    weights = dict(base.weights, **{"lm_head.weight": emb})     # PEFT's view: two uses of one tensor
    ad = peft_lora.write_peft_adapter(tmp_path / "a", arch, base.cfg, weights, r=4, alpha=8,
                                      targets=["q_proj", target], rng=np.random.default_rng(175))
    ref = arch.forward(base.cfg, peft_lora.merge(weights, [(ad, 1.0)]), TOKENS)
    p = harness.run_convert([ad.path, "--base", base.path, "-o", tmp_path / "x.gguf"])
    assert p.returncode != 0 and "ties its output" in p.stderr and "ollama-tools merge" in p.stderr, p.stderr
    out = tmp_path / "merged.gguf"
    m = merge_ok([ad.path, "--base", base.path, "-o", out])
    assert "own output.weight" in m.stderr + m.stdout
    t = harness.read_gguf_raw(out).tensors
    assert "output.weight" in t
    changed = "token_embd.weight" if target == "embed_tokens" else "output.weight"
    kept = "output.weight" if target == "embed_tokens" else "token_embd.weight"
    assert np.array_equal(t[kept].values(), emb), f"{kept} should stay the base's embeddings"
    assert not np.array_equal(t[changed].values(), emb)
    assert_runs_as(f"{arch_name} tied, {target} LoRA merged untied", out, ref, base, tmp_path)


def with_extra_tensors(path, tensors: dict, **config):
    """Adds tensors and config fields to the PEFT adapter folder at `path`."""
    from safetensors.numpy import load_file

    f = path / "adapter_model.safetensors"
    peft_lora.write_safetensors(f, {**load_file(str(f)), **tensors}, "f32")
    cfg = json.loads((path / "adapter_config.json").read_text())
    cfg.update(config)
    (path / "adapter_config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("arch_name,tied", [("llama", False), ("llama", True), ("qwen2", False), ("gemma3", True)])
def test_modules_to_save_and_trainable_tokens_merge_exactly(arch_name, tied, tmp_path):
    """modules_to_save full copies (PEFT saves them under the plain module key) replace the base's
    embeddings / lm_head; trainable tokens (`token_adapter.trainable_tokens_delta`, the new rows of
    the tokens trainable_token_indices lists) replace those rows. Untied base: embed_tokens and
    lm_head copies. Tied base: an embed_tokens copy (lm_head keeps the shared base weight, so the
    merge unties) plus trainable tokens of lm_head."""
    harness.require_binary()
    arch = archs.ARCHS[arch_name]
    base = harness.build_base(arch, tmp_path / "base", seed=176, tie_word_embeddings=tied)
    rng = np.random.default_rng(177)
    emb = base.weights["model.embed_tokens.weight"]
    ad = peft_lora.write_peft_adapter(tmp_path / "a", arch, base.cfg, base.weights, r=4, alpha=8,
                                      targets=["q_proj", "v_proj"], rng=rng)
    merged = peft_lora.merge(base.weights, [(ad, 1.0)])
    new_emb = (emb + rng.standard_normal(emb.shape) * 0.5).astype(np.float32)
    extra = {"base_model.model.model.embed_tokens.weight": new_emb}
    config = {"modules_to_save": ["embed_tokens"]}
    merged["model.embed_tokens.weight"] = new_emb
    if tied:
        merged["lm_head.weight"] = emb.copy()            # lm_head keeps the shared base tensor
        # PEFT refuses trainable tokens and modules_to_save on one layer: the tokens go to lm_head
        ids = [3, 77, 200]
        rows = (rng.standard_normal((3, emb.shape[1])) * 2.0).astype(np.float32)
        extra["base_model.model.lm_head.token_adapter.trainable_tokens_delta"] = rows
        config["trainable_token_indices"] = {"lm_head": ids}
        merged["lm_head.weight"][ids] = rows
    else:
        new_head = (base.weights["lm_head.weight"] * rng.uniform(0.5, 1.5)).astype(np.float32)
        extra["base_model.model.lm_head.weight"] = new_head
        config["modules_to_save"] = ["embed_tokens", "lm_head"]
        merged["lm_head.weight"] = new_head
    with_extra_tensors(ad.path, extra, **config)
    ref = arch.forward(base.cfg, merged, TOKENS)
    p = harness.run_convert([ad.path, "--base", base.path, "-o", tmp_path / "x.gguf"])
    assert p.returncode != 0 and "ollama-tools merge" in p.stderr, p.stderr
    out = tmp_path / "merged.gguf"
    merge_ok([ad.path, "--base", base.path, "-o", out])
    assert_runs_as(f"{arch_name} {'tied' if tied else 'untied'} modules_to_save + tokens merge", out, ref, base, tmp_path)


@pytest.mark.parametrize("arch_name", ["llama", "gemma3"])
def test_trainable_tokens_on_a_tied_base_change_both_uses(arch_name, tmp_path):
    """Trainable tokens on embed_tokens of a tied model: PEFT's tied wrapper gives lm_head the same
    rows, which the tied GGUF gets by patching token_embd alone."""
    harness.require_binary()
    arch = archs.ARCHS[arch_name]
    base = harness.build_base(arch, tmp_path / "base", seed=178, tie_word_embeddings=True)
    rng = np.random.default_rng(179)
    emb = base.weights["model.embed_tokens.weight"]
    ad = peft_lora.write_peft_adapter(tmp_path / "a", arch, base.cfg, base.weights, r=4, alpha=8,
                                      targets=["q_proj"], rng=rng)
    merged = peft_lora.merge(base.weights, [(ad, 1.0)])
    ids = [5, TOKENS[1], 250]
    rows = (rng.standard_normal((3, emb.shape[1])) * 2.0).astype(np.float32)
    with_extra_tensors(ad.path, {"base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta": rows},
                       trainable_token_indices=ids)
    merged["model.embed_tokens.weight"] = emb.copy()
    merged["model.embed_tokens.weight"][ids] = rows
    ref = arch.forward(base.cfg, merged, TOKENS)
    out = tmp_path / "merged.gguf"
    merge_ok([ad.path, "--base", base.path, "-o", out])
    assert "output.weight" not in harness.read_gguf_raw(out).tensors, "tokens alone keep the model tied"
    assert_runs_as(f"{arch_name} tied trainable tokens merge", out, ref, base, tmp_path)


def with_vocab(src, dst, n):
    """A copy of GGUF `src` with a real (tiny, byte-free) BPE vocabulary of n tokens instead of
    no_vocab: unique one-character tokens, one merge, bos 0 and eos 1."""
    r = gguf.GGUFReader(str(src))
    arch_name = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(str(dst), arch_name)
    for f in r.fields.values():
        if f.name.startswith(("GGUF.", "tokenizer.")) or f.name == "general.architecture":
            continue
        sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(f.name, f.contents(), f.types[0], sub)
    tokens = [chr(0x100 + i) for i in range(n)]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([1] * n)
    w.add_token_merges([f"{tokens[2]} {tokens[3]}"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    for t in r.tensors:
        w.add_tensor(t.name, np.asarray(t.data).reshape([int(d) for d in reversed(t.shape.tolist())]),
                     raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("arch_name", ARCHS)
def test_a_resized_vocabulary_merges_with_the_new_tokens(arch_name, tmp_path):
    """A fine-tune that added tokens (resize_token_embeddings + PEFT's saved embed_tokens / lm_head
    copies, tokenizer files beside the adapter): the merged GGUF has the new rows and the new
    tokens, typed as llama.cpp's converter types them (special: CONTROL, else USER_DEFINED, unnamed
    padding rows: [PAD{id}] UNUSED), eos / pad pointing at the tokenizer's, and llama.cpp runs a
    sequence with the new token ids as the numpy reference does."""
    harness.require_binary()
    arch = archs.ARCHS[arch_name]
    b = harness.build_base(arch, tmp_path / "b0", seed=180)
    n = b.cfg["vocab_size"]
    base = tmp_path / "base.gguf"
    with_vocab(b.path, base, n)
    rng = np.random.default_rng(181)
    ad = peft_lora.write_peft_adapter(tmp_path / "a", arch, b.cfg, b.weights, r=4, alpha=8,
                                      targets=["q_proj", "v_proj"], rng=rng)
    merged = peft_lora.merge(b.weights, [(ad, 1.0)])
    hidden = b.cfg["hidden_size"]
    emb = np.concatenate([b.weights["model.embed_tokens.weight"], rng.standard_normal((4, hidden))]).astype(np.float32)
    # a tied base (gemma3): PEFT saves both copies when the vocabulary was resized
    head0 = b.weights.get("lm_head.weight", b.weights["model.embed_tokens.weight"])
    head = np.concatenate([head0, rng.standard_normal((4, hidden)) * 0.3]).astype(np.float32)
    with_extra_tensors(ad.path, {"base_model.model.model.embed_tokens.weight": emb, "base_model.model.lm_head.weight": head},
                       modules_to_save=["embed_tokens", "lm_head"])
    (ad.path / "tokenizer.json").write_text(json.dumps({"added_tokens": [
        {"id": n, "content": "<|im_start|>", "special": True},
        {"id": n + 1, "content": "<|im_end|>", "special": True},
        {"id": n + 2, "content": "<think>", "special": False}]}))
    (ad.path / "tokenizer_config.json").write_text(json.dumps({
        "eos_token": "<|im_end|>", "pad_token": {"content": "<|im_start|>"}}))
    merged["model.embed_tokens.weight"], merged["lm_head.weight"] = emb, head
    cfg = dict(b.cfg, vocab_size=n + 4)
    tokens = TOKENS + [n, n + 2, n + 1]
    out = tmp_path / "merged.gguf"
    if arch_name == "gemma4":
        # its per-layer token embeddings are indexed by token too, and no PEFT copy resizes them
        p = harness.run_merge([ad.path, "--base", base, "-o", out])
        assert p.returncode != 0 and "per_layer_token_embd" in p.stderr and not out.exists(), p.stderr
        return
    ref = arch.forward(cfg, merged, tokens)
    m = merge_ok([ad.path, "--base", base, "-o", out])
    assert "resized to" in m.stderr + m.stdout
    g = harness.read_gguf(out)
    toks = g.kv["tokenizer.ggml.tokens"]
    assert len(toks) == n + 4 and toks[n:] == ["<|im_start|>", "<|im_end|>", "<think>", f"[PAD{n + 3}]"], toks[n:]
    assert list(g.kv["tokenizer.ggml.token_type"][n:]) == [3, 3, 4, 5]
    assert g.kv["tokenizer.ggml.eos_token_id"] == n + 1 and g.kv["tokenizer.ggml.padding_token_id"] == n
    assert g.tensors["token_embd.weight"][1] == (n + 4, hidden)
    got = harness.llama_logits_plain_cpu(out, tokens, tmp_path / "run")
    r = rel(got, ref)
    harness.record(f"{arch_name} resized vocabulary merge", r, 1e-3, effect=rel(ref[:len(TOKENS), :n], b.ref_logits))
    assert r < 1e-3, f"rel {r:.3e}"


def test_dora_on_the_embeddings_scales_columns(tmp_path):
    """DoRA on embed_tokens (PEFT's DoraEmbeddingLayer): ΔW = s · (B @ A)^T [vocab, hidden], one
    L2 norm per hidden column over the whole vocabulary, W' = (W + ΔW) · diag(m / n), the magnitude
    `[hidden]`; with q_proj DoRA beside it (rows)."""
    harness.require_binary()
    arch = archs.ARCHS["llama"]
    base = harness.build_base(arch, tmp_path / "base", seed=182)
    rng = np.random.default_rng(183)
    adapter, merged = dora_adapter(tmp_path / "a", arch, base.cfg, base.weights, rng, ["q_proj"])
    W = base.weights["model.embed_tokens.weight"].astype(np.float64)
    vocab, hidden = W.shape
    r, s = 4, 2.0
    A = (rng.standard_normal((r, vocab))).astype(np.float32)
    B = (rng.standard_normal((hidden, r)) * 0.3).astype(np.float32)
    V = W + s * (B.astype(np.float64) @ A.astype(np.float64)).T
    norm = np.linalg.norm(V, axis=0)
    m = (norm * rng.uniform(0.6, 1.4, hidden)).astype(np.float32)
    merged["model.embed_tokens.weight"] = (V * (m.astype(np.float64) / norm)[None, :]).astype(np.float32)
    with_extra_tensors(adapter, {
        "base_model.model.model.embed_tokens.lora_embedding_A": A,
        "base_model.model.model.embed_tokens.lora_embedding_B": B,
        "base_model.model.model.embed_tokens.lora_magnitude_vector": m})
    ref = arch.forward(base.cfg, merged, TOKENS)
    out = tmp_path / "merged.gguf"
    merge_ok([adapter, "--base", base.path, "-o", out])
    assert_runs_as("llama DoRA on embeddings merge", out, ref, base, tmp_path)



class Mixed:
    """A weight that is `merged` for token positions from `start` on and `base` before: what an
    activated LoRA computes (PEFT's ALoraLinearVariant masks the adapter before its start)."""

    def __init__(self, base, merged, start):
        self.base, self.merged, self.start = base, merged, start


def alora_reference(arch, cfg, weights, merged, tokens, start, monkeypatch):
    from archs import _common as C

    plain = C.linear

    def linear(x, w, b=None):
        if not isinstance(w, Mixed):
            return plain(x, w, b)
        y = plain(x, w.base, b)
        y[w.start:] = plain(x, w.merged, b)[w.start:]
        return y

    monkeypatch.setattr(C, "linear", linear)
    mixed = {k: Mixed(v, merged[k], start) if not np.array_equal(v, merged[k]) else v for k, v in weights.items()}
    out = arch.forward(cfg, mixed, tokens)
    monkeypatch.setattr(C, "linear", plain)
    return out


@pytest.mark.parametrize("arch_name", ARCHS)
def test_activated_lora_runs_from_its_invocation_tokens(arch_name, tmp_path, monkeypatch):
    """An activated LoRA in llama.cpp, switched on as llama-server does from the invocation tokens our
    GGUF adapter carries: with them in the prompt, positions before their start are the base's and the
    rest the adapter's (whose keys and values see the base's prefix), as PEFT computes; without them,
    the base's logits throughout."""
    harness.require_binary()
    arch = archs.ARCHS[arch_name]
    base = harness.build_base(arch, tmp_path / "base", seed=184)
    targets = archs.attention_modules(arch) + archs.mlp_modules(arch)[:1]
    ad = peft_lora.write_peft_adapter(tmp_path / "a", arch, base.cfg, base.weights, r=4, alpha=8,
                                      targets=targets, rng=np.random.default_rng(185))
    with_extra_tensors(ad.path, {}, alora_invocation_tokens=[99, 3])
    out = tmp_path / "alora.gguf"
    harness.convert_ok([ad.path, "--base", base.path, "-o", out, "--outtype", "f32"])
    merged = peft_lora.merge(base.weights, [(ad, 1.0)])
    start = TOKENS.index(99)
    ref = alora_reference(arch, base.cfg, base.weights, merged, TOKENS, start, monkeypatch)
    got = llama_logits(base.path, TOKENS, tmp_path / "with", adapters=[(out, 1.0)], alora=True)
    r, effect = rel(got, ref), rel(ref, base.ref_logits)
    harness.record(f"{arch_name} aLoRA from its invocation tokens", r, 1e-3, effect=effect)
    assert effect > MIN_EFFECT and r < 1e-3, f"rel {r:.3e}, effect {effect:.3f}"
    plain = llama_logits(base.path, TOKENS, tmp_path / "plain")
    assert rel(got[:start], plain[:start]) < 1e-6, "the adapter acted before its invocation"
    without = [5 if t == 3 else t for t in TOKENS]
    got = llama_logits(base.path, without, tmp_path / "without", adapters=[(out, 1.0)], alora=True)
    r = rel(got, arch.forward(base.cfg, base.weights, without))
    harness.record(f"{arch_name} aLoRA without its invocation tokens", r, 1e-3)
    assert r < 1e-3, f"rel {r:.3e}"
