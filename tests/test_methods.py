"""The CAM family and the gradient-free methods: hand values, identities, peers, hooks, hygiene.

Three kinds of checks (STYLE.md 13):
- exact values on a fixed-weight toy model (closed-form gradient, numpy by hand);
- identities (HiResCAM and XGrad-CAM equal Grad-CAM when the gradient is constant in space);
- cross-checks on random-weight torchvision ResNet-18 and VGG-11 against pytorch-grad-cam
  and torchcam, each convention difference named where it is bridged.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import mmexplain as mx
from conftest import TinyViT, assert_unchanged, drop_cls, feature_zeroed, snapshot
from mmexplain.methods import upsample_and_normalize

T = mx.targets
GRADIENT = [mx.GradCAM, mx.GradCAMPlusPlus, mx.XGradCAM, mx.HiResCAM, mx.LayerCAM, mx.EigenGradCAM]
FORWARD_ONLY = [mx.ScoreCAM, mx.AblationCAM, mx.EigenCAM]
CHANNEL_METHODS = GRADIENT + FORWARD_ONLY


# ------------------------------------------------------------------ a fixed-weight toy model
# A = conv1x1(x): K=2 channels on a 2x2 grid; y = sum_k c_k sum_ij A_kij^2, so dy/dA = 2 c_k A.
C = np.array([1.0, 0.25])


class Squares(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=True)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[[[1.0]]], [[[-2.0]]]]))
            self.conv.bias.copy_(torch.tensor([0.5, 1.0]))

    def forward(self, x):  # x (B, 1, 2, 2) -> (B, 1)
        a = self.conv(x)  # (B, 2, 2, 2)
        c = torch.tensor(C, dtype=x.dtype).view(1, 2, 1, 1)
        return (c * a * a).sum(dim=(1, 2, 3))[:, None]


X = torch.tensor([[[[1.0, 2.0], [0.0, -1.0]]]])  # (1, 1, 2, 2)
A = np.stack([X[0, 0].numpy() + 0.5, -2 * X[0, 0].numpy() + 1.0])  # (K, u, v) = [[1.5, 2.5], [.5, -.5]], [[-1, -3], [1, 3]]
G = 2 * C[:, None, None] * A  # (K, u, v) dy/dA
Y = float((C[:, None, None] * A * A).sum())  # 9 + 0.25 * 20 = 14


def _toy_score(x: np.ndarray) -> float:
    """The toy model by hand on a (2, 2) input."""
    a = np.stack([x + 0.5, -2 * x + 1.0])
    return float((C[:, None, None] * a * a).sum())


def _norm(m: np.ndarray) -> np.ndarray:
    span = m.max() - m.min()
    return np.zeros_like(m) if span == 0 else (m - m.min()) / span


def _first_component(x: np.ndarray) -> np.ndarray:
    """numpy: projection of the centred (uv, K) matrix on its first right-singular vector, signed sum(v) >= 0."""
    flat = x.reshape(x.shape[0], -1).T  # (uv, K)
    flat = flat - flat.mean(axis=0)
    v = np.linalg.svd(flat)[2][0]
    v = -v if v.sum() < 0 else v
    return (flat @ v).reshape(x.shape[1:])


def _hand_map(w: np.ndarray) -> np.ndarray:
    """ReLU(sum_k w_k A_k) for channel (K,) or element-wise (K, u, v) weights."""
    w = w[:, None, None] if w.ndim == 1 else w
    return np.maximum((w * A).sum(0), 0)


def _ablation_weights() -> np.ndarray:
    # zeroing channel k removes c_k sum A_k^2 from y: w_k = c_k S_k / y
    return C * (A * A).sum(axis=(1, 2)) / Y


def _score_cam_scores() -> np.ndarray:
    masks = [_norm(A[k]) for k in range(2)]  # layer and image are both 2x2: no upsampling
    return np.array([_toy_score(X[0, 0].numpy() * m) for m in masks])


def _softmax(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max())
    return e / e.sum()


HAND = {
    "gradcam++": lambda: _hand_map(
        (np.where(2 * G**2 + A.sum((1, 2), keepdims=True) * G**3 != 0,
                  G**2 / (2 * G**2 + A.sum((1, 2), keepdims=True) * G**3), 0) * np.maximum(G, 0)).sum((1, 2))),
    "xgradcam": lambda: _hand_map(np.array([(G[k] * A[k]).sum() / A[k].sum() if A[k].sum() else 0.0 for k in range(2)])),
    "hirescam": lambda: _hand_map(G),
    "layercam": lambda: _hand_map(np.maximum(G, 0)),
    "eigengradcam": lambda: np.maximum(_first_component(G * A), 0),
    "eigencam": lambda: np.maximum(_first_component(A), 0),
    "ablationcam": lambda: _hand_map(_ablation_weights()),
    "scorecam": lambda: _hand_map(_softmax(_score_cam_scores())),
}


@pytest.mark.parametrize("name", sorted(HAND))
def test_each_method_matches_hand_computed_values(name):
    expected = HAND[name]()
    assert expected.max() > 0 and (expected < expected.max()).any()  # a map with contrast to check
    res = mx.methods.get_method(name)(Squares().eval(), "conv")(X, T.ClassLogit(0))
    np.testing.assert_allclose(res.raw[0].numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.maps[0].numpy(), _norm(expected), atol=1e-5)
    assert float(res.scores[0]) == pytest.approx(Y)


def test_hand_values_of_the_channel_weights_of_forward_only_methods():
    model = Squares().eval()
    np.testing.assert_allclose(mx.AblationCAM(model, "conv")(X, T.ClassLogit(0)).weights[0].numpy(), _ablation_weights(), rtol=1e-5)
    scores = _score_cam_scores()
    np.testing.assert_allclose(mx.ScoreCAM(model, "conv")(X, T.ClassLogit(0)).weights[0].numpy(), _softmax(scores), rtol=1e-5)
    # softmax-free: the increase of confidence over the baseline image X_b (all zeros, or 0.5)
    for baseline in (0.0, 0.5):
        res = mx.ScoreCAM(model, "conv", softmax=False, baseline=baseline)(X, T.ClassLogit(0))
        np.testing.assert_allclose(res.weights[0].numpy(), scores - _toy_score(np.full((2, 2), baseline)), rtol=1e-5)
    # Eigen-CAM's weights are the signed first principal direction
    v = mx.EigenCAM(model, "conv")(X, T.ClassLogit(0)).weights[0].numpy()
    assert v.sum() >= 0 and np.linalg.norm(v) == pytest.approx(1.0, abs=1e-6)


# ------------------------------------------------------------------ identities
def _gap_linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4)).eval()


@pytest.mark.parametrize("method", [mx.HiResCAM, mx.XGradCAM])
def test_equal_to_gradcam_when_the_gradient_is_constant_in_space(method):
    # GAP + linear: dy/dA_kij = w_k / Z at every ij, so g_k = alpha_k (HiResCAM) and
    # sum_ij g A / sum_ij A = alpha_k (XGrad-CAM)
    model = _gap_linear()
    x = torch.rand(2, 3, 6, 6)
    targets = [T.ClassLogit(c) for c in range(4)]
    got, plain = method(model, "1")(x, targets), mx.GradCAM(model, "1")(x, targets)
    torch.testing.assert_close(got.pre_relu, plain.pre_relu, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.maps, plain.maps, rtol=1e-5, atol=1e-5)


def test_layercam_differs_from_hirescam_only_where_the_gradient_is_negative():
    model = Squares().eval()
    layer, hires = mx.LayerCAM(model, "conv")(X, T.ClassLogit(0)), mx.HiResCAM(model, "conv")(X, T.ClassLogit(0))
    assert (G < 0).any() and not torch.allclose(layer.pre_relu, hires.pre_relu)
    positive = mx.LayerCAM(model, "conv")(X, T.Counterfactual(T.ClassLogit(0)))  # -y: gradient -G
    np.testing.assert_allclose(positive.pre_relu[0].numpy(), (np.maximum(-G, 0) * A).sum(0), rtol=1e-5)


def test_eigencam_is_target_independent_and_lists_scores_per_target():
    model = _gap_linear()
    x = torch.rand(2, 3, 6, 6)
    res = mx.EigenCAM(model, "1")(x, [T.ClassLogit(0), T.ClassLogit(3)])
    torch.testing.assert_close(res.maps[0], res.maps[1])
    torch.testing.assert_close(res.scores, model(x).detach().T[[0, 3]])


# ------------------------------------------------------------------ occlusion
class Weighted(nn.Module):
    """y = sum_ij x_ij W_ij: the drop of a window is sum over it of (x - baseline) W."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("w", w)  # (1, 1, H, W)

    def forward(self, x):
        return (x * self.w).sum(dim=(1, 2, 3))[:, None]


