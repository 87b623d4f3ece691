"""VQA maps against occlusion (Grad-CAM paper, Sec. 7.1) and question-word attributions against the referring words.

The paper compares each method's map of a VQA answer with the map of occlusion
(Zeiler & Fergus: the answer's score drop when a window is hidden) by rank
correlation: Grad-CAM 0.60 +- 0.038, guided backprop 0.42 +- 0.038 on VQA val. Here
the same is computed per method on held-out ShapeWorld questions (the ground-truth
answer), Spearman rank correlation of the two (H, W) maps, mean and standard error.

Question words: ``AnswerExplanation.token_attributions`` (gradient x embedding of each
question word) should be largest on the words that name the referred object
(its colour, shape or size; "what color is the SQUARE ?"). Reported: the share of
questions whose most attributed word (by |attribution|) is such a word, beside the
chance level (the share of such words among the question's words).

Example:
    >>> import mmexplain as mx
    >>> from mmexplain.evaluation.occlusion import occlusion_agreement, format_occlusion
    >>> print(format_occlusion(occlusion_agreement(mx.zoo.load("vqa"), mx.world.split_seeds("test", 20))))  # doctest: +SKIP
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from typing import Any


from .. import metrics, world
from .grounding import method_label
from .items import Item, adapter_of, explain_item, image_size, inapplicable, split_methods
from ..errors import InputError

__all__ = ["occlusion_agreement", "format_occlusion", "PAPER"]

PAPER = {"gradcam": 0.60, "guided_backprop": 0.42}  # Grad-CAM paper, Sec. 7.1, rank correlation with occlusion


def _referring(words: list[str], scene: world.Scene, objects: list[int]) -> list[int]:
    names = {v for j in objects for v in (scene.objects[j].color, scene.objects[j].shape, scene.objects[j].size)}
    names |= {f"{s}s" for s in names}  # "diamonds"
    return [i for i, w in enumerate(words) if w in names]


def occlusion_agreement(model: Any, seeds: Sequence[int], *,
                        methods: Sequence[str] = ("gradcam", "guided", "gradcam++", "hirescam", "scorecam"),
                        layer: Any = None) -> dict[str, Any]:
    """Rank correlation of each method's answer map with the occlusion map; question-word attribution hits.

    Args:
        model: an ``mx.zoo`` VQA model or an answer adapter.
        seeds: ShapeWorld scenes; every question that refers to objects is explained.
        methods: names of ``mx.methods.METHODS`` (occlusion itself is the reference); those the
            model cannot run are left out, with their reason in ``not_applicable``.
        layer: the explained layer (default the model's).

    Returns:
        ``{"questions", "rows": {method: {"spearman", "sem"}}, "not_applicable", "word_hit",
        "word_chance", "seconds"}``.
    """
    start = time.perf_counter()
    model = adapter_of(model)
    reason = inapplicable(model, ["occlusion"]).get("occlusion")
    if reason is not None:
        raise InputError(f"model: the reference map is occlusion's, and {reason}")
    asked = [methods] if isinstance(methods, str) else list(methods)
    methods, reasons = split_methods(model, [m for m in asked if m != "occlusion"])
    size = image_size(model)
    values: dict[str, list[float]] = {m: [] for m in methods}
    hits, chance, n = 0, 0.0, 0
    for seed in seeds:
        scene = world.generate(seed, size=size)
        for qa in scene.questions:
            if not qa.objects:
                continue
            n += 1
            item = Item("answer", scene.image, [qa.answer], question=qa.question, answer=qa.answer)
            occluded = explain_item(model, item, "occlusion", layer=layer)
            reference = occluded.explanation
            for m in methods:
                r = metrics.spearman(explain_item(model, item, m, layer=layer).maps[0], occluded.maps[0])
                values[m].append(0.0 if math.isnan(r) else r)
            tokens = reference.question_tokens
            referring = _referring(tokens, scene, qa.objects)
            if reference.token_attributions is not None and referring:
                top = int(reference.token_attributions[0].abs().argmax())
                hits += top in referring
                chance += len(referring) / len(tokens)
    if n == 0:
        raise InputError("seeds: no question that refers to objects")
    rows = {m: {"spearman": statistics.fmean(v), "sem": statistics.stdev(v) / math.sqrt(len(v)) if len(v) > 1 else 0.0}
            for m, v in values.items()}
    return {"questions": n, "rows": rows, "not_applicable": reasons, "word_hit": hits / n, "word_chance": chance / n,
            "seconds": time.perf_counter() - start}


def format_occlusion(report: dict[str, Any]) -> str:
    lines = [f"Rank correlation with occlusion maps, {report['questions']} ShapeWorld questions "
             f"(ground-truth answer); {report['seconds']:.0f} s. Paper (VQA val): Grad-CAM 0.60, guided backprop 0.42.",
             "", "| method | Spearman with occlusion | s.e. |", "|---|---|---|"]
    for m, r in report["rows"].items():
        lines.append(f"| {method_label(m)} | {r['spearman']:.3f} | {r['sem']:.3f} |")
    for m, reason in report.get("not_applicable", {}).items():
        lines.append(f"| {method_label(m)} | not applicable: {reason} | |")
    lines += ["", f"Question words: the most attributed word names the referred object on "
                  f"{100 * report['word_hit']:.1f}% of questions (chance {100 * report['word_chance']:.1f}%)."]
    return "\n".join(lines)
