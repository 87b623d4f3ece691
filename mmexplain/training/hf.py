"""Train tiny Hugging Face models on ShapeWorld (CPU): a ViT + GPT-2 captioner, a ViLT VQA model.

A ViT encoder and a GPT-2 decoder, both built from small configs (nothing
downloads), with a word-level tokenizer over the ShapeWorld vocabulary. The result
is an ordinary transformers checkpoint directory (``config.json``,
``model.safetensors``, ``generation_config.json``, tokenizer and image-processor
files, ``CARD.md``, ``metrics.json``) that loads with ``from_pretrained`` on the
local directory, so :mod:`mmexplain.hf` is exercised on a model whose words mean
something.

``python -m mmexplain.training.hf vilt`` likewise trains a tiny ``ViltForQuestionAnswering`` on
ShapeWorld questions (``models/tiny-vilt``).

Example:
    python -m mmexplain.training.hf ved --out models/tiny-ved --minutes 22 --threads 1

    >>> from transformers import VisionEncoderDecoderModel           # doctest: +SKIP
    >>> model = VisionEncoderDecoderModel.from_pretrained("./models/tiny-ved")  # a local dir  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

SPECIALS = ("[PAD]", "[BOS]", "[EOS]", "[UNK]")  # ids 0..3


@dataclass
class TinyVEDConfig:
    """What the tiny captioner is and how it trains."""

    image_size: int = 64  # ShapeWorld scenes are drawn at this side
    patch_size: int = 8  # -> an 8 x 8 patch grid
    enc_hidden: int = 64  # ViT width
    enc_layers: int = 4
    enc_heads: int = 4
    dec_hidden: int = 64  # GPT-2 width
    dec_layers: int = 2
    dec_heads: int = 4
    max_len: int = 20  # BOS + <= 16 caption words + EOS, with room
    n_train: int = 20_000  # training scenes (train split seeds 0..n_train-1)
    n_val: int = 500  # held-out scenes for the card's metrics (val split)
    batch_size: int = 64
    steps: int = 4000
    minutes: float = 0.0  # if > 0: a wall-clock budget; the schedule then follows max(step, time) progress
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 200
    seed: int = 0


def vocabulary() -> list[str]:
    """Special tokens then every word a ShapeWorld caption can contain, in a fixed order."""
    from .. import world

    words = ["a", *world.RELATION.split(), *world.SIZES, *world.COLORS, *world.SHAPES]
    return [*SPECIALS, *words]


def build_tokenizer(vocab: list[str] | None = None, *, cls_sep: bool = False) -> Any:
    """A word-level ``PreTrainedTokenizerFast`` (whitespace split) over ``vocab``.

    Args:
        vocab: the tokens, specials first (default: the captioner's :func:`vocabulary`).
        cls_sep: wrap encoded text as ``[CLS] text [SEP]`` (BERT-style, for ViLT questions).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = vocab or vocabulary()
    index = {w: i for i, w in enumerate(vocab)}
    backend = Tokenizer(models.WordLevel(index, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with single spaces
    specials = {t: t for t in ("[PAD]", "[UNK]", "[BOS]", "[EOS]", "[CLS]", "[SEP]") if t in index}
    if cls_sep:
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", index["[CLS]"]), ("[SEP]", index["[SEP]"])])
    names = {"[PAD]": "pad_token", "[UNK]": "unk_token", "[BOS]": "bos_token", "[EOS]": "eos_token",
             "[CLS]": "cls_token", "[SEP]": "sep_token"}
    return PreTrainedTokenizerFast(tokenizer_object=backend, **{names[t]: t for t in specials})


def build_image_processor(cfg: TinyVEDConfig) -> Any:
    """ViT preprocessing: resize to ``image_size``, scale to [0, 1], normalize to [-1, 1]."""
    from transformers import ViTImageProcessor

    return ViTImageProcessor(size={"height": cfg.image_size, "width": cfg.image_size},
                             image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])


def build_model(cfg: TinyVEDConfig, tokenizer: Any) -> Any:
    """A randomly initialized ViT + GPT-2 ``VisionEncoderDecoderModel`` (seeded)."""
    from transformers import GPT2Config, ViTConfig, VisionEncoderDecoderConfig, VisionEncoderDecoderModel

    torch.manual_seed(cfg.seed)
    enc = ViTConfig(image_size=cfg.image_size, patch_size=cfg.patch_size, hidden_size=cfg.enc_hidden,
                    num_hidden_layers=cfg.enc_layers, num_attention_heads=cfg.enc_heads,
                    intermediate_size=4 * cfg.enc_hidden, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0)
    dec = GPT2Config(vocab_size=len(tokenizer), n_positions=cfg.max_len, n_embd=cfg.dec_hidden,
                     n_layer=cfg.dec_layers, n_head=cfg.dec_heads, resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    config.decoder_start_token_id = tokenizer.bos_token_id
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    model = VisionEncoderDecoderModel(config=config)
    gen = model.generation_config
    gen.decoder_start_token_id = tokenizer.bos_token_id
    gen.bos_token_id = tokenizer.bos_token_id
    gen.eos_token_id = tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id
    gen.do_sample = False
    gen.num_beams = 1
    return model


def load_tiny_ved(path: str | os.PathLike = "models/tiny-ved") -> Any:
    """The shipped captioner from a local directory, wrapped in its ``mx.hf`` caption adapter (eval mode).

    Example:
        >>> captioner = load_tiny_ved("models/tiny-ved")                      # doctest: +SKIP
        >>> mx.explain_caption(captioner, mx.world.generate(2_000_000, size=64).image).words  # doctest: +SKIP
    """
    from ..adapters.hf import VisionEncoderDecoderCaptioner

    model, tokenizer, processor = _load_local(path, "VisionEncoderDecoderModel", "ViTImageProcessor", kind="ved")
    return VisionEncoderDecoderCaptioner(model, image_processor=processor, tokenizer=tokenizer,
                                         max_new_tokens=model.config.decoder.n_positions - 1)


def _scene_split(split: str, n: int, *, size: int, cache: Path | None,
                 rows_of: Callable[[int, Any], list]) -> tuple[Tensor, list]:
    """uint8 images ``(n, 3, size, size)`` of a split and the rows ``rows_of(i, scene)`` gives for each.

    Cached as ``cache``.safetensors (images) + ``cache``.json (rows); the json, written
    last and atomically, marks a complete cache.
    """
    from .. import world

    index = cache.with_suffix(".json") if cache is not None else None
    if index is not None and index.exists():
        from safetensors.torch import load_file

        return load_file(str(cache.with_suffix(".safetensors")))["images"], json.loads(index.read_text())
    images = torch.empty(n, 3, size, size, dtype=torch.uint8)
    rows: list = []
    for i, seed in enumerate(world.split_seeds(split, n)):
        scene = world.generate(seed, size=size)
        images[i] = (scene.image * 255).round().to(torch.uint8)  # (3, H, W)
        rows.extend(rows_of(i, scene))
    if index is not None:
        from safetensors.torch import save_file

        cache.parent.mkdir(parents=True, exist_ok=True)
        save_file({"images": images}, str(cache.with_suffix(".safetensors")))
        partial = index.with_suffix(".json.partial")
        partial.write_text(json.dumps(rows))
        os.replace(partial, index)
    return images, rows


def make_split(split: str, n: int, *, size: int, cache: Path | None = None) -> tuple[Tensor, list[str]]:
    """Scenes of a split: uint8 images ``(n, 3, size, size)`` and captions (cached as safetensors + json)."""
    return _scene_split(split, n, size=size, cache=cache, rows_of=lambda i, scene: [scene.caption])


def _pixels(images: Tensor) -> Tensor:
    """uint8 ``(B, 3, H, W)`` -> normalized float, exactly as the saved ViTImageProcessor does."""
    return (images.float() / 255 - 0.5) / 0.5


def _encode(tokenizer: Any, captions: list[str], max_len: int) -> tuple[Tensor, Tensor]:
    """Teacher-forcing pairs: decoder inputs ``[BOS] w1..wn [PAD]..`` and labels ``w1..wn [EOS] -100..``."""
    ids = [tokenizer(c, add_special_tokens=False).input_ids for c in captions]
    inputs = torch.full((len(ids), max_len), tokenizer.pad_token_id)  # (B, T)
    labels = torch.full((len(ids), max_len), -100)  # (B, T)
    for i, seq in enumerate(ids):
        if len(seq) + 1 > max_len:
            raise ValueError(f"caption {captions[i]!r} is longer than max_len={max_len} tokens")
        inputs[i, : len(seq) + 1] = torch.tensor([tokenizer.bos_token_id, *seq])
        labels[i, : len(seq) + 1] = torch.tensor([*seq, tokenizer.eos_token_id])
    return inputs, labels


@torch.no_grad()
def evaluate(model: Any, tokenizer: Any, images: Tensor, captions: list[str], *, batch_size: int = 100) -> dict:
    """Greedy-caption exact match and teacher-forced word accuracy by word kind on held-out scenes."""
    from .. import world

    kinds = {w: "size" for w in world.SIZES} | {w: "color" for w in world.COLORS} | {
        w: "shape" for w in world.SHAPES}
    was_training = model.training
    model.eval()
    exact, hits, counts = 0, {}, {}
    try:
        for s in range(0, len(captions), batch_size):
            px = _pixels(images[s: s + batch_size])
            caps = captions[s: s + batch_size]
            out = model.generate(pixel_values=px, max_new_tokens=model.config.decoder.n_positions - 1)
            texts = tokenizer.batch_decode(out, skip_special_tokens=True)
            exact += sum(t.split() == c.split() for t, c in zip(texts, caps))
            dec_in, labels = _encode(tokenizer, caps, model.config.decoder.n_positions)
            logits = model(pixel_values=px, decoder_input_ids=dec_in).logits  # (B, T, V)
            pred = logits.argmax(-1)
            for b, cap in enumerate(caps):
                for j, word in enumerate(cap.split()):
                    kind = kinds.get(word, "other")
                    counts[kind] = counts.get(kind, 0) + 1
                    hits[kind] = hits.get(kind, 0) + int(pred[b, j] == labels[b, j])
    finally:
        model.train(was_training)
    acc = {k: hits[k] / counts[k] for k in counts}
    return {"exact_match": exact / len(captions), "word_accuracy": acc,
            "word_accuracy_all": sum(hits.values()) / sum(counts.values()), "n": len(captions)}


def train(cfg: TinyVEDConfig, out: Path, *, cache_dir: Path | None = None, log_every: int = 100,
          init: Path | None = None) -> dict:
    """Train, evaluate and save the captioner to ``out`` (written atomically: a temp dir, then renamed)."""
    t0 = time.time()
    tokenizer = build_tokenizer()
    processor = build_image_processor(cfg)
    model = build_model(cfg, tokenizer) if init is None else _from_checkpoint("VisionEncoderDecoderModel", init)
    cache = None if cache_dir is None else cache_dir / f"shapeworld_train_{cfg.n_train}_{cfg.image_size}"
    images, captions = make_split("train", cfg.n_train, size=cfg.image_size, cache=cache)
    vcache = None if cache_dir is None else cache_dir / f"shapeworld_val_{cfg.n_val}_{cfg.image_size}"
    val_images, val_captions = make_split("val", cfg.n_val, size=cfg.image_size, cache=vcache)
    dec_in_all, labels_all = _encode(tokenizer, captions, cfg.max_len)
    t_data = time.time() - t0
    print(f"data: {len(captions)} train / {len(val_captions)} val scenes in {t_data:.0f}s", flush=True)

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def progress(step: int) -> float:  # fraction of training done, by steps or by the time budget
        frac = step / cfg.steps
        if cfg.minutes > 0:
            frac = max(frac, (time.time() - t_train) / (60 * cfg.minutes))
        return frac

    def lr_at(step: int, frac: float) -> float:  # linear warmup, cosine decay to 5%
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))

    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    running = 0.0
    t_train = time.time()
    steps_run = 0
    for step in range(cfg.steps):
        frac = progress(step)
        if frac >= 1.0:
            break
        idx = torch.randint(len(captions), (cfg.batch_size,), generator=gen)
        px = _pixels(images[idx])  # (B, 3, H, W)
        if torch.rand((), generator=gen) < 0.5:  # no left/right word depends on a vertical flip
            px = px.flip(-2)
        logits = model(pixel_values=px, decoder_input_ids=dec_in_all[idx]).logits  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels_all[idx].flatten(), ignore_index=-100)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, frac)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running += loss.item()
        steps_run = step + 1
        if (step + 1) % log_every == 0:
            print(f"step {step + 1}/{cfg.steps} loss {running / log_every:.4f} "
                  f"({time.time() - t_train:.0f}s)", flush=True)
            running = 0.0
    train_s = time.time() - t_train
    model.eval()
    metrics = evaluate(model, tokenizer, val_images, val_captions)
    metrics |= {"steps_run": steps_run, "final_train_loss": round(loss.item(), 4),
                "train_seconds": round(train_s, 1), "data_seconds": round(t_data, 1),
                "threads": torch.get_num_threads()}
    print(json.dumps(metrics, indent=1), flush=True)

    _save(out, [model, tokenizer, processor], cfg, metrics, _card(cfg, metrics, sys.argv) + _earlier(init))
    return metrics


