"""Training of the tiny ShapeWorld VLMs (``tiny-llava``, ``tiny-qwen2vl``): a three-stage recipe like the real ones.

1. **vision pretraining**: the vision tower and projector learn to read the caption's
   objects: a small head (learned queries attending over the projected image tokens)
   predicts how many objects have each size, colour and shape, and, for the caption's
   objects left to right, whether the object exists and its size, colour and shape. The
   targets come from the caption text only (no masks, no boxes); the head is thrown away
   afterwards.
2. **alignment + instruction tuning with a frozen tower**: the projector and the language
   model learn the captions (prompt ``"describe the image"``) and every question of a scene
   (the question is the prompt), as caption batches and question dialogues; tiny-llava also
   learns to list the objects shape first (:func:`shape_first`) in place of half of its captions.
3. **full tuning**: everything, at a lower learning rate.

tiny-llava's CLIP tower starts its learned positions as 2-D sine-cosine ones
(:func:`sincos_positions`, MAE's initialization): from the default ones (std 0.02, six times
quieter than the patch embeddings) its stage-1 loss after 550 steps was 3.78, against 3.09.

Each example is the processor's chat-templated prompt (image tokens expanded) followed by
the target tokens and ``</s>``; the loss is the teacher-forced cross-entropy of the target
tokens. Scenes (96 x 96) come from the train split, pre-generated as uint8 and flipped
vertically at random (no word depends on up/down). Every stage is
:func:`mmexplain.training.loop.fit` with a time budget; a checkpoint folder is written
after each stage and every ``save_every`` minutes, so a cut-off run leaves a usable model.

Example:
    >>> from mmexplain.training.tiny_vlms import Recipe, train
    >>> model, processor, info = train("tiny-qwen2vl", Recipe(minutes=(0.1, 0.1, 0.1)), out=None)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import world
from ..errors import InputError
from ..zoo import tiny_vlms
from .loop import LoopConfig, fit
from .tiny_hf import scene_split
from .tiny_vlm_batches import Batches, qwen_patches

__all__ = ["Recipe", "RECIPES", "recipe_for", "SlotHead", "slot_targets", "shape_first", "count_targets", "examples",
           "Batches", "qwen_patches", "sincos_positions", "train", "save", "train_and_save", "finish"]

SLOTS = 3  # at most three objects per scene
LIST_PROMPT = "list the objects by shape"


@dataclass(frozen=True)
class Recipe:
    """Budgets and schedules of the three stages (minutes each; steps are upper limits)."""

    minutes: tuple[float, float, float] = (17.0, 5.0, 33.0)
    lr: tuple[float, float, float] = (2e-3, 2e-3, 1e-3)
    batch_size: tuple[int, int, int] = (32, 32, 32)
    n_train: int = 16_000
    #: > 0: in stages 2-3 every third batch is question dialogues (a scene's image, then this many of its
    #: questions as turns: LLaVA's multi-turn data), the others captions, so no short question is padded to a
    #: caption's length; 0: every batch half captions, half single questions
    turns: int = 0
    #: share of the caption examples replaced by the scene's objects listed shape first (prompt
    #: :data:`LIST_PROMPT`, target "circle large blue square small red", by :func:`shape_first`): the word
    #: after a shape then depends on the object of that shape, as in captions the word after a colour depends
    #: on the object of that colour
    listing: float = 0.0
    seed: int = 0
    save_every: float = 5.0  # minutes between checkpoints

    def __post_init__(self) -> None:
        if isinstance(self.turns, bool) or not isinstance(self.turns, int) or self.turns < 0:
            raise InputError(f"turns: expected an int >= 0 (questions per dialogue; 0: none), got {self.turns!r}")
        if isinstance(self.listing, bool) or not isinstance(self.listing, (int, float)) or not 0 <= self.listing <= 1:
            raise InputError(f"listing: expected a share between 0 and 1, got {self.listing!r}")
        if self.listing and not self.turns:
            raise InputError("listing: replaces caption examples of the caption-only batches, which need turns > 0")


#: Each model's recipe: the same for both but tiny-llava's listing. Vision pretraining gets 24 of the 55
#: minutes (tiny-llava's CLIP tower, with its sine-cosine positions, keeps learning there; tiny-qwen2vl's ended
#: stage 1 at loss 0.61 against 0.96 after 17 minutes), and the language stages learn from question dialogues
#: (``turns=4``). Against 17 / 5 / 33 minutes and half-and-half batches: tiny-llava (then 12 px patches) captions
#: 0.81 exact against 0.68 (that run on one thread), tiny-qwen2vl 0.94 against 0.73 (shapes 0.977 against 0.851,
#: answers 0.907 against 0.835; both on two); in both the two changes were made together. With 16 px patches
#: tiny-llava captions 0.945. The budgets are wall-clock minutes: two threads give 1.4-1.5x the steps of one.
#: tiny-llava also learns the shape-first listing (``listing=0.5``): without it, it answered every question that
#: finds an object by its colour but those that find it by its shape at the image-only level (answers 0.860,
#: "what color is the <shape>" 39 of 60); with it, trained from scratch, 0.991 (colour questions 1.000; README).
_SHARED = Recipe(minutes=(24.0, 4.0, 27.0), turns=4)
RECIPES = {"tiny-llava": replace(_SHARED, listing=0.5), "tiny-qwen2vl": _SHARED}


def recipe_for(name: str) -> Recipe:
    """The recipe that made the shipped ``name`` (an alias such as ``tiny-vlm`` is resolved)."""
    return RECIPES[tiny_vlms.ALIASES.get(name, name)]


class SlotHead(nn.Module):
    """Caption objects from image tokens ``(B, N, D)``: per slot logits ``(B, 3, 2 + 2 + 5 + 4)`` and counts.

    Slot columns: exists (2), size (2), colour (5), shape (4), for the caption's objects left
    to right. Counts ``(B, 11, 4)``: how many objects (0..3) have each size, colour and shape
    (the caption's words counted: no order to find, so the tokens learn the attributes first).
    """

    def __init__(self, dim: int, tokens: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.position = nn.Parameter(torch.zeros(tokens, dim))
        self.queries = nn.Parameter(torch.randn(SLOTS, dim) * 0.02)
        self.attend = nn.MultiheadAttention(dim, 4, batch_first=True)
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU(),
                                 nn.Linear(dim, 2 + len(world.SIZES) + len(world.COLORS) + len(world.SHAPES)))
        values = len(world.SIZES) + len(world.COLORS) + len(world.SHAPES)
        self.count_queries = nn.Parameter(torch.randn(values, dim) * 0.02)
        self.count_attend = nn.MultiheadAttention(dim, 4, batch_first=True)
        self.count = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, SLOTS + 1))

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        keys = self.norm(tokens) + self.position  # (B, N, D)
        slots, _ = self.attend(self.queries.expand(len(tokens), -1, -1), keys, keys)  # (B, 3, D)
        pooled, _ = self.count_attend(self.count_queries.expand(len(tokens), -1, -1), keys, keys)  # (B, 11, D)
        return self.out(slots), self.count(pooled)  # (B, 3, 13), (B, 11, 4)


def caption_objects(caption: str) -> list[list[str]]:
    """The caption's objects left to right, each ``[size, colour, shape]``."""
    words = caption.split()
    return [words[i + 1:i + 4] for i, w in enumerate(words) if w == "a"]


def slot_targets(caption: str) -> list[list[int]]:
    """``[exists, size, colour, shape]`` per slot, read from the caption (``-100``: no object there)."""
    objects = caption_objects(caption)
    out = [[1, world.SIZES.index(s), list(world.COLORS).index(c), world.SHAPES.index(h)] for s, c, h in objects]
    return out + [[0, -100, -100, -100]] * (SLOTS - len(out))


def shape_first(caption: str) -> str:
    """The caption's objects as ``shape size colour``, in ``world.SHAPES`` order (left to right within a shape):
    "circle large blue square small red". Not in the caption's order, so the words after a shape can only be
    found from the shape."""
    objects = sorted(caption_objects(caption), key=lambda o: world.SHAPES.index(o[2]))
    return " ".join(f"{shape} {size} {colour}" for size, colour, shape in objects)


def count_targets(slots: Tensor) -> Tensor:
    """``(B, 3, 4)`` slot targets -> ``(B, 11)``: how many objects have each size, colour and shape."""
    hot = [nn.functional.one_hot(slots[..., k].clamp(min=0), n) * (slots[..., k:k + 1] >= 0)
           for k, n in ((1, len(world.SIZES)), (2, len(world.COLORS)), (3, len(world.SHAPES)))]
    return torch.cat(hot, dim=-1).sum(1)  # (B, 11)


def examples(n: int, *, size: int, cache_dir: Path | None = None) -> tuple[Tensor, list[list]]:
    """uint8 images ``(n, 3, size, size)`` of the first ``n`` train scenes; ``[scene, prompt, target, kind]`` rows."""
    cache = None if cache_dir is None else Path(cache_dir) / f"shapeworld_vlm_train_{n}_{size}"
    return scene_split("train", n, size=size, cache=cache, rows_of=lambda i, scene: [
        [i, tiny_vlms.CAPTION_PROMPT, scene.caption, "caption"],
        *([i, qa.question, qa.answer, qa.kind] for qa in scene.questions)])


def sincos_positions(model: Any, scale: float = 0.2) -> None:
    """Set a CLIP tower's learned positions ``(1 + g * g, D)`` to 2-D sine-cosine ones (MAE's initialization).

    Row 0 (CLS) is zero; ``scale`` makes them about as loud as the patch embeddings at
    initialization (std 0.13 on ShapeWorld), where the default (std 0.02) leaves the tower
    nearly blind to where a patch is.
    """
    weight = model.model.vision_tower.embeddings.position_embedding.weight  # (1 + g * g, D)
    grid, dim = int(round((weight.shape[0] - 1) ** 0.5)), weight.shape[1]
    quarter = dim // 4
    freq = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)  # (D/4,)
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32),
                            indexing="ij")
    angles = [c.flatten()[:, None] * freq for c in (ys, xs)]  # 2 x (g * g, D/4)
    table = torch.cat([f(a) for a in angles for f in (torch.sin, torch.cos)], dim=1)  # (g * g, D)
    with torch.no_grad():
        weight.zero_()
        weight[1:, :table.shape[1]] = scale * table


