"""The walk-through notebooks run end to end (nbclient), each in under 2 minutes, and
write nothing into the repository.

They need the shipped models (``models/``); set ``MMEXPLAIN_MODELS`` to run them on
another models folder. Set ``MMEXPLAIN_NOTEBOOK_OUT`` to a folder to keep the executed
notebooks (with their figures) for reading.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from conftest import displayed_figures

nbformat = pytest.importorskip("nbformat")

REPO = Path(__file__).resolve().parents[1]
NAMES = ("caption_heatmaps.ipynb", "vqa_grounding.ipynb")  # neuron_names.ipynb: tests/test_notebooks_naming.py
MODELS = os.environ.get("MMEXPLAIN_MODELS") or str(REPO / "models")
HAVE_MODELS = all((Path(MODELS) / name / "weights.safetensors").is_file() for name in ("captioner", "vqa"))


def test_notebooks_are_committed_clean():
    for path in (REPO / "notebooks" / name for name in NAMES):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code, path.name
        assert all(c.outputs == [] and c.execution_count is None for c in code), f"{path.name}: clear the outputs"


@pytest.mark.skipif(not HAVE_MODELS, reason=f"the shipped captioner/vqa models are not in {MODELS} yet")
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, tmp_path, monkeypatch, run_notebook):
    monkeypatch.setenv("MMEXPLAIN_MODELS", MODELS)
    source = (REPO / "notebooks" / name).read_bytes()
    nb, _ = run_notebook(name, cwd=tmp_path)
    figures = displayed_figures(nb)
    assert figures >= 4, f"{name}: only {figures} figures displayed"
    views = [o["data"]["text/html"] for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
             if "text/html" in o.get("data", {})]
    assert views and all("data-mmx-root" in v and not re.search(r"(src|href)=[\"']?https?:", v) for v in views), \
        f"{name}: the interactive report (ex.show()) was not displayed"
    assert (REPO / "notebooks" / name).read_bytes() == source  # the committed notebook stays clean
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nor into the working folder
