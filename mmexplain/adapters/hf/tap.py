"""``VisionTap``: run a VLM unchanged and pass one of its vision layers' output through a module of ours.

Three things make a VLM's vision layer awkward to hook directly, and the tap fixes all
three for the duration of one call:

* transformers records hidden states with forward hooks installed on the model's first
  forward (``utils.output_capturing``); LLaVA reads ``hidden_states[vision_feature_layer]``
  from them. A hook registered later runs after theirs, so a replaced output never
  reaches the language model. The tap's hook is registered with ``prepend=True``: the
  replacement is what every later hook, and the rest of the model, sees.
* Qwen2-VL's vision tower is unbatched, ``(tokens, D)``, and Idefics3's is one row per
  tile; the tap hands ``features`` one sequence ``(1, L, D)`` (one image per call) and
  gives the model back its own shape. A convolutional ``(B, C, h, w)`` output passes as it is.
* a bf16/fp16 model: ``features`` sees float32 (lossless upcast) and the model gets its
  own dtype back, so the engine computes activation, gradient and map in float32.

The engine explains ``features`` (an ``nn.Identity``): its output is the site's output.
Nothing is kept between calls; the hook is removed in ``finally``.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU())
    >>> tap = VisionTap(net, "0")
    >>> seen = []
    >>> handle = tap.features.register_forward_hook(lambda m, a, o: seen.append(o.shape))
    >>> tap(input=torch.ones(5, 3)).shape, seen     # the site's (5, 4) is seen as (1, 5, 4)
    (torch.Size([5, 4]), [torch.Size([1, 5, 4])])
    >>> handle.remove()
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

from .wrappers import ModelWrapper
from ...errors import InputError, InputTypeError

__all__ = ["VisionTap"]


class VisionTap(ModelWrapper):
    """The wrapped model, with the output of its module ``site`` (or modules) routed through ``self.features``.

    Args:
        model: the transformers model (a child module named ``model``).
        site: dotted name (in ``model``) of the vision layer whose output is explained, or a list of
            layers the language model reads (VipLLaVA's ``vision_feature_layer`` list, Qwen3-VL's deepstack
            blocks). Several layers must have the same number of tokens; ``features`` then sees them
            concatenated along channels ``(1, L, D_1 + ... + D_S)``, so Grad-CAM's
            ``sum_k alpha_k A^k`` over those channels is the sum of the layers' pre-ReLU maps on one grid.
            Later layers depend on earlier ones, so the layers' outputs are recorded first, without
            gradients, by the model's ``get_image_features`` (the vision path only); the forward adds ``slice - slice.detach()`` to each layer's output
            (the same values; the gradient of each slice is the gradient at its layer).
    """

    def __init__(self, model: nn.Module, site: str | list[str]) -> None:
        super().__init__()
        self.model = model
        self.sites = [site] if isinstance(site, str) else list(site)
        if not self.sites:
            raise InputError("site: expected at least one layer name")
        self.site = self.sites[-1]
        self.features = nn.Identity()
        for name in self.sites:
            try:
                model.get_submodule(name)
            except AttributeError as exc:
                raise InputError(f"layer {name!r} not found in {type(model).__name__}") from exc

    def forward(self, **inputs: Any) -> Any:
        if len(self.sites) > 1:
            return self._several(inputs)
        handle = self.model.get_submodule(self.site).register_forward_hook(self._route, prepend=True)
        try:
            return self.model(**inputs)
        finally:
            handle.remove()

    def _several(self, inputs: dict[str, Any]) -> Any:
        recorded: dict[str, Tensor] = {}

        def record(name: str) -> Any:
            def fn(module: nn.Module, args: Any, output: Any) -> None:
                if name in recorded:
                    raise InputError(f"layer {name!r} ran twice in one forward; explain one layer (layer=)")
                recorded[name] = first_tensor(output, name).detach()
                if len(recorded) == len(self.sites):
                    raise Recorded  # the rest of the forward is not needed
            return fn

        handles = [self.model.get_submodule(n).register_forward_hook(record(n), prepend=True) for n in self.sites]
        try:
            with torch.no_grad():
                self.vision_only(inputs)
        except Recorded:
            pass
        finally:
            for h in handles:
                h.remove()
        tokens = [as_tokens(recorded[n]).float() for n in self.sites]  # (1, L, D_s) each
        if len({t.shape[:-1] for t in tokens}) != 1:
            raise InputError(f"layers {self.sites} give different token counts "
                             f"{[tuple(t.shape[:-1]) for t in tokens]}; explain one of them (layer=)")
        stacked = self.features(torch.cat(tokens, dim=-1))  # (1, L, sum D_s)
        slices = dict(zip(self.sites, stacked.split([t.shape[-1] for t in tokens], dim=-1)))

        def add(name: str) -> Any:
            def fn(module: nn.Module, args: Any, output: Any) -> Any:
                tensor = first_tensor(output, name)
                if not torch.allclose(tensor.float().reshape(recorded[name].shape), recorded[name].float(),
                                      atol=1e-5, rtol=1e-4):
                    raise InputError(f"layer {name!r} gave other values in a second forward (dropout on? call "
                                     "model.eval()); several layers need a deterministic forward")
                part = slices[name]
                delta = (part - part.detach()).to(tensor.dtype).reshape(tensor.shape)
                return replace_first(output, tensor + delta)
            return fn

        handles = [self.model.get_submodule(n).register_forward_hook(add(n), prepend=True) for n in self.sites]
        try:
            return self.model(**inputs)
        finally:
            for h in handles:
                h.remove()

    def vision_only(self, inputs: dict[str, Any]) -> None:
        """Run the vision path only (``get_image_features`` with the inputs it takes), or the model up to the
        last site (the recording hook stops it there)."""
        features = getattr(self.model, "get_image_features", None)
        if features is None:
            self.model(**inputs)
            return
        accepted = inspect.signature(features).parameters
        features(**{k: v for k, v in inputs.items() if k in accepted})

    def _route(self, module: nn.Module, args: Any, output: Any) -> Any:
        tensor = first_tensor(output, self.site)
        shape, dtype = tensor.shape, tensor.dtype
        tokens = as_tokens(tensor)
        if dtype in (torch.float16, torch.bfloat16):
            tokens = tokens.float()
        routed = self.features(tokens).to(dtype).reshape(shape)
        return replace_first(output, routed)


class Recorded(Exception):
    """Every site's output is recorded: stops the recording forward early."""


def first_tensor(output: Any, name: str) -> Tensor:
    """A layer's output tensor (the first of a tuple); TypeError naming the layer otherwise."""
    tensor = output if isinstance(output, Tensor) else output[0] if isinstance(output, (tuple, list)) else None
    if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
        raise InputTypeError(f"layer {name!r} returned {type(output).__name__}; expected a floating tensor "
                        "(or a tuple starting with one)")
    return tensor


def as_tokens(tensor: Tensor) -> Tensor:
    """``(1, L, D)`` tokens of one image (a ``(B, C, h, w)`` convolutional map passes as it is)."""
    return tensor if tensor.dim() == 4 else tensor.reshape(1, -1, tensor.shape[-1])


def replace_first(output: Any, tensor: Tensor) -> Any:
    """``output`` with its (first) tensor replaced."""
    if isinstance(output, Tensor):
        return tensor
    return type(output)([tensor, *output[1:]]) if isinstance(output, list) else (tensor, *output[1:])
