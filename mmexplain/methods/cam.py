"""Class Activation Mapping (CAM) for global-average-pooling + linear classifiers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import CAMResult, _Capture, _check_site, call_model, find_image, module_name, resolve_layer, upsample_and_normalize
from ..targets import ClassLogit, logits_of

__all__ = ["CAM"]


class CAM:
    r"""Class Activation Mapping (Zhou et al., "Learning Deep Features for Discriminative
    Localization", CVPR 2016).

    For a network that ends in global average pooling and a linear layer,
    :math:`y^c = \sum_k w^c_k \frac{1}{Z}\sum_{ij} A^k_{ij} + b^c`, the class activation
    map is the same linear combination taken before the pooling:

    .. math:: M^c_{ij} = \sum_k w^c_k A^k_{ij}

    **Grad-CAM equivalence** (Selvaraju et al., Grad-CAM, Sec. 3.1): for such a network
    :math:`\partial y^c / \partial A^k_{ij} = w^c_k / Z`, so the Grad-CAM weights are
    :math:`\alpha^c_k = \frac{1}{Z}\sum_{ij} w^c_k / Z = w^c_k / Z` and
    :math:`L^c_{\text{Grad-CAM}} = \frac{1}{Z}\,\mathrm{ReLU}(M^c)`: after min-max
    normalisation the two maps are identical. CAM needs no backward pass.

    Departs from the paper in one place: with ``relu=True`` (the default) the map is
    :math:`\mathrm{ReLU}(M^c)`, as in Grad-CAM, so results are comparable; ``relu=False``
    gives Zhou et al.'s signed map (then min-max normalised). The bias :math:`b^c`
    is constant over space and is left out, as in the paper.

    Args:
        model: the network.
        layer: the layer whose output ``A`` (B, K, u, v) is globally average-pooled into
            ``fc``; a dotted name or a module.
        fc: the linear classifier (``nn.Linear`` with ``in_features == K``), a dotted
            name or a module.
        relu: apply ReLU to the map (Grad-CAM convention).
        input, call: where the layer's tensor is read (its first input; its k-th call),
            as for :class:`mmexplain.GradCAM`.

    Example:
        >>> import torch, mmexplain as mx
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        ...                       nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
        >>> res = mx.CAM(model, layer="1", fc="4")(torch.rand(2, 3, 16, 16), 3)
        >>> res.maps.shape, res.weights.shape     # (B, H, W), (B, K)
        (torch.Size([2, 16, 16]), torch.Size([2, 8]))
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str | nn.Module,
        fc: str | nn.Module,
        *,
        relu: bool = True,
        input: bool = False,
        call: int | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module; got {type(model).__name__}")
        self.model = model
        self.layer = resolve_layer(model, layer)
        self.layer_name = layer if isinstance(layer, str) else module_name(model, layer)
        self.fc = resolve_layer(model, fc)
        if not isinstance(self.fc, nn.Linear):
            raise TypeError(f"fc must be an nn.Linear (the classifier after global pooling); got {type(self.fc).__name__}")
        self.relu = relu
        _check_site(input, call)
        self.input = input
        self.call = call

    def __call__(
        self,
        inputs: Any,
        class_index: int | Sequence[int] | Tensor,
        *,
        size: tuple[int, int] | None = None,
    ) -> CAMResult:
        """CAM of class ``class_index`` for each sample.

        Args:
            inputs: what ``model`` takes: a tensor, a tuple (positional) or a dict (keywords).
            class_index: one class for all samples, or one per sample.
            size: ``(H, W)`` of ``maps``; default the spatial size of the first floating
                4-D tensor in ``inputs``.

        Returns:
            A :class:`~mmexplain.methods.CAMResult`: ``maps`` (B, H, W) in [0, 1], ``raw`` and
            ``pre_relu`` (B, u, v), ``weights`` (B, K) = ``fc.weight[c]``, ``scores`` (B,)
            the class logits, ``activations`` (B, K, u, v).
        """
        if size is None:
            image = find_image(inputs)
            if image is None:
                raise ValueError("size: inputs hold no floating 4-D tensor; pass size=(H, W)")
            size = (int(image.shape[-2]), int(image.shape[-1]))
        # the shared capture: a detached clone (an in-place op after the layer would overwrite it)
        capture = _Capture({self.layer_name: self.layer}, grad=False, input=self.input, call=self.call)
        handles = capture.register()
        try:
            with torch.no_grad():
                output = call_model(self.model, inputs)
        finally:
            for handle in handles:
                handle.remove()
        capture.check()
        activations = capture.leaves[self.layer_name]  # (B, K, u, v)
        k = self.fc.in_features
        if not isinstance(activations, Tensor) or activations.dim() != 4 or activations.shape[1] != k:
            got = tuple(activations.shape) if isinstance(activations, Tensor) else type(activations).__name__
            raise ValueError(f"layer: expected an output of shape (B, {k}, u, v) to match fc.in_features; got {got}")
        logits = logits_of(output)  # (B, C)
        scores = ClassLogit(class_index)(logits)  # (B,), validates the index
        batch = activations.shape[0]
        idx = torch.as_tensor(class_index, device=self.fc.weight.device).long().expand(batch)  # (B,)
        weights = self.fc.weight.detach()[idx].to(activations.dtype)  # (B, K)
        pre_relu = torch.einsum("bk,bkuv->buv", weights, activations)  # (B, u, v)
        raw = F.relu(pre_relu) if self.relu else pre_relu  # (B, u, v)
        maps = upsample_and_normalize(raw, tuple(size))  # (B, H, W)
        return CAMResult(
            maps=maps,
            raw=raw,
            pre_relu=pre_relu,
            weights=weights,
            scores=scores.detach(),
            activations=activations,
            output=output,
        )
