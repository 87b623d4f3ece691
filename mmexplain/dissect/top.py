"""The images on which chosen units fire hardest (NetDissect's unit report).

:func:`top_activating` runs the model; ``mx.viz.plot_unit_gallery`` draws its
:class:`TopActivations` and never runs a model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .network import ForwardFn, batches, default_forward, model_device, recording, resolve
from ..errors import InputError

__all__ = ["TopActivations", "top_activating"]


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

    Memory is ``len(units) x top`` images, whatever the dataset's length. The model is
    put in eval mode for the pass and restored after, as in :func:`dissect`.

    Args:
        model: the network.
        layer: dotted module name or the module; its output must be (B, K, h, w).
        dataset: iterable of ``(image (3, H, W), {concept: mask})`` (the masks are
            not read), e.g. the dissection data.
        units: the unit indices, one row each.
        top: images per unit.
        batch_size, device, forward, progress: as for :func:`dissect`.

    Returns:
        :class:`TopActivations`: images (U, top, 3, H, W), maps (U, top, h, w),
        scores and indices (U, top). Draw it with ``mx.viz.plot_unit_gallery``.

    Example:
        >>> tops = mx.dissect.top_activating(model, model.default_layer, data, [3, 7], top=4)  # doctest: +SKIP
        >>> tops.images.shape                                                              # doctest: +SKIP
        torch.Size([2, 4, 3, 96, 96])
    """
    if not isinstance(top, int) or top < 1:
        raise InputError(f"top: expected a positive int, got {top!r}")
    units = [int(u) for u in units]
    if not units:
        raise InputError("units: expected at least one unit index")
    module, _ = resolve(model, layer)
    dev = model_device(model, device)
    sel = torch.tensor(units)
    scores = images = maps = indices = None
    offset = 0
    with recording(model, module, forward or default_forward) as run:
        for batch, _ in batches(dataset, batch_size, dev, desc="unit gallery", progress=progress):
            acts = run(batch)  # (B, K, h, w)
            if int(sel.max()) >= acts.shape[1] or int(sel.min()) < 0:
                raise InputError(f"units: indices must lie in [0, {acts.shape[1]}), got {units}")
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
        raise InputError("dataset: no images")
    return TopActivations(units, images.contiguous(), maps.contiguous(), scores, indices)  # type: ignore[union-attr]
