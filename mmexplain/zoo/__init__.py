"""Every shipped reference model, by name: ``load(name)``, ``new(name)``, ``save(model, folder)``.

* ``"classifier"``, ``"captioner"``, ``"vqa"``: the CNN (+ LSTM) models, one file each with a
  commented dataclass config (:mod:`.classifier`, :mod:`.captioner`, :mod:`.vqa`);
  checkpoints are ``weights.safetensors`` + ``config.json`` + ``vocab.json``.
  ``load`` returns the ``nn.Module`` with its vocabulary, answers/classes and
  ``preprocess`` attached.
* ``"tiny-ved"`` (ViT + GPT-2 captioner) and ``"tiny-vilt"`` (ViLT VQA): tiny
  transformers models (:mod:`.tiny_hf`); checkpoints are ordinary transformers folders
  (``model.safetensors``, ``config.json``, tokenizer and image-processor files).
  ``load`` returns the ready ``mx.hf`` adapter
  (:class:`~mmexplain.adapters.hf.VisionEncoderDecoderCaptioner` /
  :class:`~mmexplain.adapters.hf.ViltVQA`); transformers is imported only then.

Checkpoints load from the package's ``models/`` folder whatever the current folder,
without pickle, in eval mode. ``mmexplain train NAME`` trains and evaluates them
(:mod:`mmexplain.training`, which nothing here imports).

Example:
    >>> import mmexplain as mx
    >>> captioner = mx.zoo.load("captioner")
    >>> scene = mx.world.generate(mx.world.split_seeds("test", 1)[0])
    >>> captioner.generate(scene.image[None])[0] == scene.caption.split()   # doctest: +SKIP
    True
    >>> mx.zoo.load("tiny-ved").default_layer                              # doctest: +SKIP
    'encoder.layernorm'
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from .captioner import Captioner, CaptionerConfig
from .classifier import Classifier, ClassifierConfig, default_classes
from .vocab import Vocab, caption_vocab, question_vocab, tokenize
from .vqa import VQA, VQAConfig
from ..errors import InputError, InputTypeError

NAMES = ("classifier", "captioner", "vqa")  # the CNN models (zoo model files)
HF_NAMES = ("tiny-ved", "tiny-vilt")  # the transformers models (tiny_hf.py)
ALL_NAMES = NAMES + HF_NAMES
VLM_NAMES = ("tiny-llava", "tiny-qwen2vl")  # loaded by load() (tiny_vlms.py); trained by mmexplain.training.tiny_vlms
VLM_ALIASES = {"tiny-vlm": "tiny-llava"}  # older names that still load
WEIGHTS, CONFIG, VOCAB, CARD = "weights.safetensors", "config.json", "vocab.json", "CARD.md"

__all__ = ["NAMES", "HF_NAMES", "ALL_NAMES", "VLM_NAMES", "VLM_ALIASES", "load", "new", "save", "build", "default_root", "folder", "check_name",
           "config_class", "check_config", "default_vocab", "model_name", "vocab_json", "write_checkpoint", "Captioner",
           "CaptionerConfig", "Classifier", "ClassifierConfig", "VQA", "VQAConfig", "Vocab", "tokenize",
           "caption_vocab", "question_vocab"]

# captioner config.json keys from before the grid summary was dropped; shipped values: grid 0 (global average only)
_CAPTIONER_LEGACY = ("grid", "grid_channels")


# the largest config.json / vocab.json read (bytes): the shipped ones are a few kB
MAX_JSON_BYTES = 4 * 1024 * 1024
# the largest size setting a config may ask for (channels, hidden sizes, image side)
MAX_SIZE = 8192


def default_root() -> Path:
    """The shipped checkpoints: the repository's top-level ``models/`` (a source checkout or
    an editable install), else the copy an installed wheel carries as ``mmexplain/shipped``."""
    package = Path(__file__).resolve().parents[1]
    repo = package.parent / "models"
    if (repo / "classifier").is_dir():
        return repo
    installed = package / "shipped"
    return installed if installed.is_dir() else repo


def check_config(name: str, config: Mapping[str, Any]) -> None:
    """Types and ranges of a CNN model's config fields, before anything is built.

    Raises:
        ValueError: a field of the wrong type or outside its range (named, with the value).
    """
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(config_class(name))}
    for key, value in config.items():
        if key not in fields:
            continue
        default = fields[key].default
        where = f"config: {name} setting {key!r}"
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise InputError(f"{where} must be true or false, got {value!r}")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"{where} must be an integer, got {value!r}")
            low = 0 if key in ("extra", "grid", "grid_channels") else 1
            if not low <= value <= MAX_SIZE:
                raise InputError(f"{where} must be in {low}..{MAX_SIZE}, got {value!r}")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise InputError(f"{where} must be a number in [0, 1), got {value!r}")
        elif isinstance(default, tuple):
            if (not isinstance(value, (list, tuple)) or len(value) != len(default)
                    or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SIZE for v in value)):
                raise InputError(f"{where} must be {len(default)} integers in 1..{MAX_SIZE}, got {value!r}")


def check_name(name: object, *, what: str = "name") -> str:
    """``name`` if it is a shipped model's name; otherwise ValueError naming the nearest one."""
    if isinstance(name, str) and name in ALL_NAMES:
        return name
    near = difflib.get_close_matches(str(name), ALL_NAMES + VLM_NAMES + tuple(VLM_ALIASES), n=1)
    hint = f" (nearest: {near[0]})" if near else ""
    raise InputError(f"{what} must be one of {', '.join(ALL_NAMES)}, got {name!r}{hint}")


