"""Network Dissection (Bau et al., CVPR 2017) and textual explanations (Grad-CAM, IJCV Sec. 7).

Network Dissection names the channels ("units") of a convolutional layer by the
concept whose pixel masks their strongest activations overlap best:

* T_k: the level that unit k's activation exceeds on the top ``quantile`` (0.005)
  of all its activations over the dataset (every image, every position);
* M_k(x) = S_k(x) > T_k, where S_k(x) is the unit's map upsampled bilinearly to the
  concept masks' size;
* IoU_{k,c} = sum_x |M_k(x) ∩ L_c(x)| / sum_x |M_k(x) ∪ L_c(x)|, summed over the images
  x whose category of c is annotated;
* the unit's label is argmax_c IoU_{k,c}; it is a *detector* when that IoU > 0.04.

The textual explanation of a Grad-CAM result (Selvaraju et al., IJCV version, Sec. 7)
lists the units with the largest channel weights alpha_k (evidence for the target)
and the smallest (evidence against), among the units whose IoU >= 0.05, by name.

Example:
    >>> import mmexplain as mx                                       # doctest: +SKIP
    >>> model = mx.zoo.load("classifier")                            # doctest: +SKIP
    >>> data = mx.dissect.shapeworld_concepts(500)                    # doctest: +SKIP
    >>> labels = mx.dissect(model, model.default_layer, data)        # doctest: +SKIP
    >>> labels[3].concept, labels[3].category, labels[3].iou         # doctest: +SKIP
    ('red', 'color', 0.31)
    >>> res = mx.GradCAM(model, model.default_layer)(images, mx.targets.ClassLogit(0))  # doctest: +SKIP
    >>> mx.describe(res, labels, k=3, target_names=["red circle"])  # doctest: +SKIP
    ['red circle — evidence for: red (unit 3, IoU 0.31), ...; evidence against: ...']

Memory does not grow with the dataset: :func:`dissect` streams it twice (a
threshold pass with a fixed-size histogram per unit, then an IoU pass with
(units x concepts) accumulators), so the dataset must be re-iterable (a list, a
``torch.utils.data.Dataset``-like object, :func:`shapeworld_concepts`,
:class:`BrodenDataset`), not a one-shot generator.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import operator
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "dissect",
    "describe",
    "unit_evidence",
    "NeuronLabels",
    "UnitLabel",
    "Evidence",
    "StreamingQuantile",
    "iou_counts",
    "upsample_bilinear",
    "top_activating",
    "TopActivations",
    "shapeworld_concepts",
    "shapeworld_categories",
    "image_forward",
    "BrodenDataset",
]

ForwardFn = Callable[[nn.Module, Tensor], Any]

_FORMAT = "mmexplain.neuron_labels"
_VERSION = 1


# ----------------------------------------------------------------------------- streaming quantile


class StreamingQuantile:
    """Per-unit upper quantiles of a stream of activations in fixed memory.

    Each unit keeps a histogram of ``bins`` equal bins over a symmetric range
    ``[-R_k, R_k)``; when a value with ``|a| >= R_k`` arrives, the range doubles and
    adjacent bins merge in pairs, so memory is ``K x bins`` counts whatever the
    stream's length. Bins nest across doublings, so no count ever moves to a wrong bin.

    The estimate T̂_k is the lower edge of the bin that holds the boundary, so at
    least the top fraction q passes ``a > T̂_k`` (ties included: a unit with few
    distinct values is never cut inside a tie, and an all-zero unit gets T̂_k = 0).

    Error bound: let v_k be the ⌈q·n⌉-th largest of the n values of unit k. T̂_k is
    the lower edge of v_k's bin, so

        0 <= v_k - T̂_k < w_k = 2 R_k / bins <= 4 max_x |a_k(x)| / bins,

    since R_k starts just above the first batch's largest |a| and doubles only while
    some value reaches it (an all-zero unit keeps R_k = 1e-12). ``bin_width``
    returns w_k. With the default 4096 bins the threshold is within 0.1 % of the
    unit's largest absolute activation.

    Example:
        >>> sq = StreamingQuantile(2)
        >>> sq.update(torch.arange(1000.0).repeat(2, 1))   # (K, n)
        >>> sq.upper(0.01)                   # the 10th largest is 990; bin width 0.49
        tensor([989.7329, 989.7329], dtype=torch.float64)
    """

    def __init__(self, num_units: int, *, bins: int = 4096) -> None:
        if not isinstance(num_units, int) or num_units < 1:
            raise ValueError(f"num_units: expected a positive int, got {num_units!r}")
        if not isinstance(bins, int) or bins < 4 or bins % 4:
            raise ValueError(f"bins: expected a positive multiple of 4, got {bins!r}")
        self.num_units = num_units
        self.bins = bins
        self.counts = torch.zeros(num_units, bins, dtype=torch.float64)  # (K, bins)
        self.radius: Tensor | None = None  # (K,) R_k
        self.count = 0

    @property
    def bin_width(self) -> Tensor:
        """(K,) w_k, the bound on |T̂_k - v_k| (see the class docstring)."""
        if self.radius is None:
            raise ValueError("StreamingQuantile: no values yet")
        return 2 * self.radius / self.bins

    def update(self, values: Tensor) -> None:
        """Add ``values`` (K, n): n new activations of each of the K units."""
        if values.dim() != 2 or values.shape[0] != self.num_units:
            raise ValueError(f"values: expected shape ({self.num_units}, n), got {tuple(values.shape)}")
        if values.shape[1] == 0:
            return
        values = values.detach().to(device="cpu", dtype=torch.float64)  # (K, n)
        if not torch.isfinite(values).all():
            raise ValueError("values: activations contain NaN or infinity")
        absmax = values.abs().amax(dim=1)  # (K,)
        if self.radius is None:
            # start just above the first batch's range; a zero unit gets a tiny range
            self.radius = torch.where(absmax > 0, absmax * (1 + 1e-6), torch.full_like(absmax, 1e-12))
        self._grow(absmax)
        width = (2 * self.radius / self.bins)[:, None]  # (K, 1)
        idx = torch.floor((values + self.radius[:, None]) / width).long().clamp_(0, self.bins - 1)  # (K, n)
        flat = idx + torch.arange(self.num_units)[:, None] * self.bins  # (K, n)
        self.counts += torch.bincount(flat.reshape(-1), minlength=self.num_units * self.bins).view(
            self.num_units, self.bins).to(torch.float64)
        self.count += values.shape[1]

    def _grow(self, absmax: Tensor) -> None:
        if self.radius is None:
            return
        need = absmax >= self.radius  # (K,)
        quarter = self.bins // 4
        while bool(need.any()):
            rows = need.nonzero().squeeze(1)
            merged = self.counts[rows].view(len(rows), self.bins // 2, 2).sum(-1)  # (r, bins/2)
            grown = torch.zeros(len(rows), self.bins, dtype=torch.float64)
            grown[:, quarter:quarter + self.bins // 2] = merged  # old [-R, R) is new bins [bins/4, 3 bins/4)
            self.counts[rows] = grown
            self.radius[rows] = self.radius[rows] * 2
            need = absmax >= self.radius

    def upper(self, q: float) -> Tensor:
        """(K,) float64 T̂_k: the level exceeded by the top fraction ``q`` of each unit's values."""
        if self.radius is None:
            raise ValueError("StreamingQuantile: no values yet")
        if not 0 < q < 1:
            raise ValueError(f"q: expected a fraction in (0, 1), got {q!r}")
        # the bin i with S_{i+1} < ceil(q n) <= S_i holds the ceil(q n)-th largest value
        target = max(math.ceil(q * self.count - 1e-9), 1)
        above = self.counts.flip(1).cumsum(1).flip(1)  # (K, bins) S_i = count in bins >= i
        i = ((above >= target).sum(1) - 1).clamp(min=0)  # (K,) last bin whose S_i reaches the target
        return -self.radius + i.to(torch.float64) * (2 * self.radius / self.bins)  # the bin's lower edge


