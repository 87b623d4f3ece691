"""What every transformers adapter shares: images in and out, model checks (words <-> tokens: :mod:`.words`).

Images are read by the project's one loader (:func:`mmexplain.adapters.images.load_image`)
and handed to the model's image processor as a float ``(3, H, W)`` tensor in [0, 1]
with ``do_rescale=False``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..grids import PatchGrid, conv_grid
from ..images import load_image
from ..items import ItemQuestions
from .words import decode_words, tokenize_words
from ...errors import InputError, InputTypeError

__all__ = ["tokenize_words", "decode_words", "ProcessedImages"]


# ----------------------------------------------------------------------------- images


def pixels_of(image_processor: Any, image: Any, **kwargs: Any) -> dict[str, Tensor]:
    """path / PIL / array / tensor -> the image processor's tensors (batch of one).

    The image is read by :func:`~mmexplain.adapters.images.load_image` (one set of
    accepted inputs and errors) and handed over as (3, H, W) floats in [0, 1], so the
    processor resizes and normalises without rescaling.
    """
    img = load_image(image).cpu()  # (3, H, W) float in [0, 1]
    return dict(image_processor(images=img, return_tensors="pt", do_rescale=False, **kwargs))


def display_of(image_processor: Any, pixels: Tensor) -> Tensor:
    """Undo the processor's normalization: pixels (1, 3, H, W) or (3, H, W) -> (3, H, W) in [0, 1]."""
    img = pixels.detach()
    if img.dim() == 4:
        img = img[0]
    if getattr(image_processor, "do_normalize", True):
        mean = torch.as_tensor(image_processor.image_mean, dtype=img.dtype, device=img.device)[:, None, None]
        std = torch.as_tensor(image_processor.image_std, dtype=img.dtype, device=img.device)[:, None, None]
        img = img * std + mean  # (3, H, W)
    return img.clamp(0, 1)


def split_processor(who: str, processor: Any, image_processor: Any, tokenizer: Any) -> tuple[Any, Any]:
    """(image processor, tokenizer) from a processor or the two given separately."""
    if processor is not None:
        image_processor = image_processor if image_processor is not None else getattr(processor, "image_processor", None)
        tokenizer = tokenizer if tokenizer is not None else getattr(processor, "tokenizer", None)
    if image_processor is None:
        raise InputTypeError(f"{who}: expected processor= (with .image_processor) or image_processor=, got neither")
    if tokenizer is None:
        raise InputTypeError(f"{who}: expected processor= (with .tokenizer) or tokenizer=, got neither")
    return image_processor, tokenizer


def device_of(model: nn.Module) -> torch.device:
    """Where the model's weights live (the pixels are moved there)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def check_model(who: str, model: Any, class_names: tuple[str, ...]) -> None:
    """TypeError naming ``model`` unless it is one of ``class_names`` (matched by class name)."""
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"{who} model: expected a transformers {' or '.join(class_names)}, got {type(model).__name__}")
    if type(model).__name__ not in class_names:
        raise InputTypeError(f"{who} model: expected a {' or '.join(class_names)}, got {type(model).__name__}")


def last_layer(model: nn.Module, container: str) -> str:
    """Dotted name of the last module of the ``nn.ModuleList`` at ``container``."""
    layers = model.get_submodule(container)
    return f"{container}.{len(layers) - 1}"


class ProcessedImages(ItemQuestions):
    """What every transformers adapter shares: its processor halves, images in and out, the patch grid.

    Capabilities: a layer, the pixels and transformers attention (``ItemQuestions`` adds
    ``"relu"`` for ReLU-like units).

    Args:
        who: the adapter's name, for error messages.
        processor: a processor with ``.image_processor`` and ``.tokenizer``, or None.
        image_processor, tokenizer: given separately (they win over the processor's).
        patch_embedding: dotted name (in ``self.model``) of the ``nn.Conv2d`` that cuts
            the image into patches; None infers a square grid from the token count.
    """

    model: nn.Module
    base_capabilities = frozenset({"layer", "pixels", "attention"})

    def __init__(self, who: str, processor: Any, image_processor: Any, tokenizer: Any, *,
                 patch_embedding: str | None) -> None:
        self.image_processor, self.tokenizer = split_processor(who, processor, image_processor, tokenizer)
        self.patch_embedding = patch_embedding

    def load_image(self, image: Any) -> Tensor:
        """A path, PIL image, array or (3, H, W) tensor in [0, 1] -> pixels (1, 3, H, W) on the model's device."""
        return pixels_of(self.image_processor, image)["pixel_values"].to(device_of(self.model))

    def display_image(self, pixels: Tensor) -> Tensor:
        """The model's pixels as an image (3, H, W) in [0, 1], aligned with the maps."""
        return display_of(self.image_processor, pixels)

    def patch_grid(self, pixels: Tensor) -> tuple[int, int]:
        """The (h, w) patch grid the model makes of ``pixels`` (1, 3, H, W), from its patch convolution."""
        if self.patch_embedding is None:
            raise InputError(f"{type(self).__name__}: no patch embedding known; the grid is inferred from the tokens")
        return conv_grid(self.model.get_submodule(self.patch_embedding), tuple(pixels.shape[-2:]))

    def reshape_for(self, pixels: Tensor) -> Callable[[Tensor], Tensor]:
        """``PatchGrid`` with the grid of ``pixels``: the last h*w tokens of the layer, row-major."""
        return PatchGrid(None if self.patch_embedding is None else self.patch_grid(pixels))
