"""ShapeWorld: generated scenes with captions, questions and pixel masks.

Grounding can only be measured on data whose ground truth is known, so mmexplain
generates its own: 1-3 non-overlapping coloured shapes on a noisy, randomly tinted
background. Every scene carries

* ``image`` — ``(3, H, W)`` float tensor in ``[0, 1]``;
* ``objects`` — one :class:`Obj` per shape with its attributes, pixel mask and box,
  ordered left to right (by the x of the object's centre);
* ``caption`` — ``"a small blue square left of a large red circle"``: the objects
  left to right, joined by the relation ``left of``; lower-case words separated by
  single spaces;
* ``alignment`` — ``{word_index: object_index}`` for every content word (size,
  colour, shape) of ``caption.split()``;
* ``questions`` — :class:`QA` items of five kinds (``color``, ``shape``, ``size``,
  ``count``, ``exist``), each unambiguous for its scene, with the answer and the
  objects it refers to.

Generation is deterministic from the seed on any machine (numpy's PCG64 bit
generator, drawn in a fixed order). Train/val/test are disjoint seed ranges
(:data:`SPLITS`). Masks are exact: there is no anti-aliasing, so a pixel belongs to
an object iff the object's mask says so; inside the mask every pixel lies within
``OBJECT_NOISE`` of ``obj.rgb``, outside all masks within ``BACKGROUND_NOISE`` of
``scene.background``.

Example:
    >>> import mmexplain as mx
    >>> scene = mx.world.generate(0)
    >>> scene.image.shape
    torch.Size([3, 96, 96])
    >>> words = scene.caption.split()
    >>> all(words[i] in (o.shape, o.color, o.size)
    ...     for i, o in ((i, scene.objects[j]) for i, j in scene.alignment.items()))
    True
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import InputError, InputTypeError

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.12, 0.12),
    "green": (0.10, 0.72, 0.18),
    "blue": (0.12, 0.28, 0.95),
    "yellow": (0.95, 0.88, 0.10),
    "purple": (0.62, 0.15, 0.82),
}
SIZES: tuple[str, ...] = ("small", "large")
# object radius as a fraction of the image side
RADIUS: dict[str, float] = {"small": 0.085, "large": 0.145}
NUMBERS: tuple[str, ...] = ("zero", "one", "two", "three")
QUESTION_KINDS: tuple[str, ...] = ("color", "shape", "size", "count", "exist")

BACKGROUND_NOISE = 0.06  # max |pixel - scene.background| outside the objects
OBJECT_NOISE = 0.04  # max |pixel - obj.rgb| inside an object
RELATION = "left of"

# disjoint seed ranges; a seed identifies a scene (given size and bias)
SPLITS: dict[str, range] = {
    "train": range(0, 1_000_000),
    "val": range(1_000_000, 1_100_000),
    "test": range(2_000_000, 2_100_000),
}


@dataclass(frozen=True, eq=False)
class Obj:
    """One drawn shape.

    Attributes:
        shape: one of :data:`SHAPES`.
        color: one of :data:`COLORS` (its name).
        size: ``"small"`` or ``"large"``.
        mask: ``(H, W)`` bool tensor, True exactly on the object's pixels.
        box: ``(x0, y0, x1, y1)`` pixel box of the mask, x1/y1 exclusive.
        center: ``(x, y)`` centre in pixels.
        rgb: the drawn colour (the named colour with a small per-object jitter).
    """

    shape: str
    color: str
    size: str
    mask: torch.Tensor
    box: tuple[int, int, int, int]
    center: tuple[float, float] = (0.0, 0.0)
    rgb: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def name(self) -> str:
        """``"small blue square"``."""
        return f"{self.size} {self.color} {self.shape}"


@dataclass(frozen=True)
class QA:
    """A question about a scene.

    Attributes:
        question: lower-case words separated by single spaces, ending in ``?``.
        answer: one word.
        objects: indices into ``scene.objects`` that the question refers to (the
            counted objects for ``count``; the matching objects, maybe none, for
            ``exist``).
        kind: one of :data:`QUESTION_KINDS`.
    """

    question: str
    answer: str
    objects: list[int] = field(default_factory=list)
    kind: str = "color"


@dataclass(eq=False)
class Scene:
    """A generated scene; see the module docstring."""

    seed: int
    image: torch.Tensor  # (3, H, W) float in [0, 1]
    objects: list[Obj]
    caption: str
    alignment: dict[int, int]
    questions: list[QA]
    background: tuple[float, float, float]
    bias: dict[str, str] | None = None

    @property
    def size(self) -> int:
        return int(self.image.shape[-1])


# ----------------------------------------------------------------------------- drawing


def _shape_mask(shape: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    """(size, size) bool mask of a shape centred at (cx, cy) with radius r (pixel centres at i + 0.5)."""
    c = np.arange(size, dtype=np.float64) + 0.5
    x = c[None, :] - cx  # (1, W)
    y = c[:, None] - cy  # (H, 1)
    if shape == "circle":
        return x**2 + y**2 <= r**2
    if shape == "square":
        h = 0.86 * r
        return (np.abs(x) <= h) & (np.abs(y) <= h)
    if shape == "diamond":
        return np.abs(x) + np.abs(y) <= 1.18 * r
    if shape == "triangle":  # apex up, base at cy + 0.8 r, half-width r at the base
        top = -1.05 * r
        base = 0.85 * r
        return (y >= top) & (y <= base) & (np.abs(x) <= (y - top) * (1.05 * r) / (base - top))
    raise InputError(f"unknown shape {shape!r}")  # internal: shapes come from SHAPES


def _check_bias(bias: Mapping[str, str] | None) -> dict[str, str] | None:
    if bias is None:
        return None
    if not isinstance(bias, Mapping):
        raise InputTypeError(f"bias must be a dict like {{'circle': 'red'}} or None, got {type(bias).__name__}")
    out = {}
    for shape, color in bias.items():
        if shape not in SHAPES:
            raise InputError(f"bias: unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")
        if color not in COLORS:
            raise InputError(f"bias: unknown colour {color!r} for {shape!r}; expected one of {', '.join(COLORS)}")
        out[shape] = color
    return out


def _check_seed(seed: object, name: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputTypeError(f"{name} must be a non-negative int, got {type(seed).__name__}")
    if seed < 0:
        raise InputError(f"{name} must be a non-negative int, got {seed}")
    return int(seed)


def generate(seed: int, *, size: int = 96, bias: Mapping[str, str] | None = None) -> Scene:
    """Generate the scene for ``seed`` (deterministic on any machine).

    Args:
        seed: non-negative int; see :data:`SPLITS` for the train/val/test ranges.
        size: image side in pixels (>= 32).
        bias: optional ``{shape: colour}``: every object of that shape is drawn in that
            colour (e.g. ``{"circle": "red"}``), for dataset-bias experiments.

    Returns:
        A :class:`Scene` with ``image`` of shape ``(3, size, size)``.
    """
    seed = _check_seed(seed)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise InputTypeError(f"size must be an int >= 32, got {type(size).__name__}")
    if size < 32:
        raise InputError(f"size must be an int >= 32, got {size}")
    size = int(size)
    bias_map = _check_bias(bias)
    rng = np.random.Generator(np.random.PCG64(seed))

    # background: grey level + tint, uniform per-pixel noise
    grey = rng.uniform(0.30, 0.60)
    background = tuple(float(np.clip(grey + t, 0.0, 1.0 - BACKGROUND_NOISE)) for t in rng.uniform(-0.10, 0.10, 3))
    image = np.empty((3, size, size), dtype=np.float64)
    image[:] = np.asarray(background)[:, None, None]
    image += rng.uniform(-BACKGROUND_NOISE, BACKGROUND_NOISE, (3, size, size))

    n_objects = int(rng.integers(1, 4))
    placed: list[tuple[str, str, str, float, float, float]] = []  # shape, color, size, cx, cy, r
    occupied = np.zeros((size, size), dtype=bool)
    for _ in range(n_objects):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        color = list(COLORS)[int(rng.integers(len(COLORS)))]
        if bias_map and shape in bias_map:
            color = bias_map[shape]
        size_word = SIZES[int(rng.integers(len(SIZES)))]
        r = RADIUS[size_word] * size * rng.uniform(0.95, 1.05)
        for _attempt in range(100):
            cx = rng.uniform(r + 1, size - r - 1)
            cy = rng.uniform(r + 1, size - r - 1)
            # no overlap (2 px gap) and distinct x so "left of" is clear
            if all(np.hypot(cx - px, cy - py) > (r + pr) * 1.25 + 2 and abs(cx - px) >= 0.08 * size
                   for _, _, _, px, py, pr in placed):
                placed.append((shape, color, size_word, cx, cy, r))
                break
        # an object that finds no room is dropped (deterministically)

    placed.sort(key=lambda p: p[3])
    objects: list[Obj] = []
    for shape, color, size_word, cx, cy, r in placed:
        mask = _shape_mask(shape, cx, cy, r, size) & ~occupied
        occupied |= mask
        rgb = np.clip(np.asarray(COLORS[color]) + rng.uniform(-0.05, 0.05, 3), OBJECT_NOISE, 1 - OBJECT_NOISE)
        noise = rng.uniform(-OBJECT_NOISE, OBJECT_NOISE, (3, size, size))
        image = np.where(mask[None], rgb[:, None, None] + noise, image)
        ys, xs = np.nonzero(mask)
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        objects.append(Obj(shape, color, size_word, torch.from_numpy(mask.copy()), box,
                           (float(cx), float(cy)), tuple(float(v) for v in rgb)))

    caption, alignment = _caption(objects)
    questions = _questions(objects, rng)
    img = torch.from_numpy(np.clip(image, 0.0, 1.0)).float()  # (3, H, W)
    return Scene(seed, img, objects, caption, alignment, questions, background, bias_map)


def _caption(objects: Sequence[Obj]) -> tuple[str, dict[int, int]]:
    words: list[str] = []
    alignment: dict[int, int] = {}
    for j, obj in enumerate(objects):
        if j:
            words.extend(RELATION.split())
        words.append("a")
        for w in (obj.size, obj.color, obj.shape):
            alignment[len(words)] = j
            words.append(w)
    return " ".join(words), alignment


def _questions(objects: Sequence[Obj], rng: np.random.Generator) -> list[QA]:
    qs: list[QA] = []
    idx = range(len(objects))
    for shape in SHAPES:  # colour of the only <shape>
        match = [i for i in idx if objects[i].shape == shape]
        if len(match) == 1:
            qs.append(QA(f"what color is the {shape} ?", objects[match[0]].color, match, "color"))
    for color in COLORS:  # shape of the only <colour> object
        match = [i for i in idx if objects[i].color == color]
        if len(match) == 1:
            qs.append(QA(f"what shape is the {color} object ?", objects[match[0]].shape, match, "shape"))
    for i in idx:  # size of the only <colour> <shape>
        o = objects[i]
        match = [k for k in idx if objects[k].color == o.color and objects[k].shape == o.shape]
        if len(match) == 1:
            qs.append(QA(f"what size is the {o.color} {o.shape} ?", o.size, match, "size"))
    # counts: one shape and one colour, present or not
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    match = [i for i in idx if objects[i].shape == shape]
    qs.append(QA(f"how many {shape}s are there ?", NUMBERS[len(match)], match, "count"))
    color = list(COLORS)[int(rng.integers(len(COLORS)))]
    match = [i for i in idx if objects[i].color == color]
    qs.append(QA(f"how many {color} objects are there ?", NUMBERS[len(match)], match, "count"))
    # existence: one present combination (if any object) and one absent one
    if objects:
        o = objects[int(rng.integers(len(objects)))]
        match = [k for k in idx if objects[k].color == o.color and objects[k].shape == o.shape]
        qs.append(QA(f"is there a {o.color} {o.shape} ?", "yes", match, "exist"))
    present = {(o.color, o.shape) for o in objects}
    absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
    c, s = absent[int(rng.integers(len(absent)))]
    qs.append(QA(f"is there a {c} {s} ?", "no", [], "exist"))
    return qs


def answers() -> list[str]:
    """Every possible answer word, in a fixed order."""
    return list(COLORS) + list(SHAPES) + list(SIZES) + list(NUMBERS) + ["yes", "no"]


def object_classes() -> list[str]:
    """``"<colour> <shape>"`` for every colour and shape, shape-major: the classifier's classes."""
    return [f"{c} {s}" for s in SHAPES for c in COLORS]


