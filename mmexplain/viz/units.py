"""Network Dissection unit galleries, like NetDissect's HTML report.

Each row shows one unit: the dataset images on which it fires hardest, the image
dimmed outside the unit's thresholded mask M_k = upsample(A_k) > T_k with the mask's
outline drawn, and the unit's label, category and IoU in the row title.

Example:
    >>> import mmexplain as mx                                                # doctest: +SKIP
    >>> model = mx.zoo.load("classifier")                                     # doctest: +SKIP
    >>> data = mx.dissect.shapeworld_concepts(300)                             # doctest: +SKIP
    >>> labels = mx.dissect(model, model.default_layer, data)                 # doctest: +SKIP
    >>> fig = mx.viz.plot_unit_gallery(labels, model, model.default_layer, data)  # doctest: +SKIP
    >>> mx.viz.save_figure(fig, "units.png")                                  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .core import to_image_array

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..dissect import NeuronLabels

__all__ = ["plot_unit_gallery"]


def plot_unit_gallery(labels: NeuronLabels, model: nn.Module, layer: str | nn.Module,
                      dataset: Iterable[tuple[Tensor, Any]], *, units: Sequence[int] | None = None, top: int = 4,
                      max_units: int = 10, batch_size: int = 32, device: str | torch.device | None = None,
                      forward: Callable[[nn.Module, Tensor], Any] | None = None, dim: float = 0.3,
                      progress: bool = False) -> Figure:
    """Top-activating images per unit with the unit's thresholded mask.

    Args:
        labels: the layer's :class:`~mmexplain.dissect.NeuronLabels` (their thresholds T_k
            draw the masks).
        model: the dissected model.
        layer: the dissected layer (name or module).
        dataset: iterable of ``(image (3, H, W) in [0, 1], anything)``, e.g. the dissection data.
        units: which units, one row each (default: the detectors with the highest IoU,
            or the best units if there are no detectors, at most ``max_units``).
        top: images per unit.
        max_units: rows when ``units`` is None.
        batch_size, device, forward: as for :func:`mmexplain.dissect`.
        dim: brightness of the image outside the mask.
        progress: show a progress bar for the pass over the dataset.

    Returns:
        The figure: ``len(units)`` rows, ``top`` columns.
    """
    from matplotlib.figure import Figure

    from ..dissect import NeuronLabels, top_activating

    if not isinstance(labels, NeuronLabels):
        raise TypeError(f"labels: expected NeuronLabels, got {type(labels).__name__}")
    if not isinstance(max_units, int) or max_units < 1:
        raise ValueError(f"max_units: expected a positive int, got {max_units!r}")
    if units is None:
        chosen = labels.detectors()[:max_units] or labels.top(max_units)
        units = [u.unit for u in chosen]
    units = [int(u) for u in units]
    if not units:
        raise ValueError("units: expected at least one unit")
    for u in units:
        if not 0 <= u < len(labels):
            raise ValueError(f"units: {u} is not a unit of this layer (0..{len(labels) - 1})")
    tops = top_activating(model, layer, dataset, units, top=top, batch_size=batch_size, device=device,
                          forward=forward, progress=progress)
    n_rows, n_cols = len(units), tops.images.shape[1]
    fig = Figure(figsize=(1.9 * max(n_cols, 2), 2.15 * n_rows), layout="constrained")
    axes = np.asarray(fig.subplots(n_rows, n_cols, squeeze=False))
    for row, unit in enumerate(units):
        lab = labels[unit]
        size = tuple(tops.images.shape[-2:])
        up = F.interpolate(tops.maps[row][:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]  # (top, H, W)
        masks = (up > lab.threshold).numpy()  # (top, H, W)
        for col in range(n_cols):
            ax = axes[row, col]
            img = to_image_array(tops.images[row, col])  # (H, W, 3)
            m = masks[col]
            shown = np.where(m[..., None], img, img * dim)
            ax.imshow(shown, interpolation="nearest")
            if m.any() and not m.all():
                ax.contour(m.astype(float), levels=[0.5], colors=["#ffe14d"], linewidths=1.2)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"max {float(tops.scores[row, col]):.3g}", fontsize=7)
        detector = "" if lab.iou > labels.iou_threshold else " (not a detector)"
        axes[row, 0].set_title(f"unit {unit}: {lab.concept} ({lab.category}), IoU {lab.iou:.3f}{detector}",
                               fontsize=9, loc="left")
    fig.suptitle(f"Network Dissection of {labels.layer or 'layer'}: top {n_cols} images per unit, "
                 f"mask = activation > T (top {labels.quantile if labels.quantile is not None else '?'} quantile)",
                 fontsize=9)
    return fig
