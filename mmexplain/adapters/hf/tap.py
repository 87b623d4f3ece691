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

from typing import Any

import torch
from torch import Tensor, nn

from .wrappers import _Wrapper

__all__ = ["VisionTap"]


class VisionTap(_Wrapper):
    """The wrapped model, with the output of its module ``site`` routed through ``self.features``.

    Args:
        model: the transformers model (a child module named ``model``).
        site: dotted name (in ``model``) of the vision layer whose output is explained.
    """

    def __init__(self, model: nn.Module, site: str) -> None:
        super().__init__()
        self.model = model
        self.site = site
        self.features = nn.Identity()
        try:
            model.get_submodule(site)
        except AttributeError as exc:
            raise ValueError(f"layer {site!r} not found in {type(model).__name__}") from exc

    def forward(self, **inputs: Any) -> Any:
        handle = self.model.get_submodule(self.site).register_forward_hook(self._route, prepend=True)
        try:
            return self.model(**inputs)
        finally:
            handle.remove()

    def _route(self, module: nn.Module, args: Any, output: Any) -> Any:
        tensor = output if isinstance(output, Tensor) else output[0] if isinstance(output, (tuple, list)) else None
        if not isinstance(tensor, Tensor) or not tensor.is_floating_point():
            raise TypeError(f"layer {self.site!r} returned {type(output).__name__}; expected a floating tensor "
                            "(or a tuple starting with one)")
        shape, dtype = tensor.shape, tensor.dtype
        tokens = tensor if tensor.dim() == 4 else tensor.reshape(1, -1, shape[-1])  # (1, L, D) or (B, C, h, w)
        if dtype in (torch.float16, torch.bfloat16):
            tokens = tokens.float()
        routed = self.features(tokens).to(dtype).reshape(shape)
        if isinstance(output, Tensor):
            return routed
        return type(output)([routed, *output[1:]]) if isinstance(output, list) else (routed, *output[1:])
