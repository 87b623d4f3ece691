"""What every method shares: hook capture, the result type, layer lookup, upsampling.

A method runs the model once through ``capture`` hooks, gets the hooked layer's
activation (and, for gradient methods, its gradient per target), and returns a
``CAMResult``. Hooks live for one call and are removed in ``finally``.
"""

from __future__ import annotations

import copy
import difflib
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


__all__ = ["CAMResult", "resolve_layer", "upsample_and_normalize", "call_model", "find_image", "module_name"]

LayerSpec = str | nn.Module


@dataclass
class CAMResult:
    """What a Grad-CAM call returns.

    For one target the shapes are as below; for a list of N targets every field but
    ``activations`` and ``output`` gains a leading N axis (row n explains target n).

    Attributes:
        maps: (B, H, W) in [0, 1], bilinearly upsampled and min-max normalised per map.
        raw: (B, u, v) ReLU(sum_k alpha_k A^k) at the layer's resolution.
        pre_relu: (B, u, v) sum_k alpha_k A^k before the ReLU (linear in the target).
        weights: (B, K) alpha_k = mean_ij dy/dA^k_ij.
        scores: (B,) the explained scalar y.
        activations: (B, K, u, v) the layer's activation A (detached).
        output: the model's output, detached.
        extra: for each ``extra_layers`` name, (activation (B, ...), gradient (B, ...)
            or (N, B, ...)) of that layer's output, from the same backward.
        many: True when the call took a list of targets.
    """

    maps: Tensor
    raw: Tensor
    pre_relu: Tensor
    weights: Tensor
    scores: Tensor
    activations: Tensor
    output: Any = None
    extra: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)
    many: bool = False

    def __len__(self) -> int:
        return self.maps.shape[0] if self.many else 1

    def __getitem__(self, n: int) -> CAMResult:
        """The single-target result of target n of a multi-target call."""
        if not self.many:
            raise TypeError("CAMResult index: this result explains one target; index only a list-of-targets result")
        return CAMResult(
            maps=self.maps[n],
            raw=self.raw[n],
            pre_relu=self.pre_relu[n],
            weights=self.weights[n],
            scores=self.scores[n],
            activations=self.activations,
            output=self.output,
            extra={k: (a, g[n]) for k, (a, g) in self.extra.items()},
            many=False,
        )


def resolve_layer(model: nn.Module, layer: LayerSpec) -> nn.Module:
    """The submodule of ``model`` named by a dotted path, or ``layer`` itself if it is one.

    Raises:
        ValueError: the name is unknown (the message lists the nearest names), or the
            module is not part of ``model``.
        TypeError: ``layer`` is neither a string nor a module.
    """
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise ValueError(f"layer: the module {type(layer).__name__} is not a submodule of the model")
        return layer
    if not isinstance(layer, str):
        raise TypeError(f"layer: expected a dotted module name or an nn.Module, got {type(layer).__name__}")
    modules = dict(model.named_modules())
    if layer in modules and layer != "":
        return modules[layer]
    names = [n for n in modules if n]
    nearest = difflib.get_close_matches(layer, names, n=3, cutoff=0.0)
    raise ValueError(f"layer {layer!r} not found; nearest: {', '.join(nearest) or '(model has no submodules)'}")


