"""Measured grounding: do caption words and VQA answers point at the objects they name?

The Grad-CAM paper claims that even a captioner without attention localises what it
talks about. ShapeWorld knows the truth (every content word of a caption and every
question is linked to its object's pixel mask), so the claim can be measured:

* caption words: the GROUND-TRUTH caption of each held-out scene is explained
  teacher-forced (as ``mx.explain_caption(captioner, scene.image, scene.caption)``
  does), so word i's map is compared with the mask of ``scene.alignment[i]`` exactly;
  reported per word kind (size / colour / shape), for all content words, and split
  into words whose value is unique to their object in the scene and words whose value
  another object shares ("red" in a scene with two red objects names a concept that
  an attention-free explanation may rightly mark on both);
* VQA: the ground-truth answer of every question that refers to at least one object
  is explained (as ``mx.explain_answer(vqa, image, question, answer)``); the mask is
  the union of the referred objects' masks; reported per question kind.

Metrics (:mod:`mmexplain.metrics`): pointing game (map maximum inside the mask; a
uniform map scores the chance level, the mask's share of the image; also with Zhang
et al.'s tolerance, 15 px at 224 px scaled to the image, 6 px at 96 px), energy ratio
(mean inside / mean outside; uniform = 1.0), discrimination on two-object scenes
(higher mean map value on the referred object than on the other one) and
weakly-supervised localisation (15% threshold, largest segment's box, IoU >= 0.5).
Methods: Grad-CAM, Guided Grad-CAM (``|guided backprop x Grad-CAM|`` summed over the
colour channels), and the baselines uniform, centre prior (Gaussian, sigma = 1/4 of
the side) and random (i.i.d. uniform, seeded).

Speed: scenes whose captions have the same length are explained together, one
forward and one batched backward per batch (the engine treats the batch's samples
independently, so each map is exactly the one ``explain_caption`` gives); all the
questions of a batch of scenes go through the VQA model as one batch.

Command line::

    mmexplain evaluate grounding [--scenes 500] [--layer L] [--vqa-layer L] [--seed S] [--json FILE]

Example:
    >>> import mmexplain as mx
    >>> from mmexplain.evaluation.grounding import grounding_report, format_report
    >>> report = grounding_report(mx.zoo.load("captioner"), mx.zoo.load("vqa"),
    ...                           mx.world.split_seeds("test", 10))      # doctest: +SKIP
    >>> print(format_report(report))                                    # doctest: +SKIP
"""

from __future__ import annotations

import math
import statistics
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .. import metrics, world
from ..methods import GradCAM
from ..methods import GuidedBackprop
from ..targets import AnswerScore, logits_of

__all__ = ["grounding_report", "format_report", "caption_word_maps", "WordMaps", "METHODS"]

METHODS = ("gradcam", "guided", "uniform", "center", "random")
METHOD_NAMES = {"gradcam": "Grad-CAM", "guided": "Guided Grad-CAM", "uniform": "uniform",
                "center": "centre prior", "random": "random"}
WORD_KINDS = ("size", "color", "shape")
QUESTION_KINDS = ("color", "shape", "size", "count", "exist")
CENTER_SIGMA = 0.25
ZHANG_TOLERANCE = 15 / 224  # Zhang et al.'s pointing-game tolerance (15 px at 224 px), as a fraction of the side


# ----------------------------------------------------------------------------- scoring