# ----------------------------------------------------------------------------- splits


def split_seeds(split: str, n: int, *, start: int = 0) -> range:
    """The first ``n`` seeds (after ``start``) of a split.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        n: how many seeds.
        start: offset into the split's range.

    Returns:
        A ``range`` of seeds inside ``SPLITS[split]``.
    """
    if split not in SPLITS:
        raise InputError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    n = _check_seed(n, "n")
    start = _check_seed(start, "start")
    seeds = SPLITS[split]
    if start + n > len(seeds):
        raise InputError(f"n + start = {start + n} exceeds the {len(seeds)} seeds of split {split!r}")
    return seeds[start:start + n]


# ----------------------------------------------------------------------------- concepts


def concept_names() -> list[str]:
    """The names :func:`concepts` returns: colours, shapes, sizes."""
    return list(COLORS) + list(SHAPES) + list(SIZES)


def concept_categories() -> dict[str, str]:
    """``{concept: category}`` for every name of :func:`concept_names`.

    Example:
        >>> concept_categories()["red"], concept_categories()["circle"], concept_categories()["small"]
        ('color', 'shape', 'size')
    """
    return {**dict.fromkeys(COLORS, "color"), **dict.fromkeys(SHAPES, "shape"), **dict.fromkeys(SIZES, "size")}


