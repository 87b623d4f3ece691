"""Gradient variants of Grad-CAM: each overrides the gradient base's ``weights`` (and nothing else).

=================  ====================================================  ================
method             map before the ReLU                                   weights shape
=================  ====================================================  ================
Grad-CAM           sum_k mean_ij(g_k) A_k                                (N, B, K)
Grad-CAM++         sum_k [sum_ij alpha_kij ReLU(g_kij)] A_k              (N, B, K)
XGrad-CAM          sum_k [sum_ij g_kij A_kij / sum_ij A_kij] A_k         (N, B, K)
HiResCAM           sum_k g_k ⊙ A_k                                       (N, B, K, u, v)
LayerCAM           sum_k ReLU(g_k) ⊙ A_k                                 (N, B, K, u, v)
Eigen-Grad-CAM     (g ⊙ A) projected on its first principal component    (N, B, K, u, v)
=================  ====================================================  ================

``g = dy/dA`` is the gradient of the target's score at the layer, ``A`` its activation
(B, K, u, v); a token layer is laid on its grid first, so (N, B, K, u, v) element-wise weights
are per token. The base (``core.py``) combines the weights with ``A``, applies the ReLU
(``relu=False`` keeps the signed map), upsamples and normalises, and fills ``res.weights``
with the per-channel mean gradient (Grad-CAM's alpha) for every method.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .gradcam import GradCAM

__all__ = ["GradCAMPlusPlus", "XGradCAM", "HiResCAM", "LayerCAM", "EigenGradCAM", "first_component", "safe_div"]


def safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den where den != 0, else 0 (no eps: exact where defined)."""
    nonzero = den != 0
    return torch.where(nonzero, num / torch.where(nonzero, den, torch.ones_like(den)), torch.zeros_like(num))


class GradCAMPlusPlus(GradCAM):
    r"""Grad-CAM++ (Chattopadhyay et al., "Grad-CAM++: Generalized Gradient-based Visual
    Explanations for Deep Convolutional Networks", WACV 2018, Eq. 19).

    .. math::
        \alpha_{kij} = \frac{g_{kij}^2}{2 g_{kij}^2 + \big(\sum_{ab} A_{kab}\big) g_{kij}^3},\qquad
        w_k = \sum_{ij} \alpha_{kij}\,\mathrm{ReLU}(g_{kij}),\qquad
        L = \mathrm{ReLU}\Big(\sum_k w_k A_k\Big)

    with ``g = dy/dA``. The closed form of the second and third derivatives is the
    paper's for an exponential output ``Y = exp(y)``: they are powers of ``g``.

    Example:
        >>> import torch, torchvision, mmexplain as mx
        >>> model = torchvision.models.resnet18(num_classes=10).eval()
        >>> res = mx.GradCAMPlusPlus(model, "layer4")(torch.rand(2, 3, 64, 64), mx.targets.ClassLogit(3))
        >>> res.maps.shape, res.raw.shape
        (torch.Size([2, 64, 64]), torch.Size([2, 2, 2]))

    Departures from the paper: ``w_k`` uses ``ReLU(dy/dA)`` where the paper writes
    ``ReLU(dY/dA) = exp(y) ReLU(dy/dA)``; the factor ``exp(y)`` is one positive number per
    map, so ``maps`` are unchanged and ``raw`` is not scaled by ``exp(y)`` (as in
    pytorch-grad-cam). ``alpha`` is 0 where its denominator is 0 (no epsilon).
    """

    def weights(self, activation: Tensor, gradient: Tensor) -> Tensor:
        """activation (B, K, u, v), gradient (N, B, K, u, v) -> (N, B, K)."""
        g2 = gradient.pow(2)  # (N, B, K, u, v)
        g3 = g2 * gradient
        total = activation.sum(dim=(-2, -1), keepdim=True)  # (B, K, 1, 1)
        alpha = safe_div(g2, 2 * g2 + total * g3)  # (N, B, K, u, v)
        return (alpha * torch.relu(gradient)).sum(dim=(-2, -1))


class XGradCAM(GradCAM):
    r"""XGrad-CAM (Fu et al., "Axiom-based Grad-CAM: Towards Accurate Visualization and
    Explanation of CNNs", BMVC 2020, Eq. 13).

    .. math:: w_k = \sum_{ij} \frac{A_{kij}}{\sum_{ab} A_{kab}}\, g_{kij},\qquad
              L = \mathrm{ReLU}\Big(\sum_k w_k A_k\Big)

    For a global-average-pooling + linear head the gradient is constant over space and
    ``w_k`` equals Grad-CAM's ``alpha_k``.

    Example:
        >>> import torch, torchvision, mmexplain as mx
        >>> model = torchvision.models.vgg11(num_classes=10).eval()
        >>> mx.XGradCAM(model, "features.19")(torch.rand(1, 3, 64, 64), mx.targets.ClassLogit(0)).raw.shape
        torch.Size([1, 4, 4])

    Departures from the paper: a channel whose activation sums to 0 gets ``w_k = 0``
    (no epsilon in the denominator).
    """

    def weights(self, activation: Tensor, gradient: Tensor) -> Tensor:
        """activation (B, K, u, v), gradient (N, B, K, u, v) -> (N, B, K)."""
        total = activation.sum(dim=(-2, -1))  # (B, K)
        return safe_div((gradient * activation).sum(dim=(-2, -1)), total.expand(gradient.shape[:3]))


