"""Training pieces of the tiny transformers models: cached ShapeWorld splits, batches, losses.

* tiny-ved (ViT + GPT-2, :mod:`mmexplain.zoo.tiny_hf`): teacher-forced cross-entropy of
  every caption token and ``[EOS]``;
* tiny-vilt: ViLT's VQA objective, binary cross-entropy per answer scaled by the number
  of answers.

Both pre-generate ``n_train`` train-split scenes (as uint8, optionally cached in
``cache_dir`` as safetensors + JSON) and draw random batches from them with random
vertical flips (no caption word or question depends on up/down); the shared loop
(:func:`mmexplain.training.loop.fit`) does the optimisation.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import world, zoo
from ..zoo import tiny_hf
from .loop import LoopConfig, fit
from ..errors import InputError

__all__ = ["scene_split", "caption_split", "question_split", "pixels", "encode_captions", "encode_questions",
           "training_data", "select", "loss", "train"]


def scene_split(split: str, n: int, *, size: int, cache: Path | None,
                rows_of: Callable[[int, Any], list]) -> tuple[Tensor, list]:
    """uint8 images ``(n, 3, size, size)`` of a split's first ``n`` scenes and the rows ``rows_of(i, scene)`` gives.

    Cached as ``cache``.safetensors (images) + ``cache``.json (rows), each written
    atomically; the JSON, written last, marks a complete cache.
    """
    from safetensors.torch import load_file, save_file

    from .._io import atomic_write, write_json

    index = None if cache is None else Path(cache).with_suffix(".json")
    if index is not None and index.is_file():
        images = load_file(str(index.with_suffix(".safetensors")))["images"]
        return images, json.loads(index.read_text(encoding="utf-8"))
    images = torch.empty(n, 3, size, size, dtype=torch.uint8)  # (n, 3, H, W)
    rows: list = []
    for i, seed in enumerate(world.split_seeds(split, n)):
        scene = world.generate(seed, size=size)
        images[i] = (scene.image * 255).round().to(torch.uint8)  # (3, H, W)
        rows.extend(rows_of(i, scene))
    if index is not None:
        atomic_write(index.with_suffix(".safetensors"), lambda tmp: save_file({"images": images}, str(tmp)))
        write_json(index, rows, indent=0)
    return images, rows


def caption_split(split: str, n: int, *, size: int, cache_dir: Path | None = None) -> tuple[Tensor, list[str]]:
    """Images ``(n, 3, size, size)`` uint8 and the captions of a split's first ``n`` scenes."""
    cache = None if cache_dir is None else Path(cache_dir) / f"shapeworld_{split}_{n}_{size}"
    return scene_split(split, n, size=size, cache=cache, rows_of=lambda i, scene: [scene.caption])


def question_split(split: str, n: int, *, size: int, cache_dir: Path | None = None) -> tuple[Tensor, list[list]]:
    """Images ``(n, 3, size, size)`` uint8 and ``[scene index, question, answer, kind, objects]`` rows."""
    cache = None if cache_dir is None else Path(cache_dir) / f"shapeworld_vqa_{split}_{n}_{size}"
    return scene_split(split, n, size=size, cache=cache, rows_of=lambda i, scene: [
        [i, qa.question, qa.answer, qa.kind, list(qa.objects)] for qa in scene.questions])


def pixels(images: Tensor) -> Tensor:
    """uint8 ``(B, 3, H, W)`` -> float in [-1, 1], exactly as the saved image processors normalize."""
    return (images.float() / 255 - 0.5) / 0.5


def encode_captions(tokenizer: Any, captions: list[str], max_len: int) -> tuple[Tensor, Tensor]:
    """Decoder inputs ``[BOS] w1..wn [PAD]..`` and labels ``w1..wn [EOS] -100..``, both ``(B, max_len)``."""
    ids = [tokenizer(c, add_special_tokens=False).input_ids for c in captions]
    inputs = torch.full((len(ids), max_len), tokenizer.pad_token_id)  # (B, T)
    labels = torch.full((len(ids), max_len), -100)  # (B, T)
    for i, seq in enumerate(ids):
        if len(seq) + 1 > max_len:
            raise InputError(f"caption {captions[i]!r} is longer than max_len={max_len} tokens")
        inputs[i, : len(seq) + 1] = torch.tensor([tokenizer.bos_token_id, *seq])
        labels[i, : len(seq) + 1] = torch.tensor([*seq, tokenizer.eos_token_id])
    return inputs, labels


def encode_questions(tokenizer: Any, questions: list[str], max_len: int) -> dict[str, Tensor]:
    """``input_ids``, ``attention_mask``, ``token_type_ids``, each ``(B, max_len)``, of ``[CLS] q [SEP]``."""
    enc = tokenizer(questions, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "token_type_ids": torch.zeros_like(enc["input_ids"])}


def _flip(px: Tensor, generator: torch.Generator) -> Tensor:
    return px.flip(-2) if bool(torch.rand((), generator=generator) < 0.5) else px  # (B, 3, H, W)