def _card(cfg: TinyVEDConfig, metrics: dict, argv: list[str]) -> str:
    acc = metrics["word_accuracy"]
    rows = "\n".join(f"| {k} | {v:.3f} |" for k, v in sorted(acc.items()))
    return f"""# tiny-ved — a tiny ViT + GPT-2 captioner trained on ShapeWorld

A Hugging Face `VisionEncoderDecoderModel` (ViT encoder {cfg.enc_layers}x{cfg.enc_hidden}, patch
{cfg.patch_size} on {cfg.image_size}x{cfg.image_size} images -> {cfg.image_size // cfg.patch_size}x{cfg.image_size // cfg.patch_size} grid;
GPT-2 decoder {cfg.dec_layers}x{cfg.dec_hidden} with cross-attention), built from configs and trained from
scratch on CPU; a word-level tokenizer over the ShapeWorld vocabulary. It exists so that
`mmexplain.hf` can be checked on a transformer whose words mean something; it is not a
general captioner.

Load (no network):

```python
from transformers import VisionEncoderDecoderModel, PreTrainedTokenizerFast, ViTImageProcessor
model = VisionEncoderDecoderModel.from_pretrained("./models/tiny-ved")  # a local directory
tokenizer = PreTrainedTokenizerFast.from_pretrained("./models/tiny-ved")
processor = ViTImageProcessor.from_pretrained("./models/tiny-ved")
```

## Training

Command: `{' '.join(['python -m mmexplain.training.hf', *argv[1:]])}`

- data: ShapeWorld train seeds 0..{cfg.n_train - 1} (`mx.world.generate(seed, size={cfg.image_size})`),
  random vertical flips; AdamW lr {cfg.lr}, warmup {cfg.warmup}, cosine, batch {cfg.batch_size},
  {metrics['steps_run']} steps run (limits: {cfg.steps} steps, {cfg.minutes} minutes), seed {cfg.seed};
  final training-batch loss {metrics['final_train_loss']}
- time: {metrics['train_seconds']:.0f} s training + {metrics['data_seconds']:.0f} s data, CPU, {metrics['threads']} torch thread(s)
- full config: `train_config.json`

## Held-out metrics (ShapeWorld val, first {metrics['n']} seeds)

- greedy caption exact match: {metrics['exact_match']:.3f}
- teacher-forced next-word accuracy, all words: {metrics['word_accuracy_all']:.3f}

| word kind | accuracy |
|---|---|
{rows}

Grounding (per-word pointing game and energy ratio of Grad-CAM maps):
`python benchmarks/hf_grounding.py`.
"""


