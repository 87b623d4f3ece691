"""Grad-CAM (Selvaraju et al., arXiv 1610.02391, Eq. 1-2) on the gradient base.

    alpha_k^c = (1/Z) sum_ij dy^c / dA^k_ij        (channel weights)
    L^c       = ReLU(sum_k alpha_k^c A^k)           (coarse map, u x v)

then bilinear upsampling to the image and min-max normalisation per map. The forward,
the batched backward, the token grid and the result are :class:`~mmexplain.methods.core.GradientMethod`'s;
Grad-CAM is its ``weights``, and every variant (``variants.py``) overrides that one method.

Where the explained tensor is read: the layer's output (default), its first tensor input
(``input=True``), at its ``call``-th call (``call=k``, 0-based) when one module runs several
times in a forward (EfficientNet-Lite's single ReLU6 module serves stem and head).
"""

from __future__ import annotations

from torch import Tensor

from .core import GradientMethod

__all__ = ["GradCAM"]


class GradCAM(GradientMethod):
    """Grad-CAM for any differentiable scalar of any model (Selvaraju et al., Eq. 1-2).

    alpha_k = (1/Z) sum_ij dy/dA^k_ij;  L = ReLU(sum_k alpha_k A^k); bilinear
    upsampling to the image and min-max normalisation per map (a constant map gives
    zeros). ``y`` is given by a target (``mx.targets``): a class logit, a caption
    word's log-probability, an answer score, or any function of the output.

    Args:
        model: any ``nn.Module``; left exactly as found (hooks, flags, weights, grads).
        layer: dotted module name (``"layer4"``, ``"features.28"``) or the module.
        reshape: for token-shaped layers, ``tokens (B, T, D) -> (B, D, h, w)``;
            applied to the activation and its gradient alike.
        relu: apply the ReLU to the combined map (``False`` keeps negative evidence).
        input: explain the layer's first tensor *input* (a forward pre-hook) instead of
            its output.
        call: explain the layer's ``call``-th call (0-based) in a forward pass where the
            module runs several times; ``None`` (default) requires it to run once.

    Example:
        >>> import torch, torchvision, mmexplain as mx
        >>> model = torchvision.models.resnet18(num_classes=10).eval()
        >>> cam = mx.GradCAM(model, "layer4")
        >>> res = cam(torch.rand(2, 3, 64, 64), mx.targets.ClassLogit(3))
        >>> res.maps.shape, res.raw.shape, res.weights.shape
        (torch.Size([2, 64, 64]), torch.Size([2, 2, 2]), torch.Size([2, 512]))
        >>> many = cam(torch.rand(2, 3, 64, 64), [mx.targets.ClassLogit(c) for c in range(3)])
        >>> many.maps.shape   # three targets, one forward pass
        torch.Size([3, 2, 64, 64])

    Departures from the paper: none in the formula. Variants override ``weights`` only.
    """

    def weights(self, activation: Tensor, gradient: Tensor) -> Tensor:
        """alpha_k = mean_ij dy/dA^k_ij: activation (B, K, u, v), gradient (N, B, K, u, v) -> (N, B, K)."""
        return gradient.mean(dim=(-2, -1))