def concepts(scene: Scene) -> dict[str, torch.Tensor]:
    """Pixel masks of every concept (colour, shape, size), for Network Dissection.

    Returns:
        ``{concept: (H, W) bool mask}``, the union over the objects that have the
        concept; every name of :func:`concept_names` is present (all False if absent).
    """
    if not isinstance(scene, Scene):
        raise InputTypeError(f"scene must be a mmexplain.world.Scene, got {type(scene).__name__}")
    h, w = scene.image.shape[-2:]
    out = {name: torch.zeros(h, w, dtype=torch.bool) for name in concept_names()}
    for obj in scene.objects:
        for name in (obj.color, obj.shape, obj.size):
            out[name] |= obj.mask
    return out


class ConceptDataset:
    """``n`` validation scenes as ``(image (3, H, W), {concept: (H, W) bool})`` pairs.

    Scenes are generated on access (nothing is cached), so memory does not grow with
    ``n``, and the dataset can be read any number of times (``mx.dissect`` reads it
    twice). Every item lists every concept (all False when absent), so every category
    counts as annotated on every image.

    Args:
        n: how many scenes.
        seed: offset into the validation seeds (``SPLITS["val"]``).
        size: image side in pixels.

    Attributes:
        seeds: the scenes' seeds.
        size: the image side.
        categories: ``{concept: category}`` (:func:`concept_categories`), which
            ``mx.dissect`` reads.
    """

    def __init__(self, n: int, seed: int = 0, *, size: int = 96):
        self.seeds = split_seeds("val", n, start=seed)
        self.size = size
        self.categories = concept_categories()

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        scene = generate(self.seeds[i], size=self.size)
        return scene.image, concepts(scene)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        for i in range(len(self)):
            yield self[i]


