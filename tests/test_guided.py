"""Guided Backprop, Deconvolution, Guided Grad-CAM: exact rules, functional ReLUs, hygiene."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mmexplain as mx
from mmexplain.methods import upsample_and_normalize


# ----------------------------------------------------------------------------- fixtures
class Tiny(nn.Module):
    """x (B, 2) -> W1 x -> ReLU -> w2 . h: hand-checkable backward rules."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, 2, bias=False)
        self.fc2 = nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.tensor([[1.0, -1.0], [2.0, 1.0]]))
            self.fc2.weight.copy_(torch.tensor([[-3.0, 0.5]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 1, 2) image-shaped
        h = torch.relu(self.fc1(x))  # (B, 1, 1, 2)
        return self.fc2(h).flatten(1)  # (B, 1)


class ConvNet(nn.Module):
    """Conv-ReLU-Conv-ReLU-GAP-Linear; `relu` picks how every ReLU is called."""

    def __init__(self, relu: str = "module") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)
        self.act = nn.ReLU()
        self.act_inplace = nn.ReLU(inplace=True)
        self.relu = relu

    def _relu(self, h: torch.Tensor) -> torch.Tensor:
        kind = self.relu
        if kind == "module":
            return self.act(h)
        if kind == "module_inplace":
            return self.act_inplace(h)
        if kind == "F.relu":
            return F.relu(h)
        if kind == "F.relu_inplace":
            return F.relu(h, inplace=True)
        if kind == "torch.relu":
            return torch.relu(h)
        if kind == "Tensor.relu":
            return h.relu()
        if kind == "Tensor.relu_":
            h.relu_()
            return h
        if kind == "torch.relu_":
            return torch.relu_(h)
        raise AssertionError(kind)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self._relu(self.conv1(x))  # (B, 6, H, W)
        h = self._relu(self.conv2(h))  # (B, 8, H, W)
        return self.fc(h.mean(dim=(2, 3)))  # (B, 4)


def _state(model: nn.Module) -> dict:
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "weights": {k: v.clone() for k, v in model.state_dict().items()},
        "hooks": [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks), len(m._backward_pre_hooks))
            for m in model.modules()
        ],
    }


def _assert_same_state(before: dict, after: dict) -> None:
    assert before["training"] == after["training"]
    assert before["requires_grad"] == after["requires_grad"]
    assert before["hooks"] == after["hooks"]
    assert len(before["grad"]) == len(after["grad"])
    for a, b in zip(before["grad"], after["grad"]):
        assert (a is None and b is None) or torch.equal(a, b)
    for k, v in before["weights"].items():
        assert torch.equal(v, after["weights"][k]), k


@pytest.fixture
def convnet() -> ConvNet:
    torch.manual_seed(0)
    return ConvNet().eval()


@pytest.fixture
def images() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(2, 3, 12, 12)


# ----------------------------------------------------------------------------- exact rules
def test_guided_relu_backward_rule_by_hand() -> None:
    """Hand-computed. W1 = [[1, -1], [2, 1]], y = w2 . ReLU(z), z = W1 x.

    x = (1, 2): z = (-1, 4), unit 1 off.  x = (1, -1): z = (2, 1), both on.
    w2 = (-3, .5): guided passes grad_out * [z > 0] * [grad_out > 0] = (0, .5) for both
    inputs -> dx = W1^T (0, .5) = (1, .5); deconvolution passes relu(grad_out) = (0, .5)
    too. (The plain gradient at x = (1, -1) would be W1^T (-3, .5) = (-2, 3.5).)
    w2 = (3, .5): at x = (1, 2) guided blocks the inactive unit -> (1, .5), deconvolution
    does not -> W1^T (3, .5) = (4, -2.5); at x = (1, -1) both give (4, -2.5).
    """
    model = Tiny().eval()
    target = lambda out: out[:, 0]  # noqa: E731
    x = torch.tensor([[1.0, 2.0], [1.0, -1.0]]).view(2, 1, 1, 2)
    guided = mx.GuidedBackprop(model)(x, target).view(2, 2)
    deconv = mx.Deconvolution(model)(x, target).view(2, 2)
    torch.testing.assert_close(guided, torch.tensor([[1.0, 0.5], [1.0, 0.5]]))
    torch.testing.assert_close(deconv, torch.tensor([[1.0, 0.5], [1.0, 0.5]]))

    # a case where guided and deconvolution differ: unit 1 inactive but its gradient positive
    with torch.no_grad():
        model.fc2.weight.copy_(torch.tensor([[3.0, 0.5]]))
    guided = mx.GuidedBackprop(model)(x, target).view(2, 2)
    deconv = mx.Deconvolution(model)(x, target).view(2, 2)
    # x=(1,2): z=(-1,4); guided passes only unit 2: W1^T (0, .5) = (1, .5)
    # deconv passes both (grads 3, .5 > 0): W1^T (3, .5) = (3 + 1, -3 + .5) = (4, -2.5)
    # x=(1,-1): z=(2,1); both positive and both grads positive: W1^T (3, .5) = (4, -2.5) for both
    torch.testing.assert_close(guided, torch.tensor([[1.0, 0.5], [4.0, -2.5]]))
    torch.testing.assert_close(deconv, torch.tensor([[4.0, -2.5], [4.0, -2.5]]))