# ----------------------------------------------------------------------------- tiny ViLT (VQA)

QUESTION_WORDS = ("what", "color", "shape", "size", "is", "the", "object", "objects", "how", "many", "are", "there", "?")


@dataclass
class TinyViltConfig:
    """What the tiny ViLT answer classifier is and how it trains."""

    image_size: int = 64  # ShapeWorld scenes are drawn at this side
    patch_size: int = 8  # -> an 8 x 8 patch grid inside the joint sequence
    hidden: int = 64
    layers: int = 4
    heads: int = 4
    max_question: int = 16  # [CLS] + <= 9 words + [SEP], with room
    n_train: int = 10_000  # training scenes (all their questions)
    n_val: int = 300
    batch_size: int = 32
    steps: int = 6000
    minutes: float = 0.0  # if > 0: a wall-clock budget, as for the captioner
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 200
    seed: int = 0


def vqa_vocabulary() -> list[str]:
    """Specials then every word a ShapeWorld question can contain, in a fixed order."""
    from .. import world

    words = ["a", *world.SIZES, *world.COLORS, *world.SHAPES, *(s + "s" for s in world.SHAPES), *QUESTION_WORDS]
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", *dict.fromkeys(words)]


def build_vilt(cfg: TinyViltConfig, tokenizer: Any) -> Any:
    """A randomly initialized tiny ``ViltForQuestionAnswering`` over ShapeWorld's answers (seeded)."""
    from transformers import ViltConfig, ViltForQuestionAnswering

    from .. import world

    answers = world.answers()
    torch.manual_seed(cfg.seed)
    config = ViltConfig(vocab_size=len(tokenizer), hidden_size=cfg.hidden, num_hidden_layers=cfg.layers,
                        num_attention_heads=cfg.heads, intermediate_size=4 * cfg.hidden, image_size=cfg.image_size,
                        patch_size=cfg.patch_size, max_position_embeddings=cfg.max_question,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_image_length=-1,
                        num_labels=len(answers), id2label=dict(enumerate(answers)),
                        label2id={a: i for i, a in enumerate(answers)}, pad_token_id=tokenizer.pad_token_id)
    return ViltForQuestionAnswering(config)


