"""The user's own COCO-format data as grounding items: caption words and class names matched to annotated objects.

Reads COCO instances (``instances_*.json``: images, categories, annotations with
polygon or RLE segmentations) and optionally COCO captions (``captions_*.json``) with
pycocotools. Every caption word (or two-word phrase, "teddy bear") that names a
category through the word map, and whose category is annotated in the image, becomes
a grounding target with the union mask of that category's instances in the image --
the same (map, mask) scoring as ShapeWorld's (:mod:`mmexplain.evaluation.grounding`).
Every annotated category also gives a class target (its name, mask and, when it has
one instance, its box).

The default word map covers COCO's 80 categories (their names, plurals and common
synonyms: "man", "woman", "people" -> person; "bike" -> bicycle; ...) plus every
category name of the file and its plural, so a ShapeWorld export
(:func:`mmexplain.world.export_coco`) matches too. A JSON file
``{"word": "category name", ...}`` overrides or extends it.

Example:
    >>> from mmexplain.evaluation.coco import coco_items
    >>> items = list(coco_items("instances.json", "images/", captions="captions.json"))  # doctest: +SKIP
    >>> items[0].caption, sorted(items[0].words)                                        # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError

__all__ = ["CocoItem", "coco_items", "coco_grounding", "default_word_map", "read_word_map", "match_words", "COCO_CATEGORIES"]

COCO_CATEGORIES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)

_SYNONYMS = {
    "person": "man men woman women people person persons boy boys girl girls child children kid kids guy guys "
              "lady ladies player players skier skiers surfer surfers skateboarder",
    "bicycle": "bike bikes bicycles", "car": "cars", "motorcycle": "motorcycles motorbike motorbikes",
    "airplane": "airplanes plane planes jet jets aircraft", "bus": "buses", "train": "trains",
    "truck": "trucks", "boat": "boats", "traffic light": "traffic light", "fire hydrant": "hydrant fire hydrant",
    "stop sign": "stop sign", "bench": "benches", "bird": "birds", "cat": "cats kitten", "dog": "dogs puppy",
    "horse": "horses", "sheep": "sheep", "cow": "cows cattle", "elephant": "elephants", "bear": "bears",
    "zebra": "zebras", "giraffe": "giraffes", "umbrella": "umbrellas", "suitcase": "suitcases luggage",
    "kite": "kites", "skateboard": "skateboards", "surfboard": "surfboards", "tennis racket": "racket",
    "sports ball": "ball", "bottle": "bottles", "cup": "cups mug", "bowl": "bowls", "banana": "bananas",
    "apple": "apples", "sandwich": "sandwiches", "orange": "oranges", "pizza": "pizzas", "donut": "donuts doughnut",
    "cake": "cakes", "chair": "chairs", "couch": "couches sofa", "bed": "beds", "dining table": "table tables",
    "toilet": "toilets", "tv": "television", "laptop": "laptops computer", "cell phone": "phone cellphone",
    "clock": "clocks", "vase": "vases", "book": "books", "teddy bear": "teddy bear", "hot dog": "hot dog",
    "refrigerator": "fridge", "sink": "sinks", "oven": "ovens",
}


@dataclass
class CocoItem:
    """One COCO image with its grounding targets.

    Attributes:
        image_id: the COCO image id.
        image: (3, H, W) in [0, 1] (resized when ``size`` was given).
        caption: one caption ("" without captions).
        words: word index of ``caption.split()`` -> (H, W) bool mask of the category it names.
        word_categories: word index -> category name.
        classes: category name -> (H, W) bool mask of its instances.
        boxes: category name -> its box (x0, y0, x1, y1) when it has one instance.
    """

    image_id: int
    image: Tensor
    caption: str
    words: dict[int, Tensor] = field(default_factory=dict)
    word_categories: dict[int, str] = field(default_factory=dict)
    classes: dict[str, Tensor] = field(default_factory=dict)
    boxes: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)


def default_word_map(categories: tuple[str, ...] | list[str] = ()) -> dict[str, str]:
    """Word (or two-word phrase) -> category name: COCO's 80 with synonyms, plus ``categories`` and their plurals."""
    out: dict[str, str] = {}
    for name in COCO_CATEGORIES:
        out[name] = name
    for name, words in _SYNONYMS.items():
        phrases = words.split()
        i = 0
        while i < len(phrases):  # two-word entries are written as the category's own two words
            if " " in name and phrases[i:i + 2] == name.split():
                out[name] = name
                i += 2
                continue
            out[phrases[i]] = name
            i += 1
    for name in categories:
        out.setdefault(name, name)
        out.setdefault(f"{name}s", name)
    return out


