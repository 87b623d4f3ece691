"""Gradient x input on the image tensor the model reads (``pixel-gradxinput``), against hand-written references.

- on a toy CNN: the signed channel sum of ``torch.autograd.grad(y, x) * x`` per target, its ReLU and the
  normalised map, for a batch of two and two targets;
- on a tiny Qwen2-VL, whose processor flattens the image into merged patch rows: the gradient at
  ``pixel_values`` times ``pixel_values``, put back on the picture by the processor ITSELF (an image whose
  pixels encode their own index, patchified by Qwen2VLImageProcessor, says where every entry of a row comes
  from), both temporal copies summed;
- on a tiny LLaVA (a (1, 3, H, W) tensor): the plain product, through explain_caption;
- the Gaussian, the refusals (no image tensor; tiled inputs via the capability), the model left as found.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mmexplain as mx
from mmexplain.methods import PixelGradientXInput
from mmexplain.methods.input_gradient import gaussian_blur, is_patchify, patchify_input_grad
from mmexplain.targets import ClassLogit
from conftest import assert_unchanged, snapshot


def toy(height: int = 6, width: int = 5):
    """A fixed-weight CNN for (B, 3, height, width) images: conv, ReLU, linear to 3 classes."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * height * width, 3)).eval()


def test_equals_autograd_on_a_cnn():
    net = toy()
    x = torch.randn(2, 3, 6, 5)
    before = snapshot(net)
    res = PixelGradientXInput(net, sigma=0)(x, [ClassLogit(0), ClassLogit(2)])
    assert_unchanged(net, before)
    for n, c in enumerate((0, 2)):
        leaf = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(net(leaf)[:, c].sum(), leaf)
        expected = (grad * x).sum(1)  # (B, H, W)
        torch.testing.assert_close(res.pre_relu[n], expected)
        torch.testing.assert_close(res.raw[n], F.relu(expected))
        torch.testing.assert_close(res.scores[n], net(x)[:, c].detach())
        for b in range(2):
            r = F.relu(expected[b])
            torch.testing.assert_close(res.maps[n, b], (r - r.min()) / (r.max() - r.min()))
    assert float(res.pre_relu.min()) < 0 < float(res.pre_relu.max())  # signed before the ReLU
    assert res.weights.shape == (2, 2, 0) and res.activations.shape == (2, 3, 6, 5)


