"""How a model family is driven: adapter protocols, the zoo and Hugging Face adapters, image loading.

- ``protocols``: ``CaptionAdapter``, ``AnswerAdapter`` (what the explainers call) and ``AnswerQuery``.
- ``zoo``: adapters for the ``mx.zoo`` models; ``as_caption_adapter`` / ``as_answer_adapter``
  turn a zoo model or an adapter into an adapter.
- ``answers``: what answer-classifier VQA adapters share (targets, names, probabilities).
- ``items``: ``Item`` and what every adapter answers for evaluation (``ItemAdapter``: an item's
  inputs and targets, a target's probability on edited images, capabilities).
- ``classifier``: ``ClassifierAdapter`` (zoo, torchvision, any module) and ``as_class_adapter``.
- ``hf``: transformers models (``mx.hf``); ``grids``: patch grids of token-shaped layers.
- ``images``: the one image loader; ``torchvision``: default layers of torchvision classifiers.

Names are imported lazily, so importing ``mmexplain.adapters.images`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> submodule that defines it
_LAZY_NAMES = {
    "CaptionAdapter": "protocols",
    "AnswerAdapter": "protocols",
    "AnswerQuery": "protocols",
    "ClassAdapter": "protocols",
    "ItemAdapter": "protocols",
    "Item": "items",
    "ItemQuestions": "items",
    "ClassifierAdapter": "classifier",
    "as_class_adapter": "classifier",
    "as_item_adapter": "zoo",
    "AnswerClassifier": "answers",
    "ZooCaptionAdapter": "zoo",
    "ZooAnswerAdapter": "zoo",
    "as_caption_adapter": "zoo",
    "as_answer_adapter": "zoo",
    "PatchGrid": "grids",
    "load_image": "images",
}

__all__ = sorted(_LAZY_NAMES)


def __getattr__(name: str) -> Any:
    if name in _LAZY_NAMES:
        module = importlib.import_module(f".{_LAZY_NAMES[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'mmexplain.adapters' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__ + ["protocols", "zoo", "answers", "items", "classifier", "hf", "grids", "images", "torchvision"]
