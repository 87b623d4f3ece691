"""Pixel-space gradient methods: Guided Backpropagation, Deconvolution, Guided Grad-CAM.

All three return a gradient with respect to the *image* tensor, ``(B, C, H, W)``,
and differ only in the rule applied when the gradient flows back through a ReLU:

====================  ==================================================
plain gradient        ``grad_in = grad_out * [x > 0]``
Deconvolution         ``grad_in = grad_out * [grad_out > 0]``   (Zeiler & Fergus 2014)
Guided Backprop       ``grad_in = grad_out * [x > 0] * [grad_out > 0]``  (Springenberg et al. 2015)
====================  ==================================================

The rule is swapped in for the duration of one call by a
:class:`torch.overrides.TorchFunctionMode` that replaces every ReLU *call* —
``nn.ReLU`` modules, ``F.relu``, ``torch.relu``, ``Tensor.relu`` and the in-place
variants (``inplace=True``, ``relu_``) — by a custom ``autograd.Function``. Peer
libraries that swap ``nn.ReLU`` modules silently compute plain gradients through
functional ReLUs (e.g. torchvision's DenseNet, which calls ``F.relu`` in ``forward``).
Nothing on the model is modified: no module is replaced, no hook registered, no
flag changed, and ``param.grad`` is never touched (``torch.autograd.grad`` is taken
with respect to a detached copy of the image only).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .base import call_model

Inputs = Tensor | tuple[Any, ...] | Mapping[str, Any]
Target = Callable[[Any], Tensor]

__all__ = ["GuidedBackprop", "Deconvolution", "GuidedGradCAM", "guided_gradcam"]


# --------------------------------------------------------------------------- ReLU rules
class _GuidedReLUFunction(torch.autograd.Function):
    """ReLU forward; backward ``grad_out * [x > 0] * [grad_out > 0]`` (Springenberg et al.)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        out = x.clamp(min=0)
        ctx.save_for_backward(x > 0)  # a mask, so a later in-place write to x is harmless
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> Tensor:
        (positive_input,) = ctx.saved_tensors
        return grad_out.clamp(min=0) * positive_input


