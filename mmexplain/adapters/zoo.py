"""Adapters for the ``mx.zoo`` reference models, and the one resolver the explainers use.

:func:`as_caption_adapter` / :func:`as_answer_adapter` turn "a zoo model or an
adapter" into an adapter: an object that already satisfies the protocol is returned
as it is, a zoo model is wrapped. (Transformers models get their adapters from
``mx.hf.caption_adapter`` / ``mx.hf.answer_adapter``, which need the processor.)

Example:
    >>> import mmexplain as mx
    >>> from mmexplain.adapters import as_answer_adapter
    >>> vqa = as_answer_adapter(mx.zoo.load("vqa"))                       # doctest: +SKIP
    >>> query = vqa.query(vqa.load_image(image), "what color is the square ?", None, 2)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .answers import AnswerClassifier
from .items import ItemQuestions
from .protocols import AnswerAdapter, AnswerQuery, CaptionAdapter, ItemAdapter, WordSpan, check_copies
from ..errors import InputError, InputTypeError

__all__ = ["ZooCaptionAdapter", "ZooAnswerAdapter", "as_caption_adapter", "as_answer_adapter", "as_item_adapter"]

_CAPTIONER_ATTRS = ("vocab", "generate", "preprocess", "default_layer")
_VQA_ATTRS = ("answers", "encode_question", "preprocess", "default_layer")


class _ZooModel(ItemQuestions):
    """What the zoo adapters share: the model, its default layer and its image handling."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.default_layer: str = model.default_layer

    def load_image(self, image: Any) -> Tensor:
        """Path / PIL / array / tensor -> (1, 3, H, W) in [0, 1] at the model's size."""
        return self.model.preprocess(image)  # (1, 3, H, W); reads through adapters.images.load_image

    def display_image(self, pixels: Tensor) -> Tensor:
        """(3, H, W) in [0, 1]: the pixels themselves (the model normalises inside forward)."""
        return pixels[0].detach().clamp(0, 1)

    def reshape_for(self, pixels: Tensor) -> Callable[[Tensor], Tensor] | None:
        """None: the zoo models are explained at convolutional layers."""
        return None


class ZooCaptionAdapter(_ZooModel):
    """Adapter for ``mx.zoo`` captioners: ``forward(images, [<bos>, w1..wT]) -> (B, T+1, V)``.

    The LSTM decoder's batched (vmap) backward gains nothing on CPU, so the words are
    explained through the batch axis (``targets_in_batch``): the CNN still runs once.
    """

    targets_in_batch = True
    tasks = frozenset({"caption"})

    def generate(self, pixels: Tensor) -> list[str]:
        """The greedy caption of one image, as words."""
        return self.model.generate(pixels)[0]

    def split_words(self, caption: str) -> list[str]:
        """A caption -> its words; a word outside the captioner's vocabulary raises ValueError."""
        words = caption.split()
        vocab = self.model.vocab
        specials = (vocab.pad, vocab.bos, vocab.eos, vocab.unk)
        unknown = [w for w in words if w not in vocab or vocab.stoi[w] in specials]
        if unknown:
            raise InputError(f"caption: unknown word {unknown[0]!r}; the captioner's vocabulary has {len(vocab) - 4} words")
        return words

    def teacher_forced(self, pixels: Tensor, words: Sequence[str], *, copies: int = 1) -> tuple[Any, list[WordSpan]]:
        """``(pixels, tokens)``, tokens ``[<bos>, w1..wT]`` in ``copies`` rows; word t+1 is read at logit t.

        The pixels stay one row: with ``GradCAM(..., targets_in_batch=True)`` the engine
        copies the layer's activation, and the tokens meet it after the layer.
        """
        check_copies(copies)
        ids = self.model.vocab.encode(list(words))
        tokens = torch.tensor([[self.model.vocab.bos, *ids]], dtype=torch.long, device=pixels.device)  # (1, T+1)
        return (pixels, tokens.repeat(copies, 1)), [([t], [tok]) for t, tok in enumerate(ids)]  # (copies, T+1)


class ZooAnswerAdapter(_ZooModel, AnswerClassifier):
    """Adapter for ``mx.zoo`` VQA models: an answer classifier over ``model.answers`` (softmax)."""

    question_layer = "embed"
    tasks = frozenset({"answer"})

    def __init__(self, model: nn.Module) -> None:
        _ZooModel.__init__(self, model)
        AnswerClassifier.__init__(self, model.answers, activation="softmax")

    def query(self, pixels: Tensor, question: str, answer: str | None, top_k: int) -> AnswerQuery:
        """``(pixels, question ids)`` and the answer's target, or the top-k answers' targets."""
        ids = self.model.encode_question(question).to(pixels.device)  # (L,); unknown words raise
        targets = self.answer_targets(answer, top_k)
        tokens = [self.model.vocab.itos[int(i)] for i in ids]  # every word is known: no specials
        return AnswerQuery((pixels, ids[None]), targets, tokens, list(range(len(tokens))),
                           answers=None if answer is None else [answer])


def as_caption_adapter(captioner: Any) -> CaptionAdapter:
    """The adapter for a captioner: itself if it is a ``CaptionAdapter``, else the zoo adapter.

    Raises:
        TypeError: neither an ``mx.zoo`` captioner nor a ``CaptionAdapter``.
    """
    if isinstance(captioner, CaptionAdapter):
        return captioner
    if isinstance(captioner, nn.Module) and all(hasattr(captioner, a) for a in _CAPTIONER_ATTRS):
        return ZooCaptionAdapter(captioner)
    raise InputTypeError(
        "captioner: expected an mx.zoo captioner or a CaptionAdapter (e.g. mx.hf.caption_adapter(model, processor)), "
        f"got {type(captioner).__name__}"
    )


def as_answer_adapter(vqa: Any) -> AnswerAdapter:
    """The adapter for a VQA model: itself if it is an ``AnswerAdapter``, else the zoo adapter.

    Raises:
        TypeError: neither an ``mx.zoo`` VQA model nor an ``AnswerAdapter``.
    """
    if isinstance(vqa, AnswerAdapter):
        return vqa
    if isinstance(vqa, nn.Module) and all(hasattr(vqa, a) for a in _VQA_ATTRS):
        return ZooAnswerAdapter(vqa)
    raise InputTypeError(
        "vqa: expected an mx.zoo VQA model or an AnswerAdapter (e.g. mx.hf.answer_adapter(model, processor)), "
        f"got {type(vqa).__name__}"
    )


def as_item_adapter(model: Any) -> ItemAdapter:
    """The adapter the evaluation protocols ask: itself if it is an ``ItemAdapter``, else a zoo adapter.

    ``mx.zoo`` captioners and VQA models get their zoo adapters; any other ``nn.Module``
    is taken as an image classifier (:func:`~mmexplain.adapters.classifier.as_class_adapter`).

    Raises:
        TypeError: neither an ``nn.Module`` nor an ``ItemAdapter`` (e.g. an adapter that
            does not answer the evaluation questions).
    """
    if isinstance(model, ItemAdapter):
        return model
    if isinstance(model, nn.Module):
        if all(hasattr(model, a) for a in _CAPTIONER_ATTRS):
            return ZooCaptionAdapter(model)
        if all(hasattr(model, a) for a in _VQA_ATTRS):
            return ZooAnswerAdapter(model)
        from .classifier import as_class_adapter

        return as_class_adapter(model)
    raise InputTypeError(f"model: expected an mx.zoo model, a classifier or an adapter with item_inputs / probability / "
                    f"capabilities (mx.hf, mx.adapters.ClassifierAdapter), got {type(model).__name__}")
