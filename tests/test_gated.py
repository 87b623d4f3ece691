"""Gradient x input on the pixels gated by occlusion or RISE (``occlusion-gradxinput``, ``rise-gradxinput``),
against hand-written references.

- on a toy CNN, windows that tile the image: autograd's gradient x input times the ReLU of the hand-computed
  window drops (each tile set to 0, the model run again), bilinearly upsampled, over its maximum, square root
  (gamma 0.5);
- the gate alone: no window lowers the score -> nothing is gated away; ``gamma`` 1 is the plain ratio;
- on a tiny LLaVA through ``explain_caption`` and ``explain_answer``: the product of the library's own two
  parts on the same inputs (the picture masked and processed again for the occlusion);
- the RISE gate on a toy CNN: each masked copy run one by one, the paper's sum less the mean score, then the
  same ReLU / maximum / power; through ``explain_caption`` on a tiny LLaVA, the product of ``pixel-gradxinput``
  and ``rise``;
- a bad ``gamma`` is refused by name; the model is left as found.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mmexplain as mx
from mmexplain.methods.gated import OcclusionGradientXInput, RISEGradientXInput, occlusion_gate
from mmexplain.methods.input_gradient import gaussian_blur
from mmexplain.methods.rise import rise_masks
from mmexplain.targets import ClassLogit
from conftest import assert_unchanged, snapshot
from test_pixel_gradxinput import toy as pixel_toy


def toy():
    return pixel_toy(8, 8)


def test_equals_a_hand_written_reference_on_a_cnn():
    net = toy()
    x = torch.randn(2, 3, 8, 8)
    before = snapshot(net)
    res = OcclusionGradientXInput(net, window=4, stride=4, sigma=0, gamma=0.5)(x, [ClassLogit(0), ClassLogit(2)])
    assert_unchanged(net, before)
    for n, c in enumerate((0, 2)):
        leaf = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(net(leaf)[:, c].sum(), leaf)
        fine = (grad * x).sum(1)  # (B, 8, 8)
        with torch.no_grad():
            drops = torch.zeros(2, 2, 2)  # (B, rows, cols) of the four 4 x 4 tiles
            for r in range(2):
                for k in range(2):
                    hidden = x.clone()
                    hidden[..., 4 * r:4 * r + 4, 4 * k:4 * k + 4] = 0
                    drops[:, r, k] = net(x)[:, c] - net(hidden)[:, c]
        up = F.interpolate(F.relu(drops)[:, None], size=(8, 8), mode="bilinear", align_corners=False)[:, 0]
        gate = (up / up.amax(dim=(-2, -1), keepdim=True)).sqrt()
        expected = fine * gate
        torch.testing.assert_close(res.pre_relu[n], expected, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(res.raw[n], F.relu(expected), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(res.scores[n], net(x)[:, c].detach())
        for b in range(2):
            r = F.relu(expected[b])
            torch.testing.assert_close(res.maps[n, b], (r - r.min()) / (r.max() - r.min()), rtol=1e-4, atol=1e-5)
    assert res.weights.shape == (2, 2, 0) and res.activations.shape == (2, 3, 8, 8)
    one = OcclusionGradientXInput(net, window=4, stride=4, sigma=0, gamma=0.5)(x, ClassLogit(0))  # no N axis
    torch.testing.assert_close(one.pre_relu, res.pre_relu[0])


def test_the_gate_alone():
    drops = torch.tensor([[[-1.0, -2.0], [0.0, -0.5]], [[4.0, 1.0], [-3.0, 0.0]]])  # (2, 2, 2)
    gate = occlusion_gate(drops, (2, 2), 1.0)
    assert gate[0].tolist() == [[1.0, 1.0], [1.0, 1.0]]  # no window lowers the score: nothing gated away
    assert gate[1].tolist() == [[1.0, 0.25], [0.0, 0.0]]  # ReLU over its maximum
    assert occlusion_gate(drops, (2, 2), 0.5)[1].tolist() == [[1.0, 0.5], [0.0, 0.0]]
    assert occlusion_gate(drops, (4, 4), 0.5).shape == (2, 4, 4)


def test_rise_gate_equals_a_hand_written_reference_on_a_cnn():
    net = toy()
    x = torch.randn(2, 3, 8, 8)
    before = snapshot(net)
    method = RISEGradientXInput(net, n_masks=40, grid=4, p=0.5, seed=3, sigma=0, gamma=0.5, batch_size=7)
    res = method(x, [ClassLogit(1), ClassLogit(2)])
    assert_unchanged(net, before)
    masks = rise_masks(*method.draws((8, 8)), (8, 8))  # (40, 8, 8), tested against a hand upsampling in test_rise
    for n, c in enumerate((1, 2)):
        leaf = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(net(leaf)[:, c].sum(), leaf)
        fine = (grad * x).sum(1)  # (B, 8, 8)
        with torch.no_grad():
            scores = torch.stack([net(x * m)[:, c] for m in masks])  # (40, B), one copy at a time
        coarse = torch.einsum("nb,nhw->bhw", scores - scores.mean(0), masks) / (40 * 0.5)
        gate = F.relu(coarse) / F.relu(coarse).amax(dim=(-2, -1), keepdim=True)
        expected = fine * gate.sqrt()
        torch.testing.assert_close(res.pre_relu[n], expected, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(res.raw[n], F.relu(expected), rtol=1e-4, atol=1e-6)
    assert res.weights.shape == (2, 2, 0)


@pytest.mark.parametrize("cls", [OcclusionGradientXInput, RISEGradientXInput])
@pytest.mark.parametrize("gamma", [0, -1.0, float("nan"), True, "0.5"])
def test_a_bad_gamma_is_refused_by_name(cls, gamma):
    with pytest.raises(ValueError, match=r"^gamma: expected a finite number > 0"):
        cls(toy(), gamma=gamma)


@pytest.mark.parametrize("gated_name, coarse_name", [("occlusion-gradxinput", "occlusion"),
                                                     ("rise-gradxinput", "rise")])
def test_llava_through_explain_is_the_product_of_its_two_parts(gated_name, coarse_name):
    from test_lm_methods import CAPTION, built

    vlm, image, _, _, _ = built()
    caption = " ".join(CAPTION)
    before = snapshot(vlm.hf_model)
    gated = mx.explain_caption(vlm, image, caption, method=gated_name).result
    assert_unchanged(vlm.hf_model, before)
    fine = mx.explain_caption(vlm, image, caption, method="pixel-gradxinput").result
    coarse = mx.explain_caption(vlm, image, caption, method=coarse_name).result
    gate = occlusion_gate(coarse.pre_relu, tuple(fine.pre_relu.shape[-2:]), 0.25)  # the default gamma
    torch.testing.assert_close(gated.pre_relu, fine.pre_relu * gate, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(gated.raw, gaussian_blur(F.relu(fine.pre_relu * gate), 1.0), rtol=1e-4, atol=1e-7)
    answer = mx.explain_answer(vlm, image, "what color is the circle ?", "red", method=gated_name)
    assert answer.maps.shape[0] == 1 and float(answer.maps.max()) == pytest.approx(1.0)
