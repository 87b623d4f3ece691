"""Where a VLM's image tokens lie on the image: token orders, patch grids and the picture the maps are drawn on.

A vision layer of an image-text-to-text model gives ``(B, L, D)`` tokens (the adapter's
tap makes every layer batched, see :mod:`.tap`) whose order is the model's own:

==========================  ===========================================================  ==================
family                      token order of the vision tower's output                     what the LM reads
==========================  ===========================================================  ==================
LLaVA, GIT, BLIP-2          ``[CLS], patches`` row-major                                 patches (+ CLS)
PaliGemma (SigLIP)          patches row-major                                            every token
Qwen2-VL                    patches in 2 x 2 merge blocks: ``(h/2, w/2, 2, 2)``           one token / block
Qwen2.5-VL                  merge blocks permuted into attention windows                  blocks, unpermuted
Idefics3 / SmolVLM          tiles row-major, then a downscaled global image; patches      one token / 2 x 2
                            row-major inside each tile                                    (pixel shuffle)
Florence-2 (DaViT)          a convolutional map ``(B, C, h, w)``                          ``h*w`` + 1 tokens
==========================  ===========================================================  ==================

:class:`TokenGrid` is the ``reshape=`` for all of them: for each sequence length the
layer may have (patch level, merged level) it holds the index of the token that lies on
each grid cell, row-major, and gathers them into ``(B, D, h, w)``; the length of each
call's tokens picks the level, so one adapter explains any vision layer of the image
it was built for. The orders come from the processed image (its pixel grid, Qwen's
``image_grid_thw``, Idefics3's tile rows and columns) and are computed per image.
Tiles are stitched into one grid; the global image of a tiled Idefics3 input is left out.

Example:
    >>> import torch
    >>> order = merge_blocks(2, 4, merge=2)     # Qwen2-VL: a 2 x 4 patch grid in 2 x 2 blocks
    >>> order.tolist()                          # the token on each cell, row-major
    [0, 1, 4, 5, 2, 3, 6, 7]
    >>> TokenGrid({8: (order, (2, 4))})(torch.zeros(1, 8, 5)).shape
    torch.Size([1, 5, 2, 4])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ...errors import InputError, InputTypeError

__all__ = ["TokenGrid", "row_major", "merge_blocks", "windows", "tiles", "unpatchify", "stitch"]

Level = tuple[Tensor, tuple[int, int]]  # (token index per grid cell, row-major; (h, w))


class TokenGrid:
    """``reshape=`` for a VLM's vision layer: tokens ``(..., L, D)`` -> ``(..., D, h, w)`` by token order.

    Args:
        levels: sequence length ``L`` -> ``(order, (h, w))``: ``order[r * w + c]`` is the
            index (along the token axis) of the token on cell ``(r, c)``. A layer whose
            length is not listed is an error naming the lengths that are.

    A ``(B, C, h, w)`` tensor (a convolutional vision tower) is returned as it is.

    ``pixels``: lays a tensor shaped as the processor's image tensor (its gradient, say) onto
    the picture the grid covers, ``-> (C', H, W)`` (flattened patches unpatchified, every
    copy kept as channels); None when the processor's tensor is no one picture (tiles).
    """

    pixels: Callable[[Tensor], Tensor] | None = None

    def __init__(self, levels: dict[int, Level]) -> None:
        if not levels:
            raise InputError("levels: expected at least one (order, grid) level")
        for length, (order, (h, w)) in levels.items():
            if order.dim() != 1 or order.numel() != h * w:
                raise InputError(f"levels[{length}]: an order of {h * w} tokens for a {h}x{w} grid, "
                                 f"got shape {tuple(order.shape)}")
            if order.numel() and (int(order.min()) < 0 or int(order.max()) >= length):
                raise InputError(f"levels[{length}]: token indices must lie in [0, {length})")
        self.levels = {int(k): (v[0].long(), (int(v[1][0]), int(v[1][1]))) for k, v in levels.items()}

    @property
    def grid(self) -> tuple[int, int]:
        """The finest grid (the level with the most cells)."""
        return max((grid for _, grid in self.levels.values()), key=lambda g: g[0] * g[1])

    def __call__(self, tokens: Tensor) -> Tensor:  # (..., L, D) -> (..., D, h, w)
        if not isinstance(tokens, Tensor):
            raise InputTypeError(f"TokenGrid tokens: expected a tensor, got {type(tokens).__name__}")
        if tokens.dim() == 4:
            return tokens  # a convolutional map (B, C, h, w): already on its grid
        if tokens.dim() < 3:
            raise InputError(f"TokenGrid: the layer gave unbatched tokens {tuple(tokens.shape)}; explain it through "
                             "the adapter (mx.hf.adapter(model, processor, layer=NAME)), whose tap adds the batch axis")
        length = tokens.shape[-2]
        if length not in self.levels:
            raise InputError(f"TokenGrid: the layer has {length} tokens; this image's vision layers have "
                             f"{' or '.join(str(k) for k in sorted(self.levels))}")
        order, (h, w) = self.levels[length]
        picked = tokens.index_select(-2, order.to(tokens.device))  # (..., h*w, D)
        return picked.transpose(-1, -2).unflatten(-1, (h, w))  # (..., D, h, w)

    def __repr__(self) -> str:
        return "TokenGrid(" + ", ".join(f"{k} tokens -> {g[0]}x{g[1]}" for k, (_, g) in sorted(self.levels.items())) + ")"


def row_major(h: int, w: int, *, prefix: int = 0) -> Tensor:
    """Patches in row-major order after ``prefix`` tokens (CLS): ``(h*w,)``."""
    return torch.arange(prefix, prefix + h * w)


def merge_blocks(h: int, w: int, *, merge: int) -> Tensor:
    """Qwen2-VL's patch order: the token of each cell when the grid is laid out as ``(h/m, w/m, m, m)``.

    The image processor flattens patches block by block (``patchify``: ``[h/m, w/m, m, m]``)
    so that each ``m x m`` block's tokens are adjacent for the merger.
    """
    if h % merge or w % merge:
        raise InputError(f"merge: a {h}x{w} patch grid does not split into {merge}x{merge} blocks")
    r = torch.arange(h)[:, None]  # (h, 1)
    c = torch.arange(w)[None, :]  # (1, w)
    index = ((r // merge) * (w // merge) + c // merge) * merge * merge + (r % merge) * merge + c % merge  # (h, w)
    return index.flatten()


def windows(order: Tensor, window_index: Tensor, *, unit: int) -> Tensor:
    """An order of merge-block tokens after Qwen2.5-VL's window permutation.

    Qwen2.5-VL reorders whole merge blocks (``unit`` = m*m tokens each) into attention
    windows: position ``j`` of its blocks' sequence holds block ``window_index[j // unit]``.
    Given ``order`` (cell -> token in merge-block order), returns cell -> position.

    Args:
        order: (N,) token index per cell before the permutation (``merge_blocks``), or
            the merged grid's block index per cell (``unit=1``).
        window_index: (N / unit,) the permutation ``get_vision_window_index`` gives.
        unit: tokens per merge block (1 for a merged-level layer).
    """
    where = torch.argsort(window_index)  # block -> its position in the windowed sequence
    return where[order // unit] * unit + order % unit


def tiles(rows: int, cols: int, side: int) -> Tensor:
    """Tiles ``rows x cols`` of ``side x side`` tokens each (row-major inside, tiles row-major) -> one stitched grid.

    Returns:
        ``(rows*side * cols*side,)``: the token of each cell of the stitched grid; the tokens
        after the ``rows * cols`` tiles (Idefics3's global image) belong to no cell.
    """
    r = torch.arange(rows * side)[:, None]  # (H, 1)
    c = torch.arange(cols * side)[None, :]  # (1, W)
    tile = (r // side) * cols + c // side  # (H, W)
    return (tile * side * side + (r % side) * side + c % side).flatten()


def unpatchify(pixel_values: Tensor, grid: tuple[int, int], *, patch: int, merge: int, temporal: int,
               copies: bool = False) -> Tensor:
    """Qwen2-VL's flattened patches ``(h*w, C*T*P*P)`` (merge-block order) -> the image ``(C, h*P, w*P)``.

    The inverse of the image processor's ``patchify`` for one image: the first of its ``T``
    copies, or (``copies=True``) all of them, ``(T*C, h*P, w*P)`` copy-major.
    """
    h, w = grid
    channels = pixel_values.shape[-1] // (temporal * patch * patch)
    x = pixel_values.reshape(h // merge, w // merge, merge, merge, channels, temporal, patch, patch)
    # (h/m, w/m, m, m, C, T, P, P) -> (T, C, h/m, m, P, w/m, m, P)
    x = x.permute(5, 4, 0, 2, 6, 1, 3, 7).reshape(temporal, channels, h * patch, w * patch)
    return x.flatten(0, 1) if copies else x[0]


def stitch(frames: Tensor, rows: int, cols: int) -> Tensor:
    """Tiles ``(N, C, S, S)`` (row-major, then any global image) -> ``(C, rows*S, cols*S)``; one frame is itself."""
    if rows * cols <= 1:
        return frames[0]
    c, s = frames.shape[1], frames.shape[-1]
    grid = frames[: rows * cols].reshape(rows, cols, c, s, s)  # (rows, cols, C, S, S)
    return grid.permute(2, 0, 3, 1, 4).reshape(c, rows * s, cols * s)


def check_levels(levels: dict[int, Level], *, who: str) -> dict[int, Level]:
    """``levels`` with every order a permutation-free selection (no token on two cells); ValueError otherwise."""
    for length, (order, _) in levels.items():
        if order.unique().numel() != order.numel():
            raise InputError(f"{who}: the layout of {length} tokens puts one token on two grid cells")
    return levels


def as_int(value: Any) -> int:
    """A Python int from an int, a 0-d / 1-element tensor or a nested one-element list."""
    while isinstance(value, (list, tuple)):
        value = value[0]
    return int(value)
