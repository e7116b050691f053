"""The README's first command, on the example shipped in examples/, end to end in the real llama.cpp.

The command is read from README.md ("Try it", the first ```sh block: `cargo run ... -- ARGS`
steps joined by `&&`) and each step run with the binary under test, in a temporary folder where
`examples/` and `templates/` are links to the repository's, with this tool's cache, an empty Ollama
model store and a server address where nothing listens (the command must need no server). Nothing
is written into the repository (checked). Then:

- the validate step passes; the create step merges (no ADAPTER line), and its Modelfile, read the
  way Ollama's reader reads it, is FROM the merged file in the cache, the README's TEMPLATE file and
  its SYSTEM text;
- the merged file: every untouched tensor byte-identical to the base's, the touched ones (q and v of
  each layer: Q4_K and Q6_K in the base) in the base's own types, every base KV kept
  (test_merge_interop.check_structure); per touched tensor the values carry the PEFT delta no worse
  than ggml's own quantizer does (check_weights: error <= 1.5 x ggml's, delta gain within 1%);
- llama.cpp loads the base and the merged file (its tokenizer too: the prompt is llama.cpp's
  tokenization of a ChatML conversation, which must read back as written) and their logits are
  compared with a numpy forward pass (Hugging Face semantics) on the base's dequantized weights,
  without and with the PEFT delta W + alpha / r * B @ A read from the adapter's safetensors. The
  merged tensors are quantized again, so the bound is the one the suites use for a quantized merge
  against numpy (test_create_interop.test_merge_q8_0_base): at most 2 x what the same merge made
  without the tool (dequant(base) + delta, ggml's reference quantizer, written with the gguf
  package) gets against the same reference. The adapter's effect (merged vs base logits) must be
  above 1.5 x that bound, as in the merge suite, so a merge that dropped the delta fails.

A second test checks that the example base really is what the README says: the tensor types
`llama-quantize Q4_K_M` gives this model (its own quantizer on an F32 copy), a few MB at most.

llama.cpp runs with its extra CPU buffer types off, as in the merge suite (harness.run_llama_plain_cpu).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import gguf
import llama_cpp
import numpy as np

import harness
import peft_lora
from archs import _common as C
from harness import REPO_ROOT, read_gguf_raw, rel
from test_create_interop import read_modelfile
from test_merge_interop import check_structure, check_weights, reference_merge

EXAMPLES = REPO_ROOT / "examples"
BASE = EXAMPLES / "tiny-llama-q4_k_m.gguf"
ADAPTER = EXAMPLES / "tiny-llama-adapter"
LINKED = ("examples", "templates")   # what the README's command reads, relative to the repository
MAX_BASE_BYTES = 4 << 20             # "a few MB at most": it is committed
IDEAL_FACTOR = 2.0                   # vs numpy: at most 2 x what ggml's own merge gets (create suite)
EFFECT_MARGIN = 1.5                  # the adapter's effect above 1.5 x the bound (merge suite)
PROMPT = ("<|im_start|>system\nYou are a pirate.<|im_end|>\n<|im_start|>user\nWhere is the treasure buried?"
          "<|im_end|>\n<|im_start|>assistant\n")


# ---------------------------------------------------------------------------------------------
# the README's command
# ---------------------------------------------------------------------------------------------


def readme_steps() -> list[list[str]]:
    """The tool's arguments of each step of the README's first command."""
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("\n## Try it\n", 1)
    assert len(section) == 2, "README.md has no '## Try it' section"
    block = re.search(r"```sh\n(.*?)```", section[1], re.S)
    assert block, "no ```sh block under '## Try it'"
    lexer = shlex.shlex(block.group(1), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    steps, current = [], []
    for token in lexer:
        if token == "&&":
            steps.append(current)
            current = []
        else:
            assert token not in (";", "|", "||", "&", "(", ")"), f"README command uses {token!r}: not one plain chain"
            current.append(token)
    steps.append(current)
    out = []
    for s in steps:
        assert s[:2] == ["cargo", "run"] and "--" in s, f"README step does not run the tool with cargo: {s}"
        out.append(s[s.index("--") + 1:])
    return out


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for d in LINKED for p in sorted((root / d).rglob("*")) if p.is_file()}


def run_readme(tmp_path: Path) -> tuple[list[list[str]], list[subprocess.CompletedProcess], Path]:
    """Each step in tmp_path/work; returns the steps, their results and the cache folder."""
    work, cache = tmp_path / "work", tmp_path / "cache"
    work.mkdir()
    for d in LINKED:
        (work / d).symlink_to(REPO_ROOT / d, target_is_directory=True)
    env = dict(os.environ, OLLAMA_TOOLS_CACHE=str(cache), OLLAMA_MODELS=str(tmp_path / "store"),
               OLLAMA_HOST="http://127.0.0.1:9")
    binary = str(harness.require_binary().resolve())
    steps, results = readme_steps(), []
    before = snapshot(REPO_ROOT)
    for args in steps:
        p = subprocess.run([binary, *args], capture_output=True, text=True, timeout=180, cwd=work, env=env)
        assert p.returncode == 0, (f"README step `ollama-tools {shlex.join(args)}` failed with {p.returncode}\n"
                                   f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}")
        results.append(p)
    assert snapshot(REPO_ROOT) == before, "the README's command changed files in examples/ or templates/"
    return steps, results, cache


# ---------------------------------------------------------------------------------------------
# independent references
# ---------------------------------------------------------------------------------------------


def config_of(path: Path) -> dict:
    """The Hugging Face config of a llama GGUF, from its own KVs."""
    kv = harness.read_gguf(path).kv
    heads = int(kv["llama.attention.head_count"])
    hidden = int(kv["llama.embedding_length"])
    return {"hidden_size": hidden, "intermediate_size": int(kv["llama.feed_forward_length"]),
            "num_hidden_layers": int(kv["llama.block_count"]), "num_attention_heads": heads,
            "num_key_value_heads": int(kv["llama.attention.head_count_kv"]),
            "head_dim": int(kv.get("llama.rope.dimension_count") or hidden // heads),
            "vocab_size": len(kv["tokenizer.ggml.tokens"]),
            "rms_norm_eps": float(kv["llama.attention.layer_norm_rms_epsilon"]),
            "rope_theta": float(kv["llama.rope.freq_base"]), "tie_word_embeddings": False}


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of the converter's Q/K row reorder (C.permute_qk): GGUF rows back to HF's."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_weights(path: Path, cfg: dict) -> dict[str, np.ndarray]:
    """A llama GGUF's tensors, dequantized by the gguf package, under their Hugging Face names
    (gguf-py's tensor map) and in HF layout."""
    hf_names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"] + [
        f"model.layers.{i}.{p}.weight" for i in range(cfg["num_hidden_layers"])
        for p in ["input_layernorm", "post_attention_layernorm", *C.LLAMA_LORA_PATHS.values()]]
    to_gguf = C.gguf_tensor_names("llama", cfg["num_hidden_layers"], {n: n for n in hf_names})
    raw = read_gguf_raw(path)
    assert set(to_gguf) == set(raw.tensors), f"tensors {sorted(set(raw.tensors) ^ set(to_gguf))} unexpected"
    out = {}
    for gguf_name, hf in to_gguf.items():
        x = raw.tensors[gguf_name].values()
        if hf.endswith("q_proj.weight"):
            x = unpermute_qk(x, cfg["num_attention_heads"])
        elif hf.endswith("k_proj.weight"):
            x = unpermute_qk(x, cfg["num_key_value_heads"])
        out[hf] = x
    return out


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """float32 arrays of an F32 / F16 / BF16 safetensors file (numpy has no bfloat16, so the file
    is read here rather than with the safetensors package)."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    out = {}
    for name, h in header.items():
        lo, hi = (8 + n + o for o in h["data_offsets"])
        buf = data[lo:hi]
        if h["dtype"] == "BF16":
            x = peft_lora.bf16_bits_to_f32(np.frombuffer(buf, dtype=np.uint16))
        else:
            x = np.frombuffer(buf, dtype={"F32": np.float32, "F16": np.float16}[h["dtype"]]).astype(np.float32)
        out[name] = x.reshape(h["shape"])
    return out


def peft_deltas(adapter: Path) -> dict[str, np.ndarray]:
    """HF weight name -> alpha / r * B @ A (float64), PEFT's merge of a plain LoRA adapter."""
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert not (cfg.get("use_rslora") or cfg.get("use_dora") or cfg.get("rank_pattern") or cfg.get("alpha_pattern")), (
        "this reference does plain LoRA only", cfg)
    t = read_safetensors(adapter / "adapter_model.safetensors")
    out = {}
    for key in t:
        if key.endswith(".lora_A.weight"):
            module = key[len("base_model.model."):-len(".lora_A.weight")]
            a = t[key].astype(np.float64)
            b = t[key.replace(".lora_A.", ".lora_B.")].astype(np.float64)
            out[module + ".weight"] = cfg["lora_alpha"] / cfg["r"] * (b @ a)
    return out


