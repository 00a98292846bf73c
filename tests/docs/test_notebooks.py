"""The example notebooks in examples/ run top to bottom, offline on ivx-toy (slow tier, nbclient)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.docs.blocks import ROOT
from tests.docs.test_blocks import scratch

NOTEBOOKS = sorted((ROOT / "examples").glob("*.ipynb"))


def test_examples_exist() -> None:
    """The tutorials researchers edit most have a notebook each."""
    names = {p.stem for p in NOTEBOOKS}
    assert {"causal_tracing", "activation_patching", "steering"} <= names, names


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every cell executes without an error, in a scratch copy of the repository root."""
    nbformat = pytest.importorskip("nbformat", reason="the docs extra: pip install -e '.[docs]'")
    nbclient = pytest.importorskip("nbclient", reason="the docs extra: pip install -e '.[docs]'")
    work = scratch(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("IVX_CACHE_DIR", os.environ.get("IVX_CACHE_DIR", str(tmp_path / "cache")))
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(work)}}
    )
    client.execute()
    errors = [
        o
        for c in notebook.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.output_type == "error"
    ]
    assert not errors, errors