def test_occlusion_of_a_linear_score_by_hand():
    w = torch.arange(64.0).reshape(1, 1, 8, 8) - 20.0
    x = torch.rand(2, 1, 8, 8)
    model = Weighted(w).eval()
    # window 4, stride 4: the four quadrants; window 4, stride 2: windows centred on a 4x4 grid
    # (centres 1, 3, 5, 7), cut by the image edges: rows [0, 3), [1, 5), [3, 7), [5, 8)
    for stride, spans in ((4, [(0, 4), (4, 8)]), (2, [(0, 3), (1, 5), (3, 7), (5, 8)])):
        for baseline in (0.0, 0.25):
            res = mx.Occlusion(model, window=4, stride=stride, baseline=baseline)(x, T.ClassLogit(0))
            expected = torch.tensor([[[float(((x[b, 0] - baseline) * w[0, 0])[r0:r1, c0:c1].sum()) for (c0, c1) in spans]
                                      for (r0, r1) in spans] for b in range(2)])
            torch.testing.assert_close(res.raw, expected, rtol=1e-5, atol=1e-4)
            torch.testing.assert_close(res.maps, upsample_and_normalize(expected, (8, 8)), rtol=1e-4, atol=1e-4)
            assert res.weights.shape == (2, 0) and res.activations.shape == x.shape
    assert (res.raw < 0).any()  # signed by default: hiding a negative-weight window raises y
    assert (mx.Occlusion(model, window=4, stride=2, relu=True)(x, T.ClassLogit(0)).raw >= 0).all()


