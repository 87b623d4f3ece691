"""Mllama (Llama 3.2 Vision): the language model reads the image through cross-attention layers.

There are no image tokens in the LM's sequence (one ``<|image|>`` marks the place); the
cross-attention layers read the projected vision output, which concatenates the global
transformer's last layer with the local transformer's ``intermediate_layers_indices``
hidden states, so every one of those layers is a site (their maps are summed on one grid).

The processor cuts the image into ``rows x cols`` tiles (``aspect_ratio_ids`` indexes the
image processor's supported arrangements), padded to ``max_image_tiles``; each tile is
``[CLS] + n*n`` patches, padded to a multiple of 8 tokens, and the towers read all tiles as
one sequence ``(1, tiles * (n*n + 1 + pad), D)``. The grid stitches the used tiles row-major.
Teacher forcing repeats ``cross_attention_mask``'s last row for the caption's tokens, as
``generate`` does.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .common import display_of, pixels_of
from .families import Family, blocks, tower_of
from .layouts import TokenGrid, as_int, stitch
from ...errors import InputError

__all__ = ["Mllama"]


class Mllama(Family):
    """Tiles through a local and a global vision transformer, read by cross-attention layers of the LM."""

    @classmethod
    def claims(cls, model: nn.Module) -> str | None:
        config = model.config
        text = config.get_text_config()
        vision = getattr(config, "vision_config", None)
        if getattr(text, "cross_attention_layers", None) and getattr(vision, "max_num_tiles", None) \
                and getattr(vision, "intermediate_layers_indices", None) is not None and tower_of(model):
            return ("text_config.cross_attention_layers + vision_config.max_num_tiles: tiles (aspect_ratio_ids) read "
                    "through cross-attention; sites: the global transformer's last layer and the "
                    "intermediate_layers_indices layers")
        return None

    def site(self) -> str:
        layers = blocks(self.model, f"{self.tower_name}.global_transformer")
        return f"{layers}.{len(self.model.get_submodule(layers)) - 1}"

    def sites(self) -> list[str]:
        local = blocks(self.model, f"{self.tower_name}.transformer")
        chosen = sorted(set(self.model.config.vision_config.intermediate_layers_indices))
        if chosen and chosen[0] < 1:
            raise InputError("Mllama: intermediate_layers_indices reads the embeddings (hidden_states[0]); "
                             "pass layer=")
        return [*[f"{local}.{k - 1}" for k in chosen], self.site()]

    def images(self, image: Tensor) -> dict[str, Tensor]:
        return pixels_of(self.image_processor, image)

    def tiles(self, images: dict[str, Tensor]) -> tuple[int, int, int, int]:
        """(rows, cols, patches per tile side, tokens per padded tile)."""
        from transformers.models.mllama.image_processing_mllama import get_all_supported_aspect_ratios

        pixels = images["pixel_values"]  # (1, 1, T, 3, S, S)
        arrangements = get_all_supported_aspect_ratios(int(self.image_processor.max_image_tiles))
        rows, cols = arrangements[as_int(images["aspect_ratio_ids"]) - 1]
        if int(images["aspect_ratio_mask"].sum()) != rows * cols:
            raise InputError(f"Mllama: aspect_ratio_mask has {int(images['aspect_ratio_mask'].sum())} tiles for "
                             f"{rows} x {cols}")
        n = pixels.shape[-1] // int(self.model.config.vision_config.patch_size)
        per_tile = n * n + 1
        return rows, cols, n, per_tile + (8 - per_tile % 8) % 8

    def grid(self, images: dict[str, Tensor]) -> TokenGrid:
        rows, cols, n, stride = self.tiles(images)
        total = images["pixel_values"].shape[2]
        r = torch.arange(rows * n)[:, None]
        c = torch.arange(cols * n)[None, :]
        order = ((r // n) * cols + c // n) * stride + 1 + (r % n) * n + c % n  # CLS first in every tile
        return TokenGrid({total * stride: (order.flatten(), (rows * n, cols * n))})

    def view(self, images: dict[str, Tensor]) -> Tensor:
        rows, cols, _, _ = self.tiles(images)
        frames = torch.stack([display_of(self.image_processor, f) for f in images["pixel_values"][0, 0, :rows * cols]])
        return stitch(frames, rows, cols)

    def continuation(self, key: str, values: Tensor, n: int) -> Tensor:
        return values[:, -1:].expand(1, n, *values.shape[2:])  # cross_attention_mask: the last row, repeated

    def per_token(self) -> tuple[str, ...]:
        return ("cross_attention_mask",)