def make_vqa_split(split: str, n: int, *, size: int, cache: Path | None = None) -> tuple[Tensor, list[list]]:
    """uint8 images ``(n, 3, size, size)`` and ``[scene index, question, answer, kind, objects]`` rows."""
    return _scene_split(split, n, size=size, cache=cache, rows_of=lambda i, scene: [
        [i, qa.question, qa.answer, qa.kind, list(qa.objects)] for qa in scene.questions])


def _questions(tokenizer: Any, questions: list[str], max_len: int) -> dict[str, Tensor]:
    enc = tokenizer(questions, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "token_type_ids": torch.zeros_like(enc["input_ids"])}


@torch.no_grad()
def evaluate_vilt(model: Any, tokenizer: Any, images: Tensor, rows: list[list], *, batch_size: int = 200) -> dict:
    """Answer accuracy (all questions and per kind) on held-out scenes."""
    label2id = model.config.label2id
    was_training = model.training
    model.eval()
    hits: dict[str, list[int]] = {}
    try:
        for s in range(0, len(rows), batch_size):
            batch = rows[s: s + batch_size]
            px = _pixels(images[[r[0] for r in batch]])
            q = _questions(tokenizer, [r[1] for r in batch], model.config.max_position_embeddings)
            pred = model(pixel_values=px, **q).logits.argmax(-1)
            for r, p in zip(batch, pred.tolist()):
                ok = int(p == label2id[r[2]])
                hits.setdefault(r[3], []).append(ok)
                hits.setdefault("all", []).append(ok)
    finally:
        model.train(was_training)
    return {"accuracy": {k: sum(v) / len(v) for k, v in hits.items()}, "n_questions": len(rows)}