def test_occlusion_finds_the_region_the_score_reads():
    class TopLeft(nn.Module):
        def forward(self, x):  # y = mean of the top-left 4x4 corner of channel 0
            return x[:, :1, :4, :4].mean(dim=(1, 2, 3))[:, None]

    x = torch.rand(1, 3, 16, 16) + 0.5
    res = mx.Occlusion(TopLeft().eval(), window=4, stride=4, baseline=torch.zeros(3, 1, 1))(x, T.ClassLogit(0))
    expected = torch.zeros(1, 4, 4)
    expected[0, 0, 0] = x[0, 0, :4, :4].mean()
    torch.testing.assert_close(res.raw, expected)


# ------------------------------------------------------------------ peers on torchvision models
_NETS: dict[str, nn.Module] = {}


def _net(arch: str) -> nn.Module:
    """Random-init torchvision model, seeded, built once per test session (VGG-11's init is slow);
    every method leaves it as found, which the hygiene tests check on their own models."""
    if arch not in _NETS:
        torch.manual_seed(0)
        _NETS[arch] = getattr(torchvision.models, arch)(num_classes=10).eval()
    return _NETS[arch]


def _pgc_targets(classes, scale=1.0):
    """One pytorch-grad-cam target per sample: ``scale`` times the logit of its class."""
    return [lambda out, c=c: scale * out[..., c] for c in classes]


CLASSES = [3, 7]  # one class per sample: pytorch-grad-cam takes one target per sample
GRAD_LAYERS = {"resnet18": "layer4", "vgg11": "features.19"}  # last block, 2x2 / 4x4 at 64x64
FREE_LAYERS = {"resnet18": "layer2", "vgg11": "features.1"}  # forward-only peers at 32x32: 128 / 64 channels


@pytest.fixture(scope="module")
def images64():
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def images32():
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("arch", ["resnet18", "vgg11"])
@pytest.mark.parametrize("name", ["GradCAMPlusPlus", "HiResCAM", "EigenCAM", "EigenGradCAM"])
def test_matches_pytorch_grad_cam(arch, name, images64):
    """pytorch-grad-cam: normalises at the layer's size then resizes (cv2 bilinear, half-pixel
    centres = align_corners=False) and normalises again; min-max is affine, so that equals our
    normalise-after-upsampling up to its 1e-7 epsilon. ReLU before upsampling, as ours."""
    import pytorch_grad_cam as pgc

    model = _net(arch)
    layer = GRAD_LAYERS[arch]
    # Grad-CAM++: pytorch-grad-cam adds 1e-6 to alpha's denominator; random-init gradients are
    # ~1e-3, where 2 g^2 is of that order: both explain 1000 y, so the epsilon is negligible
    scale = 1000.0 if name == "GradCAMPlusPlus" else 1.0
    target = T.Scalar(lambda out: scale * out[[0, 1], CLASSES])
    sign_free = name.startswith("Eigen")
    ours = getattr(mx, name)(model, layer, relu=not sign_free)(images64, target)
    with getattr(pgc, name)(model=model, target_layers=[model.get_submodule(layer)]) as cam:
        theirs = torch.from_numpy(cam(input_tensor=images64, targets=_pgc_targets(CLASSES, scale)))  # (B, H, W)
    if not sign_free:
        torch.testing.assert_close(ours.maps, theirs, atol=2e-5, rtol=0)
        return
    # the singular vector's sign: pytorch-grad-cam keeps LAPACK's; ours has sum(v) >= 0.
    # Its map is the ReLU of +/- our projection, sample by sample.
    for b in range(2):
        candidates = [upsample_and_normalize(F.relu(s * ours.pre_relu[b]), (64, 64)) for s in (1.0, -1.0)]
        assert min(float((c - theirs[b]).abs().max()) for c in candidates) < 2e-5


@pytest.mark.parametrize("arch", ["resnet18", "vgg11"])
@pytest.mark.parametrize("name", ["XGradCAM", "LayerCAM"])
def test_matches_torchcam(arch, name, images64):
    """torchcam returns maps at the layer's size, ReLU then min-max with a 1e-8 epsilon:
    compared with our raw map normalised at that size. XGrad-CAM: torchcam adds 1e-8 to
    sum_ij A (ours: exact, 0 where the sum is 0)."""
    import torchcam.methods as tc

    model = _net(arch)
    layer = GRAD_LAYERS[arch]
    ours = getattr(mx, name)(model, layer)(images64, T.ClassLogit(CLASSES))
    with getattr(tc, name)(model, layer) as extractor:
        theirs = extractor(CLASSES, model(images64))[0]  # (B, u, v)
    torch.testing.assert_close(upsample_and_normalize(ours.raw, ours.raw.shape[-2:]), theirs, atol=1e-4, rtol=0)


