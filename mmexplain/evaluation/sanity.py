"""Sanity checks for saliency maps (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018).

A map that explains a model must depend on the model's weights. The check re-explains
the same targets on copies of the model whose weights are re-drawn at random:

* cascading: the top layer first, then the next one below as well, ... down to the
  input (stage k has the k top-most parametrised layers randomised);
* independent: one layer at a time, the others trained.

For every stage and method it compares the randomised model's map with the trained
model's: Spearman rank correlation of the signed maps and of their absolute values
(Guided Grad-CAM is signed; the CAM maps are non-negative, so both agree) and SSIM
(7 x 7 window, maps in [0, 1]). A method whose maps survive full cascading
randomisation -- mean |Spearman| above ``threshold`` (0.5) -- is flagged: its map
shows the input, not the model.

Randomisation re-draws every parameter p of a layer from N(0, std(p)^2) (a parameter
whose std is 0 keeps its mean: BatchNorm's unit scales), on a ``copy.deepcopy`` of the
model: the user's model is never touched. Adebayo et al. draw from a truncated normal;
keeping each tensor's scale keeps the activations in range.

Example:
    >>> import mmexplain as mx
    >>> from mmexplain.evaluation.sanity import sanity_check, format_sanity
    >>> report = sanity_check(mx.zoo.load("classifier"), mx.world.split_seeds("test", 4))  # doctest: +SKIP
    >>> print(format_sanity(report))                                                      # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from .. import metrics
from .grounding import method_label
from .items import Item, adapter_of, explain_item, kind_of, resolve_items, split_methods
from ..errors import InputError

__all__ = ["parametrised_layers", "randomise", "randomised_adapter", "sanity_check", "format_sanity",
           "SURVIVES_THRESHOLD"]

SURVIVES_THRESHOLD = 0.5  # mean |Spearman| at full randomisation above this: the map survives


def parametrised_layers(model: nn.Module) -> list[str]:
    """Names of the modules that hold parameters of their own, output side first (reverse registration order)."""
    names = [name for name, m in model.named_modules() if name and any(True for _ in m.parameters(recurse=False))]
    return names[::-1]


def randomise(model: nn.Module, layers: Iterable[str], *, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with the parameters of ``layers`` re-drawn (see the module docstring).

    Args:
        model: left unchanged.
        layers: module names (``parametrised_layers``).
        seed: seeds the draw.

    Returns:
        The randomised copy, in eval mode.
    """
    layers = _check_layers(model, layers)
    clone = copy.deepcopy(model).eval()
    _redraw(clone, layers, seed)
    return clone


def randomised_adapter(adapter: Any, layers: Iterable[str], *, seed: int = 0) -> Any:
    """A deep copy of an adapter (model, wrappers, processor) with the parameters of ``layers`` of
    ``adapter.model`` re-drawn as :func:`randomise` does; the adapter and its model are left unchanged."""
    layers = _check_layers(adapter.model, layers)
    clone = copy.deepcopy(adapter)  # one memo: the wrappers and the model they hold stay one copy
    clone.model.eval()
    _redraw(clone.model, layers, seed)
    return clone


def _check_layers(model: nn.Module, layers: Iterable[str]) -> list[str]:
    modules = dict(model.named_modules())
    layers = list(layers)
    missing = [n for n in layers if n not in modules]
    if missing:
        raise InputError(f"layers: no module {missing[0]!r} in the model")
    return layers


def _redraw(model: nn.Module, layers: list[str], seed: int) -> None:
    """Re-draw, in place, every parameter of ``layers`` from N(0, std(p)^2)."""
    modules = dict(model.named_modules())
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in layers:
            for p in modules[name].parameters(recurse=False):
                std = float(p.float().std()) if p.numel() > 1 else 0.0
                if std == 0.0:
                    continue
                p.copy_((torch.randn(p.shape, generator=generator) * std).to(p))


def _stages(layers: list[str], max_stages: int) -> list[int]:
    """Cut points 1..len(layers), at most ``max_stages`` of them, evenly spread, always the last."""
    n = len(layers)
    if n <= max_stages:
        return list(range(1, n + 1))
    return sorted({max(1, round(n * (k + 1) / max_stages)) for k in range(max_stages)})


