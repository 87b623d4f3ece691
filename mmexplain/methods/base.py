"""What every method shares: the result type, layer lookup, inputs, upsampling, checks.

``CAMResult`` is what every method returns. ``find_image`` / ``replace_image`` read and
swap the image of tensor, tuple or dict inputs; ``repeat_rows`` / ``batch_rows`` build and
read copies of a batch (perturbation methods); ``kept_buffers`` restores every buffer
(BatchNorm running statistics) a training-mode forward updates; ``warn_training`` says
once per call that a training-mode model changes the explanation; ``check_size`` and
``check_targets`` validate the common arguments. The hook context is ``hooks.Site``.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError, InputTypeError
from .pictures import PictureInputs


__all__ = [
    "CAMResult", "resolve_layer", "upsample_and_normalize", "call_model", "find_image", "replace_image", "image_key",
    "repeat_rows", "batch_rows", "detach_all", "module_name", "kept_buffers", "check_finite", "check_targets",
    "check_size", "warn_training",
]

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
        weights: (B, K) alpha_k = mean_ij dy/dA^k_ij for gradient methods; a forward-only
            method's own channel weights (Score-CAM, Ablation-CAM, Eigen-CAM); (B, 0) for
            occlusion, which has no channels.
        scores: (B,) the explained scalar y.
        activations: (B, K, u, v) the layer's activation A (detached).
        output: the model's output, detached.
        extra: for each ``extra_layers`` name, (activation (B, ...), gradient (B, ...)
            or (N, B, ...)) of that layer's output, from the same backward.
        many: True when the call took a list of targets.
        pixels: (B, C, H, W) a pixel-resolution map (Guided Grad-CAM: guided backprop x
            the map), else None.
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
    pixels: Tensor | None = None

    def __len__(self) -> int:
        return self.maps.shape[0] if self.many else 1

    def __getitem__(self, n: int) -> CAMResult:
        """The single-target result of target n of a multi-target call."""
        if not self.many:
            raise InputTypeError("CAMResult index: this result explains one target; index only a list-of-targets result")
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
            pixels=None if self.pixels is None else self.pixels[n],
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
            raise InputError(f"layer: the module {type(layer).__name__} is not a submodule of the model")
        return layer
    if not isinstance(layer, str):
        raise InputTypeError(f"layer: expected a dotted module name or an nn.Module, got {type(layer).__name__}")
    modules = dict(model.named_modules())
    if layer in modules and layer != "":
        return modules[layer]
    names = [n for n in modules if n]
    nearest = difflib.get_close_matches(layer, names, n=3, cutoff=0.0)
    raise InputError(f"layer {layer!r} not found; nearest: {', '.join(nearest) or '(model has no submodules)'}")


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
    if isinstance(inputs, PictureInputs):
        return model(**inputs.model_inputs())
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    raise InputTypeError(f"inputs: expected a tensor, a tuple/list (positional) or a dict (keywords), got {type(inputs).__name__}")


def _slots(inputs: Any) -> dict[Any, Any]:
    if isinstance(inputs, Tensor):
        return {None: inputs}
    if isinstance(inputs, Mapping):
        return dict(inputs)
    if isinstance(inputs, (tuple, list)):
        return dict(enumerate(inputs))
    raise InputTypeError(f"inputs: expected a tensor, a tuple/list (positional) or a dict (keywords), got {type(inputs).__name__}")


def _is_image(value: Any) -> bool:
    return isinstance(value, Tensor) and value.dim() == 4 and value.is_floating_point()


def image_key(inputs: Any, key: int | str | None = None) -> int | str | None:
    """Where the image is: ``key`` checked, or the first floating 4-D tensor's index / key.

    Raises:
        ValueError: no such tensor, an unknown ``key``, or ``key`` names no floating 4-D tensor.
    """
    slots = _slots(inputs)
    if key is None:
        found = next((k for k, v in slots.items() if _is_image(v)), _MISSING)
        if found is _MISSING:
            got = f" (got dtype {inputs.dtype}, shape {tuple(inputs.shape)})" if isinstance(inputs, Tensor) else ""
            raise InputError(f"inputs: expected a floating (B, C, H, W) image tensor among the inputs{got}; pass image_key=")
        return found
    if isinstance(inputs, Tensor) or key not in slots:
        raise InputError(f"image_key {key!r} not in inputs; available: {list(slots) if not isinstance(inputs, Tensor) else 'none (a tensor)'}")
    if not _is_image(slots[key]):
        value = slots[key]
        got = f"{value.dtype} {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
        raise InputError(f"inputs[{key!r}] must be a floating (B, C, H, W) tensor; got {got}")
    return key


_MISSING = object()


def find_image(inputs: Any, key: int | str | None = None) -> Tensor | None:
    """The image (B, C, H, W) of the inputs (``key``, or the first floating 4-D tensor; a
    :class:`~.pictures.PictureInputs`' picture about its zero), or None."""
    if isinstance(inputs, PictureInputs):
        return inputs.centred() if key is None else None
    try:
        return _slots(inputs)[image_key(inputs, key)]
    except (TypeError, ValueError):
        return None


def replace_image(inputs: Any, image: Tensor, key: int | str | None = None) -> Any:
    """``inputs`` with its image (``key``, or the first floating 4-D tensor) replaced by ``image``
    (a :class:`~.pictures.PictureInputs`' picture: ``image`` is about its zero, as ``find_image`` gives it).

    Raises:
        ValueError: the inputs hold no such tensor.
    """
    if isinstance(inputs, PictureInputs) and key is None:
        return inputs.with_centred(image)
    where = image_key(inputs, key)
    if isinstance(inputs, Tensor):
        return image
    if isinstance(inputs, Mapping):
        out = copy.copy(inputs) if isinstance(inputs, dict) else dict(inputs)
        out[where] = image
        return out
    values = [*inputs[:where], image, *inputs[where + 1:]]
    return values if isinstance(inputs, list) else tuple(values)


def repeat_rows(obj: Any, copies: int, rows: int) -> Any:
    """Every tensor in ``obj`` whose first axis has ``rows`` rows, repeated ``copies`` times (copy-major)."""
    if isinstance(obj, PictureInputs):
        return obj.repeated(copies) if obj.picture.shape[0] == rows else obj
    if isinstance(obj, Tensor):
        if copies == 1 or obj.dim() == 0 or obj.shape[0] != rows:
            return obj
        return obj.repeat(copies, *([1] * (obj.dim() - 1)))  # (copies*rows, ...)
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(repeat_rows(o, copies, rows) for o in obj)
    if isinstance(obj, list):
        return [repeat_rows(o, copies, rows) for o in obj]
    if isinstance(obj, Mapping):
        out = copy.copy(obj) if isinstance(obj, dict) else dict(obj)
        for key, value in obj.items():
            out[key] = repeat_rows(value, copies, rows)
        return out
    return obj


def detach_all(obj: Any) -> Any:
    """Every tensor in ``obj`` (nested tuple/list/dict, ModelOutput kept) detached."""
    if isinstance(obj, Tensor):
        return obj.detach()
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(detach_all(o) for o in obj)
    if isinstance(obj, list):
        return [detach_all(o) for o in obj]
    if isinstance(obj, dict):
        out = copy.copy(obj)  # keeps dict subclasses such as transformers' ModelOutput
        for key, value in obj.items():
            out[key] = detach_all(value)
        return out
    return obj


def batch_rows(obj: Any, start: int, stop: int, rows: int) -> Any:
    """Rows start..stop of every tensor in ``obj`` whose batch axis has ``rows`` rows."""
    if isinstance(obj, Tensor):
        return obj[start:stop] if obj.dim() > 0 and obj.shape[0] == rows else obj
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(batch_rows(o, start, stop, rows) for o in obj)
    if isinstance(obj, list):
        return [batch_rows(o, start, stop, rows) for o in obj]
    if isinstance(obj, dict):
        out = copy.copy(obj)
        for key, value in obj.items():
            out[key] = batch_rows(value, start, stop, rows)
        return out
    return obj


@contextlib.contextmanager
def kept_buffers(model: nn.Module) -> Iterator[None]:
    """Restore every buffer of ``model`` on exit (also after an exception).

    A forward in training mode updates BatchNorm's ``running_mean``, ``running_var`` and
    ``num_batches_tracked``; an explanation must not. Nothing is copied when no module
    is in training mode (eval-mode forwards change no buffer).
    """
    if not any(m.training for m in model.modules()):
        yield
        return
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def check_finite(tensor: Tensor, what: str) -> None:
    """ValueError naming ``what`` when ``tensor`` holds NaN or infinity."""
    if tensor.is_floating_point() or tensor.is_complex():
        bad = ~torch.isfinite(tensor)
        if bool(bad.any()):
            raise InputError(
                f"{what} is not finite ({int(bad.sum())} of {tensor.numel()} values are NaN or inf); "
                "check the input image and the model's weights"
            )


def check_size(size: Any, name: str = "size") -> tuple[int, int]:
    """``size`` as (H, W) of two positive ints (a map's size, a patch grid); ValueError naming ``name`` otherwise."""
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise InputError(f"{name}: expected (H, W) with two positive ints, got {size!r}")
    return (int(size[0]), int(size[1]))


def warn_training(model: nn.Module, *, stacklevel: int = 3) -> None:
    """One warning when ``model`` is in training mode (dropout, batch statistics change a map)."""
    if model.training:
        warnings.warn(
            "model is in training mode: dropout and batch-norm batch statistics change the explanation "
            "(the running statistics are restored afterwards); call model.eval() first",
            stacklevel=stacklevel,
        )


def check_targets(targets: Any, *, name: str = "targets") -> tuple[bool, list[Any]]:
    """(was a list given, the targets as a list): a target or a non-empty list of callables ``output -> (B,)``."""
    many = isinstance(targets, (list, tuple))
    target_list = list(targets) if many else [targets]
    if not target_list:
        raise InputError(f"{name}: expected a target or a non-empty list of targets, got an empty list")
    for i, t in enumerate(target_list):
        if not callable(t):
            raise InputTypeError(f"{name}[{i}]: expected a callable output -> (B,), got {type(t).__name__}")
    return many, target_list


def module_name(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name or type(module).__name__
    return type(module).__name__
