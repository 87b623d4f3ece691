"""Shared test helpers."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_LIMIT_S = float(os.environ.get("MMEXPLAIN_NOTEBOOK_LIMIT_S", 120))  # wall clock per notebook


@pytest.fixture
def run_notebook(monkeypatch):
    """Execute ``notebooks/NAME`` with nbclient; returns (executed notebook, its printed text).

    The kernel imports this checkout (PYTHONPATH), draws with an inline backend and runs
    in ``cwd`` (default: notebooks/). Fails on a cell error or past the time limit.
    Set ``MMEXPLAIN_NOTEBOOK_OUT`` to a folder to keep the executed notebooks.
    """
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")

    def run(name: str, *, cwd: Path | None = None):
        nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
        start = time.perf_counter()
        client = nbclient.NotebookClient(nb, timeout=NOTEBOOK_LIMIT_S, kernel_name="python3",
                                         resources={"metadata": {"path": str(cwd or REPO / "notebooks")}})
        try:
            client.execute()
        finally:
            keep = os.environ.get("MMEXPLAIN_NOTEBOOK_OUT")
            if keep:
                Path(keep).mkdir(parents=True, exist_ok=True)
                nbformat.write(nb, Path(keep) / name)
        seconds = time.perf_counter() - start
        assert seconds < NOTEBOOK_LIMIT_S, f"{name} took {seconds:.0f} s"
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        assert not [o for o in outputs if o.get("output_type") == "error"]
        text = "\n".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
        return nb, text

    return run


def displayed_figures(nb) -> int:
    """How many PNG figures the executed notebook displayed."""
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
