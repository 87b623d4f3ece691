"""notebooks/dataset_bias.ipynb runs end to end (nbclient) on the shipped biased and unbiased classifiers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import displayed_figures

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "dataset_bias.ipynb"


def test_dataset_bias_notebook_is_committed_clean():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code), "clear the outputs"


def test_dataset_bias_notebook_executes(run_notebook):
    missing = [n for n in ("classifier", "classifier-biased") if not (ROOT / "models" / n / "weights.safetensors").is_file()]
    if missing:
        pytest.skip(f"shipped checkpoints missing: {', '.join(missing)}")
    nb, text = run_notebook("dataset_bias.ipynb")
    assert displayed_figures(nb) == 1
    rows = dict(re.findall(r"\| (unbiased|biased \(every circle red\)) \| [0-9.]+ \| [0-9.]+% \| ([0-9.]+) \|", text))
    assert len(re.findall(r"\| biased \(every circle red\) \|", text)) == 2
    # shape decoys (the second table): the biased model's "red circle" energy sits on the non-red circle
    shape_table = text.split("a circle of another colour")[1]
    ratios = dict(re.findall(r"\| (unbiased|biased \(every circle red\)) \| [0-9.]+ \| [0-9.]+% \| ([0-9.]+) \|", shape_table))
    assert float(ratios["biased (every circle red)"]) > 2 * float(ratios["unbiased"])
    assert rows
