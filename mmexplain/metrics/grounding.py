"""Pointing game, energy ratio, discrimination, the argument checks, and the map-free baseline maps."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError, InputTypeError

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1), x1 / y1 exclusive

# ----------------------------------------------------------------------------- checks


def check_map(saliency: object, name: str = "saliency") -> Tensor:
    if not isinstance(saliency, Tensor):
        raise InputTypeError(f"{name}: expected an (H, W) float tensor, got {type(saliency).__name__}")
    if saliency.dim() != 2:
        raise InputError(f"{name}: expected an (H, W) map, got shape {tuple(saliency.shape)}")
    if not saliency.is_floating_point():
        saliency = saliency.float()
    if not bool(torch.isfinite(saliency).all()):
        raise InputError(f"{name}: the map holds NaN or infinite values")
    return saliency


def check_mask(mask: object, shape: torch.Size, name: str = "mask", *, nonempty: bool = True) -> Tensor:
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = f"tensor of dtype {mask.dtype}" if isinstance(mask, Tensor) else type(mask).__name__
        raise InputTypeError(f"{name}: expected an (H, W) bool tensor, got {got}")
    if mask.shape != shape:
        raise InputError(f"{name}: expected shape {tuple(shape)} (the map's), got {tuple(mask.shape)}")
    if nonempty and not bool(mask.any()):
        raise InputError(f"{name}: the mask is empty (no pixel inside)")
    return mask


def check_box(box: object, name: str = "box") -> Box:
    if not isinstance(box, (tuple, list, Tensor)) or len(box) != 4:
        raise InputTypeError(f"{name}: expected (x0, y0, x1, y1), got {box!r}")
    x0, y0, x1, y1 = (int(v) for v in box)
    if x1 <= x0 or y1 <= y0:
        raise InputError(f"{name}: expected x0 < x1 and y0 < y1 (x1, y1 exclusive), got {(x0, y0, x1, y1)}")
    return x0, y0, x1, y1


def _mean_over(saliency: Tensor, mask: Tensor) -> Tensor:
    """Mean of the map over the mask's pixels (a masked sum: boolean indexing is slow on CPU)."""
    return torch.where(mask, saliency, 0).sum() / mask.sum()


