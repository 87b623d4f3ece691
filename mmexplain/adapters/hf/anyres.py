"""LLaVA-NeXT / LLaVA-OneVision "anyres": a base image and a grid of crops, stitched back onto the image.

The processor resizes the image to the best of ``config.image_grid_pinpoints``, pads it,
cuts it into ``rows x cols`` crops of the tower's size and puts a downscaled whole image
first: ``pixel_values (1, 1 + rows*cols, 3, S, S)``. The tower reads every frame
(``(1 + rows*cols) * ([CLS] + n*n)`` tokens through the tap); the model lays the crops'
tokens on one ``rows*n x cols*n`` grid, removes the rows or columns of padding
(``unpad_image``) and appends a newline token per row; the base image's tokens come first.

The map is laid on the same unpadded crop grid, with the model's own functions
(``get_anyres_image_grid_shape``, ``unpad_image``, from the model's module), and drawn on
the stitched crops, cropped alike. The base image's tokens lie on no cell (their
gradient still counts in every channel weight, as the tower's CLS token does not).
LLaVA-OneVision downsamples a grid of more than ``anyres_max_N`` crops before the LM
reads it; such an image is refused by name.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import torch
from torch import Tensor, nn

from .common import display_of
from .families import Family, feature_layer_of, feature_layers, tower_of
from .layouts import TokenGrid, as_int, stitch
from ...errors import InputError

__all__ = ["AnyRes"]


class AnyRes(Family):
    """LLaVA-NeXT, LLaVA-NeXT-Video and LLaVA-OneVision images (``config.image_grid_pinpoints``)."""

    @classmethod
    def claims(cls, model: nn.Module) -> str | None:
        config = model.config
        if not getattr(config, "image_grid_pinpoints", None) or feature_layer_of(config) is None or tower_of(model) is None:
            return None
        module = sys.modules.get(type(model).__module__)
        if not all(hasattr(module, f) for f in ("get_anyres_image_grid_shape", "unpad_image")):
            return None
        return ("config.image_grid_pinpoints: a base image + rows x cols crops (image_sizes), stitched and unpadded "
                "with the model's own get_anyres_image_grid_shape / unpad_image")

    def site(self) -> str:
        return feature_layers(self.model, self.tower_name)[-1]

    def sites(self) -> list[str]:
        return feature_layers(self.model, self.tower_name)

    def _module(self) -> Any:
        return sys.modules[type(self.model).__module__]

    def layout(self, images: dict[str, Tensor]) -> tuple[int, int, int, Tensor]:
        """(rows, cols, patches per crop side, the unpadded cells' token index ``(h', w')`` with a 0 prefix)."""
        pixels = images["pixel_values"]  # (1, N, 3, S, S)
        if pixels.dim() != 5:
            raise InputError(f"{type(self.model).__name__}: expected pixel_values (1, frames, 3, S, S), "
                             f"got {tuple(pixels.shape)}")
        vision = self.model.config.vision_config
        size = [as_int(v) for v in images["image_sizes"][0].tolist()]
        module = self._module()
        rows, cols = module.get_anyres_image_grid_shape(size, self.model.config.image_grid_pinpoints,
                                                        vision.image_size)
        frames = pixels.shape[1]
        if frames != 1 + rows * cols:
            raise InputError(f"{type(self.model).__name__}: {frames} frames for a base image + {rows} x {cols} crops")
        n = int(vision.image_size) // int(vision.patch_size)
        r = torch.arange(rows * n)[:, None]
        c = torch.arange(cols * n)[None, :]
        cell = (1 + (r // n) * cols + c // n) * (n * n) + (r % n) * n + c % n  # frame-major index without CLS
        unpadded = module.unpad_image(cell[None], torch.tensor(size))[0]  # (h', w')
        aspect = getattr(self.model.config, "vision_aspect_ratio", None)
        if aspect and str(aspect).startswith("anyres_max_"):
            most = int(str(aspect).removeprefix("anyres_max_"))
            if math.sqrt(unpadded.numel() / (most * n * n)) > 1.1:
                raise InputError(f"{type(self.model).__name__}: the LM reads this image's crop grid downsampled "
                                 f"({aspect}); explain a smaller image")
        return rows, cols, n, unpadded

    def grid(self, images: dict[str, Tensor]) -> TokenGrid:
        rows, cols, n, unpadded = self.layout(images)
        frames = 1 + rows * cols
        flat = unpadded.flatten()
        frame, within = flat // (n * n), flat % (n * n)
        shape = tuple(unpadded.shape)
        return TokenGrid({frames * n * n: (flat, shape),
                          frames * (n * n + 1): (frame * (n * n + 1) + 1 + within, shape)})  # with a CLS per frame

    def view(self, images: dict[str, Tensor]) -> Tensor:
        rows, cols, n, unpadded = self.layout(images)
        crops = torch.stack([display_of(self.image_processor, f) for f in images["pixel_values"][0, 1:]])
        whole = stitch(crops, rows, cols) if rows * cols > 1 else crops[0]  # (3, rows*S, cols*S)
        step = whole.shape[-1] // (cols * n)
        r = torch.arange(rows * n)[:, None]
        c = torch.arange(cols * n)[None, :]
        keep = torch.isin((1 + (r // n) * cols + c // n) * (n * n) + (r % n) * n + c % n, unpadded)
        top, left = int(keep.any(1).nonzero()[0]), int(keep.any(0).nonzero()[0])
        h, w = unpadded.shape
        return whole[:, top * step:(top + h) * step, left * step:(left + w) * step]
