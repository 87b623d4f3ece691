"""Adapters that let the Grad-CAM engine and the explainers run on Hugging Face models.

An adapter holds an unmodified ``transformers`` model with its image processor and
tokenizer, and knows the four things the engine cannot guess:

* which layer to explain (``default_layer``) and how its tokens form a grid
  (``reshape``: the image patch tokens, class/prefix tokens dropped, to
  ``(B, D, h, w)``);
* how to turn an image into the model's pixels and back (``load_image``,
  ``display_image``);
* how to produce the words or the answer (``generate`` / ``prepare``);
* which logits and token ids score each *word* as a person reads it: sub-word tokens
  of one word are merged by summing their log-probabilities
  (``mx.targets.SequenceLogProb`` with explicit positions).

Supported models (all on the installed transformers, nothing downloads):

========================================  ================================  ==========================
model                                     adapter                           explained scalar
========================================  ================================  ==========================
``BlipForConditionalGeneration``          :class:`BlipCaptioner`            log p(word) per word
``VisionEncoderDecoderModel`` (ViT+GPT2)  :class:`VisionEncoderDecoderCaptioner`  log p(word) per word
``BlipForQuestionAnswering``              :class:`BlipVQA`                  sum of the answer tokens' log p
``ViltForQuestionAnswering``              :class:`ViltVQA`                  the answer's logit
========================================  ================================  ==========================

Two models need a thin wrapper module (``adapter.model``), which calls the real
model's own ``forward`` and changes nothing in it: ``BlipForQuestionAnswering``
returns no answer logits from ``forward``, so :class:`DecoderLogits` hands back its
answer decoder's output; ViLT shuffles its image tokens at random (``visual_embed``
samples them with ``torch.multinomial``), so :class:`ViltPatchOrder` embeds the image
itself and passes the tokens in row-major patch order through ViLT's documented
``image_embeds=`` input, which leaves the output unchanged (self-attention is
permutation-equivariant and positions are already added) and makes the patch grid
readable.

Example:
    >>> import mmexplain as mx
    >>> from transformers import BlipForConditionalGeneration, BlipProcessor     # doctest: +SKIP
    >>> model = BlipForConditionalGeneration.from_pretrained(local_dir).eval()    # doctest: +SKIP
    >>> captioner = mx.hf.caption_adapter(model, BlipProcessor.from_pretrained(local_dir))  # doctest: +SKIP
    >>> pixels = captioner.load_image("cat.jpg")                                  # doctest: +SKIP
    >>> words = captioner.generate(pixels)                                        # doctest: +SKIP
    >>> inputs, spans = captioner.teacher_forced(pixels, words)                   # doctest: +SKIP
    >>> cam = mx.GradCAM(captioner.model, captioner.default_layer, reshape=captioner.reshape)  # doctest: +SKIP
    >>> res = cam(inputs, [mx.targets.SequenceLogProb(t, positions=p) for p, t in spans])  # doctest: +SKIP
    >>> res.maps.shape   # (words, 1, H, W)                                       # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "PatchGrid",
    "DecoderLogits",
    "ViltPatchOrder",
    "tokenize_words",
    "BlipCaptioner",
    "VisionEncoderDecoderCaptioner",
    "BlipVQA",
    "ViltVQA",
    "caption_adapter",
    "answer_adapter",
]


# ----------------------------------------------------------------------------- token grids


class PatchGrid:
    """``reshape=`` for token-shaped layers: the last ``h * w`` tokens -> ``(..., D, h, w)``.

    ViT-style sequences are ``[CLS, (distillation), patch_1, ..., patch_N]`` and ViLT's
    joint sequence is ``[text..., image CLS, patch_1, ..., patch_N]``: in both the patch
    tokens come last, in row-major order, so the grid is read from the end and every
    prefix token (CLS, text) is dropped.

    Args:
        grid: ``(h, w)``; or a zero-argument callable returning it (read at each call,
            for grids known only after the forward pass); or ``None`` to infer a square
            grid from the sequence length ``L``: ``h = w = sqrt(L - p)`` for the smallest
            ``p`` in ``(0, 1, 2)`` that gives a perfect square (no prefix, CLS, or
            CLS + distillation token).

    Example:
        >>> tokens = torch.arange(2 * 5 * 3.0).reshape(2, 5, 3)   # (B, 1 + 2*2, D)
        >>> PatchGrid()(tokens).shape
        torch.Size([2, 3, 2, 2])
        >>> bool((PatchGrid()(tokens)[0, :, 0, 1] == tokens[0, 2]).all())   # patch 1 = token 2
        True
    """

    def __init__(self, grid: tuple[int, int] | Callable[[], tuple[int, int]] | None = None) -> None:
        if grid is not None and not callable(grid):
            grid = _check_grid(grid)
        self.grid = grid

    def __call__(self, tokens: Tensor) -> Tensor:  # (..., L, D) -> (..., D, h, w)
        if not isinstance(tokens, Tensor) or tokens.dim() < 3:
            got = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(f"PatchGrid tokens: expected a (B, L, D) tensor, got {got}")
        length = tokens.shape[-2]
        if self.grid is None:
            h = w = _square_side(length)
        else:
            h, w = _check_grid(self.grid() if callable(self.grid) else self.grid)
        if h * w > length:
            raise ValueError(f"PatchGrid: a {h}x{w} grid needs {h * w} tokens, the layer gave {length}")
        patches = tokens[..., length - h * w:, :]  # (..., h*w, D)
        return patches.transpose(-1, -2).unflatten(-1, (h, w))  # (..., D, h, w)

    def __repr__(self) -> str:
        return f"PatchGrid(grid={self.grid!r})"


def _check_grid(grid: Any) -> tuple[int, int]:
    if (not isinstance(grid, (tuple, list)) or len(grid) != 2
            or not all(isinstance(g, int) and not isinstance(g, bool) and g > 0 for g in grid)):
        raise ValueError(f"grid: expected (h, w) positive ints, got {grid!r}")
    return int(grid[0]), int(grid[1])


def _square_side(length: int) -> int:
    for prefix in (0, 1, 2):
        side = math.isqrt(max(length - prefix, 0))
        if side > 0 and side * side == length - prefix:
            return side
    raise ValueError(
        f"PatchGrid: cannot infer a square patch grid from {length} tokens; pass grid=(h, w) "
        "(non-square images, or text tokens before the patches)"
    )


# ----------------------------------------------------------------------------- wrappers


class _Wrapper(nn.Module):
    """A module around ``self.model`` whose training flag is the wrapped model's, always."""

    model: nn.Module

    @property
    def training(self) -> bool:  # type: ignore[override]
        model = self._modules.get("model")
        return bool(model.training) if model is not None else False

    @training.setter
    def training(self, mode: bool) -> None:
        pass  # nn.Module.train() sets the children, so the wrapped model carries the flag


