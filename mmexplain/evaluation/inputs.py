"""Datasets to explain: ShapeWorld, an image folder, COCO-format captions, a saved HF dataset.

Each is a torch ``Dataset`` whose item is a dict, made in the DataLoader's workers
(generation, decoding and resizing off the main process):

* ``index`` (int), ``id`` (str), ``image_ref`` (str: the file, or ``shapeworld:SEED``);
* ``image``: (3, S, S) float32 in [0, 1], resized to the model's side S;
* ``size``: the original (H, W);
* ``caption``: str or None; ``questions``: ``[{"question", "answer" (or None), "mask"
  ((S, S) bool or None)}]``;
* ``word_masks``: ``{word index: (S, S) bool}`` for captions with ground truth (ShapeWorld).

Example:
    >>> data = open_input("shapeworld", size=96, limit=4)
    >>> item = data[0]
    >>> item["image"].shape, item["caption"] is not None
    (torch.Size([3, 96, 96]), True)
"""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import torch

from .. import world
from ..errors import InputError

__all__ = ["open_input", "SceneSeeds", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")


def _load(path: str | Path, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    from ..adapters.images import load_image, resize

    image = load_image(path)  # (3, H, W)
    return resize(image, size), (int(image.shape[-2]), int(image.shape[-1]))


def _item(index: int, ident: str, ref: str, image: torch.Tensor, size: tuple[int, int], *,
          caption: str | None = None, questions: list[dict[str, Any]] | None = None,
          word_masks: dict[int, torch.Tensor] | None = None) -> dict[str, Any]:
    return {"index": index, "id": ident, "image_ref": ref, "image": image, "size": size, "caption": caption,
            "questions": questions or [], "word_masks": word_masks or {}}


class SceneSeeds(torch.utils.data.Dataset):
    """ShapeWorld scenes of the given seeds, generated on access (in the DataLoader's workers)."""

    def __init__(self, seeds: Sequence[int], size: int) -> None:
        self.seeds, self.size = list(seeds), size

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, i: int) -> world.Scene:
        return world.generate(self.seeds[i], size=self.size)


class ShapeWorldInput(torch.utils.data.Dataset):
    """Held-out ShapeWorld scenes with their captions, questions and object masks."""

    def __init__(self, n: int, *, size: int, start: int = 0) -> None:
        self.seeds = list(world.split_seeds("test", n, start=start))
        self.size = size

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, i: int) -> dict[str, Any]:
        scene = world.generate(self.seeds[i], size=self.size)
        words = {w: scene.objects[j].mask for w, j in scene.alignment.items()}
        questions = []
        for qa in scene.questions:
            mask = None
            if qa.objects:
                mask = torch.zeros_like(scene.objects[0].mask)
                for j in qa.objects:
                    mask |= scene.objects[j].mask
            questions.append({"question": qa.question, "answer": qa.answer, "mask": mask})
        return _item(i, f"shapeworld-{scene.seed}", f"shapeworld:{scene.seed}", scene.image,
                     (self.size, self.size), caption=scene.caption, questions=questions, word_masks=words)


class FolderInput(torch.utils.data.Dataset):
    """The image files of a folder (sorted by name, not recursive)."""

    def __init__(self, folder: Path, *, size: int, question: str | None = None) -> None:
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise InputError(f"input: no image files ({', '.join(IMAGE_SUFFIXES)}) in {str(folder)!r}")
        self.size, self.question = size, question

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        image, size = _load(self.files[i], self.size)
        questions = [{"question": self.question, "answer": None, "mask": None}] if self.question else []
        return _item(i, self.files[i].stem, str(self.files[i]), image, size, questions=questions)


def _image_file(root: Path, name: Any, source: Path) -> Path:
    """A COCO ``file_name``: a relative path to an existing file inside ``root`` (checked before any work)."""
    option = "--images" if source.parent != root else "input"
    if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise InputError(f"input: {str(source)!r} lists the image file_name {name!r}; expected a path relative to "
                         f"its image folder, without '..'")
    file = root / name
    if not file.is_file():
        raise InputError(f"{option}: {name!r}, listed in {str(source)!r}, is not a file in {str(root)!r}")
    return file