class _Tally:
    """Per (group, method) lists of per-item metric values."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
        self.counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def add(self, groups: Iterable[str], maps: dict[str, Tensor], mask: Tensor, other: Tensor | None,
            box: tuple[int, int, int, int] | None) -> None:
        groups = list(groups)
        for g in groups:
            self.counts[g]["n"] += 1
            self.counts[g]["n_two"] += other is not None
        for method, m in maps.items():
            tolerance = round(ZHANG_TOLERANCE * max(m.shape))
            tie_aware = method == "uniform"
            values = {
                "pointing": metrics.pointing_expected(m, mask) if tie_aware else float(metrics.pointing_game(m, mask)),
                "pointing_tolerance": (metrics.pointing_expected(m, mask, tolerance=tolerance) if tie_aware
                                       else float(metrics.pointing_game(m, mask, tolerance=tolerance))),
                "energy_ratio": metrics.energy_ratio(m, mask),
                "energy_inside": metrics.energy_inside(m, mask),
            }
            if other is not None:
                values["discrimination"] = float(metrics.discrimination(m, mask, other))
            if box is not None:
                values["localization"] = float(metrics.localization(m, box))
            for g in groups:
                for key, v in values.items():
                    self.values[g][method][key].append(v)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for g, per_method in self.values.items():
            entry: dict[str, Any] = dict(self.counts[g])
            for method, per_metric in per_method.items():
                row: dict[str, float] = {}
                for key, vals in per_metric.items():
                    if key == "energy_ratio":
                        finite = [v for v in vals if math.isfinite(v)]
                        row["energy_ratio"] = statistics.fmean(finite) if finite else math.nan
                        row["energy_ratio_median"] = statistics.median(vals)
                        row["energy_ratio_infinite"] = len(vals) - len(finite)
                    else:
                        row[key] = statistics.fmean(vals)
                entry[method] = row
            out[g] = entry
        return out


class _Baselines:
    """The baseline maps of one item: uniform and centre prior (fixed), random (fresh from a seeded generator)."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.fixed: dict[tuple[int, int], dict[str, Tensor]] = {}

    def __call__(self, h: int, w: int) -> dict[str, Tensor]:
        if (h, w) not in self.fixed:
            self.fixed[(h, w)] = {"uniform": metrics.uniform_map(h, w), "center": metrics.center_prior(h, w, sigma=CENTER_SIGMA)}
        return self.fixed[(h, w)] | {"random": metrics.random_map(h, w, generator=self.generator)}


def _check_models(captioner: nn.Module, vqa: nn.Module) -> None:
    if not (isinstance(captioner, nn.Module) and all(hasattr(captioner, a) for a in ("vocab", "generate", "default_layer"))):
        raise TypeError(f"captioner: expected an mx.zoo captioner, got {type(captioner).__name__}")
    if not (isinstance(vqa, nn.Module) and all(hasattr(vqa, a) for a in ("answers", "encode_questions", "default_layer"))):
        raise TypeError(f"vqa: expected an mx.zoo VQA model, got {type(vqa).__name__}")


def _batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


# ----------------------------------------------------------------------------- captions


class _WordPerSample:
    """Target: log p(tokens[i] at positions[i]) of sample i, from sequence logits (B, L, V)."""

    def __init__(self, positions: Tensor, tokens: Tensor) -> None:
        self.positions, self.tokens = positions, tokens  # (B,), (B,)

    def __call__(self, output: Any) -> Tensor:  # (B,)
        logits = logits_of(output)  # (B, L, V)
        rows = torch.arange(logits.shape[0], device=logits.device)
        return logits[rows, self.positions].log_softmax(dim=-1)[rows, self.tokens]

    def __repr__(self) -> str:
        return f"_WordPerSample(positions={self.positions.tolist()}, tokens={self.tokens.tolist()})"


@dataclass
class WordMaps:
    """Grad-CAM maps of N words of B equal-length captions (see :func:`caption_word_maps`).

    Attributes:
        maps: (N, B, H, W) in [0, 1]; row n, sample b explains word ``words[n]`` of caption b.
        raw: (N, B, u, v) ReLU(sum_k alpha_k A^k) before upsampling.
        logits: (B, T+1, V) teacher-forced logits of the captions.
        inputs: the replicated model inputs (images (N*B, 3, H, W), tokens (N*B, T+1)).
        target: the target of those inputs (sample n*B + b: word ``words[n]`` of caption b).
    """

    maps: Tensor
    raw: Tensor
    logits: Tensor
    inputs: tuple[Tensor, Tensor]
    target: _WordPerSample


