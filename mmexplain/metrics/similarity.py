"""Map similarity for sanity checks: Spearman rank correlation and SSIM."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .grounding import check_map
from ..errors import InputError


def rank(values: Tensor) -> Tensor:
    """Ranks 1..n of a 1-D tensor, ties given their average rank (``scipy.stats.rankdata``)."""
    if not isinstance(values, Tensor) or values.dim() != 1:
        raise InputError(f"values: expected a 1-D tensor, got {getattr(values, 'shape', type(values).__name__)}")
    order = torch.argsort(values, stable=True)
    ordered = values[order]
    _, counts = torch.unique_consecutive(ordered, return_counts=True)
    ends = torch.cumsum(counts, 0).double()  # (u,) last rank of each tie group
    average = ends - (counts.double() - 1) / 2  # (u,)
    out = torch.empty(values.numel(), dtype=torch.float64, device=values.device)
    out[order] = torch.repeat_interleave(average, counts)
    return out


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two maps of the same shape (Pearson of the average ranks).

    A constant map has no ranking: the correlation is NaN (as ``scipy.stats.spearmanr``).
    """
    if not isinstance(a, Tensor) or not isinstance(b, Tensor) or a.shape != b.shape:
        raise InputError(f"a, b: expected two tensors of one shape, got {getattr(a, 'shape', a)} and {getattr(b, 'shape', b)}")
    ra, rb = rank(a.detach().flatten().double()), rank(b.detach().flatten().double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = torch.sqrt((ra**2).sum() * (rb**2).sum())
    if bool(denominator == 0):
        return math.nan
    return float((ra * rb).sum() / denominator)


def ssim(a: Tensor, b: Tensor, *, data_range: float = 1.0, window: int = 7) -> float:
    """Mean structural similarity of two (H, W) maps (Wang et al. 2004).

    SSIM = (2 mu_a mu_b + C1)(2 s_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(s_a^2 + s_b^2 + C2)) per
    ``window`` x ``window`` uniform window, C1 = (0.01 R)^2, C2 = (0.03 R)^2, sample
    covariances; averaged over the windows that lie wholly inside the image -- the
    numbers of ``skimage.metrics.structural_similarity(a, b, data_range=R)``.

    Args:
        a, b: (H, W) maps, each side >= ``window``.
        data_range: R, the value range of the maps (1 for maps in [0, 1]).
        window: odd window side.
    """
    a, b = check_map(a, "a").double(), check_map(b, "b").double()
    if a.shape != b.shape:
        raise InputError(f"b: expected the shape of a {tuple(a.shape)}, got {tuple(b.shape)}")
    if window % 2 == 0 or min(a.shape) < window:
        raise InputError(f"window: expected an odd side <= the map's sides {tuple(a.shape)}, got {window}")
    if not data_range > 0:
        raise InputError(f"data_range: expected a range > 0, got {data_range!r}")
    kernel = torch.full((1, 1, window, window), 1.0 / window**2, dtype=torch.float64, device=a.device)
    stack = torch.stack([a, b, a * a, b * b, a * b])[:, None]  # (5, 1, H, W)
    mu_a, mu_b, aa, bb, ab = F.conv2d(stack, kernel)[:, 0]  # each (H-w+1, W-w+1)
    norm = window**2 / (window**2 - 1)
    var_a, var_b, cov = norm * (aa - mu_a**2), norm * (bb - mu_b**2), norm * (ab - mu_a * mu_b)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())
