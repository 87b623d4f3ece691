"""Grounding and faithfulness metrics for saliency maps: tensors in, tensors (or plain numbers) out.

Every function takes one map ``(H, W)`` (any non-negative float map: a Grad-CAM map in
[0, 1], ``|guided gradient|`` summed over channels, a baseline map) and ground truth at
the same resolution: a bool mask ``(H, W)`` or a pixel box ``(x0, y0, x1, y1)`` with
x1/y1 exclusive (as ``mx.world.Obj.box``).

Protocols (see DESIGN.md, "Protocols"):

* Pointing game (Zhang et al., "Top-down Neural Attention by Excitation Backprop",
  ECCV 2016): a hit when the map's maximum lies inside the referred object's mask,
  optionally with a tolerance of ``tolerance`` pixels (the paper uses 15 px on
  ~224 px images; the default here is 0, i.e. exactly inside).
* Energy ratio (Grad-CAM paper, Sec. 8 / captioning vs DenseCap boxes): mean map inside
  the mask / mean map outside; a uniform map gives 1.0.
* Discrimination: more energy (mean map value) inside the referred object than inside
  another object of the scene.
* Weakly-supervised localisation (Grad-CAM paper, Sec. 4.1): binarise at 15% of the
  map's maximum, box the largest connected segment, a hit when IoU >= 0.5 with the
  ground-truth box.
* Deletion / insertion (Petsiuk et al., "RISE", BMVC 2018): remove (or insert) pixels
  in order of decreasing saliency and take the area under the curve of the target's
  probability.
* ROAD (Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution
  Methods", ICML 2022): remove pixels by noisy linear imputation (each removed pixel is
  the weighted mean of its 8 neighbours, solved jointly as a sparse linear system, plus
  Gaussian noise) so that the perturbed image stays close to the data, and read the
  target's probability most-relevant-first (MoRF, lower is better) and
  least-relevant-first (LeRF, higher is better).
* Map similarity for sanity checks (Adebayo et al., "Sanity Checks for Saliency Maps",
  NeurIPS 2018): Spearman rank correlation (average ranks for ties, as
  ``scipy.stats.spearmanr``) and SSIM (Wang et al. 2004, 7 x 7 uniform window, as
  ``skimage.metrics.structural_similarity``).

Baseline maps: :func:`uniform_map`, :func:`center_prior`, :func:`random_map`.

Example:
    >>> import torch
    >>> from mmexplain import metrics
    >>> mask = torch.zeros(4, 4, dtype=torch.bool); mask[:2, :2] = True
    >>> m = torch.zeros(4, 4); m[0, 1] = 1.0
    >>> metrics.pointing_game(m, mask), metrics.energy_inside(m, mask)
    (True, 1.0)
    >>> metrics.energy_ratio(metrics.uniform_map(4, 4), mask)
    1.0
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "pointing_game",
    "pointing_expected",
    "energy_ratio",
    "energy_inside",
    "discrimination",
    "connected_components",
    "largest_segment_box",
    "box_iou",
    "localization",
    "DeletionInsertion",
    "deletion_insertion",
    "gaussian_blur",
    "noisy_linear_imputation",
    "ROAD",
    "road",
    "rank",
    "spearman",
    "ssim",
    "uniform_map",
    "center_prior",
    "random_map",
]

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1), x1 / y1 exclusive


# ----------------------------------------------------------------------------- checks


def _check_map(saliency: object, name: str = "saliency") -> Tensor:
    if not isinstance(saliency, Tensor):
        raise TypeError(f"{name}: expected an (H, W) float tensor, got {type(saliency).__name__}")
    if saliency.dim() != 2:
        raise ValueError(f"{name}: expected an (H, W) map, got shape {tuple(saliency.shape)}")
    if not saliency.is_floating_point():
        saliency = saliency.float()
    if not bool(torch.isfinite(saliency).all()):
        raise ValueError(f"{name}: the map holds NaN or infinite values")
    return saliency


def _check_mask(mask: object, shape: torch.Size, name: str = "mask", *, nonempty: bool = True) -> Tensor:
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = f"tensor of dtype {mask.dtype}" if isinstance(mask, Tensor) else type(mask).__name__
        raise TypeError(f"{name}: expected an (H, W) bool tensor, got {got}")
    if mask.shape != shape:
        raise ValueError(f"{name}: expected shape {tuple(shape)} (the map's), got {tuple(mask.shape)}")
    if nonempty and not bool(mask.any()):
        raise ValueError(f"{name}: the mask is empty (no pixel inside)")
    return mask


def _check_box(box: object, name: str = "box") -> Box:
    if not isinstance(box, (tuple, list, Tensor)) or len(box) != 4:
        raise TypeError(f"{name}: expected (x0, y0, x1, y1), got {box!r}")
    x0, y0, x1, y1 = (int(v) for v in box)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"{name}: expected x0 < x1 and y0 < y1 (x1, y1 exclusive), got {(x0, y0, x1, y1)}")
    return x0, y0, x1, y1


def _mean_over(saliency: Tensor, mask: Tensor) -> Tensor:
    """Mean of the map over the mask's pixels (a masked sum: boolean indexing is slow on CPU)."""
    return torch.where(mask, saliency, 0).sum() / mask.sum()