def caption_word_maps(
    captioner: nn.Module,
    images: Tensor,
    captions: Sequence[str],
    words: Sequence[int],
    *,
    layer: str | None = None,
    cam: GradCAM | None = None,
) -> WordMaps:
    """Grad-CAM of the given words of B teacher-forced captions of equal length, in one engine call.

    Word i of caption b is explained by ``log p(w_i | image_b, w_<i)`` (read at logit
    position i of the input ``[<bos>, w_1 .. w_T]``), so ``maps[n, b]`` equals
    ``explain_caption(captioner, images[b], captions[b]).maps[words[n]]``.

    The N words go through the batch axis instead of the engine's batched backward: the
    inputs are repeated N times (N*B samples, sample n*B + b explains word n of caption
    b) and one ordinary backward gives every map. Samples are independent in eval mode,
    so the maps are the same; on CPU this is several times faster for an LSTM decoder,
    whose backward has no vmap batching rule (measured in ``benchmarks/caption.py``).

    Args:
        captioner: an ``mx.zoo`` captioner.
        images: (B, 3, H, W) in [0, 1].
        captions: B captions with the same number of words.
        words: the word indices to explain (the same for every caption).
        layer: the layer (default ``captioner.default_layer``); or pass a ready ``cam``.

    Returns:
        :class:`WordMaps` with ``maps`` (N, B, H, W).
    """
    vocab = captioner.vocab
    split = [c.split() for c in captions]
    if len({len(w) for w in split}) != 1:
        raise ValueError(f"captions: expected captions of equal length, got lengths {sorted({len(w) for w in split})}")
    if not words or not all(0 <= i < len(split[0]) for i in words):
        raise ValueError(f"words: expected word indices in [0, {len(split[0])}), got {list(words)}")
    n, b = len(words), len(split)
    ids = torch.tensor([vocab.encode(w) for w in split], device=images.device)  # (B, T)
    tokens = torch.cat([torch.full((b, 1), vocab.bos, device=images.device), ids], dim=1)  # (B, T+1)
    index = torch.tensor(list(words), device=images.device)  # (N,)
    positions = index.repeat_interleave(b)  # (N*B,) word i is read at logit position i
    target = _WordPerSample(positions, ids[:, index].T.flatten())  # (N*B,) token of word n, caption b
    inputs = (images.repeat(n, 1, 1, 1), tokens.repeat(n, 1))  # (N*B, 3, H, W), (N*B, T+1)
    if cam is None:
        cam = GradCAM(captioner, layer if layer is not None else captioner.default_layer)
    res = cam(inputs, target)  # maps (N*B, H, W)
    return WordMaps(res.maps.unflatten(0, (n, b)), res.raw.unflatten(0, (n, b)), logits_of(res.output)[:b],
                    inputs, target)


def _caption_part(captioner: nn.Module, scenes: list[world.Scene], layer: str, *, guided: bool, batch_size: int,
                  baselines: _Baselines, tally: _Tally, by_correct: _Tally) -> dict[str, Any]:
    cam = GradCAM(captioner, layer)
    backprop = GuidedBackprop(captioner) if guided else None
    exact = 0
    right = total = 0
    by_length: dict[int, list[world.Scene]] = defaultdict(list)
    for scene in scenes:
        by_length[len(scene.caption.split())].append(scene)
    for _, group in sorted(by_length.items()):
        for batch in _batches(group, batch_size):
            images = torch.stack([s.image for s in batch])  # (B, 3, H, W)
            generated = captioner.generate(images)
            exact += sum(g == s.caption.split() for g, s in zip(generated, batch))
            words = sorted(batch[0].alignment)  # content-word indices: the same for equal-length captions
            res = caption_word_maps(captioner, images, [s.caption for s in batch], words, cam=cam)
            ids = res.inputs[1][:len(batch), 1:]  # (B, T)
            maps = {"gradcam": res.maps}  # (N, B, H, W)
            if backprop is not None:
                grads = backprop(res.inputs, res.target)  # (N*B, 3, H, W)
                maps["guided"] = grads.abs().sum(dim=1).unflatten(0, res.maps.shape[:2]) * res.maps  # (N, B, H, W)
            predicted = res.logits.argmax(dim=-1)[:, :-1]  # (B, T) teacher-forced prediction of each word
            h, w = images.shape[-2:]
            for b, scene in enumerate(batch):
                words_b = scene.caption.split()
                for n, i in enumerate(words):
                    j = scene.alignment[i]
                    obj = scene.objects[j]
                    kind = next(k for k, names in (("size", world.SIZES), ("color", world.COLORS), ("shape", world.SHAPES))
                                if words_b[i] in names)
                    other = scene.objects[1 - j].mask if len(scene.objects) == 2 else None
                    item = {m: v[n, b] for m, v in maps.items()} | baselines(h, w)
                    # a word whose value another object shares ("red" with two red objects) names a concept,
                    # not an instance: an attention-free explanation may rightly mark both
                    shared = any(words_b[i] in (o.size, o.color, o.shape) for k, o in enumerate(scene.objects) if k != j)
                    tally.add([kind, "all", "shared" if shared else "unique"], item, obj.mask, other, obj.box)
                    ok = bool(predicted[b, i] == ids[b, i])
                    right += ok
                    total += 1
                    by_correct.add(["right" if ok else "wrong"], {"gradcam": item["gradcam"]}, obj.mask, other, obj.box)
    return {"exact_match": exact / len(scenes), "word_accuracy": right / max(total, 1)}