def _dilate(mask: Tensor, tolerance: float) -> Tensor:
    """Pixels within ``tolerance`` px (Euclidean, centre to centre) of the mask."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or tolerance < 0:
        raise InputError(f"tolerance: expected a number of pixels >= 0, got {tolerance!r}")
    r = int(math.floor(tolerance))
    if r == 0:
        return mask
    offsets = torch.arange(-r, r + 1, device=mask.device)
    disk = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= tolerance**2).float()  # (2r+1, 2r+1)
    hit = F.conv2d(mask[None, None].float(), disk[None, None], padding=r)  # (1, 1, H, W)
    return hit[0, 0] > 0


# ----------------------------------------------------------------------------- pointing / energy


def pointing_game(saliency: Tensor, mask: Tensor, *, tolerance: float = 0) -> bool:
    """Pointing game: is the map's maximum inside the mask?

    The maximum is the ``argmax`` pixel of the map; when several pixels share the
    maximum, the first in row-major order counts (``torch.argmax``). A constant map
    (all pixels tied, e.g. an all-zero Grad-CAM map) points nowhere and is a miss;
    use :func:`pointing_expected` for the tie-aware expected hit.

    Args:
        saliency: (H, W) map.
        mask: (H, W) bool, the referred object (non-empty).
        tolerance: hit when the maximum lies within this many pixels of the mask
            (Zhang et al. use 15 px at 224 px); default 0, strictly inside.

    Returns:
        True for a hit.
    """
    saliency = check_map(saliency)
    mask = check_mask(mask, saliency.shape)
    if bool(saliency.max() == saliency.min()):
        return False
    index = int(saliency.flatten().argmax())
    return bool(_dilate(mask, tolerance).flatten()[index])


def pointing_expected(saliency: Tensor, mask: Tensor, *, tolerance: float = 0) -> float:
    """The pointing-game hit rate when ties among maximal pixels are broken at random.

    Equals ``float(pointing_game(...))`` when the maximum is unique; for a uniform map it
    is the share of the image covered by the mask (the chance level of the game).

    Returns:
        (number of maximal pixels inside the mask) / (number of maximal pixels).
    """
    saliency = check_map(saliency)
    mask = check_mask(mask, saliency.shape)
    top = saliency == saliency.max()  # (H, W)
    return float((top & _dilate(mask, tolerance)).sum()) / float(top.sum())


def energy_ratio(saliency: Tensor, mask: Tensor) -> float:
    """Mean map value inside the mask / mean map value outside it.

    A uniform map gives 1.0; a map with no energy at all (all zeros) is treated as
    uniform and also gives 1.0. A map with energy inside but none outside gives
    ``inf``.

    Args:
        saliency: (H, W) non-negative map.
        mask: (H, W) bool, neither empty nor covering the whole image.
    """
    saliency = check_map(saliency)
    mask = check_mask(mask, saliency.shape)
    if bool(mask.all()):
        raise InputError("mask: covers the whole image; the energy ratio needs pixels outside it")
    inside = _mean_over(saliency, mask)
    outside = _mean_over(saliency, ~mask)
    if bool(outside == 0):
        return 1.0 if bool(inside == 0) else math.inf
    return float(inside / outside)


def energy_inside(saliency: Tensor, mask: Tensor) -> float:
    """Share of the map's total energy (sum) that falls inside the mask, in [0, 1].

    A map with no energy (all zeros) is treated as uniform: the mask's share of the image.
    """
    saliency = check_map(saliency)
    mask = check_mask(mask, saliency.shape)
    total = saliency.sum()
    if bool(total == 0):
        return float(mask.float().mean())
    return float(torch.where(mask, saliency, 0).sum() / total)


def discrimination(saliency: Tensor, mask_referred: Tensor, mask_other: Tensor) -> bool:
    """Does the referred object get more energy than the other object?

    Energy is the MEAN map value over each object's pixels (objects differ in size; a
    sum would favour the larger one). A tie (e.g. a constant map) is a miss.

    Args:
        saliency: (H, W) map.
        mask_referred: (H, W) bool, the object the word / question refers to.
        mask_other: (H, W) bool, another object of the scene.
    """
    saliency = check_map(saliency)
    mask_referred = check_mask(mask_referred, saliency.shape, "mask_referred")
    mask_other = check_mask(mask_other, saliency.shape, "mask_other")
    return bool(_mean_over(saliency, mask_referred) > _mean_over(saliency, mask_other))


# ----------------------------------------------------------------------------- baselines


def uniform_map(height: int, width: int, *, device: torch.device | str | None = None) -> Tensor:
    """(H, W) all ones: no preference (energy ratio 1.0, pointing at chance)."""
    return torch.ones(height, width, device=device)


def center_prior(height: int, width: int, *, sigma: float = 0.25, device: torch.device | str | None = None) -> Tensor:
    """(H, W) isotropic Gaussian centred on the image, peak 1.0.

    Args:
        sigma: standard deviation as a fraction of the image side (per axis).
    """
    if not sigma > 0:
        raise InputError(f"sigma: expected a fraction of the side > 0, got {sigma!r}")
    y = (torch.arange(height, device=device) + 0.5 - height / 2) / (sigma * height)  # (H,)
    x = (torch.arange(width, device=device) + 0.5 - width / 2) / (sigma * width)  # (W,)
    return torch.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2))


def random_map(height: int, width: int, *, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> Tensor:
    """(H, W) i.i.d. uniform [0, 1) values (pass a seeded ``generator`` for reproducibility)."""
    return torch.rand(height, width, generator=generator, device=device)