def folder(name: str, root: str | os.PathLike | None = None) -> Path:
    """The checkpoint folder of ``name``: ``models/<name>`` by default.

    Args:
        name: a shipped model's name.
        root: ``None`` for the package's ``models/``; otherwise a folder holding
            ``<name>/``, or the checkpoint folder itself (holding ``config.json``).
    """
    name = VLM_ALIASES.get(name, name)
    if name not in VLM_NAMES:
        check_name(name)
    if root is None:
        return default_root() / name
    if not isinstance(root, (str, os.PathLike)):
        raise InputTypeError(f"root must be a folder path or None, got {type(root).__name__}")
    path = Path(root)
    if (path / CONFIG).exists() or (path / WEIGHTS).exists():
        return path
    return path / name


def config_class(name: str) -> type:
    """The dataclass config of ``name``'s architecture (``CaptionerConfig``, ``TinyVEDConfig``, ...)."""
    check_name(name)
    if name in HF_NAMES:
        from . import tiny_hf

        return tiny_hf.config_class(name)
    return {"classifier": ClassifierConfig, "captioner": CaptionerConfig, "vqa": VQAConfig}[name]


def build(name: str, config: Mapping[str, Any], vocab: Mapping[str, Any]) -> nn.Module:
    """An untrained CNN model from ``config.json``'s ``config`` and ``vocab.json``'s contents."""
    if name not in NAMES:
        raise InputError(f"name must be one of {', '.join(NAMES)}, got {name!r}")
    config = dict(config)
    if name == "captioner":
        legacy = {k: config.pop(k) for k in _CAPTIONER_LEGACY if k in config}
        if legacy.get("grid", 0):
            raise InputError(f"config: captioner grid={legacy['grid']} is not supported (global average only: 0)")
    fields = set(config_class(name).__dataclass_fields__)
    unknown = sorted(set(config) - fields)
    if unknown:
        near = difflib.get_close_matches(unknown[0], fields, n=1)
        raise InputError(f"config: {name} has no setting {unknown[0]!r}"
                         + (f" (nearest: {near[0]})" if near else f"; it has {', '.join(sorted(fields))}"))
    check_config(name, config)
    if name == "classifier":
        return Classifier(ClassifierConfig(**config), vocab.get("classes"))
    if name == "captioner":
        return Captioner(CaptionerConfig(**config), Vocab.from_json(vocab))
    return VQA(VQAConfig(**config), Vocab.from_json(vocab), vocab["answers"])


def default_vocab(name: str) -> dict:
    """``vocab.json`` contents of an untrained CNN model: every ShapeWorld word, answer or class."""
    from .. import world

    if name == "classifier":
        return {"classes": default_classes()}
    if name == "captioner":
        return caption_vocab().to_json()
    if name == "vqa":
        return {**question_vocab().to_json(), "answers": world.answers()}
    raise InputError(f"name must be one of {', '.join(NAMES)}, got {name!r}")


def new(name: str, *, config: Any = None, seed: int | None = 0) -> Any:
    """An untrained model: the default config (with ``config`` overriding fields) and vocabulary.

    Args:
        name: a shipped model's name.
        config: fields of the model's config dataclass to change (``{"extra": 2}``,
            ``{"enc_layers": 3}``; unknown fields raise ValueError), or a whole config
            (``CaptionerConfig(...)``, ``TinyVEDConfig(...)``).
        seed: seeds the initialisation (the caller's random state is left as it was);
            ``None`` draws from the global torch generator.

    Returns:
        In eval mode: an ``nn.Module`` for the CNN models, an ``mx.hf`` adapter for
        ``"tiny-ved"`` / ``"tiny-vilt"``.
    """
    import torch

    check_name(name)
    cls = config_class(name)
    if isinstance(config, cls):
        config = asdict(config)
    elif config is not None and not isinstance(config, Mapping):
        raise InputTypeError(f"config must be a dict of {cls.__name__} fields, a {cls.__name__} or None, "
                        f"got {type(config).__name__}")
    if name in HF_NAMES:
        from . import tiny_hf

        return tiny_hf.new(name, config=config, seed=0 if seed is None else seed)
    if seed is None:
        return build(name, config or {}, default_vocab(name)).eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build(name, config or {}, default_vocab(name)).eval()


