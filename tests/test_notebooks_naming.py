"""notebooks/neuron_names.ipynb runs end to end (nbclient), in under two minutes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "neuron_names.ipynb"


def test_neuron_names_notebook_executes(monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    missing = [n for n in ("classifier", "captioner") if not (ROOT / "models" / n / "weights.safetensors").is_file()]
    if missing:
        pytest.skip(f"shipped checkpoints missing: {', '.join(missing)} (train with `mmexplain train NAME`)")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    start = time.perf_counter()
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    elapsed = time.perf_counter() - start
    assert elapsed < 120, f"the notebook took {elapsed:.0f} s"

    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                     if o.get("output_type") == "stream")
    assert "detectors (IoU > 0.04)" in text
    assert "evidence for:" in text and "evidence against:" in text
    assert "unit,category,label,score" in text
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert images, "the unit gallery was not displayed"
