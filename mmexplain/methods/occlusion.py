"""Occlusion (Zeiler & Fergus 2014): the score's drop when an image window is hidden.

Not a channel method: the map is computed at a grid of windows over the image, then
returned as a ``CAMResult`` like every other method's (``raw`` at the window grid,
``maps`` upsampled). The occluded copies run batched as in ``gradient_free.py``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .base import LayerSpec, call_model, find_image, replace_image
from .core import PerturbationMethod, Run
from ..errors import InputError, InputTypeError

__all__ = ["Occlusion"]


def _pair(value: Any, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if (not isinstance(pair, (tuple, list)) or len(pair) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair)):
        raise InputError(f"{name}: expected a positive int or (h, w) of positive ints, got {value!r}")
    return (pair[0], pair[1])


def _windows(size: int, window: int, stride: int) -> list[tuple[int, int]]:
    """[start, stop) of windows centred on the cells of a ceil(size / stride) grid, cut at the edges."""
    cells = math.ceil(size / stride)
    spans = []
    for i in range(cells):
        start = round((i + 0.5) * size / cells - window / 2)
        spans.append((max(start, 0), min(start + window, size)))
    return spans


class Occlusion(PerturbationMethod):
    r"""Occlusion (Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks",
    ECCV 2014; the Grad-CAM paper's VQA baseline, Sec. 7.1).

    .. math:: M_p = y(X) - y(X \text{ with window } p \text{ set to the baseline})

    Windows of ``window`` pixels are centred on the cells of a ``ceil(H / stride) x
    ceil(W / stride)`` grid (cut by the image's edges), so ``raw`` is the drop at that
    grid and ``maps`` its bilinear upsampling, with cell centres where the windows'
    centres are. A positive value means hiding the region lowers the score.

    Not a channel method; it fits the same result: ``raw``/``pre_relu`` (B, gh, gw),
    ``maps`` (B, H, W), ``scores`` (B,) the unoccluded scores, ``weights`` (B, 0) (no
    channels), ``activations`` the image, or the layer's activation when ``layer`` is
    given (read on the unoccluded forward, at ``input``/``call`` as for GradCAM).

    Args:
        model: any ``nn.Module``; left as found.
        layer: optional; only read for ``res.activations`` (the call form is shared).
        window: window size, an int or (h, w).
        stride: grid step, an int or (h, w).
        baseline: the value the window is set to: a float, or a tensor that broadcasts
            to the image (a per-channel mean (C, 1, 1), a blurred copy (B, C, H, W)); on a
            VLM's picture it is read about the processor's mean colour (0: that colour).
        batch_size: occluded inputs per forward pass (``batch_size // B`` copies).
        reshape: the layer's token grid, for ``res.activations`` only.
        relu: keep only the drops (default False: a window whose removal raises the
            score keeps its negative value; the paper's maps are signed).

    Example:
        >>> import torch, torchvision, mmexplain as mx
        >>> model = torchvision.models.resnet18(num_classes=10).eval()
        >>> res = mx.Occlusion(model, window=16, stride=8)(torch.rand(2, 3, 64, 64), mx.targets.ClassLogit(3))
        >>> res.raw.shape, res.maps.shape
        (torch.Size([2, 8, 8]), torch.Size([2, 64, 64]))

    Departures from the paper: the windows are placed on a grid aligned with the
    upsampling (centred cells) instead of starting at the top-left corner.
    """

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec | None = None,
        *,
        window: int | tuple[int, int] = 16,
        stride: int | tuple[int, int] = 8,
        baseline: float | Tensor = 0.0,
        relu: bool = False,
        **options: Any,
    ) -> None:
        if not isinstance(baseline, (int, float, Tensor)) or isinstance(baseline, bool):
            raise InputTypeError(f"baseline: expected a float or a tensor that broadcasts to the image, got {type(baseline).__name__}")
        super().__init__(model, layer, relu=relu, **options)
        self.window = _pair(window, "window")
        self.stride = _pair(stride, "stride")
        self.baseline = baseline

    def map(self, activation: Tensor, run: Run) -> tuple[Tensor, Tensor]:
        """(N, B, gh, gw) score drops on the window grid, and (N, B, 0) weights (no channels)."""
        image = find_image(run.inputs)  # (B, C, H, W)
        if image is None:
            raise InputError("inputs: Occlusion perturbs the image and found no floating (B, C, H, W) tensor in the inputs")
        try:
            base = torch.as_tensor(self.baseline, dtype=image.dtype, device=image.device).expand_as(image)
        except RuntimeError as exc:
            raise InputError(f"baseline: shape {tuple(torch.as_tensor(self.baseline).shape)} does not broadcast "
                             f"to the image {tuple(image.shape)}") from exc
        rows = _windows(image.shape[-2], self.window[0], self.stride[0])
        cols = _windows(image.shape[-1], self.window[1], self.stride[1])
        spans = [(r, c) for r in rows for c in cols]

        def build(index: Tensor) -> Any:
            occluded = image.unsqueeze(0).repeat(len(index), *([1] * image.dim()))  # (r, B, C, H, W)
            for j, p in enumerate(index.tolist()):
                (r0, r1), (c0, c1) = spans[p]
                occluded[j, ..., r0:r1, c0:c1] = base[..., r0:r1, c0:c1]
            return call_model(self.model, replace_image(self.repeated(run, len(index)), occluded.flatten(0, 1)))

        dropped = self.copy_scores(run, len(spans), build)  # (N, P, B)
        pre_relu = (run.scores.unsqueeze(1) - dropped).transpose(1, 2).unflatten(-1, (len(rows), len(cols)))
        return pre_relu, run.scores.new_zeros(*run.scores.shape, 0)  # (N, B, gh, gw), (N, B, 0)
