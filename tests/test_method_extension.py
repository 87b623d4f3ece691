"""The two public bases' extension point: a method overrides ``weights`` only.

Grad-CAM++ and HiResCAM (gradient base), a forward-only Score-CAM (perturbation base)
and HiResCAM on a token layer are written here as small subclasses and checked against
values computed by hand (numpy, from the closed-form gradient of a fixed-weight toy
model), so the combination, ReLU flag, token grid and forward-only path are each pinned down.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import mmexplain as mx
from conftest import TinyViT, drop_cls

# ------------------------------------------------------------------ a fixed-weight toy model
# A = conv1x1(x): K=2 channels on a 2x2 grid; y = sum_k c_k sum_ij A_kij^2, so dy/dA = 2 c_k A.
C = (1.0, -0.5)


class Squares(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=True)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[[[1.0]]], [[[-2.0]]]]))
            self.conv.bias.copy_(torch.tensor([0.5, 1.0]))

    def forward(self, x):  # x (B, 1, 2, 2) -> (B, 1)
        a = self.conv(x)  # (B, 2, 2, 2)
        c = torch.tensor(C).view(1, 2, 1, 1)
        return (c * a * a).sum(dim=(1, 2, 3))[:, None]


X = torch.tensor([[[[1.0, 2.0], [0.0, -1.0]]]])  # (1, 1, 2, 2)


def _activation_np() -> np.ndarray:
    x = X[0, 0].numpy()
    return np.stack([1.0 * x + 0.5, -2.0 * x + 1.0])  # (K, u, v)


def _gradient_np() -> np.ndarray:
    return 2 * np.asarray(C)[:, None, None] * _activation_np()  # (K, u, v)


def _normalize(m: np.ndarray) -> np.ndarray:
    span = m.max() - m.min()
    return np.zeros_like(m) if span == 0 else (m - m.min()) / span


# ------------------------------------------------------------------ the subclasses under test
class GradCAMPlusPlus(mx.methods.GradientMethod):
    """alpha_ij = g^2 / (2 g^2 + (sum_ab A_ab) g^3); w_k = sum_ij alpha_ij ReLU(g_ij)."""

    def weights(self, activation, gradient):
        g2, g3 = gradient.pow(2), gradient.pow(3)
        denom = 2 * g2 + activation.sum(dim=(-2, -1), keepdim=True) * g3  # (N, B, K, u, v)
        alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)), torch.zeros_like(denom))
        return (alpha * torch.relu(gradient)).sum(dim=(-2, -1))  # (N, B, K)


class HiResCAM(mx.methods.GradientMethod):
    """Element-wise: L = sum_k g_k * A_k (no spatial mean)."""

    def weights(self, activation, gradient):
        return gradient  # (N, B, K, u, v)


class TinyScoreCAM(mx.methods.PerturbationMethod):
    """Forward passes only: w_k = score(x * up(norm(A_k)))."""

    def weights(self, activation, run):
        x = run.inputs  # (B, C, H, W)
        flat = activation.flatten(2)
        low, high = flat.amin(-1)[..., None, None], flat.amax(-1)[..., None, None]
        masks = (activation - low) / (high - low).clamp_min(1e-12)  # (B, K, u, v)
        rows = []
        for target in run.targets:
            per_k = [target(self.model(x * masks[:, k : k + 1])) for k in range(masks.shape[1])]
            rows.append(torch.stack(per_k, dim=-1))  # (B, K)
        return torch.stack(rows)  # (N, B, K)


# ------------------------------------------------------------------ tests
def test_gradcam_plus_plus_matches_hand_computed():
    a, g = _activation_np(), _gradient_np()
    denom = 2 * g**2 + a.sum(axis=(1, 2), keepdims=True) * g**3
    alpha = np.where(denom != 0, g**2 / np.where(denom != 0, denom, 1), 0)
    w = (alpha * np.maximum(g, 0)).sum(axis=(1, 2))  # (K,)
    expected = np.maximum((w[:, None, None] * a).sum(0), 0)

    res = GradCAMPlusPlus(Squares().eval(), "conv")(X, mx.targets.ClassLogit(0))
    np.testing.assert_allclose(res.raw[0].numpy(), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(res.maps[0].numpy(), _normalize(expected), atol=1e-6)
    # res.weights stays the per-channel spatial mean of the gradient, whatever the method
    np.testing.assert_allclose(res.weights[0].numpy(), g.mean(axis=(1, 2)), rtol=1e-6)


def test_hirescam_elementwise_matches_hand_computed_and_differs_from_gradcam():
    a, g = _activation_np(), _gradient_np()
    expected = (g * a).sum(0)  # (u, v), may be negative
    model = Squares().eval()
    res = HiResCAM(model, "conv")(X, mx.targets.ClassLogit(0))
    np.testing.assert_allclose(res.pre_relu[0].numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(res.raw[0].numpy(), np.maximum(expected, 0), rtol=1e-6, atol=1e-7)
    gradcam = mx.GradCAM(model, "conv")(X, mx.targets.ClassLogit(0))
    assert not torch.allclose(res.pre_relu, gradcam.pre_relu)  # the gradient varies in space here


def test_hirescam_equals_gradcam_when_the_gradient_is_spatially_constant():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4)).eval()
    x = torch.rand(2, 3, 6, 6)
    targets = [mx.targets.ClassLogit(c) for c in range(4)]
    hires = HiResCAM(model, "1")(x, targets)
    plain = mx.GradCAM(model, "1")(x, targets)
    # GAP + linear: dy/dA_kij = w_k / Z at every ij, so g_k = alpha_k and sum_k g_k A_k = sum_k alpha_k A_k
    torch.testing.assert_close(hires.pre_relu, plain.pre_relu, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hires.maps, plain.maps, rtol=1e-5, atol=1e-5)


def test_relu_flag_keeps_negative_evidence():
    expected = (_gradient_np() * _activation_np()).sum(0)
    assert expected.min() < 0  # the check below means something
    res = HiResCAM(Squares().eval(), "conv", relu=False)(X, mx.targets.ClassLogit(0))
    np.testing.assert_allclose(res.raw[0].numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(res.maps[0].numpy(), _normalize(expected), atol=1e-6)
    with pytest.raises(TypeError, match="relu"):
        mx.GradCAM(Squares(), "conv", relu="no")


def test_gradient_free_method_runs_forward_passes_only():
    model = Squares().eval()
    a = _activation_np()
    x = X[0, 0].numpy()
    masks = [(a[k] - a[k].min()) / (a[k].max() - a[k].min()) for k in range(2)]
    scores = []
    for m in masks:  # the toy model by hand on the masked input
        xm = x * m
        am = np.stack([xm + 0.5, -2 * xm + 1.0])
        scores.append(float((np.asarray(C)[:, None, None] * am * am).sum()))
    expected = np.maximum((np.asarray(scores)[:, None, None] * a).sum(0), 0)

    calls = []
    handle = model.conv.register_full_backward_hook(lambda *args: calls.append(1))
    try:
        res = TinyScoreCAM(model, "conv")(X, mx.targets.ClassLogit(0))
    finally:
        handle.remove()
    assert calls == []  # no backward ran
    np.testing.assert_allclose(res.raw[0].numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(res.weights[0].numpy(), scores, rtol=1e-5)
    assert float(res.scores[0]) == pytest.approx(float(model(X)[0, 0].detach()))
    assert not model.conv._forward_hooks and all(p.grad is None for p in model.parameters())
    with torch.inference_mode():  # forward-only methods run under inference mode too
        assert TinyScoreCAM(model, "conv")(X, mx.targets.ClassLogit(0)).raw.shape == (1, 2, 2)


def test_token_layer_is_laid_on_the_grid_before_weights():
    model = TinyViT().eval()
    x = torch.rand(2, 1, 4, 4)
    target = mx.targets.ClassLogit(1)
    acts = {}
    handle = model.block.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    try:
        out = model(x)
    finally:
        handle.remove()
    (g,) = torch.autograd.grad(out[:, 1].sum(), acts["a"])  # (B, 5, 3) reference gradient
    expected = (g * acts["a"]).sum(-1)[:, 1:].reshape(2, 2, 2).detach()  # per patch token, CLS dropped

    seen = []

    class Spy(HiResCAM):
        def weights(self, activation, gradient):
            seen.append((activation.shape, gradient.shape))
            return super().weights(activation, gradient)

    res = Spy(model, "block", reshape=drop_cls, relu=False)(x, target)
    assert seen == [((2, 3, 2, 2), (1, 2, 3, 2, 2))]  # the method saw a grid, never tokens
    torch.testing.assert_close(res.raw, expected, rtol=1e-5, atol=1e-6)
    assert res.weights.shape == (2, 3) and res.activations.shape == (2, 3, 2, 2)


def test_a_wrong_weight_shape_names_the_method():
    class Broken(mx.GradCAM):
        def weights(self, activation, gradient):
            return gradient[..., :1]  # (N, B, K, u, 1)

    with pytest.raises(ValueError, match="Broken.weights returned shape"):
        Broken(Squares().eval(), "conv")(X, mx.targets.ClassLogit(0))


def test_bad_size_is_refused():
    for size in ((0, 0), (-1, 4), (2.0, 3), "64"):
        with pytest.raises(ValueError, match="size"):
            mx.GradCAM(Squares().eval(), "conv")(X, mx.targets.ClassLogit(0), size=size)
