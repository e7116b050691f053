"""Client side of llama_worker.py: get logits from the real llama.cpp in a child process."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

WORKER = Path(__file__).with_name("llama_worker.py")


@dataclass
class LlamaResult:
    returncode: int  # 0 ok, 3 clean llama.cpp error, negative = killed by signal (e.g. SIGABRT)
    logits: np.ndarray | None
    error: str | None
    log: list[str] = field(default_factory=list)
    stderr: str = ""
    stages: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if self.returncode < 0:
            how = f"crashed with {signal.Signals(-self.returncode).name}"
        else:
            how = f"exit {self.returncode}"
        tail = "\n".join(self.log[-15:])
        return f"llama.cpp {how} (stages reached: {self.stages}): {self.error}\n--- log ---\n{tail}\n--- stderr ---\n{self.stderr[-3000:]}"


def run_llama(model: Path, tokens: list[int], workdir: Path,
              adapters: list[tuple[Path, float]] = (), timeout: float = 120, alora: bool = False) -> LlamaResult:
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "llama_logits.npy"
    if out.exists():
        out.unlink()
    req = {"model": str(model), "adapters": [[str(p), float(s)] for p, s in adapters],
           "tokens": [int(t) for t in tokens], "out": str(out), "n_threads": 2, "alora": alora}
    req_path = workdir / "llama_request.json"
    req_path.write_text(json.dumps(req))
    # GGML_NO_BACKTRACE: on GGML_ASSERT, skip ggml's gdb backtrace (slow, noisy)
    env = dict(os.environ, OMP_NUM_THREADS="1", GGML_NO_BACKTRACE="1")
    p = subprocess.run([sys.executable, str(WORKER), str(req_path)], capture_output=True,
                       text=True, timeout=timeout, env=env)
    info: dict = {}
    stages: list[str] = []
    for line in p.stdout.strip().splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "stage" in msg:
            stages.append(msg["stage"])
        else:
            info = msg
    logits = np.load(out) if p.returncode == 0 and out.exists() else None
    return LlamaResult(p.returncode, logits, info.get("error"), info.get("log", []), p.stderr, stages)


def llama_logits(model: Path, tokens: list[int], workdir: Path,
                 adapters: list[tuple[Path, float]] = (), alora: bool = False) -> np.ndarray:
    """Logits [n_tokens, n_vocab] or an AssertionError carrying llama.cpp's own messages (alora:
    the adapter switched on as llama-server switches an activated LoRA on, see llama_worker.py)."""
    r = run_llama(model, tokens, workdir, adapters, alora=alora)
    if r.returncode != 0 or r.logits is None:
        raise AssertionError(r.describe())
    return r.logits