class CocoInput(torch.utils.data.Dataset):
    """A COCO-format annotation file: ``images`` (``id``, ``file_name``) and ``annotations`` (``image_id``, ``caption``)."""

    def __init__(self, path: Path, *, size: int, images: Path | None = None, question: str | None = None) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            entries = sorted(data["images"], key=lambda e: e["id"])
            captions: dict[Any, str] = {}
            for ann in sorted(data.get("annotations", []), key=lambda a: a.get("id", 0)):
                captions.setdefault(ann["image_id"], str(ann["caption"]).strip())
        except RecursionError as exc:
            raise InputError(f"input: {str(path)!r} is not a COCO-format annotation file (JSON nested too deeply)") from exc
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"input: {str(path)!r} is not a COCO-format annotation file ({exc})") from exc
        root = images if images is not None else path.parent
        self.entries = [(str(e["id"]), _image_file(root, e.get("file_name"), path), captions.get(e["id"])) for e in entries]
        if not self.entries:
            raise InputError(f"input: {str(path)!r} lists no images")
        self.size, self.question = size, question

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ident, file, caption = self.entries[i]
        image, size = _load(file, self.size)
        questions = [{"question": self.question, "answer": None, "mask": None}] if self.question else []
        return _item(i, ident, str(file), image, size, caption=caption, questions=questions)


class HFInput(torch.utils.data.Dataset):
    """A Hugging Face ``datasets`` dataset saved with ``save_to_disk`` (column ``image``; optional
    ``caption``/``text``, ``question``, ``answer``, ``id``). A DatasetDict gives its test split
    (else validation, else the first)."""

    def __init__(self, folder: Path, *, size: int, question: str | None = None) -> None:
        import datasets

        data = datasets.load_from_disk(str(folder))
        if isinstance(data, datasets.DatasetDict):
            split = next((s for s in ("test", "validation") if s in data), next(iter(data)))
            data = data[split]
        if "image" not in data.column_names:
            raise InputError(f"input: the dataset in {str(folder)!r} has no 'image' column "
                             f"(columns: {', '.join(data.column_names)})")
        self.data, self.size, self.question = data, size, question
        self.caption = next((c for c in ("caption", "text") if c in data.column_names), None)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from ..adapters.images import load_image, resize

        row = self.data[i]
        full = load_image(row["image"])  # (3, H, W)
        caption = row[self.caption] if self.caption else None
        caption = caption[0] if isinstance(caption, list) else caption
        question = row.get("question", self.question)
        questions = [{"question": question, "answer": row.get("answer"), "mask": None}] if question else []
        ident = str(row.get("id", i))
        return _item(i, ident, f"{ident}", resize(full, self.size), (int(full.shape[-2]), int(full.shape[-1])),
                     caption=caption, questions=questions)


def open_input(spec: str, *, size: int, limit: int | None = None, images: str | None = None,
               question: str | None = None) -> torch.utils.data.Dataset:
    """The dataset named by ``--input``: ``shapeworld``, an image folder, a COCO ``.json`` or a saved HF dataset.

    Args:
        spec: ``"shapeworld"``, a folder of images, a COCO-format ``FILE.json``, or a folder
            written by ``datasets.Dataset.save_to_disk``.
        size: the model's image side; items are resized to it.
        limit: at most this many items (ShapeWorld: this many scenes, default 100).
        images: the folder COCO ``file_name`` entries are relative to (default the json's).
        question: a question asked of every image (VQA models on data without questions).

    Raises:
        ValueError: ``spec`` names nothing readable.
    """
    if spec == "shapeworld":
        return ShapeWorldInput(limit or 100, size=size)
    path = Path(spec)
    if not path.exists():
        raise InputError(f"input: expected 'shapeworld', an image folder, a COCO .json or a saved HF dataset; "
                         f"{spec!r} does not exist")
    if path.is_file():
        if path.suffix.lower() != ".json":
            raise InputError(f"input: a file must be a COCO-format .json, got {spec!r}")
        data: Any = CocoInput(path, size=size, images=Path(images) if images else None, question=question)
    elif (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        data = HFInput(path, size=size, question=question)
    else:
        data = FolderInput(path, size=size, question=question)
    if limit is not None and limit < len(data):
        data = torch.utils.data.Subset(data, range(limit))
    return data