class DecoderLogits(_Wrapper):
    """Run ``model(**inputs)`` unchanged and return the output of one of its submodules.

    ``BlipForQuestionAnswering.forward`` computes the answer decoder's logits but does
    not return them; this wrapper hooks ``model.<submodule>`` for the duration of the
    call (removed in ``finally``) and returns that submodule's output (which has
    ``.logits``), so ``mx.targets`` can read the answer tokens' log-probabilities.

    Args:
        model: the wrapped model (a child module named ``model``).
        submodule: dotted name of the submodule whose output is returned.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
        >>> DecoderLogits(net, "0")(input=torch.ones(1, 2)).shape
        torch.Size([1, 3])
    """

    def __init__(self, model: nn.Module, submodule: str) -> None:
        super().__init__()
        self.model = model
        self.submodule = submodule
        model.get_submodule(submodule)  # fail early on a wrong name

    def forward(self, **inputs: Any) -> Any:
        captured: list[Any] = []
        handle = self.model.get_submodule(self.submodule).register_forward_hook(
            lambda module, args, output: captured.append(output))
        try:
            self.model(**inputs)
        finally:
            handle.remove()
        if not captured:
            raise ValueError(f"submodule {self.submodule!r} did not run in the forward pass")
        return captured[-1]


class ViltPatchOrder(_Wrapper):
    """``ViltForQuestionAnswering`` with its image tokens in row-major patch order.

    ViLT's ``visual_embed`` returns the patch tokens in a random order
    (``torch.multinomial``), so the joint sequence has no readable grid. This wrapper
    calls the model's own ``vilt.embeddings.visual_embed`` (which also gives each
    token's patch index), sorts the patch tokens row-major, and runs the unmodified
    model with ``image_embeds=`` (its documented input). Attention is
    permutation-equivariant and the position embeddings are already added, so the
    output is the model's; only the order of the image tokens is fixed. The grid of
    the latest forward is in ``.grid``, read by :class:`PatchGrid`.

    Args:
        model: a ``ViltForQuestionAnswering`` (or any ``Vilt*`` model whose ``vilt``
            attribute is a ``ViltModel``); a child module named ``model``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not hasattr(model, "vilt"):
            raise TypeError(f"model: expected a ViLT model with a .vilt ViltModel, got {type(model).__name__}")
        self.model = model
        self.grid: tuple[int, int] | None = None

    def forward(self, pixel_values: Tensor, input_ids: Tensor, *, pixel_mask: Tensor | None = None,
                **text_inputs: Any) -> Any:
        batch, _, height, width = pixel_values.shape
        if pixel_mask is None:
            pixel_mask = torch.ones(batch, height, width, dtype=torch.long, device=pixel_values.device)
        embeddings = self.model.vilt.embeddings
        tokens, token_mask, (patch_index, (gh, gw)) = embeddings.visual_embed(
            pixel_values, pixel_mask, max_image_length=self.model.config.max_image_length)
        # tokens (B, 1+M, D) [image CLS, M patches]; patch_index (B, M, 2) (row, col)
        flat = patch_index[..., 0] * gw + patch_index[..., 1]  # (B, M)
        order = flat.argsort(dim=1)  # (B, M)
        full = torch.arange(gh * gw, device=flat.device).expand(batch, -1)
        if flat.shape[1] != gh * gw or not torch.equal(flat.gather(1, order), full):
            raise ValueError(
                f"ViLT selected {flat.shape[1]} of {gh}x{gw} patches (padding in pixel_mask, or "
                f"config.max_image_length={self.model.config.max_image_length} < {gh * gw}); explain one "
                "unpadded image and set config.max_image_length = -1"
            )
        patches = tokens[:, 1:].gather(1, order[..., None].expand(-1, -1, tokens.shape[-1]))  # (B, N, D)
        image_embeds = torch.cat([tokens[:, :1], patches], dim=1)  # (B, 1+N, D)
        self.grid = (int(gh), int(gw))
        return self.model(input_ids=input_ids, image_embeds=image_embeds, pixel_mask=token_mask, **text_inputs)

    def patch_grid(self) -> tuple[int, int]:
        """The (h, w) patch grid of the latest forward pass."""
        if self.grid is None:
            raise ValueError("ViltPatchOrder: no forward pass yet, the patch grid is unknown")
        return self.grid


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
        >>> from mmexplain.training.hf import build_tokenizer
        >>> tokenize_words(build_tokenizer(), ["a", "red", "circle"])
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


def _decode_words(tokenizer: Any, ids: Sequence[int] | Tensor) -> list[str]:
    """Generated ids -> the words a person reads (special tokens dropped)."""
    if isinstance(ids, Tensor):
        ids = ids.tolist()
    return tokenizer.decode(list(ids), skip_special_tokens=True).split()


# ----------------------------------------------------------------------------- images


def _split_processor(who: str, processor: Any, image_processor: Any, tokenizer: Any) -> tuple[Any, Any]:
    if processor is not None:
        image_processor = image_processor if image_processor is not None else getattr(processor, "image_processor", None)
        tokenizer = tokenizer if tokenizer is not None else getattr(processor, "tokenizer", None)
    if image_processor is None:
        raise TypeError(f"{who}: expected processor= (with .image_processor) or image_processor=, got neither")
    if tokenizer is None:
        raise TypeError(f"{who}: expected processor= (with .tokenizer) or tokenizer=, got neither")
    return image_processor, tokenizer


def _pixels(image_processor: Any, image: Any, **kwargs: Any) -> dict[str, Tensor]:
    """path / PIL / array / tensor -> the image processor's tensors (batch of one)."""
    import numpy as np

    rescale = True
    if isinstance(image, (str, os.PathLike)):
        from PIL import Image

        with Image.open(image) as im:
            image = im.convert("RGB")
    elif isinstance(image, Tensor):
        img = image.detach().cpu()
        if img.dim() == 4 and img.shape[0] == 1:
            img = img[0]
        if img.dim() != 3 or img.shape[0] not in (1, 3):
            raise ValueError(f"image: expected a (3, H, W) or (1, 3, H, W) tensor, got {tuple(image.shape)}")
        if img.dtype == torch.uint8:
            img = img.float() / 255
        elif not img.is_floating_point():
            raise TypeError(f"image: expected a float tensor in [0, 1] or uint8, got dtype {image.dtype}")
        image, rescale = img.expand(3, -1, -1).clamp(0, 1).float(), False
    elif isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] not in (1, 3):
            raise ValueError(f"image: expected an (H, W, 3) array, got shape {image.shape}")
        if image.dtype != np.uint8:
            image, rescale = torch.from_numpy(np.ascontiguousarray(image)).float().permute(2, 0, 1).expand(3, -1, -1), False
    elif not hasattr(image, "convert"):
        raise TypeError(f"image: expected a path, PIL image, (H, W, 3) array or (3, H, W) tensor, got {type(image).__name__}")
    else:
        image = image.convert("RGB")
    return dict(image_processor(images=image, return_tensors="pt", do_rescale=rescale, **kwargs))


