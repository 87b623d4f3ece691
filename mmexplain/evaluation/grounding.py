"""Measured grounding: do caption words, VQA answers and class maps point at the objects they name?

The Grad-CAM paper claims that even a captioner without attention localises what it
talks about. ShapeWorld knows the truth (every content word of a caption and every
question is linked to its object's pixel mask), so the claim can be measured, for any
model and any method of ``mx.explain.METHODS``:

* caption words: the GROUND-TRUTH caption of each held-out scene is explained
  teacher-forced (``mx.explain_caption(model, scene.image, scene.caption, method=M)``),
  so word i's map is compared with the mask of ``scene.alignment[i]`` exactly; reported
  per word kind (size / colour / shape), for all content words, and split into words
  whose value is unique to their object in the scene and words whose value another
  object shares ("red" in a scene with two red objects names a concept that an
  attention-free explanation may rightly mark on both);
* VQA: the ground-truth answer of every question that refers to at least one object
  (``mx.explain_answer(model, image, question, answer, method=M)``); the mask is the
  union of the referred objects' masks; reported per question kind;
* classes: the map of each present class ("red circle") against the union of its
  objects (``mx.explain_class``).

Metrics (:mod:`mmexplain.evaluation.scoring`): pointing game (uniform map: the chance
level, the mask's share of the image; also with Zhang et al.'s tolerance), energy ratio
(mean inside / mean outside; uniform = 1.0), discrimination on two-object scenes and
weakly-supervised localisation (15% threshold, largest segment's box, IoU >= 0.5).
Guided Grad-CAM is scored as ``|guided backprop x Grad-CAM|`` summed over the colour
channels; the baselines are uniform, a centre prior and a seeded random map.

Every item goes through the public explainers, one call per scene (caption) or
question (VQA), so a model's numbers are exactly what ``explain_*`` shows a user.

Example:
    >>> import mmexplain as mx
    >>> from mmexplain.evaluation.grounding import grounding_report, format_report
    >>> report = grounding_report(mx.zoo.load("captioner"), mx.zoo.load("vqa"),
    ...                           mx.world.split_seeds("test", 10))      # doctest: +SKIP
    >>> print(format_report(report))                                    # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .. import world
from ..adapters import as_answer_adapter, as_caption_adapter
from ..explain import METHODS as EXPLAIN_METHODS
from ..explain import explain_answer, explain_caption, explain_class
from ..methods import call_model
from ..targets import logits_of
from .scoring import BASELINES, Baselines, Tally, fmt, metric_tables

__all__ = ["grounding_report", "format_report", "leaderboard", "format_leaderboard", "applicable_methods",
           "kind_of", "METHOD_NAMES", "WORD_KINDS", "QUESTION_KINDS"]

WORD_KINDS = ("size", "color", "shape")
QUESTION_KINDS = ("color", "shape", "size", "count", "exist")
METHOD_NAMES = {
    "gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "xgradcam": "XGrad-CAM", "hirescam": "HiResCAM",
    "layercam": "LayerCAM", "eigengradcam": "Eigen-Grad-CAM", "scorecam": "Score-CAM", "ablationcam": "Ablation-CAM",
    "eigencam": "Eigen-CAM", "occlusion": "Occlusion", "guided": "Guided Grad-CAM", "relevancy": "Relevancy",
    "uniform": "uniform", "center": "centre prior", "random": "random",
}
_RELU_LIKE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh)


# ----------------------------------------------------------------------------- models and methods


def kind_of(model: Any) -> str:
    """``"caption"``, ``"answer"`` or ``"class"``: which explainer drives ``model``."""
    if isinstance(model, nn.Module) and hasattr(model, "classes") and hasattr(model, "preprocess"):
        return "class"
    for kind, resolve in (("caption", as_caption_adapter), ("answer", as_answer_adapter)):
        try:
            resolve(model)
            return kind
        except TypeError:
            continue
    raise TypeError(f"model: expected an mx.zoo model or an mx.hf adapter, got {type(model).__name__}")


def _module(model: Any) -> nn.Module:
    return model if isinstance(model, nn.Module) else model.model


def applicable_methods(model: Any, methods: Iterable[str]) -> list[str]:
    """The methods of ``methods`` that are defined for ``model``.

    Relevancy needs transformers attention (``mx.hf`` adapters); Guided Grad-CAM needs
    ReLU-like units (its rule is undefined for GELU/SiLU networks).
    """
    module = _module(model)
    is_zoo = isinstance(model, nn.Module)
    has_relu = any(isinstance(m, _RELU_LIKE) for m in module.modules())
    out = []
    for m in methods:
        if m == "relevancy" and is_zoo:
            continue
        if m == "guided" and not has_relu:
            continue
        out.append(m)
    return out


def _check_methods(methods: Sequence[str] | str) -> list[str]:
    if methods == "all":
        return list(EXPLAIN_METHODS)
    if isinstance(methods, str) or not methods:
        raise ValueError(f"methods: expected 'all' or a non-empty list of names, got {methods!r}")
    bad = [m for m in methods if m not in EXPLAIN_METHODS]
    if bad:
        raise ValueError(f"methods: unknown {', '.join(map(repr, bad))}; expected names of: {', '.join(EXPLAIN_METHODS)}")
    return list(dict.fromkeys(methods))


def image_size(model: Any) -> int:
    """The side of the maps an explainer gives for ``model`` (scenes are drawn at that size)."""
    config = getattr(model, "config", None)
    if isinstance(model, nn.Module) and hasattr(config, "image_size"):
        return int(config.image_size)
    adapter = as_caption_adapter(model) if kind_of(model) == "caption" else as_answer_adapter(model)
    shown = adapter.display_image(adapter.load_image(torch.full((3, 96, 96), 0.5)))  # (3, H, W)
    if shown.shape[-1] != shown.shape[-2]:
        raise ValueError(f"model: its images are {tuple(shown.shape[-2:])}; grounding needs square maps")
    return int(shown.shape[-1])


def _maps(explanation: Any, method: str, field: str) -> Tensor:
    """(k, H, W) maps of an explanation; Guided Grad-CAM as |guided x map| summed over channels."""
    if method == "guided":
        return explanation.guided.abs().sum(dim=-3)
    return getattr(explanation, field)


def _mask_of(scene: world.Scene, objects: Sequence[int]) -> Tensor:
    mask = torch.zeros_like(scene.objects[0].mask)
    for j in objects:
        mask |= scene.objects[j].mask
    return mask


# ----------------------------------------------------------------------------- one model


class _Run:
    """Tallies of one model over scenes: the items' groups, every method's maps, seconds per method."""

    def __init__(self, methods: list[str], baselines: Baselines) -> None:
        self.methods, self.baselines = methods, baselines
        self.tally, self.by_correct = Tally(), Tally()
        self.seconds: dict[str, float] = defaultdict(float)
        self.items = 0
        self.stats: dict[str, int] = defaultdict(int)

    def explain(self, method: str, fn: Any) -> Any:
        start = time.perf_counter()
        out = fn(method)
        self.seconds[method] += time.perf_counter() - start
        return out

    def add(self, groups: list[str], maps: dict[str, Tensor], mask: Tensor, other: Tensor | None,
            box: Any, correct: bool | None) -> None:
        h, w = mask.shape
        self.items += 1
        self.tally.count(groups, two_objects=other is not None)
        self.tally.add(groups, maps | self.baselines(h, w), mask, other, box)
        if correct is not None:
            first = self.methods[0]
            self.by_correct.count(["right" if correct else "wrong"], two_objects=other is not None)
            self.by_correct.add(["right" if correct else "wrong"], {first: maps[first]}, mask, other, box)

    def result(self) -> dict[str, Any]:
        return {"groups": self.tally.summary(), "by_correct": self.by_correct.summary(), "items": self.items,
                "seconds_per_item": {m: self.seconds[m] / max(self.items, 1) for m in self.methods}}


def _captions(model: Any, scenes: list[world.Scene], run: _Run, layer: Any) -> dict[str, Any]:
    adapter = as_caption_adapter(model)
    exact = right = total = 0
    for scene in scenes:
        words = scene.caption.split()
        pixels = adapter.load_image(scene.image)
        exact += adapter.generate(pixels) == words
        maps = {m: _maps(run.explain(m, lambda m: explain_caption(adapter, scene.image, scene.caption, layer=layer,
                                                                  method=m)), m, "maps") for m in run.methods}
        with torch.no_grad():  # teacher-forced argmax of each word
            inputs, spans = adapter.teacher_forced(pixels, words)
            logits = logits_of(call_model(adapter.model, inputs))[0]  # (L, V)
        for i, j in sorted(scene.alignment.items()):
            positions, tokens = spans[i]
            ok = all(int(logits[p].argmax()) == t for p, t in zip(positions, tokens))
            right, total = right + ok, total + 1
            obj = scene.objects[j]
            kind = next(k for k, names in zip(WORD_KINDS, (world.SIZES, world.COLORS, world.SHAPES)) if words[i] in names)
            shared = any(words[i] in (o.size, o.color, o.shape) for k, o in enumerate(scene.objects) if k != j)
            other = scene.objects[1 - j].mask if len(scene.objects) == 2 else None
            run.add([kind, "all", "shared" if shared else "unique"], {m: v[i] for m, v in maps.items()},
                    obj.mask, other, obj.box, ok)
    return run.result() | {"exact_match": exact / len(scenes), "word_accuracy": right / max(total, 1)}


def _answers(model: Any, scenes: list[world.Scene], run: _Run, layer: Any) -> dict[str, Any]:
    adapter = as_answer_adapter(model)
    right = 0
    for scene in scenes:
        for qa in scene.questions:
            if not qa.objects:
                continue
            predicted = explain_answer(adapter, scene.image, qa.question, layer=layer).answer
            right += predicted == qa.answer
            maps = {m: _maps(run.explain(m, lambda m: explain_answer(adapter, scene.image, qa.question, qa.answer,
                                                                     layer=layer, method=m)), m, "maps")[0]
                    for m in run.methods}
            one = len(qa.objects) == 1
            other = scene.objects[1 - qa.objects[0]].mask if one and len(scene.objects) == 2 else None
            box = scene.objects[qa.objects[0]].box if one else None
            run.add([qa.kind, "all"], maps, _mask_of(scene, qa.objects), other, box, predicted == qa.answer)
    return run.result() | {"accuracy": right / max(run.items, 1), "questions": run.items}


def _classes(model: nn.Module, scenes: list[world.Scene], run: _Run, layer: Any) -> dict[str, Any]:
    for scene in scenes:
        names = [f"{o.color} {o.shape}" for o in scene.objects]
        present = list(dict.fromkeys(names))
        maps = {m: _maps(run.explain(m, lambda m: explain_class(model, scene.image, present, layer=layer, method=m)),
                         m, "maps") for m in run.methods}
        for c, name in enumerate(present):
            objects = [j for j, n in enumerate(names) if n == name]
            others = [j for j, n in enumerate(names) if n != name]
            other = scene.objects[others[0]].mask if len(scene.objects) == 2 and others else None
            box = scene.objects[objects[0]].box if len(objects) == 1 else None
            run.add(["all", "unique" if len(objects) == 1 else "shared"], {m: v[c] for m, v in maps.items()},
                    _mask_of(scene, objects), other, box, None)
    return run.result()


_PARTS = {"caption": _captions, "answer": _answers, "class": _classes}


def _evaluate(model: Any, seeds: list[int], methods: list[str], *, layer: Any, seed: int) -> dict[str, Any]:
    size = image_size(model)
    scenes = [world.generate(s, size=size) for s in seeds]
    run = _Run(methods, Baselines(seed))
    return _PARTS[kind_of(model)](model, scenes, run, layer)


def _check_seeds(seeds: Iterable[int]) -> list[int]:
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds: expected at least one scene seed, got none")
    return seeds


# ----------------------------------------------------------------------------- reports


def grounding_report(
    captioner: Any,
    vqa: Any,
    seeds: Iterable[int],
    *,
    methods: Sequence[str] | str = ("gradcam", "guided"),
    layer: str | None = None,
    vqa_layer: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Pointing game, energy ratio, discrimination and localisation of caption words and VQA answers.

    Args:
        captioner: an ``mx.zoo`` captioner or a caption adapter (``mx.hf``).
        vqa: an ``mx.zoo`` VQA model or an answer adapter.
        seeds: ShapeWorld seeds, e.g. ``mx.world.split_seeds("test", 500)``.
        methods: names of ``mx.explain.METHODS`` (or ``"all"``); those a model does not
            support (see :func:`applicable_methods`) are left out for it.
        layer: captioner layer (default its adapter's); also the VQA layer unless
            ``vqa_layer`` is given.
        seed: seed of the random-map baseline.

    Returns:
        A JSON-ready dict: ``caption`` (``exact_match`` of the greedy caption,
        teacher-forced ``word_accuracy``, ``groups`` by word kind, ``all``, ``unique`` /
        ``shared``, ``by_correct``: the first method on words the model predicts right /
        wrong, ``seconds_per_item`` per method), ``vqa`` (``accuracy``, ``questions``,
        ``groups`` by question kind and ``all``, ``by_correct``, ``seconds_per_item``),
        ``n_scenes``, the layers, ``methods`` (with the baselines) and ``seconds``. Each
        group holds ``n``, ``n_two`` and per method the means of ``pointing``,
        ``pointing_tolerance``, ``energy_ratio`` (finite values; median and count of
        infinite ones beside it), ``energy_inside``, ``discrimination`` and ``localization``.
    """
    if kind_of(captioner) != "caption":
        raise TypeError(f"captioner: expected a captioner, got {type(captioner).__name__}")
    if kind_of(vqa) != "answer":
        raise TypeError(f"vqa: expected a VQA model, got {type(vqa).__name__}")
    chosen = _check_methods(methods)
    seeds = _check_seeds(seeds)
    start = time.perf_counter()
    cap_methods = applicable_methods(captioner, chosen)
    vqa_methods = applicable_methods(vqa, chosen)
    vqa_layer = vqa_layer if vqa_layer is not None else layer
    caption = _evaluate(captioner, seeds, cap_methods, layer=layer, seed=seed)
    caption_seconds = time.perf_counter() - start
    answer = _evaluate(vqa, seeds, vqa_methods, layer=vqa_layer, seed=seed)
    return {
        "n_scenes": len(seeds),
        "layer": layer if layer is not None else as_caption_adapter(captioner).default_layer,
        "vqa_layer": vqa_layer if vqa_layer is not None else as_answer_adapter(vqa).default_layer,
        "methods": [m for m in chosen if m in cap_methods or m in vqa_methods] + list(BASELINES),
        "caption": caption,
        "vqa": answer,
        "seconds": time.perf_counter() - start,
        "caption_seconds": caption_seconds,
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as Markdown tables (caption words, caption words by correctness, VQA)."""
    methods = report["methods"]
    cap, vqa = report["caption"], report["vqa"]
    first = methods[0]
    lines = [
        f"Grounding on {report['n_scenes']} held-out ShapeWorld scenes (layer {report['layer']}, "
        f"VQA layer {report['vqa_layer']}); {report['seconds']:.0f} s.",
        f"Captioner: greedy caption exact match {100 * cap['exact_match']:.1f}%, teacher-forced word accuracy "
        f"{100 * cap['word_accuracy']:.1f}%. VQA: accuracy {100 * vqa['accuracy']:.1f}% on {vqa['questions']} "
        "questions that refer to objects.",
        "Pointing: map maximum inside the object (uniform: chance = the mask's share of the image). Energy ratio: "
        "mean inside / mean outside. Discrimination: higher mean on the referred object than on the other one "
        "(two-object scenes). Localisation: 15%-of-max segment box IoU >= 0.5.",
        "",
    ]
    lines += metric_tables("Caption content words (ground-truth caption, teacher-forced); unique / shared: the word's "
                           "value is / is not unique to its object in the scene", cap["groups"],
                           (*WORD_KINDS, "all", "unique", "shared"), methods, METHOD_NAMES)
    lines += [""]
    lines += metric_tables(f"Caption words the model predicts right / wrong (teacher-forced argmax), {METHOD_NAMES[first]}",
                           cap["by_correct"], ("right", "wrong"), [first], METHOD_NAMES)
    lines += [""]
    lines += metric_tables("VQA questions that refer to objects (ground-truth answer)", vqa["groups"],
                           (*QUESTION_KINDS, "all"), methods, METHOD_NAMES)
    lines += [""]
    lines += metric_tables(f"VQA questions the model answers right / wrong, {METHOD_NAMES[first]}", vqa["by_correct"],
                           ("right", "wrong"), [first], METHOD_NAMES)
    return "\n".join(lines)


def leaderboard(models: Mapping[str, Any], seeds: Iterable[int], *, methods: Sequence[str] | str = "all",
                seed: int = 0) -> dict[str, Any]:
    """Every applicable method on every model, side by side: one row per (model, method).

    Args:
        models: display name -> an ``mx.zoo`` model or an ``mx.hf`` adapter (captioner,
            VQA model or classifier).
        seeds: ShapeWorld seeds.
        methods: names of ``mx.explain.METHODS``, or ``"all"``.
        seed: seed of the random-map baseline.

    Returns:
        ``{"n_scenes", "rows": [{"model", "kind", "method", "n", "pointing", "pointing_unique",
        "energy_ratio", "discrimination", "seconds_per_item"}, ...], "seconds"}``; baseline
        rows have no seconds.
    """
    if not isinstance(models, Mapping) or not models:
        raise ValueError("models: expected a non-empty mapping name -> model")
    chosen = _check_methods(methods)
    seeds = _check_seeds(seeds)
    start = time.perf_counter()
    rows = []
    for name, model in models.items():
        usable = applicable_methods(model, chosen)
        result = _evaluate(model, seeds, usable, layer=None, seed=seed)
        groups = result["groups"]
        for m in [*usable, *BASELINES]:
            row_all, row_unique = groups["all"].get(m, {}), groups.get("unique", {}).get(m, {})
            rows.append({
                "model": name, "kind": kind_of(model), "method": m, "n": groups["all"]["n"],
                "pointing": row_all.get("pointing"), "pointing_unique": row_unique.get("pointing"),
                "energy_ratio": row_all.get("energy_ratio"), "discrimination": row_all.get("discrimination"),
                "seconds_per_item": result["seconds_per_item"].get(m),
            })
    return {"n_scenes": len(seeds), "rows": rows, "seconds": time.perf_counter() - start}


def format_leaderboard(report: dict[str, Any]) -> str:
    """The leaderboard as one Markdown table."""
    lines = [
        f"Grounding leaderboard on {report['n_scenes']} held-out ShapeWorld scenes; {report['seconds']:.0f} s. "
        "Pointing: map maximum inside the referred object; unique: words whose value no other object shares "
        "(classes: one object of the class); energy ratio: mean inside / outside; discrimination: two-object scenes.",
        "",
        "| model | items | method | pointing | pointing, unique | energy ratio | discrimination | s / item |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        secs = "-" if r["seconds_per_item"] is None else f"{r['seconds_per_item']:.3f}"
        lines.append(
            f"| {r['model']} | {r['n']} | {METHOD_NAMES.get(r['method'], r['method'])} | "
            f"{fmt(r, 'pointing', True)} | {fmt(r, 'pointing_unique', True)} | {fmt(r, 'energy_ratio', False)} | "
            f"{fmt(r, 'discrimination', True)} | {secs} |"
        )
    return "\n".join(lines)