class TwoReaders(torch.nn.Module):
    """The image read by two convolutions: the gradient at the first reader alone would miss the second path."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(3, 2, 3, padding=1), torch.nn.Conv2d(3, 2, 1)
        self.head = torch.nn.Linear(2 * 6 * 5, 3)

    def forward(self, x):
        return self.head((torch.tanh(self.a(x)) * self.b(x)).flatten(1))


@pytest.mark.parametrize("make", [toy, lambda: TwoReaders().eval()], ids=["one reader", "two readers"])
def test_the_two_step_gradient_equals_the_direct_one(make):
    """The gradient taken at the first reader's output and carried through it on N copies (one reader), or at
    the image itself (two readers), equals autograd at the image."""
    torch.manual_seed(1)
    net, x = make(), torch.randn(1, 3, 6, 5)
    method = PixelGradientXInput(net, sigma=0)
    image, put, _ = method._image(x)
    grad, _, _ = method._through_reader(image, put, [ClassLogit(0), ClassLogit(1)])
    assert (grad is None) == isinstance(net, TwoReaders)
    res = method(x, [ClassLogit(0), ClassLogit(1)])
    for n in range(2):
        leaf = x.clone().requires_grad_(True)
        (expected,) = torch.autograd.grad(net(leaf)[:, n].sum(), leaf)
        torch.testing.assert_close(res.pre_relu[n], (expected * x).sum(1))
        if grad is not None:
            torch.testing.assert_close(grad[n], expected)


def test_gaussian_by_hand():
    delta = torch.zeros(1, 9, 9)
    delta[0, 4, 4] = 1.0
    out = gaussian_blur(delta, 1.0)[0]
    t = torch.arange(-3, 4, dtype=torch.float32)
    g = torch.exp(-t * t / 2)
    g = g / g.sum()
    torch.testing.assert_close(out[1:8, 1:8], g[:, None] * g[None, :])  # the kernel, centred on the delta
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(gaussian_blur(delta, 0), delta)
    res = PixelGradientXInput(toy(), sigma=1.5)(torch.randn(1, 3, 6, 5), ClassLogit(1))
    torch.testing.assert_close(res.raw, gaussian_blur(F.relu(res.pre_relu), 1.5))


def test_bad_arguments():
    with pytest.raises(ValueError, match="sigma"):
        PixelGradientXInput(toy(), sigma=-1)
    with pytest.raises(TypeError, match="model"):
        PixelGradientXInput("net")
    with pytest.raises(ValueError, match="no floating .B, C, H, W. image tensor"):
        PixelGradientXInput(torch.nn.Linear(4, 2).eval())(torch.randn(1, 4), ClassLogit(0))


def qwen_reference(vlm, pixels, inputs, spans):
    """Per word (H, W): d logp / d pixel_values * pixel_values, each entry put on the pixel the processor took it
    from (an index image patchified by the processor itself), the temporal copies and channels summed."""
    from test_lm_methods import absolute

    image = vlm.display_image(pixels)  # (3, H, W): the picture the processor keeps as it is
    _, h, w = image.shape
    count = 3 * h * w
    coded = torch.arange(count, dtype=torch.float64).reshape(3, h, w) / count  # each pixel's index, in [0, 1)
    rows = vlm.family.image_processor(images=[coded.float()], return_tensors="pt", do_rescale=False)["pixel_values"]
    index = torch.round((rows.double() * 0.5 + 0.5) * count).long() % (h * w)  # the pixel of every entry
    hf = vlm.hf_model
    leaf = inputs["pixel_values"].clone().requires_grad_(True)
    kwargs = {k: v for k, v in inputs.items() if k not in ("logits_to_keep", "pixel_values")}
    logp = hf(**kwargs, pixel_values=leaf).logits[0].log_softmax(-1)
    maps = []
    for q, (_, tokens) in zip(absolute(inputs, spans), spans):
        score = sum(logp[q + k, t] for k, t in enumerate(tokens))
        (grad,) = torch.autograd.grad(score, leaf, retain_graph=True)
        product = (grad * leaf.detach()).flatten()
        maps.append(torch.zeros(h * w).index_add_(0, index.flatten(), product).reshape(h, w))
    return torch.stack(maps)


def test_qwen2vl_patch_rows_laid_by_the_processor():
    from test_lm_methods import built_qwen, targets_of

    vlm, _, pixels, inputs, spans = built_qwen()
    assert inputs["pixel_values"].dim() == 2  # flattened patches: no (B, C, H, W) tensor
    assert "image-gradient" in vlm.capabilities and "pixels" not in vlm.capabilities
    before = snapshot(vlm.hf_model)
    res = PixelGradientXInput(vlm.model, reshape=vlm.reshape_for(pixels), sigma=0)(inputs, targets_of(spans))
    assert_unchanged(vlm.hf_model, before)
    expected = qwen_reference(vlm, pixels, inputs, spans)
    assert res.pre_relu.shape == (len(spans), 1, 48, 64)
    torch.testing.assert_close(res.pre_relu[:, 0], expected, rtol=1e-4, atol=1e-7)
    assert res.activations.shape == (1, 6, 48, 64)  # two temporal copies of 3 channels
    ex = mx.explain_caption(vlm, vlm.display_image(pixels), " ".join(w for w in _caption()), method="pixel-gradxinput")
    assert ex.maps.shape == (len(spans), 48, 64)


def _caption():
    from test_lm_methods import CAPTION

    return CAPTION


def test_llava_pixels_through_explain_caption():
    from test_lm_methods import absolute, built

    vlm, image, pixels, inputs, spans = built()
    ex = mx.explain_caption(vlm, image, " ".join(_caption()), method="pixel-gradxinput")
    hf = vlm.hf_model
    leaf = inputs["pixel_values"].clone().requires_grad_(True)
    kwargs = {k: v for k, v in inputs.items() if k not in ("logits_to_keep", "pixel_values")}
    logp = hf(**kwargs, pixel_values=leaf).logits[0].log_softmax(-1)
    for n, (q, (_, tokens)) in enumerate(zip(absolute(inputs, spans), spans)):
        (grad,) = torch.autograd.grad(sum(logp[q + k, t] for k, t in enumerate(tokens)), leaf, retain_graph=True)
        expected = gaussian_blur(F.relu((grad * leaf.detach())[0].sum(0)), 1.0)
        torch.testing.assert_close(ex.result.raw[n, 0], expected, rtol=1e-4, atol=1e-7)
    # the whole caption: the ReLU of the summed signed maps, smoothed as the words' (not left speckled)
    whole = gaussian_blur(F.relu(ex.result.pre_relu[:, 0].sum(0)), 1.0)
    size = tuple(ex.caption_map.shape)
    expected = F.interpolate(whole[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    torch.testing.assert_close(ex.caption_map, expected, rtol=1e-4, atol=1e-6)


def test_registry_and_refusal_by_capability():
    spec = mx.methods.method_spec("pixel-gradxinput")
    assert not spec.needs_layer and spec.uses_gradient and spec.requires == frozenset({"image-gradient"})
    assert spec.why_not({"layer", "lm", "picture", "attention"}) == (
        "Gradient x Input (pixels) needs a gradient at the image tensor the model reads, laid on one picture "
        "(pixels or flattened patches) (image-gradient)")
    from mmexplain.evaluation.grounding import capabilities_of

    assert "image-gradient" in capabilities_of(mx.zoo.load("classifier"))


@pytest.mark.parametrize("conv, shape", [
    (torch.nn.Conv2d(3, 5, 4, stride=4), (2, 3, 10, 13)),  # pixels past the last whole patch: zero gradient
    (torch.nn.Conv3d(3, 6, (2, 3, 3), stride=(2, 3, 3), bias=False), (4, 3, 2, 6, 9)),  # Qwen2-VL's shape of patch
    (torch.nn.Conv1d(2, 3, 5, stride=5), (1, 2, 20)),
], ids=["conv2d", "conv3d", "conv1d"])
def test_patchify_input_grad_equals_autograd(conv, shape):
    """The matrix-product input gradient of a kernel = stride convolution equals convolution_backward's."""
    torch.manual_seed(2)
    assert is_patchify(conv)
    x = torch.randn(shape, requires_grad=True)
    out = conv(x)
    g = torch.randn_like(out)
    (expected,) = torch.autograd.grad(out, x, g)
    torch.testing.assert_close(patchify_input_grad(conv, g, tuple(shape)), expected)


