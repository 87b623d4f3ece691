"""CAM-compatible classifier: conv stack, global average pooling, one linear layer ``fc``.

Multi-label over the colour x shape combinations (``"red circle"``, ...): logit ``c``
is ``fc.weight[c] . GAP(A) + fc.bias[c]`` with ``A`` the last 12 x 12 map, so Grad-CAM
at ``default_layer`` equals CAM (Zhou et al. 2016) up to normalisation.

Example:
    >>> import torch
    >>> from mmexplain.zoo.classifier import Classifier, ClassifierConfig
    >>> model = Classifier(ClassifierConfig()).eval()
    >>> model(torch.rand(2, 3, 96, 96)).shape        # (B, C)
    torch.Size([2, 20])
    >>> model.classes[0]
    'red circle'
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import world
from .common import Encoder, Normalize, check_images, preprocess


def default_classes() -> list[str]:
    """``"<colour> <shape>"`` for every colour and shape of ShapeWorld, shape-major."""
    return world.object_classes()


@dataclass
class ClassifierConfig:
    image_size: int = 96  # input side the model was trained on
    widths: tuple[int, int, int] = (16, 32, 64)  # CNN channels at stride 2, 4, 8
    extra: int = 1  # extra 3x3 conv blocks at 12 x 12
    dropout: float = 0.0  # before fc

    def __post_init__(self) -> None:
        self.widths = tuple(self.widths)


class Classifier(nn.Module):
    """GAP + linear multi-label classifier.

    Attributes:
        config: the :class:`ClassifierConfig`.
        classes: class names, ``"red circle"`` style; logits come in this order.
        default_layer: ``"encoder.features.5"``, the last 12 x 12 conv block.
        fc: the linear head (CAM weights).
        activation: ``"sigmoid"``: each class's probability is the sigmoid of its logit (multi-label).
    """

    activation = "sigmoid"

    def __init__(self, config: ClassifierConfig, classes: list[str] | None = None):
        super().__init__()
        self.config = config
        self.classes = list(classes) if classes is not None else default_classes()
        self.norm = Normalize()
        self.encoder = Encoder(config.widths, extra=config.extra)
        self.drop = nn.Dropout(config.dropout)
        self.fc = nn.Linear(self.encoder.out_channels, len(self.classes))
        self.default_layer = f"encoder.{self.encoder.last}"

    def preprocess(self, image: object) -> torch.Tensor:
        """Path / PIL / numpy / tensor -> ``(1, 3, H, W)`` in [0, 1] at the model's size."""
        return preprocess(image, size=self.config.image_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> ``(B, C)`` logits (sigmoid for probabilities)."""
        a = self.encoder(self.norm(check_images(images)))  # (B, K, h, w)
        return self.fc(self.drop(a.mean(dim=(2, 3))))  # (B, C)
