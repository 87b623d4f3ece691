"""Training pieces of the CNN reference models (classifier, captioner, vqa): batches, losses, encoder init.

Training draws fresh scenes from the train split at every step (no epochs, no scene
seen twice) and runs the shared loop (:func:`mmexplain.training.loop.fit`). Losses:

* classifier: binary cross-entropy per colour x shape class (multi-label);
* captioner: teacher-forced cross-entropy of every caption token and ``<eos>``;
* vqa: cross-entropy over the answers; each scene's image goes through the CNN once
  for all its questions (``questions_per_scene=0``: every question of the scene).

Example:
    >>> from mmexplain.training.loop import LoopConfig
    >>> from mmexplain.training.zoo import train
    >>> model, info = train("classifier", LoopConfig(steps=2, batch_size=4, log_every=0))  # doctest: +SKIP
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import world, zoo
from ..zoo.captioner import Captioner
from ..zoo.classifier import Classifier
from ..zoo.vocab import Vocab
from ..zoo.vqa import VQA
from .loop import LoopConfig, fit
from ..errors import InputError, InputTypeError

__all__ = ["caption_tensors", "make_batch", "batch_loss", "init_encoder", "train"]


def caption_tensors(vocab: Vocab, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forcing inputs ``[<bos>, w1..wT]`` and targets ``[w1..wT, <eos>]``, both ``(B, L)``.

    Inputs are padded with ``vocab.pad``, targets with -100 (ignored by the loss).
    """
    ids = [vocab.encode(c.split()) for c in captions]
    length = max(len(x) for x in ids) + 1
    inputs = torch.full((len(ids), length), vocab.pad, dtype=torch.long)  # (B, L)
    targets = torch.full((len(ids), length), -100, dtype=torch.long)  # (B, L)
    for i, x in enumerate(ids):
        inputs[i, : len(x) + 1] = torch.tensor([vocab.bos, *x])
        targets[i, : len(x) + 1] = torch.tensor([*x, vocab.eos])
    return inputs, targets


def make_batch(model: nn.Module, seeds: Sequence[int], *, bias: Mapping[str, str] | None = None,
               questions_per_scene: int = 0) -> dict[str, Any]:
    """The scenes of ``seeds`` as the model's inputs and targets (plus the ``scenes`` themselves).

    Args:
        model: a zoo ``Classifier``, ``Captioner`` or ``VQA``.
        seeds: scene seeds.
        bias: passed to :func:`mmexplain.world.generate` (biased data).
        questions_per_scene: vqa: questions of distinct kinds per scene; 0: every question.

    Returns:
        classifier: ``images (B, 3, H, W)``, ``targets (B, C)``; captioner: ``images``,
        ``tokens (B, L)``, ``targets (B, L)``; vqa: ``images``, ``questions (Q, L)``,
        ``rows (Q,)`` (the image of each question), ``targets (Q,)``.
    """
    size = model.config.image_size
    scenes = [world.generate(s, size=size, bias=bias) for s in seeds]
    images = torch.stack([s.image for s in scenes])  # (B, 3, H, W)
    if isinstance(model, Classifier):
        index = {c: i for i, c in enumerate(model.classes)}
        targets = torch.zeros(len(scenes), len(model.classes))  # (B, C)
        for i, s in enumerate(scenes):
            for o in s.objects:
                targets[i, index[f"{o.color} {o.shape}"]] = 1.0
        return {"images": images, "targets": targets, "scenes": scenes}
    if isinstance(model, Captioner):
        tokens, targets = caption_tensors(model.vocab, [s.caption for s in scenes])
        return {"images": images, "tokens": tokens, "targets": targets, "scenes": scenes}
    if isinstance(model, VQA):
        qas, rows = [], []
        for j, s in enumerate(scenes):
            if questions_per_scene <= 0:  # every question: contrasting questions about one image
                qas += s.questions
                rows += [j] * len(s.questions)
                continue
            rng = random.Random(s.seed * 7 + 1)
            kinds = sorted({q.kind for q in s.questions})
            for kind in rng.sample(kinds, min(questions_per_scene, len(kinds))):
                qas.append(rng.choice([q for q in s.questions if q.kind == kind]))
                rows.append(j)
        questions = model.encode_questions([q.question for q in qas])  # (Q, L)
        answers = torch.tensor([model.answers.index(q.answer) for q in qas])  # (Q,)
        return {"images": images, "questions": questions, "rows": torch.tensor(rows), "targets": answers,
                "scenes": scenes}
    raise InputTypeError(f"model must be a zoo model, got {type(model).__name__}")


