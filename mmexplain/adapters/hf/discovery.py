"""Which layout an image-text-to-text model has, from its config and modules, not its class name.

:func:`discover` asks, in order: the families a user registered (:func:`register_family`),
then each built-in family's ``claims(model)`` (a rule on the config and the module tree:
``vision_config.spatial_merge_size`` -> merge blocks and ``image_grid_thw``;
``scale_factor`` + a connector -> tiles and pixel shuffle; ``vision_feature_layer`` -> the
blocks the projector reads; a Q-Former -> the tower's last block; ...), then
:class:`Projected`, the general rule: a vision tower (the module built from
``config.vision_config``), an image token (``image_token_id`` / ``image_token_index``) and
a plain patch grid (the tower's patch convolution on the processed pixels); the site is
the tower's final LayerNorm when it has one, else its last block. A model none of them
places is refused with :class:`Unsupported`, a ``TypeError`` that says what is missing.
The adapter keeps the rule it used (``adapter.rule``).

Example (a class the project does not lay out itself, registered by the user):
    >>> import mmexplain as mx
    >>> from mmexplain.adapters.hf.families import Family
    >>> class MyVLM(Family):                                       # doctest: +SKIP
    ...     tower = "vision_encoder"
    ...     def site(self):
    ...         return "model.vision_encoder.blocks.11"
    >>> mx.hf.register_family(MyVLM, names=("MyVLMForConditionalGeneration",))   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .anyres import AnyRes
from .families import FAMILIES, Family, OneImage, blocks, tower_of
from .layouts import TokenGrid
from .mllama import Mllama
from ...errors import InputError, InputTypeError

__all__ = ["Unsupported", "Projected", "register_family", "unregister_family", "registered_families", "discover",
           "refusal"]


class Unsupported(TypeError):
    """A model that no family lays out; the message names the class and what is missing."""


#: user families, newest first: (family, class names, predicate)
_REGISTERED: list[tuple[type[Family], tuple[str, ...], Callable[[nn.Module], bool] | None]] = []


def register_family(family: type[Family], *, names: tuple[str, ...] | list[str] = (),
                    when: Callable[[nn.Module], bool] | None = None) -> type[Family]:
    """Make ``mx.hf.adapter`` use ``family`` for the model classes ``names`` (or the models ``when`` accepts).

    Args:
        family: a subclass of :class:`~.families.Family`; override ``site()`` (the vision layer the
            language model reads, a module name in the transformers model), ``sites()`` for several,
            ``grid(images)`` (a :class:`~.layouts.TokenGrid` for the processed image), ``view(images)``
            and ``image_positions(inputs)`` where the defaults (a ViT tower, a plain patch grid,
            ``input_ids == config.image_token_id``) do not fit.
        names: transformers class names it serves.
        when: or a predicate on the model.

    Returns:
        ``family`` (so it can decorate the class). Registered families are asked first, newest first.

    Example:
        >>> mx.hf.register_family(MyFamily, names=("FooForConditionalGeneration",))   # doctest: +SKIP
    """
    if not (isinstance(family, type) and issubclass(family, Family)):
        raise InputTypeError(f"family: expected a subclass of mmexplain.adapters.hf.families.Family, got {family!r}")
    names = tuple(names)
    if not all(isinstance(n, str) and n for n in names):
        raise InputTypeError(f"names: expected class names (str), got {names!r}")
    if not names and when is None:
        raise InputError("register_family: pass names= (class names) or when= (a predicate on the model)")
    if when is not None and not callable(when):
        raise InputTypeError(f"when: expected a callable model -> bool, got {type(when).__name__}")
    _REGISTERED.insert(0, (family, names, when))
    return family


def registered_families() -> list[tuple[type[Family], tuple[str, ...]]]:
    """The user's families and their class names, newest first."""
    return [(f, n) for f, n, _ in _REGISTERED]


def unregister_family(family: type[Family]) -> None:
    """Forget a registered family (every registration of it)."""
    _REGISTERED[:] = [r for r in _REGISTERED if r[0] is not family]


def image_token_id(config: Any) -> int | None:
    """``config.image_token_id`` or ``config.image_token_index`` (None when neither is set)."""
    for key in ("image_token_id", "image_token_index"):
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def refusal(model: nn.Module) -> str | None:
    """What no family here can do for ``model``, in words (None when nothing is known to be missing)."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text, "cross_attention_layers", None) or any(
            n.rsplit(".", 1)[-1] in ("cross_attn_layers", "gated_cross_attn_layers") for n, _ in model.named_modules()):
        return "its language model reads the image through cross-attention layers, not image tokens"
    if getattr(config, "image_grid_pinpoints", None):
        return ("anyres tiles (config.image_grid_pinpoints: a base image + crops, unpadded, newline tokens) are not "
                "stitched back onto the image")
    if getattr(config, "vision_config", None) is None:
        return "no config.vision_config (no vision tower to explain)"
    if tower_of(model) is None:
        return "no module is built from config.vision_config (no vision tower found)"
    return None


class Projected(OneImage):
    """The general rule: a ViT tower whose tokens a projector maps to the LM's image tokens, one per patch
    (the projector may pool or merge them: the tower's grid is what is explained). Gemma 3, Idefics2 (the
    perceiver resampler reads the tower), and others."""

    @classmethod
    def claims(cls, model: nn.Module) -> str | None:
        if refusal(model) is not None or image_token_id(model.config) is None:
            return None
        return "a vision tower (built from config.vision_config), config.image_token_id and a plain patch grid"

    def site(self) -> str:
        post = f"{self.tower_name}.post_layernorm"
        if post in dict(self.model.named_modules()) and not getattr(self.model.config.vision_config,
                                                                    "vision_use_head", False):
            return post  # what the tower returns as last_hidden_state
        layers = blocks(self.model, self.tower_name)
        return f"{layers}.{len(self.model.get_submodule(layers)) - 1}"

    def grid(self, images: dict[str, Tensor]) -> TokenGrid:
        h, w = self.patch_grid(images)
        return TokenGrid({h * w: (torch.arange(h * w), (h, w)), h * w + 1: (torch.arange(1, h * w + 1), (h, w))})


def discover(model: nn.Module) -> tuple[type[Family], str]:
    """``(family, rule)`` for a transformers model; :class:`Unsupported` saying what is missing otherwise."""
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise InputTypeError(f"model: expected a transformers model, got {type(model).__name__}")
    name = type(model).__name__
    for family, names, when in _REGISTERED:
        if name in names:
            return family, f"registered for class {name}"
        if when is not None and when(model):
            return family, f"registered: {getattr(when, '__name__', 'predicate')}"
    for family in (*FAMILIES, AnyRes, Mllama, Projected):
        rule = family.claims(model)
        if rule:
            return family, rule
    why = refusal(model) or "no image token in its config (image_token_id / image_token_index)"
    raise Unsupported(f"model: {name} is not supported: {why}; mx.hf.register_family(...) adds a layout")