def test_gradcam_plus_plus_is_not_torchcams(images64):
    """torchcam 0.5's GradCAMpp divides a masked copy in place (``alpha[mask].div_``), a no-op:
    its weights are sum_ij g^2 ReLU(g). Ours follow the paper (checked against pytorch-grad-cam)."""
    import torchcam.methods as tc

    model = _net("resnet18")
    x = images64
    # g^2 ReLU(g) of random-init gradients (~1e-9) sits under torchcam's 1e-8 epsilon: both explain 1000 y
    with tc.GradCAMpp(model, "layer4") as extractor:
        theirs = extractor(targets=_pgc_targets(CLASSES, 1000.0), scores=model(x))[0]  # (B, u, v)
    acts = {}
    handle = model.layer4.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    try:
        out = model(x)
    finally:
        handle.remove()
    a = acts["a"]
    (g,) = torch.autograd.grad(1000.0 * out[[0, 1], CLASSES].sum(), a)
    no_division = (g.pow(2) * F.relu(g)).sum(dim=(2, 3))  # (B, K)
    expected = upsample_and_normalize(F.relu(torch.einsum("bk,bkuv->buv", no_division, a.detach())), (2, 2))
    torch.testing.assert_close(theirs, expected, atol=1e-4, rtol=0)
    ours = mx.GradCAMPlusPlus(model, "layer4")(x, T.Scalar(lambda out: 1000.0 * out[[0, 1], CLASSES]))
    assert (upsample_and_normalize(ours.raw, (2, 2)) - theirs).abs().max() > 1e-2


def _upsampled(size):
    return lambda a: F.interpolate(a, size=size, mode="bilinear", align_corners=False)


@pytest.mark.parametrize("arch", ["resnet18", "vgg11"])
def test_scorecam_matches_torchcam_and_pytorch_grad_cam(arch, images32):
    """Both peers take the softmax over channels, as ours by default. Their masks: torchcam
    normalises at the layer's size, then upsamples; pytorch-grad-cam upsamples with
    align_corners=True. Handing both a reshape_transform that upsamples (align_corners=False)
    makes their masks ours (normalised after upsampling, to the image); their maps are then
    ReLU(sum_k w_k up(A_k)) at the image's size, and ours, upsampled before the ReLU, equal them."""
    import pytorch_grad_cam as pgc
    import torchcam.methods as tc

    model, layer, x = _net(arch), FREE_LAYERS[arch], images32
    ours = mx.ScoreCAM(model, layer, batch_size=64)(x, T.ClassLogit(CLASSES))
    ours_full = upsample_and_normalize(F.relu(_upsampled((32, 32))(ours.pre_relu[:, None])[:, 0]), (32, 32))
    with tc.ScoreCAM(model, layer, batch_size=64, reshape_transform=_upsampled((32, 32))) as extractor:
        with torch.no_grad():
            scores = model(x)
        theirs = extractor(CLASSES, scores)[0]  # (B, H, W)
    torch.testing.assert_close(ours_full, theirs, atol=1e-4, rtol=0)
    with pgc.ScoreCAM(model=model, target_layers=[model.get_submodule(layer)], reshape_transform=_upsampled((32, 32))) as cam:
        cam.batch_size = 64
        theirs = torch.from_numpy(cam(input_tensor=x, targets=_pgc_targets(CLASSES)))
    torch.testing.assert_close(ours_full, theirs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ["resnet18", "vgg11"])
def test_ablationcam_matches_pytorch_grad_cam(arch, images32):
    """pytorch-grad-cam ablates with 0 when the layer's minimum is 0 (else min - 1e7); these
    layers follow a ReLU, so both ablate with 0. It loops over samples, ours batches copies.
    It divides the drop by y, we by |y|: they agree for positive scores, so both explain the logit
    shifted by 1000 (random weights give negative logits)."""
    import pytorch_grad_cam as pgc

    model, layer, x = _net(arch), FREE_LAYERS[arch], images32
    logit = T.ClassLogit(CLASSES)
    ours = mx.AblationCAM(model, layer, batch_size=64)(x, T.Scalar(lambda out: logit(out) + 1000))
    assert float(ours.activations.min()) == 0.0  # the peer's zero-ablation branch
    assert bool((ours.scores > 0).all())
    shifted = [lambda out, c=c: out[..., c] + 1000 for c in CLASSES]
    with pgc.AblationCAM(model=model, target_layers=[model.get_submodule(layer)], batch_size=64) as cam:
        theirs = torch.from_numpy(cam(input_tensor=x, targets=shifted))
    torch.testing.assert_close(ours.maps, theirs, atol=2e-5, rtol=0)


