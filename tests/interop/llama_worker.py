"""Evaluate a GGUF model (optionally with GGUF LoRA adapters) in the real llama.cpp.

Run as a child process (see llama_runner.py) so that a GGML_ASSERT abort inside llama.cpp kills
only this process, not pytest. Usage:
    python llama_worker.py REQUEST.json
REQUEST: {"model": path, "adapters": [[path, scale], ...], "tokens": [ids], "out": path.npy,
          "n_threads": 2, "alora": false}
With "alora" the (single) adapter is an activated LoRA handled as llama-server handles one
(tools/server/server-context.cpp): on from the start of the last occurrence of its invocation tokens
(read from the adapter), the tokens before it decoded without the adapter; off without them.
Writes logits [n_tokens, n_vocab] float32 to "out". Exit status 0 on success, 3 on a load/decode
error (message on stdout as JSON {"error": ..., "log": [...]}).
"""
from __future__ import annotations

import ctypes
import json
import sys

import numpy as np
import llama_cpp as L

LOG: list[str] = []


@L.llama_log_callback
def _log(level, text, user_data):  # keep llama.cpp's messages for error reports
    msg = text.decode("utf-8", "replace")
    LOG.append(msg)
    sys.stderr.write(msg)  # also streamed, so they survive an abort()


def stage(name: str) -> None:
    """Progress marker on stdout, so a crash (no final JSON) still tells how far llama.cpp got."""
    print(json.dumps({"stage": name}), flush=True)


def fail(msg: str) -> None:
    print(json.dumps({"error": msg, "log": [s.rstrip("\n") for s in LOG if s.strip()]}))
    sys.stdout.flush()
    sys.exit(3)


def main() -> None:
    req = json.load(open(sys.argv[1]))
    L.llama_log_set(_log, ctypes.c_void_p(0))
    L.llama_backend_init()

    mp = L.llama_model_default_params()
    mp.n_gpu_layers = 0
    model = L.llama_model_load_from_file(req["model"].encode(), mp)
    if not model:
        fail("failed to load model")

    cp = L.llama_context_default_params()
    n_tok = len(req["tokens"])
    cp.n_ctx = max(64, n_tok)
    cp.n_batch = cp.n_ctx
    cp.n_ubatch = cp.n_ctx
    cp.n_seq_max = 1
    cp.n_threads = cp.n_threads_batch = int(req.get("n_threads", 2))
    # f32 KV cache and no flash attention: the default f16 cache alone costs ~1e-3 relative error
    cp.type_k = L.GGML_TYPE_F32
    cp.type_v = L.GGML_TYPE_F32
    cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED
    ctx = L.llama_init_from_model(model, cp)
    if not ctx:
        fail("failed to create context")
    stage("model_loaded")

    adapters = []
    for path, _scale in req.get("adapters", []):
        a = L.llama_adapter_lora_init(model, path.encode())
        if not a:
            fail(f"llama_adapter_lora_init failed for {path}")
        adapters.append(a)
    tokens = req["tokens"]
    start = alora_start(adapters[0], tokens) if req.get("alora") else 0

    def set_adapters():
        arr = (L.llama_adapter_lora_p_ctypes * len(adapters))(*adapters)
        scales = (ctypes.c_float * len(adapters))(*[float(s) for _, s in req["adapters"]])
        if L.llama_set_adapters_lora(ctx, arr, len(adapters), scales) != 0:
            fail("llama_set_adapters_lora failed")
        stage("adapters_set")

    n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
    out = np.empty((n_tok, n_vocab), dtype=np.float32)
    if adapters and start == 0:
        set_adapters()
    stage("decoding")
    # An activated LoRA's prefix without the adapter, then the rest with it (all of it without one).
    if start > 0:
        decode(ctx, tokens, 0, start, out, n_vocab)
    if start < n_tok:
        if adapters and start > 0:
            set_adapters()
        decode(ctx, tokens, start, n_tok, out, n_vocab)
    np.save(req["out"], out)

    for a in adapters:
        L.llama_adapter_lora_free(a)
    L.llama_free(ctx)
    L.llama_model_free(model)
    print(json.dumps({"ok": True, "n_vocab": n_vocab,
                      "log": [s.rstrip("\n") for s in LOG if "lora" in s.lower() or "adapter" in s.lower()]}))


def alora_start(adapter, tokens) -> int:
    """llama-server's rule: the start of the last occurrence of the invocation tokens, else the end
    (the adapter stays off)."""
    n = L.llama_adapter_get_alora_n_invocation_tokens(adapter)
    ptr = L.llama_adapter_get_alora_invocation_tokens(adapter)
    inv = [ptr[i] for i in range(n)]
    if not inv:
        fail("the adapter has no aLoRA invocation tokens")
    for i in range(len(tokens) - len(inv), -1, -1):
        if list(tokens[i:i + len(inv)]) == inv:
            return i
    return len(tokens)


def decode(ctx, tokens, lo, hi, out, n_vocab) -> None:
    """Decodes tokens[lo:hi] at positions lo.. (after what the context holds) into out[lo:hi]."""
    batch = L.llama_batch_init(hi - lo, 0, 1)
    batch.n_tokens = hi - lo
    for j, i in enumerate(range(lo, hi)):
        batch.token[j] = int(tokens[i])
        batch.pos[j] = i
        batch.n_seq_id[j] = 1
        batch.seq_id[j][0] = 0
        batch.logits[j] = 1  # logits for every position
    rc = L.llama_decode(ctx, batch)
    if rc != 0:
        fail(f"llama_decode returned {rc}")
    for j in range(hi - lo):
        ptr = L.llama_get_logits_ith(ctx, j)
        out[lo + j] = np.ctypeslib.as_array(ptr, shape=(n_vocab,))
    L.llama_batch_free(batch)


if __name__ == "__main__":
    main()
