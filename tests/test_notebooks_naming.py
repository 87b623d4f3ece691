"""notebooks/neuron_names.ipynb runs end to end (nbclient), in under two minutes."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import displayed_figures

ROOT = Path(__file__).resolve().parents[1]


def test_neuron_names_notebook_executes(run_notebook):
    missing = [n for n in ("classifier", "captioner") if not (ROOT / "models" / n / "weights.safetensors").is_file()]
    if missing:
        pytest.skip(f"shipped checkpoints missing: {', '.join(missing)} (train with `mmexplain train NAME`)")
    nb, text = run_notebook("neuron_names.ipynb")

    assert "detectors (IoU > 0.04)" in text
    assert "evidence for:" in text and "evidence against:" in text
    assert "unit,category,label,score" in text
    assert displayed_figures(nb), "the unit gallery was not displayed"
