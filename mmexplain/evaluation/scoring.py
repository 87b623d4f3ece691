"""Scoring maps against masks: per-item metrics, their tallies, the map-free baselines, tables.

One item is one explained scalar with its ground truth: the referred object's mask,
the other object's mask in a two-object scene (for discrimination) and the box of a
single referred object (for localisation). ``Tally.add`` scores every method's map of
the item and files the values under each of the item's groups ("color", "all", ...).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from .. import metrics

__all__ = ["Tally", "Baselines", "BASELINES", "METRIC_COLUMNS", "fmt", "metric_tables", "ZHANG_TOLERANCE"]

ZHANG_TOLERANCE = 15 / 224  # Zhang et al.'s pointing-game tolerance (15 px at 224 px), as a fraction of the side
CENTER_SIGMA = 0.25
BASELINES = ("uniform", "center", "random")

METRIC_COLUMNS = (("pointing", "pointing game", True),
                  ("pointing_tolerance", "pointing game, 15/224-of-the-side tolerance (Zhang et al.)", True),
                  ("energy_ratio", "energy ratio", False),
                  ("discrimination", "discrimination (2-object scenes)", True),
                  ("localization", "localisation (IoU >= 0.5)", True))


class Tally:
    """Per (group, method) lists of per-item metric values, and per-group item counts."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
        self.counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def count(self, groups: Iterable[str], *, two_objects: bool) -> None:
        """Count one item in each of its groups (once per item, whatever the methods)."""
        for g in groups:
            self.counts[g]["n"] += 1
            self.counts[g]["n_two"] += two_objects

    def add(self, groups: Iterable[str], maps: dict[str, Tensor], mask: Tensor, other: Tensor | None,
            box: tuple[int, int, int, int] | None) -> None:
        """Score each method's map (H, W) of one item and file the values under ``groups``."""
        groups = list(groups)
        for method, m in maps.items():
            tolerance = round(ZHANG_TOLERANCE * max(m.shape))
            tie_aware = method == "uniform"  # a constant map: the expected hit of a random tie-break
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
        """Per group: ``n``, ``n_two`` and per method the mean of each metric (energy ratio over finite values)."""
        out: dict[str, Any] = {}
        for g in self.counts:
            entry: dict[str, Any] = dict(self.counts[g])
            for method, per_metric in self.values.get(g, {}).items():
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


class Baselines:
    """The map-free baselines of one item: uniform and centre prior (fixed), random (fresh from a seeded generator)."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.fixed: dict[tuple[int, int], dict[str, Tensor]] = {}

    def __call__(self, h: int, w: int) -> dict[str, Tensor]:
        if (h, w) not in self.fixed:
            self.fixed[(h, w)] = {"uniform": metrics.uniform_map(h, w), "center": metrics.center_prior(h, w, sigma=CENTER_SIGMA)}
        return self.fixed[(h, w)] | {"random": metrics.random_map(h, w, generator=self.generator)}


def fmt(row: dict[str, float] | None, key: str, percent: bool) -> str:
    """One table cell: ``-`` when the metric is missing or NaN."""
    if row is None or row.get(key) is None or (isinstance(row[key], float) and math.isnan(row[key])):
        return "-"
    return f"{100 * row[key]:.1f}%" if percent else f"{row[key]:.2f}"


def metric_tables(title: str, groups: dict[str, Any], order: Sequence[str], methods: Sequence[str],
                  names: dict[str, str]) -> list[str]:
    """Markdown: one small table per metric, rows = methods (shown by ``names``), columns = groups."""
    present = [g for g in order if g in groups]
    lines = [f"## {title}", ""]
    lines.append("items: " + ", ".join(f"{g} {groups[g]['n']} ({groups[g]['n_two']} in 2-object scenes)" for g in present))
    for key, name, percent in METRIC_COLUMNS:
        lines += ["", f"{name}:", "", "| method | " + " | ".join(present) + " |", "|---|" + "---|" * len(present)]
        for m in methods:
            lines.append(f"| {names.get(m, m)} | " + " | ".join(fmt(groups[g].get(m), key, percent) for g in present) + " |")
    return lines