def _display(image_processor: Any, pixels: Tensor) -> Tensor:
    """Undo the processor's normalization: pixels (1, 3, H, W) or (3, H, W) -> (3, H, W) in [0, 1]."""
    img = pixels.detach()
    if img.dim() == 4:
        img = img[0]
    if getattr(image_processor, "do_normalize", True):
        mean = torch.as_tensor(image_processor.image_mean, dtype=img.dtype, device=img.device)[:, None, None]
        std = torch.as_tensor(image_processor.image_std, dtype=img.dtype, device=img.device)[:, None, None]
        img = img * std + mean  # (3, H, W)
    return img.clamp(0, 1)


def _device(model: nn.Module) -> torch.device:
    """Where the model's weights live (the pixels are moved there)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _check_model(who: str, model: Any, class_names: tuple[str, ...]) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{who} model: expected a transformers {' or '.join(class_names)}, got {type(model).__name__}")
    if type(model).__name__ not in class_names:
        raise TypeError(f"{who} model: expected a {' or '.join(class_names)}, got {type(model).__name__}")


def _last_layer(model: nn.Module, container: str) -> str:
    layers = model.get_submodule(container)
    return f"{container}.{len(layers) - 1}"


# ----------------------------------------------------------------------------- captioners


class _Captioner:
    """What caption adapters share: images in/out, generation, teacher forcing by words."""

    model: nn.Module
    default_layer: str
    reshape: Callable[[Tensor], Tensor] | None
    start_token_id: int
    text_key: str  # keyword of the teacher-forced token ids

    def __init__(self, model: nn.Module, processor: Any, image_processor: Any, tokenizer: Any,
                 max_new_tokens: int) -> None:
        self.image_processor, self.tokenizer = _split_processor(type(self).__name__, processor, image_processor, tokenizer)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: expected an int >= 1, got {max_new_tokens!r}")
        self.max_new_tokens = max_new_tokens

    def load_image(self, image: Any) -> Tensor:
        """A path, PIL image, ``(H, W, 3)`` array or ``(3, H, W)`` tensor in [0, 1] -> pixels ``(1, 3, H, W)``.

        The pixels are on the model's device.
        """
        return _pixels(self.image_processor, image)["pixel_values"].to(_device(self.model))

    def display_image(self, pixels: Tensor) -> Tensor:
        """The model's pixels as an image ``(3, H, W)`` in [0, 1], aligned with the maps."""
        return _display(self.image_processor, pixels)

    def generate(self, pixels: Tensor) -> list[str]:
        """Greedy caption of one image, as words (special tokens dropped)."""
        if pixels.dim() != 4 or pixels.shape[0] != 1:
            raise ValueError(f"pixels: expected (1, 3, H, W), got {tuple(pixels.shape)}")
        with torch.no_grad():
            ids = self.model.generate(pixel_values=pixels, max_new_tokens=self.max_new_tokens)  # (1, T)
        return _decode_words(self.tokenizer, ids[0])

    def split_words(self, caption: str) -> list[str]:
        """A given caption -> its words; a word the tokenizer only knows as unknown raises ValueError."""
        if not isinstance(caption, str):
            raise TypeError(f"caption: expected a str, got {type(caption).__name__}")
        words = caption.split()
        if not words:
            return words
        ids, groups = tokenize_words(self.tokenizer, words)
        unk = self.tokenizer.unk_token_id
        unknown = [w for w, g in zip(words, groups) if unk is not None and any(ids[k] == unk for k in g)]
        if unknown:
            raise ValueError(f"caption: unknown word {unknown[0]!r} (the tokenizer maps it to {self.tokenizer.unk_token})")
        return words

    def teacher_forced(self, pixels: Tensor, words: Sequence[str]) -> tuple[dict[str, Tensor], list[tuple[list[int], list[int]]]]:
        """Inputs for one teacher-forced forward over ``words``, and per word (logit positions, token ids).

        The decoder reads ``[start, t_1, ..., t_n]``; token ``t_k`` is scored at logit
        position ``k - 1``. A word made of several tokens gets all their positions, so
        ``SequenceLogProb(ids, positions=positions)`` is the word's log-probability.
        """
        ids, groups = tokenize_words(self.tokenizer, words)
        tokens = torch.tensor([[self.start_token_id, *ids]], device=pixels.device)  # (1, 1+n)
        spans = [([k for k in g], [ids[k] for k in g]) for g in groups]
        return self._inputs(pixels, tokens), spans

    def _inputs(self, pixels: Tensor, tokens: Tensor) -> dict[str, Tensor]:
        return {"pixel_values": pixels, self.text_key: tokens,
                self.text_key.replace("input_ids", "attention_mask"): torch.ones_like(tokens)}


