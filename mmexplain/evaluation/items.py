"""What the map protocols explain: one image with its explained scalars, re-explainable on any copy of the model.

Sanity checks re-explain the same scalars on randomised copies of a model, and the
faithfulness metrics read the scalar's probability on perturbed images; both need an
item that knows how to explain itself on a given model. An :class:`Item` is one image
and k targets of one model kind:

* ``class``: a classifier's top class (zoo classifier: sigmoid, multi-label; any other
  classifier, e.g. EfficientNet-Lite0: softmax);
* ``caption``: every content word of the ground-truth caption, teacher-forced;
* ``answer``: the ground-truth answer of one question that refers to objects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .. import world
from ..explain import explain_answer, explain_caption, explain_class
from ..zoo.classifier import Classifier

__all__ = ["Item", "scene_items", "resolve_items", "explain_maps", "probability_fn"]


@dataclass
class Item:
    """One image and the targets explained on it.

    Attributes:
        kind: ``"class"``, ``"caption"`` or ``"answer"``.
        image: (3, H, W) in [0, 1].
        labels: the k explained words / answers / classes, for display.
        classes: class indices (``class``), or the answer (``answer``) / caption (``caption``).
        words: ``caption``: indices into ``caption.split()`` of the explained words.
        question: ``answer``: the question.
        masks: per target the referred object's (H, W) bool mask, when known.
        boxes: per target its box, when known.
    """

    kind: str
    image: Tensor
    labels: list[str]
    classes: list[int] = field(default_factory=list)
    caption: str = ""
    words: list[int] = field(default_factory=list)
    question: str = ""
    answer: str = ""
    masks: list[Tensor | None] = field(default_factory=list)
    boxes: list[tuple[int, int, int, int] | None] = field(default_factory=list)


def scene_items(model: nn.Module, kind: str, seeds: Sequence[int], *, size: int) -> list[Item]:
    """Items of held-out ShapeWorld scenes for a model of ``kind`` (the classifier's class: its top one)."""
    items = []
    for seed in seeds:
        scene = world.generate(seed, size=size)
        if kind == "class":
            with torch.no_grad():
                top = int(model(model.preprocess(scene.image)).argmax())
            name = model.classes[top]
            objects = [o for o in scene.objects if f"{o.color} {o.shape}" == name]
            mask = None
            if objects:
                mask = torch.zeros_like(objects[0].mask)
                for o in objects:
                    mask |= o.mask
            box = objects[0].box if len(objects) == 1 else None
            items.append(Item("class", scene.image, [name], classes=[top], masks=[mask], boxes=[box]))
        elif kind == "caption":
            words = scene.caption.split()
            chosen = sorted(scene.alignment)
            items.append(Item("caption", scene.image, [words[i] for i in chosen], caption=scene.caption, words=chosen,
                              masks=[scene.objects[scene.alignment[i]].mask for i in chosen],
                              boxes=[scene.objects[scene.alignment[i]].box for i in chosen]))
        elif kind == "answer":
            for qa in scene.questions:
                if len(qa.objects) == 1:
                    obj = scene.objects[qa.objects[0]]
                    items.append(Item("answer", scene.image, [qa.answer], question=qa.question, answer=qa.answer,
                                      masks=[obj.mask], boxes=[obj.box]))
                    break
        else:
            raise ValueError(f"kind: expected 'class', 'caption' or 'answer', got {kind!r}")
    return items


def explain_maps(model: nn.Module, item: Item, method: str, *, layer: Any = None, signed: bool = False) -> Tensor:
    """(k, H, W) maps of the item's targets on ``model`` by ``method`` (a name of ``mx.explain.METHODS``).

    Guided Grad-CAM is summed over the colour channels: signed (``signed=True``) or as
    ``|guided|`` (the grounding protocol's map).
    """
    if item.kind == "class":
        ex = explain_class(model, item.image, item.classes, layer=layer, method=method)
    elif item.kind == "caption":
        ex = explain_caption(model, item.image, item.caption, layer=layer, method=method)
    else:
        ex = explain_answer(model, item.image, item.question, item.answer, layer=layer, method=method)
    if method == "guided":
        maps = ex.guided.sum(dim=-3) if signed else ex.guided.abs().sum(dim=-3)  # (k', H, W)
    else:
        maps = ex.maps  # (k', H, W)
    if item.kind == "caption":
        maps = maps[item.words]
    return maps.detach()


def probability_fn(model: nn.Module, item: Item, target: int) -> Callable[[Tensor], Tensor]:
    """``images (N, 3, H, W) -> (N,)``: the probability of the item's ``target``-th scalar on ``model``."""
    if item.kind == "class":
        c = item.classes[target]
        if isinstance(model, Classifier):  # multi-label: sigmoid of the logit
            return lambda x: torch.sigmoid(model(x)[:, c])
        return lambda x: model(x).softmax(dim=-1)[:, c]
    if item.kind == "caption":
        words = item.caption.split()
        ids = model.vocab.encode(words)
        tokens = torch.tensor([[model.vocab.bos, *ids]], dtype=torch.long)  # (1, T+1)
        position = item.words[target]
        token = ids[position]
        return lambda x: model(x, tokens.expand(len(x), -1)).log_softmax(dim=-1)[:, position, token].exp()
    question = model.encode_question(item.question)[None]  # (1, L)
    index = model.answers.index(item.answer)
    return lambda x: model(x, question.expand(len(x), -1)).softmax(dim=-1)[:, index]


def resolve_items(model: Any, kind: str, items: Any, seeds: Any) -> list[Item]:
    """``items`` as a list, or the items of the ShapeWorld scenes of ``seeds`` when ``items`` is None."""
    from .grounding import image_size

    if items is None:
        if seeds is None:
            raise ValueError("seeds: expected scene seeds (or items=), got None")
        items = scene_items(model, kind, list(seeds), size=image_size(model))
    items = list(items)
    if not items:
        raise ValueError("items: nothing to explain (no item for these scenes)")
    return items
