"""Training, held-out evaluation and the model card of the tiny ShapeWorld VLM (``tiny-vlm``).

The model (:mod:`mmexplain.zoo.tiny_vlm`, a ``LlavaForConditionalGeneration``) learns two
tasks from the same scenes: the caption (prompt ``"describe the image"``) and every
question of the scene (the question is the prompt). Each example is the processor's own
chat-templated prompt (``user: <image> PROMPT assistant:``, the image token expanded to
the 64 patch tokens the LM reads) followed by the target words and ``[EOS]``; the loss
is the teacher-forced cross-entropy of the target tokens only. Half of every batch are
captions, half questions. Scenes are pre-generated from the train split (uint8, cached
with :func:`mmexplain.training.tiny_hf.scene_split`) and flipped vertically at random (no
caption word or question depends on up/down); :func:`mmexplain.training.loop.fit` does
the optimisation.

Held-out metrics (val split): greedy caption exact match and teacher-forced word
accuracy by word kind; greedy answer accuracy per question kind; and the pointing game
(:func:`mmexplain.metrics.pointing_game`) of each content word's map of the reference
caption on the object it names, for Grad-CAM, the gradient variants with element-wise or
channel weights (HiResCAM, LayerCAM, Grad-CAM++, XGrad-CAM) and Relevancy over the
language model's self-attention (the word's row read over the image tokens), beside a
uniform map (whose expected pointing is the chance level).

Example:
    >>> from mmexplain.training.loop import LoopConfig
    >>> from mmexplain.training.tiny_vlm import train
    >>> model, processor, info = train(LoopConfig(steps=2, batch_size=4, log_every=0), n_train=8)   # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import world
from ..targets import SequenceLogProb
from ..zoo import tiny_vlm
from .loop import LoopConfig, fit
from .tiny_hf import pixels, scene_split
from ..errors import InputError

__all__ = ["RECIPE", "examples", "prompt_ids", "encode", "make_batch", "loss", "train", "map_methods", "evaluate",
           "card", "train_and_save"]

#: the recipe of ``mmexplain train tiny-vlm``: loop settings, training scenes, held-out scenes
RECIPE = {"loop": LoopConfig(steps=20_000, minutes=30.0, batch_size=32, lr=2e-3, weight_decay=0.01, warmup=300,
                             min_lr=0.05, clip=1.0), "n_train": 10_000, "n": 300}


def examples(split: str, n: int, *, size: int, cache_dir: Path | None = None) -> tuple[Tensor, list[list]]:
    """uint8 images ``(n, 3, size, size)`` of a split's first ``n`` scenes and ``[scene, prompt, target, kind]`` rows.

    Each scene gives its caption (prompt :data:`~mmexplain.zoo.tiny_vlm.CAPTION_PROMPT`, kind
    ``"caption"``) and every question (kind: the question's kind).
    """
    cache = None if cache_dir is None else Path(cache_dir) / f"shapeworld_vlm_{split}_{n}_{size}"
    return scene_split(split, n, size=size, cache=cache, rows_of=lambda i, scene: [
        [i, tiny_vlm.CAPTION_PROMPT, scene.caption, "caption"],
        *([i, qa.question, qa.answer, qa.kind] for qa in scene.questions)])


def prompt_ids(processor: Any, prompt: str, *, size: int) -> list[int]:
    """The processor's token ids of the chat-templated ``prompt`` with one image of ``size`` (image tokens expanded)."""
    from ..adapters.hf.vlm import chat_text

    image = torch.zeros(3, size, size)
    enc = processor(text=chat_text(processor, prompt), images=image, return_tensors="pt", do_rescale=False)
    return enc["input_ids"][0].tolist()


def encode(processor: Any, rows: list[list], *, size: int) -> list[tuple[list[int], list[int]]]:
    """Per row: (prompt ids, target ids + ``[EOS]``); prompts are encoded once each."""
    tokenizer = processor.tokenizer
    cache: dict[str, list[int]] = {}
    out = []
    for _, prompt, target, _ in rows:
        if prompt not in cache:
            cache[prompt] = prompt_ids(processor, prompt, size=size)
        out.append((cache[prompt], [*tokenizer(target, add_special_tokens=False).input_ids, tokenizer.eos_token_id]))
    return out


def make_batch(images: Tensor, rows: list[list], encoded: list, index: list[int], *, pad: int) -> dict[str, Tensor]:
    """Examples ``index`` as model inputs: right-padded ``input_ids`` / ``attention_mask`` / ``labels`` ``(B, L)``.

    ``labels`` hold the target tokens at their own positions (-100 on the prompt and the
    padding); ``pixel_values (B, 3, H, W)`` in [-1, 1] as the saved processor makes them.
    """
    seqs = [encoded[i][0] + encoded[i][1] for i in index]
    length = max(len(s) for s in seqs)
    ids = torch.full((len(index), length), pad)  # (B, L)
    labels = torch.full((len(index), length), -100)  # (B, L)
    mask = torch.zeros(len(index), length, dtype=torch.long)  # (B, L)
    for b, i in enumerate(index):
        prompt, target = encoded[i]
        ids[b, :len(prompt) + len(target)] = torch.tensor(prompt + target)
        labels[b, len(prompt):len(prompt) + len(target)] = torch.tensor(target)
        mask[b, :len(prompt) + len(target)] = 1
    scenes = torch.tensor([rows[i][0] for i in index])
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels(images[scenes]), "labels": labels}