def training_data(name: str, model_adapter: Any, n_train: int, *, cache_dir: Path | None = None) -> dict[str, Any]:
    """The encoded training split of a tiny model: uint8 ``images`` and, per example, the model's text and targets.

    tiny-ved: ``inputs`` / ``labels`` ``(n, T)`` (one caption per scene); tiny-vilt:
    ``scene (Q,)``, ``questions`` (a dict of ``(Q, L)``), ``answers (Q,)``.
    """
    model, tokenizer, _ = tiny_hf.parts(model_adapter)
    cfg = tiny_hf.config_of(model_adapter)
    if name == "tiny-ved":
        images, captions = caption_split("train", n_train, size=cfg.image_size, cache_dir=cache_dir)
        inputs, labels = encode_captions(tokenizer, captions, cfg.max_len)
        return {"images": images, "inputs": inputs, "labels": labels, "count": len(captions)}
    images, rows = question_split("train", n_train, size=cfg.image_size, cache_dir=cache_dir)
    return {"images": images, "scene": torch.tensor([r[0] for r in rows]),
            "questions": encode_questions(tokenizer, [r[1] for r in rows], cfg.max_question),
            "answers": torch.tensor([model.config.label2id[r[2]] for r in rows]), "count": len(rows)}


def select(name: str, data: dict[str, Any], idx: Tensor) -> dict[str, Any]:
    """The examples ``idx (B,)`` of :func:`training_data` as model inputs (``pixel_values`` in [-1, 1]) and targets."""
    if name == "tiny-ved":
        return {"pixel_values": pixels(data["images"][idx]), "decoder_input_ids": data["inputs"][idx],
                "labels": data["labels"][idx]}
    return {"pixel_values": pixels(data["images"][data["scene"][idx]]),
            **{k: v[idx] for k, v in data["questions"].items()}, "answers": data["answers"][idx]}


def loss(model: torch.nn.Module, batch: dict[str, Any]) -> Tensor:
    """The training loss of a tiny model on a :func:`select` batch (a scalar).

    tiny-ved: cross-entropy of the next token; tiny-vilt: binary cross-entropy per answer
    times the number of answers (ViLT's VQA objective).
    """
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "answers")}
    logits = model(**inputs).logits  # (B, T, V) or (B, A)
    if "labels" in batch:
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
    target = torch.nn.functional.one_hot(batch["answers"], logits.shape[-1]).float()  # (B, A)
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, target) * logits.shape[-1]


def train(name: str, config: LoopConfig, *, n_train: int, arch: dict[str, Any] | None = None,
          init: str | os.PathLike | None = None, cache_dir: Path | None = None,
          log: Callable[[str], None] | None = print) -> tuple[Any, dict[str, Any]]:
    """Train ``"tiny-ved"`` or ``"tiny-vilt"`` with the shared loop.

    Args:
        name: ``"tiny-ved"`` or ``"tiny-vilt"``.
        config: steps / minutes, batch size, schedule, seed (also seeds the initialisation).
        n_train: training scenes (train split seeds ``0 .. n_train - 1``).
        arch: architecture fields of a fresh model to change (``{"enc_layers": 3}``).
        init: continue from this checkpoint (a folder, or one holding ``NAME/``) instead of a fresh model.
        cache_dir: cache the generated scenes here.
        log: progress lines (``None``: quiet).

    Returns:
        ``(adapter in eval mode, info)``: the loop's info plus ``n_train``, ``data_seconds``,
        the ``architecture`` and ``init``.

    Raises:
        mmexplain.training.loop.TrainingDiverged: the loss or the weights became non-finite.
    """
    if name not in ("tiny-ved", "tiny-vilt"):
        raise InputError(f"name must be tiny-ved or tiny-vilt, got {name!r}")
    t0 = time.time()
    if init is not None:
        if arch:
            raise InputError("arch: a continued model keeps its architecture; give arch only for a fresh model")
        model_adapter = zoo.load(name, init)
    else:
        model_adapter = tiny_hf.new(name, config=arch, seed=config.seed)
    data = training_data(name, model_adapter, n_train, cache_dir=cache_dir)

    def next_batch(step: int, generator: torch.Generator) -> dict[str, Any]:
        b = select(name, data, torch.randint(data["count"], (config.batch_size,), generator=generator))
        b["pixel_values"] = _flip(b["pixel_values"], generator)  # no caption word or question depends on up/down
        return b

    data_seconds = time.time() - t0
    if log is not None:
        log(f"data: {n_train} train scenes, {data['count']} examples, in {data_seconds:.0f}s")
    info = fit(tiny_hf.parts(model_adapter)[0], next_batch, loss, config, log=log)
    info |= {"n_train": n_train, "data_seconds": round(data_seconds, 1),
             "architecture": vars(tiny_hf.config_of(model_adapter)).copy(), "init": None if init is None else str(init)}
    return model_adapter, info
