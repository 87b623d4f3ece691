"""Train a tiny Hugging Face ``VisionEncoderDecoderModel`` captioner on ShapeWorld (CPU).

A ViT encoder and a GPT-2 decoder, both built from small configs (nothing
downloads), with a word-level tokenizer over the ShapeWorld vocabulary. The result
is an ordinary transformers checkpoint directory (``config.json``,
``model.safetensors``, ``generation_config.json``, tokenizer and image-processor
files, ``CARD.md``, ``metrics.json``) that loads with ``from_pretrained`` on the
local directory, so :mod:`mmexplain.hf` is exercised on a model whose words mean
something.

Example:
    python -m mmexplain.hf_train --out models/tiny-ved --minutes 35 --threads 2

    >>> from transformers import VisionEncoderDecoderModel           # doctest: +SKIP
    >>> model = VisionEncoderDecoderModel.from_pretrained("models/tiny-ved")  # doctest: +SKIP
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
    from . import world

    words = ["a", *world.RELATION.split(), *world.SIZES, *world.COLORS, *world.SHAPES]
    return [*SPECIALS, *words]


def build_tokenizer(vocab: list[str] | None = None) -> Any:
    """A word-level ``PreTrainedTokenizerFast`` (whitespace split) over ``vocab``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = vocab or vocabulary()
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with single spaces
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", bos_token="[BOS]",
                                   eos_token="[EOS]", unk_token="[UNK]")


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
    from transformers import PreTrainedTokenizerFast, ViTImageProcessor, VisionEncoderDecoderModel

    from .hf import VisionEncoderDecoderCaptioner

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"path: no transformers checkpoint at {path} (expected config.json); "
                                "train one with python -m mmexplain.hf_train")
    model = VisionEncoderDecoderModel.from_pretrained(path, local_files_only=True).eval()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
    processor = ViTImageProcessor.from_pretrained(path, local_files_only=True)
    return VisionEncoderDecoderCaptioner(model, image_processor=processor, tokenizer=tokenizer,
                                         max_new_tokens=model.config.decoder.n_positions - 1)


def make_split(split: str, n: int, *, size: int, cache: Path | None = None) -> tuple[Tensor, list[str]]:
    """Scenes of a split: uint8 images ``(n, 3, size, size)`` and captions (cached as safetensors + json)."""
    from . import world

    if cache is not None and cache.with_suffix(".json").exists():
        from safetensors.torch import load_file

        return load_file(str(cache.with_suffix(".safetensors")))["images"], json.loads(
            cache.with_suffix(".json").read_text())
    images = torch.empty(n, 3, size, size, dtype=torch.uint8)
    captions = []
    for i, seed in enumerate(world.split_seeds(split, n)):
        scene = world.generate(seed, size=size)
        images[i] = (scene.image * 255).round().to(torch.uint8)  # (3, H, W)
        captions.append(scene.caption)
    if cache is not None:
        from safetensors.torch import save_file

        cache.parent.mkdir(parents=True, exist_ok=True)
        save_file({"images": images}, str(cache.with_suffix(".safetensors")))
        cache.with_suffix(".json").write_text(json.dumps(captions))
    return images, captions


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
    from . import world

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


def train(cfg: TinyVEDConfig, out: Path, *, cache_dir: Path | None = None, log_every: int = 100) -> dict:
    """Train, evaluate and save the captioner to ``out`` (written atomically: a temp dir, then renamed)."""
    t0 = time.time()
    tokenizer = build_tokenizer()
    processor = build_image_processor(cfg)
    model = build_model(cfg, tokenizer)
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

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "train_config.json").write_text(json.dumps(asdict(cfg), indent=1) + "\n")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
        (tmp / "CARD.md").write_text(_card(cfg, metrics, sys.argv))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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
model = VisionEncoderDecoderModel.from_pretrained("models/tiny-ved")
tokenizer = PreTrainedTokenizerFast.from_pretrained("models/tiny-ved")
processor = ViTImageProcessor.from_pretrained("models/tiny-ved")
```

## Training

Command: `{' '.join(['python -m mmexplain.hf_train', *argv[1:]])}`

- data: ShapeWorld train seeds 0..{cfg.n_train - 1} (`mx.world.generate(seed, size={cfg.image_size})`),
  random vertical flips; AdamW lr {cfg.lr}, warmup {cfg.warmup}, cosine, batch {cfg.batch_size},
  {metrics['steps_run']} steps run (limits: {cfg.steps} steps, {cfg.minutes} minutes), seed {cfg.seed};
  final training-batch loss {metrics['final_train_loss']}
- time: {metrics['train_seconds']:.0f} s training + {metrics['data_seconds']:.0f} s data, CPU, {metrics['threads']} threads
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


def main(argv: list[str] | None = None) -> int:
    cfg = TinyVEDConfig()
    parser = argparse.ArgumentParser(prog="python -m mmexplain.hf_train", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models/tiny-ved"))
    parser.add_argument("--cache-dir", type=Path, default=None, help="cache generated scenes here")
    parser.add_argument("--threads", type=int, default=2)
    for name, value in asdict(cfg).items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = TinyVEDConfig(**{k: getattr(args, k) for k in asdict(cfg)})
    train(cfg, args.out, cache_dir=args.cache_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
