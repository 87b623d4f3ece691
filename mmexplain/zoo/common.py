"""Pieces shared by the zoo models: image preprocessing, normalisation, the conv encoder, checkpoint checks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError, InputTypeError

# mean/std of ShapeWorld pixels (roughly); applied inside each model's forward
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


def preprocess(image: object, *, size: int | None = None, name: str = "image") -> torch.Tensor:
    """Turn an image into a ``(1, 3, H, W)`` float tensor in ``[0, 1]``.

    Args:
        image: anything :func:`mmexplain.adapters.images.load_image` reads: a path, a PIL
            image, a numpy array or a ``(3, H, W)`` / ``(1, 3, H, W)`` tensor.
        size: if given, resize (bilinear) to ``size x size``.
        name: the argument name used in error messages.

    Returns:
        ``(1, 3, H, W)`` float32 tensor.
    """
    from ..adapters.images import load_image, resize

    pixels = load_image(image, name=name)[None]  # (1, 3, H, W)
    return pixels if size is None else resize(pixels, size)


def check_images(images: object, name: str = "images") -> torch.Tensor:
    """Validate a ``(B, 3, H, W)`` float batch."""
    if not isinstance(images, torch.Tensor):
        raise InputTypeError(f"{name} must be a (B, 3, H, W) float tensor, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise InputError(f"{name} must be (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise InputTypeError(f"{name} must be a float tensor in [0, 1], got dtype {images.dtype}")
    return images


class Normalize(nn.Module):
    """(x - mean) / std with fixed buffers, so maps stay aligned with input pixels."""

    def __init__(self, mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def conv_bn(c_in: int, c_out: int, *, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=False),
    )


class Encoder(nn.Module):
    """Conv stack: 96 px -> 12 x 12 feature map (stride 8, receptive field 41 px).

    ``features`` is an ``nn.Sequential``; ``features.<last>`` is the block to explain.
    Layers: 5x5/2 -> 3x3/2 -> 3x3 -> 3x3/2 -> 3x3 [-> extra 3x3 blocks]. With ``coords``
    the pixel coordinates enter as two more input channels, so channels can encode
    where an object is (needed for "left of") while the head stays a global average.
    """

    def __init__(self, widths: tuple[int, int, int] = (32, 64, 128), *, extra: int = 0, coords: bool = False):
        super().__init__()
        w1, w2, w3 = widths
        self.coords = coords
        layers = [conv_bn(5 if coords else 3, w1, kernel=5, stride=2), conv_bn(w1, w2, stride=2), conv_bn(w2, w2),
                  conv_bn(w2, w3, stride=2), conv_bn(w3, w3)]
        layers += [conv_bn(w3, w3) for _ in range(extra)]
        self.features = nn.Sequential(*layers)
        self.out_channels = w3

    @property
    def last(self) -> str:
        return f"features.{len(self.features) - 1}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.coords:  # CoordConv (Liu et al. 2018): x and y in [-1, 1] as two more input channels
            b, _, h, w = x.shape
            ys = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype).view(1, 1, h, 1).expand(b, 1, h, w)
            xs = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype).view(1, 1, 1, w).expand(b, 1, h, w)
            x = torch.cat([x, xs, ys], dim=1)  # (B, 5, H, W)
        return self.features(x)  # (B, C, H/8, W/8)


# what a transformers checkpoint folder of the zoo may declare before transformers builds anything
MAX_HF_CONFIG_BYTES = 4 * 1024 * 1024
MAX_HF_SIZE = 8192  # widths, layers, heads, patch and image sides
MAX_HF_VOCAB = 1_000_000
MAX_HF_POSITIONS = 1 << 20  # position tables (rotary ones cost nothing)
_HF_SIZE_KEYS = frozenset((
    "hidden_size", "intermediate_size", "image_size", "patch_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "n_embd", "n_layer", "n_head", "n_inner", "num_channels", "embedding_size",
    "max_text_len", "modality_type_vocab_size", "embed_dim", "depth", "num_heads", "out_hidden_size",
    "spatial_merge_size", "temporal_patch_size", "projection_dim", "image_seq_length",
))
_HF_POSITION_KEYS = frozenset(("max_position_embeddings", "n_positions", "n_ctx"))
_PICKLE_STARTS = (b"\x80", b"PK\x03\x04")  # pickle protocol 2+, torch.save's zip


def check_hf_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A transformers ``config.json`` of the zoo: size, nesting, and every size setting's type and range.

    Returns:
        The config as a dict.

    Raises:
        ValueError: a file too large, not JSON, nested too deeply, or a size setting (``hidden_size``,
            ``vocab_size``, ``num_hidden_layers``, ... at any depth) that is not an integer in range:
            one line naming the file and the setting.
    """
    from .._io import read_json

    path = Path(path)
    data = read_json(path, what="corrupt checkpoint file", max_bytes=MAX_HF_CONFIG_BYTES)
    if not isinstance(data, dict):
        raise InputError(f"corrupt checkpoint file {path}: expected a JSON object")

    def walk(obj: dict[str, Any], where: str, depth: int) -> None:
        if depth > 8:
            raise InputError(f"corrupt checkpoint file {path}: {where or 'config'} nested more than 8 levels")
        for key, value in obj.items():
            if isinstance(value, dict):
                walk(value, f"{where}{key}.", depth + 1)
                continue
            limit = (MAX_HF_VOCAB if key == "vocab_size" else MAX_HF_POSITIONS if key in _HF_POSITION_KEYS
                     else MAX_HF_SIZE if key in _HF_SIZE_KEYS else None)
            if limit is None or value is None:  # None: transformers' default
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
                raise InputError(f"corrupt checkpoint file {path}: {where}{key} must be an integer in 1..{limit}, "
                                 f"got {value!r:.40}")

    walk(data, "", 0)
    return data


def check_safetensors(path: str | os.PathLike[str]) -> None:
    """A weights file is a readable safetensors file (its header parsed; nothing else is ever loaded).

    Raises:
        ValueError: a pickle or any other file under a ``.safetensors`` name, or a damaged header.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head.startswith(_PICKLE_STARTS):
        raise InputError(f"corrupt checkpoint file {path}: a pickle, not safetensors; pickles are never loaded")
    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"corrupt checkpoint file {path}: not a safetensors file ({' '.join(str(exc).split())[:120]})"
                         ) from exc


def check_hf_folder(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A zoo transformers checkpoint folder, before transformers reads it: ``config.json`` and every
    ``*.safetensors`` file (:func:`check_hf_config`, :func:`check_safetensors`).

    Returns:
        The config as a dict.

    Raises:
        FileNotFoundError: no ``config.json`` or no weights.
        ValueError: a damaged or out-of-range file (named).
    """
    path = Path(path)
    config = check_hf_config(path / "config.json")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise FileNotFoundError(f"missing checkpoint file: {path / 'model.safetensors'}")
    for file in weights:
        check_safetensors(file)
    return config
