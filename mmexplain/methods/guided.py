"""Pixel-space gradient methods: Guided Backpropagation, Deconvolution, Guided Grad-CAM.

All three return a gradient with respect to the *image* tensor, ``(B, C, H, W)``,
and differ only in the rule applied when the gradient flows back through a ReLU-like
unit ``f`` (``f'`` its ordinary derivative, ``g`` the incoming gradient):

=====================  ==============  =====================================  ==================
unit                   plain gradient  Guided Backprop ``f'(x) * ReLU(g)``    Deconvolution
=====================  ==============  =====================================  ==================
ReLU                   ``g [x > 0]``   ``g [x > 0] [g > 0]``                  ``g [g > 0]``
ReLU6, hardtanh(0, m)  ``g [0<x<m]``   ``g [0 < x < m] [g > 0]``              ``g [g > 0]``
LeakyReLU (slope s)    ``g (1 | s)``   ``g (1 if x > 0 else s) [g > 0]``      ``g [g > 0]``
=====================  ==============  =====================================  ==================

Guided Backprop (Springenberg et al. 2015) is the unit's ordinary backward with the
negative incoming gradient removed; Deconvolution (Zeiler & Fergus 2014) passes the
positive part of the incoming gradient whatever the forward input was. For ReLU6 the
clip at 6 is part of the unit's derivative, so guided passes only where 0 < x < 6.
For LeakyReLU the leak is kept (a unit at negative input still passes ``s`` times the
positive gradient): it is the unit's own derivative, the rule reduces to the ReLU rule
as ``s -> 0``, and treating the unit as a plain ReLU would drop evidence the network
does propagate. A hardtanh whose lower bound is not 0 is not ReLU-like and keeps its
ordinary gradient, as do SiLU, GELU and hardswish; a call that meets no ReLU-like unit
at all warns that the rule was undefined there and that the plain input gradient was
returned.

The rule is swapped in for the duration of one call by a
:class:`torch.overrides.TorchFunctionMode` that replaces every ReLU-like *call* —
``nn.ReLU`` / ``nn.ReLU6`` / ``nn.Hardtanh`` / ``nn.LeakyReLU`` modules, ``F.relu``,
``torch.relu``, ``Tensor.relu``, ``F.relu6``, ``F.hardtanh``, ``F.leaky_relu`` and the
in-place variants (``inplace=True``, ``relu_``, ``hardtanh_``, ``leaky_relu_``) — by a
custom ``autograd.Function``. Peer libraries that swap ``nn.ReLU`` modules silently
compute plain gradients through functional ReLUs (e.g. torchvision's DenseNet, which
calls ``F.relu`` in ``forward``) and through ReLU6 (MobileNet-v2). Nothing on the model
is modified: no module is replaced, no hook registered, no flag changed, and
``param.grad`` is never touched (``torch.autograd.grad`` is taken with respect to a
detached copy of the image only).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..targets import Target

from .base import CAMResult, call_model, check_targets, image_key, kept_buffers, replace_image, warn_training
from .core import score_of
from .gradcam import GradCAM
from ..errors import InputError, InputTypeError

Inputs = Tensor | tuple[Any, ...] | Mapping[str, Any]

__all__ = ["GuidedBackprop", "Deconvolution", "GuidedGradCAM", "guided_gradcam", "relu_units"]


# --------------------------------------------------------------------------- unit rules
def _unit_forward(x: Tensor, high: float, slope: float) -> tuple[Tensor, Tensor]:
    """The unit's output and its derivative f'(x): ReLU (high=inf, slope=0), clipped ReLU, LeakyReLU."""
    if slope:
        return torch.where(x > 0, x, x * slope), torch.where(x > 0, 1.0, slope).to(x.dtype)
    out = x.clamp(min=0) if math.isinf(high) else x.clamp(min=0, max=high)
    deriv = (x > 0) if math.isinf(high) else (x > 0) & (x < high)
    return out, deriv.to(x.dtype)  # a saved mask, so a later in-place write to x is harmless


class _GuidedFunction(torch.autograd.Function):
    """Unit forward; backward ``f'(x) * ReLU(grad_out)`` (Springenberg et al.)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, high: float, slope: float) -> Tensor:
        out, deriv = _unit_forward(x, high, slope)
        ctx.save_for_backward(deriv)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None, None]:
        (deriv,) = ctx.saved_tensors
        return grad_out.clamp(min=0) * deriv, None, None


