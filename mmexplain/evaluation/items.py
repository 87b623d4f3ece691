"""The one path from a model, an item and a method to saliency maps, for every evaluation protocol.

Grounding, sanity checks, faithfulness, localisation, occlusion agreement, diagnosis
and ``explain-dataset`` all explain through :func:`explain_item`: the model's adapter
(:func:`~mmexplain.adapters.as_item_adapter`: zoo models, ``mx.hf`` adapters, VLMs,
classifiers) and the public explainers (``explain_caption`` / ``explain_answer`` /
``explain_class``), so a protocol's numbers are what a user sees. The saliency map of a
result is read as the method registry says (``MethodSpec.saliency_of``: Guided Grad-CAM
as ``|guided backprop x Grad-CAM|`` summed over the colour channels). A method that does
not apply to a model (``MethodSpec.why_not(adapter.capabilities)``) raises
:class:`NotApplicable`, whose message is the reason; :func:`inapplicable` lists the
reasons before any work, so tables show a named blank cell instead of a number.

An :class:`~mmexplain.adapters.Item` is one image and k targets of one kind:

* ``class``: classifier classes (ShapeWorld: the top class);
* ``caption``: content words of the ground-truth caption, teacher-forced;
* ``answer``: the ground-truth answer of one question that refers to objects.

Example:
    >>> import mmexplain as mx
    >>> from mmexplain.evaluation.items import explain_item, scene_items
    >>> vlm = mx.zoo.load("tiny-vlm")                                           # doctest: +SKIP
    >>> item = scene_items(vlm, "caption", [2_000_000], size=64)[0]              # doctest: +SKIP
    >>> explain_item(vlm, item, "gradcam").maps.shape     # (k words, 64, 64)    # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .. import world
from ..adapters.items import Item
from ..adapters.protocols import ItemAdapter
from ..adapters.zoo import as_item_adapter
from ..explain import explain_answer, explain_caption, explain_class
from ..methods import call_model, method_spec
from ..targets import logits_of
from ..errors import InputError

__all__ = ["Item", "ItemMaps", "NotApplicable", "adapter_of", "kind_of", "inapplicable", "split_methods", "explain_item",
           "saliency", "scene_items", "resolve_items", "image_size"]


class NotApplicable(ValueError):
    """A method that does not apply to a model (its message is the reason, e.g. "Relevancy needs ...")."""


@dataclass
class ItemMaps:
    """What :func:`explain_item` gives.

    Attributes:
        maps: (k, H, W) float32 CPU saliency of each target, at the adapter's display size.
        labels: the k explained classes / words / answers (the model's own when the item
            left them open).
        explanation: the explainer's result (``CaptionExplanation``, ``AnswerExplanation``
            or ``ClassExplanation``), every target of it (a caption's words all there).
    """

    maps: Tensor
    labels: list[str]
    explanation: Any


def adapter_of(model: Any) -> ItemAdapter:
    """The adapter that answers the evaluation questions for ``model`` (zoo model, classifier or adapter)."""
    return as_item_adapter(model)


def kinds_of(model: Any) -> list[str]:
    """Every item kind ``model`` explains, in the order caption, answer, class (a VLM: captions and answers)."""
    tasks = adapter_of(model).tasks
    return [kind for kind in ("caption", "answer", "class") if kind in tasks]


def kind_of(model: Any) -> str:
    """``"caption"``, ``"answer"`` or ``"class"``: the item kind ``model`` is evaluated on (a VLM: captions)."""
    return kinds_of(model)[0]


def inapplicable(model: Any, methods: Iterable[str]) -> dict[str, str]:
    """name -> the one-line reason, for each method of ``methods`` that ``model`` cannot run."""
    capabilities = adapter_of(model).capabilities
    reasons = {m: method_spec(m).why_not(capabilities) for m in methods}
    return {m: reason for m, reason in reasons.items() if reason is not None}


def split_methods(model: Any, methods: str | Iterable[str]) -> tuple[list[str], dict[str, str]]:
    """The methods ``model`` can run, and name -> reason for the others (blank cells); none runnable is refused."""
    asked = [methods] if isinstance(methods, str) else list(methods)
    if not asked:
        raise InputError(f"methods: expected at least one method name, got {methods!r}")
    reasons = inapplicable(model, asked)
    runnable = [m for m in asked if m not in reasons]
    if not runnable:  # a table of blank cells only: refused, with the reasons
        raise InputError(f"methods: none of {', '.join(asked)} applies to this model ({'; '.join(reasons.values())})")
    return runnable, reasons


def saliency(explanation: Any, method: str, *, signed: bool = False) -> Tensor:
    """(k, H, W) float32 CPU saliency maps of an explanation, read as the registry says (``saliency_of``)."""
    return method_spec(method).saliency_of(explanation, signed=signed).detach().float().cpu()


def explain_item(model: Any, item: Item, method: str, *, layer: Any = None, signed: bool = False) -> ItemMaps:
    """The saliency maps of the item's targets on ``model`` by ``method`` (a name of ``mx.methods.METHODS``).

    Args:
        model: an adapter, or an ``mx.zoo`` model / classifier (its adapter is made).
        item: what to explain; an open item (no classes / caption / answer) explains the
            model's own top class, caption or answer.
        method: a registered method.
        layer: the explained layer (default the adapter's).
        signed: Guided Grad-CAM summed over the colour channels with its sign (sanity
            checks) instead of ``|.|`` (the registry's saliency).

    Raises:
        NotApplicable: the method needs what the model does not offer (the reason).
    """
    adapter = adapter_of(model)
    adapter.check_item(item)
    reason = method_spec(method).why_not(adapter.capabilities)
    if reason is not None:
        raise NotApplicable(reason)
    if item.kind == "caption":
        ex = explain_caption(adapter, item.image, item.caption or None, layer=layer, method=method)
        rows = item.words or list(range(len(ex.words)))
        return ItemMaps(saliency(ex, method, signed=signed)[rows], [ex.words[i] for i in rows], ex)
    if item.kind == "answer":
        ex = explain_answer(adapter, item.image, item.question, item.answer or None, layer=layer, method=method)
        return ItemMaps(saliency(ex, method, signed=signed), list(ex.answers), ex)
    ex = explain_class(adapter, item.image, item.classes or None, layer=layer, method=method)
    return ItemMaps(saliency(ex, method, signed=signed), list(ex.labels), ex)


def image_size(model: Any) -> int:
    """The side of the maps an explainer gives for ``model`` (scenes are drawn at that size)."""
    adapter = adapter_of(model)
    shown = adapter.display_image(adapter.load_image(torch.full((3, 96, 96), 0.5)))  # (3, H, W)
    if shown.shape[-1] != shown.shape[-2]:
        raise InputError(f"model: its images are {tuple(shown.shape[-2:])}; the protocols need square maps")
    return int(shown.shape[-1])


def _top_class(adapter: Any, image: Tensor) -> int:
    with torch.no_grad():
        logits = logits_of(call_model(adapter.model, adapter.class_inputs(adapter.load_image(image))))  # (1, C)
    return int(logits[0].argmax())


def scene_items(model: Any, kind: str, seeds: Sequence[int], *, size: int) -> list[Item]:
    """Items of held-out ShapeWorld scenes for a model of ``kind`` (the classifier's class: its top one)."""
    adapter = adapter_of(model)
    items = []
    for seed in seeds:
        scene = world.generate(seed, size=size)
        if kind == "class":
            top = _top_class(adapter, scene.image)
            name = adapter.class_names([top])[0]
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
            raise InputError(f"kind: expected 'class', 'caption' or 'answer', got {kind!r}")
    return items


def resolve_items(model: Any, kind: str, items: Any, seeds: Any) -> list[Item]:
    """``items`` as a list, or the items of the ShapeWorld scenes of ``seeds`` when ``items`` is None."""
    if items is None:
        if seeds is None:
            raise InputError("seeds: expected scene seeds (or items=), got None")
        items = scene_items(model, kind, list(seeds), size=image_size(model))
    items = list(items)
    if not items:
        raise InputError("items: nothing to explain (no item for these scenes)")
    return items