def test_patchify_is_recognised_narrowly():
    assert not is_patchify(torch.nn.Conv2d(3, 4, 3, padding=1))
    assert not is_patchify(torch.nn.Conv2d(3, 4, 4, stride=2))
    assert not is_patchify(torch.nn.Conv2d(4, 4, 2, stride=2, groups=2))
    assert not is_patchify(torch.nn.Conv2d(3, 4, 2, stride=2, dilation=2))
    assert not is_patchify(torch.nn.Linear(3, 4))


class PatchNet(torch.nn.Module):
    """A ViT-like reader: a patch embedding of kernel = stride, then a nonlinear head."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Conv2d(3, 4, 3, stride=3)
        self.head = torch.nn.Linear(4 * 2 * 3, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.embed(x)).flatten(1))


def test_the_two_step_gradient_through_a_patch_embedding():
    """The reader is a patchifying convolution, crossed by the matrix product: equals autograd at the image
    (the image 7 x 10: the last row and column lie past the patches and get 0)."""
    torch.manual_seed(3)
    net, x = PatchNet().eval(), torch.randn(1, 3, 7, 10)
    method = PixelGradientXInput(net, sigma=0)
    image, put, _ = method._image(x)
    grad, _, _ = method._through_reader(image, put, [ClassLogit(0), ClassLogit(2)])
    for n, c in enumerate((0, 2)):
        leaf = x.clone().requires_grad_(True)
        (expected,) = torch.autograd.grad(net(leaf)[:, c].sum(), leaf)
        torch.testing.assert_close(grad[n], expected)
    assert float(grad[..., -1, :].abs().max()) == 0 and float(grad[..., :6, :9].abs().max()) > 0


def test_a_hooked_patch_embedding_keeps_autograd():
    """A user's hook on the patch embedding changes its output: the matrix product would miss it, so autograd
    crosses that convolution (and the hook is still there afterwards)."""
    torch.manual_seed(4)
    net, x = PatchNet().eval(), torch.randn(1, 3, 6, 9)
    handle = net.embed.register_forward_hook(lambda m, a, out: out * out)
    try:
        res = PixelGradientXInput(net, sigma=0)(x, [ClassLogit(1)])
        leaf = x.clone().requires_grad_(True)
        (expected,) = torch.autograd.grad(net(leaf)[:, 1].sum(), leaf)
        torch.testing.assert_close(res.pre_relu[0], (expected * x).sum(1))
        assert len(net.embed._forward_hooks) == 1
    finally:
        handle.remove()