class HiResCAM(GradCAM):
    r"""HiResCAM (Draelos & Carin, "Use HiResCAM instead of Grad-CAM for faithful
    explanations of convolutional neural networks", arXiv 2011.08891, 2020).

    .. math:: L = \mathrm{ReLU}\Big(\sum_k g_k \odot A_k\Big)

    the gradient multiplies the activation element-wise, with no spatial mean; for a
    model whose score is a sum over space of a linear function of ``A`` (e.g. a GAP +
    linear head) the map is exactly each position's contribution to the score, and it
    equals Grad-CAM's whenever the gradient is constant over space.

    On a token layer (B, T, D) each patch token is weighted on its own (the grid holds one
    token per position).

    Example:
        >>> import torch, torchvision, mmexplain as mx
        >>> model = torchvision.models.resnet18(num_classes=10).eval()
        >>> res = mx.HiResCAM(model, "layer4")(torch.rand(2, 3, 64, 64), [mx.targets.ClassLogit(c) for c in (1, 2)])
        >>> res.maps.shape   # two targets, one forward
        torch.Size([2, 2, 64, 64])

    Departures from the paper: none in the formula.
    """

    def weights(self, activation: Tensor, gradient: Tensor) -> Tensor:
        """gradient (N, B, K, u, v) -> the same: element-wise weights."""
        return gradient


class LayerCAM(GradCAM):
    r"""LayerCAM (Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation Maps for
    Localization", IEEE TIP 2021, Eq. 5-6).

    .. math:: L = \mathrm{ReLU}\Big(\sum_k \mathrm{ReLU}(g_k) \odot A_k\Big)

    element-wise weights: each position keeps only its positive gradient (on a token
    layer: each patch token).

    Example:
        >>> import torch, torchvision, mmexplain as mx
        >>> model = torchvision.models.vgg11(num_classes=10).eval()
        >>> mx.LayerCAM(model, "features.9")(torch.rand(1, 3, 64, 64), mx.targets.ClassLogit(0)).raw.shape
        torch.Size([1, 16, 16])

    Departures from the paper: the multi-layer fusion with ``tanh`` scaling (Eq. 9) is
    left to the caller: one call explains one layer.
    """

    def weights(self, activation: Tensor, gradient: Tensor) -> Tensor:
        """gradient (N, B, K, u, v) -> ReLU of it: element-wise weights."""
        return torch.relu(gradient)


def first_component(x: Tensor) -> Tensor:
    """The first principal direction over channels of maps centred over positions.

    Args:
        x: (..., K, u, v) maps.

    Returns:
        (..., K) unit vectors ``v`` (first right-singular vector of the (u*v, K) matrix
        with each channel's spatial mean removed), signed so that ``sum_k v_k >= 0``:
        the projection then correlates positively with the centred channel sum.
    """
    lead = x.shape[:-3]
    flat = x.flatten(-2).transpose(-1, -2)  # (..., u*v, K)
    flat = flat.reshape(-1, *flat.shape[-2:]).float()  # (M, u*v, K)
    centred = flat - flat.mean(dim=-2, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)  # vh (M, r, K)
    v = vh[:, 0, :]  # (M, K)
    sign = torch.where(v.sum(dim=-1, keepdim=True) < 0, -1.0, 1.0)  # (M, 1)
    return (v * sign).to(x.dtype).reshape(*lead, x.shape[-3])


class EigenGradCAM(GradCAM):
    r"""Eigen-Grad-CAM: the first principal component of ``g ⊙ A`` (pytorch-grad-cam's
    ``EigenGradCAM``; Eigen-CAM of Muhammad & Yeasin, IJCNN 2020, applied to the
    gradient-weighted activation).

    For each sample and target, ``X = g ⊙ A`` as a (u*v, K) matrix, its columns centred
    over positions; with ``v`` its first right-singular vector,

    .. math:: L = \mathrm{ReLU}\big((X - \bar X)\, v\big)

    Sign convention: the singular vector's sign is arbitrary, and ``v`` is signed so that
    ``sum_k v_k >= 0``, i.e. the projection correlates positively with the centred
    HiResCAM map ``sum_k g_k A_k``. In the base's terms the weights are element-wise,
    ``v_k g_kij``, and ``centred = True`` removes the spatial mean.

    Example:
        >>> import torch, torchvision, mmexplain as mx
        >>> model = torchvision.models.resnet18(num_classes=10).eval()
        >>> mx.EigenGradCAM(model, "layer3")(torch.rand(1, 3, 64, 64), mx.targets.ClassLogit(0)).raw.shape
        torch.Size([1, 4, 4])

    Departures from pytorch-grad-cam: the sign above (pytorch-grad-cam keeps whatever
    sign LAPACK returns, so its map can be the ReLU of the negated projection).
    """

    centred = True

    def weights(self, activation: Tensor, gradient: Tensor) -> Tensor:
        """activation (B, K, u, v), gradient (N, B, K, u, v) -> (N, B, K, u, v) = v_k g_kij."""
        v = first_component(gradient * activation)  # (N, B, K)
        return v[..., None, None] * gradient
