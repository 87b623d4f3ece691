"""Network Dissection unit galleries, like NetDissect's HTML report.

Each row shows one unit: the dataset images on which it fires hardest, the image
dimmed outside the unit's thresholded mask M_k = upsample(A_k) > T_k with the mask's
outline drawn, and the unit's label, category and IoU in the row title.

The gallery only draws: the images and maps come from ``mx.dissect.top_activating``,
which the caller runs.

Example:
    >>> import mmexplain as mx                                                # doctest: +SKIP
    >>> model = mx.zoo.load("classifier")                                     # doctest: +SKIP
    >>> data = mx.world.concept_dataset(300)                                  # doctest: +SKIP
    >>> labels = mx.dissect(model, model.default_layer, data)                 # doctest: +SKIP
    >>> units = [u.unit for u in labels.top(5)]                               # doctest: +SKIP
    >>> tops = mx.dissect.top_activating(model, model.default_layer, data, units)  # doctest: +SKIP
    >>> fig = mx.viz.plot_unit_gallery(tops, labels)                          # doctest: +SKIP
    >>> mx.viz.save_figure(fig, "units.png")                                  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from .core import to_image_array
from ..errors import InputError, InputTypeError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..dissect import NeuronLabels, TopActivations

__all__ = ["plot_unit_gallery"]


def _shape(t: object) -> object:
    return tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__


def plot_unit_gallery(tops: TopActivations, labels: NeuronLabels, *, dim: float = 0.3) -> Figure:
    """Top-activating images per unit with the unit's thresholded mask.

    Args:
        tops: ``mx.dissect.top_activating(model, layer, data, units)`` of the dissected
            layer: images (U, top, 3, H, W) in [0, 1], maps (U, top, h, w), scores (U, top).
        labels: the layer's :class:`~mmexplain.dissect.NeuronLabels`; their thresholds
            T_k draw the masks, their concepts and IoUs title the rows.
        dim: brightness of the image outside the mask, in [0, 1].

    Returns:
        The figure: one row per unit of ``tops.units``, one column per image.

    Raises:
        TypeError: ``tops`` is not a TopActivations or ``labels`` not NeuronLabels.
        ValueError: a unit of ``tops`` is not a unit of ``labels``, or the tensors'
            shapes disagree.
    """
    from matplotlib.figure import Figure

    from ..dissect import NeuronLabels, TopActivations

    if not isinstance(tops, TopActivations):
        raise InputTypeError(f"tops: expected TopActivations (from mx.dissect.top_activating), got {type(tops).__name__}")
    if not isinstance(labels, NeuronLabels):
        raise InputTypeError(f"labels: expected NeuronLabels, got {type(labels).__name__}")
    if isinstance(dim, bool) or not isinstance(dim, (int, float)) or not 0 <= dim <= 1:
        raise InputError(f"dim: expected a brightness in [0, 1], got {dim!r}")
    units = [int(u) for u in tops.units]
    if not units:
        raise InputError("tops: has no units")
    for u in units:
        if not 0 <= u < len(labels):
            raise InputError(f"tops: unit {u} is not a unit of this layer (0..{len(labels) - 1})")
    images, maps, scores = tops.images, tops.maps, tops.scores
    if not isinstance(images, Tensor) or images.dim() != 5 or images.shape[0] != len(units):
        raise InputError(f"tops.images: expected ({len(units)}, top, 3, H, W), got {_shape(images)}")
    n_rows, n_cols = images.shape[:2]
    if not isinstance(maps, Tensor) or maps.dim() != 4 or tuple(maps.shape[:2]) != (n_rows, n_cols):
        raise InputError(f"tops.maps: expected ({n_rows}, {n_cols}, h, w), got {_shape(maps)}")
    if not isinstance(scores, Tensor) or tuple(scores.shape) != (n_rows, n_cols):
        raise InputError(f"tops.scores: expected ({n_rows}, {n_cols}), got {_shape(scores)}")

    fig = Figure(figsize=(1.9 * max(n_cols, 2), 2.15 * n_rows), layout="constrained")
    axes = np.asarray(fig.subplots(n_rows, n_cols, squeeze=False))
    size = tuple(images.shape[-2:])
    for row, unit in enumerate(units):
        lab = labels[unit]
        up = F.interpolate(maps[row][:, None].detach().cpu().float(), size=size, mode="bilinear",
                           align_corners=False)[:, 0]  # (top, H, W)
        masks = (up > lab.threshold).numpy()  # (top, H, W)
        for col in range(n_cols):
            ax = axes[row, col]
            img = to_image_array(images[row, col])  # (H, W, 3)
            m = masks[col]
            shown = np.where(m[..., None], img, img * dim)
            ax.imshow(shown, interpolation="nearest")
            if m.any() and not m.all():
                ax.contour(m.astype(float), levels=[0.5], colors=["#ffe14d"], linewidths=1.2)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"max {float(scores[row, col]):.3g}", fontsize=7)
        detector = "" if lab.iou > labels.iou_threshold else " (not a detector)"
        axes[row, 0].set_title(f"unit {unit}: {lab.concept} ({lab.category}), IoU {lab.iou:.3f}{detector}",
                               fontsize=9, loc="left")
    fig.suptitle(f"Network Dissection of {labels.layer or 'layer'}: top {n_cols} images per unit, "
                 f"mask = activation > T (top {labels.quantile if labels.quantile is not None else '?'} quantile)",
                 fontsize=9)
    return fig