def gguf_deltas(deltas: dict[str, np.ndarray], cfg: dict) -> dict[str, np.ndarray]:
    """The same deltas under GGUF names and in GGUF row order (q / k rows reordered as the base's)."""
    out = {}
    for hf, d in deltas.items():
        if hf.endswith("q_proj.weight"):
            d = C.permute_qk(d, cfg["num_attention_heads"])
        elif hf.endswith("k_proj.weight"):
            d = C.permute_qk(d, cfg["num_key_value_heads"])
        out.update(C.gguf_tensor_names("llama", cfg["num_hidden_layers"], {hf: d}))
    return out


def llama_tokenize(model: Path, text: str) -> tuple[list[int], str]:
    """llama.cpp's tokenization of text (BOS added, special tokens parsed) and its detokenization,
    in a child process so an abort cannot take pytest down."""
    code = ("import json, sys, llama_cpp as L\n"
            "m = L.Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)\n"
            "ids = m.tokenize(sys.argv[2].encode(), add_bos=True, special=True)\n"
            "print(json.dumps({'ids': ids, 'text': m.detokenize(ids[1:], special=True).decode()}))\n")
    p = subprocess.run([sys.executable, "-c", code, str(model), text], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, GGML_NO_BACKTRACE="1"))
    assert p.returncode == 0, f"llama.cpp could not load the vocabulary of {model}:\n{p.stderr[-3000:]}"
    out = json.loads(p.stdout.strip().splitlines()[-1])
    return out["ids"], out["text"]


