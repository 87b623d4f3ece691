"""notebooks/neuron_names.ipynb runs end to end (nbclient), in under two minutes."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import displayed_figures

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "neuron_names.ipynb"


def test_neuron_names_notebook_is_committed_clean():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code), "clear the outputs"


def test_neuron_names_notebook_executes(run_notebook):
    missing = [n for n in ("classifier", "captioner") if not (ROOT / "models" / n / "weights.safetensors").is_file()]
    if missing:
        pytest.skip(f"shipped checkpoints missing: {', '.join(missing)} (train with `mmexplain train NAME`)")
    source = NOTEBOOK.read_bytes()
    nb, text = run_notebook("neuron_names.ipynb")

    assert "'red': 'color'" in text  # the concept data carries its categories
    assert "detectors (IoU > 0.04)" in text
    assert "evidence for:" in text and "evidence against:" in text
    assert "unit,category,label,score" in text
    assert displayed_figures(nb), "the unit gallery was not displayed"
    assert NOTEBOOK.read_bytes() == source  # the committed notebook stays clean
