"""Token grids: ``reshape=`` callables that lay a token-shaped layer's output on its patch grid.

A vision transformer's layer gives ``(B, L, D)`` tokens; the engine needs
``(B, D, h, w)``. :class:`PatchGrid` reads the patch tokens from the end of the
sequence; :func:`conv_grid` gives the exact ``(h, w)`` that a patch-embedding
convolution makes of an image, so the grid is computed from each call's pixels and
never kept between calls.

Example:
    >>> import torch
    >>> conv = torch.nn.Conv2d(3, 8, kernel_size=8, stride=8)
    >>> conv_grid(conv, (32, 48))
    (4, 6)
    >>> PatchGrid((4, 6))(torch.zeros(1, 1 + 24, 8)).shape   # (B, D, h, w)
    torch.Size([1, 8, 4, 6])
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from ..methods.base import check_size
from ..errors import InputError, InputTypeError

__all__ = ["PatchGrid", "conv_grid"]


class PatchGrid:
    """``reshape=`` for token-shaped layers: the last ``h * w`` tokens -> ``(..., D, h, w)``.

    ViT-style sequences are ``[CLS, (distillation), patch_1, ..., patch_N]`` and ViLT's
    joint sequence is ``[text..., image CLS, patch_1, ..., patch_N]``: in both the patch
    tokens come last, in row-major order, so the grid is read from the end and every
    prefix token (CLS, text) is dropped.

    Args:
        grid: ``(h, w)``; or ``None`` to infer a square grid from the sequence length
            ``L``: ``h = w = sqrt(L - p)`` for the smallest ``p`` in ``(0, 1, 2)`` that
            gives a perfect square (no prefix, CLS, or CLS + distillation token).

    Example:
        >>> import torch
        >>> tokens = torch.arange(2 * 5 * 3.0).reshape(2, 5, 3)   # (B, 1 + 2*2, D)
        >>> PatchGrid()(tokens).shape
        torch.Size([2, 3, 2, 2])
        >>> bool((PatchGrid()(tokens)[0, :, 0, 1] == tokens[0, 2]).all())   # patch 1 = token 2
        True
    """

    def __init__(self, grid: tuple[int, int] | None = None) -> None:
        self.grid = None if grid is None else check_size(grid, "grid")

    def __call__(self, tokens: Tensor) -> Tensor:  # (..., L, D) -> (..., D, h, w)
        if not isinstance(tokens, Tensor) or tokens.dim() < 3:
            got = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
            raise InputError(f"PatchGrid tokens: expected a (B, L, D) tensor, got {got}")
        length = tokens.shape[-2]
        h, w = (_square_side(length),) * 2 if self.grid is None else self.grid
        if h * w > length:
            raise InputError(f"PatchGrid: a {h}x{w} grid needs {h * w} tokens, the layer gave {length}")
        patches = tokens[..., length - h * w:, :]  # (..., h*w, D)
        return patches.transpose(-1, -2).unflatten(-1, (h, w))  # (..., D, h, w)

    def __repr__(self) -> str:
        return f"PatchGrid(grid={self.grid!r})"


def conv_grid(conv: nn.Module, size: tuple[int, int]) -> tuple[int, int]:
    """The ``(h, w)`` output grid of a patch-embedding ``nn.Conv2d`` on an image of ``size``.

    Args:
        conv: the convolution that cuts the image into patches.
        size: the image's ``(H, W)`` in pixels.

    Returns:
        ``(h, w)``: ``floor((H + 2p - d(k - 1) - 1) / s) + 1`` per axis.
    """
    if not isinstance(conv, nn.Conv2d):
        raise InputTypeError(f"conv: expected an nn.Conv2d patch embedding, got {type(conv).__name__}")
    if isinstance(conv.padding, str):
        raise InputError(f"conv: padding={conv.padding!r} is not supported; expected integer padding")
    out = []
    for axis in (0, 1):
        k, s, p, d = conv.kernel_size[axis], conv.stride[axis], conv.padding[axis], conv.dilation[axis]
        out.append((int(size[axis]) + 2 * p - d * (k - 1) - 1) // s + 1)
    return check_size((out[0], out[1]), "grid")


def _square_side(length: int) -> int:
    for prefix in (0, 1, 2):
        side = math.isqrt(max(length - prefix, 0))
        if side > 0 and side * side == length - prefix:
            return side
    raise InputError(
        f"PatchGrid: cannot infer a square patch grid from {length} tokens; pass grid=(h, w) "
        "(non-square images, or text tokens before the patches)"
    )