class BlipCaptioner(_Captioner):
    """``BlipForConditionalGeneration``: per-word maps of a BLIP caption.

    Default layer: the vision encoder's last block (its patch tokens are what the text
    decoder cross-attends to, after a per-token LayerNorm; ``post_layernorm`` itself
    runs twice per forward, for the tokens and the pooled CLS, so it cannot be hooked).

    Args:
        model: a ``BlipForConditionalGeneration``.
        processor: a ``BlipProcessor`` (or give ``image_processor=`` and ``tokenizer=``).
        layer: module name to explain instead of the default.
        max_new_tokens: generation length limit.

    Example:
        >>> captioner = BlipCaptioner(model, processor)     # doctest: +SKIP
        >>> ex = mx.explain_caption(captioner, "cat.jpg")    # doctest: +SKIP
    """

    text_key = "input_ids"

    def __init__(self, model: nn.Module, processor: Any = None, *, image_processor: Any = None,
                 tokenizer: Any = None, layer: str | None = None, max_new_tokens: int = 30) -> None:
        _check_model("BlipCaptioner", model, ("BlipForConditionalGeneration",))
        super().__init__(model, processor, image_processor, tokenizer, max_new_tokens)
        self.model = model
        self.default_layer = layer or _last_layer(model, "vision_model.encoder.layers")
        self.reshape = PatchGrid()
        self.start_token_id = int(model.config.text_config.bos_token_id)


