"""Concept datasets for :func:`~mmexplain.dissect.dissect`: Broden, and ShapeWorld by its old name.

A concept dataset is re-iterable and yields ``(image (3, H, W), {concept: (H, W) bool
mask})``; it may carry ``categories`` (``{concept: category}``), which ``dissect``
reads. ShapeWorld's lives in :func:`mmexplain.world.concept_dataset`;
:func:`shapeworld_concepts` is that function under the name older code uses.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor

from .. import world
from ..world import concept_categories as shapeworld_categories
from ..errors import InputError

__all__ = ["BrodenDataset", "shapeworld_concepts", "shapeworld_categories"]


def shapeworld_concepts(n: int, *, seed: int = 0, size: int = 96) -> world.ConceptDataset:
    """Alias of :func:`mmexplain.world.concept_dataset` (same scenes, same ``categories``).

    Args:
        n: how many validation scenes.
        seed: offset into the validation seeds (``mx.world.SPLITS["val"]``).
        size: image side in pixels.

    Returns:
        ``mx.world.concept_dataset(n, seed, size=size)``.
    """
    return world.concept_dataset(n, seed, size=size)


class BrodenDataset:
    """A concept dataset in the Broden layout (Bau et al., NetDissect).

    Layout under ``root``::

        index.csv   image,split,ih,iw,sh,sw,<category>,...   one row per image; a
                    category cell lists ';'-separated segmentation PNGs (pixel labels,
                    label number = R + 256 G) or label numbers (image-level labels)
        label.csv   number,name,category,...   category like "object(123);part(4)"
        images/     the images and segmentation PNGs named in index.csv

    Image-level labels (scene, texture) count the whole image: their mask is all True.

    Args:
        root: the Broden folder.
        categories: keep only these categories (default: every column after ``sw``).
        image_size: resize images to ``image_size x image_size`` (masks keep their size;
            :func:`dissect` upsamples the unit maps to each mask's size).
        split: keep only rows of this split (``"train"``/``"val"``), if the column exists.

    Example:
        >>> data = BrodenDataset("broden1_224", categories=["color", "object"])   # doctest: +SKIP
        >>> image, masks = data[0]; image.shape, sorted(masks)[:2]                  # doctest: +SKIP
        (torch.Size([3, 224, 224]), ['black-c', 'wall'])
    """

    _FIXED = ("image", "split", "ih", "iw", "sh", "sw")

    def __init__(self, root: str | os.PathLike[str], *, categories: Sequence[str] | None = None,
                 image_size: int | None = None, split: str | None = None) -> None:
        self.root = Path(root)
        for name in ("index.csv", "label.csv"):
            if not (self.root / name).is_file():
                raise FileNotFoundError(f"root: {str(self.root)!r} has no {name} (not a Broden folder)")
        if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
            raise InputError(f"image_size: expected a positive int or None, got {image_size!r}")
        self.image_size = image_size
        with (self.root / "label.csv").open(newline="") as f:
            label_rows = list(csv.DictReader(f))
        with (self.root / "index.csv").open(newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = [c for c in (reader.fieldnames or []) if c not in self._FIXED]
        if categories is not None:
            unknown = [c for c in categories if c not in columns]
            if unknown:
                raise InputError(f"categories: {unknown} not in index.csv (has {columns})")
            columns = list(categories)
        self.category_columns = columns
        if split is not None:
            rows = [r for r in rows if r.get("split") == split]
        self.rows = rows
        self.names: dict[int, str] = {}
        self.categories: dict[str, str] = {}
        for r in label_rows:
            number = int(r["number"])
            if number == 0:
                continue
            primary = _primary_category(r.get("category", ""))
            name = r["name"]
            if name in self.categories:
                name = f"{name}-{number}"
            self.names[number] = name
            self.categories[name] = primary or "concept"

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
        for i in range(len(self)):
            yield self[i]

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        import numpy as np
        from PIL import Image

        row = self.rows[i]
        with Image.open(self.root / "images" / row["image"]) as im:
            im = im.convert("RGB")
            if self.image_size is not None:
                im = im.resize((self.image_size, self.image_size), Image.BILINEAR)
            image = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()  # (3, H, W)
        sh, sw = int(row["sh"]), int(row["sw"])
        masks: dict[str, Tensor] = {}
        for cat in self.category_columns:
            for entry in filter(None, (row.get(cat) or "").split(";")):
                if entry.lower().endswith(".png"):
                    with Image.open(self.root / "images" / entry) as seg:
                        rgb = np.asarray(seg.convert("RGB"), dtype=np.int64)
                    number = torch.from_numpy(rgb[..., 0] + 256 * rgb[..., 1])  # (sh, sw)
                    if tuple(number.shape) != (sh, sw):
                        raise InputError(f"{entry}: mask is {tuple(number.shape)}, index.csv says {(sh, sw)}")
                    for n in number.unique().tolist():
                        if n == 0:
                            continue
                        name = self._name(n, entry)
                        masks[name] = masks.get(name, torch.zeros(sh, sw, dtype=torch.bool)) | (number == n)
                else:
                    name = self._name(int(entry), f"index.csv row {i}")
                    masks[name] = torch.ones(sh, sw, dtype=torch.bool)  # image-level label: the whole image
        return image, masks

    def _name(self, number: int, where: str) -> str:
        if number not in self.names:
            raise InputError(f"{where}: label number {number} is not in label.csv")
        return self.names[number]


def _primary_category(field_text: str) -> str | None:
    """'object(12);part(3)' -> 'object' (the category with the most images)."""
    best, best_n = None, -1
    for item in filter(None, field_text.split(";")):
        name, _, rest = item.partition("(")
        try:
            n = int(rest.rstrip(")")) if rest else 0
        except ValueError:
            n = 0
        if n > best_n:
            best, best_n = name.strip(), n
    return best
