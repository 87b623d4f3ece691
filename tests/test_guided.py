"""Guided Backprop, Deconvolution, Guided Grad-CAM: exact rules, functional ReLUs, hygiene."""

from __future__ import annotations

import copy
import warnings

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
    got = mx.GuidedGradCAM(convnet, "conv2")(images, target).pixels  # (B, C, H, W)
    guided = mx.GuidedBackprop(convnet)(images, target)  # (B, C, H, W)
    res = mx.GradCAM(convnet, "conv2")(images, target)
    maps = upsample_and_normalize(res.raw, images.shape[-2:])  # (B, H, W)
    assert got.shape == images.shape
    assert (maps.flatten(1).amax(1) > 0).all() and (maps < 0.5).any()  # maps that weight pixels
    torch.testing.assert_close(got, guided * maps[:, None])


def test_guided_gradcam_list_of_targets_equals_separate_calls(convnet, images) -> None:
    ggc = mx.GuidedGradCAM(convnet, "conv1")
    targets = [mx.targets.ClassLogit(0), mx.targets.ClassLogit(2)]
    many = ggc(images, targets)
    assert many.pixels.shape == (2, *images.shape)  # (N, B, C, H, W)
    for n, t in enumerate(targets):
        torch.testing.assert_close(many.pixels[n], ggc(images, t).pixels)
        torch.testing.assert_close(many[n].pixels, many.pixels[n])


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
    out = getattr(out, "pixels", out)  # Guided Grad-CAM: a CAMResult with the pixel map
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


# ----------------------------------------------------------------------------- ReLU6, hardtanh(0, m), LeakyReLU
# x = (1, 2) -> z = W1 x = (8, 3, -3, 1): above 6, inside (0, 6), negative, inside; w2 = (1, 2, 3, -1).
W1 = torch.tensor([[4.0, 2.0], [1.0, 1.0], [-1.0, -1.0], [1.0, 0.0]])
W2 = torch.tensor([[1.0, 2.0, 3.0, -1.0]])


class Unit(nn.Module):
    """x (B, 1, 1, 2) -> w2 . f(W1 x); ``kind`` picks how the ReLU-like unit f is called."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, 4, bias=False)
        self.fc2 = nn.Linear(4, 1, bias=False)
        with torch.no_grad():
            self.fc1.weight.copy_(W1)
            self.fc2.weight.copy_(W2)
        self.kind = kind
        modules = {
            "nn.ReLU6": nn.ReLU6, "nn.ReLU6_inplace": lambda: nn.ReLU6(inplace=True),
            "nn.Hardtanh(0,6)": lambda: nn.Hardtanh(0.0, 6.0), "nn.LeakyReLU": lambda: nn.LeakyReLU(0.1),
            "nn.LeakyReLU_inplace": lambda: nn.LeakyReLU(0.1, inplace=True), "nn.Hardtanh(-1,1)": nn.Hardtanh,
            "nn.SiLU": nn.SiLU,
        }
        self.act = modules[kind]() if kind in modules else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc1(x)  # (B, 1, 1, 4)
        kind = self.kind
        if self.act is not None:
            h = self.act(z)
        elif kind == "F.relu6":
            h = F.relu6(z)
        elif kind == "F.relu6_inplace":
            h = F.relu6(z, inplace=True)
        elif kind == "F.hardtanh(0,6)":
            h = F.hardtanh(z, 0.0, 6.0)
        elif kind == "F.hardtanh_(0,6)":
            h = F.hardtanh_(z, 0.0, 6.0)
        elif kind == "F.leaky_relu":
            h = F.leaky_relu(z, 0.1)
        elif kind == "F.leaky_relu_":
            h = F.leaky_relu_(z, 0.1)
        else:
            raise AssertionError(kind)
        return self.fc2(h).flatten(1)  # (B, 1)


RELU6_KINDS = ["nn.ReLU6", "nn.ReLU6_inplace", "nn.Hardtanh(0,6)", "F.relu6", "F.relu6_inplace", "F.hardtanh(0,6)", "F.hardtanh_(0,6)"]
LEAKY_KINDS = ["nn.LeakyReLU", "nn.LeakyReLU_inplace", "F.leaky_relu", "F.leaky_relu_"]
X12 = torch.tensor([1.0, 2.0]).view(1, 1, 1, 2)


def _plain_input_gradient(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(target(model(leaf)).sum(), leaf)
    return grad


@pytest.mark.parametrize("kind", RELU6_KINDS)
def test_relu6_rules_by_hand(kind) -> None:
    """z = (8, 3, -3, 1): ReLU6 passes where 0 < z < 6, i.e. units 2 and 4.

    plain:   w2 [0<z<6]          = (0, 2, 0, -1)  -> dx = W1^T (.) = (2 - 1, 2) = (1, 2)
    guided:  relu(w2) [0<z<6]    = (0, 2, 0, 0)   -> (2, 2)
    deconv:  relu(w2)            = (1, 2, 3, 0)   -> (4 + 2 - 3, 2 + 2 - 3) = (3, 1)
    """
    model = Unit(kind).eval()
    target = lambda out: out[:, 0]  # noqa: E731
    torch.testing.assert_close(mx.GuidedBackprop(model)(X12, target).view(2), torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(mx.Deconvolution(model)(X12, target).view(2), torch.tensor([3.0, 1.0]))
    torch.testing.assert_close(_plain_input_gradient(model, X12, target).view(2), torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize("kind", LEAKY_KINDS)
def test_leaky_relu_rules_by_hand(kind) -> None:
    """Slope 0.1, z = (8, 3, -3, 1): f'(z) = (1, 1, .1, 1); the leak is kept by the guided rule.

    plain:   w2 f'(z)            = (1, 2, .3, -1) -> dx = (4 + 2 - .3 - 1, 2 + 2 - .3) = (4.7, 3.7)
    guided:  relu(w2) f'(z)      = (1, 2, .3, 0)  -> (5.7, 3.7)
    deconv:  relu(w2)            = (1, 2, 3, 0)   -> (3, 1)
    """
    model = Unit(kind).eval()
    target = lambda out: out[:, 0]  # noqa: E731
    torch.testing.assert_close(mx.GuidedBackprop(model)(X12, target).view(2), torch.tensor([5.7, 3.7]))
    torch.testing.assert_close(mx.Deconvolution(model)(X12, target).view(2), torch.tensor([3.0, 1.0]))
    torch.testing.assert_close(_plain_input_gradient(model, X12, target).view(2), torch.tensor([4.7, 3.7]))


def test_guided_relu6_equals_a_hand_written_hook_rule() -> None:
    """The classic way, by hand: a full backward hook on each (non-inplace) ReLU6 that keeps the
    positive part of its gradient (grad_input = grad_out [0 < x < 6] already)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU6(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU6(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)).eval()
    with torch.no_grad():
        model[0].weight.mul_(20.0)  # some inputs above 6, so the upper clip matters
    x = torch.rand(2, 3, 8, 8)
    hooks = [model[i].register_full_backward_hook(lambda m, gi, go: (gi[0].clamp(min=0),)) for i in (1, 3)]
    try:
        expected = _plain_input_gradient(model, x, mx.targets.ClassLogit(2))
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        assert (model[:2](x) == 6).any()
    got = mx.GuidedBackprop(model)(x, mx.targets.ClassLogit(2))
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, _plain_input_gradient(model, x, mx.targets.ClassLogit(2)))


