"""notebooks/transformers.ipynb runs end to end (nbclient) on the shipped models/tiny-ved, in under two minutes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import displayed_figures

ROOT = Path(__file__).resolve().parents[1]


def test_transformers_notebook_executes(monkeypatch, run_notebook):
    pytest.importorskip("transformers")
    assert (ROOT / "models" / "tiny-ved" / "model.safetensors").is_file(), \
        "models/tiny-ved is shipped with the repository (python -m mmexplain.training.hf rebuilds it)"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb, text = run_notebook("transformers.ipynb")

    assert "VisionEncoderDecoderModel | layer: encoder.layernorm" in text
    assert "maps (10, 1, 64, 64) raw (10, 1, 8, 8)" in text  # 10 caption words on the 8x8 ViT patch grid
    gap = float(re.search(r"caption map\| = (\S+)", text).group(1))
    assert gap < 1e-5, f"per-word identity broken: {gap}"
    pointing = float(re.search(r"content words: pointing (\S+),", text).group(1))
    assert 0.0 <= pointing <= 1.0
    assert "token attributions:" in text
    assert displayed_figures(nb) >= 2, "the caption and answer figures were not displayed"