def test_ablation_with_reuse_prefix_equals_repeated_inputs_and_refuses_skip_paths(images32):
    model = _net("resnet18")
    target = T.ClassLogit(CLASSES)
    full = mx.AblationCAM(model, "layer2", batch_size=64)(images32, target)
    fast = mx.AblationCAM(model, "layer2", batch_size=64, reuse_prefix=True)(images32, target)
    torch.testing.assert_close(fast.weights, full.weights, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fast.maps, full.maps, rtol=1e-4, atol=1e-5)

    class Skip(nn.Module):  # the head also reads the stem's output: a path around the layer
        def __init__(self, reduce: str) -> None:
            super().__init__()
            torch.manual_seed(5)
            self.stem, self.layer, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Linear(4, 2)
            self.reduce = reduce

        def forward(self, x):
            a = self.stem(x)
            h = F.relu(self.layer(a))
            if self.reduce == "add":
                return self.head((h + a).mean(dim=(2, 3)))
            return self.head(h.mean(dim=(2, 3))) * a.sum()  # a sum over the batch: B rows vs r*B rows

    x = torch.rand(2, 3, 6, 6)
    with pytest.raises(ValueError, match="reuse_prefix: the forward fails"):
        mx.AblationCAM(Skip("add").eval(), "layer", reuse_prefix=True)(x, T.ClassLogit(0))
    with pytest.raises(ValueError, match="reuse_prefix: the model reads, after layer 'layer'"):
        mx.AblationCAM(Skip("sum").eval(), "layer", reuse_prefix=True)(x, T.ClassLogit(0))
    one = Skip("add").eval()  # one sample: the skip path broadcasts over the copies, exactly
    torch.testing.assert_close(mx.AblationCAM(one, "layer", reuse_prefix=True)(x[:1], T.ClassLogit(0)).maps,
                               mx.AblationCAM(one, "layer")(x[:1], T.ClassLogit(0)).maps)


