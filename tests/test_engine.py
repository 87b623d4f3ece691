"""The Grad-CAM engine: exact values, cross-checks, identities, hygiene and bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import mmexplain as mx
from conftest import assert_unchanged, snapshot
from mmexplain.methods import upsample_and_normalize

T = mx.targets


# ---------------------------------------------------------------- toy models


class LinearHead(nn.Module):
    """A = input (through an identity 'feat' layer); y_c = sum_kij V[c,k,i,j] A[k,i,j]."""

    def __init__(self, v: torch.Tensor) -> None:
        super().__init__()
        self.feat = nn.Identity()
        self.fc = nn.Linear(v[0].numel(), v.shape[0], bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(v.reshape(v.shape[0], -1))

    def forward(self, x):
        return self.fc(self.feat(x).flatten(1))


A = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [1.0, 0.0]]])  # (K=2, 2, 2)
V = torch.tensor(
    [
        [[[1.0, 1.0], [1.0, 1.0]], [[2.0, -2.0], [4.0, 0.0]]],  # class 0: alpha = (1, 1)
        [[[-1.0, 0.0], [0.0, -1.0]], [[4.0, 4.0], [4.0, 4.0]]],  # class 1: alpha = (-0.5, 4)
    ]
)


class TinyCaptioner(nn.Module):
    """CNN -> GAP -> LSTM decoder fed the image feature at every step: logits (B, T, V)."""

    def __init__(self, vocab: int = 7, hidden: int = 8) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU())
        self.embed = nn.Embedding(vocab, hidden)
        self.lstm = nn.LSTM(hidden + 6, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, images, tokens):
        feat = self.encoder(images).mean(dim=(2, 3))  # (B, 6)
        emb = self.embed(tokens)  # (B, L, H)
        steps = torch.cat([emb, feat[:, None].expand(-1, tokens.shape[1], -1)], dim=-1)
        hidden, _ = self.lstm(steps)
        return self.out(hidden)  # (B, L, V)


class Raises(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        self.conv(x)
        raise RuntimeError("boom after the layer")


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    ).eval()


# ---------------------------------------------------------------- exact values


def test_exact_values_by_hand():
    model = LinearHead(V).eval()
    cam = mx.GradCAM(model, "feat")
    res = cam(A[None], [T.ClassLogit(0), T.ClassLogit(1)], size=(2, 2))
    # class 0: alpha = (mean of V[0,0], mean of V[0,1]) = (1, 1); map = A0 + A1
    assert torch.allclose(res.weights[0, 0], torch.tensor([1.0, 1.0]))
    assert torch.allclose(res.raw[0, 0], torch.tensor([[1.0, 3.0], [4.0, 4.0]]))
    # class 1: alpha = (-0.5, 4); pre = -0.5 A0 + 4 A1 = [[-0.5, 3], [2.5, -2]]
    assert torch.allclose(res.weights[1, 0], torch.tensor([-0.5, 4.0]))
    assert torch.allclose(res.pre_relu[1, 0], torch.tensor([[-0.5, 3.0], [2.5, -2.0]]))
    assert torch.allclose(res.raw[1, 0], torch.tensor([[0.0, 3.0], [2.5, 0.0]]))
    assert torch.allclose(res.maps[1, 0], torch.tensor([[0.0, 1.0], [2.5 / 3.0, 0.0]]))
    # the explained scalar: y_0 = sum V[0] * A = 1+2+3+4 + (0-2+4+0) = 12
    assert torch.allclose(res.scores[:, 0], torch.tensor([12.0, (-1 - 4) + (4 * 2)]))
    assert torch.equal(res.activations[0], A)


def test_upsampling_is_bilinear_then_minmax():
    raw = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    up = F.interpolate(raw[:, None], size=(4, 4), mode="bilinear", align_corners=False)[:, 0]
    expected = (up - up.min()) / (up.max() - up.min())
    assert torch.allclose(upsample_and_normalize(raw, (4, 4)), expected)
    assert torch.equal(upsample_and_normalize(torch.full((2, 3, 3), 5.0), (6, 6)), torch.zeros(2, 6, 6))


# ---------------------------------------------------------------- cross-check with Captum


@pytest.mark.parametrize("arch,layer", [("resnet18", "layer4"), ("vgg11", "features.18")])
def test_matches_captum_layer_gradcam(arch, layer):
    from captum.attr import LayerGradCam

    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, num_classes=10).eval()
    x = torch.rand(3, 3, 64, 64)
    ours = mx.GradCAM(model, layer)(x, T.ClassLogit([1, 4, 7]))
    module = dict(model.named_modules())[layer]
    theirs = LayerGradCam(model, module).attribute(x, target=[1, 4, 7], relu_attributions=True)[:, 0]
    assert ours.raw.abs().max() > 0
    theirs = theirs.detach()
    assert torch.allclose(ours.raw, theirs, atol=1e-6 * float(theirs.abs().max()) + 1e-9)


# ---------------------------------------------------------------- identities


def test_list_of_targets_equals_separate_calls_and_runs_one_forward():
    model = small_cnn()
    calls = []
    model.register_forward_pre_hook(lambda m, a: calls.append(1))
    cam = mx.GradCAM(model, "2")
    x = torch.rand(2, 3, 16, 16)
    targets = [T.ClassLogit(c) for c in range(4)]
    many = cam(x, targets)
    assert len(calls) == 1
    assert many.maps.shape == (4, 2, 16, 16) and len(many) == 4
    for c, target in enumerate(targets):
        one = cam(x, target)
        assert torch.allclose(many[c].maps, one.maps, atol=1e-6)
        assert torch.allclose(many[c].weights, one.weights, atol=1e-7)
        assert torch.allclose(many[c].scores, one.scores)


def test_counterfactual_is_gradcam_of_negated_target():
    model = small_cnn()
    cam = mx.GradCAM(model, "2")
    x = torch.rand(2, 3, 16, 16)
    counter = cam(x, T.Counterfactual(T.ClassLogit(2)))
    negated = cam(x, T.Scalar(lambda out: -out[:, 2]))
    plain = cam(x, T.ClassLogit(2))
    assert torch.allclose(counter.weights, -plain.weights)
    assert torch.allclose(counter.raw, F.relu(-plain.pre_relu))
    assert torch.allclose(counter.maps, negated.maps)


def test_whole_caption_map_is_relu_of_summed_word_maps():
    torch.manual_seed(1)
    model = TinyCaptioner().eval()
    images, tokens = torch.rand(2, 3, 12, 12), torch.tensor([[0, 3, 5, 2, 6], [0, 1, 4, 4, 2]])
    words = tokens[:, 1:]  # word t+1 is predicted at logit position t
    cam = mx.GradCAM(model, "encoder.2")
    per_word = cam((images, tokens), [T.WordLogProb(t, words[:, t]) for t in range(words.shape[1])])
    whole = cam((images, tokens), T.SequenceLogProb(words, positions=list(range(words.shape[1]))))
    assert torch.allclose(per_word.pre_relu.sum(0), whole.pre_relu, atol=1e-6)
    assert torch.allclose(F.relu(per_word.pre_relu.sum(0)), whole.raw, atol=1e-6)
    assert torch.allclose(per_word.scores.sum(0), whole.scores, atol=1e-5)
    assert whole.raw.abs().max() > 0


def test_targets_in_batch_equals_batched_backward():
    torch.manual_seed(2)
    model = TinyCaptioner().eval()
    images, tokens = torch.rand(2, 3, 12, 12), torch.tensor([[0, 3, 5, 2, 6], [0, 1, 4, 4, 2]])
    words = tokens[:, 1:]
    targets = [T.WordLogProb(t, words[:, t]) for t in range(words.shape[1])]
    cam = mx.GradCAM(model, "encoder.2")
    calls = []
    model.encoder.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    batched = cam((images, tokens), targets)
    in_batch = cam((images, tokens.repeat(len(targets), 1)), targets, targets_in_batch=True)
    assert calls == [2, 2]  # the encoder runs once, on the real batch, both ways
    assert in_batch.maps.shape == batched.maps.shape == (4, 2, 12, 12)
    assert in_batch.activations.shape == batched.activations.shape
    assert torch.allclose(in_batch.pre_relu, batched.pre_relu, atol=1e-6)
    assert torch.allclose(in_batch.scores, batched.scores, atol=1e-6)
    assert torch.allclose(in_batch.output, batched.output, atol=1e-6)
    with pytest.raises(ValueError, match="extra_layers"):
        cam((images, tokens.repeat(4, 1)), targets, targets_in_batch=True, extra_layers={"e": "embed"})


def test_map_is_independent_of_the_rest_of_the_batch():
    model = small_cnn()
    cam = mx.GradCAM(model, "2")
    x = torch.rand(4, 3, 16, 16)
    batch = cam(x, T.ClassLogit(1))
    alone = cam(x[2:3], T.ClassLogit(1))
    assert torch.allclose(batch.maps[2], alone.maps[0], atol=1e-6)


# ---------------------------------------------------------------- how it computes


def test_no_graph_before_the_layer_and_no_parameter_gradients():
    model = small_cnn()
    grad_modes = {}
    model[0].register_forward_hook(lambda m, a, out: grad_modes.__setitem__("before", out.requires_grad))
    model[4].register_forward_hook(lambda m, a, out: grad_modes.__setitem__("after", out.requires_grad))
    mx.GradCAM(model, "2")(torch.rand(1, 3, 8, 8), T.ClassLogit(0))
    assert grad_modes == {"before": False, "after": True}
    assert all(p.grad is None for p in model.parameters())


def test_inplace_relu_after_the_layer():
    torch.manual_seed(0)
    model = torchvision.models.vgg11(num_classes=4).eval()
    assert model.features[19].inplace
    res = mx.GradCAM(model, "features.18")(torch.rand(1, 3, 32, 32), T.ClassLogit(0))
    # the activation is the conv output before the in-place ReLU: it has negative values
    assert res.activations.min() < 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_dtypes_and_memory_formats(dtype, channels_last):
    model = small_cnn().to(dtype)
    x = torch.rand(3, 3, 16, 16, dtype=dtype)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    res = mx.GradCAM(model, "2")(x, T.ClassLogit(0))
    assert res.maps.dtype == dtype and res.maps.shape == (3, 16, 16)
    assert torch.isfinite(res.maps).all() and res.maps.max() <= 1 and res.maps.min() >= 0
    reference = mx.GradCAM(small_cnn().double(), "2")(x.double().contiguous(), T.ClassLogit(0))
    assert torch.allclose(res.maps.double(), reference.maps, atol=1e-4)


def test_zero_gradient_gives_zero_maps_not_nan():
    model = small_cnn()
    res = mx.GradCAM(model, "2")(torch.rand(2, 3, 8, 8), T.Scalar(lambda out: out[:, 0] * 0.0))
    assert torch.equal(res.maps, torch.zeros(2, 8, 8))


def test_token_layer_with_reshape_and_extra_layers():
    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patch = nn.Conv2d(3, 4, 4, stride=4)
            self.mix = nn.Linear(4, 4)
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            tokens = self.patch(x).flatten(2).transpose(1, 2)  # (B, N, D)
            tokens = torch.cat([tokens.mean(1, keepdim=True), tokens], dim=1)  # CLS + patches
            return self.head(torch.tanh(self.mix(tokens)).mean(1))

    torch.manual_seed(0)
    model = Tokens().eval()
    x = torch.rand(2, 3, 16, 16)

    def to_grid(tokens):
        return tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], -1, 4, 4)

    with pytest.raises(ValueError, match="reshape"):
        mx.GradCAM(model, "mix")(x, T.ClassLogit(0))
    res = mx.GradCAM(model, "mix", reshape=to_grid)(x, T.ClassLogit(0), extra_layers={"patches": "patch"})
    assert res.raw.shape == (2, 4, 4) and res.maps.shape == (2, 16, 16)
    act, grad = res.extra["patches"]
    assert act.shape == grad.shape == (2, 4, 4, 4)
    # reference: the same gradients by hand
    leaf = {}
    handle = model.mix.register_forward_hook(lambda m, a, out: leaf.setdefault("a", out))
    out = model(x)
    handle.remove()
    g = torch.autograd.grad(out[:, 0].sum(), leaf["a"])[0]
    assert torch.allclose(res.weights, to_grid(g).mean(dim=(2, 3)), atol=1e-6)


# ---------------------------------------------------------------- hygiene


def test_model_left_as_found_after_success():
    model = small_cnn()
    model[0].weight.requires_grad_(False)
    model[2].train()  # a mixed state must be kept as it is
    model[6].weight.grad = torch.ones_like(model[6].weight)
    before = snapshot(model)
    grad_mode = torch.is_grad_enabled()
    mx.GradCAM(model, model[2])(torch.rand(2, 3, 8, 8), [T.ClassLogit(0), T.ClassLogit(1)])
    assert_unchanged(model, before)
    assert torch.is_grad_enabled() == grad_mode


def test_model_left_as_found_when_forward_raises():
    model = Raises().eval()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        mx.GradCAM(model, "conv")(torch.rand(1, 3, 8, 8), T.ClassLogit(0))
    assert_unchanged(model, before)
    assert torch.is_grad_enabled()


def test_model_left_as_found_when_target_raises():
    model = small_cnn()
    before = snapshot(model)

    def bad(out):
        raise KeyError("target failed")

    with torch.no_grad():
        with pytest.raises(KeyError):
            mx.GradCAM(model, "2")(torch.rand(1, 3, 8, 8), T.Scalar(bad))
        assert not torch.is_grad_enabled()
    assert_unchanged(model, before)


def test_works_when_called_under_no_grad():
    model = small_cnn()
    x = torch.rand(1, 3, 8, 8)
    expected = mx.GradCAM(model, "2")(x, T.ClassLogit(0)).maps
    with torch.no_grad():
        got = mx.GradCAM(model, "2")(x, T.ClassLogit(0)).maps
    assert torch.allclose(got, expected)


# ---------------------------------------------------------------- bad input


def test_unknown_layer_lists_nearest_names():
    with pytest.raises(ValueError, match=r"layer 'layer5' not found; nearest: layer"):
        mx.GradCAM(torchvision.models.resnet18(), "layer5")
    with pytest.raises(ValueError, match="not a submodule"):
        mx.GradCAM(small_cnn(), nn.Conv2d(1, 1, 1))
    with pytest.raises(TypeError, match="layer"):
        mx.GradCAM(small_cnn(), 3)


def test_bad_targets_and_inputs_are_named():
    model = small_cnn()
    cam = mx.GradCAM(model, "2")
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="ClassLogit index 9 out of range for 5"):
        cam(x, T.ClassLogit(9))
    with pytest.raises(ValueError, match=r"one scalar per sample, shape \(2,\)"):
        cam(x, T.Scalar(lambda out: out.sum()))
    with pytest.raises(ValueError, match="does not depend"):
        cam(x, T.Scalar(lambda out: out.detach()[:, 0]))
    with pytest.raises(ValueError, match="empty"):
        cam(x, [])
    with pytest.raises(TypeError, match=r"targets\[1\]"):
        cam(x, [T.ClassLogit(0), "cat"])
    with pytest.raises(TypeError, match="inputs"):
        cam(object(), T.ClassLogit(0))
    with pytest.raises(ValueError, match=r"expected sequence logits of shape \(B, T, V\)"):
        cam(x, T.WordLogProb(0, 1))  # classifier logits are not a sequence


def test_layer_that_never_runs_or_runs_twice():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.unused = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.conv(self.conv(x)).mean(dim=(2, 3))

    model = Twice().eval()
    with pytest.raises(ValueError, match="did not run"):
        mx.GradCAM(model, "unused")(torch.rand(1, 3, 4, 4), T.ClassLogit(0))
    with pytest.raises(ValueError, match="ran twice"):
        mx.GradCAM(model, "conv")(torch.rand(1, 3, 4, 4), T.ClassLogit(0))
    assert not model.conv._forward_hooks


def test_training_mode_warns():
    model = small_cnn().train()
    with pytest.warns(UserWarning, match="training mode"):
        mx.GradCAM(model, "2")(torch.rand(1, 3, 8, 8), T.ClassLogit(0))
    assert model.training


# ---------------------------------------------------------------- where the tensor is read


def test_input_of_a_module_called_with_a_keyword_tensor():
    class Keyword(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.stem = nn.Conv2d(3, 4, 3, padding=1)
            self.block = Block()
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.block(hidden=torch.relu(self.stem(x))).mean(dim=(2, 3)))

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 1)

        def forward(self, hidden):
            return torch.tanh(self.conv(hidden))

    model = Keyword().eval()
    x = torch.rand(2, 3, 5, 5)
    before = snapshot(model)
    got = mx.GradCAM(model, "block", input=True)(x, T.ClassLogit(1))
    expected = mx.GradCAM(model, "block.conv", input=True)(x, T.ClassLogit(1))  # the same tensor, positionally
    torch.testing.assert_close(got.raw, expected.raw)
    assert_unchanged(model, before)
    with pytest.raises(ValueError, match="call"):
        mx.GradCAM(model, "block", call=True)
    with pytest.raises(TypeError, match="input"):
        mx.GradCAM(model, "block", input=1)