class VisionEncoderDecoderCaptioner(_Captioner):
    """``VisionEncoderDecoderModel`` (ViT-style encoder + GPT-2-style decoder).

    Default layer: the encoder's final LayerNorm (``encoder.layernorm``; its tokens are
    the decoder's cross-attention memory), else the encoder's last block.

    Args:
        model: a ``VisionEncoderDecoderModel``.
        processor: a processor with ``.image_processor`` and ``.tokenizer`` (or give both).
        layer: module name to explain instead of the default.
        max_new_tokens: generation length limit.

    Example:
        >>> from transformers import VisionEncoderDecoderModel, PreTrainedTokenizerFast, ViTImageProcessor
        >>> from pathlib import Path
        >>> local = Path("models") / "tiny-ved"     # a local directory: nothing downloads
        >>> model = VisionEncoderDecoderModel.from_pretrained(local).eval()   # doctest: +SKIP
        >>> captioner = VisionEncoderDecoderCaptioner(model,
        ...     image_processor=ViTImageProcessor.from_pretrained(local),
        ...     tokenizer=PreTrainedTokenizerFast.from_pretrained(local))     # doctest: +SKIP
    """

    text_key = "decoder_input_ids"

    def __init__(self, model: nn.Module, processor: Any = None, *, image_processor: Any = None,
                 tokenizer: Any = None, layer: str | None = None, max_new_tokens: int = 30) -> None:
        _check_model("VisionEncoderDecoderCaptioner", model, ("VisionEncoderDecoderModel",))
        super().__init__(model, processor, image_processor, tokenizer, max_new_tokens)
        self.model = model
        if layer is None:
            names = dict(model.named_modules())
            blocks = [c for c in ("encoder.layers", "encoder.encoder.layer", "encoder.encoder.layers") if c in names]
            if "encoder.layernorm" in names:
                layer = "encoder.layernorm"
            elif blocks:  # the encoder's last block (module names differ across transformers versions)
                layer = _last_layer(model, blocks[0])
            else:
                raise ValueError(f"layer: no default for encoder {type(model.encoder).__name__}; pass layer=")
        self.default_layer = layer
        self.reshape = PatchGrid()
        start = model.config.decoder_start_token_id
        if start is None:
            start = getattr(model.generation_config, "decoder_start_token_id", None)
        if start is None:
            raise ValueError("model.config.decoder_start_token_id is None; set it to the decoder's start token")
        self.start_token_id = int(start)