# ------------------------------------------------------------------ token layers
def test_per_token_methods_on_a_token_layer():
    model = TinyViT().eval()
    x = torch.rand(2, 1, 4, 4)
    acts = {}
    handle = model.block.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    try:
        out = model(x)
    finally:
        handle.remove()
    a = acts["a"]  # (B, 5, 3)
    (g,) = torch.autograd.grad(out[:, 1].sum(), a)
    a = a.detach()
    for method, weight in ((mx.HiResCAM, g), (mx.LayerCAM, F.relu(g))):
        expected = (weight * a).sum(-1)[:, 1:].reshape(2, 2, 2)  # per patch token, CLS dropped
        res = method(model, "block", reshape=drop_cls, relu=False)(x, T.ClassLogit(1))
        torch.testing.assert_close(res.raw, expected, rtol=1e-5, atol=1e-6)
    # Ablation-CAM on tokens: feature d of every token (CLS included) set to 0
    y = out[:, 1].detach()
    drops = []
    for d in range(3):
        with feature_zeroed(model.block, d), torch.no_grad():
            drops.append((y - model(x)[:, 1]) / y)
    w = torch.stack(drops, dim=-1)  # (B, D)
    expected = torch.einsum("bd,btd->bt", w, a)[:, 1:].reshape(2, 2, 2)
    res = mx.AblationCAM(model, "block", reshape=drop_cls, relu=False)(x, T.ClassLogit(1))
    torch.testing.assert_close(res.raw, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(res.weights, w, rtol=1e-4, atol=1e-6)


class Packed(nn.Module):
    """Every image's tokens packed into ONE row, as LLM-based VLMs do: the hooked tensor is (1, B*T, D)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.embed = nn.Conv2d(3, 4, 2, stride=2)  # (B, 4, 2, 2): 4 patch tokens of 4 features
        self.pack = nn.Identity()
        self.head = nn.Linear(4, 3)

    def forward(self, x):  # (B, 3, 4, 4) -> (B, 3)
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # (B, T, D)
        b, t, d = tokens.shape
        packed = self.pack(tokens.reshape(1, b * t, d))  # (1, B*T, D)
        return self.head(torch.tanh(packed.reshape(b, t, d)).mean(dim=1))


def _unpack(packed):  # (1, B*T, D) -> (B, D, 2, 2)
    return packed.reshape(-1, 4, packed.shape[-1]).transpose(1, 2).unflatten(-1, (2, 2))


def test_ablation_cam_on_tokens_packed_into_one_row_equals_the_hand_computed_drops():
    model = Packed().eval()
    x = torch.rand(2, 3, 4, 4)
    target = T.ClassLogit([0, 2])
    with torch.no_grad():
        y = target(model(x))  # (B,)
        drops = []
        for d in range(4):  # zero feature d of every packed token, one forward each
            with feature_zeroed(model.pack, d):
                drops.append((y - target(model(x))) / y.abs())
    expected = torch.stack(drops, dim=-1)  # (B, D)
    for batch_size in (1, 2, 64):  # one copy per forward; all copies packed into one row of one forward
        res = mx.AblationCAM(model, "pack", reshape=_unpack, batch_size=batch_size)(x, target)
        torch.testing.assert_close(res.weights, expected, rtol=1e-5, atol=1e-6)
        assert res.maps.shape == (2, 4, 4)


# ------------------------------------------------------------------ multimodal inputs, many targets
class ImageText(nn.Module):
    """logits = head(GAP(ReLU(conv(image))) * mean(embed(tokens))): the text changes the score."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.act = nn.ReLU()
        self.embed = nn.Embedding(5, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, image, tokens):  # (B, 3, H, W), (B, L) -> (B, 3)
        feat = self.act(self.conv(image)).mean(dim=(2, 3))
        return self.head(feat * self.embed(tokens).mean(dim=1))


class FixedText(nn.Module):
    def __init__(self, model: ImageText, tokens: torch.Tensor) -> None:
        super().__init__()
        self.model, self.tokens = model, tokens

    def forward(self, image):
        return self.model(image, self.tokens.expand(image.shape[0], -1))


MULTIMODAL = [  # (model, its ReLU module) -> method
    lambda model, act: mx.ScoreCAM(model, act, batch_size=4),
    lambda model, act: mx.AblationCAM(model, act, batch_size=4),
    lambda model, act: mx.EigenCAM(model, act),
    lambda model, act: mx.Occlusion(model, window=4, stride=4, batch_size=4),
]


@pytest.mark.parametrize("make", MULTIMODAL, ids=["scorecam", "ablationcam", "eigencam", "occlusion"])
def test_forward_only_methods_take_tuple_and_dict_inputs(make):
    model = ImageText().eval()
    image = torch.rand(3, 3, 8, 8)
    tokens = torch.tensor([[1, 2], [3, 3], [0, 4]])  # a different text per sample
    target = T.ClassLogit([0, 2, 1])
    by_tuple = make(model, model.act)((image, tokens), target)
    by_dict = make(model, model.act)({"image": image, "tokens": tokens}, target)
    torch.testing.assert_close(by_tuple.maps, by_dict.maps)
    for b in range(3):  # each sample alone, its text fixed: the batched copies kept rows apart
        alone = make(FixedText(model, tokens[b : b + 1]).eval(), model.act)(image[b : b + 1], T.ClassLogit([0, 2, 1][b]))
        torch.testing.assert_close(by_tuple.raw[b], alone.raw[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", MULTIMODAL[:2] + MULTIMODAL[3:], ids=["scorecam", "ablationcam", "occlusion"])
def test_a_list_of_targets_shares_the_forward_passes(make):
    model = ImageText().eval()
    image, tokens = torch.rand(2, 3, 8, 8), torch.tensor([[1, 2], [3, 3]])
    targets = [T.ClassLogit(0), T.ClassLogit([2, 1])]
    calls = []
    handle = model.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    try:
        many = make(model, model.act)((image, tokens), targets)
        per_list = len(calls)
        singles = [make(model, model.act)((image, tokens), t) for t in targets]
    finally:
        handle.remove()
    assert per_list == (len(calls) - per_list) / 2  # one set of forwards for the list, not one per target
    assert max(calls) <= 4  # batch_size rows per forward
    for n, single in enumerate(singles):
        torch.testing.assert_close(many.maps[n], single.maps)
        torch.testing.assert_close(many.scores[n], single.scores)


# ------------------------------------------------------------------ hard-to-hook layers
class Lite(nn.Module):
    """One ReLU6 module serves stem and body (as in EfficientNet-Lite): it runs twice."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU6()
        self.body = nn.Conv2d(4, 5, 3, padding=1)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        h = self.act(self.stem(x) * 3)  # call 0: (B, 4, H, W)
        h = self.act(self.body(h) * 3)  # call 1: (B, 5, H, W)
        return self.head(h.mean(dim=(2, 3)))


def _reference_gradcam(model, x, cls, place):
    """Hand reference: replace the tensor at ``place`` by a leaf ourselves, Grad-CAM by hand."""
    kind, index = place
    leaf, count = {}, [0]

    def take(t):
        if count[0] == index:
            leaf["a"] = t.detach().requires_grad_(True)
            count[0] += 1
            return leaf["a"]
        count[0] += 1
        return None

    if kind == "output":
        handle = model.act.register_forward_hook(lambda m, i, o: take(o))
    else:  # the input of body
        handle = model.body.register_forward_pre_hook(lambda m, args: None if (t := take(args[0])) is None else (t,))
    try:
        out = model(x)
    finally:
        handle.remove()
    a = leaf["a"]
    (g,) = torch.autograd.grad(out[:, cls].sum(), a)
    return F.relu(torch.einsum("bk,bkuv->buv", g.mean(dim=(2, 3)), a.detach()))


def test_call_and_input_against_a_hand_reference():
    model = Lite().eval()
    x = torch.rand(2, 3, 6, 6)
    for k in (0, 1):
        got = mx.GradCAM(model, "act", call=k)(x, T.ClassLogit(2))
        torch.testing.assert_close(got.raw, _reference_gradcam(model, x, 2, ("output", k)), rtol=1e-5, atol=1e-6)
    got = mx.GradCAM(model, "body", input=True)(x, T.ClassLogit(2))
    torch.testing.assert_close(got.raw, _reference_gradcam(model, x, 2, ("input", 0)), rtol=1e-5, atol=1e-6)


def test_ablation_at_the_second_call_against_a_hand_reference():
    model = Lite().eval()
    x = torch.rand(1, 3, 6, 6)
    y = model(x)[0, 1].detach()
    weights = []
    for k in range(5):
        count = [0]

        def zero(m, i, o, k=k):
            count[0] += 1
            if count[0] == 2:
                o = o.clone()
                o[:, k] = 0
                return o
            return None

        handle = model.act.register_forward_hook(zero)
        try:
            with torch.no_grad():
                weights.append((y - model(x)[0, 1]) / y)
        finally:
            handle.remove()
    res = mx.AblationCAM(model, "act", call=1)(x, T.ClassLogit(1))
    torch.testing.assert_close(res.weights[0], torch.stack(weights), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", CHANNEL_METHODS + [mx.Occlusion], ids=lambda m: m.__name__)
def test_every_method_reads_a_layer_input_and_a_kth_call(method):
    # body's input is act's first output: the two places hold the same tensor
    model = Lite().eval()
    x = torch.rand(2, 3, 6, 6)
    kw = {"window": 2, "stride": 2} if method is mx.Occlusion else {}
    by_input = method(model, "body", input=True, **kw)(x, T.ClassLogit(0))
    by_call = method(model, "act", call=0, **kw)(x, T.ClassLogit(0))
    torch.testing.assert_close(by_input.maps, by_call.maps, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(by_input.activations, by_call.activations)
    assert by_call.activations.shape[1] == 4
    with pytest.raises(ValueError, match=r"ran twice.*call=k"):
        method(model, "act", **kw)(x, T.ClassLogit(0))
    with pytest.raises(ValueError, match=r"call=2"):
        method(model, "act", call=2, **kw)(x, T.ClassLogit(0))
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_cam_and_guided_gradcam_take_the_same_places():
    model = _gap_linear()
    x = torch.rand(2, 3, 6, 6)
    torch.testing.assert_close(mx.CAM(model, "2", "4", input=True)(x, 1).maps, mx.CAM(model, "1", "4")(x, 1).maps)
    torch.testing.assert_close(mx.GuidedGradCAM(model, "2", input=True)(x, T.ClassLogit(1)).pixels,
                               mx.GuidedGradCAM(model, "1")(x, T.ClassLogit(1)).pixels)


# ------------------------------------------------------------------ hygiene
def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    model[0].weight.requires_grad_(False)
    model[2].train()  # a mixed state must be kept as it is (a conv: no batch statistics)
    model[6].weight.grad = torch.ones_like(model[6].weight)
    return model


@pytest.mark.parametrize("place", [{}, {"input": True}], ids=["output", "input"])
@pytest.mark.parametrize("method", CHANNEL_METHODS + [mx.Occlusion], ids=lambda m: m.__name__)
def test_model_left_as_found_after_success_and_after_errors(method, place):
    model = _small_cnn()
    layer = "3" if place else "2"
    x = torch.rand(2, 3, 6, 6)
    before = snapshot(model)
    kw = {"window": 3, "stride": 3, **place} if method is mx.Occlusion else {"batch_size": 4, **place} if method in FORWARD_ONLY[:2] else place
    res = method(model, layer, **kw)(x, [T.ClassLogit(0), T.ClassLogit(1)])
    assert res.maps.shape == (2, 2, 6, 6) and torch.isfinite(res.maps).all()
    assert_unchanged(model, before)

    perturbs = method in (mx.ScoreCAM, mx.AblationCAM, mx.Occlusion)
    for fail_at in (1, 3) if perturbs else (1,):  # on the unmodified forward; during the perturbed forwards
        seen = [0]

        def boom(out, fail_at=fail_at):
            seen[0] += 1
            if seen[0] >= fail_at:
                raise KeyError("target failed")
            return out[:, 0]

        with pytest.raises(KeyError, match="target failed"):
            method(model, layer, **kw)(x, T.Scalar(boom))
        assert_unchanged(model, before)
    assert torch.is_grad_enabled()


def test_forward_only_methods_run_no_backward_and_work_under_inference_mode():
    model = _small_cnn().eval()
    x = torch.rand(1, 3, 6, 6)
    calls = []
    handle = model[2].register_full_backward_hook(lambda *args: calls.append(1))
    try:
        for method in FORWARD_ONLY + [mx.Occlusion]:
            method(model, "2")(x, T.ClassLogit(0))
            with torch.inference_mode():
                assert method(model, "2")(x, T.ClassLogit(0)).maps.shape == (1, 6, 6)
    finally:
        handle.remove()
    assert calls == []


# ------------------------------------------------------------------ registry and bad input
def test_registry_names_every_method_and_top_level_exports():
    assert list(mx.methods.METHODS) == [
        "gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigengradcam",
        "scorecam", "ablationcam", "eigencam", "occlusion", "rise", "guided", "relevancy",
        "attention", "tam", "lm-gradcam", "gradxinput", "pixel-gradxinput", "occlusion-gradxinput",
        "rise-gradxinput",
    ]
    assert mx.explain.METHODS is mx.methods.METHODS  # one registry
    for name, spec in mx.methods.METHODS.items():
        cls = spec.cls
        assert spec.name == name and getattr(mx, cls.__name__) is cls and mx.methods.get_method(name.upper()) is cls
        assert mx.methods.method_spec(name) is spec and spec.description and "\n" not in spec.description
        assert "Example:" in cls.__doc__ and ("Departure" in cls.__doc__ or name == "guided")
        assert spec.requires <= set(mx.methods.CAPABILITIES) and spec.saliency in mx.methods.SALIENCY
    specs = mx.methods.METHODS
    assert [n for n, s in specs.items() if not s.needs_layer] == [
        "occlusion", "rise", "relevancy", "attention", "tam", "lm-gradcam", "gradxinput", "pixel-gradxinput",
        "occlusion-gradxinput", "rise-gradxinput"]
    assert [n for n, s in specs.items() if not s.uses_gradient] == [
        "scorecam", "ablationcam", "eigencam", "occlusion", "rise", "attention", "tam"]
    assert specs["guided"].why_not({"layer", "pixels"}) == "Guided Grad-CAM needs ReLU-like units for guided backprop (relu)"
    assert specs["gradcam"].why_not({"layer"}) is None and specs["occlusion"].why_not({"layer"}) is not None
    with pytest.raises(ValueError, match=r"unknown name 'gradcam\+'; nearest: gradcam\+\+.*expected one of: gradcam, gradcam\+\+"):
        mx.methods.get_method("gradcam+")


def test_saliency_of_reads_maps_or_sums_the_pixel_map_over_colour():
    pixels = torch.tensor([[[[1.0, -2.0]], [[-3.0, 4.0]], [[0.5, 0.5]]]])  # (1, C=3, 1, 2)
    res = mx.methods.CAMResult(torch.rand(1, 1, 2), *(torch.zeros(1) for _ in range(5)), pixels=pixels)
    guided, gradcam = mx.methods.METHODS["guided"], mx.methods.METHODS["gradcam"]
    assert guided.saliency_of(res).tolist() == [[[4.5, 6.5]]]  # |1|+|-3|+|.5|, |-2|+|4|+|.5|
    assert guided.saliency_of(res, signed=True).tolist() == [[[-1.5, 2.5]]]
    assert gradcam.saliency_of(res) is res.maps
    with pytest.raises(ValueError, match="no pixel-resolution map"):
        guided.saliency_of(mx.methods.CAMResult(*(torch.zeros(1) for _ in range(6))))


def test_bad_arguments_are_named():
    model = Squares().eval()
    with pytest.raises(ValueError, match="batch_size"):
        mx.ScoreCAM(model, "conv", batch_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        mx.AblationCAM(model, "conv", batch_size=2.5)
    with pytest.raises(ValueError, match="window"):
        mx.Occlusion(model, window=0)
    with pytest.raises(ValueError, match="stride"):
        mx.Occlusion(model, stride=(2,))
    with pytest.raises(ValueError, match="call"):
        mx.HiResCAM(model, "conv", call=-1)
    with pytest.raises(TypeError, match="input"):
        mx.EigenCAM(model, "conv", input="yes")
    with pytest.raises(TypeError, match="reuse_prefix"):
        mx.AblationCAM(model, "conv", reuse_prefix=1)
    with pytest.raises(TypeError, match="baseline"):
        mx.ScoreCAM(model, "conv", softmax=False, baseline=torch.zeros(1))
    with pytest.raises(TypeError, match="softmax"):
        mx.ScoreCAM(model, "conv", softmax=1)
    with pytest.raises(ValueError, match="baseline"):
        mx.Occlusion(model, window=1, stride=1, baseline=torch.zeros(3, 5))(X, T.ClassLogit(0))
    class FromFlat(nn.Module):  # takes (B, 4): nothing image-shaped to mask
        def __init__(self) -> None:
            super().__init__()
            self.squares = Squares()

        def forward(self, flat):
            return self.squares(flat.view(-1, 1, 2, 2))

    with pytest.raises(ValueError, match="inputs: ScoreCAM perturbs the image"):
        mx.ScoreCAM(FromFlat().eval(), "squares.conv")(X.view(1, 4), T.ClassLogit(0))
    with pytest.raises(ValueError, match="layer 'cnv' not found; nearest: conv"):
        mx.LayerCAM(model, "cnv")


def test_ablation_weights_keep_their_sign_for_negative_scores():
    """A channel whose removal lowers a negative score (a word's log-probability) is evidence FOR it: w_k > 0."""
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Flatten(), nn.Linear(2 * 4, 1)).eval()
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].bias.zero_()
        model[2].weight.fill_(1.0)
        model[2].bias.fill_(-100.0)  # the score is about -92: negative, like a log-probability
    x = torch.ones(1, 1, 2, 2)
    res = mx.AblationCAM(model, "0")(x, T.ClassLogit(0))
    assert float(res.scores[0]) < 0
    # each channel carries 4 of the score; removing it lowers y by 4: w = 4 / |y|
    np.testing.assert_allclose(res.weights[0].numpy(), [4 / 92, 4 / 92], rtol=1e-5)


@pytest.mark.parametrize("make", [lambda m: mx.Occlusion(m, window=4, stride=4), lambda m: mx.GuidedBackprop(m),
                                  lambda m: mx.ScoreCAM(m, "1"), lambda m: mx.GradCAM(m, "1")],
                         ids=["occlusion", "guided", "scorecam", "gradcam"])
def test_training_mode_batch_norm_statistics_are_left_as_found(make):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 2)).train()
    before = snapshot(model)
    with pytest.warns(UserWarning, match="training mode"):
        make(model)(torch.rand(2, 3, 8, 8), T.ClassLogit(1))
    assert_unchanged(model, before)  # running_mean, running_var, num_batches_tracked included