def test_guided_on_mobilenet_v2_differs_from_the_plain_gradient() -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None, num_classes=10).eval()  # ReLU6(inplace=True) modules
    x = torch.rand(1, 3, 32, 32)
    target = mx.targets.ClassLogit(4)
    before = _state(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ReLU6 units are met: no warning
        guided = mx.GuidedBackprop(model)(x, target)
        deconv = mx.Deconvolution(model)(x, target)
    plain = _plain_input_gradient(model, x, target)
    _assert_same_state(before, _state(model))
    scale = plain.abs().max()  # random-init input gradients are ~1e-12: compare relative to it
    assert scale > 0 and guided.abs().max() > 0
    assert (guided - plain).abs().max() > 0.1 * scale and (deconv - plain).abs().max() > 0.1 * scale
    # the same, by hand: backward hooks on out-of-place copies of every ReLU6
    ref = copy.deepcopy(model)
    hooks = []
    for m in ref.modules():
        if isinstance(m, nn.ReLU6):
            m.inplace = False
            hooks.append(m.register_full_backward_hook(lambda m, gi, go: (gi[0].clamp(min=0),)))
    expected = _plain_input_gradient(ref, x, target)
    torch.testing.assert_close(guided / scale, expected / scale, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["nn.SiLU", "nn.Hardtanh(-1,1)"])
@pytest.mark.parametrize("method", [mx.GuidedBackprop, mx.Deconvolution])
def test_no_relu_like_unit_warns_and_returns_the_plain_gradient(kind, method) -> None:
    model = Unit(kind).eval()  # SiLU; a hardtanh that is not a clipped ReLU
    target = lambda out: out[:, 0]  # noqa: E731
    with pytest.warns(UserWarning, match=r"no ReLU-like unit .* rule is undefined there .* plain input gradient"):
        got = method(model)(X12, target)
    torch.testing.assert_close(got, _plain_input_gradient(model, X12, target))


def test_guided_gradcam_warns_on_a_silu_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    with pytest.warns(UserWarning, match="GuidedBackprop: the model ran no ReLU-like unit"):
        mx.GuidedGradCAM(model, "1")(torch.rand(1, 3, 6, 6), mx.targets.ClassLogit(1))
