"""Reference models trained on ShapeWorld: ``classifier``, ``captioner``, ``vqa``.

``load(name)`` reads ``models/<name>/`` (``weights.safetensors``, ``config.json``,
``vocab.json``) without pickle and returns the model in eval mode, with its
vocabulary, answers/classes and ``preprocess`` attached. Train them with
``mmexplain train NAME``; see :mod:`mmexplain.training.zoo`.

Example:
    >>> import mmexplain as mx
    >>> captioner = mx.zoo.load("captioner")
    >>> scene = mx.world.generate(mx.world.split_seeds("test", 1)[0])
    >>> captioner.generate(scene.image[None])[0] == scene.caption.split()   # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn

from .captioner import Captioner, CaptionerConfig
from .classifier import Classifier, ClassifierConfig
from .vocab import Vocab, tokenize
from .vqa import VQA, VQAConfig

NAMES = ("classifier", "captioner", "vqa")
WEIGHTS, CONFIG, VOCAB, CARD = "weights.safetensors", "config.json", "vocab.json", "CARD.md"

__all__ = ["NAMES", "load", "build", "default_root", "Captioner", "CaptionerConfig", "Classifier",
           "ClassifierConfig", "VQA", "VQAConfig", "Vocab", "tokenize"]


def default_root() -> Path:
    """The repository's ``models/`` directory (next to the ``mmexplain`` package)."""
    return Path(__file__).resolve().parents[2] / "models"


def build(name: str, config: dict, vocab: dict) -> nn.Module:
    """A fresh (untrained) model from ``config.json`` / ``vocab.json`` contents."""
    if name == "classifier":
        return Classifier(ClassifierConfig(**config), vocab.get("classes"))
    if name == "captioner":
        return Captioner(CaptionerConfig(**config), Vocab.from_json(vocab))
    if name == "vqa":
        return VQA(VQAConfig(**config), Vocab.from_json(vocab), vocab["answers"])
    raise ValueError(f"name must be one of {', '.join(NAMES)}, got {name!r}")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"missing checkpoint file: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"corrupt checkpoint file {path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"corrupt checkpoint file {path}: expected a JSON object")
    return data


def load(name: str, root: str | os.PathLike | None = None) -> nn.Module:
    """Load a shipped reference model in eval mode.

    Args:
        name: ``"classifier"``, ``"captioner"`` or ``"vqa"``.
        root: ``None`` for the repository's ``models/``; otherwise a directory holding
            ``<name>/``, or the model directory itself (holding ``weights.safetensors``).

    Returns:
        The model (``nn.Module``) in eval mode.

    Raises:
        ValueError: unknown name, or a corrupt/mismatched checkpoint file (named).
        FileNotFoundError: a missing checkpoint file (named).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if name not in NAMES:
        raise ValueError(f"name must be one of {', '.join(NAMES)}, got {name!r}")
    if root is None:
        folder = default_root() / name
    else:
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"root must be a directory path or None, got {type(root).__name__}")
        folder = Path(root)
        if not (folder / WEIGHTS).exists() and not (folder / CONFIG).exists():
            folder = folder / name
    if not folder.is_dir():
        raise FileNotFoundError(f"no checkpoint directory for {name!r}: {folder}")
    config = _read_json(folder / CONFIG)
    vocab = _read_json(folder / VOCAB)
    if config.get("name") != name:
        raise ValueError(f"corrupt checkpoint file {folder / CONFIG}: it describes {config.get('name')!r}, not {name!r}")
    try:
        model = build(name, config["config"], vocab)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"corrupt checkpoint files {folder / CONFIG} / {folder / VOCAB}: {exc}") from exc
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"missing checkpoint file: {weights}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"corrupt checkpoint file {weights}: {exc}") from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"checkpoint file {weights} does not match {CONFIG}: {exc}") from exc
    return model.eval()
