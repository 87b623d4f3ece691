"""Pieces shared by the zoo models: image preprocessing, normalisation, the conv encoder."""

from __future__ import annotations

import torch
from torch import nn

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
        raise TypeError(f"{name} must be a (B, 3, H, W) float tensor, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"{name} must be (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be a float tensor in [0, 1], got dtype {images.dtype}")
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
