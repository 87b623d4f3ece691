"""Plotting: the only place that imports matplotlib (lazily, through these names).

- ``core``: overlays of a map on an image with an exact, aligned colour bar; batch figures.
- ``caption``: one panel per caption word; VQA answer + counterfactual figures.
- ``units``: Network Dissection unit galleries.
- ``sanity``: sanity-check curves (map similarity per randomisation stage).
- ``report``: a self-contained interactive HTML report (point at a word, see its map);
  ``show`` renders it inline in a notebook.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY_NAMES = {
    "overlay": "core",
    "plot_maps": "core",
    "to_image_array": "core",
    "save_figure": "core",
    "plot_caption": "caption",
    "plot_answer": "caption",
    "plot_classes": "caption",
    "plot_unit_gallery": "units",
    "plot_sanity": "sanity",
    "caption_view": "report",
    "answer_view": "report",
    "figure_view": "report",
    "render_report": "report",
    "write_report": "report",
    "ReportView": "report",
    "show": "report",
}

__all__ = sorted(_LAZY_NAMES)


def __getattr__(name: str) -> Any:
    if name in _LAZY_NAMES:
        module = importlib.import_module(f".{_LAZY_NAMES[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'mmexplain.viz' has no attribute {name!r}")