def upsample_and_normalize(raw: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling to ``size`` then min-max normalisation of each map.

    Args:
        raw: (..., u, v) maps.
        size: (H, W) target size.

    Returns:
        (..., H, W) maps in [0, 1]; a constant map becomes all zeros (never NaN).
    """
    lead = raw.shape[:-2]
    flat = raw.reshape(-1, 1, *raw.shape[-2:])  # (M, 1, u, v)
    if tuple(flat.shape[-2:]) != tuple(size):
        flat = F.interpolate(flat, size=tuple(size), mode="bilinear", align_corners=False)
    flat = flat[:, 0]  # (M, H, W)
    low = flat.amin(dim=(-2, -1), keepdim=True)
    span = flat.amax(dim=(-2, -1), keepdim=True) - low
    normed = torch.where(span > 0, (flat - low) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(flat))
    return normed.reshape(*lead, *normed.shape[-2:])


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(inputs)`` for a tensor, ``model(*inputs)`` for a tuple/list, ``model(**inputs)`` for a dict."""
    if isinstance(inputs, Tensor):
        return model(inputs)
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    raise TypeError(f"inputs: expected a tensor, a tuple/list (positional) or a dict (keywords), got {type(inputs).__name__}")


def find_image(inputs: Any) -> Tensor | None:
    """The first floating-point 4-D tensor (B, C, H, W) in the inputs, or None."""
    if isinstance(inputs, Tensor):
        candidates: Sequence[Any] = [inputs]
    elif isinstance(inputs, Mapping):
        candidates = list(inputs.values())
    elif isinstance(inputs, (tuple, list)):
        candidates = inputs
    else:
        return None
    for value in candidates:
        if isinstance(value, Tensor) and value.dim() == 4 and value.is_floating_point():
            return value
    return None


def _detach(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach()
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_detach(o) for o in obj)
    if isinstance(obj, list):
        return [_detach(o) for o in obj]
    if isinstance(obj, dict):
        out = copy.copy(obj)  # keeps dict subclasses such as transformers' ModelOutput
        for key, value in obj.items():
            out[key] = _detach(value)
        return out
    return obj


def _batch_rows(obj: Any, start: int, stop: int, rows: int) -> Any:
    """Rows start..stop of every tensor in ``obj`` whose batch axis has ``rows`` rows."""
    if isinstance(obj, Tensor):
        return obj[start:stop] if obj.dim() > 0 and obj.shape[0] == rows else obj
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_batch_rows(o, start, stop, rows) for o in obj)
    if isinstance(obj, list):
        return [_batch_rows(o, start, stop, rows) for o in obj]
    if isinstance(obj, dict):
        out = copy.copy(obj)
        for key, value in obj.items():
            out[key] = _batch_rows(value, start, stop, rows)
        return out
    return obj


def _first_tensor(output: Any, name: str) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(f"layer {name!r} returned {type(output).__name__}; expected a tensor or a tuple starting with one")


def _replace_first(output: Any, tensor: Tensor) -> Any:
    if isinstance(output, Tensor):
        return tensor
    return type(output)([tensor, *output[1:]]) if isinstance(output, list) else (tensor, *output[1:])


class _Capture:
    """Forward hooks that capture each hooked output (a new leaf for the first) and switch autograd on.

    ``copies`` > 1 repeats the first layer's output that many times along the batch
    axis (target-major) before it becomes the leaf: one copy per target. With
    ``grad=False`` the output is only recorded (detached) and autograd stays off.
    """

    def __init__(self, layers: dict[str, nn.Module], *, copies: int = 1, grad: bool = True) -> None:
        self.layers = layers
        self.copies = copies
        self.grad = grad
        self.leaves: dict[str, Tensor] = {}

    def hook(self, name: str) -> Callable[..., Any]:
        def fn(module: nn.Module, args: Any, output: Any) -> Any:
            if name in self.leaves:
                raise ValueError(
                    f"layer {name!r} ran twice in one forward pass; Grad-CAM explains one activation: "
                    "hook a layer that runs once"
                )
            tensor = _first_tensor(output, name)
            if not tensor.is_floating_point():
                raise TypeError(f"layer {name!r} output has dtype {tensor.dtype}; expected floating point")
            if not self.grad:
                self.leaves[name] = tensor.detach().clone()
                return None  # the output is left as it is
            # the first hooked layer starts the graph; a later one (reached through it) keeps
            # its place in that graph, so gradients flow back to the earlier layer too
            if tensor.requires_grad:
                leaf = tensor
            else:
                if self.copies > 1:
                    tensor = tensor.repeat(self.copies, *([1] * (tensor.dim() - 1)))  # (N*B, ...)
                leaf = tensor.detach().requires_grad_(True)
            self.leaves[name] = leaf
            torch.set_grad_enabled(True)  # the rest of the forward builds the graph
            # clone: in-place ops right after the layer (ReLU(inplace=True)) must not touch the leaf
            return _replace_first(output, leaf.clone())

        return fn


def module_name(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name or type(module).__name__
    return type(module).__name__
