"""Textual explanations (Grad-CAM, IJCV version, Sec. 7): the named units behind a target.

The units with the largest channel weights alpha_k at the dissected layer are the
evidence for the target, the smallest the evidence against; only units whose Network
Dissection IoU >= 0.05 are named.

Example:
    >>> import mmexplain as mx                                       # doctest: +SKIP
    >>> model = mx.zoo.load("classifier")                            # doctest: +SKIP
    >>> labels = mx.dissect(model, model.default_layer, mx.world.concept_dataset(500))  # doctest: +SKIP
    >>> res = mx.GradCAM(model, model.default_layer)(images, mx.targets.ClassLogit(0))  # doctest: +SKIP
    >>> mx.describe(res, labels, k=3, target_names=["red circle"])  # doctest: +SKIP
    ['red circle — evidence for: red (unit 3, IoU 0.31), ...; evidence against: ...']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from .labels import NeuronLabels
from ..errors import InputError, InputTypeError

__all__ = ["Evidence", "unit_evidence", "describe"]


@dataclass(frozen=True)
class Evidence:
    """A named unit's part in one explanation: its weight alpha_k and its label."""

    unit: int
    concept: str
    category: str
    iou: float
    alpha: float

    def __str__(self) -> str:
        return f"{self.concept} (unit {self.unit}, IoU {self.iou:.2f})"


def unit_evidence(weights: Tensor, labels: NeuronLabels, *, k: int = 5,
                  min_iou: float = 0.05) -> tuple[list[Evidence], list[Evidence]]:
    """The named units with the largest and the smallest Grad-CAM weights.

    Among units with IoU >= ``min_iou``: evidence for = the ``k`` largest alpha_k > 0,
    largest first; evidence against = the ``k`` smallest alpha_k < 0, most negative
    first. (The paper takes the top-5 and bottom-5 by alpha; dropping units of the
    wrong sign keeps a positive weight from being called evidence against.)

    Args:
        weights: (K,) alpha for one target and one image.
        labels: the layer's :class:`NeuronLabels` (K units).

    Returns:
        ``(evidence_for, evidence_against)`` lists of :class:`Evidence`.
    """
    if not isinstance(weights, Tensor) or weights.dim() != 1:
        raise InputError(f"weights: expected a (K,) tensor, got "
                         f"{tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__}")
    if weights.shape[0] != len(labels):
        raise InputError(f"labels: has {len(labels)} units but the weights have {weights.shape[0]} channels "
                         f"(dissect the same layer that was explained)")
    if not isinstance(k, int) or k < 0:
        raise InputError(f"k: expected a non-negative int, got {k!r}")
    alpha = weights.detach().double().cpu().tolist()
    named = [u for u in labels if u.iou >= min_iou]
    ev = [Evidence(u.unit, u.concept, u.category, u.iou, alpha[u.unit]) for u in named]
    pos = sorted((e for e in ev if e.alpha > 0), key=lambda e: (-e.alpha, e.unit))[:k]
    neg = sorted((e for e in ev if e.alpha < 0), key=lambda e: (e.alpha, e.unit))[:k]
    return pos, neg


def _explained_names(obj: Any) -> tuple[list[str] | None, int | None]:
    """Target names of an explanation object, and how many leading rows they name."""
    words = getattr(obj, "words", None)
    if isinstance(words, (list, tuple)):  # explain_caption: one row per word
        return [str(w) for w in words], None
    answers = getattr(obj, "answers", None)
    if isinstance(answers, (list, tuple)) and answers:  # explain_answer: answers, then their counterfactuals
        return [str(a) for a in answers], len(answers)
    answer = getattr(obj, "answer", None)
    if isinstance(answer, str):
        return [answer], 1
    labels = getattr(obj, "labels", None)
    if isinstance(labels, (list, tuple)) and all(isinstance(x, str) for x in labels):  # explain_class
        return list(labels), None
    return None, None