# ----------------------------------------------------------------------------- IoU


def _linear_matrix(n_in: int, n_out: int, device: torch.device) -> Tensor:
    """(n_in, n_out) R with x @ R = 1-D linear upsampling of x (align_corners=False)."""
    eye = torch.eye(n_in, device=device)[None]  # (1, n_in, n_in): channel i is the basis vector e_i
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0]


def upsample_bilinear(maps: Tensor, size: tuple[int, int], *,
                      matrices: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Bilinear upsampling (``F.interpolate``, ``align_corners=False``) as two matrix products.

    Bilinear interpolation is separable: up = R_y^T A R_x, with R the 1-D linear
    interpolation matrices. Equal to ``F.interpolate(maps, size, mode="bilinear")``
    up to float rounding (~1e-7), and several times faster on CPU for many channels.

    Args:
        maps: (..., h, w).
        size: (H, W).
        matrices: precomputed ``(R_y (h, H), R_x (w, W))``.

    Returns:
        (..., H, W).
    """
    h, w = maps.shape[-2:]
    if (h, w) == tuple(size):
        return maps
    ry, rx = matrices if matrices is not None else (_linear_matrix(h, size[0], maps.device),
                                                    _linear_matrix(w, size[1], maps.device))
    return ry.T @ (maps @ rx)  # (..., H, h) @ (..., h, W) -> (..., H, W)


class _IoUTally:
    """Streaming sums for IoU_{k,c}: |M_k ∩ L_c|, |L_c| and |M_k| per annotated category.

    Works on chunks of images whose masks share a size, with at most ``max_elements``
    floats per (chunk, K, H, W) tensor, so memory is bounded by the chunk, not the data.
    """

    def __init__(self, thresholds: Tensor, names: list[str], categories: Mapping[str, str], device: torch.device,
                 *, max_elements: int = 1 << 22) -> None:
        self.k = thresholds.shape[0]
        self.thr = thresholds.float().to(device)[:, None, None]  # (K, 1, 1)
        self.device = device
        self.index = {c: i for i, c in enumerate(names)}
        self.order = list(names)
        self.cats = sorted({_category_of(c, categories) for c in names})
        cat_index = {c: i for i, c in enumerate(self.cats)}
        self.concept_cat = [cat_index[_category_of(c, categories)] for c in names]  # (C,)
        self.max_elements = max_elements
        self.matrices: dict[tuple[int, int, int, int], tuple[Tensor, Tensor]] = {}
        c = len(names)
        self.inter = torch.zeros(self.k, c, dtype=torch.float64)  # (K, C) sum |M ∩ L|
        self.mask_area = torch.zeros(c, dtype=torch.float64)  # (C,) sum |L|
        self.unit_area = torch.zeros(self.k, len(self.cats), dtype=torch.float64)  # (K, categories) sum |M|

    def add(self, acts: Tensor, masks: Sequence[Mapping[str, Tensor]], first: int) -> None:
        """Add a batch: acts (B, K, h, w) and each image's ``{concept: (H, W) mask}``."""
        groups: dict[tuple[int, int], list[tuple[int, list[str], Tensor]]] = {}
        for b, item in enumerate(masks):
            names, stacked = _stack_masks(item, first + b)
            if not names:
                continue
            unknown = [c for c in names if c not in self.index]
            if unknown:
                raise ValueError(f"dataset: the second pass yielded new concepts {unknown}; it must be deterministic")
            groups.setdefault(tuple(stacked.shape[-2:]), []).append((b, names, stacked))
        h, w = acts.shape[-2:]
        n_c = len(self.index)
        for (H, W), items in groups.items():
            key = (h, w, H, W)
            if key not in self.matrices:
                self.matrices[key] = (_linear_matrix(h, H, self.device), _linear_matrix(w, W, self.device))
            chunk = max(1, self.max_elements // (self.k * H * W))
            for s in range(0, len(items), chunk):
                part = items[s:s + chunk]
                a = acts[[b for b, _, _ in part]].float()  # (c, K, h, w)
                up = upsample_bilinear(a, (H, W), matrices=self.matrices[key])  # (c, K, H, W)
                unit = up.sub_(self.thr).gt_(0).flatten(2)  # (c, K, HW) M_k as 0./1. floats, in place
                concept = torch.zeros(len(part), n_c + 1, H * W, dtype=unit.dtype, device=self.device)  # (c, C + 1, HW)
                concept[:, n_c] = 1.0  # the last row counts |M_k|
                for j, (_, names, stacked) in enumerate(part):
                    flat = stacked.flatten(1).to(self.device)  # (C_i, HW) bool
                    if names == self.order[:len(names)]:
                        concept[j, :len(names)] = flat
                    else:
                        for n, row in zip(names, flat):
                            concept[j, self.index[n]] = row
                counts = torch.bmm(unit, concept.transpose(1, 2)).double().cpu()  # (c, K, C + 1), exact < 2^24
                self.inter += counts[..., :n_c].sum(0)
                self.mask_area += concept[:, :n_c].sum((0, 2)).double().cpu()
                for j, (_, names, _) in enumerate(part):
                    annotated = sorted({self.concept_cat[self.index[n]] for n in names})
                    self.unit_area[:, annotated] += counts[j, :, n_c, None]

    def iou(self) -> Tensor:
        """(K, C) IoU_{k,c}; 0 where the union is empty."""
        union = self.unit_area[:, self.concept_cat] + self.mask_area[None] - self.inter  # (K, C)
        return torch.where(union > 0, self.inter / union.clamp(min=1), torch.zeros_like(self.inter))


def iou_counts(activations: Tensor, thresholds: Tensor, masks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Intersection and set sizes of thresholded unit maps and concept masks, for one image.

    Args:
        activations: (K, h, w) unit maps.
        thresholds: (K,) T_k.
        masks: (C, H, W) bool concept masks L_c.

    Returns:
        ``(inter (K, C), unit_area (K,), mask_area (C,))`` with |M_k ∩ L_c|, |M_k|
        and |L_c|, where M_k = upsample_bilinear(A_k, (H, W)) > T_k. The union is
        ``unit_area[:, None] + mask_area[None] - inter``.

    Example:
        >>> acts = torch.zeros(1, 2, 2); acts[0, 0, 0] = 1.0
        >>> inter, ua, ma = iou_counts(acts, torch.tensor([0.5]), torch.ones(1, 2, 2, dtype=torch.bool))
        >>> inter.tolist(), ua.tolist(), ma.tolist()
        ([[1.0]], [1.0], [4.0])
    """
    if activations.dim() != 3:
        raise ValueError(f"activations: expected (K, h, w), got shape {tuple(activations.shape)}")
    if masks.dim() != 3:
        raise ValueError(f"masks: expected (C, H, W), got shape {tuple(masks.shape)}")
    k = activations.shape[0]
    maps = upsample_bilinear(activations.float()[None], tuple(masks.shape[-2:]))  # (1, K, H, W)
    unit = (maps[0] > thresholds.to(maps)[:, None, None]).reshape(k, -1).float()  # (K, HW)
    concept = masks.reshape(masks.shape[0], -1).to(unit)  # (C, HW)
    inter = unit @ concept.T  # (K, C), exact: integer counts < 2^24
    return inter.double().cpu(), unit.sum(1).double().cpu(), concept.sum(1).double().cpu()


# ----------------------------------------------------------------------------- labels


@dataclass(frozen=True)
class UnitLabel:
    """The Network Dissection label of one unit.

    Attributes:
        unit: channel index in the layer (0-based; NetDissect's tally.csv counts from 1).
        concept: the best concept, argmax_c IoU_{k,c}.
        category: the concept's category (``"color"``, ``"shape"``, ``"size"``, ...).
        iou: IoU of the unit with its best concept.
        threshold: T_k, the activation level of the top quantile.
        threshold_error: bound on |T_k - exact quantile| (the streaming histogram's bin width).
        ious: IoU with every concept.
    """

    unit: int
    concept: str
    category: str
    iou: float
    threshold: float = 0.0
    threshold_error: float = 0.0
    ious: dict[str, float] = field(default_factory=dict)


class NeuronLabels:
    """Names of the units of one layer, as :func:`dissect` returns them.

    Attributes:
        units: one :class:`UnitLabel` per channel, in channel order.
        categories: ``{concept: category}`` for every concept scored.
        layer: the dissected layer's name.
        quantile: the top quantile of the thresholds.
        iou_threshold: a unit is a detector when its IoU exceeds this.
        n_images: images the dissection saw.

    Example:
        >>> labels = NeuronLabels([UnitLabel(0, "red", "color", 0.3), UnitLabel(1, "circle", "shape", 0.01)],
        ...                       categories={"red": "color", "circle": "shape"})
        >>> labels[0].concept, [u.unit for u in labels.detectors()]
        ('red', [0])
    """

    def __init__(self, units: Sequence[UnitLabel], *, categories: Mapping[str, str], layer: str | None = None,
                 quantile: float | None = None, iou_threshold: float = 0.04, n_images: int = 0) -> None:
        units = list(units)
        for i, u in enumerate(units):
            if not isinstance(u, UnitLabel):
                raise TypeError(f"units: expected UnitLabel items, got {type(u).__name__} at {i}")
            if u.unit != i:
                raise ValueError(f"units: expected unit {i} at position {i} (channel order), got unit {u.unit}")
        self.units = units
        self.categories = dict(categories)
        self.layer = layer
        self.quantile = quantile
        self.iou_threshold = float(iou_threshold)
        self.n_images = int(n_images)

    def __len__(self) -> int:
        return len(self.units)

    def __iter__(self) -> Iterator[UnitLabel]:
        return iter(self.units)

    def __getitem__(self, unit: int) -> UnitLabel:
        if isinstance(unit, bool):
            raise TypeError("unit: expected an int channel index, got bool")
        try:
            unit = operator.index(unit)
        except TypeError as exc:
            raise TypeError(f"unit: expected an int channel index, got {type(unit).__name__}") from exc
        if not -len(self.units) <= unit < len(self.units):
            raise IndexError(f"unit: {unit} out of range for a layer of {len(self.units)} units")
        return self.units[unit]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NeuronLabels):
            return NotImplemented
        return (self.units, self.categories, self.layer, self.quantile, self.iou_threshold, self.n_images) == (
            other.units, other.categories, other.layer, other.quantile, other.iou_threshold, other.n_images)

    def __repr__(self) -> str:
        return (f"NeuronLabels(layer={self.layer!r}, units={len(self)}, detectors={len(self.detectors())}, "
                f"concepts={len(self.unique_concepts())})")

    @property
    def concepts(self) -> list[str]:
        """Every concept scored, in the order of :attr:`categories`."""
        return list(self.categories)

    def iou_matrix(self) -> Tensor:
        """(K, C) IoU of every unit with every concept of :attr:`concepts`."""
        return torch.tensor([[u.ious.get(c, 0.0) for c in self.concepts] for u in self.units], dtype=torch.float64)

    def is_detector(self, unit: int) -> bool:
        """True when the unit's best IoU exceeds :attr:`iou_threshold`."""
        return self[unit].iou > self.iou_threshold

    def detectors(self) -> list[UnitLabel]:
        """Units whose best IoU > :attr:`iou_threshold`, best first."""
        return sorted((u for u in self.units if u.iou > self.iou_threshold), key=lambda u: (-u.iou, u.unit))

    def top(self, k: int = 10) -> list[UnitLabel]:
        """The ``k`` units with the highest IoU, best first."""
        if not isinstance(k, int) or k < 0:
            raise ValueError(f"k: expected a non-negative int, got {k!r}")
        return sorted(self.units, key=lambda u: (-u.iou, u.unit))[:k]

    def unique_concepts(self) -> list[str]:
        """The distinct concepts named by detectors, sorted."""
        return sorted({u.concept for u in self.detectors()})

    def summary(self, *, k: int = 10) -> str:
        """A few lines: counts of detectors and concepts per category, and the top ``k`` units."""
        det = self.detectors()
        lines = [f"layer {self.layer or '?'}: {len(self)} units, {len(det)} detectors (IoU > {self.iou_threshold:g}), "
                 f"{len(self.unique_concepts())} unique concepts, {self.n_images} images"]
        by_cat: dict[str, dict[str, int]] = {}
        for u in det:
            by_cat.setdefault(u.category, {}).setdefault(u.concept, 0)
            by_cat[u.category][u.concept] += 1
        for cat in sorted(by_cat):
            counts = ", ".join(f"{c} {n}" for c, n in sorted(by_cat[cat].items(), key=lambda t: (-t[1], t[0])))
            lines.append(f"  {cat}: {sum(by_cat[cat].values())} units ({counts})")
        lines.append("  top: " + ", ".join(f"unit {u.unit} {u.concept} {u.iou:.3f}" for u in self.top(k)))
        return "\n".join(lines)

    # ------------------------------------------------------------------ files

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (see :meth:`save`)."""
        return {
            "format": _FORMAT, "version": _VERSION, "layer": self.layer, "quantile": self.quantile,
            "iou_threshold": self.iou_threshold, "n_images": self.n_images, "categories": self.categories,
            "units": [{"unit": u.unit, "concept": u.concept, "category": u.category, "iou": u.iou,
                       "threshold": u.threshold, "threshold_error": u.threshold_error, "ious": u.ious}
                      for u in self.units],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NeuronLabels:
        """Inverse of :meth:`to_dict`."""
        if not isinstance(data, Mapping) or data.get("format") != _FORMAT:
            raise ValueError(f"data: not a {_FORMAT} document")
        try:
            units = [UnitLabel(int(u["unit"]), str(u["concept"]), str(u["category"]), float(u["iou"]),
                               float(u.get("threshold", 0.0)), float(u.get("threshold_error", 0.0)),
                               {str(c): float(v) for c, v in u.get("ious", {}).items()}) for u in data["units"]]
            return cls(units, categories=data["categories"], layer=data.get("layer"), quantile=data.get("quantile"),
                       iou_threshold=float(data.get("iou_threshold", 0.04)), n_images=int(data.get("n_images", 0)))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"data: malformed {_FORMAT} document ({exc!r})") from exc

    def to_csv_text(self) -> str:
        """NetDissect ``tally.csv`` text: ``unit,category,label,score`` then ``threshold`` and one
        ``iou:<category>:<concept>`` column per concept (units 0-based, rows in channel order)."""
        import io

        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["unit", "category", "label", "score", "threshold", "threshold_error"]
                        + [f"iou:{self.categories[c]}:{c}" for c in self.concepts])
        for u in self.units:
            writer.writerow([u.unit, u.category, u.concept, repr(u.iou), repr(u.threshold), repr(u.threshold_error)]
                            + [repr(u.ious.get(c, 0.0)) for c in self.concepts])
        return buf.getvalue()

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the labels atomically: JSON for ``*.json``, NetDissect tally CSV for ``*.csv``."""
        path = Path(path)
        if path.suffix == ".json":
            text = json.dumps(self.to_dict(), indent=1) + "\n"
        elif path.suffix == ".csv":
            text = self.to_csv_text()
        else:
            raise ValueError(f"path: expected a .json or .csv file name, got {str(path)!r}")
        _atomic_write(path, text)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, iou_threshold: float = 0.04) -> NeuronLabels:
        """Read labels written by :meth:`save` (``iou_threshold`` is used for CSV only,
        which does not store it)."""
        path = Path(path)
        if path.suffix == ".json":
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise ValueError(f"path: {str(path)!r} is not valid JSON ({exc})") from exc
            return cls.from_dict(data)
        if path.suffix != ".csv":
            raise ValueError(f"path: expected a .json or .csv file name, got {str(path)!r}")
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
        if not rows or rows[0][:4] != ["unit", "category", "label", "score"]:
            raise ValueError(f"path: {str(path)!r} is not a tally.csv (header unit,category,label,score)")
        header = rows[0]
        concept_cols = [(i, h.split(":", 2)) for i, h in enumerate(header) if h.startswith("iou:")]
        categories = {parts[2]: parts[1] for _, parts in concept_cols}
        col = {h: i for i, h in enumerate(header)}
        units = []
        for row in rows[1:]:
            units.append(UnitLabel(
                int(row[0]), row[2], row[1], float(row[3]),
                float(row[col["threshold"]]) if "threshold" in col else 0.0,
                float(row[col["threshold_error"]]) if "threshold_error" in col else 0.0,
                {parts[2]: float(row[i]) for i, parts in concept_cols}))
        return cls(units, categories=categories, iou_threshold=iou_threshold)


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------- concept data


def shapeworld_categories() -> dict[str, str]:
    """``{concept: category}`` for the ShapeWorld concepts: colours, shapes, sizes."""
    from .. import world

    return {**{c: "color" for c in world.COLORS}, **{s: "shape" for s in world.SHAPES},
            **{s: "size" for s in world.SIZES}}


class _ShapeWorldConcepts:
    """ShapeWorld scenes as ``(image, {concept: mask})``, with ``categories`` attached."""

    def __init__(self, n: int, seed: int, size: int) -> None:
        from .. import world

        self._data = world.concept_dataset(n, seed, size=size)
        self.categories = shapeworld_categories()

    def __len__(self) -> int:
        return len(self._data)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        return self._data[i]

    def __iter__(self) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
        return iter(self._data)


def shapeworld_concepts(n: int, *, seed: int = 0, size: int = 96) -> _ShapeWorldConcepts:
    """``n`` ShapeWorld validation scenes for :func:`dissect`, with colour/shape/size categories.

    Every item is ``(image (3, H, W) in [0, 1], {concept: (H, W) bool mask})`` with every
    concept present (all False when absent), so all three categories count on every image.
    Scenes are generated on access (nothing is cached), so memory does not grow with ``n``.

    Args:
        n: how many scenes.
        seed: offset into the validation seeds (``mx.world.SPLITS["val"]``).
        size: image side in pixels.
    """
    return _ShapeWorldConcepts(n, seed, size)


class BrodenDataset:
    """A concept dataset in the Broden layout (Bau et al., NetDissect).

    Layout under ``root``::

        index.csv   image,split,ih,iw,sh,sw,<category>,...   one row per image; a
                    category cell lists ';'-separated segmentation PNGs (pixel labels,
                    label number = R + 256 G) or label numbers (image-level labels)
        label.csv   number,name,category,...   category like "object(123);part(4)"
        images/     the images and segmentation PNGs named in index.csv

    Image-level labels (scene, texture) count the whole image: their mask is all True.

    Args:
        root: the Broden folder.
        categories: keep only these categories (default: every column after ``sw``).
        image_size: resize images to ``image_size x image_size`` (masks keep their size;
            :func:`dissect` upsamples the unit maps to each mask's size).
        split: keep only rows of this split (``"train"``/``"val"``), if the column exists.

    Example:
        >>> data = BrodenDataset("broden1_224", categories=["color", "object"])   # doctest: +SKIP
        >>> image, masks = data[0]; image.shape, sorted(masks)[:2]                  # doctest: +SKIP
        (torch.Size([3, 224, 224]), ['black-c', 'wall'])
    """

    _FIXED = ("image", "split", "ih", "iw", "sh", "sw")

    def __init__(self, root: str | os.PathLike[str], *, categories: Sequence[str] | None = None,
                 image_size: int | None = None, split: str | None = None) -> None:
        self.root = Path(root)
        for name in ("index.csv", "label.csv"):
            if not (self.root / name).is_file():
                raise FileNotFoundError(f"root: {str(self.root)!r} has no {name} (not a Broden folder)")
        if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
            raise ValueError(f"image_size: expected a positive int or None, got {image_size!r}")
        self.image_size = image_size
        with (self.root / "label.csv").open(newline="") as f:
            label_rows = list(csv.DictReader(f))
        with (self.root / "index.csv").open(newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = [c for c in (reader.fieldnames or []) if c not in self._FIXED]
        if categories is not None:
            unknown = [c for c in categories if c not in columns]
            if unknown:
                raise ValueError(f"categories: {unknown} not in index.csv (has {columns})")
            columns = list(categories)
        self.category_columns = columns
        if split is not None:
            rows = [r for r in rows if r.get("split") == split]
        self.rows = rows
        self.names: dict[int, str] = {}
        self.categories: dict[str, str] = {}
        for r in label_rows:
            number = int(r["number"])
            if number == 0:
                continue
            primary = _primary_category(r.get("category", ""))
            name = r["name"]
            if name in self.categories:
                name = f"{name}-{number}"
            self.names[number] = name
            self.categories[name] = primary or "concept"

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
        for i in range(len(self)):
            yield self[i]

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        import numpy as np
        from PIL import Image

        row = self.rows[i]
        with Image.open(self.root / "images" / row["image"]) as im:
            im = im.convert("RGB")
            if self.image_size is not None:
                im = im.resize((self.image_size, self.image_size), Image.BILINEAR)
            image = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()  # (3, H, W)
        sh, sw = int(row["sh"]), int(row["sw"])
        masks: dict[str, Tensor] = {}
        for cat in self.category_columns:
            for entry in filter(None, (row.get(cat) or "").split(";")):
                if entry.lower().endswith(".png"):
                    with Image.open(self.root / "images" / entry) as seg:
                        rgb = np.asarray(seg.convert("RGB"), dtype=np.int64)
                    number = torch.from_numpy(rgb[..., 0] + 256 * rgb[..., 1])  # (sh, sw)
                    if tuple(number.shape) != (sh, sw):
                        raise ValueError(f"{entry}: mask is {tuple(number.shape)}, index.csv says {(sh, sw)}")
                    for n in number.unique().tolist():
                        if n == 0:
                            continue
                        name = self._name(n, entry)
                        masks[name] = masks.get(name, torch.zeros(sh, sw, dtype=torch.bool)) | (number == n)
                else:
                    name = self._name(int(entry), f"index.csv row {i}")
                    masks[name] = torch.ones(sh, sw, dtype=torch.bool)  # image-level label: the whole image
        return image, masks

    def _name(self, number: int, where: str) -> str:
        if number not in self.names:
            raise ValueError(f"{where}: label number {number} is not in label.csv")
        return self.names[number]


def _primary_category(field_text: str) -> str | None:
    """'object(12);part(3)' -> 'object' (the category with the most images)."""
    best, best_n = None, -1
    for item in filter(None, field_text.split(";")):
        name, _, rest = item.partition("(")
        try:
            n = int(rest.rstrip(")")) if rest else 0
        except ValueError:
            n = 0
        if n > best_n:
            best, best_n = name.strip(), n
    return best


# ----------------------------------------------------------------------------- dissection


class _StopForward(Exception):
    """Raised by the recording hook once the layer has run: the rest of the model is not needed."""


def _default_forward(model: nn.Module, images: Tensor) -> Any:
    return model(images)


def image_forward(model: nn.Module, images: Tensor) -> Any:
    """Run a vision-language model on images alone, for dissecting its image branch.

    Calls ``model(images, placeholder)`` with a ``(B, 1)`` long tensor of zeros as the
    text (caption tokens or question ids) when ``model.forward`` takes a second
    argument. :func:`dissect` stops the forward as soon as the dissected layer has
    run, so the placeholder is never read when that layer lies in the image branch
    (as ``default_layer`` of the zoo's captioner and VQA models does); do not use it
    for layers after the text enters.

    Example:
        >>> labels = mx.dissect(vqa, vqa.default_layer, data, forward=mx.dissect.image_forward)  # doctest: +SKIP
    """
    import inspect

    try:
        params = [p for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    except (TypeError, ValueError):
        params = []
    if len(params) >= 2:
        return model(images, torch.zeros(images.shape[0], 1, dtype=torch.long, device=images.device))
    return model(images)


@contextlib.contextmanager
def _recording(model: nn.Module, module: nn.Module, forward: ForwardFn) -> Iterator[Callable[[Tensor], Tensor]]:
    """Yield ``run(images) -> (B, K, h, w)`` activations of ``module``; the hook and the
    eval switch live only inside the ``with``, and the model is restored on exit."""
    store: dict[str, Tensor] = {}

    def hook(_mod: nn.Module, _inp: Any, out: Any) -> None:
        out = out[0] if isinstance(out, (tuple, list)) else out
        store["out"] = out.detach()
        raise _StopForward

    def run(images: Tensor) -> Tensor:
        store.clear()
        with torch.inference_mode():
            try:
                forward(model, images)
            except _StopForward:
                pass
            except TypeError as exc:
                if forward is not _default_forward:
                    raise
                raise TypeError(f"forward: model(images) failed ({exc}); for a model that takes more inputs pass "
                                "forward=mmexplain.dissect.image_forward or your own forward(model, images)") from exc
        if "out" not in store:
            raise ValueError("layer: the layer did not run during the model's forward; pass forward= or another layer")
        out = store.pop("out")
        if not isinstance(out, Tensor) or out.dim() != 4:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"layer: expected a (B, K, h, w) convolutional activation, got {shape}")
        return out.float()

    flags = [(m, m.training) for m in model.modules()]
    handle = None
    try:
        model.eval()
        handle = module.register_forward_hook(hook)
        yield run
    finally:
        if handle is not None:
            handle.remove()
        for m, training in flags:
            m.training = training


def _batches(dataset: Iterable[Any], batch_size: int, device: torch.device, *, desc: str,
             progress: bool) -> Iterator[tuple[Tensor, list[Mapping[str, Tensor]]]]:
    """Stack consecutive items of the same image size into (B, 3, H, W) batches."""
    from tqdm import tqdm

    total = len(dataset) if hasattr(dataset, "__len__") else None  # type: ignore[arg-type]
    images: list[Tensor] = []
    masks: list[Mapping[str, Tensor]] = []
    with tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for n, item in enumerate(dataset):
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise TypeError(f"dataset: item {n} must be (image, {{concept: mask}}), got {type(item).__name__}")
            image, concept_masks = item
            if not isinstance(image, Tensor) or image.dim() != 3:
                raise TypeError(f"dataset: item {n}'s image must be a (3, H, W) tensor, got "
                                f"{tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__}")
            if not isinstance(concept_masks, Mapping):
                raise TypeError(f"dataset: item {n}'s concepts must be a dict {{name: (H, W) mask}}, "
                                f"got {type(concept_masks).__name__}")
            if images and image.shape != images[0].shape:
                yield torch.stack(images).to(device), masks
                bar.update(len(images))
                images, masks = [], []
            images.append(image)
            masks.append(concept_masks)
            if len(images) == batch_size:
                yield torch.stack(images).to(device), masks  # (B, 3, H, W)
                bar.update(len(images))
                images, masks = [], []
        if images:
            yield torch.stack(images).to(device), masks
            bar.update(len(images))


def _stack_masks(masks: Mapping[str, Tensor], n: int) -> tuple[list[str], Tensor]:
    names = list(masks)
    if not names:
        return names, torch.zeros(0, 1, 1, dtype=torch.bool)
    stacked = []
    for name in names:
        m = masks[name]
        if not isinstance(m, Tensor) or m.dim() != 2:
            raise TypeError(f"dataset: item {n}, concept {name!r}: expected an (H, W) mask tensor, got "
                            f"{tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__}")
        stacked.append(m.bool())
    try:
        return names, torch.stack(stacked)  # (C, H, W)
    except RuntimeError as exc:
        raise ValueError(f"dataset: item {n}'s masks differ in size") from exc


def _resolve(model: nn.Module, layer: str | nn.Module) -> tuple[nn.Module, str]:
    from ..methods import resolve_layer

    module = resolve_layer(model, layer)
    name = layer if isinstance(layer, str) else next(n for n, m in model.named_modules() if m is module)
    return module, name


def _model_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """The device to run on: ``device`` if given (it must hold the model), else the model's."""
    own = next((p.device for p in model.parameters()), None)
    if device is None:
        return own or torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device: expected a torch device, got {device!r}") from exc
    if own is not None and own.type != dev.type:
        raise ValueError(f"device: the model's parameters are on {own}, not {dev}; move the model first "
                         f"(model.to({str(dev)!r})) — dissect leaves the model where it is")
    return dev


def _check_reiterable(dataset: Any) -> None:
    if iter(dataset) is dataset:
        raise TypeError("dataset: a one-shot iterator cannot be read twice; pass a list, a Dataset-like object "
                        "or mx.dissect.shapeworld_concepts(n)")


def _category_of(concept: str, categories: Mapping[str, str] | None) -> str:
    if categories is not None and concept in categories:
        return categories[concept]
    return "concept"


def dissect(model: nn.Module, layer: str | nn.Module, dataset: Iterable[tuple[Tensor, Mapping[str, Tensor]]], *,
            quantile: float = 0.005, iou_threshold: float = 0.04, batch_size: int = 32,
            device: str | torch.device | None = None, categories: Mapping[str, str] | None = None,
            forward: ForwardFn | None = None, bins: int = 4096, progress: bool = True) -> NeuronLabels:
    """Network Dissection: name every unit of ``layer`` by the concept it detects best.

    Bau, Zhou, Khosla, Oliva, Torralba, "Network Dissection: Quantifying
    Interpretability of Deep Visual Representations", CVPR 2017:

        T_k : P(a_k > T_k) = quantile over every position of every image
        M_k(x) = upsample_bilinear(A_k(x), mask size) > T_k
        IoU_{k,c} = sum_x |M_k(x) ∩ L_c(x)| / sum_x |M_k(x) ∪ L_c(x)|
        label_k = argmax_c IoU_{k,c};  detector iff IoU_{k,label_k} > iou_threshold

    Two streaming passes over ``dataset``: the first fills a fixed-size histogram per
    unit (:class:`StreamingQuantile`; |T̂_k - T_k| <= its bin width, recorded as
    ``threshold_error``), the second accumulates (K, C) intersection and union counts.
    Memory is independent of the dataset's length. Like NetDissect, the union for
    concept c sums only over images where c's category is annotated (where the item
    has some concept of that category); ShapeWorld annotates all of them everywhere.

    Departures from NetDissect: the quantile is estimated from a histogram (bounded
    error) instead of a sample-based quantile; units are numbered from 0.

    Args:
        model: the network; put in eval mode during the call and restored after.
        layer: dotted module name or the module; its output must be (B, K, h, w).
        dataset: re-iterable of ``(image (3, H, W), {concept: (H, W) bool mask})``.
        quantile: top fraction of activations above T_k.
        iou_threshold: IoU above which a unit counts as a detector.
        batch_size: images per forward pass.
        device: where to run (default: the model's parameters' device; the model is
            never moved).
        categories: ``{concept: category}``; default ``dataset.categories`` if present,
            else ShapeWorld's colour/shape/size names, else ``"concept"``.
        forward: ``forward(model, images)`` runs the model (default ``model(images)``);
            for models that take more inputs. The forward stops once the layer has run.
        bins: histogram bins per unit (multiple of 4).
        progress: show a tqdm progress bar.

    Returns:
        :class:`NeuronLabels` with one :class:`UnitLabel` per channel.

    Example:
        >>> data = mx.dissect.shapeworld_concepts(200)                         # doctest: +SKIP
        >>> labels = mx.dissect(model, "features.6", data, progress=False)    # doctest: +SKIP
        >>> print(labels.summary())                                           # doctest: +SKIP
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(quantile, (int, float)) or not 0 < quantile < 1:
        raise ValueError(f"quantile: expected a fraction in (0, 1), got {quantile!r}")
    if not isinstance(iou_threshold, (int, float)) or not 0 <= iou_threshold < 1:
        raise ValueError(f"iou_threshold: expected a number in [0, 1), got {iou_threshold!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    _check_reiterable(dataset)
    module, layer_name = _resolve(model, layer)
    dev = _model_device(model, device)
    forward = forward or _default_forward
    if categories is None:
        categories = getattr(dataset, "categories", None)
    if categories is None:
        categories = shapeworld_categories()

    with _recording(model, module, forward) as run:
        # pass 1: per-unit thresholds and the concept vocabulary
        hist: StreamingQuantile | None = None
        concepts: dict[str, None] = {}
        n_images = 0
        for images, masks in _batches(dataset, batch_size, dev, desc="dissect 1/2 thresholds", progress=progress):
            acts = run(images)  # (B, K, h, w)
            if hist is None:
                hist = StreamingQuantile(acts.shape[1], bins=bins)
            elif acts.shape[1] != hist.num_units:
                raise ValueError(f"layer: channel count changed from {hist.num_units} to {acts.shape[1]}")
            hist.update(acts.transpose(0, 1).reshape(acts.shape[1], -1))  # (K, B h w)
            for m in masks:
                concepts.update(dict.fromkeys(m))
            n_images += images.shape[0]
        if hist is None:
            raise ValueError("dataset: no images")
        if not concepts:
            raise ValueError("dataset: no concept masks in any item")
        thresholds = hist.upper(quantile)  # (K,) float64
        errors = hist.bin_width  # (K,)
        k = hist.num_units

        # pass 2: IoU accumulators
        names = list(concepts)
        tally = _IoUTally(thresholds, names, categories, dev)
        seen = 0
        for images, masks in _batches(dataset, batch_size, dev, desc="dissect 2/2 IoU", progress=progress):
            tally.add(run(images), masks, seen)  # acts (B, K, h, w)
            seen += images.shape[0]
        if seen != n_images:
            raise ValueError(f"dataset: the first pass had {n_images} images, the second {seen}; it must be re-iterable")

    iou = tally.iou()  # (K, C)
    best = iou.argmax(dim=1)  # (K,) first best on ties
    units = []
    for u in range(k):
        c = names[int(best[u])]
        units.append(UnitLabel(u, c, _category_of(c, categories), float(iou[u, best[u]]), float(thresholds[u]),
                               float(errors[u]), {name: float(iou[u, i]) for i, name in enumerate(names)}))
    return NeuronLabels(units, categories={c: _category_of(c, categories) for c in names}, layer=layer_name,
                        quantile=float(quantile), iou_threshold=float(iou_threshold), n_images=n_images)


# ----------------------------------------------------------------------------- top-activating images


@dataclass
class TopActivations:
    """The images on which each chosen unit fires hardest (NetDissect's report).

    Attributes:
        units: the unit indices, one row each.
        images: (U, top, 3, H, W) the images.
        maps: (U, top, h, w) the unit's activation map on each.
        scores: (U, top) the map's maximum, descending along a row.
        indices: (U, top) positions in the dataset.
    """

    units: list[int]
    images: Tensor
    maps: Tensor
    scores: Tensor
    indices: Tensor


def top_activating(model: nn.Module, layer: str | nn.Module, dataset: Iterable[tuple[Tensor, Any]],
                   units: Sequence[int], *, top: int = 4, batch_size: int = 32, device: str | torch.device | None = None,
                   forward: ForwardFn | None = None, progress: bool = False) -> TopActivations:
    """One streaming pass keeping, per unit, the ``top`` images with the highest map maximum.

    Memory is ``len(units) x top`` images, whatever the dataset's length.
    """
    if not isinstance(top, int) or top < 1:
        raise ValueError(f"top: expected a positive int, got {top!r}")
    units = [int(u) for u in units]
    if not units:
        raise ValueError("units: expected at least one unit index")
    module, _ = _resolve(model, layer)
    dev = _model_device(model, device)
    sel = torch.tensor(units)
    scores = images = maps = indices = None
    offset = 0
    with _recording(model, module, forward or _default_forward) as run:
        for batch, _ in _batches(dataset, batch_size, dev, desc="unit gallery", progress=progress):
            acts = run(batch)  # (B, K, h, w)
            if int(sel.max()) >= acts.shape[1] or int(sel.min()) < 0:
                raise ValueError(f"units: indices must lie in [0, {acts.shape[1]}), got {units}")
            a = acts[:, sel].transpose(0, 1).cpu()  # (U, B, h, w)
            s = a.flatten(2).amax(2)  # (U, B)
            b = batch.shape[0]
            idx = torch.arange(offset, offset + b)[None].expand(len(units), b)  # (U, B)
            prev = 0 if scores is None else scores.shape[1]
            if scores is not None:
                s, a, idx = torch.cat([scores, s], 1), torch.cat([maps, a], 1), torch.cat([indices, idx], 1)
            keep = s.topk(min(top, s.shape[1]), dim=1).indices  # (U, top') into [kept so far, this batch]
            rows = torch.arange(len(units))[:, None]
            # images: a pool of the kept ones (U * prev) then this batch (B), never U x B copies
            pool = batch.cpu() if images is None else torch.cat([images.flatten(0, 1), batch.cpu()])
            pick = torch.where(keep < prev, rows * prev + keep, len(units) * prev + keep - prev)  # (U, top')
            images = pool[pick]  # (U, top', 3, H, W)
            scores, maps, indices = s.gather(1, keep), a[rows, keep], idx.gather(1, keep)  # (U, top'), (U, top', h, w)
            offset += b
    if scores is None:
        raise ValueError("dataset: no images")
    return TopActivations(units, images.contiguous(), maps.contiguous(), scores, indices)  # type: ignore[union-attr]


# ----------------------------------------------------------------------------- textual explanations


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
        raise ValueError(f"weights: expected a (K,) tensor, got "
                         f"{tuple(weights.shape) if isinstance(weights, Tensor) else type(weights).__name__}")
    if weights.shape[0] != len(labels):
        raise ValueError(f"labels: has {len(labels)} units but the weights have {weights.shape[0]} channels "
                         f"(dissect the same layer that was explained)")
    if not isinstance(k, int) or k < 0:
        raise ValueError(f"k: expected a non-negative int, got {k!r}")
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
        raise TypeError(f"result: expected a CAMResult (with .weights), an explanation with .result, or a "
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
        raise ValueError(f"result: weights must be (K,), (B, K) or (N, B, K), got {tuple(weights.shape)}")
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
        >>> labels = NeuronLabels([UnitLabel(0, "red", "color", 0.3), UnitLabel(1, "circle", "shape", 0.2)],
        ...                       categories={"red": "color", "circle": "shape"})
        >>> describe(torch.tensor([[0.5, -0.1]]), labels, target_names=["red"])
        ['red — evidence for: red (unit 0, IoU 0.30); evidence against: circle (unit 1, IoU 0.20).']
    """
    if not isinstance(labels, NeuronLabels):
        raise TypeError(f"labels: expected NeuronLabels, got {type(labels).__name__}")
    if not isinstance(min_iou, (int, float)):
        raise TypeError(f"min_iou: expected a number, got {type(min_iou).__name__}")
    rows, names = _rows_and_names(result)
    if target_names is not None:
        if isinstance(target_names, str):
            target_names = [target_names]
        names = [str(t) for t in target_names]
        if len(names) != rows.shape[0]:
            raise ValueError(f"target_names: expected {rows.shape[0]} names (one per explained row), got {len(names)}")
    out = []
    for name, row in zip(names, rows):
        pos, neg = unit_evidence(row, labels, k=k, min_iou=min_iou)
        pos_text = ", ".join(map(str, pos)) or "no named unit"
        neg_text = ", ".join(map(str, neg)) or "no named unit"
        out.append(f"{name} — evidence for: {pos_text}; evidence against: {neg_text}.")
    return out