# ----------------------------------------------------------------------------- VQA


class _VQA:
    """What VQA adapters share: images in/out, question tokens."""

    model: nn.Module
    default_layer: str
    reshape: Callable[[Tensor], Tensor] | None
    question_layer: str | None

    def __init__(self, processor: Any, image_processor: Any, tokenizer: Any) -> None:
        self.image_processor, self.tokenizer = _split_processor(type(self).__name__, processor, image_processor, tokenizer)

    def load_image(self, image: Any) -> Tensor:
        """A path, PIL image, ``(H, W, 3)`` array or ``(3, H, W)`` tensor in [0, 1] -> pixels ``(1, 3, H, W)``.

        The pixels are on the model's device.
        """
        return _pixels(self.image_processor, image)["pixel_values"].to(_device(self.model))

    def display_image(self, pixels: Tensor) -> Tensor:
        """The model's pixels as an image ``(3, H, W)`` in [0, 1], aligned with the maps."""
        return _display(self.image_processor, pixels)

    def _question(self, question: str, device: torch.device) -> tuple[dict[str, Tensor], list[str], list[int]]:
        """Question inputs, its tokens as the model reads them, and their positions (specials excluded)."""
        if not isinstance(question, str) or not question.split():
            raise ValueError(f"question: expected a non-empty string, got {question!r}")
        ids, groups = tokenize_words(self.tokenizer, question.split(), add_special_tokens=True)
        positions = [k for g in groups for k in g]
        tokens = self.tokenizer.convert_ids_to_tokens([ids[k] for k in positions])
        input_ids = torch.tensor([ids], device=device)  # (1, Tq)
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}, tokens, positions


