"""The tiny ShapeWorld VLMs of the zoo: ``tiny-llava`` and ``tiny-qwen2vl`` (``tiny-vlm`` is ``tiny-llava``).

Two real transformers classes, built from small configs (nothing downloads), each with
its own processor, byte-level BPE tokenizer (:mod:`.shapeworld_bpe`) and chat template
(``user: <image> PROMPT assistant:``) saved beside it:

* ``tiny-llava``: ``LlavaForConditionalGeneration``: a CLIP vision tower (96 x 96 images,
  16 x 16 patches -> a 6 x 6 grid + CLS), LLaVA's two-layer projector and a Llama LM;
  the LM reads ``hidden_states[-2]`` (LLaVA-1.5's choice) with CLS dropped, 36 image tokens.
* ``tiny-qwen2vl``: ``Qwen2VLForConditionalGeneration``: Qwen2-VL's vision transformer
  (12 x 12 patches, temporal patch 2, 2-D rotary positions), its merger (2 x 2 patches ->
  one token: 16 image tokens for an 8 x 8 grid, ``image_grid_thw``) and the Qwen2 LM
  with M-RoPE (temporal / height / width position sections).

A checkpoint is an ordinary transformers folder read with ``from_pretrained(...,
local_files_only=True, use_safetensors=True)``; :func:`load` wraps it in
:class:`~mmexplain.adapters.hf.ImageTextToText` (the path ``mx.hf.adapter`` takes).

Example:
    >>> import mmexplain as mx
    >>> vlm = mx.zoo.load("tiny-qwen2vl")                                # doctest: +SKIP
    >>> scene = mx.world.generate(2_000_000)
    >>> vlm.generate(vlm.load_image(scene.image))                          # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .shapeworld_bpe import CAPTION_PROMPT, train_tokenizer
from ..errors import InputError

__all__ = ["NAMES", "ALIASES", "CAPTION_PROMPT", "CHAT_TEMPLATE", "TinyVLMSpec", "SPECS", "build_tokenizer",
           "build_processor", "build_model", "new_parts", "adapter", "load_parts", "load", "write_checkpoint"]

NAMES = ("tiny-llava", "tiny-qwen2vl")
CLASSES = {"tiny-llava": "LlavaForConditionalGeneration", "tiny-qwen2vl": "Qwen2VLForConditionalGeneration"}
ALIASES = {"tiny-vlm": "tiny-llava"}
MAX_NEW_TOKENS = 40  # a three-object caption is about 26 tokens

#: ``user: <image> PROMPT assistant:``; the image placeholder is the processor's own text
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}:{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %} {{ image_text }}{% else %} {{ item['text'] }}{% endif %}{% endfor %} "
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)


@dataclass(frozen=True)
class TinyVLMSpec:
    """The architecture of one tiny VLM."""

    image_size: int = 96  # ShapeWorld's default side
    patch_size: int = 8  # 12 x 12 patch grid (tiny-llava uses 16: 6 x 6; tiny-qwen2vl 12: 8 x 8, merged 4 x 4)
    vision_hidden: int = 96
    vision_layers: int = 4
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 3
    text_heads: int = 4
    text_kv_heads: int = 2
    max_len: int = 256  # positions: prompt (~14) + image tokens (<= 144) + answer or caption (<= 40)


SPECS = {"tiny-llava": TinyVLMSpec(patch_size=16), "tiny-qwen2vl": TinyVLMSpec(patch_size=12, vision_layers=3)}
IMAGE_TOKENS = {"tiny-llava": ("<image>",), "tiny-qwen2vl": ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>",
                                                              "<|video_pad|>")}


def _canonical(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in NAMES:
        raise InputError(f"name must be one of {', '.join(NAMES)}, got {name!r}")
    return name


def build_tokenizer(name: str) -> Any:
    """The byte-level BPE tokenizer of ``name`` with its image tokens (``<image>``; Qwen's vision tokens)."""
    name = _canonical(name)
    tokenizer = train_tokenizer(IMAGE_TOKENS[name])
    if name == "tiny-llava":
        tokenizer.image_token = "<image>"
    return tokenizer


def _template(name: str) -> str:
    image = "<image>" if name == "tiny-llava" else "<|vision_start|><|image_pad|><|vision_end|>"
    return CHAT_TEMPLATE.replace("{{ image_text }}", image)


def build_processor(name: str, tokenizer: Any | None = None) -> Any:
    """The processor of ``name``: image processor (96 x 96, [-1, 1]), tokenizer and chat template."""
    name = _canonical(name)
    spec = SPECS[name]
    tokenizer = tokenizer or build_tokenizer(name)
    side = spec.image_size
    if name == "tiny-llava":
        from transformers import CLIPImageProcessor, LlavaProcessor

        images = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                                    image_mean=[0.5] * 3, image_std=[0.5] * 3, do_convert_rgb=True)
        return LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=spec.patch_size,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1,
                              chat_template=_template(name), image_token="<image>")
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    images = Qwen2VLImageProcessor(patch_size=spec.patch_size, merge_size=2, temporal_patch_size=2,
                                   min_pixels=side * side, max_pixels=side * side, image_mean=[0.5] * 3,
                                   image_std=[0.5] * 3, do_convert_rgb=True)
    videos = Qwen2VLVideoProcessor(patch_size=spec.patch_size, merge_size=2, temporal_patch_size=2,
                                   image_mean=[0.5] * 3, image_std=[0.5] * 3)  # unused; the processor needs one
    return Qwen2VLProcessor(image_processor=images, tokenizer=tokenizer, video_processor=videos,
                            chat_template=_template(name))