def test_guided_matches_independent_hook_implementation(convnet, images) -> None:
    """Cross-check: module backward hooks implementing the guided rule (the classic way)."""

    def guided_hook(module, grad_input, grad_output):
        return (grad_input[0].clamp(min=0),)  # grad_input = grad_out * [x > 0] already

    handles = [convnet.act.register_full_backward_hook(guided_hook)]
    try:
        x = images.clone().requires_grad_(True)
        (expected,) = torch.autograd.grad(convnet(x)[:, 2].sum(), x)
    finally:
        for h in handles:
            h.remove()
    got = mx.GuidedBackprop(convnet)(images, mx.targets.ClassLogit(2))
    torch.testing.assert_close(got, expected)
    x = images.clone().requires_grad_(True)
    (plain,) = torch.autograd.grad(convnet(x)[:, 2].sum(), x)
    assert not torch.allclose(got, plain)  # the rule actually changed something


@pytest.mark.parametrize(
    "relu",
    ["module_inplace", "F.relu", "F.relu_inplace", "torch.relu", "Tensor.relu", "Tensor.relu_", "torch.relu_"],
)
@pytest.mark.parametrize("method", [mx.GuidedBackprop, mx.Deconvolution])
def test_functional_relus_are_covered(relu, method, convnet, images) -> None:
    other = ConvNet(relu).eval()
    other.load_state_dict(convnet.state_dict())
    target = mx.targets.ClassLogit(1)
    expected = method(convnet)(images, target)  # nn.ReLU modules
    got = method(other)(images, target)
    torch.testing.assert_close(got, expected)
    # and the functional model's forward is unchanged by the mode
    with torch.no_grad():
        torch.testing.assert_close(other(images), convnet(images))


def test_deconvolution_differs_from_guided(convnet, images) -> None:
    target = mx.targets.ClassLogit(0)
    assert not torch.allclose(mx.Deconvolution(convnet)(images, target), mx.GuidedBackprop(convnet)(images, target))


# ----------------------------------------------------------------------------- Guided Grad-CAM
def test_guided_gradcam_is_guided_backprop_times_upsampled_gradcam(convnet, images) -> None:
    target = mx.targets.ClassLogit(2)
    got = mx.GuidedGradCAM(convnet, "conv2")(images, target)  # (B, C, H, W)
    guided = mx.GuidedBackprop(convnet)(images, target)  # (B, C, H, W)
    res = mx.GradCAM(convnet, "conv2")(images, target)
    maps = upsample_and_normalize(res.raw, images.shape[-2:])  # (B, H, W)
    assert got.shape == images.shape
    assert (maps.flatten(1).amax(1) > 0).all() and (maps < 0.5).any()  # maps that weight pixels
    torch.testing.assert_close(got, guided * maps[:, None])


def test_guided_gradcam_list_of_targets_equals_separate_calls(convnet, images) -> None:
    ggc = mx.GuidedGradCAM(convnet, "conv1")
    targets = [mx.targets.ClassLogit(0), mx.targets.ClassLogit(2)]
    many = ggc(images, targets)  # (N, B, C, H, W)
    assert many.shape == (2, *images.shape)
    for n, t in enumerate(targets):
        torch.testing.assert_close(many[n], ggc(images, t))