def _compare(trained: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    """Spearman (signed, absolute) and SSIM of (k, H, W) maps, averaged over k; a constant map correlates 0."""
    out: dict[str, list[float]] = {"spearman": [], "spearman_abs": [], "ssim": []}
    for a, b in zip(trained, other):
        for key, (x, y) in (("spearman", (a, b)), ("spearman_abs", (a.abs(), b.abs()))):
            r = metrics.spearman(x, y)
            out[key].append(0.0 if math.isnan(r) else r)
        na, nb = (_unit(a.abs()), _unit(b.abs()))
        out["ssim"].append(metrics.ssim(na, nb))
    return {k: statistics.fmean(v) for k, v in out.items()}


def _unit(m: torch.Tensor) -> torch.Tensor:
    span = m.max() - m.min()
    return (m - m.min()) / span if bool(span > 0) else torch.zeros_like(m)


def sanity_check(
    model: Any,
    seeds: Sequence[int] | None = None,
    *,
    items: Sequence[Item] | None = None,
    methods: Sequence[str] = ("gradcam", "guided", "gradcam++", "hirescam"),
    layer: Any = None,
    max_stages: int = 6,
    threshold: float = SURVIVES_THRESHOLD,
    seed: int = 0,
    name: str = "",
) -> dict[str, Any]:
    """Cascading and independent randomisation of ``model``; map similarity per stage and method.

    Args:
        model: an ``mx.zoo`` model, a classifier (EfficientNet-Lite0, a ``ClassifierAdapter``)
            or an ``mx.hf`` adapter (tiny-ved, tiny-vilt, a VLM): anything with an item
            adapter (``mx.adapters.as_item_adapter``). Unchanged: copies are randomised.
        seeds: ShapeWorld scenes to explain (ignored when ``items`` is given).
        items: the items to explain (e.g. real photos), instead of scenes.
        methods: names of ``mx.methods.METHODS``; those the model cannot run are left out,
            with their reason in ``not_applicable``.
        layer: the explained layer (default the model's).
        max_stages: at most this many cascading / independent stages (evenly spread
            over the parametrised layers, the last stage randomising all of them).
        threshold: a method is flagged when its mean |Spearman| (absolute maps) at full
            cascading randomisation exceeds this.
        seed: seeds the random weights.
        name: the model's name in the report.

    Returns:
        ``{"model", "kind", "methods", "not_applicable": {method: reason}, "items", "cascading":
        [{"stage", "layer", "randomised", <method>: {"spearman", "spearman_abs", "ssim"}}],
        "independent": [...], "flagged": [methods], "seconds"}``.
    """
    adapter = adapter_of(model)
    if isinstance(max_stages, bool) or not isinstance(max_stages, int) or max_stages < 1:
        raise InputError(f"max_stages: expected an int >= 1, got {max_stages!r}")
    start = time.perf_counter()
    kind = kind_of(adapter)
    items = resolve_items(adapter, kind, items, seeds)
    methods, reasons = split_methods(adapter, methods)
    layers = parametrised_layers(adapter.model)
    trained = {m: [explain_item(adapter, it, m, layer=layer, signed=True).maps for it in items] for m in methods}

    def stage_row(copy: Any) -> dict[str, Any]:
        row = {}
        for m in methods:
            values = [_compare(t, explain_item(copy, it, m, layer=layer, signed=True).maps)
                      for t, it in zip(trained[m], items)]
            row[m] = {k: statistics.fmean(v[k] for v in values) for k in values[0]}
        return row

    cascading, independent = [], []
    for cut in _stages(layers, max_stages):
        cascading.append({"stage": cut, "layer": layers[cut - 1], "randomised": cut,
                          **stage_row(randomised_adapter(adapter, layers[:cut], seed=seed))})
        independent.append({"stage": cut, "layer": layers[cut - 1], "randomised": 1,
                            **stage_row(randomised_adapter(adapter, [layers[cut - 1]], seed=seed))})
    last = cascading[-1]
    flagged = [m for m in methods if abs(last[m]["spearman_abs"]) > threshold]
    return {"model": name or type(model).__name__, "kind": kind, "methods": methods, "not_applicable": reasons,
            "method_names": {m: method_label(m) for m in methods}, "items": len(items),
            "layers": len(layers), "threshold": threshold, "cascading": cascading, "independent": independent,
            "flagged": flagged, "seconds": time.perf_counter() - start}


def format_sanity(report: dict[str, Any]) -> str:
    """Markdown: per randomisation mode a table of Spearman (abs) / SSIM per stage and method."""
    methods = report["methods"]
    lines = [f"Sanity check of {report['model']} ({report['kind']}, {report['items']} items, "
             f"{report['layers']} parametrised layers); {report['seconds']:.0f} s.",
             "Cells: Spearman of the signed maps / of |maps| / SSIM against the trained model's maps "
             "(1 = unchanged; a map that explains the model falls towards 0).", ""]
    for mode in ("cascading", "independent"):
        what = "top k layers randomised" if mode == "cascading" else "only this layer randomised"
        lines += [f"## {mode} randomisation ({what})", "",
                  "| k | layer | " + " | ".join(method_label(m) for m in methods) + " |",
                  "|---|---|" + "---|" * len(methods)]
        for row in report[mode]:
            cells = [f"{row[m]['spearman']:.2f} / {row[m]['spearman_abs']:.2f} / {row[m]['ssim']:.2f}" for m in methods]
            lines.append(f"| {row['stage']} | {row['layer']} | " + " | ".join(cells) + " |")
        lines.append("")
    for m, reason in report.get("not_applicable", {}).items():
        lines.append(f"{method_label(m)}: not applicable ({reason}).")
    if report["flagged"]:
        lines.append("Maps that survive full randomisation (mean |Spearman| > "
                     f"{report['threshold']}): " + ", ".join(method_label(m) for m in report["flagged"]))
    else:
        lines.append(f"No method's maps survive full randomisation (every mean |Spearman| <= {report['threshold']}).")
    return "\n".join(lines)
