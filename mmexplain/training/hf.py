"""Names kept for callers not yet moved to :mod:`mmexplain.zoo` (load with ``mx.zoo.load("tiny-ved")``)."""

from __future__ import annotations

import os
from typing import Any

from ..zoo.tiny_hf import build_tokenizer
from ..zoo.tiny_hf import caption_vocabulary as vocabulary
from ..zoo.tiny_hf import question_vocabulary as vqa_vocabulary

__all__ = ["load_tiny_ved", "load_tiny_vilt", "vocabulary", "vqa_vocabulary", "build_tokenizer"]


def load_tiny_ved(path: str | os.PathLike | None = None) -> Any:
    """``mx.zoo.load("tiny-ved", path)`` (``None``: the shipped model)."""
    from .. import zoo

    return zoo.load("tiny-ved", path)


def load_tiny_vilt(path: str | os.PathLike | None = None) -> Any:
    """``mx.zoo.load("tiny-vilt", path)`` (``None``: the shipped model)."""
    from .. import zoo

    return zoo.load("tiny-vilt", path)
