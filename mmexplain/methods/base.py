"""What every method shares: hook capture, the result type, layer lookup, upsampling.

A method runs the model once through ``_Capture`` hooks, gets the hooked layer's
activation (and, for gradient methods, its gradient per target), and returns a
``CAMResult``. The tensor is read at the layer's output, or at its first tensor input
(``input=True``, a forward pre-hook), at its only call or at its ``call``-th call when
the module runs several times in one forward. ``edited_forward`` runs one more forward
with that tensor replaced (Ablation-CAM). ``replace_image`` and ``_repeat_rows`` build
perturbed copies of multimodal inputs. Hooks live for one call and are removed in
``finally``.

Threads: a hook acts only in the thread that registered it (the capture records the
thread's id); a forward of the same model in another thread passes through it untouched,
so one model can be explained and used from several threads at once, each call seeing
only its own forward. ``kept_buffers`` restores every buffer (BatchNorm running
statistics) a training-mode forward updates.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


__all__ = [
    "CAMResult", "resolve_layer", "upsample_and_normalize", "call_model", "find_image", "replace_image",
    "edited_forward", "module_name", "kept_buffers", "check_finite",
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


def replace_image(inputs: Any, image: Tensor) -> Any:
    """``inputs`` with its image (the tensor ``find_image`` returns) replaced by ``image``.

    Raises:
        ValueError: the inputs hold no floating 4-D tensor.
    """
    if isinstance(inputs, Tensor):
        if find_image(inputs) is None:
            raise ValueError(f"inputs: expected a floating (B, C, H, W) image tensor, got shape {tuple(inputs.shape)}")
        return image
    old = find_image(inputs)
    if old is None:
        raise ValueError("inputs: no floating (B, C, H, W) image tensor found in the tuple/dict")
    if isinstance(inputs, Mapping):
        out = copy.copy(inputs) if isinstance(inputs, dict) else dict(inputs)
        key = next(k for k, v in inputs.items() if v is old)
        out[key] = image
        return out
    i = next(i for i, v in enumerate(inputs) if v is old)
    values = [*inputs[:i], image, *inputs[i + 1 :]]
    return values if isinstance(inputs, list) else tuple(values)


def _repeat_rows(obj: Any, copies: int, rows: int) -> Any:
    """Every tensor in ``obj`` whose first axis has ``rows`` rows, repeated ``copies`` times (copy-major)."""
    if isinstance(obj, Tensor):
        if copies == 1 or obj.dim() == 0 or obj.shape[0] != rows:
            return obj
        return obj.repeat(copies, *([1] * (obj.dim() - 1)))  # (copies*rows, ...)
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_repeat_rows(o, copies, rows) for o in obj)
    if isinstance(obj, list):
        return [_repeat_rows(o, copies, rows) for o in obj]
    if isinstance(obj, Mapping):
        out = copy.copy(obj) if isinstance(obj, dict) else dict(obj)
        for key, value in obj.items():
            out[key] = _repeat_rows(value, copies, rows)
        return out
    return obj


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
    first = f" whose first item is {type(output[0]).__name__}" if isinstance(output, (tuple, list)) and output else ""
    raise TypeError(
        f"layer {name!r} returns a {type(output).__name__}{first}, not a tensor; Grad-CAM explains a tensor "
        "activation: choose a layer whose output is a (B, K, u, v) tensor, or a (B, T, D) one with reshape="
    )


def _replace_first(output: Any, tensor: Tensor) -> Any:
    if isinstance(output, Tensor):
        return tensor
    return type(output)([tensor, *output[1:]]) if isinstance(output, list) else (tensor, *output[1:])


class _Capture:
    """Hooks that capture each hooked tensor (a new leaf for the first) and switch autograd on.

    The first layer of ``layers`` is the explained one: its tensor is read from its
    output, or from its first tensor input with ``input=True`` (a forward pre-hook), and
    at its ``call``-th call (0-based) when the module runs several times in one forward;
    without ``call`` a second call is an error. Extra layers are read from their output
    at their only call.

    ``copies`` > 1 repeats the first layer's tensor that many times along the batch
    axis (target-major) before it becomes the leaf: one copy per target. With
    ``grad=False`` the tensor is only recorded (detached) and autograd stays off.
    """

    def __init__(
        self,
        layers: dict[str, nn.Module],
        *,
        copies: int = 1,
        grad: bool = True,
        input: bool = False,
        call: int | None = None,
    ) -> None:
        self.layers = layers
        self.copies = copies
        self.grad = grad
        self.input = input
        self.call = call
        self.leaves: dict[str, Tensor] = {}
        self.calls: dict[str, int] = dict.fromkeys(layers, 0)
        self.thread = threading.get_ident()  # hooks act only for forwards in this thread

    def register(self) -> list[Any]:
        """Register one hook per layer; the caller removes the returned handles in ``finally``."""
        handles: list[Any] = []
        try:
            for i, (name, module) in enumerate(self.layers.items()):
                first = i == 0
                take = _at_call(self.calls, name, self.call if first else None, self._take(name))
                handles.append(_hook_tensor(module, name, take, input=self.input and first, thread=self.thread))
        except BaseException:
            for handle in handles:
                handle.remove()
            raise
        return handles

    def hook(self, name: str) -> Callable[..., Any]:
        """A forward hook ``fn(module, args, output)`` capturing ``name``'s output at its only call."""
        take = _at_call(self.calls, name, None, self._take(name))

        def fn(module: nn.Module, args: Any, output: Any) -> Any:
            if threading.get_ident() != self.thread:
                return None  # another thread's forward: not this call's
            new = take(_first_tensor(output, name))
            return None if new is None else _replace_first(output, new)

        return fn

    def check(self) -> None:
        """After the forward: every layer ran, and the explained one often enough for ``call``."""
        missing = [name for name in self.layers if self.calls[name] == 0]
        if missing:
            raise ValueError(f"layer {missing[0]!r} did not run during the forward pass; choose a layer the model uses")
        name = next(iter(self.layers))
        if self.call is not None and name not in self.leaves:
            raise ValueError(
                f"call: layer {name!r} ran {self.calls[name]} time(s) in the forward pass; "
                f"call={self.call} (0-based) needs at least {self.call + 1}"
            )

    def _take(self, name: str) -> Callable[[Tensor], Tensor | None]:
        def fn(tensor: Tensor) -> Tensor | None:
            if not tensor.is_floating_point():
                raise TypeError(f"layer {name!r} tensor has dtype {tensor.dtype}; expected floating point")
            if not self.grad:
                self.leaves[name] = tensor.detach().clone()
                return None  # the tensor is left as it is
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
            return leaf.clone()

        return fn


