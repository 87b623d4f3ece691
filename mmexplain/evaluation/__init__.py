"""Evaluation protocols: grounding on data with ground truth (pointing game, energy ratio, discrimination),
and the dataset runner (DataLoader workers, torch.distributed, resumable shards).

``read_dataset(DIR)`` reads what ``mmexplain explain-dataset`` wrote; it and the
submodules load on first use, so ``import mmexplain`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["read_dataset", "explain_dataset", "Runner", "distributed"]

# public name -> the module that defines it (relative to this package; "..runner" is mmexplain.runner)
_LAZY = {"read_dataset": ".shards", "explain_dataset": ".dataset_job", "Runner": "..runner", "distributed": "..runner"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    if name in ("grounding", "scoring", "shards", "inputs", "dataset_job", "items", "sanity", "faithfulness"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'mmexplain.evaluation' has no attribute {name!r}")