def model_name(model: object) -> str:
    """The shipped name of a zoo model or tiny transformers adapter."""
    for cls, name in ((Classifier, "classifier"), (Captioner, "captioner"), (VQA, "vqa")):
        if isinstance(model, cls):
            return name
    from . import tiny_hf

    return tiny_hf.model_name(model)


def vocab_json(model: nn.Module) -> dict:
    """What ``vocab.json`` holds for a CNN model: classes, or words (and answers)."""
    if isinstance(model, Classifier):
        return {"classes": model.classes}
    if isinstance(model, Captioner):
        return model.vocab.to_json()
    if isinstance(model, VQA):
        return {**model.vocab.to_json(), "answers": model.answers}
    raise InputTypeError(f"model must be a zoo Classifier, Captioner or VQA, got {type(model).__name__}")


def write_checkpoint(model: nn.Module, out: str | os.PathLike, *, meta: Mapping[str, Any] | None = None) -> Path:
    """Write a CNN model's ``weights.safetensors``, ``config.json``, ``vocab.json`` into the folder ``out``.

    Each file is written atomically; ``meta`` (training info, metrics, command) goes
    into ``config.json`` beside ``name``, ``format`` and ``config``.
    """
    from safetensors.torch import save_file

    from .._io import atomic_write, write_json

    name = model_name(model)
    out = Path(out)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write(out / WEIGHTS, lambda tmp: save_file(state, str(tmp), metadata={"name": name}))
    write_json(out / CONFIG, {"name": name, "format": 1, "config": asdict(model.config), **(meta or {})})
    write_json(out / VOCAB, vocab_json(model), indent=1)
    return out


def save(model: Any, out: str | os.PathLike) -> Path:
    """Save a zoo model or tiny transformers adapter as the folder ``out``, replaced whole and atomically.

    ``load(name, out)`` reads it back. Safetensors + JSON only (no pickle).
    """
    from .._io import atomic_folder

    name = model_name(model)
    with atomic_folder(out) as tmp:
        if name in HF_NAMES:
            from . import tiny_hf

            tiny_hf.write_checkpoint(model, tmp)
        else:
            write_checkpoint(model, tmp)
    return Path(out)


def _read_json(path: Path) -> dict:
    from .._io import read_json

    if not path.is_file():
        raise FileNotFoundError(f"missing checkpoint file: {path}")
    data = read_json(path, what="corrupt checkpoint file", max_bytes=MAX_JSON_BYTES)
    if not isinstance(data, dict):
        raise InputError(f"corrupt checkpoint file {path}: expected a JSON object")
    return data


def load(name: str, root: str | os.PathLike | None = None) -> Any:
    """Load a shipped model in eval mode.

    Args:
        name: one of :data:`ALL_NAMES` or :data:`VLM_NAMES` (``"tiny-vlm"`` is ``"tiny-llava"``).
        root: ``None`` for the package's ``models/``; otherwise a folder holding
            ``<name>/``, or the checkpoint folder itself.

    Returns:
        The ``nn.Module`` (CNN models) or the ``mx.hf`` adapter (``"tiny-ved"``:
        ``VisionEncoderDecoderCaptioner``, ``"tiny-vilt"``: ``ViltVQA``, the VLMs:
        ``ImageTextToText`` over a LLaVA-style model).

    Raises:
        ValueError: unknown name, or a corrupt/mismatched checkpoint file (named).
        FileNotFoundError: a missing checkpoint folder or file (named).
    """
    path = folder(name, root)
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint folder for {name!r}: {path} (train one with `mmexplain train {name}`)")
    if name not in NAMES and (path / CONFIG).is_file():  # a transformers folder: checked before transformers reads it
        from .common import check_hf_folder

        check_hf_folder(path)
    if name in HF_NAMES:
        from . import tiny_hf

        return tiny_hf.load(name, path)
    if VLM_ALIASES.get(name, name) in VLM_NAMES:
        from . import tiny_vlms

        return tiny_vlms.load(path, VLM_ALIASES.get(name, name))
    return _load_cnn(name, path)


def _load_cnn(name: str, path: Path) -> nn.Module:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = _read_json(path / CONFIG)
    vocab = _read_json(path / VOCAB)
    if not isinstance(config.get("config"), dict):
        raise InputError(f"corrupt checkpoint file {path / CONFIG}: 'config' must be a JSON object, "
                         f"got {type(config.get('config')).__name__}")
    if config.get("name") != name:
        raise InputError(f"corrupt checkpoint file {path / CONFIG}: it describes {config.get('name')!r}, not {name!r}")
    try:
        model = build(name, config["config"], vocab)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"corrupt checkpoint files {path / CONFIG} / {path / VOCAB}: {exc}") from exc
    weights = path / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"missing checkpoint file: {weights}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise InputError(f"corrupt checkpoint file {weights}: {exc}") from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise InputError(f"checkpoint file {weights} does not match {CONFIG}: {detail}") from exc
    import torch

    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise InputError(f"corrupt checkpoint file {weights}: weights {key!r} hold NaN or inf")
    return model.eval()