class _DeconvFunction(torch.autograd.Function):
    """Unit forward; backward ``ReLU(grad_out)`` (Zeiler & Fergus deconvnet)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, high: float, slope: float) -> Tensor:
        return _unit_forward(x, high, slope)[0]

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None, None]:
        return grad_out.clamp(min=0), None, None


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], i: int, name: str, default: Any) -> Any:
    return args[i] if len(args) > i else kwargs.get(name, default)


def _unit(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[float, float, bool] | None:
    """(high, slope, inplace) when ``func(*args, **kwargs)`` is a ReLU-like unit, else None."""
    if any(func is f for f in (F.relu, torch.relu, Tensor.relu)):  # identity: some funcs are unhashable
        return math.inf, 0.0, bool(_arg(args, kwargs, 1, "inplace", False)) if func is F.relu else False
    if any(func is f for f in (torch.relu_, Tensor.relu_)):  # F.relu_ is torch.relu_
        return math.inf, 0.0, True
    if func is F.relu6:
        return 6.0, 0.0, bool(_arg(args, kwargs, 1, "inplace", False))
    if func is F.hardtanh or func is F.hardtanh_:
        low, high = float(_arg(args, kwargs, 1, "min_val", -1.0)), float(_arg(args, kwargs, 2, "max_val", 1.0))
        if low != 0.0 or high <= 0.0:
            return None  # not a clipped ReLU: its ordinary gradient
        return high, 0.0, func is F.hardtanh_ or bool(_arg(args, kwargs, 3, "inplace", False))
    if func is F.leaky_relu or func is F.leaky_relu_:
        slope = float(_arg(args, kwargs, 1, "negative_slope", 0.01))
        return math.inf, slope, func is F.leaky_relu_ or bool(_arg(args, kwargs, 2, "inplace", False))
    return None


def _module_unit(module: nn.Module) -> tuple[float, float, bool] | None:
    """The rule of ``_unit`` for a module: the functional call each ReLU-like module makes."""
    if isinstance(module, nn.ReLU):
        return _unit(F.relu, (None,), {})
    if isinstance(module, nn.Hardtanh):  # ReLU6 is a hardtanh(0, 6)
        return _unit(F.hardtanh, (None, module.min_val, module.max_val), {})
    if isinstance(module, nn.LeakyReLU):
        return _unit(F.leaky_relu, (None, module.negative_slope), {})
    return None


def relu_units(model: nn.Module) -> int:
    """How many submodules of ``model`` are ReLU-like units (guided backprop's rule is defined there).

    The same rule as the backward's (ReLU, ReLU6, hardtanh(0, m), LeakyReLU); functional
    calls (``F.relu`` in a ``forward``) are only seen while a call runs, so 0 here means
    "no ReLU-like module", not "no ReLU".
    """
    return sum(_module_unit(m) is not None for m in model.modules())


class _ReLURuleMode(TorchFunctionMode):
    """Routes every ReLU-like call made while active through ``function``; counts them in ``units``."""

    def __init__(self, function: type[torch.autograd.Function]) -> None:
        super().__init__()
        self.function = function
        self.units = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        unit = _unit(func, args, kwargs)
        if unit is None:
            return func(*args, **kwargs)
        high, slope, inplace = unit
        x = args[0] if args else kwargs["input"]
        self.units += 1
        out = self.function.apply(x, high, slope)
        if inplace:  # keep in-place semantics: the caller may read x afterwards
            return x.copy_(out)
        return out


# --------------------------------------------------------------------------- methods
class _ReLURuleGradient:
    """Input gradient of a target with one ReLU backward rule swapped in (one call, no state)."""

    _function: type[torch.autograd.Function]
    _rule: str

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise InputTypeError(f"model must be an nn.Module; got {type(model).__name__}")
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
        warn_training(self.model)
        with kept_buffers(self.model):  # a training-mode forward must not move BatchNorm statistics
            return self._gradient(inputs, target, image_key)

    def _gradient(self, inputs: Inputs, target: Target | Sequence[Target], image_key_: int | str | None) -> Tensor:
        many, targets = check_targets(target, name="target")
        if not isinstance(inputs, (Tensor, tuple, Mapping)):
            raise InputTypeError(f"inputs must be a tensor, a tuple or a dict; got {type(inputs).__name__}")
        key = image_key(inputs, image_key_)
        image = (inputs if isinstance(inputs, Tensor) else inputs[key]).detach().clone().requires_grad_(True)  # (B, C, H, W) leaf
        new_inputs = replace_image(inputs, image, key)
        batch = image.shape[0]
        grads = []
        mode = _ReLURuleMode(self._function)
        with torch.enable_grad(), mode:
            output = call_model(self.model, new_inputs)
            scores = [score_of(t, output, batch, index=i, grad=True) for i, t in enumerate(targets)]
        if mode.units == 0:
            warnings.warn(
                f"{type(self).__name__}: the model ran no ReLU-like unit (ReLU, ReLU6, hardtanh(0, m), LeakyReLU), "
                f"so the {self._rule} rule is undefined there (SiLU, GELU, ...); the plain input gradient was computed instead",
                UserWarning,
                stacklevel=3,
            )
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

    ReLU-like units are caught however they are called (``nn.ReLU``, ``F.relu``,
    ``torch.relu``, ``Tensor.relu``, ReLU6 / ``hardtanh(0, m)``, LeakyReLU, in-place
    variants), with the rules of the module docstring's table. Other activations (GELU,
    SiLU, hardswish) keep their ordinary gradient; a call that meets no ReLU-like unit
    warns and returns the plain input gradient. The per-sample gradient is that of the batch sum, so a model whose
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

    _function = _GuidedFunction
    _rule = "guided backprop"


class Deconvolution(_ReLURuleGradient):
    r"""Deconvolution (Zeiler & Fergus, "Visualizing and Understanding CNNs", ECCV 2014).

    The gradient of the target with respect to the image, where every ReLU-like unit
    passes back the positive part of the incoming gradient regardless of its forward input:

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

    _function = _DeconvFunction
    _rule = "deconvolution"


class GuidedGradCAM(GradCAM):
    r"""Guided Grad-CAM (Selvaraju et al., Grad-CAM, Sec. 3): Guided Backprop x Grad-CAM.

    .. math:: G^{c} = \mathrm{GuidedBackprop}^{c} \odot \mathrm{up}(L^{c}_{\mathrm{Grad\text{-}CAM}})

    where :math:`\mathrm{up}(L^c)` is the Grad-CAM map upsampled (bilinear) to the image
    and min-max normalised to [0, 1], broadcast over the colour channels. The result is
    high-resolution (pixel-space) and class-discriminative.

    Two forward passes are made: one through Grad-CAM with ordinary ReLUs for the map,
    one with the guided ReLU rule for the pixel gradient. The result is Grad-CAM's
    ``CAMResult`` with ``res.pixels`` (B, C, H, W) = guided backprop x map: a map at pixel
    resolution (its saliency, in the registry, is ``|pixels|`` summed over the colours).

    Args:
        model: the network.
        layer: the Grad-CAM layer, a dotted name or a module.
        **options: ``reshape``, ``input``, ``call`` as for :class:`mmexplain.GradCAM`.

    Example:
        >>> import torch, mmexplain as mx
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
        ...                             torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        ...                             torch.nn.Linear(4, 2)).eval()
        >>> res = mx.GuidedGradCAM(model, layer="0")(torch.rand(2, 3, 8, 8), mx.targets.ClassLogit(1))
        >>> res.pixels.shape, res.maps.shape
        (torch.Size([2, 3, 8, 8]), torch.Size([2, 8, 8]))

    Departures from the paper: none.
    """

    #: guided backprop reads the plain inputs, so targets are never copied along the batch
    targets_in_batch_ok = False

    def __call__(self, inputs: Inputs, targets: Target | Sequence[Target], *, image_key: int | str | None = None,
                 **options: Any) -> CAMResult:
        """Grad-CAM of the targets (``options`` as for GradCAM, not ``targets_in_batch``), plus ``res.pixels``."""
        if options.get("targets_in_batch"):
            raise InputError("targets_in_batch: Guided Grad-CAM's guided backprop takes the plain inputs; call without it")
        targets = list(targets) if isinstance(targets, tuple) else targets
        res = super().__call__(inputs, targets, **options)  # warns once for a training-mode model
        with kept_buffers(self.model):
            guided = GuidedBackprop(self.model)._gradient(inputs, targets, image_key)  # (B, C, H, W) | (N, B, C, H, W)
        res.pixels = guided_gradcam(guided, res.maps)
        return res


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