# ----------------------------------------------------------------------------- VQA


def _vqa_part(vqa: nn.Module, scenes: list[world.Scene], layer: str, *, guided: bool, batch_size: int,
              baselines: _Baselines, tally: _Tally, by_correct: _Tally) -> dict[str, Any]:
    cam = GradCAM(vqa, layer)
    backprop = GuidedBackprop(vqa) if guided else None
    answers = list(vqa.answers)
    items = [(scene, qa) for scene in scenes for qa in scene.questions if qa.objects]
    right = 0
    for batch in _batches(items, batch_size):
        images = torch.stack([scene.image for scene, _ in batch])  # (B, 3, H, W)
        questions = vqa.encode_questions([qa.question for _, qa in batch])  # (B, L)
        target = AnswerScore([answers.index(qa.answer) for _, qa in batch])
        res = cam((images, questions), target)  # maps (B, H, W)
        maps = {"gradcam": res.maps}
        if backprop is not None:
            maps["guided"] = backprop((images, questions), target).abs().sum(dim=1) * res.maps  # (B, H, W)
        correct = res.output.argmax(dim=-1) == torch.as_tensor(target.index)  # (B,)
        right += int(correct.sum())
        h, w = images.shape[-2:]
        for b, (scene, qa) in enumerate(batch):
            mask = torch.zeros_like(scene.objects[0].mask)
            for j in qa.objects:
                mask |= scene.objects[j].mask
            one = len(qa.objects) == 1
            other = scene.objects[1 - qa.objects[0]].mask if one and len(scene.objects) == 2 else None
            box = scene.objects[qa.objects[0]].box if one else None
            item = {m: v[b] for m, v in maps.items()} | baselines(h, w)
            tally.add([qa.kind, "all"], item, mask, other, box)
            by_correct.add(["right" if correct[b] else "wrong"], {"gradcam": item["gradcam"]}, mask, other, box)
    return {"accuracy": right / max(len(items), 1), "questions": len(items)}


# ----------------------------------------------------------------------------- report