def image_tokens(model: Any, inputs: dict[str, Tensor]) -> Tensor:
    """The projected image tokens the LM reads, ``(B, N, D)``."""
    kw = {k: inputs[k] for k in ("pixel_values", "image_grid_thw") if k in inputs}
    return torch.stack(list(model.model.get_image_features(**kw).pooler_output))


def lm_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Teacher-forced cross-entropy of the target tokens (the token at t is scored by the logits at t - 1)."""
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits  # (B, L, V)
    return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(),
                                       ignore_index=-100)


class Pretrainer(nn.Module):
    """The VLM's vision path (tower + projector) and the slot head, trained together in stage 1."""

    def __init__(self, model: nn.Module, head: SlotHead) -> None:
        super().__init__()
        self.vlm, self.head = model, head

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        logits, counts = self.head(image_tokens(self.vlm, batch))  # (B, 3, 13), (B, 11, 4)
        target = batch["slots"]  # (B, 3, 4)
        cuts = [2, len(world.SIZES), len(world.COLORS), len(world.SHAPES)]
        parts = logits.split(cuts, dim=-1)
        loss = sum(nn.functional.cross_entropy(p.flatten(0, 1), target[..., k].flatten(), ignore_index=-100)
                   for k, p in enumerate(parts))
        return loss + nn.functional.cross_entropy(counts.flatten(0, 1), count_targets(target).flatten())