def train_vilt(cfg: TinyViltConfig, out: Path, *, cache_dir: Path | None = None, log_every: int = 100,
               init: Path | None = None) -> dict:
    """Train, evaluate and save the tiny ViLT to ``out`` (written atomically)."""
    from transformers import ViltImageProcessor

    t0 = time.time()
    tokenizer = build_tokenizer(vqa_vocabulary(), cls_sep=True)
    processor = ViltImageProcessor(size={"shortest_edge": cfg.image_size}, size_divisor=cfg.patch_size,
                                   image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    model = build_vilt(cfg, tokenizer) if init is None else _from_checkpoint("ViltForQuestionAnswering", init)
    cache = None if cache_dir is None else cache_dir / f"shapeworld_vqa_train_{cfg.n_train}_{cfg.image_size}"
    images, rows = make_vqa_split("train", cfg.n_train, size=cfg.image_size, cache=cache)
    vcache = None if cache_dir is None else cache_dir / f"shapeworld_vqa_val_{cfg.n_val}_{cfg.image_size}"
    val_images, val_rows = make_vqa_split("val", cfg.n_val, size=cfg.image_size, cache=vcache)
    q_all = _questions(tokenizer, [r[1] for r in rows], cfg.max_question)
    answer_all = torch.tensor([model.config.label2id[r[2]] for r in rows])
    scene_all = torch.tensor([r[0] for r in rows])
    t_data = time.time() - t0
    print(f"data: {len(rows)} questions on {cfg.n_train} train scenes, {len(val_rows)} val questions "
          f"in {t_data:.0f}s", flush=True)

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    t_train = time.time()
    running, steps_run = 0.0, 0
    n_labels = model.config.num_labels
    for step in range(cfg.steps):
        frac = step / cfg.steps
        if cfg.minutes > 0:
            frac = max(frac, (time.time() - t_train) / (60 * cfg.minutes))
        if frac >= 1.0:
            break
        lr = cfg.lr * (step + 1) / cfg.warmup if step < cfg.warmup else cfg.lr * (
            0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))
        idx = torch.randint(len(rows), (cfg.batch_size,), generator=gen)
        px = _pixels(images[scene_all[idx]])  # (B, 3, H, W)
        if torch.rand((), generator=gen) < 0.5:  # no question depends on up/down
            px = px.flip(-2)
        logits = model(pixel_values=px, **{k: v[idx] for k, v in q_all.items()}).logits  # (B, A)
        target = torch.nn.functional.one_hot(answer_all[idx], n_labels).float()  # (B, A)
        # ViLT's VQA objective: binary cross-entropy per answer, scaled by the number of answers
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target) * n_labels
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running += loss.item()
        steps_run = step + 1
        if steps_run % log_every == 0:
            print(f"step {steps_run}/{cfg.steps} loss {running / log_every:.4f} ({time.time() - t_train:.0f}s)",
                  flush=True)
            running = 0.0
    train_s = time.time() - t_train
    model.eval()
    metrics = evaluate_vilt(model, tokenizer, val_images, val_rows)
    metrics |= {"steps_run": steps_run, "final_train_loss": round(loss.item(), 4), "train_seconds": round(train_s, 1),
                "data_seconds": round(t_data, 1), "threads": torch.get_num_threads()}
    print(json.dumps(metrics, indent=1), flush=True)
    _save(out, [model, tokenizer, processor], cfg, metrics, _vilt_card(cfg, metrics, sys.argv) + _earlier(init))
    return metrics


