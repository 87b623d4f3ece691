"""The tiny ShapeWorld VLM of the zoo (``tiny-vlm``): a LLaVA-style image-text-to-text model.

A ``LlavaForConditionalGeneration`` built from small configs (nothing downloads): a CLIP
vision tower (64 x 64 images, 8 x 8 patches + CLS), LLaVA's two-layer projector and a
Llama language model, with a word-level tokenizer over ShapeWorld's captions, questions
and answers and a chat template (``user: <image> PROMPT assistant:``). It reads the
vision tower's second-to-last layer (``vision_feature_layer = -2``, LLaVA-1.5's choice),
so its last vision layer gets no gradient, as in the real models. It captions (prompt
:data:`CAPTION_PROMPT`) and answers questions (the question is the prompt).

A checkpoint is an ordinary transformers folder (``config.json``, ``model.safetensors``,
tokenizer, image-processor and processor files, with the chat template) read with
``from_pretrained(..., local_files_only=True, use_safetensors=True)``; :func:`load` wraps
it in :class:`~mmexplain.adapters.hf.ImageTextToText`. transformers is imported inside
the functions only.

Example:
    >>> import mmexplain as mx
    >>> vlm = mx.zoo.load("tiny-vlm")                      # ImageTextToText   # doctest: +SKIP
    >>> scene = mx.world.generate(2_000_000, size=64)
    >>> mx.explain_caption(vlm, scene.image).words                              # doctest: +SKIP
    >>> mx.explain_answer(vlm, scene.image, scene.questions[0].question).answer  # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from .quiet import quiet_transformers
from ..errors import InputError

__all__ = ["TinyVLMConfig", "CAPTION_PROMPT", "vocabulary", "build_tokenizer", "build_processor", "build_model",
           "new", "new_parts", "load", "load_parts", "adapter", "write_checkpoint", "config_of"]

SPECIALS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]", "<image>")  # ids 0..4
CHAT_WORDS = ("user:", "assistant:")
CAPTION_PROMPT = "describe the image"
#: ``user: <image> PROMPT assistant:`` (one user turn, then the generation prompt)
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}:{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %} <image>{% else %} {{ item['text'] }}{% endif %}{% endfor %} {% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


@dataclass
class TinyVLMConfig:
    """The tiny VLM's architecture (``LlavaForConditionalGeneration``: CLIP tower, projector, Llama LM)."""

    image_size: int = 64  # ShapeWorld scenes are drawn at this side
    patch_size: int = 8  # -> an 8 x 8 patch grid (+ CLS, dropped: vision_feature_select_strategy "default")
    vision_hidden: int = 64  # CLIP width
    vision_layers: int = 4  # CLIP blocks; the LM reads the output of block vision_layers - 2
    vision_heads: int = 4
    feature_layer: int = -2  # LLaVA's vision_feature_layer (index into the tower's hidden states)
    text_hidden: int = 96  # Llama width
    text_layers: int = 3  # Llama blocks
    text_heads: int = 4
    text_kv_heads: int = 2  # grouped-query attention
    max_len: int = 128  # positions: 5 prompt tokens + 64 image tokens + <= 12 question words + <= 16 caption words


def vocabulary() -> list[str]:
    """Special tokens, the chat words, then every ShapeWorld caption, question, answer and prompt word (fixed order)."""
    from .. import world
    from .tiny_hf import QUESTION_WORDS

    words = ["a", *world.RELATION.split(), *world.SIZES, *world.COLORS, *world.SHAPES, *(s + "s" for s in world.SHAPES),
             *QUESTION_WORDS, *world.answers(), *CAPTION_PROMPT.split()]
    return [*SPECIALS, *CHAT_WORDS, *dict.fromkeys(words)]


def build_tokenizer() -> Any:
    """A word-level ``PreTrainedTokenizerFast`` (whitespace split) with ``<image>`` as a special token."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = vocabulary()
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with single spaces
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]",
                                   eos_token="[EOS]", extra_special_tokens={"image_token": "<image>"})


def build_processor(config: TinyVLMConfig, tokenizer: Any | None = None) -> Any:
    """``LlavaProcessor``: CLIP image processor (resize + centre crop to ``image_size``, [-1, 1]) and the chat template."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    side = config.image_size
    images = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                                image_mean=[0.5] * 3, image_std=[0.5] * 3, do_convert_rgb=True)
    return LlavaProcessor(image_processor=images, tokenizer=tokenizer or build_tokenizer(), patch_size=config.patch_size,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=CHAT_TEMPLATE)