def _generation(model: Any, tokenizer: Any) -> Any:
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id, \
        tokenizer.pad_token_id
    gen.do_sample, gen.num_beams, gen.max_new_tokens = False, 1, MAX_NEW_TOKENS
    return model


def build_model(name: str, tokenizer: Any, *, seed: int = 0) -> Any:
    """A randomly initialized model of ``name`` (seeded; the caller's RNG is kept), greedy generation."""
    name = _canonical(name)
    s = SPECS[name]
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in IMAGE_TOKENS[name]}
    common = dict(vocab_size=len(tokenizer), hidden_size=s.text_hidden, num_hidden_layers=s.text_layers,
                  num_attention_heads=s.text_heads, num_key_value_heads=s.text_kv_heads,
                  intermediate_size=int(8 / 3 * s.text_hidden), max_position_embeddings=s.max_len,
                  pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    if name == "tiny-llava":
        from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

        vision = CLIPVisionConfig(hidden_size=s.vision_hidden, num_hidden_layers=s.vision_layers,
                                  num_attention_heads=s.vision_heads, intermediate_size=4 * s.vision_hidden,
                                  image_size=s.image_size, patch_size=s.patch_size, attention_dropout=0.0)
        config = LlavaConfig(vision_config=vision, text_config=LlamaConfig(**common), image_token_id=ids["<image>"],
                             vision_feature_layer=-2, vision_feature_select_strategy="default",
                             projector_hidden_act="gelu", tie_word_embeddings=True)
        cls = LlavaForConditionalGeneration
    else:
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

        half = s.text_hidden // s.text_heads // 2  # rotary frequencies per head, split t / h / w
        sections = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
        text = dict(common, rope_parameters={"rope_type": "default", "mrope_section": sections, "rope_theta": 10000.0})
        vision = dict(depth=s.vision_layers, embed_dim=s.vision_hidden, hidden_size=s.text_hidden,
                      num_heads=s.vision_heads, mlp_ratio=4, patch_size=s.patch_size, spatial_merge_size=2,
                      temporal_patch_size=2, in_channels=3)
        config = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                               video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                               vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=True)
        cls = Qwen2VLForConditionalGeneration
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    return _generation(model, tokenizer)


def new_parts(name: str, *, seed: int = 0) -> tuple[Any, Any]:
    """An untrained ``(model in eval mode, processor)`` of ``name``."""
    tokenizer = build_tokenizer(name)
    return build_model(name, tokenizer, seed=seed).eval(), build_processor(name, tokenizer)


def adapter(model: Any, processor: Any) -> Any:
    """The ``mx.hf`` adapter: ``ImageTextToText`` with the caption prompt, greedy, <= 40 new tokens."""
    from ..adapters.hf import ImageTextToText

    return ImageTextToText(model, processor, prompt=CAPTION_PROMPT, max_new_tokens=MAX_NEW_TOKENS)


def load_parts(path: str | os.PathLike, name: str = "tiny-llava") -> tuple[Any, Any]:
    """``(model in eval mode, processor)`` from a local checkpoint folder (no network)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    name = _canonical(name)
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no transformers checkpoint for {name!r} at {path} (expected config.json); "
                                f"train one with `mmexplain train {name}`")
    from .quiet import quiet_transformers

    try:
        with quiet_transformers():  # no "Loading weights" bars or warnings for a shipped model
            model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True, use_safetensors=True)
            processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise InputError(f"checkpoint folder {path} does not hold a loadable {name} model: {exc}") from exc
    if type(model).__name__ != CLASSES[name]:
        raise InputError(f"checkpoint folder {path} holds a {type(model).__name__}, not {name}'s {CLASSES[name]}")
    return model.eval(), processor


def load(path: str | os.PathLike, name: str = "tiny-llava") -> Any:
    """The model in ``path`` as its ``mx.hf`` adapter, in eval mode."""
    return adapter(*load_parts(path, name))


def write_checkpoint(model: Any, processor: Any, out: str | os.PathLike) -> Path:
    """``save_pretrained`` the model (safetensors) and the processor (tokenizer, image processor, template)."""
    out = Path(out)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
