"""Class Activation Mapping (CAM) for global-average-pooling + linear classifiers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..targets import ClassLogit, Target
from .base import CAMResult, resolve_layer
from .core import PerturbationMethod, Run
from ..errors import InputError, InputTypeError

__all__ = ["CAM"]


class CAM(PerturbationMethod):
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
        >>> res = mx.CAM(model, layer="1", fc="4")(torch.rand(2, 3, 16, 16), mx.targets.ClassLogit(3))
        >>> res.maps.shape, res.weights.shape     # (B, H, W), (B, K)
        (torch.Size([2, 16, 16]), torch.Size([2, 8]))
        >>> mx.CAM(model, "1", "4")(torch.rand(2, 3, 16, 16), 3).maps.shape   # a class index works too
        torch.Size([2, 16, 16])
    """

    def __init__(self, model: nn.Module, layer: str | nn.Module, fc: str | nn.Module, *, relu: bool = True,
                 input: bool = False, call: int | None = None) -> None:
        super().__init__(model, layer, relu=relu, input=input, call=call)
        self.fc = resolve_layer(model, fc)
        if not isinstance(self.fc, nn.Linear):
            raise InputTypeError(f"fc must be an nn.Linear (the classifier after global pooling); got {type(self.fc).__name__}")

    def __call__(self, inputs: Any, targets: Target | Sequence[Target] | int | Sequence[int] | Tensor, *,
                 size: tuple[int, int] | None = None) -> CAMResult:
        """CAM of each target's class for each sample.

        Args:
            inputs: what ``model`` takes: a tensor, a tuple (positional) or a dict (keywords).
            targets: a ``ClassLogit`` (or a list of them), or a class index: one for all
                samples, or one per sample.
            size: ``(H, W)`` of ``maps``; default the image's.

        Returns:
            A CAMResult: ``maps`` (B, H, W) in [0, 1], ``raw`` and ``pre_relu`` (B, u, v),
            ``weights`` (B, K) = ``fc.weight[c]``, ``scores`` (B,) the class logits,
            ``activations`` (B, K, u, v); a leading N axis for a list of targets.
        """
        index = isinstance(targets, (int, Tensor)) or (isinstance(targets, (list, tuple)) and bool(targets)
                                                      and all(isinstance(t, int) for t in targets))
        return super().__call__(inputs, ClassLogit(targets) if index else targets, size=size)

    def weights(self, activation: Tensor, run: Run) -> Tensor:
        """activation (B, K, u, v) -> (N, B, K): the fc row of each target's class."""
        k = self.fc.in_features
        if activation.shape[1] != k:
            raise InputError(f"layer: expected an output of shape (B, {k}, u, v) to match fc.in_features; "
                             f"got {tuple(activation.shape)}")
        rows = []
        for i, t in enumerate(run.targets):
            if not isinstance(getattr(t, "index", None), (int, Sequence, Tensor)):
                raise InputError(f"targets[{i}]: CAM reads the fc row of a class: expected a ClassLogit, got {t!r}")
            idx = torch.as_tensor(t.index, device=self.fc.weight.device).long().expand(activation.shape[0])  # (B,)
            rows.append(self.fc.weight.detach()[idx].to(activation.dtype))  # (B, K)
        return torch.stack(rows)  # (N, B, K)