class BlipVQA(_VQA):
    """``BlipForQuestionAnswering``: the generated answer's map and question-token attributions.

    The target is the answer's log-probability: the sum over its tokens of
    ``log p(token)`` from the answer decoder, teacher-forced on ``[BOS] answer``.
    ``model`` is a :class:`DecoderLogits` wrapper (the real ``forward`` does not return
    the answer logits); layer names are relative to it (``"model.vision_model..."``).
    One answer per call: the greedy one, or the one given (``top_k`` > 1 would need
    one forward per answer).

    Args:
        model: a ``BlipForQuestionAnswering``.
        processor: a ``BlipProcessor`` (or give ``image_processor=`` and ``tokenizer=``).
        layer: module name (relative to the wrapper) to explain instead of the default,
            the vision encoder's last block.
        max_new_tokens: answer length limit.

    Example:
        >>> vqa = BlipVQA(model, processor)                                    # doctest: +SKIP
        >>> ax = mx.explain_answer(vqa, "cat.jpg", "what is on the sofa?")     # doctest: +SKIP
        >>> ax.answer, ax.map.shape, ax.token_attributions.shape               # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, processor: Any = None, *, image_processor: Any = None,
                 tokenizer: Any = None, layer: str | None = None, max_new_tokens: int = 10) -> None:
        _check_model("BlipVQA", model, ("BlipForQuestionAnswering",))
        super().__init__(processor, image_processor, tokenizer)
        self.hf_model = model
        self.model = DecoderLogits(model, "text_decoder")
        self.default_layer = layer or "model." + _last_layer(model, "vision_model.encoder.layers")
        self.reshape = PatchGrid()
        self.question_layer = "model.text_encoder.embeddings.word_embeddings"
        self.start_token_id = int(model.config.text_config.bos_token_id)
        self.max_new_tokens = max_new_tokens

    def answer(self, pixels: Tensor, question: str) -> str:
        """The model's generated answer (greedy), as text."""
        q, _, _ = self._question(question, pixels.device)
        with torch.no_grad():
            ids = self.hf_model.generate(input_ids=q["input_ids"], pixel_values=pixels,
                                         attention_mask=q["attention_mask"], max_new_tokens=self.max_new_tokens)
        return " ".join(_decode_words(self.tokenizer, ids[0]))

    def query(self, pixels: Tensor, question: str, answer: str | None = None, top_k: int = 1) -> Any:
        """Inputs and target for ``answer`` (default: the generated answer)."""
        from ..explain import AnswerQuery
        from ..targets import SequenceLogProb

        if answer is None and top_k != 1:
            raise ValueError(f"top_k: BlipVQA explains one generated answer (top_k=1), got {top_k}; "
                             "pass answer= to explain another")
        q, q_tokens, q_positions = self._question(question, pixels.device)
        if answer is None:
            answer = self.answer(pixels, question)
            if not answer:
                raise ValueError(f"the model generated an empty answer to {question!r}; pass answer=")
        ids, _ = tokenize_words(self.tokenizer, answer.split())
        decoder_ids = torch.tensor([[self.start_token_id, *ids]], device=pixels.device)  # (1, 1+n)
        # token k of the answer is read at logit k of [BOS, t_1..t_n]
        target = SequenceLogProb(ids, positions=list(range(len(ids))))
        inputs = {"pixel_values": pixels, **q, "decoder_input_ids": decoder_ids,
                  "decoder_attention_mask": torch.ones_like(decoder_ids)}
        return AnswerQuery(inputs, [target], [answer], q_tokens, q_positions,
                           probabilities=lambda out: target(out).detach().exp())


