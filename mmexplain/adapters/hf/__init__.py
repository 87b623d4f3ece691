"""Adapters that let the Grad-CAM engine and the explainers run on Hugging Face models (``mx.hf``).

An adapter holds an unmodified ``transformers`` model with its image processor and
tokenizer, and knows the four things the engine cannot guess:

* which layer to explain (``default_layer``) and how its tokens form a grid
  (``reshape_for(pixels)``: the image patch tokens, class/prefix tokens dropped, to
  ``(B, D, h, w)``, with the grid of those pixels);
* how to turn an image into the model's pixels and back (``load_image``,
  ``display_image``; images are read by ``mmexplain.adapters.images.load_image``);
* how to produce the words or the answer (``generate`` / ``query``);
* which logits and token ids score each *word* as a person reads it: sub-word tokens
  of one word are merged by summing their log-probabilities
  (``mx.targets.SequenceLogProb`` with explicit positions).

Supported models (all on the installed transformers, nothing downloads):

========================================  ======================================  ================================
model                                     adapter                                 explained scalar
========================================  ======================================  ================================
``BlipForConditionalGeneration``          :class:`BlipCaptioner`                  log p(word) per word
``VisionEncoderDecoderModel`` (ViT+GPT2)  :class:`VisionEncoderDecoderCaptioner`  log p(word) per word
``BlipForQuestionAnswering``              :class:`BlipVQA`                        sum of the answer tokens' log p
``ViltForQuestionAnswering``              :class:`ViltVQA`                        the answer's logit
image-text-to-text VLMs placed by                                                 log p(word) per word of the
their config (``discover``): LLaVA,       :class:`ImageTextToText`                caption; the answer's summed
LLaVA-NeXT/OneVision, Qwen2/2.5/3-VL,                                             log p (generated answers)
GLM-4V, Gemma 3, PaliGemma, Idefics2/3,
SmolVLM, InternVL, Mistral3, Aya Vision,
Mllama, BLIP-2, InstructBLIP, GIT,
Florence-2, ...
========================================  ======================================  ================================

A model discovery cannot place is refused with :class:`Unsupported` saying what is missing;
``register_family`` adds a layout for it. Words keep all their tokens (:mod:`.words`).

Some models need a thin wrapper module (``adapter.model``, see :mod:`.wrappers`, :mod:`.tap`),
which calls the real model's own ``forward`` and changes nothing in it: :class:`DecoderLogits`
for BLIP VQA, :class:`ViltPatchOrder` for ViLT's shuffled patch tokens, :class:`VisionTap`
for the vision layer a VLM's language model reads.

Modules: ``common`` (images, shared adapter base), ``words`` (words <-> tokens), ``wrappers``,
``captioners``, ``vqa``, ``vlm`` (image-text-to-text), ``families`` (layouts whose rules read the
config), ``anyres`` (LLaVA-NeXT / OneVision crops), ``mllama`` (cross-attention tiles),
``discovery`` (``discover``, ``register_family``, ``Unsupported``), ``layouts`` (token orders:
CLS, merge blocks, windows, tiles, pixel shuffle), ``tap``, ``dispatch`` (``adapter``,
``caption_adapter``, ``answer_adapter``).

Example:
    >>> import mmexplain as mx
    >>> from transformers import BlipForConditionalGeneration, BlipProcessor     # doctest: +SKIP
    >>> model = BlipForConditionalGeneration.from_pretrained(local_dir).eval()    # doctest: +SKIP
    >>> captioner = mx.hf.adapter(model, BlipProcessor.from_pretrained(local_dir))  # doctest: +SKIP
    >>> pixels = captioner.load_image("cat.jpg")                                  # doctest: +SKIP
    >>> words = captioner.generate(pixels)                                        # doctest: +SKIP
    >>> inputs, spans = captioner.teacher_forced(pixels, words)                   # doctest: +SKIP
    >>> cam = mx.GradCAM(captioner.model, captioner.default_layer, reshape=captioner.reshape_for(pixels))  # doctest: +SKIP
    >>> res = cam(inputs, [mx.targets.SequenceLogProb(t, positions=p) for p, t in spans])  # doctest: +SKIP
    >>> res.maps.shape   # (words, 1, H, W)                                       # doctest: +SKIP
"""

from __future__ import annotations

from ..grids import PatchGrid
from .captioners import BlipCaptioner, VisionEncoderDecoderCaptioner
from .common import tokenize_words
from .discovery import Unsupported, discover, register_family, unregister_family
from .dispatch import adapter, answer_adapter, caption_adapter
from .layouts import TokenGrid
from .tap import VisionTap
from .vlm import ImageTextToText
from .vqa import BlipVQA, ViltVQA
from .wrappers import DecoderLogits, ViltPatchOrder

__all__ = [
    "PatchGrid",
    "DecoderLogits",
    "ViltPatchOrder",
    "tokenize_words",
    "BlipCaptioner",
    "VisionEncoderDecoderCaptioner",
    "BlipVQA",
    "ViltVQA",
    "ImageTextToText",
    "TokenGrid",
    "VisionTap",
    "adapter",
    "register_family",
    "unregister_family",
    "discover",
    "Unsupported",
    "caption_adapter",
    "answer_adapter",
]
