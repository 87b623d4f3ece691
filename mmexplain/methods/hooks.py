"""The one hook context: a layer's tensor at its k-th call, for one forward, removed in ``finally``.

A :class:`Site` names where a tensor is read: a module's output, or its first tensor
input (``input=True``, a forward pre-hook, for a tensor that has no module of its own),
at its ``call``-th call (0-based) when the module runs several times in one forward;
without ``call`` a second call is an error. ``with site.hooked(fn): model(...)`` applies
``fn(tensor) -> replacement | None`` there: every method reads (a detached copy), swaps in
a gradient leaf, or edits (Ablation-CAM) through it, and so does Network Dissection.

Threads: the hook acts only for forwards run by the thread that entered the ``with``;
another thread's forward through the same module passes untouched.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ..errors import InputError, InputTypeError

__all__ = ["Site", "first_tensor"]

Edit = Callable[[Tensor], "Tensor | None"]


def first_tensor(output: Any, name: str) -> Tensor:
    """The tensor a module returns, or the first item of the tuple/list it returns."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    first = f" whose first item is {type(output[0]).__name__}" if isinstance(output, (tuple, list)) and output else ""
    raise InputTypeError(
        f"layer {name!r} returns a {type(output).__name__}{first}, not a tensor; the methods explain a tensor "
        "activation: choose a layer whose output is a (B, K, u, v) tensor, or a (B, T, D) one with reshape="
    )


def _replace_first(output: Any, tensor: Tensor) -> Any:
    if isinstance(output, Tensor):
        return tensor
    return type(output)([tensor, *output[1:]]) if isinstance(output, list) else (tensor, *output[1:])


@dataclass(frozen=True)
class Site:
    """Where a tensor is read: ``module``'s output (or first tensor input) at its ``call``-th call."""

    module: nn.Module
    name: str
    input: bool = False
    call: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.input, bool):
            raise InputTypeError(f"input: expected True or False, got {type(self.input).__name__}")
        if self.call is not None and (isinstance(self.call, bool) or not isinstance(self.call, int) or self.call < 0):
            raise InputError(f"call: expected None or a call index >= 0 (0-based), got {self.call!r}")

    @contextlib.contextmanager
    def hooked(self, fn: Edit) -> Iterator[None]:
        """Apply ``fn`` at this site during the ONE forward run inside the ``with``.

        Raises (after the forward): ValueError when the module did not run, ran twice
        without ``call``, or ran too few times for ``call``.
        """
        calls = [0]
        owner = threading.get_ident()

        def at(tensor: Tensor) -> Tensor | None:
            index = calls[0]
            calls[0] += 1
            if self.call is None and index > 0:
                raise InputError(
                    f"layer {self.name!r} ran twice in one forward pass; a method explains one activation: "
                    "hook a layer that runs once, or pass call=k to explain its k-th call (0-based)"
                )
            return fn(tensor) if index == (self.call or 0) else None

        def post(module: nn.Module, args: Any, output: Any) -> Any:
            if threading.get_ident() != owner:
                return None
            new = at(first_tensor(output, self.name))
            return None if new is None else _replace_first(output, new)

        def pre(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if threading.get_ident() != owner:
                return None
            for i, value in enumerate(args):
                if isinstance(value, Tensor):
                    new = at(value)
                    return None if new is None else ((*args[:i], new, *args[i + 1:]), kwargs)
            for key, value in kwargs.items():
                if isinstance(value, Tensor):
                    new = at(value)
                    return None if new is None else (args, {**kwargs, key: new})
            raise InputTypeError(f"layer {self.name!r} was called with no tensor argument; input=True explains its first tensor input")

        # prepend: before the model's own hooks (transformers' hidden-state capture)
        handle = (self.module.register_forward_pre_hook(pre, with_kwargs=True, prepend=True) if self.input
                  else self.module.register_forward_hook(post, prepend=True))
        try:
            yield
        finally:
            handle.remove()
        if calls[0] == 0:
            raise InputError(f"layer {self.name!r} did not run during the forward pass; choose a layer the model uses")
        if self.call is not None and calls[0] <= self.call:
            raise InputError(f"call: layer {self.name!r} ran {calls[0]} time(s) in the forward pass; "
                             f"call={self.call} (0-based) needs at least {self.call + 1}")