def batch_loss(model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    """The training loss of a :func:`make_batch` batch (a scalar)."""
    if isinstance(model, Classifier):
        return nn.functional.binary_cross_entropy_with_logits(model(batch["images"]), batch["targets"])
    if isinstance(model, Captioner):
        logits = model(batch["images"], batch["tokens"])  # (B, L, V)
        return nn.functional.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=-100)
    if isinstance(model, VQA):  # one CNN pass per image, several questions per image
        image = model.image_embedding(batch["images"])[batch["rows"]]  # (Q, F)
        logits = model.fuse(image, model.question_embedding(batch["questions"]))  # (Q, A)
        return nn.functional.cross_entropy(logits, batch["targets"])
    raise InputTypeError(f"model must be a zoo model, got {type(model).__name__}")


def init_encoder(model: nn.Module, folder: str | os.PathLike) -> None:
    """Copy the conv encoder of the classifier checkpoint in ``folder`` into ``model.encoder``.

    The paper's models start from a pretrained CNN; here the pretrained CNN is the
    ShapeWorld classifier (same ``widths`` and ``extra`` required; the encoder's input
    channels must match too, so not for the CoordConv captioner).
    """
    clf = zoo.load("classifier", folder)
    if (clf.config.widths, clf.config.extra) != (model.config.widths, model.config.extra):
        raise InputError(f"init_encoder {folder}: the classifier's widths/extra {clf.config.widths}/"
                         f"{clf.config.extra} do not match the model's {model.config.widths}/{model.config.extra}")
    try:
        model.encoder.load_state_dict(clf.encoder.state_dict())
    except RuntimeError as exc:
        raise InputError(f"init_encoder {folder}: the classifier's encoder does not fit this model: {exc}") from exc


def train(name: str, config: LoopConfig, *, model: nn.Module | None = None,
          encoder_from: str | os.PathLike | None = None, questions_per_scene: int = 0,
          bias: Mapping[str, str] | None = None, arch: Mapping[str, Any] | None = None,
          log: Callable[[str], None] | None = print) -> tuple[nn.Module, dict[str, Any]]:
    """Train a CNN reference model on fresh train-split scenes with the shared loop.

    Args:
        name: ``"classifier"``, ``"captioner"`` or ``"vqa"``.
        config: steps, batch size, schedule, seed (also seeds the initialisation and
            where in the train split to start).
        model: continue from this model instead of a fresh one.
        encoder_from: a classifier checkpoint folder whose CNN initialises the encoder.
        questions_per_scene: vqa: questions of distinct kinds per scene (0: all).
        bias: passed to :func:`mmexplain.world.generate` (biased training data).
        arch: config fields of a fresh model to change (``{"extra": 2}``).
        log: progress lines (``None``: quiet).

    Returns:
        ``(model in eval mode, info)``: the loop's info plus ``bias``, ``encoder_from``
        (and ``questions_per_scene`` for vqa).

    Raises:
        mmexplain.training.loop.TrainingDiverged: the loss or the weights became non-finite.
    """
    if name not in zoo.NAMES:
        raise InputError(f"name must be one of {', '.join(zoo.NAMES)}, got {name!r}")
    if model is None:
        model = zoo.new(name, config=arch, seed=config.seed)
    elif arch:
        raise InputError("arch: a continued model keeps its architecture; give arch only for a fresh model")
    if encoder_from is not None:
        init_encoder(model, encoder_from)
    seeds = world.SPLITS["train"]
    start = (config.seed * 100_003) % len(seeds)
    size = config.batch_size

    def next_batch(step: int, generator: torch.Generator) -> dict[str, Any]:
        picked = [seeds[(start + step * size + i) % len(seeds)] for i in range(size)]
        return make_batch(model, picked, bias=bias, questions_per_scene=questions_per_scene)

    info = fit(model, next_batch, batch_loss, config, log=log)
    info |= {"bias": dict(bias) if bias else None,
             "encoder_from": None if encoder_from is None else Path(encoder_from).name}
    if name == "vqa":
        info["questions_per_scene"] = questions_per_scene
    return model, info
