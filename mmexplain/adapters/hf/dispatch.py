"""The adapter for a transformers model, chosen by its class.

BLIP, VisionEncoderDecoder and ViLT have adapters of their own (by class). Every other model goes
to :class:`~.vlm.ImageTextToText` when :func:`~.discovery.discover` places it from its config and
modules (one adapter captions with ``explain_caption`` and answers with ``explain_answer``), and is
refused with :class:`~.discovery.Unsupported` saying what is missing otherwise.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .captioners import BlipCaptioner, VisionEncoderDecoderCaptioner
from .discovery import Unsupported, discover
from .families import FAMILIES
from .vlm import ImageTextToText
from .vqa import BlipVQA, ViltVQA
from ...errors import InputTypeError

__all__ = ["caption_adapter", "answer_adapter", "adapter", "vlm_class", "CAPTIONERS", "ANSWERERS", "VLMS"]

# model class name -> adapter class, per role
CAPTIONERS: dict[str, type] = {"BlipForConditionalGeneration": BlipCaptioner,
                               "VisionEncoderDecoderModel": VisionEncoderDecoderCaptioner}
ANSWERERS: dict[str, type] = {"BlipForQuestionAnswering": BlipVQA, "ViltForQuestionAnswering": ViltVQA}
VLMS: dict[str, type] = {name: ImageTextToText for family in FAMILIES for name in family.names}
CAPTIONERS |= VLMS
ANSWERERS |= VLMS


def caption_adapter(model: nn.Module, processor: Any = None,
                    **kwargs: Any) -> BlipCaptioner | VisionEncoderDecoderCaptioner | ImageTextToText:
    """The caption adapter for a transformers captioner, chosen by its class.

    Args:
        model: a ``BlipForConditionalGeneration``, ``VisionEncoderDecoderModel`` or an
            image-text-to-text VLM (:data:`VLMS`).
        processor: its processor (or pass ``image_processor=`` and ``tokenizer=``; VLMs
            need the processor, which builds their prompts).
        **kwargs: passed to the adapter (``layer=``, ``max_new_tokens=``; VLMs: ``prompt=``, ``chat=``).

    Example:
        >>> ex = mx.explain_caption(mx.hf.caption_adapter(model, processor), "cat.jpg")  # doctest: +SKIP
    """
    cls = CAPTIONERS.get(type(model).__name__) or vlm_class(model, role="caption ")
    return cls(model, processor, **kwargs)


def answer_adapter(model: nn.Module, processor: Any = None, **kwargs: Any) -> BlipVQA | ViltVQA | ImageTextToText:
    """The VQA adapter for a transformers VQA model, chosen by its class.

    Args:
        model: a ``BlipForQuestionAnswering``, ``ViltForQuestionAnswering`` or an
            image-text-to-text VLM (:data:`VLMS`; its generated answer is explained).
        processor: its processor (or pass ``image_processor=`` and ``tokenizer=``).
        **kwargs: passed to the adapter (``layer=``, ...).

    Example:
        >>> ax = mx.explain_answer(mx.hf.answer_adapter(model, processor), "cat.jpg", "what is it?")  # doctest: +SKIP
    """
    cls = ANSWERERS.get(type(model).__name__) or vlm_class(model, role="VQA ")
    return cls(model, processor, **kwargs)


def adapter(model: nn.Module, processor: Any = None, **kwargs: Any) -> Any:
    """The caption or VQA adapter for a transformers model: the role comes from the model class.

    Args:
        model: any model class of :data:`CAPTIONERS` or :data:`ANSWERERS` (a VLM in both: its
            ``ImageTextToText`` adapter does both roles).
        processor: its processor (or pass ``image_processor=`` and ``tokenizer=``).
        **kwargs: passed to the adapter.

    Example:
        >>> a = mx.hf.adapter(model, processor)      # a BlipCaptioner for BlipForConditionalGeneration  # doctest: +SKIP
    """
    name = type(model).__name__
    if name in CAPTIONERS:
        return caption_adapter(model, processor, **kwargs)
    if name in ANSWERERS:
        return answer_adapter(model, processor, **kwargs)
    return vlm_class(model)(model, processor, **kwargs)


def vlm_class(model: nn.Module, *, role: str = "") -> type:
    """:class:`ImageTextToText` when discovery places ``model`` (from its config and modules); otherwise
    :class:`~.discovery.Unsupported` (a TypeError) naming the class and what is missing."""
    name = type(model).__name__
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise InputTypeError(f"model: no {role}adapter for {name} (expected a transformers model)")
    try:
        discover(model)
    except Unsupported as exc:
        others = ", ".join(sorted(set(CAPTIONERS if role == "caption " else ANSWERERS if role else CAPTIONERS)
                                  - set(VLMS) | (set(ANSWERERS) - set(VLMS) if not role else set())))
        raise Unsupported(f"model: no {role}adapter for {name}: {str(exc).removeprefix('model: ')} "
                          f"(adapters by class: {others})") from None
    return ImageTextToText
