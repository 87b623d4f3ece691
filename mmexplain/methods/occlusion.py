"""Occlusion (Zeiler & Fergus 2014): the score's drop when an image window is hidden.

Not a channel method: the map is computed at a grid of windows over the image, then
returned as a ``CAMResult`` like every other method's (``raw`` at the window grid,
``maps`` upsampled). The occluded copies run batched as in ``gradient_free.py``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..targets import Target
from .base import (
    CAMResult, LayerSpec, _Capture, _check_site, _detach, _repeat_rows, call_model, check_targets, kept_buffers,
    module_name, replace_image, resolve_layer, upsample_and_normalize,
)
from .gradcam import GradCAM, _check_size
from .gradient_free import _check_batch_size, _copy_scores, _image_of

__all__ = ["Occlusion"]


def _pair(value: Any, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if (not isinstance(pair, (tuple, list)) or len(pair) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in pair)):
        raise ValueError(f"{name}: expected a positive int or (h, w) of positive ints, got {value!r}")
    return (pair[0], pair[1])


def _windows(size: int, window: int, stride: int) -> list[tuple[int, int]]:
    """[start, stop) of windows centred on the cells of a ceil(size / stride) grid, cut at the edges."""
    cells = math.ceil(size / stride)
    spans = []
    for i in range(cells):
        start = round((i + 0.5) * size / cells - window / 2)
        spans.append((max(start, 0), min(start + window, size)))
    return spans


class Occlusion:
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
            to the image (a per-channel mean (C, 1, 1), a blurred copy (B, C, H, W)).
        batch_size: occluded inputs per forward pass (``batch_size // B`` copies).
        reshape: accepted for the shared call form; occlusion reads the image, not tokens.
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

    needs_gradient: ClassVar[bool] = False

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec | None = None,
        *,
        window: int | tuple[int, int] = 16,
        stride: int | tuple[int, int] = 8,
        baseline: float | Tensor = 0.0,
        batch_size: int = 32,
        relu: bool = False,
        input: bool = False,
        call: int | None = None,
        reshape: Any = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        if not isinstance(relu, bool):
            raise TypeError(f"relu: expected True or False, got {type(relu).__name__}")
        if not isinstance(baseline, (int, float, Tensor)) or isinstance(baseline, bool):
            raise TypeError(f"baseline: expected a float or a tensor that broadcasts to the image, got {type(baseline).__name__}")
        _check_site(input, call)
        self.model = model
        self.layer = None if layer is None else resolve_layer(model, layer)
        self.layer_name = None if layer is None else (layer if isinstance(layer, str) else module_name(model, layer))
        self.window = _pair(window, "window")
        self.stride = _pair(stride, "stride")
        self.baseline = baseline
        self.batch_size = _check_batch_size(batch_size)
        self.relu = relu
        self.input = input
        self.call = call

    def __call__(
        self, inputs: Any, targets: Target | Sequence[Target], *, size: tuple[int, int] | None = None
    ) -> CAMResult:
        """Occlusion maps of one target, or of a list of N targets from the same forwards.

        Args:
            inputs: what ``model(...)`` takes; the image is its first floating 4-D tensor.
            targets: a target ``output -> (B,)`` or a list of them.
            size: (H, W) of ``maps``; default the image's.

        Returns:
            CAMResult (see the class docstring); with N targets a leading N axis.
        """
        with kept_buffers(self.model):  # a training-mode forward must not move BatchNorm statistics
            return self._explain(inputs, targets, size=size)

    def _explain(self, inputs: Any, targets: Target | Sequence[Target], *, size: tuple[int, int] | None) -> CAMResult:
        """``__call__`` without the buffer bookkeeping."""
        many, target_list = check_targets(targets)
        if self.model.training:
            warnings.warn(
                "model is in training mode: dropout and batch-norm statistics change the explanation "
                "(and batch-norm running stats); call model.eval() first",
                stacklevel=2,
            )
        image = _image_of(inputs, "Occlusion")  # (B, C, H, W)
        size = tuple(image.shape[-2:]) if size is None else _check_size(size)
        batch, height, width = image.shape[0], image.shape[-2], image.shape[-1]
        try:
            base = torch.as_tensor(self.baseline, dtype=image.dtype, device=image.device).expand_as(image)
        except RuntimeError as exc:
            raise ValueError(f"baseline: shape {tuple(torch.as_tensor(self.baseline).shape)} does not broadcast to the image {tuple(image.shape)}") from exc
        rows = _windows(height, self.window[0], self.stride[0])
        cols = _windows(width, self.window[1], self.stride[1])
        spans = [(r, c) for r in rows for c in cols]

        with torch.no_grad():
            output, activations = self._clean_forward(inputs, image)
            scores = self._scores(output, target_list, batch=batch)  # (N, B)

            def build(index: Tensor) -> Any:
                occluded = image.unsqueeze(0).repeat(len(index), *([1] * image.dim()))  # (r, B, C, H, W)
                for j, p in enumerate(index.tolist()):
                    (r0, r1), (c0, c1) = spans[p]
                    occluded[j, ..., r0:r1, c0:c1] = base[..., r0:r1, c0:c1]
                repeated = _repeat_rows(inputs, len(index), batch)
                return call_model(self.model, replace_image(repeated, occluded.flatten(0, 1)))

            dropped = _copy_scores(self, target_list, len(spans), build, batch=batch, batch_size=self.batch_size)
        pre_relu = (scores.unsqueeze(1) - dropped).transpose(1, 2).unflatten(-1, (len(rows), len(cols)))  # (N, B, gh, gw)
        raw = F.relu(pre_relu) if self.relu else pre_relu
        maps = upsample_and_normalize(raw, size)  # (N, B, H, W)
        weights = scores.new_zeros(len(target_list), batch, 0)  # (N, B, 0): no channels
        result = CAMResult(maps, raw, pre_relu, weights, scores, activations, _detach(output), {}, many=True)
        return result if many else result[0]

    _score = GradCAM._score  # the engine's target-shape checks
    _scores = GradCAM._scores

    def _clean_forward(self, inputs: Any, image: Tensor) -> tuple[Any, Tensor]:
        """The unoccluded output and what ``res.activations`` reports."""
        if self.layer is None:
            return call_model(self.model, inputs), image.detach()
        capture = _Capture({self.layer_name: self.layer}, grad=False, input=self.input, call=self.call)
        handles = capture.register()
        try:
            output = call_model(self.model, inputs)
        finally:
            for handle in handles:
                handle.remove()
        capture.check()
        return output, capture.leaves[self.layer_name]
