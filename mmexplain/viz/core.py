"""Overlays of explanation maps on images, batch figures, atomic figure files.

matplotlib is imported inside the functions, so ``import mmexplain`` stays light.
Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot state, no GUI
backend, nothing to close); in a notebook, a returned figure displays itself.

Example:
    >>> import torch, mmexplain as mx
    >>> image, cam_map = torch.rand(3, 32, 32), torch.rand(32, 32)
    >>> ax = mx.viz.overlay(image, cam_map, title="class 3")
    >>> path = mx.viz.save_figure(ax.figure, "/tmp/overlay.png")   # doctest: +SKIP
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError, InputTypeError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["overlay", "plot_maps", "to_image_array", "save_figure"]

_TOL = 1e-4  # float slack when checking that values lie in [0, 1]


def _as_tensor(value: Any, name: str) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach().cpu().float()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.asarray(value, dtype=np.float32))
    raise InputTypeError(f"{name} must be a torch.Tensor or numpy array; got {type(value).__name__}")


def to_image_array(tensor: Tensor | np.ndarray, *, normalize: bool = False) -> np.ndarray:
    """A ``(3, H, W)`` image tensor as an ``(H, W, 3)`` float numpy array in [0, 1].

    Args:
        tensor: ``(3, H, W)``, ``(1, H, W)`` or ``(H, W)`` with values in [0, 1].
        normalize: for signed, unbounded tensors (Guided Backprop gradients): map 0 to
            mid-grey and +-(99th percentile of ``|t|``) to 1 and 0, clipping beyond, so a
            few extreme pixels do not wash the rest out; an all-zero tensor gives grey.

    Returns:
        ``(H, W, 3)`` float32 array.

    Raises:
        ValueError: wrong shape, or values outside [0, 1] without ``normalize`` (an
            ImageNet-normalised tensor must be un-normalised first).
    """
    t = _as_tensor(tensor, "tensor")
    if t.dim() == 2:
        t = t.unsqueeze(0)  # (1, H, W)
    if t.dim() != 3 or t.shape[0] not in (1, 3):
        raise InputError(f"tensor must be (3, H, W), (1, H, W) or (H, W); got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise InputError("tensor contains NaN or inf")
    if normalize:
        scale = torch.quantile(t.abs().flatten()[:16_000_000], 0.99) if t.numel() else torch.tensor(0.0)
        if scale <= 0:
            scale = t.abs().max()
        t = t / (2 * scale) + 0.5 if scale > 0 else torch.full_like(t, 0.5)
    elif t.numel() and (t.min() < -_TOL or t.max() > 1 + _TOL):
        raise InputError(
            f"tensor values must lie in [0, 1]; got [{t.min():.3g}, {t.max():.3g}] "
            "(undo the mean/std normalisation, or pass normalize=True for gradients)"
        )
    t = t.clamp(0, 1).expand(3, -1, -1)  # (3, H, W)
    return t.permute(1, 2, 0).contiguous().numpy()  # (H, W, 3)


def _map_array(cam_map: Tensor | np.ndarray, name: str = "map") -> np.ndarray:
    m = _as_tensor(cam_map, name)
    if m.dim() != 2:
        raise InputError(f"{name} must be (H, W); got shape {tuple(m.shape)}")
    if not torch.isfinite(m).all():
        raise InputError(f"{name} contains NaN or inf")
    if m.numel() and (m.min() < -_TOL or m.max() > 1 + _TOL):
        raise InputError(
            f"{name} values must lie in [0, 1] (use CAMResult.maps, not raw); got [{m.min():.3g}, {m.max():.3g}]"
        )
    return m.clamp(0, 1).numpy()  # (H, W)


def add_colorbar(fig: Figure, mappable: Any, ax: Any) -> Any:
    from matplotlib.cm import ScalarMappable

    opaque = ScalarMappable(norm=mappable.norm, cmap=mappable.get_cmap())  # the bar shows full colours
    cbar = fig.colorbar(opaque, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_ticks([0.0, 0.5, 1.0])
    cbar.set_label("map (0 = low, 1 = high)")
    return cbar


def overlay(
    image: Tensor | np.ndarray,
    map: Tensor | np.ndarray,  # noqa: A002 - the documented argument name
    *,
    ax: Axes | None = None,
    alpha: float = 0.5,
    cmap: str = "jet",
    title: str | None = None,
    colorbar: bool = True,
) -> Axes:
    """Draw ``map`` semi-transparently over ``image``, pixel-aligned, with a 0-1 colour bar.

    The map is drawn with the image's extent (``(-0.5, W - 0.5, H - 0.5, -0.5)``) and
    ``interpolation="nearest"``, so map pixel (i, j) covers image pixel (i, j) exactly
    when sizes match; a map of another size is stretched over the same extent (each map
    cell covers its share of the image). Colours are fixed to [0, 1] (``vmin=0, vmax=1``).

    Args:
        image: ``(3, H, W)`` tensor in [0, 1].
        map: ``(h, w)`` map in [0, 1], normally ``CAMResult.maps[b]`` (h, w = H, W).
        ax: axes to draw on; default a new figure (``ax.figure``).
        alpha: opacity of the map.
        cmap: matplotlib colormap name.
        title: axes title.
        colorbar: add a colour bar labelled 0-1.

    Returns:
        The axes drawn on.
    """
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1]; got {alpha}")
    img = to_image_array(image)  # (H, W, 3)
    m = _map_array(map)  # (h, w)
    if ax is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4.6, 4), layout="constrained")
        ax = fig.add_subplot()
    height, width = img.shape[:2]
    extent = (-0.5, width - 0.5, height - 0.5, -0.5)
    ax.imshow(img, extent=extent, interpolation="nearest")
    shown = ax.imshow(m, cmap=cmap, vmin=0.0, vmax=1.0, alpha=alpha, extent=extent, interpolation="nearest")
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=10)
    if colorbar:
        add_colorbar(ax.figure, shown, ax)
    return ax


def plot_maps(
    images: Tensor | np.ndarray,
    maps: Tensor | np.ndarray,
    *,
    titles: Sequence[str] | None = None,
    image_titles: Sequence[str] | None = None,
    alpha: float = 0.5,
    cmap: str = "jet",
) -> Figure:
    """A grid: one row per image; the image, then its map for each target.

    Args:
        images: ``(B, 3, H, W)`` in [0, 1].
        maps: ``(B, H, W)`` (one target) or ``(N, B, H, W)`` (N targets), in [0, 1].
        titles: N column titles, one per target (e.g. class names or caption words).
        image_titles: B titles, one per image (default: "image" over the first).
        alpha: opacity of the maps.
        cmap: matplotlib colormap name.

    Returns:
        The figure (B rows, 1 + N columns, one shared 0-1 colour bar).
    """
    from matplotlib.figure import Figure

    imgs = _as_tensor(images, "images")
    mps = _as_tensor(maps, "maps")
    if imgs.dim() != 4:
        raise InputError(f"images must be (B, 3, H, W); got shape {tuple(imgs.shape)}")
    if mps.dim() == 3:
        mps = mps.unsqueeze(0)  # (1, B, H, W)
    if mps.dim() != 4 or mps.shape[1] != imgs.shape[0]:
        raise InputError(
            f"maps must be (B, H, W) or (N, B, H, W) with B = {imgs.shape[0]}; got shape {tuple(_as_tensor(maps, 'maps').shape)}"
        )
    n, b = mps.shape[:2]
    if titles is not None and len(titles) != n:
        raise InputError(f"titles must hold one title per target ({n}); got {len(titles)}")
    if image_titles is not None and len(image_titles) != b:
        raise InputError(f"image_titles must hold one title per image ({b}); got {len(image_titles)}")
    fig = Figure(figsize=(2.4 * (n + 1) + 0.8, 2.4 * b), layout="constrained")
    axes = np.asarray(fig.subplots(b, n + 1, squeeze=False))
    shown = None
    for row in range(b):
        axes[row, 0].imshow(to_image_array(imgs[row]), interpolation="nearest")
        axes[row, 0].set_xticks([])
        axes[row, 0].set_yticks([])
        if image_titles is not None:
            axes[row, 0].set_title(image_titles[row], fontsize=10)
        elif row == 0:
            axes[row, 0].set_title("image", fontsize=10)
        for col in range(n):
            title = (titles[col] if titles is not None else f"target {col}") if row == 0 else None
            ax = overlay(imgs[row], mps[col, row], ax=axes[row, col + 1], alpha=alpha, cmap=cmap, title=title, colorbar=False)
            shown = ax.images[-1]
    add_colorbar(fig, shown, axes[:, 1:].ravel().tolist())
    return fig


def save_figure(fig: Figure, path: str | os.PathLike[str], *, dpi: int = 120) -> Path:
    """Write ``fig`` to ``path`` atomically: a temporary file in the same folder, then ``os.replace``.

    Parent folders are created. A crash or error mid-write leaves no partial file at
    ``path`` (an existing file there stays as it was).

    Args:
        fig: a matplotlib figure.
        path: destination; its extension picks the format (``.png``, ``.pdf``, ``.svg``, ...).
        dpi: resolution for raster formats.

    Returns:
        The path written.

    Raises:
        ValueError: the extension is missing or not a format matplotlib can write.
        IsADirectoryError: ``path`` is an existing folder.
    """
    path = Path(path)
    supported = fig.canvas.get_supported_filetypes()
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in supported:
        raise InputError(
            f"path {str(path)!r}: extension {path.suffix or '(none)'!r} is not a figure format; "
            f"use one of {', '.join('.' + k for k in sorted(supported))}"
        )
    if path.is_dir():
        raise IsADirectoryError(f"path {str(path)!r} is a folder; give a file name such as figure.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            fig.savefig(handle, format=fmt, dpi=dpi)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