def _checkpointer(model: Any, processor: Any, out: Path | None, every: float, log: Callable | None) -> Callable:
    last = [time.time()]

    def maybe(force: bool = False) -> None:
        if out is None or not (force or time.time() - last[0] >= 60 * every):
            return
        save(model, processor, out)
        last[0] = time.time()
        if log is not None:
            log(f"checkpoint written to {out}")
    return maybe


def save(model: Any, processor: Any, out: str | os.PathLike, extra: dict[str, str] | None = None) -> Path:
    """Write the checkpoint folder ``out`` whole and atomically (``extra``: more files, name -> text)."""
    from .._io import atomic_folder, write_text

    with atomic_folder(out) as tmp:
        tiny_vlms.write_checkpoint(model, processor, tmp)
        for name, text in (extra or {}).items():
            write_text(tmp / name, text)
    return Path(out)


def train(name: str, recipe: Recipe | None = None, *, out: str | os.PathLike | None = None,
          init: str | os.PathLike | None = None, cache_dir: Path | None = None,
          log: Callable[[str], None] | None = print) -> tuple[Any, Any, dict[str, Any]]:
    """Train ``name`` with the three stages; returns ``(model in eval mode, processor, info)``.

    ``out``: a checkpoint folder rewritten after every stage and every ``recipe.save_every``
    minutes (``None``: none). ``init``: continue from this checkpoint folder (stages with
    0 minutes are skipped).
    """
    name = tiny_vlms.ALIASES.get(name, name)
    recipe = recipe or recipe_for(name)
    t0 = time.time()
    if init is None:
        model, processor = tiny_vlms.new_parts(name, seed=recipe.seed)
        if name == "tiny-llava":
            sincos_positions(model)
    else:
        model, processor = tiny_vlms.load_parts(init, name)
    size = tiny_vlms.SPECS[name].image_size
    images, rows = examples(recipe.n_train, size=size, cache_dir=cache_dir)
    if recipe.listing:
        rows = rows + [[r[0], LIST_PROMPT, shape_first(r[2]), "listing"] for r in rows if r[3] == "caption"]
    data = Batches(name, processor, images, rows)
    captions = [i for i, r in enumerate(rows) if r[3] == "caption"]
    listings = [i for i, r in enumerate(rows) if r[3] == "listing"]
    questions = [i for i, r in enumerate(rows) if r[3] not in ("caption", "listing")]
    slots = torch.tensor([slot_targets(rows[i][2]) for i in captions])  # (n, 3, 4), captions in scene order
    data_seconds = time.time() - t0
    if log is not None:
        log(f"data: {recipe.n_train} scenes, {len(captions)} captions, {len(questions)} questions, "
            f"{data_seconds:.0f}s")
    out = None if out is None else Path(out)
    checkpoint = _checkpointer(model, processor, out, recipe.save_every, log)
    stages = []

    # stage 1: vision tower + projector + slot head on the caption's objects
    for p in model.parameters():
        p.requires_grad_(False)
    vision = [model.model.vision_tower, model.model.multi_modal_projector] if name == "tiny-llava" else \
        [model.model.visual]
    for module in vision:
        for p in module.parameters():
            p.requires_grad_(True)
    probe = data.pixel_inputs(images[:1])
    tokens = image_tokens(model, probe).shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        head = SlotHead(tiny_vlms.SPECS[name].text_hidden, tokens)
    pre = Pretrainer(model, head)

    def slot_batch(step: int, gen: torch.Generator) -> dict[str, Tensor]:
        checkpoint()
        pick = torch.randint(len(captions), (recipe.batch_size[0],), generator=gen)
        flip = bool(torch.rand((), generator=gen) < 0.5)
        scene_images = images[pick]
        return {**data.pixel_inputs(scene_images.flip(-2) if flip else scene_images), "slots": slots[pick]}

    def config(k: int) -> LoopConfig:
        return LoopConfig(steps=100_000, minutes=recipe.minutes[k], batch_size=recipe.batch_size[k], lr=recipe.lr[k],
                          weight_decay=0.01, warmup=100 if k < 2 else 20, min_lr=0.05, clip=1.0,
                          seed=recipe.seed + k, log_every=50)

    if recipe.minutes[0] > 0:
        stages.append({**fit(pre, slot_batch, lambda m, b: m.loss(b), config(0), log=log), "stage": 1})
        checkpoint(force=True)

    asked: dict[int, list[int]] = {}
    for i in questions:
        asked.setdefault(rows[i][0], []).append(i)

    def lm_batch(step: int, gen: torch.Generator) -> dict[str, Tensor]:
        checkpoint()
        if recipe.turns and step % 3 == 2:  # question dialogues: `turns` of a scene's questions, in random order
            dialogues = []
            for c in torch.randint(len(captions), (data_batch,), generator=gen).tolist():
                pool = asked.get(rows[captions[c]][0], [])
                dialogues.append([pool[j] for j in torch.randperm(len(pool), generator=gen)[:recipe.turns].tolist()]
                                 or [captions[c]])
            return data.text(dialogues, flip=bool(torch.rand((), generator=gen) < 0.5))
        if recipe.turns:  # captions only (some replaced by listings)
            pick = torch.randint(len(captions), (data_batch,), generator=gen).tolist()
            chosen = [captions[i] for i in pick]
            if recipe.listing:  # listings[i] is the listing of captions[i]'s scene
                listed = (torch.rand(data_batch, generator=gen) < recipe.listing).tolist()
                chosen = [listings[i] if lst else captions[i] for i, lst in zip(pick, listed)]
            return data.text(chosen, flip=bool(torch.rand((), generator=gen) < 0.5))
        half = max(1, data_batch // 2)
        pick_c = torch.randint(len(captions), (half,), generator=gen).tolist()
        pick_q = torch.randint(len(questions), (data_batch - half,), generator=gen).tolist()
        flip = bool(torch.rand((), generator=gen) < 0.5)
        return data.text([captions[i] for i in pick_c] + [questions[i] for i in pick_q], flip=flip)

    for k in (1, 2):  # stage 2: everything but the tower; stage 3: everything
        if recipe.minutes[k] <= 0:
            continue
        for p in model.parameters():
            p.requires_grad_(True)
        if k == 1:
            tower = model.model.vision_tower if name == "tiny-llava" else model.model.visual.blocks
            for p in tower.parameters():
                p.requires_grad_(False)
            if name == "tiny-qwen2vl":
                for p in model.model.visual.patch_embed.parameters():
                    p.requires_grad_(False)
        data_batch = recipe.batch_size[k]
        stages.append({**fit(model, lm_batch, lm_loss, config(k), log=log), "stage": k + 1})
        checkpoint(force=True)
    for p in model.parameters():
        p.requires_grad_(True)
    info = {"name": name, "recipe": asdict(recipe), "stages": stages, "init": None if init is None else str(init),
            "data_seconds": round(data_seconds, 1),
            "seconds": round(time.time() - t0, 1), "threads": torch.get_num_threads(), "cores": os.cpu_count(),
            "parameters": sum(p.numel() for p in model.parameters()), "architecture": asdict(tiny_vlms.SPECS[name])}
    return model.eval(), processor, info


def train_and_save(name: str, out: str | os.PathLike, *, recipe: Recipe | None = None, n: int = 200,
                   cache_dir: Path | None = None, command: str = "",
                   log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Train ``name`` (checkpoints in ``out`` as it goes), evaluate it and write ``out`` with its card and metrics."""
    import json

    from .. import world as sw
    from ..zoo.shapeworld_bpe import split_words
    from .tiny_vlms_eval import card, evaluate

    name = tiny_vlms.ALIASES.get(name, name)
    model, processor, info = train(name, recipe, out=out, cache_dir=cache_dir, log=log)
    info["vocab_size"] = len(processor.tokenizer)
    metrics = evaluate(tiny_vlms.adapter(model, processor), n=n, log=log)
    save(model, processor, out)
    size = (Path(out) / "model.safetensors").stat().st_size
    words = [*sw.SIZES, *sw.COLORS, *sw.SHAPES, *sw.RELATION.split()]
    text = card(name, info, metrics, command=command or f"mmexplain train {name}",
                eval_command=f"mmexplain train {name} --evaluate-only --scenes {n}",
                split=split_words(processor.tokenizer, words), size_bytes=size)
    save(model, processor, out, {"CARD.md": text, "metrics.json": json.dumps({**metrics, "training": info}, indent=1)})
    return metrics


def finish(name: str, folder: str | os.PathLike, *, n: int = 200, command: str = "",
           log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Evaluate the checkpoint ``folder`` (trained by :func:`main`, its ``train_info.json`` beside it) and write
    its ``CARD.md`` and ``metrics.json``; a continued run's stages follow those of the run it continued."""
    import json

    from .._io import write_text
    from .. import world as sw
    from ..zoo.shapeworld_bpe import split_words
    from .tiny_vlms_eval import card, evaluate

    name = tiny_vlms.ALIASES.get(name, name)
    folder = Path(folder)
    info = json.loads((folder / "train_info.json").read_text(encoding="utf-8"))
    earlier = info.get("init") and Path(info["init"]) / "train_info.json"
    if earlier and earlier.is_file():
        before = json.loads(earlier.read_text(encoding="utf-8"))
        info = {**info, "stages": before["stages"] + info["stages"], "seconds": before["seconds"] + info["seconds"],
                "continued": info["recipe"]}
        info["recipe"] = before["recipe"]
    model, processor = tiny_vlms.load_parts(folder, name)
    info["vocab_size"] = len(processor.tokenizer)
    metrics = evaluate(tiny_vlms.adapter(model, processor), n=n, log=log)
    words = [*sw.SIZES, *sw.COLORS, *sw.SHAPES, *sw.RELATION.split()]
    text = card(name, info, metrics, command=command or f"mmexplain train {name}",
                eval_command=f"mmexplain train {name} --evaluate-only --scenes {n}",
                split=split_words(processor.tokenizer, words), size_bytes=(folder / "model.safetensors").stat().st_size)
    write_text(folder / "metrics.json", json.dumps({**metrics, "training": info}, indent=1))
    write_text(folder / "CARD.md", text)
    return metrics


def main(argv: list[str] | None = None) -> None:
    """``python -m mmexplain.training.tiny_vlms NAME OUT [MINUTES1 MINUTES2 MINUTES3 [INIT]]``: train, checkpointing."""
    import json
    import sys

    args = sys.argv[1:] if argv is None else argv
    name, out = args[0], Path(args[1])
    recipe = recipe_for(name)
    if len(args) >= 5:
        recipe = replace(recipe, minutes=tuple(float(m) for m in args[2:5]))
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    init = args[5] if len(args) > 5 else None
    model, processor, info = train(name, recipe, out=out, init=init, cache_dir=Path("/tmp/swcache"),
                                   log=lambda line: print(time.strftime("%H:%M:%S"), line, flush=True))
    save(model, processor, out, {"train_info.json": json.dumps(info, indent=1)})
    print("done", json.dumps(info)[:2000], flush=True)


if __name__ == "__main__":
    main()