def _dilate(mask: Tensor, tolerance: float) -> Tensor:
    """Pixels within ``tolerance`` px (Euclidean, centre to centre) of the mask."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or tolerance < 0:
        raise ValueError(f"tolerance: expected a number of pixels >= 0, got {tolerance!r}")
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
    saliency = _check_map(saliency)
    mask = _check_mask(mask, saliency.shape)
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
    saliency = _check_map(saliency)
    mask = _check_mask(mask, saliency.shape)
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
    saliency = _check_map(saliency)
    mask = _check_mask(mask, saliency.shape)
    if bool(mask.all()):
        raise ValueError("mask: covers the whole image; the energy ratio needs pixels outside it")
    inside = _mean_over(saliency, mask)
    outside = _mean_over(saliency, ~mask)
    if bool(outside == 0):
        return 1.0 if bool(inside == 0) else math.inf
    return float(inside / outside)


def energy_inside(saliency: Tensor, mask: Tensor) -> float:
    """Share of the map's total energy (sum) that falls inside the mask, in [0, 1].

    A map with no energy (all zeros) is treated as uniform: the mask's share of the image.
    """
    saliency = _check_map(saliency)
    mask = _check_mask(mask, saliency.shape)
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
    saliency = _check_map(saliency)
    mask_referred = _check_mask(mask_referred, saliency.shape, "mask_referred")
    mask_other = _check_mask(mask_other, saliency.shape, "mask_other")
    return bool(_mean_over(saliency, mask_referred) > _mean_over(saliency, mask_other))


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
        raise TypeError(f"mask: expected an (H, W) bool tensor, got {got}")
    if backend not in ("auto", "scipy", "torch"):
        raise ValueError(f"backend: expected 'auto', 'scipy' or 'torch', got {backend!r}")
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
    saliency = _check_map(saliency)
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold: expected a fraction of the maximum in (0, 1], got {threshold!r}")
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
    ax0, ay0, ax1, ay1 = _check_box(a, "a")
    bx0, by0, bx1, by1 = _check_box(b, "b")
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
        raise ValueError(f"image: expected (C, H, W), got shape {tuple(image.shape)}")
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
    saliency = _check_map(saliency)
    if not isinstance(image, Tensor) or image.dim() != 3:
        raise ValueError(f"image: expected a (C, H, W) tensor, got {getattr(image, 'shape', type(image).__name__)}")
    if tuple(image.shape[-2:]) != tuple(saliency.shape):
        raise ValueError(f"saliency: expected the image's size {tuple(image.shape[-2:])}, got {tuple(saliency.shape)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected an int >= 1, got {steps!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    removed = torch.zeros_like(image) if removed is None else removed
    start = gaussian_blur(image) if start is None else start
    for name, t in (("removed", removed), ("start", start)):
        if t.shape != image.shape:
            raise ValueError(f"{name}: expected the image's shape {tuple(image.shape)}, got {tuple(t.shape)}")
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
                raise ValueError(f"model_fn: expected one probability per image, got {probs.numel()} for {steps + 1} images")
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
        raise ValueError(f"image: expected a (C, H, W) tensor, got {getattr(image, 'shape', type(image).__name__)}")
    removed = _check_mask(removed, image.shape[-2:], "removed", nonempty=False)
    if not noise >= 0:
        raise ValueError(f"noise: expected a standard deviation >= 0, got {noise!r}")
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
    saliency = _check_map(saliency)
    if not isinstance(image, Tensor) or image.dim() != 3:
        raise ValueError(f"image: expected a (C, H, W) tensor, got {getattr(image, 'shape', type(image).__name__)}")
    if tuple(image.shape[-2:]) != tuple(saliency.shape):
        raise ValueError(f"saliency: expected the image's size {tuple(image.shape[-2:])}, got {tuple(saliency.shape)}")
    fractions = [float(f) for f in fractions]
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise ValueError(f"fractions: expected shares in (0, 1], got {fractions!r}")
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
            raise ValueError(f"model_fn: expected one probability per image, got {probs.numel()} for {len(fractions)}")
        curves.append(probs.detach().float())
    return ROAD(torch.tensor(fractions), curves[0], curves[1], float(curves[0].mean()), float(curves[1].mean()))


# ----------------------------------------------------------------------------- map similarity


def rank(values: Tensor) -> Tensor:
    """Ranks 1..n of a 1-D tensor, ties given their average rank (``scipy.stats.rankdata``)."""
    if not isinstance(values, Tensor) or values.dim() != 1:
        raise ValueError(f"values: expected a 1-D tensor, got {getattr(values, 'shape', type(values).__name__)}")
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
        raise ValueError(f"a, b: expected two tensors of one shape, got {getattr(a, 'shape', a)} and {getattr(b, 'shape', b)}")
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
    a, b = _check_map(a, "a").double(), _check_map(b, "b").double()
    if a.shape != b.shape:
        raise ValueError(f"b: expected the shape of a {tuple(a.shape)}, got {tuple(b.shape)}")
    if window % 2 == 0 or min(a.shape) < window:
        raise ValueError(f"window: expected an odd side <= the map's sides {tuple(a.shape)}, got {window}")
    if not data_range > 0:
        raise ValueError(f"data_range: expected a range > 0, got {data_range!r}")
    kernel = torch.full((1, 1, window, window), 1.0 / window**2, dtype=torch.float64, device=a.device)
    stack = torch.stack([a, b, a * a, b * b, a * b])[:, None]  # (5, 1, H, W)
    mu_a, mu_b, aa, bb, ab = F.conv2d(stack, kernel)[:, 0]  # each (H-w+1, W-w+1)
    norm = window**2 / (window**2 - 1)
    var_a, var_b, cov = norm * (aa - mu_a**2), norm * (bb - mu_b**2), norm * (ab - mu_a * mu_b)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


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
        raise ValueError(f"sigma: expected a fraction of the side > 0, got {sigma!r}")
    y = (torch.arange(height, device=device) + 0.5 - height / 2) / (sigma * height)  # (H,)
    x = (torch.arange(width, device=device) + 0.5 - width / 2) / (sigma * width)  # (W,)
    return torch.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2))


def random_map(height: int, width: int, *, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> Tensor:
    """(H, W) i.i.d. uniform [0, 1) values (pass a seeded ``generator`` for reproducibility)."""
    return torch.rand(height, width, generator=generator, device=device)