def loss(model: torch.nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Teacher-forced cross-entropy of the target tokens (the token at t is scored by the logits at t - 1)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits  # (B, L, V)
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(),
                                             ignore_index=-100)


def train(config: LoopConfig, *, n_train: int, arch: dict[str, Any] | None = None, init: str | os.PathLike | None = None,
          cache_dir: Path | None = None, log: Callable[[str], None] | None = print) -> tuple[Any, Any, dict[str, Any]]:
    """Train the tiny VLM with the shared loop; returns ``(model in eval mode, processor, info)``.

    Args:
        config: steps / minutes, batch size (half captions, half questions), schedule, seed.
        n_train: training scenes (train split seeds ``0 .. n_train - 1``).
        arch: architecture fields of a fresh model to change (``{"text_layers": 2}``).
        init: continue from this checkpoint folder instead of a fresh model.
        cache_dir: cache the generated scenes here.
        log: progress lines (``None``: quiet).
    """
    t0 = time.time()
    if init is not None:
        if arch:
            raise InputError("arch: a continued model keeps its architecture; give arch only for a fresh model")
        model, processor = tiny_vlm.load_parts(init)
    else:
        model, processor = tiny_vlm.new_parts(config=arch, seed=config.seed)
    size = tiny_vlm.config_of(model).image_size
    images, rows = examples("train", n_train, size=size, cache_dir=cache_dir)
    encoded = encode(processor, rows, size=size)
    captions = [i for i, r in enumerate(rows) if r[3] == "caption"]
    questions = [i for i, r in enumerate(rows) if r[3] != "caption"]
    pad = processor.tokenizer.pad_token_id
    half = max(1, config.batch_size // 2)

    def next_batch(step: int, generator: torch.Generator) -> dict[str, Tensor]:
        pick_c = torch.randint(len(captions), (half,), generator=generator).tolist()
        pick_q = torch.randint(len(questions), (config.batch_size - half,), generator=generator).tolist()
        batch = make_batch(images, rows, encoded, [captions[i] for i in pick_c] + [questions[i] for i in pick_q],
                           pad=pad)
        if bool(torch.rand((), generator=generator) < 0.5):
            batch["pixel_values"] = batch["pixel_values"].flip(-2)  # (B, 3, H, W), up/down mirrored
        return batch

    data_seconds = time.time() - t0
    if log is not None:
        log(f"data: {n_train} train scenes, {len(captions)} captions, {len(questions)} questions, in {data_seconds:.0f}s")
    info = fit(model, next_batch, loss, config, log=log)
    info |= {"n_train": n_train, "data_seconds": round(data_seconds, 1),
             "architecture": vars(tiny_vlm.config_of(model)).copy(), "init": None if init is None else str(init)}
    return model, processor, info


def _kind(word: str) -> str:
    return "size" if word in world.SIZES else "color" if word in world.COLORS else "shape"


def map_methods() -> dict[str, type]:
    """The map methods the card measures: Grad-CAM and every token-capable gradient method that exists."""
    from .. import methods

    chosen = {"Grad-CAM": methods.GradCAM}
    for label, name in (("HiResCAM", "HiResCAM"), ("LayerCAM", "LayerCAM"), ("Grad-CAM++", "GradCAMPlusPlus"),
                        ("XGrad-CAM", "XGradCAM")):
        if hasattr(methods, name):
            chosen[label] = getattr(methods, name)
    return chosen


def evaluate(vlm: Any, *, n: int = 100, log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Held-out metrics of the tiny VLM on the first ``n`` val scenes (see the module docstring).

    Returns:
        ``caption_exact``, ``word_accuracy`` (teacher-forced, by word kind), ``answer_accuracy``
        and ``answer_accuracy_per_kind`` (greedy), and ``pointing`` per method (content words of
        the reference caption; the uniform map's expected pointing is the chance level).
    """
    from .. import metrics
    from ..methods import upsample_and_normalize
    from ..methods.relevancy import Relevancy

    size = tiny_vlm.config_of(vlm).image_size
    exact, right, total, q_right, q_total = 0, {}, {}, {}, {}
    hits = {name: [] for name in [*map_methods(), "Relevancy (LM self-attention)", "uniform map (chance)"]}
    start = time.time()
    for seed in world.split_seeds("val", n):  # one scene at a time: greedy text, then maps
        scene = world.generate(seed, size=size)
        pixels = vlm.load_image(scene.image)
        words = scene.caption.split()
        exact += vlm.generate(pixels) == words
        inputs, spans = vlm.teacher_forced(pixels, words)
        with torch.no_grad():
            logits = vlm.model(**inputs).logits[0]  # (n + 1, V)
        for i, (positions, tokens) in enumerate(spans):
            kind = _kind(words[i]) if i in scene.alignment else "other"
            total[kind] = total.get(kind, 0) + 1
            right[kind] = right.get(kind, 0) + int(logits[positions[0]].argmax() == tokens[0])
        for qa in scene.questions:
            q_total[qa.kind] = q_total.get(qa.kind, 0) + 1
            q_right[qa.kind] = q_right.get(qa.kind, 0) + int(vlm.answer(pixels, qa.question) == qa.answer)
        reshape = vlm.reshape_for(pixels)
        targets = [SequenceLogProb(t, positions=p) for p, t in spans]
        content = sorted(scene.alignment)
        for name, method in map_methods().items():
            res = method(vlm.model, vlm.default_layer, reshape=reshape)(inputs, targets, size=(size, size))
            for i in content:
                hits[name].append(float(metrics.pointing_game(res.maps[i, 0], scene.objects[scene.alignment[i]].mask)))
        relevancy = Relevancy(vlm.model, encoder=vlm.question_layer.rsplit(".", 1)[0], grid=reshape.grid,
                              image_tokens=vlm.image_positions(pixels).tolist())(inputs, targets, size=(size, size))
        hits["Relevancy (LM self-attention)"] += [
            float(metrics.pointing_game(relevancy.maps[i, 0], scene.objects[scene.alignment[i]].mask)) for i in content]
        flat = upsample_and_normalize(torch.ones(1, 1, 1), (size, size))[0]
        hits["uniform map (chance)"] += [metrics.pointing_expected(flat, scene.objects[scene.alignment[i]].mask)
                                         for i in content]
    if log is not None:
        log(f"evaluated {n} val scenes in {time.time() - start:.0f}s")
    return {"n_scenes": n, "caption_exact": exact / n,
            "word_accuracy": {k: right[k] / total[k] for k in sorted(total)},
            "answer_accuracy": sum(q_right.values()) / sum(q_total.values()), "n_questions": sum(q_total.values()),
            "answer_accuracy_per_kind": {k: q_right[k] / q_total[k] for k in world.QUESTION_KINDS if k in q_total},
            "pointing": {k: sum(v) / max(1, len(v)) for k, v in hits.items()},
            "pointing_words": len(hits["Grad-CAM"]), "layer": vlm.site}


def card(info: dict[str, Any], metrics: dict[str, Any], command: str) -> str:
    """``CARD.md`` of the tiny VLM: architecture, training, held-out metrics and grounding."""
    a = info["architecture"]
    rows = "\n".join(f"| {k} | {v:.3f} |" for k, v in metrics["word_accuracy"].items())
    kinds = "\n".join(f"| {k} | {v:.3f} |" for k, v in metrics["answer_accuracy_per_kind"].items())
    points = "\n".join(f"| {k} | {v:.3f} |" for k, v in metrics["pointing"].items())
    return f"""# tiny-vlm — a tiny LLaVA-style VLM trained on ShapeWorld

A Hugging Face `LlavaForConditionalGeneration` built from configs and trained from scratch on
CPU: CLIP vision tower {a['vision_layers']}x{a['vision_hidden']} (patch {a['patch_size']} on
{a['image_size']}x{a['image_size']} images -> {a['image_size'] // a['patch_size']}x{a['image_size'] // a['patch_size']} grid + CLS),
LLaVA's two-layer projector, Llama LM {a['text_layers']}x{a['text_hidden']}; `vision_feature_layer = {a['feature_layer']}`
(the LM reads vision block {a['vision_layers'] + a['feature_layer']} of 0..{a['vision_layers'] - 1}, CLS dropped), a
word-level tokenizer over the ShapeWorld vocabulary and a chat template (`user: <image> PROMPT assistant:`).
It captions (prompt `{tiny_vlm.CAPTION_PROMPT}`) and answers ShapeWorld questions (the question is the prompt).
It exists so that `mx.hf.ImageTextToText` can be checked on an LLM-based VLM whose words mean
something; it is not a general model.

Load (no network): `mx.zoo.load("tiny-vlm")`, or

```python
from transformers import LlavaForConditionalGeneration, LlavaProcessor
model = LlavaForConditionalGeneration.from_pretrained("./models/tiny-vlm")
processor = LlavaProcessor.from_pretrained("./models/tiny-vlm")
vlm = mx.hf.adapter(model, processor, prompt="{tiny_vlm.CAPTION_PROMPT}")
```

## Training

Command: `{command}`

- data: ShapeWorld train seeds 0..{info['n_train'] - 1} (`mx.world.generate(seed, size={a['image_size']})`),
  each scene's caption and all its questions; half of each batch captions, half questions; random vertical flips;
  AdamW lr {info['lr']}, warmup {info['warmup']}, cosine, batch {info['batch_size']}, {info['steps']} steps run
  (limits: {info['max_steps']} steps, {info['minutes']} minutes), seed {info['seed']}; final training loss {info['final_loss']}
- time: {info['seconds']:.0f} s training + {info['data_seconds']:.0f} s data, CPU, {info['threads']} torch thread(s)
- loss: teacher-forced cross-entropy of the target tokens and [EOS] after the chat-templated prompt

## Held-out metrics (ShapeWorld val, first {metrics['n_scenes']} seeds)

- greedy caption exact match: {metrics['caption_exact']:.3f}
- greedy answer accuracy: {metrics['answer_accuracy']:.3f} ({metrics['n_questions']} questions)

Teacher-forced next-word accuracy of the reference caption, by word kind:

| word kind | accuracy |
|---|---|
{rows}

Answer accuracy by question kind:

| question kind | accuracy |
|---|---|
{kinds}

## Grounding (pointing game)

Each content word (size, colour, shape) of the reference caption is explained (one teacher-forced
forward, one batched backward, layer `{metrics['layer']}` through the adapter's tap) and its map's
maximum must lie inside the mask of the object it names (`mmexplain.metrics.pointing_game`);
{metrics['pointing_words']} words. The uniform map's row is its expected hit rate (the chance level:
the object's share of the image).

| map | pointing |
|---|---|
{points}
"""


def train_and_save(out: str | os.PathLike, *, overrides: dict[str, Any] | None = None, n_train: int | None = None,
                   n: int | None = None, arch: dict[str, Any] | None = None, init: str | os.PathLike | None = None,
                   cache_dir: Path | None = None, command: str = "",
                   log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Train (the :data:`RECIPE` with ``overrides``), evaluate and write the checkpoint folder ``out`` whole."""
    from dataclasses import asdict, replace

    from .._io import atomic_folder, write_json, write_text

    config = replace(RECIPE["loop"], **{k: v for k, v in (overrides or {}).items() if v is not None})
    model, processor, info = train(config, n_train=n_train or RECIPE["n_train"], arch=arch, init=init,
                                   cache_dir=cache_dir, log=log)
    metrics = evaluate(tiny_vlm.adapter(model, processor), n=n or RECIPE["n"], log=log)
    with atomic_folder(out) as tmp:
        tiny_vlm.write_checkpoint(model, processor, tmp)
        write_json(tmp / "train_config.json", {**info["architecture"], **asdict(config), "n_train": info["n_train"]},
                   indent=1)
        write_json(tmp / "metrics.json", {**metrics, "training": info}, indent=1)
        write_text(tmp / "CARD.md", card(info, metrics, command))
    return metrics
