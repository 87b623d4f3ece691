"""Weakly-supervised localisation (Grad-CAM paper, Sec. 4.1): 15% threshold, largest segment, box IoU."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .grounding import Box, check_box, check_map
from ..errors import InputError, InputTypeError


# ----------------------------------------------------------------------------- localisation


def connected_components(mask: Tensor, *, backend: str = "auto") -> Tensor:
    """4-connected components of a bool mask, numbered as ``scipy.ndimage.label`` numbers them.

    Args:
        mask: (H, W) bool.
        backend: ``"scipy"`` (``scipy.ndimage.label``, fast), ``"torch"`` (pure torch:
            labels spread by repeated 4-neighbour maximum with pointer jumping, then
            renumbered 1..n by each segment's first pixel in row-major order; slow on
            large segments, ~10-100 ms at 96 x 96), or ``"auto"``: scipy when it is
            installed (it is in the ``test`` extra), else torch.

    Returns:
        (H, W) long on the mask's device: 0 on background, 1..n on the n segments.
    """
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.dim() != 2:
        got = f"{mask.dtype} tensor of shape {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
        raise InputTypeError(f"mask: expected an (H, W) bool tensor, got {got}")
    if backend not in ("auto", "scipy", "torch"):
        raise InputError(f"backend: expected 'auto', 'scipy' or 'torch', got {backend!r}")
    if backend != "torch":
        try:
            from scipy import ndimage
        except ImportError:
            if backend == "scipy":
                raise
        else:
            labels, _ = ndimage.label(mask.cpu().numpy())
            return torch.from_numpy(labels).long().to(mask.device)
    h, w = mask.shape
    labels = (torch.arange(1, h * w + 1, device=mask.device) * mask.flatten()).reshape(h, w)  # (H, W) pixel id + 1
    while True:
        padded = F.pad(labels, (1, 1, 1, 1))  # (H+2, W+2), 0 outside
        new = torch.stack([
            padded[1:-1, 1:-1], padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:],
        ]).amax(dim=0) * mask  # (H, W) largest id among the 4-neighbours inside the mask
        # pointer jumping: a label is the id of a pixel of the same segment, whose label is >= it
        flat = new.flatten()
        new = torch.where(mask, flat[(new - 1).clamp(min=0)], new)
        if torch.equal(new, labels):
            break
        labels = new
    ids = labels[mask]  # row-major order
    if ids.numel() == 0:
        return labels
    unique, first = _first_occurrence(ids)
    order = unique[first.argsort()]  # segment ids sorted by first pixel
    renumber = torch.zeros(h * w + 1, dtype=torch.long, device=mask.device)
    renumber[order] = torch.arange(1, len(order) + 1, device=mask.device)
    return renumber[labels]


def _first_occurrence(ids: Tensor) -> tuple[Tensor, Tensor]:
    """Unique values of a 1-D tensor and the index where each first occurs."""
    unique, inverse = torch.unique(ids, return_inverse=True)
    first = torch.full((len(unique),), ids.numel(), dtype=torch.long, device=ids.device)
    first.scatter_reduce_(0, inverse, torch.arange(ids.numel(), device=ids.device), reduce="amin")
    return unique, first


def largest_segment_box(saliency: Tensor, *, threshold: float = 0.15) -> Box | None:
    """Box of the largest connected segment of ``saliency >= threshold * max`` (Grad-CAM Sec. 4.1).

    Ties between equally large segments go to the one whose first pixel comes first
    (row-major). A map whose maximum is <= 0 has no segment.

    Args:
        saliency: (H, W) non-negative map.
        threshold: fraction of the map's maximum (the paper uses 0.15).

    Returns:
        (x0, y0, x1, y1) with x1 / y1 exclusive, or None.
    """
    saliency = check_map(saliency)
    if not 0 < threshold <= 1:
        raise InputError(f"threshold: expected a fraction of the maximum in (0, 1], got {threshold!r}")
    peak = saliency.max()
    if bool(peak <= 0):
        return None
    labels = connected_components(saliency >= threshold * peak)  # (H, W)
    sizes = torch.bincount(labels.flatten())[1:]  # (n,) segment sizes
    best = int(sizes.argmax()) + 1  # argmax returns the first (lowest label) on ties
    ys, xs = torch.nonzero(labels == best, as_tuple=True)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def box_iou(a: Sequence[int], b: Sequence[int]) -> float:
    """Intersection over union of two pixel boxes (x0, y0, x1, y1), x1 / y1 exclusive."""
    ax0, ay0, ax1, ay1 = check_box(a, "a")
    bx0, by0, bx1, by1 = check_box(b, "b")
    iw = max(0, min(ax1, bx1) - max(ax0, bx0))
    ih = max(0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union


def localization(saliency: Tensor, box: Sequence[int], *, threshold: float = 0.15, iou: float = 0.5) -> bool:
    """Weakly-supervised localisation hit: IoU(largest-segment box, ground-truth box) >= ``iou``.

    A map with no segment (maximum <= 0) is a miss.
    """
    found = largest_segment_box(saliency, threshold=threshold)
    return found is not None and box_iou(found, box) >= iou