# ---------------------------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------------------------


def test_readme_first_command_in_llama_cpp(tmp_path):
    """The README's command, then its merged model in llama.cpp against numpy (module docstring)."""
    steps, results, cache = run_readme(tmp_path)
    commands = [s[0] for s in steps]
    assert commands[-1] == "create-from-base", f"the README's command ends with {commands[-1]}, not create-from-base"
    create = steps[-1]
    assert "--no-create" in create, "the README's first command must run without an Ollama server"
    if "validate" in commands:
        out = results[commands.index("validate")].stdout
        assert "all shapes match" in out, out
    assert "merged into the base" in results[-1].stdout, results[-1].stdout

    # The Modelfile: FROM the merged file in the cache, the README's template and system prompt.
    opt = {k: create[i + 1] for i, k in enumerate(create[:-1]) if k.startswith("--")}
    modelfile = tmp_path / "work" / opt["--out-modelfile"]
    entries = read_modelfile(modelfile.read_text())
    cmds = [c for c, _ in entries]
    assert cmds == ["from", "template", "system"], f"Modelfile instructions {cmds}:\n{modelfile.read_text()}"
    values = dict(entries)
    merged = Path(values["from"])
    assert merged.is_absolute() and merged.is_file(), f"FROM {merged} is not an existing absolute file"
    assert merged.resolve().parent == (cache / "builds").resolve() and merged.name.startswith("merge-"), merged
    assert values["template"] == (REPO_ROOT / opt["--template"]).read_text(), "TEMPLATE is not the README's file"
    assert values["system"] == opt["--system"]
    base_path, adapter_path = REPO_ROOT / opt["--base"], REPO_ROOT / opt["--adapter"]
    assert (base_path, adapter_path) == (BASE, ADAPTER), f"the README's command is not on the shipped example: {opt}"

    # The file: touched tensors at the base's own types, the rest byte for byte.
    cfg = config_of(BASE)
    deltas_hf = peft_deltas(ADAPTER)
    deltas = gguf_deltas(deltas_hf, cfg)
    base_types = {n: t.type for n, t in read_gguf_raw(BASE).tensors.items()}
    assert {base_types[n] for n in deltas} == {"Q4_K", "Q6_K"}, "the example should touch Q4_K and Q6_K tensors"
    raw = check_structure(BASE, merged, set(deltas), expect_type=lambda t: t)
    merged_types = {n: raw.tensors[n].type for n in sorted(deltas)}
    wf = check_weights(BASE, raw, deltas)

    # llama.cpp: the tokenizer, the base and the merged model, against numpy.
    tokens, back = llama_tokenize(merged, PROMPT)
    assert back == PROMPT, f"llama.cpp's tokenization does not read back: {back!r}"
    vocab = list(harness.read_gguf(BASE).kv["tokenizer.ggml.tokens"])
    chatml = {vocab.index("<|im_start|>"), vocab.index("<|im_end|>")}
    assert chatml <= set(tokens) and len(tokens) < len(PROMPT.encode()) // 2, (
        f"the vocabulary should give ChatML tokens and pieces longer than bytes: {tokens}")
    ggml_merge = tmp_path / "ggml-merge.gguf"
    reference_merge(BASE, ggml_merge, deltas, None)

    def run(path, name):
        return harness.llama_logits_plain_cpu(path, tokens, tmp_path / name)

    got, base_logits, ideal = run(merged, "run-merged"), run(BASE, "run-base"), run(ggml_merge, "run-ggml-merge")
    w = hf_weights(BASE, cfg)
    ref_base = np.asarray(C.decoder_forward(cfg, w, tokens))
    w_merged = {k: (v.astype(np.float64) + deltas_hf[k]) if k in deltas_hf else v for k, v in w.items()}
    ref = np.asarray(C.decoder_forward(cfg, w_merged, tokens))
    f = {"np": rel(got, ref), "ideal_np": rel(ideal, ref), "vs_ggml": rel(got, ideal),
         "base_np": rel(base_logits, ref_base), "effect": rel(got, base_logits), "ref_effect": rel(ref, ref_base)}
    bound = IDEAL_FACTOR * f["ideal_np"]
    same = sum(raw.tensors[n].data == read_gguf_raw(ggml_merge).tensors[n].data for n in deltas)
    text = (f"{len(tokens)} tokens; merged vs numpy {f['np']:.2e} < {bound:.2e} (ggml's merge vs numpy "
            f"{f['ideal_np']:.2e}; base vs numpy {f['base_np']:.2e}); vs ggml's merge {f['vs_ggml']:.2e}, "
            f"{same}/{len(deltas)} touched tensors byte-identical to it; effect {f['effect']:.3f} (numpy "
            f"{f['ref_effect']:.3f}); worst tensor {wf.worst}; delta gain deviation {wf.gain_dev:.1e}; "
            f"types {sorted(set(merged_types.values()))}")
    harness.record("example: README command, merged vs numpy", f["np"], bound, effect=f["effect"])
    harness.record_note("example: README command", text)
    print(f"example: {text}")
    assert f["effect"] > EFFECT_MARGIN * bound, (
        f"adapter effect {f['effect']:.3f} not above {EFFECT_MARGIN} x the bound {bound:.3e}")
    assert f["np"] < bound, f"merged example vs numpy PEFT reference rel {f['np']:.3e} >= {bound:.3e} ({text})"


