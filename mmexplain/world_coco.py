"""ShapeWorld as a COCO-format dataset: images, instances with RLE masks, captions, questions.

``write_coco(scenes, out_dir, shapes=...)`` writes (``mx.world.export_coco(seeds, out_dir)``
generates the scenes and calls it; this module reads the scenes' attributes only, so it
sits below ``world``)

* ``images/<seed>.png`` -- the scenes (8-bit RGB);
* ``instances.json`` -- COCO instances: one category per shape (``circle``, ``square``,
  ...; supercategory ``shape``), one annotation per object with its RLE mask
  (``pycocotools.mask.encode``, counts as text), ``bbox`` ``[x, y, w, h]``, ``area`` and
  the object's ``color`` / ``size`` attributes;
* ``captions.json`` -- COCO captions: one ground-truth caption per image;
* ``questions.json`` -- VQA-style ``{"questions": [{"image_id", "question_id",
  "question"}], "annotations": [{"question_id", "answer", "object_ids"}]}``, the
  referred objects as annotation ids.

So every tool that reads COCO (pycocotools, detectron-style loaders, ``mmexplain
evaluate grounding --coco``) reads ShapeWorld, and a user can check a COCO pipeline
on data whose answers are known.

Example:
    >>> import mmexplain as mx
    >>> paths = mx.world.export_coco(range(5), "shapeworld-coco")   # doctest: +SKIP
    >>> sorted(paths)                                          # doctest: +SKIP
    ['captions', 'images', 'instances', 'questions']
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_coco", "coco_categories"]


def coco_categories(shapes: Sequence[str]) -> list[dict]:
    """One COCO category per shape, ids from 1."""
    return [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(shapes)]


def write_coco(scenes: Iterable[tuple[int, Any]], out_dir: str | os.PathLike, *, shapes: Sequence[str]) -> dict[str, Path]:
    """Write ``(seed, scene)`` pairs as a COCO-format dataset under ``out_dir`` (see the module docstring).

    Args:
        scenes: ``(seed, mx.world.Scene)`` pairs, at least one.
        out_dir: the folder (created; existing files of the same names are replaced).
        shapes: the shape names, in category order (``mx.world.SHAPES``).

    Returns:
        ``{"images": folder, "instances": path, "captions": path, "questions": path}``.
    """
    from PIL import Image
    from pycocotools import mask as coco_mask

    from ._io import write_json

    out = Path(out_dir)
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    categories = {c["name"]: c["id"] for c in coco_categories(shapes)}
    images, annotations, captions, questions, answers = [], [], [], [], []
    ann_id = question_id = 0
    for image_id, (seed, scene) in enumerate(scenes, start=1):
        name = f"{seed}.png"
        height, width = (int(n) for n in scene.image.shape[-2:])
        pixels = (scene.image.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)  # (H, W, 3)
        Image.fromarray(pixels).save(images_dir / name)
        images.append({"id": image_id, "file_name": name, "width": width, "height": height, "seed": seed})
        ids = []
        for obj in scene.objects:
            ann_id += 1
            ids.append(ann_id)
            rle = coco_mask.encode(np.asfortranarray(obj.mask.numpy().astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            x0, y0, x1, y1 = obj.box
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": categories[obj.shape],
                                "segmentation": rle, "area": int(obj.mask.sum()), "bbox": [x0, y0, x1 - x0, y1 - y0],
                                "iscrowd": 0, "color": obj.color, "size": obj.size})
        captions.append({"id": image_id, "image_id": image_id, "caption": scene.caption})
        for qa in scene.questions:
            question_id += 1
            questions.append({"image_id": image_id, "question_id": question_id, "question": qa.question})
            answers.append({"question_id": question_id, "answer": qa.answer, "kind": qa.kind,
                            "object_ids": [ids[j] for j in qa.objects]})
    info = {"description": "ShapeWorld (mmexplain.world), exported by mmexplain.world.export_coco"}
    paths = {"images": images_dir, "instances": out / "instances.json", "captions": out / "captions.json",
             "questions": out / "questions.json"}
    write_json(paths["instances"], {"info": info, "images": images, "annotations": annotations,
                                    "categories": coco_categories(shapes)})
    write_json(paths["captions"], {"info": info, "images": images, "annotations": captions})
    write_json(paths["questions"], {"info": info, "questions": questions, "annotations": answers})
    return paths
