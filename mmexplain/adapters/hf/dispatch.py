"""The adapter for a transformers model, chosen by its class.

Image-text-to-text VLMs (LLaVA, Qwen2-VL / 2.5-VL, PaliGemma, Idefics3 / SmolVLM, BLIP-2,
GIT, Florence-2) are in both tables: one :class:`~.vlm.ImageTextToText` adapter captions
(``explain_caption``) and answers (``explain_answer``); ``adapter`` gives it for them.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .captioners import BlipCaptioner, VisionEncoderDecoderCaptioner
from .families import FAMILIES
from .vlm import ImageTextToText
from .vqa import BlipVQA, ViltVQA

__all__ = ["caption_adapter", "answer_adapter", "adapter", "CAPTIONERS", "ANSWERERS", "VLMS"]

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
    cls = CAPTIONERS.get(type(model).__name__)
    if cls is None:
        raise TypeError(f"model: no caption adapter for {type(model).__name__}; supported: {', '.join(CAPTIONERS)}")
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
    cls = ANSWERERS.get(type(model).__name__)
    if cls is None:
        raise TypeError(f"model: no VQA adapter for {type(model).__name__}; supported: {', '.join(ANSWERERS)}")
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
    raise TypeError(f"model: no adapter for {name}; captioners: {', '.join(CAPTIONERS)}; "
                    f"VQA: {', '.join(ANSWERERS)}")
