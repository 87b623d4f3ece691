"""Faithfulness: does removing what a map marks change the explained scalar? Deletion / insertion and ROAD.

* Deletion / insertion (Petsiuk et al., "RISE", BMVC 2018; :func:`mmexplain.metrics.deletion_insertion`):
  pixels removed to black (deletion AUC, lower is better) or inserted into a blurred
  image (insertion AUC, higher is better) in the map's order.
* ROAD (Rong et al., ICML 2022; :func:`mmexplain.metrics.road`): pixels removed by noisy
  linear imputation, most relevant first (MoRF, lower is better) and least relevant
  first (LeRF, higher is better). Black pixels push a real photo off the data the model
  has seen, so deletion can fall for any map; imputation keeps the image in range.

Per item -- a classifier's top class, every content word of a caption (teacher-forced,
the word's probability), the answer of a question -- every method's map and two
baselines (a seeded random map and the centre prior) are scored the same way.

Example:
    >>> import mmexplain as mx
    >>> from mmexplain.evaluation.faithfulness import faithfulness, format_faithfulness
    >>> report = faithfulness(mx.zoo.load("classifier"), mx.world.split_seeds("test", 5))  # doctest: +SKIP
    >>> print(format_faithfulness(report))                                                # doctest: +SKIP
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch

from .. import metrics
from .grounding import method_label
from .items import Item, adapter_of, explain_item, kind_of, resolve_items, split_methods

__all__ = ["faithfulness", "format_faithfulness", "FAITHFULNESS_BASELINES", "COLUMNS"]

FAITHFULNESS_BASELINES = ("random", "center")
COLUMNS = (("deletion_auc", "deletion AUC (lower is better)"), ("insertion_auc", "insertion AUC (higher is better)"),
           ("road_morf", "ROAD MoRF (lower is better)"), ("road_lerf", "ROAD LeRF (higher is better)"))


def faithfulness(
    model: Any,
    seeds: Sequence[int] | None = None,
    *,
    items: Sequence[Item] | None = None,
    methods: Sequence[str] = ("gradcam", "guided", "gradcam++", "hirescam"),
    layer: Any = None,
    steps: int = 16,
    fractions: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
    seed: int = 0,
    name: str = "",
) -> dict[str, Any]:
    """Deletion, insertion and ROAD AUCs per method and baseline, averaged over the items' targets.

    Args:
        model: an ``mx.zoo`` model, a classifier or an ``mx.hf`` adapter (tiny-ved,
            tiny-vilt, a VLM): anything with an item adapter (``mx.adapters.as_item_adapter``),
            whose ``probability`` reads each perturbed image.
        seeds: ShapeWorld scenes (ignored when ``items`` is given).
        items: the items (e.g. real photos) instead of scenes.
        methods: names of ``mx.methods.METHODS`` (those the model cannot run are left out,
            with their reason in ``not_applicable``).
        layer: the explained layer (default the model's).
        steps: deletion / insertion steps.
        fractions: ROAD's removed shares.
        seed: seeds the random baseline and the imputation noise.
        name: the model's name in the report.

    Returns:
        ``{"model", "kind", "targets", "methods", "not_applicable": {method: reason}, "rows":
        {method: {column: mean}}, "seconds"}``.
    """
    adapter = adapter_of(model)
    start = time.perf_counter()
    kind = kind_of(adapter)
    items = resolve_items(adapter, kind, items, seeds)
    methods, reasons = split_methods(adapter, methods)
    generator = torch.Generator().manual_seed(seed)
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    targets = 0
    for item in items:
        pixels = adapter.display_image(adapter.load_image(item.image)).float().cpu()  # (3, H, W), what maps cover
        maps = {m: explain_item(adapter, item, m, layer=layer).maps for m in methods}  # each (k, H, W)
        h, w = pixels.shape[-2:]
        for t in range(len(item.labels)):
            targets += 1
            fn = (lambda item, t: lambda x: adapter.probability(x, item, t).cpu())(item, t)  # (N, 3, H, W) -> (N,)
            chosen = {m: v[t] for m, v in maps.items()}
            chosen["random"] = metrics.random_map(h, w, generator=generator)
            chosen["center"] = metrics.center_prior(h, w)
            for m, saliency in chosen.items():
                di = metrics.deletion_insertion(fn, pixels, saliency.float(), steps=steps)
                rd = metrics.road(fn, pixels, saliency.float(), fractions=fractions, seed=seed + targets)
                for key, v in (("deletion_auc", di.deletion_auc), ("insertion_auc", di.insertion_auc),
                               ("road_morf", rd.morf_auc), ("road_lerf", rd.lerf_auc)):
                    values[m][key].append(v)
    rows = {m: {k: statistics.fmean(v) for k, v in per.items()} for m, per in values.items()}
    return {"model": name or type(model).__name__, "kind": kind, "targets": targets,
            "methods": [*methods, *FAITHFULNESS_BASELINES], "not_applicable": reasons, "rows": rows,
            "seconds": time.perf_counter() - start}


def format_faithfulness(report: dict[str, Any]) -> str:
    """Markdown: one row per method and baseline, one column per AUC."""
    lines = [f"Faithfulness of {report['model']} ({report['kind']}, {report['targets']} explained targets); "
             f"{report['seconds']:.0f} s. Deletion: black pixels; insertion: into a blurred image; "
             "ROAD: noisy linear imputation (Rong et al. 2022).", "",
             "| method | " + " | ".join(name for _, name in COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for m in report["methods"]:
        row = report["rows"][m]
        lines.append(f"| {method_label(m)} | " + " | ".join(f"{row[k]:.3f}" for k, _ in COLUMNS) + " |")
    for m, reason in report.get("not_applicable", {}).items():
        lines.append(f"| {method_label(m)} | not applicable: {reason} |" + " |" * (len(COLUMNS) - 1))
    return "\n".join(lines)