def build_model(config: TinyVLMConfig, tokenizer: Any, *, seed: int = 0) -> Any:
    """A randomly initialized ``LlavaForConditionalGeneration`` (seeded; the caller's RNG is kept), greedy generation."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    c = config
    vision = CLIPVisionConfig(hidden_size=c.vision_hidden, num_hidden_layers=c.vision_layers,
                              num_attention_heads=c.vision_heads, intermediate_size=4 * c.vision_hidden,
                              image_size=c.image_size, patch_size=c.patch_size, attention_dropout=0.0)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=c.text_hidden, num_hidden_layers=c.text_layers,
                       num_attention_heads=c.text_heads, num_key_value_heads=c.text_kv_heads,
                       intermediate_size=int(8 / 3 * c.text_hidden), max_position_embeddings=c.max_len,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    full = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                       vision_feature_layer=c.feature_layer, vision_feature_select_strategy="default",
                       projector_hidden_act="gelu", tie_word_embeddings=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(full)
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id, \
        tokenizer.pad_token_id
    gen.do_sample, gen.num_beams, gen.max_new_tokens = False, 1, 20
    return model


def make_config(config: dict[str, Any] | None = None) -> TinyVLMConfig:
    """The default architecture with the fields in ``config`` changed (ValueError naming an unknown one)."""
    import difflib

    known = [f.name for f in fields(TinyVLMConfig)]
    for key in config or {}:
        if key not in known:
            near = difflib.get_close_matches(key, known, n=1)
            raise InputError(f"config: tiny-vlm has no setting {key!r}"
                             + (f" (nearest: {near[0]})" if near else f"; it has {', '.join(known)}"))
    return TinyVLMConfig(**dict(config or {}))


def adapter(model: Any, processor: Any) -> Any:
    """The ``mx.hf`` adapter of the tiny VLM: ``ImageTextToText`` with the caption prompt, greedy, <= 20 new tokens."""
    from ..adapters.hf import ImageTextToText

    return ImageTextToText(model, processor, prompt=CAPTION_PROMPT, max_new_tokens=20)


def new_parts(*, config: dict[str, Any] | None = None, seed: int = 0) -> tuple[Any, Any]:
    """An untrained tiny VLM (default architecture, ``config`` fields changed): ``(model in eval mode, processor)``."""
    cfg = make_config(config)
    tokenizer = build_tokenizer()
    return build_model(cfg, tokenizer, seed=seed).eval(), build_processor(cfg, tokenizer)


def new(*, config: dict[str, Any] | None = None, seed: int = 0) -> Any:
    """An untrained tiny VLM (default architecture, ``config`` fields changed), as its adapter, in eval mode."""
    return adapter(*new_parts(config=config, seed=seed))


def config_of(model: Any) -> TinyVLMConfig:
    """The architecture of a tiny VLM (its ``LlavaForConditionalGeneration`` or adapter), read from its config."""
    c = getattr(model, "hf_model", model).config
    v, t = c.vision_config, c.text_config
    return TinyVLMConfig(image_size=v.image_size, patch_size=v.patch_size, vision_hidden=v.hidden_size,
                         vision_layers=v.num_hidden_layers, vision_heads=v.num_attention_heads,
                         feature_layer=c.vision_feature_layer, text_hidden=t.hidden_size,
                         text_layers=t.num_hidden_layers, text_heads=t.num_attention_heads,
                         text_kv_heads=t.num_key_value_heads, max_len=t.max_position_embeddings)


def load(path: str | os.PathLike) -> Any:
    """The tiny VLM from its local checkpoint folder, as its ``mx.hf`` adapter, in eval mode (no network)."""
    return adapter(*load_parts(path))


def load_parts(path: str | os.PathLike) -> tuple[Any, Any]:
    """``(LlavaForConditionalGeneration in eval mode, LlavaProcessor)`` from a local checkpoint folder."""
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no transformers checkpoint for 'tiny-vlm' at {path} (expected config.json); "
                                "train one with `mmexplain train tiny-vlm`")
    try:
        with quiet_transformers():
            model = LlavaForConditionalGeneration.from_pretrained(path, local_files_only=True, use_safetensors=True)
            processor = LlavaProcessor.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
        text = " ".join(str(exc).split())[:300]
        raise InputError(f"checkpoint folder {path} does not hold a loadable tiny-vlm model: {text}") from exc
    return model.eval(), processor


def write_checkpoint(model: Any, processor: Any, out: str | os.PathLike) -> Path:
    """``save_pretrained`` the model (safetensors) and processor (tokenizer, image processor, chat template) into ``out``."""
    out = Path(out)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
