"""Weakly-supervised localisation (Grad-CAM paper, Sec. 4.1): a box from the class map, top-1 / top-5 error.

For each image the classifier's top-5 classes are explained; each map is binarised at
15% of its maximum, the box of the largest connected segment is the predicted box
(:func:`mmexplain.metrics.largest_segment_box`). As in ILSVRC:

* top-1 localisation error: the top class is not a right class, or its box has IoU < 0.5
  with every ground-truth box of that class;
* top-5 localisation error: no class among the top 5 is right with a box of IoU >= 0.5;
* classification errors (top-1, top-5) beside them.

Data: ShapeWorld (the classes are ``"<colour> <shape>"``, boxes known) or any list of
``(image, {class index: [boxes]})`` -- e.g. COCO-format instances mapped to the
classifier's classes.

Example:
    >>> import mmexplain as mx
    >>> from mmexplain.evaluation.localization import localization_error, shapeworld_boxes
    >>> report = localization_error(mx.zoo.load("classifier"), shapeworld_boxes(range(2_000_000, 2_000_050)))  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from .. import metrics, world
from ..methods import call_model
from ..targets import logits_of
from .items import Item, adapter_of, explain_item
from ..errors import InputError

__all__ = ["localization_error", "shapeworld_boxes", "format_localization"]

Box = tuple[int, int, int, int]


def shapeworld_boxes(seeds: Iterable[int], *, size: int = 96,
                     classes: Sequence[str] | None = None) -> list[tuple[Tensor, dict[int, list[Box]]]]:
    """ShapeWorld scenes as ``(image (3, H, W), {class index: [box per object of that class]})``."""
    names = list(classes) if classes is not None else world.object_classes()
    out = []
    for seed in seeds:
        scene = world.generate(seed, size=size)
        boxes: dict[int, list[Box]] = {}
        for o in scene.objects:
            boxes.setdefault(names.index(f"{o.color} {o.shape}"), []).append(o.box)
        out.append((scene.image, boxes))
    return out


def localization_error(
    model: Any,
    data: Iterable[tuple[Tensor, dict[int, list[Box]]]],
    *,
    method: str = "gradcam",
    layer: Any = None,
    threshold: float = 0.15,
    iou: float = 0.5,
    top_k: int = 5,
) -> dict[str, Any]:
    """Top-1 / top-k localisation and classification error of a classifier's maps.

    Args:
        model: a classifier (``mx.zoo``, EfficientNet-Lite0, a ``ClassifierAdapter``).
        data: ``(image, {class index: [boxes (x0, y0, x1, y1), x1/y1 exclusive]})`` in the
            model's input pixels.
        method: a name of ``mx.explain.METHODS``.
        threshold: binarisation threshold as a fraction of the map's maximum (paper: 0.15).
        iou: the IoU a box needs (paper: 0.5).
        top_k: the k of top-k error.

    Returns:
        ``{"images", "top1_loc_error", "topk_loc_error", "top1_cls_error", "topk_cls_error",
        "mean_iou" (top-1 class when right), "k", "method", "seconds"}``.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise InputError(f"top_k: expected an int >= 1, got {top_k!r}")
    start = time.perf_counter()
    adapter = adapter_of(model)
    n = loc1 = lock = cls1 = clsk = 0
    ious: list[float] = []
    for image, boxes in data:
        n += 1
        with torch.no_grad():
            logits = logits_of(call_model(adapter.model, adapter.class_inputs(adapter.load_image(image))))[0]  # (C,)
        top = logits.topk(min(top_k, logits.shape[-1])).indices.tolist()
        maps = explain_item(adapter, Item("class", image, adapter.class_names(top), classes=top), method,
                            layer=layer).maps  # (k, H, W)
        hits = []
        for rank, (c, m) in enumerate(zip(top, maps)):
            found = metrics.largest_segment_box(m, threshold=threshold)
            best = max((metrics.box_iou(found, b) for b in boxes.get(c, [])), default=0.0) if found else 0.0
            if rank == 0 and c in boxes:
                ious.append(best)
            hits.append((c in boxes, best >= iou))
        cls1 += not hits[0][0]
        clsk += not any(h[0] for h in hits)
        loc1 += not (hits[0][0] and hits[0][1])
        lock += not any(a and b for a, b in hits)
    if n == 0:
        raise InputError("data: expected at least one image, got none")
    return {"images": n, "k": top_k, "method": method, "top1_loc_error": loc1 / n, "topk_loc_error": lock / n,
            "top1_cls_error": cls1 / n, "topk_cls_error": clsk / n,
            "mean_iou": sum(ious) / len(ious) if ious else float("nan"), "seconds": time.perf_counter() - start}


def format_localization(reports: Sequence[dict[str, Any]]) -> str:
    """Markdown: one row per method."""
    from .grounding import method_label

    k = reports[0]["k"]
    lines = [f"Weakly-supervised localisation (15%-of-max segment box, IoU >= 0.5) on {reports[0]['images']} images.",
             "", f"| method | top-1 loc. error | top-{k} loc. error | top-1 cls. error | top-{k} cls. error | mean IoU (top-1 right) |",
             "|---|---|---|---|---|---|"]
    for r in reports:
        lines.append(f"| {method_label(r['method'])} | {100 * r['top1_loc_error']:.1f}% | "
                     f"{100 * r['topk_loc_error']:.1f}% | {100 * r['top1_cls_error']:.1f}% | "
                     f"{100 * r['topk_cls_error']:.1f}% | {r['mean_iou']:.3f} |")
    return "\n".join(lines)
