"""notebooks/transformers.ipynb runs end to end (nbclient) on the shipped models/tiny-ved, in under two minutes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import displayed_figures

ROOT = Path(__file__).resolve().parents[1]

# Word pointing printed by the notebook: the first 8 test-split scenes at 64 px, 60 content words,
# maps of mx.zoo.load("tiny-ved") at encoder.layernorm. Measured on the shipped checkpoint (CPU, 1 thread):
# 0.167 (10 of 60 words). Same 60 words, maps broken on purpose: the 8x8 grid transposed 0.067,
# the CLS token kept in the grid 0.100, a constant map 0.0; uniform-map chance 0.037 (CARD.md).
# The floor sits 3 words below the measurement: it catches broken maps and grids. It does NOT
# separate the trained model from random weights on so few words (random-weights tiny-ved: 0.150,
# a horizontally flipped grid: 0.150); benchmarks/hf_grounding.py measures that on 200 scenes
# (0.285 trained vs 0.108 random).
POINTING_FLOOR = 0.12


def test_transformers_notebook_executes(monkeypatch, run_notebook):
    pytest.importorskip("transformers")
    assert (ROOT / "models" / "tiny-ved" / "model.safetensors").is_file(), \
        "models/tiny-ved is shipped with the repository (`mmexplain train tiny-ved` rebuilds it)"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb, text = run_notebook("transformers.ipynb")

    assert "VisionEncoderDecoderModel | layer: encoder.layernorm" in text
    assert "maps (10, 1, 64, 64) raw (10, 1, 8, 8)" in text  # 10 caption words on the 8x8 ViT patch grid
    gap = float(re.search(r"caption map\| = (\S+)", text).group(1))
    assert gap < 1e-5, f"per-word identity broken: {gap}"
    pointing = float(re.search(r"content words: pointing (\S+),", text).group(1))
    assert POINTING_FLOOR <= pointing <= 1.0, f"tiny-ved word pointing {pointing} < floor {POINTING_FLOOR}"
    assert "token attributions:" in text
    assert displayed_figures(nb) >= 2, "the caption and answer figures were not displayed"