def load_tiny_vilt(path: str | os.PathLike = "models/tiny-vilt") -> Any:
    """The shipped tiny ViLT from a local directory, wrapped in its ``mx.hf`` VQA adapter (eval mode)."""
    from ..adapters.hf import ViltVQA

    model, tokenizer, processor = _load_local(path, "ViltForQuestionAnswering", "ViltImageProcessor", kind="vilt")
    return ViltVQA(model, image_processor=processor, tokenizer=tokenizer)


def _load_local(path: str | os.PathLike, model_class: str, processor_class: str, *, kind: str) -> tuple[Any, Any, Any]:
    """(model in eval mode, tokenizer, image processor) from a local checkpoint directory, no network."""
    import transformers

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"path: no transformers checkpoint at {path} (expected config.json); "
                                f"train one with python -m mmexplain.training.hf {kind}")
    model = _from_checkpoint(model_class, path).eval()
    tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
    processor = getattr(transformers, processor_class).from_pretrained(path, local_files_only=True)
    return model, tokenizer, processor


def _from_checkpoint(class_name: str, path: Path) -> Any:
    """Continue training from a local checkpoint directory (same config; weights loaded, no network)."""
    import transformers

    return getattr(transformers, class_name).from_pretrained(Path(path), local_files_only=True)


def _earlier(init: Path | None) -> str:
    """The initial checkpoint's card, kept in the new card (training continued from it)."""
    if init is None:
        return ""
    card = (Path(init) / "CARD.md").read_text() if (Path(init) / "CARD.md").is_file() else "(no CARD.md)\n"
    body = "\n".join(line if not line.startswith("#") else "#" + line for line in card.splitlines())
    return ("\n## Earlier training: this run continued from the checkpoint below (its card)\n\n"
            "The weights above start from that checkpoint; the times add up.\n\n" + body + "\n")


