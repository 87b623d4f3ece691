"""Default Grad-CAM layers of torchvision classifiers: the last convolutional block, as in the paper.

Example:
    >>> import torchvision
    >>> from mmexplain.adapters.torchvision import default_layer
    >>> default_layer("resnet18", torchvision.models.resnet18())
    ('layer4', None)
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from .grids import PatchGrid
from ..errors import InputError, InputTypeError

__all__ = ["default_layer"]

# architecture family (the name without its depth: "resnet50" -> "resnet") -> layer
NAMED_LAYERS = {
    "resnet": "layer4", "resnext": "layer4", "wide": "layer4",
    "densenet": "features", "mobilenet": "features", "efficientnet": "features",
    "convnext": "features", "squeezenet": "features", "regnet": "trunk_output",
    "shufflenet": "conv5", "mnasnet": "layers", "googlenet": "inception5b", "inception": "Mixed_7c",
}  # fmt: skip


def channels_last_to_first(tokens: Tensor) -> Tensor:
    """Swin's ``(B, h, w, C)`` feature maps -> ``(B, C, h, w)``."""
    return tokens.permute(0, 3, 1, 2)


def default_layer(arch: str, model: nn.Module) -> tuple[str, Callable[[Tensor], Tensor] | None]:
    """The Grad-CAM layer for a torchvision architecture and its ``reshape`` (or None).

    The last convolutional block, as in the Grad-CAM paper: ``layer4`` for ResNets,
    the last ``Conv2d`` for VGG/AlexNet, ``features`` for DenseNet, MobileNet,
    EfficientNet and ConvNeXt; transformers get a token reshape (Swin: channels last
    to first; ViT: the last block's input norm, CLS dropped, square patch grid).

    Args:
        arch: a torchvision model name, e.g. ``"resnet50"``, ``"vgg16"``, ``"vit_b_16"``.
        model: the model built for ``arch``.

    Returns:
        ``(layer name, reshape or None)``.

    Raises:
        ValueError: ``arch`` has no known default and ``model`` has no ``Conv2d``.
    """
    if not isinstance(arch, str):
        raise InputTypeError(f"arch: expected a torchvision model name, got {type(arch).__name__}")
    family = arch.split("_")[0].rstrip("0123456789")
    if family in NAMED_LAYERS:
        return NAMED_LAYERS[family], None
    if family == "swin":
        return "features", channels_last_to_first
    if family == "vit":  # last block's input norm: patch tokens still carry gradient there
        last = len(model.encoder.layers) - 1
        return f"encoder.layers.encoder_layer_{last}.ln_1", PatchGrid()  # (B, 1 + h*w, D) -> (B, D, h, w)
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]  # vgg, alexnet, others
    if not convs:
        raise InputError(f"arch {arch!r}: no default layer known and the model has no Conv2d; pass a layer")
    return convs[-1], None
