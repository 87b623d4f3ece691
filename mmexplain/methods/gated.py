r"""Gradient x input on the pixels, gated by a perturbation map: kept where hiding the region costs the score.

``occlusion-gradxinput`` and ``rise-gradxinput`` fuse a pixel-resolution gradient map with a
coarse perturbation map, as Guided Grad-CAM fuses guided backprop with Grad-CAM (Selvaraju et
al., Sec. 3). For a target y, the image tensor x the model reads, and the perturbation map D
(occlusion's score drops on its window grid, or RISE's map),

.. math:: \mathrm{pre}_{ij} = \Big(\sum_c x_{cij}\,\partial y / \partial x_{cij}\Big)\,
          g_{ij}^{\gamma},\qquad
          g = \mathrm{up}\big(\mathrm{relu}(D)\big) / \max \mathrm{up}\big(\mathrm{relu}(D)\big)

and ``raw`` = its ReLU smoothed by the Gaussian of :class:`PixelGradientXInput`. The first-order
product ranks highly a region whose local change would move y but whose removal does not (on
the tiny VLMs, a second object when the question asks about the first); the gate, read from the
removal itself, lowers such regions, and the product keeps the gradient's resolution.
``gamma`` < 1 weighs the gate less than the fine map (0.25 by default: chosen on validation
scenes of the tiny VLMs against 0.5 and 1, see README; RISE's gate keeps it). Costs the
perturbation method's forwards (one per window or mask, batched) plus one forward and one
batched backward.
"""

from __future__ import annotations

import math
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from .base import CAMResult, check_size, check_targets, upsample_and_normalize
from .input_gradient import PixelGradientXInput
from .occlusion import Occlusion
from .pictures import PictureInputs
from .rise import RISE
from ..errors import InputError

__all__ = ["OcclusionGradientXInput", "RISEGradientXInput", "occlusion_gate"]


def occlusion_gate(drops: Tensor, size: tuple[int, int], gamma: float) -> Tensor:
    """``(..., gh, gw)`` perturbation map -> ``(..., H, W)`` gate in [0, 1]: ReLU, bilinear up, over its max, ^gamma.

    ``drops``: occlusion's score drops, or RISE's map (any resolution). A map that is <= 0
    everywhere (no region's removal lowers the score) gates nothing away: all ones.
    """
    up = F.interpolate(F.relu(drops).reshape(-1, 1, *drops.shape[-2:]).float(), size=size, mode="bilinear",
                       align_corners=False)[:, 0]  # (M, H, W)
    top = up.amax(dim=(-2, -1), keepdim=True)
    gate = (up / top.clamp(min=1e-30)).where(top > 0, up.new_ones(()))
    return gate.pow(gamma).reshape(*drops.shape[:-2], *size)


def _check_gamma(gamma: Any) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not math.isfinite(gamma) or gamma <= 0:
        raise InputError(f"gamma: expected a finite number > 0 (the gate's exponent), got {gamma!r}")
    return float(gamma)


class _Gated:
    """The fusion, over a perturbation method (next in the MRO) whose ``__call__`` gives the coarse map."""

    def __init__(self, model: nn.Module, layer: Any, *, reshape: Any, sigma: float, gamma: float,
                 **perturbation: Any) -> None:
        gamma = _check_gamma(gamma)
        super().__init__(model, layer, reshape=reshape, **perturbation)
        self.gradient = PixelGradientXInput(model, reshape=reshape, sigma=sigma)
        self.gamma = gamma

    def positive(self, pre: Tensor) -> Tensor:
        """``(..., H, W)`` signed maps -> ``raw``: their ReLU smoothed by the gradient map's Gaussian."""
        return self.gradient.positive(pre)

    def __call__(self, inputs: Any, targets: Any, *, size: tuple[int, int] | None = None) -> CAMResult:
        many, targets = check_targets(targets)
        size = None if size is None else check_size(size)
        coarse = super().__call__(inputs, targets).pre_relu  # (N, B, gh, gw)
        plain = inputs.model_inputs() if isinstance(inputs, PictureInputs) else inputs
        fine = self.gradient(plain, targets)  # pre_relu (N, B, H, W) at the model image's resolution
        gate = occlusion_gate(coarse, tuple(fine.pre_relu.shape[-2:]), self.gamma)  # (N, B, H, W)
        pre = fine.pre_relu * gate
        raw = self.positive(pre)
        maps = upsample_and_normalize(raw, tuple(pre.shape[-2:]) if size is None else size)
        res = CAMResult(maps, raw, pre, fine.weights, fine.scores, fine.activations, fine.output, many=True)
        return res if many else res[0]


