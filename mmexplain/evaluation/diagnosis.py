"""Diagnosing models with their maps (Grad-CAM paper, Sec. 6): adversarial images and dataset bias.

* Adversarial (Sec. 6.2): a projected-gradient attack (Madry et al. 2018; L-infinity ball
  of radius ``eps``, steps of ``alpha`` along the gradient's sign, projected back, pixels
  kept in [0, 1]) lowers the original class until the classifier no longer ranks it
  first. Grad-CAM of the ORIGINAL class on the attacked image still points at the
  object: the pointing game before and after.
* Dataset bias (Sec. 6.3): a classifier trained on a biased ShapeWorld (every circle
  red) never sees a colour that is not red on a circle. Two decoy tests tell whether a
  class rests on one attribute: "red circle" on scenes with a red non-circle (and no
  circle) -- colour decoys -- and on scenes with a non-red circle (and nothing red) --
  shape decoys: the class probability, the share of maps whose maximum lies on the
  decoy, and the energy ratio on it, for the biased and the unbiased model.

Example:
    >>> import mmexplain as mx
    >>> from mmexplain.evaluation.diagnosis import adversarial_pointing
    >>> adversarial_pointing(mx.zoo.load("classifier"), mx.world.split_seeds("test", 10))  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .. import metrics, world
from ..methods import call_model
from ..targets import ClassLogit, logits_of
from .items import Item, adapter_of, explain_item, image_size
from ..errors import InputError

__all__ = ["pgd_attack", "adversarial_pointing", "bias_evidence", "format_bias", "format_adversarial", "failure_modes",
           "format_failures"]


def pgd_attack(model_fn: Callable[[Tensor], Tensor], images: Tensor, target: Tensor | int, *, eps: float = 8 / 255,
               alpha: float = 2 / 255, steps: int = 20, stop_when_flipped: bool = True) -> Tensor:
    """L-infinity PGD that lowers the logit margin of ``target`` (untargeted): plain torch, the model untouched.

    Each step: x <- clip_[0,1](Pi_{||x - x0|| <= eps}(x + alpha sign(grad_x L))), with
    L = max_{j != y} z_j - z_y (the margin of the best other class over the target).

    Args:
        model_fn: ``images (B, C, H, W) -> logits (B, K)``.
        images: (B, C, H, W) in [0, 1].
        target: (B,) class indices (or one int for all).
        eps: radius of the L-infinity ball.
        alpha: step size.
        steps: at most this many steps.
        stop_when_flipped: stop as soon as no image ranks ``target`` first.

    Returns:
        (B, C, H, W) adversarial images, detached.
    """
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise InputError(f"images: expected a (B, C, H, W) tensor, got {getattr(images, 'shape', type(images).__name__)}")
    for name, value in (("eps", eps), ("alpha", alpha)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise InputError(f"{name}: expected a number in (0, 1] (pixels are in [0, 1]), got {value!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps: expected an int >= 1, got {steps!r}")
    y = torch.as_tensor(target, device=images.device).long().expand(images.shape[0])  # (B,)
    original = images.detach()
    x = original.clone()
    for _ in range(steps):
        x.requires_grad_(True)
        logits = model_fn(x)  # (B, K)
        if stop_when_flipped and bool((logits.argmax(dim=-1) != y).all()):
            break
        own = logits.gather(1, y[:, None])[:, 0]  # (B,)
        other = logits.masked_fill(torch.nn.functional.one_hot(y, logits.shape[-1]).bool(), float("-inf")).amax(dim=-1)
        (grad,) = torch.autograd.grad((other - own).sum(), x)
        with torch.no_grad():
            x = x + alpha * grad.sign()
            x = (original + (x - original).clamp(-eps, eps)).clamp(0, 1)
    return x.detach()


def _class_mask(scene: world.Scene, name: str) -> Tensor | None:
    masks = [o.mask for o in scene.objects if f"{o.color} {o.shape}" == name]
    if not masks:
        return None
    out = torch.zeros_like(masks[0])
    for m in masks:
        out |= m
    return out


def adversarial_pointing(model: Any, seeds: Sequence[int], *, eps: float = 8 / 255, alpha: float = 2 / 255,
                         steps: int = 20, method: str = "gradcam") -> dict[str, Any]:
    """PGD-attack the classifier's top class on each scene; pointing of that class's map before and after.

    The attack works on the pixels the classifier reads (its adapter's ``load_image``), in [0, 1]
    for the zoo classifier.

    Returns:
        ``{"scenes", "flipped" (share no longer ranked first), "pointing_before",
        "pointing_after" (over the flipped scenes; None when none flipped), "max_change" (L-inf of the
        perturbation), "seconds"}``.
    """
    for name, value in (("eps", eps), ("alpha", alpha)):  # checked before any scene is attacked
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise InputError(f"{name}: expected a number in (0, 1] (pixels are in [0, 1]), got {value!r}")
    start = time.perf_counter()
    adapter = adapter_of(model)
    size = image_size(adapter)

    def logits(x: Tensor) -> Tensor:  # (B, 3, H, W) -> (B, C)
        return logits_of(call_model(adapter.model, adapter.class_inputs(x)))

    def class_map(x: Tensor, top: int) -> Tensor:  # (3, H, W) -> (H, W)
        return explain_item(adapter, Item("class", x, adapter.class_names([top]), classes=[top]), method).maps[0]

    flipped = before = after = scored = 0
    change = 0.0
    for seed in seeds:
        scene = world.generate(seed, size=size)
        pixels = adapter.load_image(scene.image)  # (1, 3, H, W)
        with torch.no_grad():
            top = int(logits(pixels).argmax())
        mask = _class_mask(scene, adapter.class_names([top])[0])
        if mask is None:
            continue
        scored += 1
        adversarial = pgd_attack(logits, pixels, top, eps=eps, alpha=alpha, steps=steps)
        change = max(change, float((adversarial - pixels).abs().max()))
        with torch.no_grad():
            now = int(logits(adversarial).argmax())
        if now == top:
            continue
        flipped += 1
        before += metrics.pointing_game(class_map(pixels[0], top), mask)
        after += metrics.pointing_game(class_map(adversarial[0], top), mask)
    if scored == 0:
        raise InputError("seeds: no scene whose top class is present to attack")
    return {"scenes": scored, "flipped": flipped / scored, "pointing_before": before / flipped if flipped else None,
            "pointing_after": after / flipped if flipped else None, "eps": eps, "max_change": change,
            "seconds": time.perf_counter() - start}


def format_adversarial(report: dict[str, Any]) -> str:
    if report["pointing_before"] is None:
        return (f"PGD (L-inf eps {report['eps']:.4f}) flips the top class on none of {report['scenes']} scenes; "
                "no attacked scene to compare Grad-CAM on.")
    return (f"PGD (L-inf eps {report['eps']:.4f}) flips the top class on {100 * report['flipped']:.0f}% of "
            f"{report['scenes']} scenes; Grad-CAM of the original class points at its object on "
            f"{100 * report['pointing_before']:.0f}% before and {100 * report['pointing_after']:.0f}% after the attack.")


def bias_evidence(models: dict[str, Any], seeds: Sequence[int], *, shape: str = "circle", color: str = "red",
                  decoy: str = "color", method: str = "gradcam") -> dict[str, Any]:
    """Evidence for ``"<color> <shape>"`` on scenes that hold a decoy and no real ``"<color> <shape>"``.

    Args:
        models: display name -> classifier (e.g. ``{"unbiased": ..., "biased": ...}``).
        seeds: candidate scenes (test split); those without a decoy are skipped.
        decoy: ``"color"``: the decoys are ``color`` objects of another shape, in scenes
            without any ``shape`` (does the class sit on the colour?); ``"shape"``: the
            decoys are ``shape`` objects of another colour, in scenes without any
            ``color`` object (does the class sit on the shape alone?).

    Returns:
        ``{"scenes", "rows": {name: {"probability": mean probability of the class (the zoo
        classifier's: the sigmoid of its logit),
        "pointing": share of maps whose maximum lies on a decoy (a ``color`` non-``shape``),
        "energy_ratio": mean inside the decoys / outside}}}``.
    """
    if decoy not in ("color", "shape"):
        raise InputError(f"decoy: expected 'color' or 'shape', got {decoy!r}")
    name = f"{color} {shape}"
    scenes = []
    for seed in seeds:
        scene = world.generate(seed)
        if decoy == "color":
            decoys = [o for o in scene.objects if o.color == color and o.shape != shape]
            clean = not any(o.shape == shape for o in scene.objects)
        else:
            decoys = [o for o in scene.objects if o.shape == shape and o.color != color]
            clean = not any(o.color == color for o in scene.objects)
        if decoys and clean:
            mask = torch.zeros_like(decoys[0].mask)
            for o in decoys:
                mask |= o.mask
            scenes.append((scene, mask))
    if not scenes:
        raise InputError(f"seeds: no scene with a {decoy} decoy for {name!r}")
    rows = {}
    for label, model in models.items():
        adapter = adapter_of(model)
        c = adapter.class_index(name)
        probs, points, ratios = [], [], []
        for scene, mask in scenes:
            got = explain_item(adapter, Item("class", scene.image, [name], classes=[c]), method)
            probs.append(float(adapter.probability_of(got.explanation.result.output, ClassLogit(c))[0]))
            points.append(float(metrics.pointing_game(got.maps[0], mask)))
            r = metrics.energy_ratio(got.maps[0], mask)
            ratios.append(min(r, 1e3))
        rows[label] = {"probability": sum(probs) / len(probs), "pointing": sum(points) / len(points),
                       "energy_ratio": sum(ratios) / len(ratios)}
    return {"scenes": len(scenes), "class": name, "decoy": decoy, "rows": rows}


def format_bias(report: dict[str, Any]) -> str:
    color, shape = report["class"].split()
    what = (f"a {color} object of another shape, and no {shape}" if report["decoy"] == "color"
            else f"a {shape} of another colour, and no {color} object")
    lines = [f"Evidence for {report['class']!r} on {report['scenes']} test scenes that hold a decoy ({what}):", "",
             "| model | mean P(class) | map maximum on the decoy | energy ratio on the decoy |", "|---|---|---|---|"]
    for label, r in report["rows"].items():
        lines.append(f"| {label} | {r['probability']:.3f} | {100 * r['pointing']:.1f}% | {r['energy_ratio']:.2f} |")
    return "\n".join(lines)


def failure_modes(vqa: Any, seeds: Sequence[int], *, method: str = "gradcam", keep: int = 6) -> dict[str, Any]:
    """Where the evidence sits when a VQA model answers wrong (paper Sec. 6.1), summarised over ``seeds``.

    For every question that refers to objects and that the model gets wrong, the maps of the
    predicted and of the right answer are computed side by side; each is scored with the
    pointing game on the referred objects, and the two maps are compared (Spearman).

    Args:
        vqa: an ``mx.zoo`` VQA model or an answer adapter.
        seeds: ShapeWorld scene seeds (e.g. a test split).
        method: a name of ``mx.explain.METHODS``.
        keep: how many failures keep their maps (for a figure: ``cases``).

    Returns:
        ``{"questions", "wrong", "pointing_predicted", "pointing_right", "spearman", "by_kind":
        {kind: [wrong, questions]}, "cases": [{question, predicted, right, maps (2, H, W), image}]}``;
        the pointing and Spearman values are None when no answer is wrong.
    """
    vqa = adapter_of(vqa)
    size = image_size(vqa)
    asked = wrong = 0
    hits_pred: list[float] = []
    hits_right: list[float] = []
    rhos: list[float] = []
    by_kind: dict[str, list[int]] = {}
    cases: list[dict[str, Any]] = []
    for seed in seeds:
        scene = world.generate(seed, size=size)
        for qa in scene.questions:
            if not qa.objects:
                continue
            asked += 1
            counts = by_kind.setdefault(qa.kind, [0, 0])
            counts[1] += 1
            predicted = explain_item(vqa, Item("answer", scene.image, [], question=qa.question), method)
            if predicted.labels[0] == qa.answer:
                continue
            wrong += 1
            counts[0] += 1
            right = explain_item(vqa, Item("answer", scene.image, [qa.answer], question=qa.question, answer=qa.answer),
                                 method)
            mask = torch.zeros_like(scene.objects[0].mask)
            for j in qa.objects:
                mask |= scene.objects[j].mask
            hits_pred.append(float(metrics.pointing_game(predicted.maps[0], mask)))
            hits_right.append(float(metrics.pointing_game(right.maps[0], mask)))
            rhos.append(metrics.spearman(predicted.maps[0], right.maps[0]))
            if len(cases) < keep:
                cases.append({"question": qa.question, "predicted": predicted.labels[0], "right": qa.answer,
                              "maps": torch.stack([predicted.maps[0], right.maps[0]]), "image": scene.image})
    mean = (lambda v: sum(v) / len(v) if v else None)  # None: no wrong answer to score
    return {"questions": asked, "wrong": wrong, "method": method, "pointing_predicted": mean(hits_pred),
            "pointing_right": mean(hits_right), "spearman": mean(rhos), "by_kind": by_kind, "cases": cases}


def format_failures(report: dict[str, Any]) -> str:
    """The failure-mode summary as Markdown."""
    kinds = ", ".join(f"{k} {w}/{n}" for k, (w, n) in sorted(report["by_kind"].items()))
    if not report["wrong"]:
        return (f"## Failure modes ({report['method']}): no wrong answers among {report['questions']} questions"
                + (f" ({kinds})" if kinds else "") + "; nothing to compare")
    return "\n".join([
        f"## Failure modes ({report['method']}): {report['wrong']} wrong answers of {report['questions']} questions "
        f"({kinds})",
        "",
        "| map | pointing at the referred objects |",
        "|---|---|",
        f"| predicted (wrong) answer | {100 * report['pointing_predicted']:.1f}% |",
        f"| right answer | {100 * report['pointing_right']:.1f}% |",
        "",
        f"Spearman between the two maps: {report['spearman']:.2f}",
    ])
