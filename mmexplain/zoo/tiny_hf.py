"""The tiny transformers models of the zoo: ``tiny-ved`` (ViT + GPT-2 captioner), ``tiny-vilt`` (ViLT VQA).

Both are built from small configs (nothing downloads) with a word-level tokenizer over
the ShapeWorld vocabulary, so their words mean something and ``mx.hf`` can be checked
on them. A checkpoint is an ordinary transformers folder (``config.json``,
``model.safetensors``, tokenizer and image-processor files) read with
``from_pretrained(..., local_files_only=True, use_safetensors=True)``; ``load`` wraps
it in its ``mx.hf`` adapter. transformers is imported inside the functions only.

Example:
    >>> import mmexplain as mx
    >>> captioner = mx.zoo.load("tiny-ved")            # VisionEncoderDecoderCaptioner  # doctest: +SKIP
    >>> mx.explain_caption(captioner, mx.world.generate(2_000_000, size=64).image).words  # doctest: +SKIP
    >>> vqa = mx.zoo.load("tiny-vilt")                 # ViltVQA                         # doctest: +SKIP
    >>> untrained = mx.zoo.new("tiny-ved", config={"enc_layers": 3})                     # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from .common import MAX_HF_SIZE
from .quiet import quiet_transformers
from ..errors import InputError, InputTypeError

SPECIALS = ("[PAD]", "[BOS]", "[EOS]", "[UNK]")  # caption tokenizer ids 0..3
QUESTION_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")  # question tokenizer ids 0..3
QUESTION_WORDS = ("what", "color", "shape", "size", "is", "the", "object", "objects", "how", "many", "are", "there", "?")

__all__ = ["TinyVEDConfig", "TinyViltConfig", "caption_vocabulary", "question_vocabulary", "build_tokenizer",
           "build_ved", "build_vilt", "image_processor", "new", "load", "adapter", "parts", "config_of",
           "write_checkpoint"]


@dataclass
class TinyVEDConfig:
    """The tiny captioner's architecture (``VisionEncoderDecoderModel``: ViT encoder, GPT-2 decoder)."""

    image_size: int = 64  # ShapeWorld scenes are drawn at this side
    patch_size: int = 8  # -> an 8 x 8 patch grid
    enc_hidden: int = 64  # ViT width
    enc_layers: int = 4  # ViT blocks
    enc_heads: int = 4
    dec_hidden: int = 64  # GPT-2 width
    dec_layers: int = 2  # GPT-2 blocks, each with cross-attention to the patch tokens
    dec_heads: int = 4
    max_len: int = 20  # decoder positions: BOS + <= 16 caption words + EOS, with room


@dataclass
class TinyViltConfig:
    """The tiny ViLT answer classifier's architecture (``ViltForQuestionAnswering``)."""

    image_size: int = 64  # ShapeWorld scenes are drawn at this side
    patch_size: int = 8  # -> an 8 x 8 patch grid inside the joint text+image sequence
    hidden: int = 64  # transformer width
    layers: int = 4  # transformer blocks
    heads: int = 4
    max_question: int = 16  # text positions: [CLS] + <= 9 words + [SEP], with room


# name -> (architecture config, transformers model class, image processor class)
_KINDS = {"tiny-ved": (TinyVEDConfig, "VisionEncoderDecoderModel", "ViTImageProcessor"),
          "tiny-vilt": (TinyViltConfig, "ViltForQuestionAnswering", "ViltImageProcessor")}


def _check(name: str) -> str:
    if name not in _KINDS:
        raise InputError(f"name must be one of {', '.join(_KINDS)}, got {name!r}")
    return name


def config_class(name: str) -> type:
    """``TinyVEDConfig`` for ``"tiny-ved"``, ``TinyViltConfig`` for ``"tiny-vilt"``."""
    return _KINDS[_check(name)][0]


def caption_vocabulary() -> list[str]:
    """Special tokens then every word a ShapeWorld caption can contain, in a fixed order (tiny-ved)."""
    from .. import world

    return [*SPECIALS, "a", *world.RELATION.split(), *world.SIZES, *world.COLORS, *world.SHAPES]


def question_vocabulary() -> list[str]:
    """Special tokens then every word a ShapeWorld question can contain, in a fixed order (tiny-vilt)."""
    from .. import world

    words = ["a", *world.SIZES, *world.COLORS, *world.SHAPES, *(s + "s" for s in world.SHAPES), *QUESTION_WORDS]
    return [*QUESTION_SPECIALS, *dict.fromkeys(words)]


