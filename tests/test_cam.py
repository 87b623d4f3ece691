"""CAM (Zhou et al. 2016) and its equivalence with Grad-CAM on GAP + linear models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mmexplain as mx


class GapNet(nn.Module):
    """conv -> ReLU -> conv -> ReLU -> global average pooling -> linear (CAM-compatible)."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.features(x)  # (B, 8, H/2, W/2)
        return self.fc(self.pool(a).flatten(1))  # (B, classes)


@pytest.fixture
def model() -> GapNet:
    torch.manual_seed(0)
    return GapNet().eval()


@pytest.fixture
def images() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(3, 3, 16, 20)


def test_cam_by_hand() -> None:
    """A fixed 1-channel-pair model: M = w_c1 A^1 + w_c2 A^2 computed by hand."""
    model = GapNet(classes=2).eval()
    x = torch.rand(1, 3, 4, 4)
    res = mx.CAM(model, "features", "fc", relu=False)(x, 1, size=(2, 2))
    a = model.features(x)[0]  # (8, 2, 2)
    expected = (model.fc.weight[1][:, None, None] * a).sum(0)  # (2, 2)
    torch.testing.assert_close(res.pre_relu[0], expected.detach())
    torch.testing.assert_close(res.raw, res.pre_relu)  # relu=False keeps the sign
    lo, hi = expected.min(), expected.max()
    torch.testing.assert_close(res.maps[0], ((expected - lo) / (hi - lo)).detach())
    torch.testing.assert_close(res.scores, model(x)[:, 1].detach())


def test_cam_equals_gradcam_after_normalisation(model, images) -> None:
    classes = [0, 2, 4]  # one class per sample
    cam = mx.CAM(model, "features", "fc")(images, classes)
    grad = mx.GradCAM(model, "features")(images, mx.targets.ClassLogit(classes))
    z = cam.activations.shape[-2] * cam.activations.shape[-1]  # u * v
    assert cam.maps.shape == grad.maps.shape == (3, 16, 20)
    assert (cam.raw.flatten(1).amax(1) > 0).all()  # non-trivial maps
    torch.testing.assert_close(grad.weights, cam.weights / z)  # alpha_k = w_k^c / Z
    torch.testing.assert_close(grad.raw, cam.raw / z)
    torch.testing.assert_close(grad.maps, cam.maps, atol=1e-5, rtol=0)
    torch.testing.assert_close(cam.weights, model.fc.weight.detach()[classes])
    torch.testing.assert_close(cam.scores, grad.scores)


def test_cam_of_one_class_and_module_arguments(model, images) -> None:
    res = mx.CAM(model, model.features, model.fc)(images, 2)
    assert res.weights.shape == (3, 8) and res.raw.shape == (3, 8, 10) and res.activations.shape == (3, 8, 8, 10)
    assert res.maps.min() >= 0 and res.maps.max() <= 1
    torch.testing.assert_close(res.weights, model.fc.weight.detach()[2].expand(3, -1))


def test_cam_is_not_the_plain_activation_mean(model, images) -> None:
    """Guards against a CAM that ignores the class weights."""
    a = mx.CAM(model, "features", "fc")(images, 0).maps
    b = mx.CAM(model, "features", "fc")(images, 1).maps
    assert not torch.allclose(a, b)


def test_cam_leaves_model_untouched(model, images) -> None:
    hooks = [len(m._forward_hooks) for m in model.modules()]
    params = [p.clone() for p in model.parameters()]
    mx.CAM(model, "features", "fc")(images, 1)
    with pytest.raises(ValueError, match="out of range"):
        mx.CAM(model, "features", "fc")(images, 99)
    assert hooks == [len(m._forward_hooks) for m in model.modules()]
    assert all(torch.equal(p, q) for p, q in zip(params, model.parameters()))
    assert all(p.grad is None for p in model.parameters())


def test_cam_bad_arguments(model, images) -> None:
    with pytest.raises(TypeError, match="fc must be an nn.Linear"):
        mx.CAM(model, "features", "features")
    with pytest.raises(ValueError, match="not found"):
        mx.CAM(model, "featurez", "fc")
    with pytest.raises(ValueError, match=r"\(B, 8, u, v\)"):
        mx.CAM(model, "features.0", "fc")(images, 0)  # 6 channels, fc takes 8
