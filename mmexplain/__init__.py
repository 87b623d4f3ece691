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
    "GradCAM": "methods",
    "CAMResult": "methods",
    "GuidedBackprop": "methods",
    "Deconvolution": "methods",
    "GuidedGradCAM": "methods",
    "CAM": "methods",
    "GradCAMPlusPlus": "methods",
    "XGradCAM": "methods",
    "HiResCAM": "methods",
    "LayerCAM": "methods",
    "EigenGradCAM": "methods",
    "ScoreCAM": "methods",
    "AblationCAM": "methods",
    "EigenCAM": "methods",
    "Occlusion": "methods", "RISE": "methods",
    "Relevancy": "methods",
    "LMAttention": "methods", "TokenActivationMap": "methods", "LMGradCAM": "methods", "GradientXInput": "methods",
    "PixelGradientXInput": "methods", "OcclusionGradientXInput": "methods", "RISEGradientXInput": "methods",
    "explain_caption": "explain",
    "explain_answer": "explain",
    "explain_class": "explain",
    "describe": "dissect",
    "NeuronLabels": "dissect",
}
_SUBMODULES = {
    "methods": "methods", "targets": "targets", "adapters": "adapters", "explain": "explain",
    "metrics": "metrics", "evaluation": "evaluation", "viz": "viz", "world": "world", "zoo": "zoo",
    "cli": "cli", "hf": "adapters.hf", "dissect": "dissect",
}

__all__ = sorted(_LAZY_NAMES) + sorted(_SUBMODULES)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{_SUBMODULES[name]}", __name__)
    if name in _LAZY_NAMES:
        module = importlib.import_module(f".{_LAZY_NAMES[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'mmexplain' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
