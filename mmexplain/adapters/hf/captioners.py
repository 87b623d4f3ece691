"""Caption adapters for transformers models: BLIP and VisionEncoderDecoder (ViT + GPT-2 style).

Each word's explained scalar is its log-probability as a person reads it: sub-word
tokens of one word are merged by summing their log-probabilities
(``mx.targets.SequenceLogProb`` with explicit positions).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..grids import PatchGrid
from ..protocols import WordSpan, check_copies
from .common import ProcessedImages, check_model, last_layer, tokenize_words
from .words import GeneratedWords, generated_words
from ...errors import InputError, InputTypeError

__all__ = ["BlipCaptioner", "VisionEncoderDecoderCaptioner"]


class _Captioner(ProcessedImages):
    """What caption adapters share: generation and teacher forcing by words."""

    default_layer: str
    start_token_id: int
    text_key: str  # keyword of the teacher-forced token ids
    #: the transformers decoders are explained with one batched backward (vmap)
    targets_in_batch = False
    tasks = frozenset({"caption"})

    def __init__(self, model: nn.Module, processor: Any, image_processor: Any, tokenizer: Any, *,
                 max_new_tokens: int, patch_embedding: str | None) -> None:
        super().__init__(type(self).__name__, processor, image_processor, tokenizer, patch_embedding=patch_embedding)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InputError(f"max_new_tokens: expected an int >= 1, got {max_new_tokens!r}")
        self.model = model
        self.max_new_tokens = max_new_tokens

    @property
    def reshape(self) -> PatchGrid:
        """``PatchGrid()``: a square grid from the token count; ``reshape_for(pixels)`` is exact for any size."""
        return PatchGrid()

    def generate(self, pixels: Tensor) -> GeneratedWords:
        """Greedy caption of one image, as words (special tokens dropped) carrying the generated ids."""
        if pixels.dim() != 4 or pixels.shape[0] != 1:
            raise InputError(f"pixels: expected (1, 3, H, W), got {tuple(pixels.shape)}")
        with torch.no_grad():
            ids = self.model.generate(pixel_values=pixels, max_new_tokens=self.max_new_tokens)  # (1, T)
        return generated_words(self.tokenizer, ids[0], start=self.start_token_id)  # words that keep their ids

    def split_words(self, caption: str) -> list[str]:
        """A given caption -> its words; a word the tokenizer only knows as unknown raises ValueError."""
        if not isinstance(caption, str):
            raise InputTypeError(f"caption: expected a str, got {type(caption).__name__}")
        words = caption.split()
        if not words:
            return words
        ids, groups = tokenize_words(self.tokenizer, words)
        unk = self.tokenizer.unk_token_id
        unknown = [w for w, g in zip(words, groups) if unk is not None and any(ids[k] == unk for k in g)]
        if unknown:
            raise InputError(f"caption: unknown word {unknown[0]!r} (the tokenizer maps it to {self.tokenizer.unk_token})")
        return words

    def teacher_forced(self, pixels: Tensor, words: Sequence[str], *,
                       copies: int = 1) -> tuple[dict[str, Tensor], list[WordSpan]]:
        """Inputs for one teacher-forced forward over ``words``, and per word (logit positions, token ids).

        The decoder reads ``[start, t_1, ..., t_n]``; token ``t_k`` is scored at logit
        position ``k - 1``. A word made of several tokens gets all their positions, so
        ``SequenceLogProb(ids, positions=positions)`` is the word's log-probability.
        The token ids come in ``copies`` rows; the pixels stay one row (with
        ``GradCAM(..., targets_in_batch=True)`` the engine copies the layer's activation).
        """
        check_copies(copies)
        kept = words.tokens_for(words) if isinstance(words, GeneratedWords) else None
        ids, groups = kept if kept is not None else tokenize_words(self.tokenizer, words)
        tokens = torch.tensor([[self.start_token_id, *ids]], device=pixels.device)  # (1, 1+n)
        tokens = tokens.repeat(copies, 1)  # (copies, 1+n)
        spans = [(list(g), [ids[k] for k in g]) for g in groups]
        mask_key = self.text_key.replace("input_ids", "attention_mask")
        return {"pixel_values": pixels, self.text_key: tokens, mask_key: torch.ones_like(tokens)}, spans


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
        check_model("BlipCaptioner", model, ("BlipForConditionalGeneration",))
        super().__init__(model, processor, image_processor, tokenizer, max_new_tokens=max_new_tokens,
                         patch_embedding="vision_model.embeddings.patch_embedding")
        self.default_layer = layer or last_layer(model, "vision_model.encoder.layers")
        self.start_token_id = int(model.config.text_config.bos_token_id)


class VisionEncoderDecoderCaptioner(_Captioner):
    """``VisionEncoderDecoderModel`` (ViT-style encoder + GPT-2-style decoder).

    Default layer: the encoder's final LayerNorm (``encoder.layernorm``; its tokens are
    the decoder's cross-attention memory), else the encoder's last block. The patch
    grid comes from the encoder's patch convolution when it has the ViT layout
    (``encoder.embeddings.patch_embeddings.projection``), else it is inferred as square.

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
        check_model("VisionEncoderDecoderCaptioner", model, ("VisionEncoderDecoderModel",))
        names = dict(model.named_modules())
        conv = "encoder.embeddings.patch_embeddings.projection"
        super().__init__(model, processor, image_processor, tokenizer, max_new_tokens=max_new_tokens,
                         patch_embedding=conv if isinstance(names.get(conv), nn.Conv2d) else None)
        if layer is None:
            blocks = [c for c in ("encoder.layers", "encoder.encoder.layer", "encoder.encoder.layers") if c in names]
            if "encoder.layernorm" in names:
                layer = "encoder.layernorm"
            elif blocks:  # the encoder's last block (module names differ across transformers versions)
                layer = last_layer(model, blocks[0])
            else:
                raise InputError(f"layer: no default for encoder {type(model.encoder).__name__}; pass layer=")
        self.default_layer = layer
        start = model.config.decoder_start_token_id
        if start is None:
            start = getattr(model.generation_config, "decoder_start_token_id", None)
        if start is None:
            raise InputError("model.config.decoder_start_token_id is None; set it to the decoder's start token")
        self.start_token_id = int(start)
