"""Network Dissection labels: one :class:`UnitLabel` per unit, gathered in :class:`NeuronLabels`.

:class:`NeuronLabels` saves and loads as JSON (everything) or as NetDissect's
``tally.csv`` (``unit,category,label,score``, then every concept's IoU), atomically
through :mod:`mmexplain._io`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import operator
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._io import write_json, write_text
from ..errors import InputError, InputTypeError

__all__ = ["UnitLabel", "NeuronLabels"]

_FORMAT = "mmexplain.neuron_labels"
_VERSION = 1


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
                raise InputTypeError(f"units: expected UnitLabel items, got {type(u).__name__} at {i}")
            if u.unit != i:
                raise InputError(f"units: expected unit {i} at position {i} (channel order), got unit {u.unit}")
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
            raise InputTypeError("unit: expected an int channel index, got bool")
        try:
            unit = operator.index(unit)
        except TypeError as exc:
            raise InputTypeError(f"unit: expected an int channel index, got {type(unit).__name__}") from exc
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
            raise InputError(f"k: expected a non-negative int, got {k!r}")
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
            raise InputError(f"data: not a {_FORMAT} document")
        try:
            units = [UnitLabel(_unit_id(u["unit"], f"units[{n}].unit"), str(u["concept"]), str(u["category"]),
                               _number(u["iou"], f"units[{n}].iou"),
                               _number(u.get("threshold", 0.0), f"units[{n}].threshold"),
                               _number(u.get("threshold_error", 0.0), f"units[{n}].threshold_error"),
                               {str(c): _number(v, f"units[{n}].ious[{c!r}]") for c, v in u.get("ious", {}).items()})
                     for n, u in enumerate(data["units"])]
            if not isinstance(data["categories"], Mapping):
                raise InputTypeError(f"categories must be an object, got {type(data['categories']).__name__}")
            return cls(units, categories=data["categories"], layer=data.get("layer"), quantile=data.get("quantile"),
                       iou_threshold=_number(data.get("iou_threshold", 0.04), "iou_threshold"),
                       n_images=_unit_id(data.get("n_images", 0), "n_images"))
        except (KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"data: malformed {_FORMAT} document ({exc!r})") from exc

    def to_csv_text(self) -> str:
        """NetDissect ``tally.csv`` text: ``unit,category,label,score`` then ``threshold``,
        ``threshold_error`` and one ``iou:<category>:<concept>`` column per concept (units
        0-based, rows in channel order)."""
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
            return write_json(path, self.to_dict(), indent=1)
        if path.suffix == ".csv":
            return write_text(path, self.to_csv_text())
        raise InputError(f"path: expected a .json or .csv file name, got {str(path)!r}")

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, iou_threshold: float = 0.04) -> NeuronLabels:
        """Read labels written by :meth:`save` (``iou_threshold`` is used for CSV only,
        which does not store it)."""
        path = Path(path)
        if path.suffix not in (".json", ".csv"):
            raise InputError(f"path: expected a .json or .csv file name, got {str(path)!r}")
        if not path.is_file():
            raise FileNotFoundError(f"path: no such labels file: {str(path)!r}")
        if path.stat().st_size > _MAX_BYTES:
            raise InputError(f"path: {str(path)!r} is {path.stat().st_size} bytes, over the limit of {_MAX_BYTES}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"path: {str(path)!r} is not UTF-8 text ({exc.reason})") from exc
        if path.suffix == ".json":
            try:
                data = json.loads(text)
            except RecursionError as exc:
                raise InputError(f"path: {str(path)!r} is JSON nested too deeply") from exc
            except json.JSONDecodeError as exc:
                raise InputError(f"path: {str(path)!r} is not valid JSON ({exc})") from exc
            try:
                return cls.from_dict(data)
            except ValueError as exc:
                raise InputError(f"path: {str(path)!r}: {exc}") from exc
        try:
            rows = list(csv.reader(io.StringIO(text, newline="")))
        except csv.Error as exc:
            raise InputError(f"path: {str(path)!r} is not a readable CSV file ({exc})") from exc
        if not rows or rows[0][:4] != ["unit", "category", "label", "score"]:
            raise InputError(f"path: {str(path)!r} is not a tally.csv (header unit,category,label,score)")
        header = rows[0]
        concept_cols = [(i, h.split(":", 2)) for i, h in enumerate(header) if h.startswith("iou:")]
        if any(len(parts) != 3 for _, parts in concept_cols):
            raise InputError(f"path: {str(path)!r}: a column name starting iou: must be iou:<category>:<concept>")
        categories = {parts[2]: parts[1] for _, parts in concept_cols}
        col = {h: i for i, h in enumerate(header)}
        units = []
        for n, row in enumerate(rows[1:], start=2):
            where = f"path: {str(path)!r} line {n}"
            if len(row) != len(header):
                raise InputError(f"{where} has {len(row)} fields, the header {len(header)}")
            try:
                units.append(UnitLabel(
                    _unit_id(row[0], "unit"), row[2], row[1], _number(row[3], "score"),
                    _number(row[col["threshold"]], "threshold") if "threshold" in col else 0.0,
                    _number(row[col["threshold_error"]], "threshold_error") if "threshold_error" in col else 0.0,
                    {parts[2]: _number(row[i], header[i]) for i, parts in concept_cols}))
            except (TypeError, ValueError) as exc:
                raise InputError(f"{where}: {exc}") from exc
        return cls(units, categories=categories, iou_threshold=iou_threshold)


# the largest labels file read (bytes)
_MAX_BYTES = 64 * 1024 * 1024


def _number(value: Any, what: str) -> float:
    """A finite float from a JSON number or CSV field; ValueError naming ``what`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InputError(f"{what} must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise InputError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise InputError(f"{what} must be finite, got {value!r}")
    return number


def _unit_id(value: Any, what: str) -> int:
    """A non-negative int from a JSON number or CSV field; ValueError naming ``what`` otherwise."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise InputError(f"{what} must be a non-negative integer, got {value!r}")