def grounding_report(
    captioner: nn.Module,
    vqa: nn.Module,
    seeds: Iterable[int],
    *,
    layer: str | None = None,
    vqa_layer: str | None = None,
    seed: int = 0,
    guided: bool = True,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Pointing game, energy ratio, discrimination and localisation of caption words and VQA answers.

    Args:
        captioner: an ``mx.zoo`` captioner (``forward(images, [<bos>, w1..wT]) -> (B, L, V)``).
        vqa: an ``mx.zoo`` VQA model.
        seeds: ShapeWorld seeds, e.g. ``mx.world.split_seeds("test", 500)``.
        layer: captioner layer to explain (default ``captioner.default_layer``); also the
            VQA layer unless ``vqa_layer`` is given.
        vqa_layer: VQA layer to explain (default ``layer``, else ``vqa.default_layer``).
        seed: seed of the random-map baseline.
        guided: also score Guided Grad-CAM (costs one guided backward per word / question).
        batch_size: scenes (captions) or questions (VQA) explained per engine call.

    Returns:
        A JSON-ready dict: ``caption`` (``exact_match`` of the greedy caption,
        teacher-forced ``word_accuracy``, ``groups`` by word kind, ``all``, and
        ``unique`` / ``shared`` (the word's value is / is not unique to its object),
        ``by_correct`` = Grad-CAM on words the model predicts right / wrong), ``vqa``
        (``accuracy`` on the explained questions, ``groups`` by question kind and
        ``all``, ``by_correct``), ``n_scenes``, the layers and ``seconds``. Each group holds ``n``,
        ``n_two`` (items in two-object scenes) and per method the means of
        ``pointing``, ``pointing_tolerance`` (Zhang et al.'s 15 px at 224 px, scaled), ``energy_ratio`` (over finite values; ``energy_ratio_median``,
        ``energy_ratio_infinite`` beside it), ``energy_inside``, ``discrimination``
        (two-object scenes) and ``localization`` (single-object references).
    """
    _check_models(captioner, vqa)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds: expected at least one scene seed, got none")
    cap_layer = layer if layer is not None else captioner.default_layer
    vqa_layer = vqa_layer if vqa_layer is not None else layer if layer is not None else vqa.default_layer
    start = time.perf_counter()
    sizes = {getattr(getattr(m, "config", None), "image_size", 96) for m in (captioner, vqa)}
    if len(sizes) != 1:
        raise ValueError(f"captioner and vqa take different image sizes {sorted(sizes)}; expected one")
    size = sizes.pop()
    scenes = [world.generate(s, size=size) for s in seeds]
    baselines = _Baselines(seed)
    caption_tally, correct_tally, vqa_tally, vqa_correct = _Tally(), _Tally(), _Tally(), _Tally()
    caption = _caption_part(captioner, scenes, cap_layer, guided=guided, batch_size=batch_size,
                            baselines=baselines, tally=caption_tally, by_correct=correct_tally)
    caption_seconds = time.perf_counter() - start
    answer = _vqa_part(vqa, scenes, vqa_layer, guided=guided, batch_size=batch_size, baselines=baselines,
                       tally=vqa_tally, by_correct=vqa_correct)
    caption["groups"] = caption_tally.summary()
    caption["by_correct"] = correct_tally.summary()
    answer["groups"] = vqa_tally.summary()
    answer["by_correct"] = vqa_correct.summary()
    return {
        "n_scenes": len(scenes),
        "layer": cap_layer,
        "vqa_layer": vqa_layer,
        "methods": [m for m in METHODS if guided or m != "guided"],
        "caption": caption,
        "vqa": answer,
        "seconds": time.perf_counter() - start,
        "caption_seconds": caption_seconds,
    }


def _fmt(row: dict[str, float] | None, key: str, percent: bool) -> str:
    if row is None or key not in row or (isinstance(row[key], float) and math.isnan(row[key])):
        return "-"
    return f"{100 * row[key]:.1f}%" if percent else f"{row[key]:.2f}"


METRIC_COLUMNS = (("pointing", "pointing game", True),
                  ("pointing_tolerance", "pointing game, 15/224-of-the-side tolerance (Zhang et al.)", True),
                  ("energy_ratio", "energy ratio", False),
                  ("discrimination", "discrimination (2-object scenes)", True),
                  ("localization", "localisation (IoU >= 0.5)", True))


def _table(title: str, groups: dict[str, Any], order: Sequence[str], methods: Sequence[str]) -> list[str]:
    """One small table per metric: rows = methods, columns = groups."""
    present = [g for g in order if g in groups]
    lines = [f"## {title}", ""]
    lines.append("items: " + ", ".join(f"{g} {groups[g]['n']} ({groups[g]['n_two']} in 2-object scenes)" for g in present))
    for key, name, percent in METRIC_COLUMNS:
        lines += ["", f"{name}:", "", "| method | " + " | ".join(present) + " |", "|---|" + "---|" * len(present)]
        for m in methods:
            lines.append(f"| {METHOD_NAMES[m]} | " + " | ".join(_fmt(groups[g].get(m), key, percent) for g in present) + " |")
    return lines


def format_report(report: dict[str, Any]) -> str:
    """The report as Markdown tables (caption words, caption words by correctness, VQA)."""
    methods = report["methods"]
    cap, vqa = report["caption"], report["vqa"]
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
    lines += _table("Caption content words (ground-truth caption, teacher-forced); unique / shared: the word's value "
                    "is / is not unique to its object in the scene", cap["groups"], (*WORD_KINDS, "all", "unique", "shared"),
                    methods)
    lines += [""]
    lines += _table("Caption words the model predicts right / wrong (teacher-forced argmax), Grad-CAM",
                    cap["by_correct"], ("right", "wrong"), ["gradcam"])
    lines += [""]
    lines += _table("VQA questions that refer to objects (ground-truth answer)", vqa["groups"], (*QUESTION_KINDS, "all"), methods)
    lines += [""]
    lines += _table("VQA questions the model answers right / wrong, Grad-CAM", vqa["by_correct"], ("right", "wrong"),
                    ["gradcam"])
    return "\n".join(lines)
