"""mmexplain: Grad-CAM for any differentiable scalar of a vision or vision-language model.

Public names are imported lazily, so ``import mmexplain as mx`` stays cheap and the
heavy optional pieces (transformers, matplotlib) load only when used.

Example:
    >>> import mmexplain as mx
    >>> cam = mx.GradCAM(model, layer="layer4")          # doctest: +SKIP
    >>> res = cam(images, mx.targets.ClassLogit(3))      # doctest: +SKIP
    >>> res.maps.shape                                   # (B, H, W)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY_NAMES = {
    "GradCAM": "engine",
    "CAMResult": "engine",
    "GuidedBackprop": "guided",
    "Deconvolution": "guided",
    "GuidedGradCAM": "guided",
    "CAM": "cam",
    "explain_caption": "explain",
    "explain_answer": "explain",
    "explain_class": "explain",
    "dissect": "naming",
    "describe": "naming",
    "NeuronLabels": "naming",
}
_SUBMODULES = {"engine", "targets", "guided", "cam", "explain", "naming", "metrics", "viz", "world", "zoo", "hf", "cli"}

__all__ = sorted(_LAZY_NAMES) + sorted(_SUBMODULES)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _LAZY_NAMES:
        module = importlib.import_module(f".{_LAZY_NAMES[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'mmexplain' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
