"""pytest setup for the llama.cpp interop suite (run: tests/interop/.venv/bin/python -m pytest -q tests/interop)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # helpers and the archs package import as top-level modules
    sys.path.insert(0, str(HERE))

import harness  # noqa: E402


@pytest.fixture(scope="session")
def base_models(tmp_path_factory):
    """Per-arch f32 base model + numpy reference logits, built once per session on first use."""
    cache: dict = {}

    def get(arch) -> harness.BaseModel:
        if arch.ID not in cache:
            cache[arch.ID] = harness.build_base(arch, tmp_path_factory.mktemp(f"base-{arch.ID}"))
        return cache[arch.ID]

    return get


def pytest_report_header(config):
    import archs

    return [f"interop archs: {', '.join(archs.ARCHS) or '(none)'}"
            + (f"; broken arch modules: {', '.join(archs.ERRORS)}" if archs.ERRORS else ""),
            f"binary under test: {harness.binary_path()}"]


def pytest_terminal_summary(terminalreporter):
    """Print the rel figures (llama.cpp vs numpy) of every comparison that ran."""
    if not harness.FIGURES and not harness.NOTES:
        return
    tr = terminalreporter
    tr.section("interop figures: rel = ||llama.cpp - reference|| / ||reference||")
    for label, r, tol, effect in harness.FIGURES:
        extra = f"  adapter effect {effect:.3f}" if effect is not None else ""
        tr.write_line(f"{label:48s} rel {r:.2e}  (tol {tol:g}){extra}")
    for label, text in harness.NOTES:
        tr.write_line(f"{label}: {text}")