class ViltVQA(_VQA):
    """``ViltForQuestionAnswering``: answer-logit maps and question-token attributions.

    ViLT runs text and image patches as one sequence ``[text, image CLS, patches]``.
    ``model`` is a :class:`ViltPatchOrder` wrapper that fixes the patch order;
    ``reshape`` takes the last ``h * w`` tokens of the joint sequence (text and image
    CLS dropped) with the grid of the forward pass. Default layer: the last block's
    ``layernorm_before``, the input of its attention, through which every image token
    reaches the pooled text CLS (the final LayerNorm's image tokens get no gradient).
    Probabilities are sigmoids of the logits (ViLT's VQA head is trained with binary
    cross-entropy on soft answer scores).

    Args:
        model: a ``ViltForQuestionAnswering``.
        processor: a ``ViltProcessor`` (or give ``image_processor=`` and ``tokenizer=``).
        layer: module name (relative to the wrapper) to explain instead of the default.

    Example:
        >>> vqa = ViltVQA(model, processor)                                      # doctest: +SKIP
        >>> ax = mx.explain_answer(vqa, "cats.jpg", "how many cats are there?", top_k=3)  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, processor: Any = None, *, image_processor: Any = None,
                 tokenizer: Any = None, layer: str | None = None) -> None:
        _check_model("ViltVQA", model, ("ViltForQuestionAnswering",))
        super().__init__(processor, image_processor, tokenizer)
        self.hf_model = model
        self.model = ViltPatchOrder(model)
        self.default_layer = layer or "model." + _last_layer(model, "vilt.encoder.layer") + ".layernorm_before"
        self.reshape = PatchGrid(self.model.patch_grid)
        self.question_layer = "model.vilt.embeddings.text_embeddings.word_embeddings"
        self.labels = {int(k): v for k, v in model.config.id2label.items()}

    def query(self, pixels: Tensor, question: str, answer: str | None = None, top_k: int = 1) -> Any:
        """Inputs and targets for ``answer``, or for the top-k answers (chosen from the same forward)."""
        from ..explain import AnswerQuery
        from ..targets import AnswerScore, TopClass

        q, q_tokens, q_positions = self._question(question, pixels.device)
        q["token_type_ids"] = torch.zeros_like(q["input_ids"])
        inputs = {"pixel_values": pixels, **q}
        if answer is not None:
            matches = [i for i, name in self.labels.items() if name == answer]
            if not matches:
                raise ValueError(f"answer {answer!r} is not one of the model's {len(self.labels)} answers (config.id2label)")
            targets: list[Any] = [AnswerScore(matches[0])]
            picked = lambda out: torch.tensor(matches[:1])  # noqa: E731
            names: Any = [answer]
        else:
            targets = [TopClass(rank) for rank in range(top_k)]
            picked = lambda out: torch.stack([t.indices(out)[0] for t in targets]).cpu()  # noqa: E731
            names = lambda out: [self.labels.get(int(i), str(int(i))) for i in picked(out)]  # noqa: E731
        probabilities = lambda out: out.logits[0].detach().sigmoid().cpu()[picked(out)]  # noqa: E731
        return AnswerQuery(inputs, targets, names, q_tokens, q_positions, probabilities)


# ----------------------------------------------------------------------------- dispatch

_CAPTIONERS = {"BlipForConditionalGeneration": BlipCaptioner, "VisionEncoderDecoderModel": VisionEncoderDecoderCaptioner}
_ANSWERERS = {"BlipForQuestionAnswering": BlipVQA, "ViltForQuestionAnswering": ViltVQA}


def caption_adapter(model: nn.Module, processor: Any = None, **kwargs: Any) -> BlipCaptioner | VisionEncoderDecoderCaptioner:
    """The caption adapter for a transformers captioner, chosen by its class.

    Args:
        model: a ``BlipForConditionalGeneration`` or ``VisionEncoderDecoderModel``.
        processor: its processor (or pass ``image_processor=`` and ``tokenizer=``).
        **kwargs: passed to the adapter (``layer=``, ``max_new_tokens=``).

    Example:
        >>> ex = mx.explain_caption(mx.hf.caption_adapter(model, processor), "cat.jpg")  # doctest: +SKIP
    """
    cls = _CAPTIONERS.get(type(model).__name__)
    if cls is None:
        raise TypeError(f"model: no caption adapter for {type(model).__name__}; supported: {', '.join(_CAPTIONERS)}")
    return cls(model, processor, **kwargs)


def answer_adapter(model: nn.Module, processor: Any = None, **kwargs: Any) -> BlipVQA | ViltVQA:
    """The VQA adapter for a transformers VQA model, chosen by its class.

    Args:
        model: a ``BlipForQuestionAnswering`` or ``ViltForQuestionAnswering``.
        processor: its processor (or pass ``image_processor=`` and ``tokenizer=``).
        **kwargs: passed to the adapter (``layer=``, ...).

    Example:
        >>> ax = mx.explain_answer(mx.hf.answer_adapter(model, processor), "cat.jpg", "what is it?")  # doctest: +SKIP
    """
    cls = _ANSWERERS.get(type(model).__name__)
    if cls is None:
        raise TypeError(f"model: no VQA adapter for {type(model).__name__}; supported: {', '.join(_ANSWERERS)}")
    return cls(model, processor, **kwargs)