def test_example_base_is_q4_k_m(tmp_path):
    """The base's tensor types are the ones llama.cpp's quantizer (llama-quantize Q4_K_M, no
    imatrix) gives this model, run on an F32 copy of it; general.file_type says Q4_K_M; it is small."""
    size = BASE.stat().st_size
    assert size <= MAX_BASE_BYTES, f"{BASE.name} is {size} bytes, more than {MAX_BASE_BYTES}"
    base = read_gguf_raw(BASE)
    assert base.kv["general.file_type"][1] == int(gguf.LlamaFileType.MOSTLY_Q4_K_M), base.kv["general.file_type"]
    f32 = tmp_path / "base-f32.gguf"
    all_f32 = (int(gguf.LlamaFileType.ALL_F32), gguf.GGUFValueType.UINT32)
    harness.rewrite_gguf(BASE, f32, lambda name, arr: base.tensors[name].values(),
                         kv_overrides={"general.file_type": all_f32})
    requant = tmp_path / "base-q4_k_m.gguf"
    harness.llama_quantize(f32, requant, llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M)
    theirs = {n: t.type for n, t in read_gguf_raw(requant).tensors.items()}
    ours = {n: t.type for n, t in base.tensors.items()}
    differ = {n: (ours[n], theirs.get(n)) for n in ours if ours[n] != theirs.get(n)}
    assert not differ and set(ours) == set(theirs), f"types differ from llama-quantize Q4_K_M (ours, theirs): {differ}"
    counts = {t: list(ours.values()).count(t) for t in sorted(set(ours.values()))}
    harness.record_note("example base", f"{size} bytes, types {counts}, as llama-quantize Q4_K_M chooses them")
