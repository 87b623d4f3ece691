"""Faithfulness: deletion / insertion (RISE) and ROAD (noisy linear imputation, Rong et al. 2022)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .grounding import check_map, check_mask
from ..errors import InputError


# ----------------------------------------------------------------------------- deletion / insertion


@dataclass
class DeletionInsertion:
    """RISE deletion and insertion curves and their areas.

    Attributes:
        deletion: (steps + 1,) target probability after removing the top i/steps of pixels.
        insertion: (steps + 1,) target probability after inserting the top i/steps of pixels.
        deletion_auc: trapezoidal area under ``deletion`` over [0, 1] (lower is better).
        insertion_auc: area under ``insertion`` (higher is better).
    """

    deletion: Tensor
    insertion: Tensor
    deletion_auc: float
    insertion_auc: float


def _auc(curve: Tensor) -> float:
    """Trapezoidal area of a curve sampled at 0, 1/n, ..., 1 (RISE's ``auc``)."""
    n = curve.numel() - 1
    return float((curve.sum() - curve[0] / 2 - curve[-1] / 2) / n)


def gaussian_blur(image: Tensor, *, kernel: int = 11, sigma: float = 5.0) -> Tensor:
    """Separable Gaussian blur of a (C, H, W) image, edge-replicate padding (RISE's insertion start)."""
    if image.dim() != 3:
        raise InputError(f"image: expected (C, H, W), got shape {tuple(image.shape)}")
    x = torch.arange(kernel, dtype=image.dtype, device=image.device) - (kernel - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()  # (k,)
    c = image.shape[0]
    pad = kernel // 2
    out = F.pad(image[None], (pad, pad, pad, pad), mode="replicate")  # (1, C, H+2p, W+2p)
    out = F.conv2d(out, g.view(1, 1, 1, kernel).expand(c, 1, 1, kernel), groups=c)
    out = F.conv2d(out, g.view(1, 1, kernel, 1).expand(c, 1, kernel, 1), groups=c)
    return out[0]


def deletion_insertion(
    model_fn: Callable[[Tensor], Tensor],
    image: Tensor,
    saliency: Tensor,
    *,
    steps: int = 32,
    removed: Tensor | None = None,
    start: Tensor | None = None,
    batch_size: int = 16,
) -> DeletionInsertion:
    """RISE deletion and insertion (Petsiuk et al. 2018).

    Pixels are ranked by decreasing saliency (ties: row-major order). Deletion replaces
    the top ``i * H * W / steps`` pixels (rounded up) of ``image`` by ``removed``
    (default zeros, "black", as RISE); insertion starts from ``start`` (default a
    Gaussian blur of the image, RISE's 11 px / sigma 5 kernel) and copies in the top
    pixels of the image. A good map makes deletion fall fast (low AUC) and insertion
    rise fast (high AUC).

    Args:
        model_fn: ``images (N, C, H, W) -> (N,)`` probability of the explained target
            (e.g. ``lambda x: model(x).softmax(-1)[:, c]``); called without autograd.
        image: (C, H, W).
        saliency: (H, W), the same size as the image.
        steps: number of steps; the curves have ``steps + 1`` points.
        removed: (C, H, W) values that replace deleted pixels (default zeros).
        start: (C, H, W) image insertion starts from (default the blurred image).
        batch_size: images per ``model_fn`` call.

    Returns:
        :class:`DeletionInsertion` with both curves and their AUCs.
    """
    saliency = check_map(saliency)
    if not isinstance(image, Tensor) or image.dim() != 3:
        raise InputError(f"image: expected a (C, H, W) tensor, got {getattr(image, 'shape', type(image).__name__)}")
    if tuple(image.shape[-2:]) != tuple(saliency.shape):
        raise InputError(f"saliency: expected the image's size {tuple(image.shape[-2:])}, got {tuple(saliency.shape)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps: expected an int >= 1, got {steps!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    removed = torch.zeros_like(image) if removed is None else removed
    start = gaussian_blur(image) if start is None else start
    for name, t in (("removed", removed), ("start", start)):
        if t.shape != image.shape:
            raise InputError(f"{name}: expected the image's shape {tuple(image.shape)}, got {tuple(t.shape)}")
    c, h, w = image.shape
    order = torch.argsort(-saliency.flatten(), stable=True)  # (H*W,) most salient first
    rank = torch.empty_like(order)
    rank[order] = torch.arange(h * w, device=order.device)  # (H*W,) position of each pixel in the order
    counts = [math.ceil(i * h * w / steps) for i in range(steps + 1)]
    changed = torch.stack([rank < k for k in counts]).reshape(steps + 1, 1, h, w)  # (S+1, 1, H, W)
    curves = []
    with torch.no_grad():
        for frm, to in ((image, removed), (start, image)):
            batch = torch.where(changed, to[None], frm[None])  # (S+1, C, H, W)
            probs = torch.cat([model_fn(batch[i:i + batch_size]).reshape(-1) for i in range(0, steps + 1, batch_size)])
            if probs.shape != (steps + 1,):
                raise InputError(f"model_fn: expected one probability per image, got {probs.numel()} for {steps + 1} images")
            curves.append(probs.detach().float())
    return DeletionInsertion(curves[0], curves[1], _auc(curves[0]), _auc(curves[1]))


# ----------------------------------------------------------------------------- ROAD

_NEIGHBOURS = ((1, 0, 1 / 6), (0, 1, 1 / 6), (-1, 0, 1 / 6), (0, -1, 1 / 6),
               (1, 1, 1 / 12), (1, -1, 1 / 12), (-1, 1, 1 / 12), (-1, -1, 1 / 12))  # (dy, dx, weight), Rong et al.


def noisy_linear_imputation(image: Tensor, removed: Tensor, *, noise: float = 0.01,
                            generator: torch.Generator | None = None) -> Tensor:
    """Replace the removed pixels by the weighted mean of their neighbours, plus noise (ROAD).

    Rong et al. 2022: for every removed pixel i, with w_ij = 1/6 for the 4 direct and 1/12
    for the 4 diagonal neighbours j inside the image,

        (sum_j w_ij) x_i - sum_{j removed} w_ij x_j = sum_{j kept} w_ij v_j,

    one sparse linear system over all removed pixels (every channel a right-hand side),
    solved with ``scipy.sparse.linalg.spsolve``; then ``noise * N(0, 1)`` is added to the
    imputed values. A removed region without any kept neighbour would make the system
    singular; a ridge term ``1e-6 (x_i - m)`` (m: the mean of the kept pixels, 0.5 when
    none is kept) fixes it and changes nothing measurable elsewhere. A constant image is
    imputed as the constant, a linear ramp (away from the image border) as the ramp.

    Args:
        image: (C, H, W).
        removed: (H, W) bool, the pixels to impute.
        noise: standard deviation of the added Gaussian noise (Rong et al.: 0.01); 0 for none.
        generator: seeds the noise.

    Returns:
        (C, H, W) on the image's device, equal to ``image`` on the kept pixels.
    """
    import numpy as np
    from scipy import sparse
    from scipy.sparse.linalg import spsolve

    if not isinstance(image, Tensor) or image.dim() != 3:
        raise InputError(f"image: expected a (C, H, W) tensor, got {getattr(image, 'shape', type(image).__name__)}")
    removed = check_mask(removed, image.shape[-2:], "removed", nonempty=False)
    if not noise >= 0:
        raise InputError(f"noise: expected a standard deviation >= 0, got {noise!r}")
    if not bool(removed.any()):
        return image.clone()
    c, h, w = image.shape
    values = image.detach().double().cpu().numpy().reshape(c, h * w).T  # (H*W, C)
    hole = removed.cpu().numpy().reshape(-1)  # (H*W,)
    index = np.full(h * w, -1)
    index[hole] = np.arange(int(hole.sum()))
    ys, xs = np.divmod(np.flatnonzero(hole), w)  # (n,), (n,)
    n = len(ys)
    kept_mean = values[~hole].mean(axis=0) if bool((~hole).any()) else np.full(c, 0.5)  # (C,)
    ridge = 1e-6
    diagonal = np.full(n, ridge)
    rhs = np.tile(ridge * kept_mean, (n, 1))  # (n, C)
    rows, cols, data = [], [], []
    for dy, dx, weight in _NEIGHBOURS:
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        diagonal[inside] += weight
        j = ny[inside] * w + nx[inside]
        i = np.flatnonzero(inside)
        known = ~hole[j]
        rhs[i[known]] += weight * values[j[known]]
        rows.append(i[~known]); cols.append(index[j[~known]]); data.append(np.full(int((~known).sum()), -weight))
    matrix = sparse.csr_matrix((np.concatenate([diagonal, *data]),
                                (np.concatenate([np.arange(n), *rows]), np.concatenate([np.arange(n), *cols]))),
                               shape=(n, n))
    solved = spsolve(matrix.tocsc(), rhs).reshape(n, c)  # (n, C)
    out = image.detach().clone()
    filled = torch.from_numpy(solved.T.copy()).to(image.dtype).to(image.device)  # (C, n)
    if noise > 0:
        filled = filled + noise * torch.randn(filled.shape, generator=generator).to(image.dtype).to(image.device)
    flat = out.reshape(c, h * w)
    flat[:, torch.from_numpy(np.flatnonzero(hole)).to(image.device)] = filled
    return flat.reshape(c, h, w)


@dataclass
class ROAD:
    """ROAD curves (Rong et al. 2022) at the removed fractions ``fractions``.

    Attributes:
        fractions: (S,) share of the pixels removed at each point.
        morf: (S,) target probability, the most relevant pixels removed first (lower is better).
        lerf: (S,) the least relevant pixels removed first (higher is better).
        morf_auc: mean of ``morf`` (the area over the fractions, as Rong et al. report it).
        lerf_auc: mean of ``lerf``.
    """

    fractions: Tensor
    morf: Tensor
    lerf: Tensor
    morf_auc: float
    lerf_auc: float


def road(
    model_fn: Callable[[Tensor], Tensor],
    image: Tensor,
    saliency: Tensor,
    *,
    fractions: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    noise: float = 0.01,
    seed: int = 0,
    batch_size: int = 16,
) -> ROAD:
    """Remove and debias (ROAD): pixels removed by noisy linear imputation, MoRF and LeRF curves.

    Pixels are ranked by decreasing saliency (ties: row-major). At fraction f the top
    (MoRF) or bottom (LeRF) ``ceil(f H W)`` pixels are imputed by
    :func:`noisy_linear_imputation`; ``model_fn`` reads every imputed image.

    Args:
        model_fn: ``images (N, C, H, W) -> (N,)`` probability of the explained target.
        image: (C, H, W).
        saliency: (H, W) at the image's size.
        fractions: removed shares, each in (0, 1].
        noise: imputation noise (Rong et al.: 0.01).
        seed: seeds the noise (the same noise for every map of one image).
        batch_size: images per ``model_fn`` call.

    Returns:
        :class:`ROAD`.
    """
    saliency = check_map(saliency)
    if not isinstance(image, Tensor) or image.dim() != 3:
        raise InputError(f"image: expected a (C, H, W) tensor, got {getattr(image, 'shape', type(image).__name__)}")
    if tuple(image.shape[-2:]) != tuple(saliency.shape):
        raise InputError(f"saliency: expected the image's size {tuple(image.shape[-2:])}, got {tuple(saliency.shape)}")
    fractions = [float(f) for f in fractions]
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise InputError(f"fractions: expected shares in (0, 1], got {fractions!r}")
    h, w = saliency.shape
    order = torch.argsort(-saliency.flatten(), stable=True)  # (H*W,)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(h * w, device=order.device)  # (H*W,)
    generator = torch.Generator().manual_seed(seed)
    curves = []
    for most_first in (True, False):
        images = []
        for f in fractions:
            k = math.ceil(f * h * w)
            chosen = (rank < k) if most_first else (rank >= h * w - k)
            images.append(noisy_linear_imputation(image, chosen.reshape(h, w), noise=noise, generator=generator))
        batch = torch.stack(images)  # (S, C, H, W)
        with torch.no_grad():
            probs = torch.cat([model_fn(batch[i:i + batch_size]).reshape(-1) for i in range(0, len(batch), batch_size)])
        if probs.shape != (len(fractions),):
            raise InputError(f"model_fn: expected one probability per image, got {probs.numel()} for {len(fractions)}")
        curves.append(probs.detach().float())
    return ROAD(torch.tensor(fractions), curves[0], curves[1], float(curves[0].mean()), float(curves[1].mean()))


# ----------------------------------------------------------------------------- map similarity