def _at_call(
    counts: dict[str, int], name: str, call: int | None, fn: Callable[[Tensor], Tensor | None]
) -> Callable[[Tensor], Tensor | None]:
    """``fn`` applied at the ``call``-th call of layer ``name`` only; without ``call``, a second call raises."""

    def at(tensor: Tensor) -> Tensor | None:
        index = counts[name]
        counts[name] = index + 1
        if call is None:
            if index > 0:
                raise ValueError(
                    f"layer {name!r} ran twice in one forward pass; Grad-CAM explains one activation: "
                    "hook a layer that runs once, or pass call=k to explain its k-th call (0-based)"
                )
            return fn(tensor)
        return fn(tensor) if index == call else None

    return at


def _hook_tensor(
    module: nn.Module, name: str, fn: Callable[[Tensor], Tensor | None], *, input: bool, thread: int | None = None
) -> Any:
    """Register ``fn(tensor) -> replacement | None`` on the module's output, or on its first tensor input.

    The hook acts only for forwards run by the thread ``thread`` (default: the calling
    thread); other threads' forwards through the module pass untouched.

    Returns:
        The hook's handle.
    """
    owner = threading.get_ident() if thread is None else thread
    if not input:

        def post(module: nn.Module, args: Any, output: Any) -> Any:
            if threading.get_ident() != owner:
                return None
            new = fn(_first_tensor(output, name))
            return None if new is None else _replace_first(output, new)

        return module.register_forward_hook(post, prepend=True)  # before the model's own hooks (transformers' hidden-state capture)

    def pre(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if threading.get_ident() != owner:
            return None
        for i, value in enumerate(args):
            if isinstance(value, Tensor):
                new = fn(value)
                return None if new is None else ((*args[:i], new, *args[i + 1 :]), kwargs)
        for key, value in kwargs.items():
            if isinstance(value, Tensor):
                new = fn(value)
                return None if new is None else (args, {**kwargs, key: new})
        raise TypeError(f"layer {name!r} was called with no tensor argument; input=True explains its first tensor input")

    return module.register_forward_pre_hook(pre, with_kwargs=True, prepend=True)


def edited_forward(
    model: nn.Module,
    inputs: Any,
    layer: nn.Module,
    edit: Callable[[Tensor], Tensor],
    *,
    name: str = "layer",
    input: bool = False,
    call: int | None = None,
) -> Any:
    """One forward pass with the layer's tensor replaced by ``edit(tensor)``.

    The tensor is the layer's output, or its first tensor input with ``input=True``, at
    its ``call``-th call (0-based; without ``call`` the layer must run once). The hook
    lives for this call only.

    Returns:
        The model's output.
    """
    counts = {name: 0}
    handle = _hook_tensor(layer, name, _at_call(counts, name, call, edit), input=input)
    try:
        output = call_model(model, inputs)
    finally:
        handle.remove()
    if counts[name] <= (call or 0):
        raise ValueError(f"layer {name!r} ran {counts[name]} time(s) in the forward pass; call={call} was not reached")
    return output


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
            raise ValueError(
                f"{what} is not finite ({int(bad.sum())} of {tensor.numel()} values are NaN or inf); "
                "check the input image and the model's weights"
            )


def _check_site(input: Any, call: Any) -> None:
    if not isinstance(input, bool):
        raise TypeError(f"input: expected True or False, got {type(input).__name__}")
    if call is not None and (isinstance(call, bool) or not isinstance(call, int) or call < 0):
        raise ValueError(f"call: expected None or a call index >= 0 (0-based), got {call!r}")


def check_targets(targets: Any, *, name: str = "targets") -> tuple[bool, list[Any]]:
    """(was a list given, the targets as a list): a target or a non-empty list of callables ``output -> (B,)``."""
    many = isinstance(targets, (list, tuple))
    target_list = list(targets) if many else [targets]
    if not target_list:
        raise ValueError(f"{name}: expected a target or a non-empty list of targets, got an empty list")
    for i, t in enumerate(target_list):
        if not callable(t):
            raise TypeError(f"{name}[{i}]: expected a callable output -> (B,), got {type(t).__name__}")
    return many, target_list


def module_name(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name or type(module).__name__
    return type(module).__name__