def read_word_map(path: str | os.PathLike) -> dict[str, str]:
    """A JSON file ``{"word": "category name"}``; ValueError naming the file when it is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"word map {str(path)!r}: not a readable JSON file ({exc})") from exc
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise InputError(f"word map {str(path)!r}: expected a JSON object of word -> category name")
    return {k.lower(): v for k, v in data.items()}


def match_words(caption: str, word_map: Mapping[str, str]) -> dict[int, str]:
    """Word index of ``caption.split()`` -> category, two-word phrases first (aligned to their second word)."""
    words = [w.strip(".,;:!?\"'").lower() for w in caption.split()]
    out: dict[int, str] = {}
    i = 0
    while i < len(words):
        pair = " ".join(words[i:i + 2])
        if i + 1 < len(words) and pair in word_map:
            out[i + 1] = word_map[pair]
            i += 2
            continue
        if words[i] in word_map:
            out[i] = word_map[words[i]]
        i += 1
    return out


def _resize_mask(mask: np.ndarray, size: int | None) -> Tensor:
    t = torch.from_numpy(mask.astype(bool))
    if size is None:
        return t
    return F.interpolate(t[None, None].float(), size=(size, size), mode="nearest")[0, 0] > 0.5


def coco_items(instances: str | os.PathLike, images: str | os.PathLike, *, captions: str | os.PathLike | None = None,
               word_map: Mapping[str, str] | str | os.PathLike | None = None, size: int | None = None,
               limit: int | None = None) -> Iterator[CocoItem]:
    """Grounding items from COCO-format files (see the module docstring); one per (image, caption).

    Args:
        instances: the instances JSON.
        images: the folder holding the images' ``file_name``.
        captions: the captions JSON (None: class targets only, ``caption`` "").
        word_map: a dict or a JSON file of word -> category name, overriding the default.
        size: resize images and masks (nearest) to ``size x size`` (a model's input side).
        limit: at most this many images.

    Yields:
        :class:`CocoItem`; images without annotations are skipped.
    """
    from pycocotools.coco import COCO

    from ..adapters.images import load_image, resize

    for name, path in (("instances", instances), ("captions", captions)):
        if path is not None and not Path(path).is_file():
            raise InputError(f"{name}: no such COCO file: {str(path)!r}")
    folder = Path(images)
    if not folder.is_dir():
        raise InputError(f"images: no such folder: {str(images)!r}")
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco = COCO(str(instances))
        caps = COCO(str(captions)) if captions is not None else None
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    mapping = default_word_map(list(names.values()))
    if word_map is not None:
        mapping |= word_map if isinstance(word_map, Mapping) else read_word_map(word_map)
    done = 0
    for image_id in sorted(coco.getImgIds()):
        if limit is not None and done >= limit:
            return
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=False))
        if not anns:
            continue
        info = coco.loadImgs(image_id)[0]
        path = folder / info["file_name"]
        if not path.is_file():
            raise InputError(f"images: {info['file_name']!r} (image {image_id}) is not in {str(folder)!r}")
        pixels = load_image(str(path))  # (3, H, W)
        h, w = pixels.shape[-2:]
        if size is not None:
            pixels = resize(pixels[None], size)[0]
        classes: dict[str, Tensor] = {}
        counts: dict[str, list[list[float]]] = {}
        for ann in anns:
            name = names[ann["category_id"]]
            mask = _resize_mask(coco.annToMask(ann), size)
            classes[name] = classes[name] | mask if name in classes else mask
            counts.setdefault(name, []).append(ann["bbox"])
        scale_x, scale_y = (size / w, size / h) if size is not None else (1.0, 1.0)
        boxes = {}
        for name, bbs in counts.items():
            if len(bbs) == 1:
                x, y, bw, bh = bbs[0]
                boxes[name] = (int(x * scale_x), int(y * scale_y), max(int(x * scale_x) + 1, round((x + bw) * scale_x)),
                               max(int(y * scale_y) + 1, round((y + bh) * scale_y)))
        texts = [c["caption"] for c in caps.loadAnns(caps.getAnnIds(imgIds=image_id))] if caps is not None else [""]
        done += 1
        for text in texts:
            matched = {i: c for i, c in match_words(text, mapping).items() if c in classes}
            yield CocoItem(image_id, pixels, text.strip(), {i: classes[c] for i, c in matched.items()}, matched,
                           classes, boxes)


def coco_grounding(captioner: object, items: Iterator[CocoItem] | list[CocoItem], *,
                   methods: tuple[str, ...] | list[str] = ("gradcam",), layer: object = None,
                   seed: int = 0) -> dict:
    """Score caption-word maps on COCO items exactly as the ShapeWorld grounding protocol does.

    Each item's caption is explained teacher-forced (``mx.explain_caption(captioner, image,
    caption, method=M)``); every matched word's map is scored against its category's mask
    (pointing, energy ratio, localisation when the category has one instance) beside the
    uniform, centre and random baselines.

    Returns:
        ``{"items", "words", "groups": Tally summary (group "all" and one per category)}``.
    """
    from .items import Item, adapter_of, explain_item, inapplicable
    from .scoring import Baselines, Tally

    captioner = adapter_of(captioner)
    reasons = inapplicable(captioner, methods)
    methods = [m for m in methods if m not in reasons]
    tally, baselines = Tally(), Baselines(seed)
    n_items = n_words = 0
    for item in items:
        if not item.words:
            continue
        n_items += 1
        whole = Item("caption", item.image, item.caption.split(), caption=item.caption)
        maps = {m: explain_item(captioner, whole, m, layer=layer).maps for m in methods}  # every word's (T, H, W)
        for i, mask in item.words.items():
            if not bool(mask.any()) or bool(mask.all()):
                continue
            n_words += 1
            category = item.word_categories[i]
            groups = ["all", category]
            h, w = mask.shape
            word_maps = {m: F.interpolate(v[i][None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
                         if v[i].shape != mask.shape else v[i] for m, v in maps.items()}
            tally.count(groups, two_objects=False)
            tally.add(groups, word_maps | baselines(h, w), mask, None, item.boxes.get(category))
    return {"items": n_items, "words": n_words, "methods": [*methods, "uniform", "center", "random"],
            "not_applicable": reasons, "groups": tally.summary()}
