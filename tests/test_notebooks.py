"""The walk-through notebooks run end to end (nbclient), each in under 2 minutes, and
write nothing into the repository.

They need the shipped models (``models/``); set ``MMEXPLAIN_MODELS`` to run them on
another models folder. Set ``MMEXPLAIN_NOTEBOOK_OUT`` to a folder to keep the executed
notebooks (with their figures) for reading.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = Path(__file__).resolve().parents[1]
NAMES = ("caption_heatmaps.ipynb", "vqa_grounding.ipynb")  # neuron_names.ipynb: tests/test_notebooks_naming.py
LIMIT_S = float(os.environ.get("MMEXPLAIN_NOTEBOOK_LIMIT_S", 120))  # wall clock per notebook (quiet 2-core CPU)
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
def test_notebook_runs(name, tmp_path, monkeypatch):
    nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("MMEXPLAIN_MODELS", MODELS)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    source = (REPO / "notebooks" / name).read_bytes()
    start = time.perf_counter()
    client = nbclient.NotebookClient(nb, timeout=LIMIT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    finally:
        keep = os.environ.get("MMEXPLAIN_NOTEBOOK_OUT")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, Path(keep) / name)
    seconds = time.perf_counter() - start
    assert seconds < LIMIT_S, f"{name} took {seconds:.0f} s"
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    figures = sum("image/png" in o.get("data", {}) for o in outputs)
    assert figures >= 4, f"{name}: only {figures} figures displayed"
    assert (REPO / "notebooks" / name).read_bytes() == source  # the committed notebook stays clean
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nor into the working folder
