"""What ``mmexplain train NAME`` does: each model's recipe, train + evaluate + save, evaluate a checkpoint.

:func:`train_and_save` trains with the shared loop, evaluates on held-out scenes and
writes the checkpoint folder whole and atomically (``mmexplain._io.atomic_folder``):
a run that fails or diverges leaves nothing behind and an existing folder as it was.

Example:
    >>> from mmexplain.training.run import TrainRequest, train_and_save
    >>> request = TrainRequest("classifier", overrides={"steps": 2, "batch_size": 4}, n=8)
    >>> metrics = train_and_save(request, "runs/classifier-try")       # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import zoo
from .._io import atomic_folder, write_json, write_text
from .loop import LoopConfig
from ..errors import InputError

__all__ = ["Recipe", "RECIPES", "TrainRequest", "loop_config", "train_and_save", "evaluate_checkpoint", "recipe_table"]


@dataclass(frozen=True)
class Recipe:
    """A shipped model's training defaults."""

    loop: LoopConfig  # steps, batch size, schedule
    n: int  # held-out scenes evaluated after training (test split: CNN models; val split: tiny models)
    n_train: int | None = None  # tiny models: pre-generated training scenes (the CNN models draw fresh ones)


RECIPES: dict[str, Recipe] = {
    "classifier": Recipe(LoopConfig(steps=1500, batch_size=32, lr=3e-3, weight_decay=1e-4, clip=2.0), n=1000),
    "captioner": Recipe(LoopConfig(steps=2500, batch_size=32, lr=3e-3, weight_decay=1e-4, clip=2.0), n=1000),
    "vqa": Recipe(LoopConfig(steps=2500, batch_size=24, lr=2e-3, weight_decay=1e-4, clip=2.0), n=1000),
    "tiny-ved": Recipe(LoopConfig(steps=4000, batch_size=64, lr=1e-3, weight_decay=0.01, warmup=200, min_lr=0.05,
                                  clip=1.0), n=500, n_train=20_000),
    "tiny-vilt": Recipe(LoopConfig(steps=6000, batch_size=32, lr=1e-3, weight_decay=0.01, warmup=200, min_lr=0.05,
                                   clip=1.0), n=300, n_train=10_000),
}


@dataclass
class TrainRequest:
    """One training run; ``None`` and missing keys take the model's :data:`RECIPES` entry."""

    name: str  # a shipped model's name
    overrides: dict[str, Any] = field(default_factory=dict)  # LoopConfig fields to change (steps, lr, seed, ...)
    arch: dict[str, Any] = field(default_factory=dict)  # architecture config fields to change (fresh models only)
    init: Path | None = None  # continue from this checkpoint folder (its weights; a fresh optimiser and schedule)
    init_encoder: Path | None = None  # CNN models: a classifier checkpoint whose encoder starts the model
    questions_per_scene: int = 0  # vqa: questions of distinct kinds per training scene; 0: all
    n_train: int | None = None  # tiny models: training scenes
    n: int | None = None  # held-out scenes to evaluate
    cache_dir: Path | None = None  # tiny models: cache the generated scenes here
    command: str = ""  # the command line, for the card

    def __post_init__(self) -> None:
        zoo.check_name(self.name)
        for key, value in (("n", self.n), ("n_train", self.n_train)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InputError(f"{key} must be an int >= 1, got {value!r}")
        if self.questions_per_scene < 0:
            raise InputError(f"questions_per_scene must be >= 0, got {self.questions_per_scene}")


def loop_config(name: str, overrides: Mapping[str, Any] | None = None) -> LoopConfig:
    """The recipe's loop config of ``name`` with ``overrides`` (``None`` values keep the recipe's)."""
    base = RECIPES[zoo.check_name(name)].loop
    changes = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(changes) - set(asdict(base)))
    if unknown:
        raise InputError(f"overrides: no loop setting {unknown[0]!r}; settings: {', '.join(asdict(base))}")
    return replace(base, **changes)