def concept_dataset(n: int, seed: int = 0, *, size: int = 96) -> ConceptDataset:
    """``n`` validation scenes as ``(image (3, H, W), {concept: (H, W) bool mask})`` for ``mx.dissect``.

    Args:
        n: how many scenes.
        seed: offset into the validation seeds (``SPLITS["val"]``).
        size: image side in pixels.

    Returns:
        A re-iterable :class:`ConceptDataset` (with ``len`` and indexing) that carries
        its ``categories`` (colour, shape, size).

    Example:
        >>> data = concept_dataset(2, seed=5)
        >>> image, masks = data[0]
        >>> image.shape, masks["red"].shape, data.categories["red"]
        (torch.Size([3, 96, 96]), torch.Size([96, 96]), 'color')
    """
    return ConceptDataset(n, seed, size=size)


# ----------------------------------------------------------------------------- torch


class SceneDataset(torch.utils.data.Dataset):
    """Scenes of one split as a torch ``Dataset`` (generated on access).

    Example:
        >>> ds = SceneDataset("test", 8)
        >>> batch = collate([ds[i] for i in range(4)])
        >>> batch["images"].shape
        torch.Size([4, 3, 96, 96])
    """

    def __init__(self, split: str = "train", n: int = 1000, *, start: int = 0, size: int = 96,
                 bias: Mapping[str, str] | None = None):
        self.seeds = split_seeds(split, n, start=start)
        self.size = size
        self.bias = _check_bias(bias)

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, i: int) -> Scene:
        return generate(self.seeds[i], size=self.size, bias=self.bias)


def collate(scenes: Sequence[Scene]) -> dict[str, object]:
    """Batch scenes: ``{"images": (B, 3, H, W), "captions": [str], "questions": [[QA]], "scenes": [Scene]}``."""
    if not scenes:
        raise InputError("scenes must be a non-empty sequence of Scene")
    return {
        "images": torch.stack([s.image for s in scenes]),  # (B, 3, H, W)
        "captions": [s.caption for s in scenes],
        "questions": [s.questions for s in scenes],
        "scenes": list(scenes),
    }


def export_coco(seeds: Sequence[int], out_dir: str | os.PathLike, *, size: int = 96) -> dict[str, Path]:
    """ShapeWorld as a COCO-format dataset (images, instances with RLE masks, captions, questions).

    The layout is :mod:`mmexplain.world_coco`'s (``write_coco``).

    Args:
        seeds: scene seeds (``mx.world.split_seeds("test", n)``).
        out_dir: the folder (created; existing files of the same names are replaced).
        size: image side.

    Returns:
        ``{"images": folder, "instances": path, "captions": path, "questions": path}``.
    """
    from .world_coco import write_coco

    seeds = [_check_seed(s) for s in seeds]
    if not seeds:
        raise InputError("seeds: expected at least one scene seed, got none")
    return write_coco(((s, generate(s, size=size)) for s in seeds), out_dir, shapes=SHAPES)
