"""The one image loader: a path, PIL image, numpy array or tensor -> (3, H, W) float in [0, 1].

Every entry point (the zoo models, the Hugging Face adapters, ``mmexplain classify``)
reads images through :func:`load_image`, so every one accepts the same inputs and
rejects bad ones with the same one-line errors.

Example:
    >>> from mmexplain.adapters.images import load_image
    >>> load_image("cat.png").shape                  # doctest: +SKIP
    torch.Size([3, 300, 451])
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError, InputTypeError

__all__ = ["load_image", "resize", "MAX_PIXELS"]

# the largest image read from a file (pixels); larger headers are refused before decoding
MAX_PIXELS = 64_000_000


def _read_file(path: Path, name: str) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] from an image file; 16-bit files keep their full range."""
    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        raise FileNotFoundError(f"{name}: no such image file: {str(path)!r}")
    if not path.is_file():
        raise InputError(f"{name}: {str(path)!r} is not a file")
    try:
        with warnings.catch_warnings():  # the pixel limit below speaks instead of Pillow's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return _from_pil(im, name, what=repr(str(path)))
    except Image.DecompressionBombError as exc:
        raise InputError(f"{name}: {str(path)!r} declares more pixels than the limit of {MAX_PIXELS:,} "
                         f"(mmexplain.adapters.images.MAX_PIXELS): {exc}") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{name}: {str(path)!r} is not an image file Pillow can read ({type(exc).__name__})") from exc


def _from_pil(im: Any, name: str, *, what: str = "the PIL image") -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] from a PIL image; 16-bit (and 32-bit integer) grayscale keeps its range."""
    if im.width * im.height > MAX_PIXELS:
        raise InputError(
            f"{name}: {what} is {im.width}x{im.height} pixels, over the limit of "
            f"{MAX_PIXELS:,} (mmexplain.adapters.images.MAX_PIXELS)"
        )
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit (or 32-bit) grayscale
        gray = np.asarray(im, dtype=np.float64)
        if gray.size and gray.min() < 0:
            raise InputError(f"{name}: {what} has negative integer pixels (mode {im.mode})")
        top = 65535.0 if im.mode.startswith("I;16") or gray.size == 0 or gray.max() <= 65535 else float(gray.max())
        return np.repeat((gray / top).astype(np.float32)[..., None], 3, axis=-1)
    if im.mode == "F":
        values = np.asarray(im, dtype=np.float32)
        _check_unit_range(torch.from_numpy(values), name)
        return np.repeat(values[..., None], 3, axis=-1)
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def _from_array(array: np.ndarray, name: str) -> Tensor:
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise InputError(f"{name}: a numpy image must be (H, W), (H, W, 3) or (H, W, 4), got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f"{name}: the image is empty, shape {array.shape}")
    if array.shape[0] * array.shape[1] > MAX_PIXELS:
        raise InputError(f"{name}: the image has {array.shape[0]}x{array.shape[1]} pixels, over the limit of {MAX_PIXELS:,}")
    array = array[..., :3]
    if array.dtype == np.uint8:
        values = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        values = array.astype(np.float32) / 65535.0
    elif np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float32)
        _check_unit_range(torch.from_numpy(values), name)
    else:
        raise InputError(f"{name}: a numpy image must be uint8, uint16 or float in [0, 1], got {array.dtype}")
    return torch.from_numpy(np.ascontiguousarray(values)).permute(2, 0, 1).expand(3, -1, -1)  # (3, H, W)


def _check_unit_range(values: Tensor, name: str) -> None:
    if not torch.isfinite(values).all():
        raise InputError(f"{name}: the image has NaN or infinite pixels")
    low, high = float(values.min()), float(values.max())
    if low < -1e-3 or high > 1 + 1e-3:
        hint = " (divide a 0-255 image by 255)" if high > 1.5 else ""
        raise InputError(f"{name}: a float image must lie in [0, 1], got values in [{low:.3g}, {high:.3g}]{hint}")


def load_image(image: object, *, name: str = "image") -> Tensor:
    """Any supported image -> a (3, H, W) float32 tensor in [0, 1] (on the tensor's device).

    Args:
        image: a path (str or ``os.PathLike``; 8- or 16-bit files), a PIL image, a numpy
            (H, W[, 3]) array (uint8, uint16, or float in [0, 1]), or a (3, H, W) /
            (1, 3, H, W) / (1, H, W) tensor (uint8, or float in [0, 1]).
        name: the argument name used in error messages.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: not an image, too large, the wrong shape, values outside [0, 1], NaN.
        TypeError: anything else.
    """
    if isinstance(image, (str, os.PathLike)):
        return torch.from_numpy(_read_file(Path(image), name)).permute(2, 0, 1).contiguous()
    if type(image).__module__.startswith("PIL."):
        import PIL.Image

        if isinstance(image, PIL.Image.Image):
            return torch.from_numpy(_from_pil(image, name)).permute(2, 0, 1).contiguous()
    if isinstance(image, np.ndarray):
        return _from_array(image, name).contiguous()
    if not isinstance(image, Tensor):
        raise InputTypeError(
            f"{name}: expected a path, PIL image, numpy (H, W, 3) array or (3, H, W) tensor, got {type(image).__name__}"
        )
    img = image.detach()
    if img.dim() == 4 and img.shape[0] == 1:
        img = img[0]
    if img.dim() != 3 or img.shape[0] not in (1, 3):
        raise InputError(f"{name}: a tensor image must be (3, H, W) or (1, 3, H, W), got {tuple(image.shape)}")
    if img.shape[1] == 0 or img.shape[2] == 0:
        raise InputError(f"{name}: the image is empty, shape {tuple(image.shape)}")
    if img.dtype == torch.uint8:
        img = img.float() / 255.0
    elif not img.is_floating_point():
        raise InputTypeError(f"{name}: a tensor image must be float in [0, 1] or uint8, got dtype {image.dtype}")
    else:
        _check_unit_range(img, name)
    return img.float().expand(3, -1, -1).clamp(0.0, 1.0).contiguous()


def resize(image: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Bilinear resize of a (3, H, W) or (B, 3, H, W) image to ``size`` (side, or (H, W))."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(image.shape[-2:]) == hw:
        return image
    batch = image if image.dim() == 4 else image[None]
    out = F.interpolate(batch, size=hw, mode="bilinear", align_corners=False)
    return out if image.dim() == 4 else out[0]
