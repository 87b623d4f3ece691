r"""RISE (Petsiuk, Das & Saenko, "RISE: Randomized Input Sampling for Explanation of Black-box Models", BMVC 2018).

The score on randomly masked copies of the image, averaged per pixel over the masks that keep it:

.. math:: S(x) = \frac{1}{N p} \sum_{i=1}^{N} \big(y(I \odot M_i) - \bar y\big)\, M_i(x)

Each mask ``M_i`` is a ``grid x grid`` binary grid (1 with probability ``p``) upsampled
bilinearly to ``(grid + 1)`` cells of ``ceil(H / grid)`` pixels and cropped at a random shift
of less than one cell (the paper's Sec. 3.2), so masks are smooth and not aligned to the
grid. ``I ⊙ M`` multiplies the image about its zero: the normalised tensor of a plain model,
the picture about the processor's mean colour on a VLM (its processor runs again on every
masked copy, as for Score-CAM), so a hidden pixel fades to the mean colour.

Departure from the paper: the mean score ``ȳ`` over the N masks is subtracted (a constant in
expectation, since ``E[M(x)] = p``). Without it a negative score, such as a word's
log-probability, multiplies the per-pixel count of masks that keep the pixel, whose spread
over pixels (about ``1/sqrt(N p)``) then outweighs the signal. With it, ``S > 0`` where
keeping the pixel raises the score, as for occlusion's drops.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import LayerSpec, call_model, find_image, replace_image
from .core import PerturbationMethod, Run
from ..errors import InputError

__all__ = ["RISE", "rise_masks"]


def rise_masks(grids: Tensor, shifts: Tensor, size: tuple[int, int]) -> Tensor:
    """``(r, g, g)`` 0/1 grids and ``(r, 2)`` shifts in pixels -> ``(r, H, W)`` masks in [0, 1].

    Each grid is upsampled bilinearly (``align_corners=False``) to ``(g + 1) * cell`` pixels per
    side, ``cell = ceil(side / g)``, and cropped to ``size`` starting at its shift.
    """
    g = grids.shape[-1]
    cell = (math.ceil(size[0] / g), math.ceil(size[1] / g))
    up = F.interpolate(grids[:, None].float(), size=((g + 1) * cell[0], (g + 1) * cell[1]), mode="bilinear",
                       align_corners=False)[:, 0]  # (r, (g+1) ch, (g+1) cw)
    return torch.stack([m[dy:dy + size[0], dx:dx + size[1]] for m, (dy, dx) in zip(up, shifts.tolist())])


def _count(value: Any, name: str, what: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(f"{name}: expected an int >= {low} ({what}), got {value!r}")
    return value


class RISE(PerturbationMethod):
    r"""RISE: the score of randomly masked copies, averaged per pixel over the masks that keep it.

    Not a channel method; ``raw``/``pre_relu`` is the map at the image's own resolution
    (B, H, W), ``weights`` (B, 0), ``activations`` the image (or the layer's activation when
    ``layer`` is given, read on the unmasked forward only). The masks come from a generator
    seeded with ``seed``, so a call is reproducible and every target of a list and every
    image of the batch sees the same masks. Costs ``n_masks`` forwards, batched.

    Args:
        model: any ``nn.Module``; left as found.
        layer: optional; only read for ``res.activations``.
        n_masks: N, the number of random masks (the paper: 4000 at 224 px, 8000 for ResNet50).
        grid: g, cells per side of the binary grid before upsampling (the paper: 7).
        p: probability that a cell is kept (the paper: 0.5).
        seed: seed of the masks.
        batch_size: masked inputs per forward pass (``batch_size // B`` copies).
        relu: keep only the positive part (default False: pixels whose presence lowers the
            score keep their negative value).

    Example:
        >>> import torch, torchvision, mmexplain as mx
        >>> model = torchvision.models.resnet18(num_classes=10).eval()
        >>> res = mx.RISE(model, n_masks=64, grid=4)(torch.rand(1, 3, 32, 32), mx.targets.ClassLogit(3))
        >>> res.raw.shape, res.maps.shape
        (torch.Size([1, 32, 32]), torch.Size([1, 32, 32]))

    Departure from the paper: the mean score over the masks is subtracted (see the module
    docstring); the grids are upsampled with PyTorch's bilinear convention (``align_corners=False``).
    """

    def __init__(self, model: nn.Module, layer: LayerSpec | None = None, *, n_masks: int = 1000, grid: int = 8,
                 p: float = 0.5, seed: int = 0, relu: bool = False, **options: Any) -> None:
        super().__init__(model, layer, relu=relu, **options)
        self.n_masks = _count(n_masks, "n_masks", "random masks")
        self.grid_cells = _count(grid, "grid", "cells per side of the mask grid")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p < 1:
            raise InputError(f"p: expected a number strictly between 0 and 1 (the chance a cell is kept), got {p!r}")
        self.p = float(p)
        self.seed = _count(seed, "seed", "the masks' random seed", low=0)

    def draws(self, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """The ``(N, g, g)`` binary grids and ``(N, 2)`` shifts of this method's masks for an image of ``size``."""
        g = self.grid_cells
        gen = torch.Generator().manual_seed(self.seed)
        grids = (torch.rand(self.n_masks, g, g, generator=gen) < self.p).float()
        cell = torch.tensor([math.ceil(size[0] / g), math.ceil(size[1] / g)])
        shifts = (torch.rand(self.n_masks, 2, generator=gen) * cell).long().clamp(max=cell - 1)
        return grids, shifts

    def map(self, activation: Tensor, run: Run) -> tuple[Tensor, Tensor]:
        """(N, B, H, W) RISE maps at the image's resolution, and (N, B, 0) weights (no channels)."""
        image = find_image(run.inputs)  # (B, C, H, W)
        if image is None:
            raise InputError("inputs: RISE masks the image and found no floating (B, C, H, W) tensor in the inputs")
        size = (image.shape[-2], image.shape[-1])
        grids, shifts = self.draws(size)

        def masks(index: Tensor) -> Tensor:
            return rise_masks(grids[index], shifts[index], size).to(image)  # (r, H, W)

        def build(index: Tensor) -> Any:
            masked = image.unsqueeze(0) * masks(index)[:, None, None]  # (r, B, C, H, W)
            return call_model(self.model, replace_image(self.repeated(run, len(index)), masked.flatten(0, 1)))

        scores = self.copy_scores(run, self.n_masks, build).float()  # (N, n, B)
        centred = scores - scores.mean(dim=1, keepdim=True)
        total = torch.zeros(scores.shape[0], scores.shape[2], *size, device=image.device)  # (N, B, H, W), float32
        for start in range(0, self.n_masks, 256):  # summed in float32 whatever the model's dtype
            index = torch.arange(start, min(start + 256, self.n_masks))
            total += torch.einsum("tnb,nhw->tbhw", centred[:, index].to(image.device), masks(index).float())
        return total / (self.n_masks * self.p), run.scores.new_zeros(*run.scores.shape, 0)