def _rows_and_names(result: Any) -> tuple[Tensor, list[str]]:
    """(R, K) weight rows and default names from a CAMResult, an explainer or a tensor."""
    names: list[str] | None = None
    keep: int | None = None
    obj = result
    if not isinstance(obj, Tensor) and not hasattr(obj, "weights") and hasattr(obj, "result"):
        names, keep = _explained_names(obj)
        obj = obj.result
    weights = obj if isinstance(obj, Tensor) else getattr(obj, "weights", None)
    if not isinstance(weights, Tensor):
        raise InputTypeError(f"result: expected a CAMResult (with .weights), an explanation with .result, or a "
                        f"weights tensor, got {type(result).__name__}")
    if keep is not None and weights.dim() >= 2:
        weights = weights[:keep]  # the counterfactual rows mirror the answers' (alpha negated)
    if weights.dim() == 1:
        rows = weights[None]  # (1, K)
        default = ["target"]
    elif weights.dim() == 2:
        rows = weights  # (B, K)
        default = ["target"] if rows.shape[0] == 1 else [f"sample {b}" for b in range(rows.shape[0])]
    elif weights.dim() == 3:
        n, b = weights.shape[:2]
        rows = weights.reshape(n * b, -1)  # (N B, K), target-major
        default = [f"target {i}" if b == 1 else f"target {i}, sample {j}" for i in range(n) for j in range(b)]
    else:
        raise InputError(f"result: weights must be (K,), (B, K) or (N, B, K), got {tuple(weights.shape)}")
    if names is not None and len(names) != rows.shape[0]:
        if rows.shape[0] % len(names) == 0:  # several images per target
            b = rows.shape[0] // len(names)
            names = [f"{w}, sample {j}" for w in names for j in range(b)]
        else:
            names = None
    return rows, names or default


def describe(result: Any, labels: NeuronLabels, *, k: int = 5, min_iou: float = 0.05,
             target_names: Sequence[str] | None = None) -> list[str]:
    """Textual explanations: one sentence per explained target naming the units behind it.

    Grad-CAM, IJCV version, Sec. 7: rank the units by alpha_k (the target's Grad-CAM
    weights at the dissected layer), keep those whose Network Dissection IoU >= 0.05,
    and report the top ``k`` (evidence for) and the bottom ``k`` (evidence against)
    with their concept, unit and IoU. See :func:`unit_evidence` for the sign rule.

    Args:
        result: a CAMResult (weights (B, K), or (N, B, K) for N targets), an
            explanation with a ``.result`` CAMResult — ``explain_caption`` (one
            sentence per word), ``explain_answer`` (one per explained answer; the
            counterfactual rows mirror them and are skipped), ``explain_class`` (one
            per class) — or a weights tensor.
        labels: :class:`NeuronLabels` of the layer the result explains.
        k: units per side.
        min_iou: minimum IoU for a unit to be named.
        target_names: one name per sentence (default: the words, the answer, or
            ``"target n"``).

    Returns:
        One string per (target, image) row, target-major.

    Example:
        >>> import torch
        >>> from mmexplain.dissect import NeuronLabels, UnitLabel, describe
        >>> labels = NeuronLabels([UnitLabel(0, "red", "color", 0.3), UnitLabel(1, "circle", "shape", 0.2)],
        ...                       categories={"red": "color", "circle": "shape"})
        >>> describe(torch.tensor([[0.5, -0.1]]), labels, target_names=["red"])
        ['red — evidence for: red (unit 0, IoU 0.30); evidence against: circle (unit 1, IoU 0.20).']
    """
    if not isinstance(labels, NeuronLabels):
        raise InputTypeError(f"labels: expected NeuronLabels, got {type(labels).__name__}")
    if not isinstance(min_iou, (int, float)):
        raise InputTypeError(f"min_iou: expected a number, got {type(min_iou).__name__}")
    rows, names = _rows_and_names(result)
    if target_names is not None:
        if isinstance(target_names, str):
            target_names = [target_names]
        names = [str(t) for t in target_names]
        if len(names) != rows.shape[0]:
            raise InputError(f"target_names: expected {rows.shape[0]} names (one per explained row), got {len(names)}")
    out = []
    for name, row in zip(names, rows):
        pos, neg = unit_evidence(row, labels, k=k, min_iou=min_iou)
        pos_text = ", ".join(map(str, pos)) or "no named unit"
        neg_text = ", ".join(map(str, neg)) or "no named unit"
        out.append(f"{name} — evidence for: {pos_text}; evidence against: {neg_text}.")
    return out