# ----------------------------------------------------------------------------- inputs
class TwoInput(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, mask: torch.Tensor, image: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return self.net(image * mask) * scale


def test_tuple_and_dict_inputs_and_image_key(convnet, images) -> None:
    model = TwoInput(convnet).eval()
    mask = torch.ones(2, 1, 12, 12)  # floating 4-D too: the first one is taken by default
    target = mx.targets.ClassLogit(2)
    expected = mx.GuidedBackprop(convnet)(images, target)
    by_index = mx.GuidedBackprop(model)((mask, images), target, image_key=1)
    by_name = mx.GuidedBackprop(model)({"mask": mask, "image": images, "scale": 1.0}, target, image_key="image")
    torch.testing.assert_close(by_index, expected)
    torch.testing.assert_close(by_name, expected)
    default = mx.GuidedBackprop(model)((mask, images), target)  # gradient w.r.t. mask
    assert default.shape == mask.shape
    with pytest.raises(ValueError, match="image_key 'img' not in inputs"):
        mx.GuidedBackprop(model)({"mask": mask, "image": images}, target, image_key="img")
    with pytest.raises(ValueError, match="inputs"):
        mx.GuidedBackprop(convnet)(images[0], target)  # 3-D


def test_inputs_left_untouched(convnet, images) -> None:
    before = images.clone()
    mx.GuidedBackprop(ConvNet("Tensor.relu_").eval())(images, mx.targets.ClassLogit(0))
    assert torch.equal(images, before) and not images.requires_grad and images.grad is None


def test_bad_target_errors(convnet, images) -> None:
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        mx.GuidedBackprop(convnet)(images, lambda out: out)  # (B, 4)
    with pytest.raises(ValueError, match="does not depend"):
        mx.GuidedBackprop(convnet)(images, lambda out: out.detach()[:, 0])
    with pytest.raises(TypeError, match="callable"):
        mx.GuidedBackprop(convnet)(images, 3)


# ----------------------------------------------------------------------------- hygiene
def _plain_relu_rule_active() -> bool:
    """True when F.relu has its ordinary gradient (no guided mode left behind)."""
    x = torch.tensor([-1.0, 2.0], requires_grad=True)
    (g,) = torch.autograd.grad(F.relu(-x).sum(), x)  # d/dx relu(-x) = -[x < 0]
    return torch.equal(g, torch.tensor([-1.0, 0.0]))


@pytest.mark.filterwarnings("ignore:model is in training mode")
@pytest.mark.parametrize("method", ["guided", "deconv", "ggc"])
def test_model_untouched_after_success_and_after_exception(method, images) -> None:
    torch.manual_seed(0)
    model = ConvNet("F.relu")
    model.train()
    model.conv1.eval()  # mixed flags must survive
    model.conv1.weight.requires_grad_(False)
    model.fc.weight.grad = torch.full_like(model.fc.weight, 7.0)  # a user's existing grad
    make = {
        "guided": lambda: mx.GuidedBackprop(model),
        "deconv": lambda: mx.Deconvolution(model),
        "ggc": lambda: mx.GuidedGradCAM(model, "conv2"),
    }[method]
    before = _state(model)
    out = make()(images, mx.targets.ClassLogit(1))
    assert out.shape == images.shape
    _assert_same_state(before, _state(model))
    assert _plain_relu_rule_active()

    def boom(output):
        raise RuntimeError("target failed")

    with pytest.raises(RuntimeError, match="target failed"):
        make()(images, boom)
    _assert_same_state(before, _state(model))
    assert _plain_relu_rule_active()


def test_training_mode_warns_once(images) -> None:
    torch.manual_seed(0)
    model = ConvNet()  # training mode
    for make in (lambda: mx.GuidedBackprop(model), lambda: mx.GuidedGradCAM(model, "conv2")):
        with pytest.warns(UserWarning, match="training mode") as record:
            make()(images, mx.targets.ClassLogit(1))
        assert len(record) == 1


def test_model_forward_raising_leaves_no_mode(images) -> None:
    class Raises(ConvNet):
        def forward(self, x):
            F.relu(x)
            raise KeyError("forward failed")

    model = Raises().eval()
    before = _state(model)
    with pytest.raises(KeyError):
        mx.GuidedBackprop(model)(images, mx.targets.ClassLogit(0))
    _assert_same_state(before, _state(model))
    assert _plain_relu_rule_active()