def build_tokenizer(vocab: list[str] | None = None, *, cls_sep: bool = False) -> Any:
    """A word-level ``PreTrainedTokenizerFast`` (whitespace split) over ``vocab``.

    Args:
        vocab: the tokens, specials first (default: :func:`caption_vocabulary`).
        cls_sep: wrap encoded text as ``[CLS] text [SEP]`` (BERT-style, for ViLT questions).

    Example:
        >>> build_tokenizer()("a red circle", add_special_tokens=False).input_ids   # doctest: +SKIP
        [4, 9, 14]
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = vocab or caption_vocabulary()
    index = {w: i for i, w in enumerate(vocab)}
    backend = Tokenizer(models.WordLevel(index, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with single spaces
    specials = [t for t in ("[PAD]", "[UNK]", "[BOS]", "[EOS]", "[CLS]", "[SEP]") if t in index]
    if cls_sep:
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", index["[CLS]"]), ("[SEP]", index["[SEP]"])])
    names = {"[PAD]": "pad_token", "[UNK]": "unk_token", "[BOS]": "bos_token", "[EOS]": "eos_token",
             "[CLS]": "cls_token", "[SEP]": "sep_token"}
    return PreTrainedTokenizerFast(tokenizer_object=backend, **{names[t]: t for t in specials})


def image_processor(name: str, config: TinyVEDConfig | TinyViltConfig) -> Any:
    """The image processor: resize to ``image_size``, scale to [0, 1], normalize to [-1, 1]."""
    import transformers

    cls = getattr(transformers, _KINDS[_check(name)][2])
    half = [0.5, 0.5, 0.5]
    if name == "tiny-ved":
        return cls(size={"height": config.image_size, "width": config.image_size}, image_mean=half, image_std=half)
    return cls(size={"shortest_edge": config.image_size}, size_divisor=config.patch_size, image_mean=half,
               image_std=half)


def build_ved(config: TinyVEDConfig, tokenizer: Any, *, seed: int = 0) -> Any:
    """A randomly initialized ViT + GPT-2 ``VisionEncoderDecoderModel`` (seeded; the caller's RNG is kept)."""
    from transformers import GPT2Config, ViTConfig, VisionEncoderDecoderConfig, VisionEncoderDecoderModel

    c = config
    enc = ViTConfig(image_size=c.image_size, patch_size=c.patch_size, hidden_size=c.enc_hidden,
                    num_hidden_layers=c.enc_layers, num_attention_heads=c.enc_heads,
                    intermediate_size=4 * c.enc_hidden, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    dec = GPT2Config(vocab_size=len(tokenizer), n_positions=c.max_len, n_embd=c.dec_hidden, n_layer=c.dec_layers,
                     n_head=c.dec_heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id)
    full = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    full.decoder_start_token_id = full.bos_token_id = tokenizer.bos_token_id
    full.eos_token_id, full.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VisionEncoderDecoderModel(config=full)
    gen = model.generation_config
    gen.decoder_start_token_id = gen.bos_token_id = tokenizer.bos_token_id
    gen.eos_token_id, gen.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    gen.do_sample, gen.num_beams = False, 1
    return model


def build_vilt(config: TinyViltConfig, tokenizer: Any, *, seed: int = 0) -> Any:
    """A randomly initialized ``ViltForQuestionAnswering`` over ShapeWorld's answers (seeded)."""
    from transformers import ViltConfig, ViltForQuestionAnswering

    from .. import world

    answers = world.answers()
    c = config
    full = ViltConfig(vocab_size=len(tokenizer), hidden_size=c.hidden, num_hidden_layers=c.layers,
                      num_attention_heads=c.heads, intermediate_size=4 * c.hidden, image_size=c.image_size,
                      patch_size=c.patch_size, max_position_embeddings=c.max_question, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0, max_image_length=-1, num_labels=len(answers),
                      id2label=dict(enumerate(answers)), label2id={a: i for i, a in enumerate(answers)},
                      pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ViltForQuestionAnswering(full)


def make_config(name: str, config: Mapping[str, Any] | None = None) -> TinyVEDConfig | TinyViltConfig:
    """The default architecture of ``name`` with the fields in ``config`` changed (ValueError on unknown ones)."""
    import difflib

    cls = config_class(name)
    known = [f.name for f in fields(cls)]
    for key in config or {}:
        if key not in known:
            near = difflib.get_close_matches(key, known, n=1)
            raise InputError(f"config: {name} has no setting {key!r}"
                             + (f" (nearest: {near[0]})" if near else f"; it has {', '.join(known)}"))
    for key, value in (config or {}).items():
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_HF_SIZE:
            raise InputError(f"config: {name} setting {key!r} must be an integer in 1..{MAX_HF_SIZE}, got {value!r}")
    return cls(**dict(config or {}))


def new(name: str, *, config: Mapping[str, Any] | None = None, seed: int = 0) -> Any:
    """An untrained model of ``name`` (default architecture, ``config`` fields changed), as its adapter."""
    cfg = make_config(name, config)
    if name == "tiny-ved":
        tokenizer = build_tokenizer()
        model = build_ved(cfg, tokenizer, seed=seed)
    else:
        tokenizer = build_tokenizer(question_vocabulary(), cls_sep=True)
        model = build_vilt(cfg, tokenizer, seed=seed)
    return adapter(name, model.eval(), tokenizer, image_processor(name, cfg))


def adapter(name: str, model: Any, tokenizer: Any, processor: Any) -> Any:
    """The ``mx.hf`` adapter of a tiny model: ``VisionEncoderDecoderCaptioner`` or ``ViltVQA``."""
    from ..adapters.hf import ViltVQA, VisionEncoderDecoderCaptioner

    if _check(name) == "tiny-ved":
        return VisionEncoderDecoderCaptioner(model, image_processor=processor, tokenizer=tokenizer,
                                             max_new_tokens=model.config.decoder.n_positions - 1)
    return ViltVQA(model, image_processor=processor, tokenizer=tokenizer)


def model_name(obj: object) -> str:
    """``"tiny-ved"`` or ``"tiny-vilt"`` for an adapter of one of them (TypeError otherwise)."""
    from ..adapters.hf import ViltVQA, VisionEncoderDecoderCaptioner

    if isinstance(obj, VisionEncoderDecoderCaptioner):
        return "tiny-ved"
    if isinstance(obj, ViltVQA):
        return "tiny-vilt"
    raise InputTypeError(f"model must be a zoo model or a tiny-ved / tiny-vilt adapter, got {type(obj).__name__}")


def parts(obj: Any) -> tuple[Any, Any, Any]:
    """``(transformers model, tokenizer, image processor)`` of a tiny model's adapter."""
    from ..adapters.hf import ViltVQA

    model_name(obj)
    model = obj.hf_model if isinstance(obj, ViltVQA) else obj.model
    return model, obj.tokenizer, obj.image_processor


def config_of(obj: Any) -> TinyVEDConfig | TinyViltConfig:
    """The architecture of a tiny model's adapter, read from its transformers config.

    ``new(name, config=config_of(trained))`` is the same architecture with random weights.
    """
    model = parts(obj)[0]
    if model_name(obj) == "tiny-ved":
        enc, dec = model.config.encoder, model.config.decoder
        return TinyVEDConfig(image_size=enc.image_size, patch_size=enc.patch_size, enc_hidden=enc.hidden_size,
                             enc_layers=enc.num_hidden_layers, enc_heads=enc.num_attention_heads,
                             dec_hidden=dec.n_embd, dec_layers=dec.n_layer, dec_heads=dec.n_head,
                             max_len=dec.n_positions)
    c = model.config
    return TinyViltConfig(image_size=c.image_size, patch_size=c.patch_size, hidden=c.hidden_size,
                          layers=c.num_hidden_layers, heads=c.num_attention_heads,
                          max_question=c.max_position_embeddings)


def load(name: str, path: str | os.PathLike) -> Any:
    """A tiny model from its local checkpoint folder, as its ``mx.hf`` adapter, in eval mode (no network)."""
    import transformers

    _, model_class, processor_class = _KINDS[_check(name)]
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no transformers checkpoint for {name!r} at {path} (expected config.json); "
                                f"train one with `mmexplain train {name}`")
    try:
        with quiet_transformers():
            model = getattr(transformers, model_class).from_pretrained(path, local_files_only=True, use_safetensors=True)
            tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
            processor = getattr(transformers, processor_class).from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
        text = " ".join(str(exc).split())[:300]
        raise InputError(f"checkpoint folder {path} does not hold a loadable {name} model: {text}") from exc
    return adapter(name, model.eval(), tokenizer, processor)


def write_checkpoint(obj: Any, out: str | os.PathLike) -> Path:
    """``save_pretrained`` the model (safetensors), tokenizer and image processor of an adapter into ``out``.

    ``out`` is meant to be the temporary folder of :func:`mmexplain._io.atomic_folder`,
    which swaps it in whole; :func:`mmexplain.zoo.save` does that.
    """
    model, tokenizer, processor = parts(obj)
    out = Path(out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    processor.save_pretrained(out)
    return out
