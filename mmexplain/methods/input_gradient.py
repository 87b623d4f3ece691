"""Gradient x input on the image the model reads: a map at the picture's own resolution.

``pixel-gradxinput`` (Shrikumar et al. 2016, "Not just a black box"; Ancona et al. 2018
relate it to the other attribution rules): for a target y and the image tensor x the model
reads (normalised, so 0 is the processor's mean colour),

    pre_relu[i, j] = sum_c  dy/dx[c, i, j] * x[c, i, j]

summed over the colour channels (and over Qwen2-VL's temporal copies of a frame), then
ReLU (positive evidence, as every map of the library) and a Gaussian of ``sigma`` pixels,
so that the maximum is a region's, not one pixel's. One forward pass and one batched backward
for all targets; no layer to choose (the module that reads the image, a patch embedding, is
found in that forward and the gradient is carried through it apart: see ``_through_reader``;
a patchifying convolution in it, as in every ViT, is crossed by one matrix product: see
``patchify_input_grad``).

Where the tensor comes from: the first floating (B, C, H, W) tensor of the inputs; or, for a
VLM whose processor flattens the image into patches (Qwen2-VL), the inputs' ``pixel_values``
laid onto the picture by ``reshape.pixels`` (the adapter's
:class:`~mmexplain.adapters.hf.layouts.TokenGrid`). Tiled inputs are refused by the adapter's
capabilities (``"image-gradient"``).

Known weakness (Adebayo et al. 2018): the factor x imprints the image on the map, so part
of it survives the randomisation of the weights; the sanity protocol measures how much.

Example:
    >>> import torch
    >>> from mmexplain.targets import ClassLogit
    >>> nn = torch.nn
    >>> net = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 8 * 8, 4)).eval()
    >>> res = PixelGradientXInput(net, sigma=0)(torch.rand(1, 3, 8, 8), ClassLogit(1))
    >>> res.maps.shape, res.pre_relu.shape
    (torch.Size([1, 8, 8]), torch.Size([1, 8, 8]))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import (CAMResult, call_model, check_size, check_targets, detach_all, find_image, kept_buffers,
                   replace_image, upsample_and_normalize, warn_training)
from .core import gradients
from ..errors import InputError, InputTypeError

__all__ = ["PixelGradientXInput", "gaussian_blur", "patchify_input_grad"]


def gaussian_blur(maps: Tensor, sigma: float) -> Tensor:
    """``(..., H, W)`` maps smoothed by a separable Gaussian of ``sigma`` pixels (edges replicated); 0: as they are."""
    if sigma == 0:
        return maps
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-t * t / (2 * sigma * sigma))
    kernel = kernel / kernel.sum()  # (2r + 1,)
    x = maps.reshape(-1, 1, *maps.shape[-2:])  # (M, 1, H, W)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return x.reshape(maps.shape)


def is_patchify(module: nn.Module) -> bool:
    """A convolution that cuts its input into disjoint patches: kernel = stride, no padding, dilation 1, one group."""
    return isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and tuple(module.kernel_size) == tuple(
        module.stride) and all(p == 0 for p in module.padding) and set(module.dilation) == {1} \
        and module.groups == 1 and module.padding_mode == "zeros"


def patchify_input_grad(conv: nn.Module, grad_out: Tensor, in_shape: tuple[int, ...]) -> Tensor:
    """The input gradient ``(B, C, *S)`` of a patchifying convolution (:func:`is_patchify`) from its output's
    ``grad_out`` ``(B, O, *P)``: each patch's gradient is ``grad_out[b, :, p] @ W.reshape(O, C * prod(k))``, one
    matrix product, laid back on its patch; pixels past the last whole patch get 0 (the convolution drops them).
    Equals ``convolution_backward``'s, which on CPU is many times slower for these shapes."""
    k, (o, c) = tuple(conv.kernel_size), conv.weight.shape[:2]
    b, spatial = grad_out.shape[0], tuple(grad_out.shape[2:])  # P: patches per spatial axis
    weight = conv.weight.reshape(o, -1).to(grad_out.dtype)  # (O, C * prod(k))
    rows = grad_out.movedim(1, -1).reshape(-1, o) @ weight  # (B * prod(P), C * prod(k))
    d = len(k)
    patches = rows.reshape(b, *spatial, c, *k)  # (B, P1.., C, k1..)
    order = [0, d + 1] + [i for a in range(d) for i in (1 + a, d + 2 + a)]  # (B, C, P1, k1, P2, k2, ...)
    grad = patches.permute(order).reshape(b, c, *(p * q for p, q in zip(spatial, k)))
    short = [s - p * q for s, p, q in zip(in_shape[2:], spatial, k)]
    if any(short):
        grad = F.pad(grad, [v for n in reversed(short) for v in (0, n)])
    return grad


