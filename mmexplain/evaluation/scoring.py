"""Scoring maps against masks: per-item metrics, their tallies, the map-free baselines, tables.

One item is one explained scalar with its ground truth: the referred object's mask,
the other object's mask in a two-object scene (for discrimination) and the box of a
single referred object (for localisation). ``Tally.add`` scores every method's map of
the item and files the values under each of the item's groups ("color", "all", ...).
"""

from __future__ import annotations

import math
import statistics
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .. import metrics

if TYPE_CHECKING:
    from ..runner import Runner

__all__ = ["Tally", "ModelRun", "Baselines", "BASELINES", "METRIC_COLUMNS", "fmt", "metric_tables", "ZHANG_TOLERANCE"]

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

    def state(self) -> dict[str, Any]:
        """The tallies as plain dicts and lists (picklable: what :meth:`merge` takes from another process)."""
        return {"values": {g: {m: {k: list(v) for k, v in per.items()} for m, per in methods.items()}
                           for g, methods in self.values.items()},
                "counts": {g: dict(c) for g, c in self.counts.items()}}

    def merge(self, state: dict[str, Any]) -> None:
        """Add another tally's :meth:`state` (e.g. another rank's items) to this one.

        The summary does not depend on the order items arrive in: means are
        ``statistics.fmean`` (an exactly rounded ``math.fsum``), medians and counts are
        order-free, so merged shards give exactly the single-process numbers.
        """
        for g, methods in state["values"].items():
            for m, per in methods.items():
                for k, v in per.items():
                    self.values[g][m][k].extend(v)
        for g, c in state["counts"].items():
            for k, v in c.items():
                self.counts[g][k] += v

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


class ModelRun:
    """Tallies of one model over scenes: the items' groups, every method's maps, seconds per method."""

    def __init__(self, methods: list[str], baselines: Baselines) -> None:
        self.methods, self.baselines = methods, baselines
        self.tally, self.by_correct = Tally(), Tally()
        self.seconds: dict[str, float] = defaultdict(float)
        self.items = 0
        self.counters: dict[str, int] = defaultdict(int)  # scene-level counts (exact matches, right words, ...)
        self.autocast: Any = None

    def explain(self, method: str, fn: Any) -> Any:
        start = time.perf_counter()
        with self.autocast():
            out = fn(method)
        self.seconds[method] += time.perf_counter() - start
        return out

    def add(self, key: tuple[int, int], groups: list[str], maps: dict[str, Tensor], mask: Tensor,
            other: Tensor | None, box: Any, correct: bool | None) -> None:
        """File one item; ``key`` = (scene seed, item number in the scene) seeds its random map."""
        h, w = mask.shape
        self.items += 1
        self.tally.count(groups, two_objects=other is not None)
        self.tally.add(groups, maps | self.baselines(h, w, key=key), mask, other, box)
        if correct is not None:
            first = self.methods[0]
            self.by_correct.count(["right" if correct else "wrong"], two_objects=other is not None)
            self.by_correct.add(["right" if correct else "wrong"], {first: maps[first]}, mask, other, box)

    def combine(self, runner: Runner) -> None:
        """Add every other rank's items (all-gathered): afterwards each rank holds the whole dataset's tallies."""
        if not runner.distributed:
            return
        mine = {"tally": self.tally.state(), "by_correct": self.by_correct.state(), "items": self.items,
                "seconds": dict(self.seconds), "counters": dict(self.counters)}
        parts = runner.gather(mine)
        self.tally, self.by_correct, self.items = Tally(), Tally(), 0
        self.seconds, self.counters = defaultdict(float), defaultdict(int)
        for part in parts:
            self.tally.merge(part["tally"])
            self.by_correct.merge(part["by_correct"])
            self.items += part["items"]
            for k, v in part["seconds"].items():
                self.seconds[k] += v
            for k, v in part["counters"].items():
                self.counters[k] += v

    def result(self) -> dict[str, Any]:
        return {"groups": self.tally.summary(), "by_correct": self.by_correct.summary(), "items": self.items,
                "seconds_per_item": {m: self.seconds[m] / max(self.items, 1) for m in self.methods}}


class Baselines:
    """The map-free baselines of one item: uniform and centre prior (fixed), random (seeded per item).

    The random map of an item depends only on ``seed`` and the item's ``key`` (its
    scene seed and its number within the scene), not on which items came before, so
    a dataset split over processes draws the same random maps as one process.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.fixed: dict[tuple[int, int], dict[str, Tensor]] = {}

    def __call__(self, h: int, w: int, *, key: tuple[int, int] = (0, 0)) -> dict[str, Tensor]:
        if (h, w) not in self.fixed:
            self.fixed[(h, w)] = {"uniform": metrics.uniform_map(h, w), "center": metrics.center_prior(h, w, sigma=CENTER_SIGMA)}
        scene, number = key
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + scene) * 1_009 + number)
        return self.fixed[(h, w)] | {"random": metrics.random_map(h, w, generator=generator)}


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