class OcclusionGradientXInput(_Gated, Occlusion):
    """``OcclusionGradientXInput(model)(inputs, targets)``: pixel gradient x input times the occlusion gate.

    Args:
        model: any ``nn.Module`` (left as found).
        layer: unused (the registry passes none); kept for the perturbation base.
        reshape: a VLM adapter's grid (``adapter.reshape_for(pixels)``), as for :class:`PixelGradientXInput`.
        sigma: the Gaussian of the gradient map, in pixels of the model's image (0: none).
        gamma: the gate's exponent (> 0; 1: the plain product).
        window, stride, baseline, batch_size: occlusion's, as for :class:`Occlusion`.

    ``inputs``: the model's inputs, or on a VLM the adapter's ``PictureInputs`` (occlusion
    masks the picture; the gradient is taken at the processed image tensor). The result:
    ``pre_relu`` (N, B, H, W) the signed gradient x input times the gate, at the model image's
    resolution; ``raw`` its ReLU smoothed; ``maps`` ``raw`` upsampled to ``size`` and min-max
    normalised; ``weights`` (N, B, 0); ``activations`` the image laid on the picture.

    Example:
        >>> import torch
        >>> from mmexplain.targets import ClassLogit
        >>> nn = torch.nn
        >>> net = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 16 * 16, 4)).eval()
        >>> res = OcclusionGradientXInput(net, window=8, stride=4)(torch.rand(1, 3, 16, 16), ClassLogit(1))
        >>> res.maps.shape, res.pre_relu.shape
        (torch.Size([1, 16, 16]), torch.Size([1, 16, 16]))

    Departures: none from its two parts; the fusion is this library's (Guided Grad-CAM's product,
    with the coarse map's ReLU normalised by its maximum and raised to ``gamma``).
    """

    def __init__(self, model: nn.Module, layer: Any = None, *, reshape: Any = None, sigma: float = 1.0,
                 gamma: float = 0.25, window: int | tuple[int, int] = 16, stride: int | tuple[int, int] = 8,
                 baseline: float | Tensor = 0.0, batch_size: int = 32) -> None:
        super().__init__(model, layer, reshape=reshape, sigma=sigma, gamma=gamma, window=window, stride=stride,
                         baseline=baseline, batch_size=batch_size)


class RISEGradientXInput(_Gated, RISE):
    """``RISEGradientXInput(model)(inputs, targets)``: pixel gradient x input times the RISE gate.

    As :class:`OcclusionGradientXInput`, with RISE's map (random masks; :class:`RISE`) as the
    coarse map in place of occlusion's window drops: smooth, not tied to a window grid, and
    with the best discrimination of the perturbation maps on the tiny VLMs (README).

    Args:
        model: any ``nn.Module`` (left as found).
        layer: unused (the registry passes none); kept for the perturbation base.
        reshape: a VLM adapter's grid, as for :class:`PixelGradientXInput`.
        sigma: the Gaussian of the gradient map, in pixels of the model's image (0: none).
        gamma: the gate's exponent (> 0; 1: the plain product).
        n_masks, grid, p, seed, batch_size: RISE's, as for :class:`RISE`.

    The result is laid out as :class:`OcclusionGradientXInput`'s.

    Example:
        >>> import torch
        >>> from mmexplain.targets import ClassLogit
        >>> nn = torch.nn
        >>> net = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 16 * 16, 4)).eval()
        >>> res = RISEGradientXInput(net, n_masks=64, grid=4)(torch.rand(1, 3, 16, 16), ClassLogit(1))
        >>> res.maps.shape, res.pre_relu.shape
        (torch.Size([1, 16, 16]), torch.Size([1, 16, 16]))

    Departures: RISE's (the mean score subtracted); the fusion is occlusion-gradxinput's.
    """

    def __init__(self, model: nn.Module, layer: Any = None, *, reshape: Any = None, sigma: float = 1.0,
                 gamma: float = 0.25, n_masks: int = 1000, grid: int = 8, p: float = 0.5, seed: int = 0,
                 batch_size: int = 32) -> None:
        super().__init__(model, layer, reshape=reshape, sigma=sigma, gamma=gamma, n_masks=n_masks, grid=grid, p=p,
                         seed=seed, batch_size=batch_size)
