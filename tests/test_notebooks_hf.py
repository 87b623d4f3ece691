"""notebooks/transformers.ipynb runs end to end (nbclient) on the shipped models/tiny-ved, in under two minutes."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "transformers.ipynb"


def test_transformers_notebook_executes(monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("transformers")
    assert (ROOT / "models" / "tiny-ved" / "model.safetensors").is_file(), \
        "models/tiny-ved is shipped with the repository (python -m mmexplain.hf_train rebuilds it)"
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    start = time.perf_counter()
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    elapsed = time.perf_counter() - start
    assert elapsed < 120, f"the notebook took {elapsed:.0f} s"

    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                     if o.get("output_type") == "stream")
    assert "VisionEncoderDecoderModel | layer: encoder.layernorm" in text
    assert "maps (10, 1, 64, 64) raw (10, 1, 8, 8)" in text  # 10 caption words on the 8x8 ViT patch grid
    gap = float(re.search(r"caption map\| = (\S+)", text).group(1))
    assert gap < 1e-5, f"per-word identity broken: {gap}"
    pointing = float(re.search(r"content words: pointing (\S+),", text).group(1))
    assert 0.0 <= pointing <= 1.0
    assert "token attributions:" in text
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) >= 2, "the caption and answer figures were not displayed"
