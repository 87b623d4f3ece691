"""The classifier adapter: how ``explain_class`` and the evaluation protocols drive an image classifier.

One class for every classifier: the zoo classifier (sigmoid, multi-label), the
EfficientNet-Lite0 of the ``[real]`` extra, torchvision models
(:meth:`ClassifierAdapter.torchvision`: ImageNet normalisation, the architecture's
default layer and class names) and any ``nn.Module`` mapping ``(B, 3, H, W)`` to
``(B, C)`` logits (e.g. ``mmexplain classify --model PKG.MODULE:FACTORY``).
:func:`as_class_adapter` turns "a classifier or an adapter" into an adapter.

Example:
    >>> import torch, torchvision
    >>> from mmexplain.adapters.classifier import ClassifierAdapter
    >>> adapter = ClassifierAdapter.torchvision(torchvision.models.resnet18().eval(), "resnet18")
    >>> adapter.default_layer, adapter.load_image(torch.rand(3, 64, 64)).shape
    ('layer4', torch.Size([1, 3, 224, 224]))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .images import load_image, resize
from .items import ItemQuestions
from .protocols import ClassAdapter
from ..errors import InputError, InputTypeError

__all__ = ["ClassifierAdapter", "as_class_adapter", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_ACTIVATIONS = ("softmax", "sigmoid")
_ZOO_FACE = ("preprocess", "classes", "default_layer")  # what the zoo classifier and EfficientNet-Lite0 carry


class ClassifierAdapter(ItemQuestions):
    """An image classifier as an adapter: pixels in, ``(B, C)`` logits out.

    Args:
        model: the classifier (``nn.Module``); called ``model(pixels)``.
        layer: the default layer to explain (dotted name), or None (then ``explain_class``
            needs ``layer=``).
        reshape: ``reshape=`` for a token-shaped layer (``(B, L, D) -> (B, D, h, w)``), or None.
        classes: class names in logit order (empty: names are the indices).
        preprocess: ``image -> (1, 3, H, W)`` pixels the model reads, in [0, 1] (the model
            normalises inside), e.g. the zoo classifier's; when given, ``size`` / ``mean``
            / ``std`` are not used.
        size: resize images to ``size x size`` (None: keep their size).
        mean, std: per-channel normalisation applied to the pixels (None: none); the
            display image undoes it.
        activation: ``"softmax"`` (one class is right) or ``"sigmoid"`` (multi-label).

    Attributes:
        model, default_layer, classes, activation: as given.
        tasks: ``{"class"}``.
    """

    tasks = frozenset({"class"})

    def __init__(self, model: nn.Module, *, layer: str | None = None, reshape: Callable[[Tensor], Tensor] | None = None,
                 classes: Sequence[str] | None = None, preprocess: Callable[[Any], Tensor] | None = None,
                 size: int | None = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 activation: str = "softmax") -> None:
        if not isinstance(model, nn.Module):
            raise InputTypeError(f"model: expected an nn.Module classifier, got {type(model).__name__}")
        if layer is not None and not isinstance(layer, str):
            raise InputTypeError(f"layer: expected a dotted layer name or None, got {type(layer).__name__}")
        if activation not in _ACTIVATIONS:
            raise InputError(f"activation: expected one of {', '.join(_ACTIVATIONS)}, got {activation!r}")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise InputError(f"size: expected an int >= 1 or None, got {size!r}")
        if (mean is None) != (std is None):
            raise InputError("mean, std: give both or neither")
        if std is not None and (len(std) != 3 or any(s <= 0 for s in std)):
            raise InputError(f"std: expected three positive numbers, got {list(std)}")
        if mean is not None and len(mean) != 3:
            raise InputError(f"mean: expected three numbers, got {list(mean)}")
        self.model = model
        self.default_layer = layer
        self.reshape = reshape
        self.classes = [str(c) for c in classes] if classes is not None else []
        self.preprocess = preprocess
        self.size = size
        self.mean = None if mean is None else torch.tensor([float(v) for v in mean]).view(1, 3, 1, 1)
        self.std = None if std is None else torch.tensor([float(v) for v in std]).view(1, 3, 1, 1)
        self.activation = activation

    @classmethod
    def torchvision(cls, model: nn.Module, arch: str, *, size: int | None = None,
                    classes: Sequence[str] | None = None) -> ClassifierAdapter:
        """A torchvision classifier: ImageNet normalisation, the architecture's default layer, softmax.

        Args:
            model: the model built for ``arch`` (weights loaded by the caller).
            arch: its torchvision name, e.g. ``"resnet50"``.
            size: input side (default 224; 299 for ``inception_v3``).
            classes: class names (e.g. ImageNet's), or None.
        """
        from .torchvision import default_layer

        layer, reshape = default_layer(arch, model)
        side = size or (299 if arch == "inception_v3" else 224)
        return cls(model, layer=layer, reshape=reshape, classes=classes, size=side, mean=IMAGENET_MEAN,
                   std=IMAGENET_STD)

    def __repr__(self) -> str:
        return f"ClassifierAdapter({type(self.model).__name__}, layer={self.default_layer!r}, classes={len(self.classes)})"

    def _device(self) -> torch.device:
        param = next(self.model.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    def load_image(self, image: Any) -> Tensor:
        """Path / PIL / array / tensor -> the pixels the model reads, (1, 3, H, W) on the model's device.

        A tensor given to an adapter with no preprocessing, size or normalisation is the
        model's input as it is ((3, H, W) or (1, 3, H, W), any range).
        """
        if self.preprocess is not None:
            return self.preprocess(image).to(self._device())  # (1, 3, H, W)
        if isinstance(image, Tensor) and self.size is None and self.mean is None:
            if image.dim() not in (3, 4) or (image.dim() == 4 and image.shape[0] != 1):
                raise InputError(f"image: expected a (3, H, W) or (1, 3, H, W) tensor, got {tuple(image.shape)}")
            return (image if image.dim() == 4 else image[None]).to(self._device())  # (1, 3, H, W)
        pixels = load_image(image)[None]  # (1, 3, H, W) in [0, 1]
        if self.size is not None:
            pixels = resize(pixels, self.size)
        if self.mean is not None:
            pixels = (pixels - self.mean.to(pixels)) / self.std.to(pixels)
        return pixels.to(self._device())

    def display_image(self, pixels: Tensor) -> Tensor:
        """(3, H, W) in [0, 1]: the pixels with the normalisation undone."""
        img = pixels.detach()[0]
        if self.mean is not None:
            img = img * self.std[0].to(img) + self.mean[0].to(img)
        return img.clamp(0, 1)

    def reshape_for(self, pixels: Tensor) -> Callable[[Tensor], Tensor] | None:
        """The ``reshape`` given for a token-shaped layer, else None."""
        return self.reshape

    def class_inputs(self, pixels: Tensor) -> Tensor:
        """The model's inputs for these pixels: the pixels themselves, (1, 3, H, W)."""
        return pixels

    def class_names(self, indices: Sequence[int]) -> list[str]:
        """Names of class indices (the index as text when the adapter has no names)."""
        return [self.classes[i] if self.classes else str(i) for i in indices]

    def class_index(self, name: int | str) -> int:
        """A class index, or the index of a class name; ValueError naming the argument otherwise."""
        if isinstance(name, str):
            if name not in self.classes:
                known = ", ".join(self.classes[:30]) + (", ..." if len(self.classes) > 30 else "") or "(no class names)"
                raise InputError(f"classes: unknown class {name!r}; known: {known}")
            return self.classes.index(name)
        if isinstance(name, bool) or not isinstance(name, int) or name < 0:
            raise InputError(f"classes: expected class indices (int >= 0) or names, got {name!r}")
        return name


def as_class_adapter(classifier: Any) -> ClassAdapter:
    """The adapter for a classifier: itself if it is a ``ClassAdapter``, else a :class:`ClassifierAdapter`.

    A module with ``preprocess``, ``classes`` and ``default_layer`` (the zoo classifier,
    EfficientNet-Lite0) brings them along, with its ``activation`` (the zoo classifier's
    sigmoid); any other ``nn.Module`` is used as it is (tensor images, ``layer=`` needed).

    Raises:
        TypeError: neither an ``nn.Module`` nor a ``ClassAdapter``.
    """
    if isinstance(classifier, ClassAdapter):
        return classifier
    if not isinstance(classifier, nn.Module):
        raise InputTypeError(f"classifier: expected an nn.Module classifier or a ClassAdapter, got {type(classifier).__name__}")
    if all(hasattr(classifier, a) for a in _ZOO_FACE):
        return ClassifierAdapter(classifier, layer=classifier.default_layer, classes=classifier.classes,
                                 preprocess=classifier.preprocess, activation=getattr(classifier, "activation", "softmax"))
    return ClassifierAdapter(classifier, layer=getattr(classifier, "default_layer", None),
                             classes=getattr(classifier, "classes", None) or None)