def _save(out: Path, parts: list[Any], cfg: Any, metrics: dict, card: str) -> None:
    """save_pretrained every part + config/metrics/card into ``out``, atomically (temp dir, rename)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        for part in parts:
            if hasattr(part, "state_dict"):
                part.save_pretrained(tmp, safe_serialization=True)
            else:
                part.save_pretrained(tmp)
        (tmp / "train_config.json").write_text(json.dumps(asdict(cfg), indent=1) + "\n")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
        (tmp / "CARD.md").write_text(card)
        tmp.chmod(0o755)  # mkdtemp makes it private
        for f in tmp.iterdir():
            f.chmod(0o644)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _vilt_card(cfg: TinyViltConfig, metrics: dict, argv: list[str]) -> str:
    from .. import world

    n_answers = len(world.answers())
    acc = metrics["accuracy"]
    rows = "\n".join(f"| {k} | {v:.3f} |" for k, v in sorted(acc.items()))
    return f"""# tiny-vilt — a tiny ViLT answer classifier trained on ShapeWorld questions

A Hugging Face `ViltForQuestionAnswering` ({cfg.layers} layers x {cfg.hidden}, patch {cfg.patch_size} on
{cfg.image_size}x{cfg.image_size} images -> {cfg.image_size // cfg.patch_size}x{cfg.image_size // cfg.patch_size} patches inside the joint text+image sequence), built from a config
and trained from scratch on CPU over ShapeWorld's {n_answers} answers with ViLT's VQA objective
(binary cross-entropy per answer); a word-level tokenizer with `[CLS] question [SEP]`. It exists so that
`mx.hf.ViltVQA` (answer maps + question-token attributions) can be checked on a trained ViLT.

Load (no network): `mmexplain.training.hf.load_tiny_vilt("models/tiny-vilt")`, or
`ViltForQuestionAnswering.from_pretrained`, `PreTrainedTokenizerFast.from_pretrained`,
`ViltImageProcessor.from_pretrained` on the directory.

## Training

Command: `{' '.join(['python -m mmexplain.training.hf', *argv[1:]])}`

- data: all questions of ShapeWorld train seeds 0..{cfg.n_train - 1} at {cfg.image_size} px, random vertical flips;
  AdamW lr {cfg.lr}, warmup {cfg.warmup}, cosine, batch {cfg.batch_size}, {metrics['steps_run']} steps run
  (limits: {cfg.steps} steps, {cfg.minutes} minutes), seed {cfg.seed}; final training-batch loss {metrics['final_train_loss']}
- time: {metrics['train_seconds']:.0f} s training + {metrics['data_seconds']:.0f} s data, CPU, {metrics['threads']} thread(s)
- full config: `train_config.json`

## Held-out answer accuracy (ShapeWorld val, first {cfg.n_val} scenes, {metrics['n_questions']} questions)

| question kind | accuracy |
|---|---|
{rows}

Grounding of the answer maps: `python benchmarks/hf_grounding.py`.
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    arch = argv.pop(0) if argv and argv[0] in ("ved", "vilt") else "ved"
    cfg = TinyVEDConfig() if arch == "ved" else TinyViltConfig()
    parser = argparse.ArgumentParser(prog="python -m mmexplain.training.hf [ved|vilt]",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models/tiny-ved" if arch == "ved" else "models/tiny-vilt"))
    parser.add_argument("--cache-dir", type=Path, default=None, help="cache generated scenes here")
    parser.add_argument("--init", type=Path, default=None,
                        help="continue training from this local checkpoint (its card is kept in the new card)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (on a shared, oversubscribed CPU, 2 threads ran ~10x slower than 1)")
    for name, value in asdict(cfg).items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = type(cfg)(**{k: getattr(args, k) for k in asdict(cfg)})
    (train if arch == "ved" else train_vilt)(cfg, args.out, cache_dir=args.cache_dir, init=args.init)
    return 0


if __name__ == "__main__":
    sys.exit(main())