class _DeconvReLUFunction(torch.autograd.Function):
    """ReLU forward; backward ``grad_out * [grad_out > 0]`` (Zeiler & Fergus deconvnet)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> Tensor:
        return grad_out.clamp(min=0)


_OUT_OF_PLACE = (F.relu, torch.relu, Tensor.relu)
_IN_PLACE = (torch.relu_, Tensor.relu_)  # F.relu_ is torch.relu_


class _ReLURuleMode(TorchFunctionMode):
    """Routes every ReLU call made while active through ``function`` (a ReLU autograd.Function)."""

    def __init__(self, function: type[torch.autograd.Function]) -> None:
        super().__init__()
        self.function = function

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        inplace = any(func is f for f in _IN_PLACE)
        if inplace or any(func is f for f in _OUT_OF_PLACE):  # identity: some funcs are unhashable
            x = args[0] if args else kwargs["input"]
            if func is F.relu:
                inplace = bool(args[1] if len(args) > 1 else kwargs.get("inplace", False))
            out = self.function.apply(x)
            if inplace:  # keep in-place semantics: the caller may read x afterwards
                return x.copy_(out)
            return out
        return func(*args, **kwargs)


# --------------------------------------------------------------------------- inputs
def _is_image(value: Any) -> bool:
    return isinstance(value, Tensor) and value.is_floating_point() and value.dim() == 4


def _with_image_leaf(inputs: Inputs, image_key: int | str | None) -> tuple[Inputs, Tensor]:
    """Replace the image tensor of ``inputs`` by a fresh leaf that requires grad.

    Returns:
        ``(new_inputs, leaf)``; ``leaf`` is ``(B, C, H, W)`` and the caller's tensor is
        left untouched (the leaf is a detached copy).
    """
    if isinstance(inputs, Tensor):
        if image_key is not None:
            raise ValueError(f"image_key must be None when inputs is a tensor; got {image_key!r}")
        if not _is_image(inputs):
            raise ValueError(
                "inputs must be a floating (B, C, H, W) image tensor; "
                f"got dtype {inputs.dtype} and shape {tuple(inputs.shape)}"
            )
        leaf = inputs.detach().clone().requires_grad_(True)
        return leaf, leaf
    if isinstance(inputs, tuple):
        keys: list[Any] = list(range(len(inputs)))
        values = dict(enumerate(inputs))
    elif isinstance(inputs, Mapping):
        keys = list(inputs)
        values = dict(inputs)
    else:
        raise TypeError(f"inputs must be a tensor, a tuple or a dict; got {type(inputs).__name__}")
    if image_key is None:
        image_key = next((k for k in keys if _is_image(values[k])), None)
        if image_key is None:
            raise ValueError("inputs hold no floating 4-D (B, C, H, W) tensor to explain; pass image_key=")
    elif image_key not in values:
        raise ValueError(f"image_key {image_key!r} not in inputs; available: {keys}")
    elif not _is_image(values[image_key]):
        value = values[image_key]
        got = f"{value.dtype} {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"inputs[{image_key!r}] must be a floating (B, C, H, W) tensor; got {got}")
    leaf = values[image_key].detach().clone().requires_grad_(True)
    values[image_key] = leaf
    if isinstance(inputs, tuple):
        return tuple(values[k] for k in keys), leaf
    return values, leaf


def _score(target: Target, output: Any, batch: int, index: int | None = None) -> Tensor:
    name = "target" if index is None else f"targets[{index}]"
    score = target(output)
    if not isinstance(score, Tensor):
        raise TypeError(f"{name} must return a tensor of shape ({batch},); got {type(score).__name__}")
    if score.shape != (batch,):
        raise ValueError(f"{name} must return a tensor of shape ({batch},); got {tuple(score.shape)}")
    if not score.requires_grad:
        raise ValueError(f"{name} returned a score that does not depend differentiably on the inputs")
    return score


# --------------------------------------------------------------------------- methods
class _ReLURuleGradient:
    """Input gradient of a target with one ReLU backward rule swapped in (one call, no state)."""

    _function: type[torch.autograd.Function]

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module; got {type(model).__name__}")
        self.model = model

    def __call__(
        self, inputs: Inputs, target: Target | Sequence[Target], *, image_key: int | str | None = None
    ) -> Tensor:
        """Gradient of ``target(model(inputs))`` w.r.t. the image, with the method's ReLU rule.

        Args:
            inputs: what ``model`` takes: a tensor, a tuple (positional) or a dict (keywords).
            target: a callable ``output -> (B,)``, or a list of N of them (one forward pass).
            image_key: which tuple index / dict key is the image; default the first
                floating 4-D tensor.

        Returns:
            ``(B, C, H, W)`` gradient on the image's device and dtype, or ``(N, B, C, H, W)``
            for a list of targets.
        """
        if self.model.training:
            warnings.warn(
                "model is in training mode: dropout and batch-norm statistics change the explanation "
                "(and batch-norm running stats); call model.eval() first",
                stacklevel=2,
            )
        return self._gradient(inputs, target, image_key)

    def _gradient(self, inputs: Inputs, target: Target | Sequence[Target], image_key: int | str | None) -> Tensor:
        many = isinstance(target, (list, tuple))
        targets = list(target) if many else [target]
        if not targets:
            raise ValueError("target list is empty")
        for i, t in enumerate(targets):
            if not callable(t):
                raise TypeError(f"target must be callable output -> (B,); got {type(t).__name__} at {i}")
        new_inputs, image = _with_image_leaf(inputs, image_key)  # image: (B, C, H, W) leaf
        batch = image.shape[0]
        grads = []
        with torch.enable_grad(), _ReLURuleMode(self._function):
            output = call_model(self.model, new_inputs)
            scores = [_score(t, output, batch, i if many else None) for i, t in enumerate(targets)]
        for n, score in enumerate(scores):  # autograd.grad outside the mode: plain backward ops
            (grad,) = torch.autograd.grad(
                score.sum(), image, retain_graph=n < len(scores) - 1, allow_unused=True
            )
            grads.append(torch.zeros_like(image) if grad is None else grad)  # (B, C, H, W)
        return torch.stack(grads) if many else grads[0]  # (N, B, C, H, W) or (B, C, H, W)


class GuidedBackprop(_ReLURuleGradient):
    r"""Guided Backpropagation (Springenberg et al., "Striving for Simplicity", ICLR-W 2015).

    The gradient of the target with respect to the image, where every ReLU passes back
    only positive gradient at positive input:

    .. math:: R^{l} = R^{l+1} \cdot [f^{l} > 0] \cdot [R^{l+1} > 0]

    ReLUs are caught however they are called (``nn.ReLU``, ``F.relu``, ``torch.relu``,
    ``Tensor.relu``, in-place variants). Other activations (ReLU6, GELU, SiLU,
    hardswish) keep their ordinary gradient. The per-sample gradient is that of the batch sum, so a model whose
    samples interact (BatchNorm in training mode) mixes them — call it in ``eval()``.

    Example:
        >>> import torch, mmexplain as mx
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
        ...                             torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        ...                             torch.nn.Linear(4, 2)).eval()
        >>> grad = mx.GuidedBackprop(model)(torch.rand(2, 3, 8, 8), lambda out: out[:, 1])
        >>> grad.shape
        torch.Size([2, 3, 8, 8])
    """

    _function = _GuidedReLUFunction


class Deconvolution(_ReLURuleGradient):
    r"""Deconvolution (Zeiler & Fergus, "Visualizing and Understanding CNNs", ECCV 2014).

    The gradient of the target with respect to the image, where every ReLU passes back
    the positive part of the incoming gradient regardless of its forward input:

    .. math:: R^{l} = R^{l+1} \cdot [R^{l+1} > 0]

    Departs from the paper in one place, as Captum and the Grad-CAM paper's code do:
    max-pooling switches are the ordinary max-pool gradient.

    Example:
        >>> import torch, mmexplain as mx
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
        ...                             torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        ...                             torch.nn.Linear(4, 2)).eval()
        >>> mx.Deconvolution(model)(torch.rand(2, 3, 8, 8), lambda out: out[:, 0]).shape
        torch.Size([2, 3, 8, 8])
    """

    _function = _DeconvReLUFunction


class GuidedGradCAM:
    r"""Guided Grad-CAM (Selvaraju et al., Grad-CAM, Sec. 3): Guided Backprop x Grad-CAM.

    .. math:: G^{c} = \mathrm{GuidedBackprop}^{c} \odot \mathrm{up}(L^{c}_{\mathrm{Grad\text{-}CAM}})

    where :math:`\mathrm{up}(L^c)` is the Grad-CAM map upsampled (bilinear) to the image
    and min-max normalised to [0, 1], broadcast over the colour channels. The result is
    high-resolution (pixel-space) and class-discriminative.

    Two forward passes are made: one with the guided ReLU rule for the pixel gradient,
    one through :class:`mmexplain.GradCAM` with ordinary ReLUs for the map.

    Args:
        model: the network.
        layer: the Grad-CAM layer, a dotted name or a module.
        reshape: for token-shaped layers, ``(B, T, D) -> (B, D, h, w)``.

    Example:
        >>> import torch, mmexplain as mx
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
        ...                             torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        ...                             torch.nn.Linear(4, 2)).eval()
        >>> ggc = mx.GuidedGradCAM(model, layer="0")
        >>> ggc(torch.rand(2, 3, 8, 8), mx.targets.ClassLogit(1)).shape
        torch.Size([2, 3, 8, 8])
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str | nn.Module,
        *,
        reshape: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        from .gradcam import GradCAM

        self.model = model
        self.gradcam = GradCAM(model, layer, reshape=reshape)
        self.guided = GuidedBackprop(model)

    def __call__(
        self, inputs: Inputs, target: Target | Sequence[Target], *, image_key: int | str | None = None
    ) -> Tensor:
        """Guided Grad-CAM of ``target`` (or of each of a list of targets).

        Args:
            inputs: what ``model`` takes: a tensor, a tuple (positional) or a dict (keywords).
            target: a callable ``output -> (B,)``, or a list of N of them.
            image_key: which tuple index / dict key is the image; default the first
                floating 4-D tensor.

        Returns:
            ``(B, C, H, W)``, or ``(N, B, C, H, W)`` for a list of targets.
        """
        guided = self.guided._gradient(inputs, target, image_key)  # (B, C, H, W) | (N, B, C, H, W)
        size = tuple(guided.shape[-2:])
        if isinstance(target, tuple):
            target = list(target)
        maps = self.gradcam(inputs, target, size=size).maps  # (B, H, W) | (N, B, H, W)
        return guided_gradcam(guided, maps)


def guided_gradcam(guided: Tensor, maps: Tensor) -> Tensor:
    """Guided Grad-CAM from its two parts, for callers that already hold both.

    Args:
        guided: (..., C, H, W) guided-backprop gradients.
        maps: (..., h, w) Grad-CAM maps in [0, 1] with the same leading axes; upsampled
            (bilinear) to (H, W) when their size differs.

    Returns:
        (..., C, H, W) = guided x map, the map broadcast over the channels.
    """
    if tuple(maps.shape[-2:]) != tuple(guided.shape[-2:]):
        lead = maps.shape[:-2]
        flat = F.interpolate(maps.reshape(-1, 1, *maps.shape[-2:]), size=tuple(guided.shape[-2:]), mode="bilinear", align_corners=False)
        maps = flat.reshape(*lead, *guided.shape[-2:])
    return guided * maps.unsqueeze(-3).to(guided.dtype)