class _PatchifyBackward(torch.autograd.Function):
    """``conv(x)`` already computed, returned as is; its backward is :func:`patchify_input_grad` (x only)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, out: Tensor, conv: nn.Module) -> Tensor:
        ctx.conv, ctx.in_shape = conv, tuple(x.shape)
        return out.clone()

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None, None]:
        return patchify_input_grad(ctx.conv, grad_out, ctx.in_shape), None, None


def _patchify_by_product(module: nn.Module, args: tuple, out: Any) -> Any:
    """Forward hook: a patchifying convolution's output, differentiated by one product (only its input)."""
    x = args[0] if args else None
    if not isinstance(x, Tensor) or not isinstance(out, Tensor) or not x.requires_grad \
            or x.dim() != len(module.kernel_size) + 2:  # unbatched: left to autograd
        return None
    return _PatchifyBackward.apply(x, out.detach(), module)


class PixelGradientXInput:
    """Gradient x input on the model's image tensor, per pixel: ``PixelGradientXInput(model)(inputs, targets)``.

    Args:
        model: any ``nn.Module`` (left as found: its hooks last one call; no parameter gets a gradient).
        reshape: a VLM adapter's grid (``adapter.reshape_for(pixels)``); its ``pixels`` layout
            is used when the image arrives as flattened patches. Otherwise unused.
        sigma: the Gaussian's standard deviation in pixels of the model's image (0: none).

    The result: ``pre_relu`` (N, B, H, W) the signed channel sum; ``raw`` its ReLU, smoothed;
    ``maps`` ``raw`` upsampled to ``size`` and min-max normalised; ``activations`` the image
    laid on the picture (B, C', H, W); ``weights`` (N, B, 0): no channels.

    Departures: the ReLU and the Gaussian (the classic map is the signed product, shown as
    it is); x is the tensor the model reads (normalised), so its baseline is the
    processor's mean colour, not black.

    Example:
        >>> import mmexplain as mx
        >>> vlm = mx.zoo.load("tiny-qwen2vl")                                         # doctest: +SKIP
        >>> ex = mx.explain_caption(vlm, "cat.jpg", method="pixel-gradxinput")  # (T, H, W)  # doctest: +SKIP
    """

    uses_gradient: ClassVar[bool] = True

    def __init__(self, model: nn.Module, *, reshape: Any = None, sigma: float = 1.0) -> None:
        if not isinstance(model, nn.Module):
            raise InputTypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma < 0:
            raise InputError(f"sigma: expected a finite number >= 0, got {sigma!r}")
        self.model, self.reshape, self.sigma = model, reshape, float(sigma)

    def positive(self, pre: Tensor) -> Tensor:
        """``(..., H, W)`` signed maps -> their ReLU smoothed by the Gaussian: ``raw`` from ``pre_relu``."""
        return gaussian_blur(F.relu(pre), self.sigma)

    def _image(self, inputs: Any) -> tuple[Tensor, Callable[[Tensor], Any], Callable[[Tensor], Tensor]]:
        """(the image tensor, a function that puts a replacement into the inputs, the layout
        ``(N, *shape) -> (N, B, C', H, W)``)."""
        layout = getattr(self.reshape, "pixels", None)
        flat = inputs.get("pixel_values") if isinstance(inputs, Mapping) else None
        if layout is not None and isinstance(flat, Tensor) and flat.dim() != 4:
            return flat, lambda leaf: {**inputs, "pixel_values": leaf}, \
                lambda values: torch.stack([layout(v) for v in values])[:, None]  # one image: B = 1
        image = find_image(inputs)
        if image is None or not image.is_floating_point():
            raise InputError("inputs: found no floating (B, C, H, W) image tensor, and reshape= lays no pixel "
                             "tensor onto a picture (a VLM adapter's reshape_for(pixels) does, where the image is "
                             "one picture)")
        return image, lambda leaf: replace_image(inputs, leaf), lambda values: values

    def _through_reader(self, image: Tensor, put: Callable[[Tensor], Any], targets: list[Any]
                        ) -> tuple[Tensor | None, Tensor, Any]:
        """The targets' gradients at ``image`` ``(N, *image.shape)`` in two steps, or ``(None, ...)``.

        The reader is the innermost module called with ``image`` itself (a patch embedding, a
        first convolution); its output is swapped for a leaf, the N gradients there come from
        one batched backward, and the reader runs once more on N copies of ``image`` for one
        plain backward: the batched backward then never crosses the reader (a convolution's
        batched input gradient is the slowest step on CPU), and a patchifying convolution in the
        reader with no hooks of its own is crossed by a matrix product (its own backward is the
        slowest next). The reader must treat the rows of its first axis apart (patches, images),
        which the shape of its N-copy output checks, and be the only module that reads the tensor
        (else: ``None``, and the caller differentiates at it).
        """
        seen: dict[str, Any] = {}

        def before(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if any(v is image for v in (*args, *kwargs.values())):
                if "leaf" in seen:  # a second module reads the tensor: the reader alone would miss its path
                    seen["another"] = module
                seen.setdefault("called", set()).add(module)

        def after(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
            if "leaf" in seen or module not in seen.get("called", ()) or not isinstance(out, Tensor) \
                    or not out.is_floating_point():
                return None
            seen.update(leaf=out.detach().requires_grad_(True), module=module, args=args, kwargs=kwargs)
            return seen["leaf"]

        handles = [h for m in self.model.modules() for h in (m.register_forward_pre_hook(before, with_kwargs=True),
                                                            m.register_forward_hook(after, with_kwargs=True))]
        try:
            output = call_model(self.model, put(image))
        finally:
            for h in handles:
                h.remove()
        scores = torch.stack([target(output) for target in targets])  # (N, B)
        if "leaf" not in seen or "another" in seen:
            return None, scores, output
        leaf, n = seen["leaf"], len(targets)
        (at_reader,) = gradients(scores.float().sum(dim=1), [leaf])  # (N, *leaf.shape)
        if at_reader is None:
            return None, scores, output
        copies = image.repeat(n, *([1] * (image.dim() - 1))).requires_grad_(True)  # (N * rows, ...)
        swap = lambda v: copies if v is image else v  # noqa: E731
        reader = seen["module"]
        handles = [m.register_forward_hook(_patchify_by_product) for m in reader.modules()
                   if is_patchify(m) and not m._forward_hooks and not m._forward_pre_hooks]  # a user's hook: autograd
        try:
            again = reader(*map(swap, seen["args"]), **{k: swap(v) for k, v in seen["kwargs"].items()})
        finally:
            for h in handles:
                h.remove()
        if not isinstance(again, Tensor) or again.shape != (n * leaf.shape[0], *leaf.shape[1:]):
            return None, scores, output
        (grad,) = torch.autograd.grad(again, copies, grad_outputs=at_reader.reshape(again.shape).to(again.dtype))
        return grad.reshape(n, *image.shape), scores, output

    def __call__(self, inputs: Any, targets: Any, *, size: tuple[int, int] | None = None) -> CAMResult:
        many, targets = check_targets(targets)
        size = None if size is None else check_size(size)
        if torch.is_inference_mode_enabled():
            raise RuntimeError(f"{type(self).__name__} needs autograd: call it outside torch.inference_mode()")
        warn_training(self.model)
        image, put, lay = self._image(inputs)
        image = image.detach()
        with kept_buffers(self.model), torch.enable_grad():
            grad, scores, output = self._through_reader(image, put, targets)
            if grad is None:  # no module reads the tensor itself: differentiate at it directly
                leaf = image.clone().requires_grad_(True)
                output = call_model(self.model, put(leaf))
                scores = torch.stack([target(output) for target in targets])  # (N, B)
                (grad,) = gradients(scores.float().sum(dim=1), [leaf])  # (N, *image.shape)
        if grad is None:
            raise InputError("inputs: the targets do not depend on the image tensor (no gradient reached it)")
        product = lay(grad * image).float()  # (N, B, C', H, W)
        pre = product.sum(dim=2)  # (N, B, H, W)
        raw = self.positive(pre)
        maps = upsample_and_normalize(raw, tuple(pre.shape[-2:]) if size is None else size)
        picture = lay(image[None])[0]  # (B, C', H, W)
        res = CAMResult(maps, raw, pre, pre.new_zeros(*pre.shape[:2], 0), scores.detach().float(), picture,
                        detach_all(output), many=True)
        return res if many else res[0]

