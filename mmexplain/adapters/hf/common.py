"""What every transformers adapter shares: words <-> tokens, images in and out, model checks.

Images are read by the project's one loader (:func:`mmexplain.adapters.images.load_image`)
and handed to the model's image processor as a float ``(3, H, W)`` tensor in [0, 1]
with ``do_rescale=False``.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..grids import PatchGrid, conv_grid
from ..images import load_image
from ..items import ItemQuestions

__all__ = ["tokenize_words", "ProcessedImages"]


# ----------------------------------------------------------------------------- words <-> tokens


def tokenize_words(tokenizer: Any, words: Sequence[str], *,
                   add_special_tokens: bool = False) -> tuple[list[int], list[list[int]]]:
    """Token ids of ``" ".join(words)`` and, for each word, the indices of its tokens.

    Fast tokenizers map tokens to words through their character offsets (exact for
    WordPiece, BPE and SentencePiece alike); slow ones tokenize word by word (with the
    leading space BPE expects).

    Args:
        tokenizer: a transformers tokenizer.
        words: the words, each non-empty and without spaces.
        add_special_tokens: include the tokenizer's special tokens ([CLS] ... [SEP]);
            they belong to no word.

    Returns:
        ``(ids, groups)``: ids of the whole text; ``groups[i]`` the positions in
        ``ids`` of word i's tokens (never empty).

    Example:
        >>> import mmexplain as mx
        >>> tokenizer = mx.zoo.load("tiny-ved").tokenizer          # doctest: +SKIP
        >>> tokenize_words(tokenizer, ["a", "red", "circle"])       # doctest: +SKIP
        ([4, 9, 14], [[0], [1], [2]])
    """
    words = list(words)
    if not words or not all(isinstance(w, str) and w and w.split() == [w] for w in words):
        raise ValueError(f"words: expected a non-empty list of words without spaces, got {words!r}")
    text = " ".join(words)
    starts, pos = [], 0
    for w in words:
        starts.append(pos)
        pos += len(w) + 1
    groups: list[list[int]] = [[] for _ in words]
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        for k, (s, e) in enumerate(enc["offset_mapping"]):
            while s < e and text[s].isspace():  # BPE tokens may carry the space before their word
                s += 1
            if e > s:  # special tokens have empty offsets
                groups[bisect_right(starts, s) - 1].append(k)
    else:
        ids = []
        for i, w in enumerate(words):
            piece = tokenizer.encode(w if i == 0 else " " + w, add_special_tokens=False)
            groups[i] = list(range(len(ids), len(ids) + len(piece)))
            ids.extend(piece)
        if add_special_tokens:
            full = list(tokenizer.build_inputs_with_special_tokens(ids))
            shift = next((j for j in range(len(full) - len(ids) + 1) if full[j:j + len(ids)] == ids), None)
            if shift is None:
                raise ValueError(f"{type(tokenizer).__name__} changed the tokens when adding special tokens")
            groups = [[k + shift for k in g] for g in groups]
            ids = full
    empty = [words[i] for i, g in enumerate(groups) if not g]
    if empty:
        raise ValueError(f"words {empty} produced no tokens with {type(tokenizer).__name__}")
    return ids, groups


def decode_words(tokenizer: Any, ids: Sequence[int] | Tensor, *, start: int | None = None) -> list[str]:
    """Generated ids -> the words a person reads (special tokens dropped).

    Args:
        tokenizer: the model's tokenizer.
        ids: the generated ids.
        start: the decoder's start token, dropped when the ids begin with it (``generate``
            returns it first, and a tokenizer need not list it as special).
    """
    ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
    if start is not None and ids and ids[0] == start:
        ids = ids[1:]
    return tokenizer.decode(ids, skip_special_tokens=True).split()


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
        raise TypeError(f"{who}: expected processor= (with .image_processor) or image_processor=, got neither")
    if tokenizer is None:
        raise TypeError(f"{who}: expected processor= (with .tokenizer) or tokenizer=, got neither")
    return image_processor, tokenizer


def device_of(model: nn.Module) -> torch.device:
    """Where the model's weights live (the pixels are moved there)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def check_model(who: str, model: Any, class_names: tuple[str, ...]) -> None:
    """TypeError naming ``model`` unless it is one of ``class_names`` (matched by class name)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{who} model: expected a transformers {' or '.join(class_names)}, got {type(model).__name__}")
    if type(model).__name__ not in class_names:
        raise TypeError(f"{who} model: expected a {' or '.join(class_names)}, got {type(model).__name__}")


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
            raise ValueError(f"{type(self).__name__}: no patch embedding known; the grid is inferred from the tokens")
        return conv_grid(self.model.get_submodule(self.patch_embedding), tuple(pixels.shape[-2:]))

    def reshape_for(self, pixels: Tensor) -> Callable[[Tensor], Tensor]:
        """``PatchGrid`` with the grid of ``pixels``: the last h*w tokens of the layer, row-major."""
        return PatchGrid(None if self.patch_embedding is None else self.patch_grid(pixels))