def train_and_save(request: TrainRequest, out: str | os.PathLike, *,
                   log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Train ``request.name``, evaluate it and write the checkpoint folder ``out`` (replaced whole).

    Returns:
        The held-out metrics.

    Raises:
        mmexplain.training.loop.TrainingDiverged: nothing is written.
    """
    from . import evaluate as ev

    name = request.name
    recipe = RECIPES[name]
    config = loop_config(name, request.overrides)
    n = request.n or recipe.n
    if log is not None:
        log(f"training {name}: {json.dumps({**asdict(config), 'warmup': config.warmup_steps})}")
    if name in zoo.HF_NAMES:
        from ..zoo import tiny_hf as zoo_hf
        from . import tiny_hf
        from .cards import earlier_card, ved_card, vilt_card

        model, info = tiny_hf.train(name, config, n_train=request.n_train or recipe.n_train, arch=request.arch,
                                    init=request.init, cache_dir=request.cache_dir, log=log)
        metrics = ev.evaluate(name, model, n=n, cache_dir=request.cache_dir)
        card = (ved_card if name == "tiny-ved" else vilt_card)(info, metrics, request.command)
        with atomic_folder(out) as tmp:
            zoo_hf.write_checkpoint(model, tmp)
            write_json(tmp / "train_config.json", {**info["architecture"], **asdict(config), "n_train": info["n_train"],
                                                   "n_val": n}, indent=1)
            write_json(tmp / "metrics.json", {**metrics, "training": info}, indent=1)
            write_text(tmp / "CARD.md", card + earlier_card(None if request.init is None
                                                            else zoo.folder(name, request.init)))
    else:
        from . import zoo as zoo_training
        from .cards import zoo_card

        start, previous = None, None
        if request.init is not None:
            start = zoo.load(name, request.init)
            previous = json.loads((zoo.folder(name, request.init) / zoo.CONFIG).read_text(encoding="utf-8"))
        model, info = zoo_training.train(name, config, model=start, encoder_from=request.init_encoder,
                                         questions_per_scene=request.questions_per_scene, arch=request.arch, log=log)
        command = request.command
        if previous is not None:
            info["resumed_from"] = {"command": previous.get("command"), "training": previous.get("training")}
            command = f"{previous.get('command')}\n{command}"
        metrics = ev.evaluate(name, model, n=n)
        with atomic_folder(out) as tmp:
            zoo.write_checkpoint(model, tmp, meta={"training": info, "metrics": metrics, "command": command})
            write_text(tmp / zoo.CARD, zoo_card(name, model, info, metrics, command))
    if log is not None:
        log(ev.headline(name, metrics))
    return metrics


def evaluate_checkpoint(name: str, root: str | os.PathLike | None = None, *, n: int | None = None,
                        cache_dir: Path | None = None, write_card: bool = False) -> dict[str, Any]:
    """Held-out metrics of a checkpoint (default: the shipped ``models/NAME``), no training.

    Args:
        name: a shipped model's name.
        root: the checkpoint folder, or a folder holding ``NAME/`` (``None``: shipped).
        n: held-out scenes (default: the recipe's).
        cache_dir: tiny models: cache the generated val scenes here.
        write_card: CNN models: rewrite the folder's ``CARD.md`` and the metrics in its
            ``config.json`` (training info and command kept).
    """
    from . import evaluate as ev

    zoo.check_name(name)
    model = zoo.load(name, root)
    metrics = ev.evaluate(name, model, n=n or RECIPES[name].n, cache_dir=cache_dir)
    if write_card:
        if name in zoo.HF_NAMES:
            raise InputError(f"write_card: only for {', '.join(zoo.NAMES)}, not {name}")
        from .cards import zoo_card

        folder = zoo.folder(name, root)
        old = json.loads((folder / zoo.CONFIG).read_text(encoding="utf-8"))
        info, command = old.get("training") or {}, old.get("command") or ""
        zoo.write_checkpoint(model, folder, meta={"training": info, "metrics": metrics, "command": command})
        write_text(folder / zoo.CARD, zoo_card(name, model, info, metrics, command))
    return metrics


def recipe_table() -> str:
    """:data:`RECIPES` as the text table ``mmexplain train --help`` shows."""
    rows = [("NAME", "--steps", "--batch-size", "--lr", "--weight-decay", "--warmup", "--scenes", "--n-train")]
    for name, r in RECIPES.items():
        split = "val" if name in zoo.HF_NAMES else "test"
        rows.append((name, str(r.loop.steps), str(r.loop.batch_size), f"{r.loop.lr:g}", f"{r.loop.weight_decay:g}",
                     "3%" if r.loop.warmup is None else str(r.loop.warmup), f"{r.n} {split}",
                     "-" if r.n_train is None else str(r.n_train)))
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    return "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)
