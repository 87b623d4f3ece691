"""RISE (``rise``) against a hand-written reference and its defining properties.

- the masks: a hand-written bilinear upsampling (PyTorch's ``align_corners=False`` convention, written
  out) of the same binary grids, cropped at the same shifts;
- on a toy CNN: every masked copy run one by one and the paper's sum, less the mean score;
- a score that ignores the image gives the zero map (the mean score is subtracted);
- a score that reads one box of the image puts the map's maximum in that box;
- on a tiny LLaVA through ``explain_caption``: one map per word, the model left as found;
- bad arguments are refused by name.
"""

from __future__ import annotations

import math

import pytest
import torch

import mmexplain as mx
from mmexplain.methods.rise import RISE, rise_masks
from mmexplain.targets import ClassLogit
from conftest import assert_unchanged, snapshot
from test_pixel_gradxinput import toy


def bilinear_by_hand(grid: torch.Tensor, out: tuple[int, int]) -> torch.Tensor:
    """(g, g) -> out, sampling at (i + 0.5) * g / out - 0.5, clamped at the edges."""
    g = grid.shape[0]
    res = torch.zeros(out)
    for i in range(out[0]):
        for j in range(out[1]):
            y = max((i + 0.5) * g / out[0] - 0.5, 0.0)
            x = max((j + 0.5) * g / out[1] - 0.5, 0.0)
            y0, x0 = min(int(math.floor(y)), g - 1), min(int(math.floor(x)), g - 1)
            y1, x1 = min(y0 + 1, g - 1), min(x0 + 1, g - 1)
            wy, wx = y - y0, x - x0
            res[i, j] = ((1 - wy) * (1 - wx) * grid[y0, x0] + (1 - wy) * wx * grid[y0, x1]
                         + wy * (1 - wx) * grid[y1, x0] + wy * wx * grid[y1, x1])
    return res


def test_masks_are_shifted_upsampled_grids():
    method = RISE(toy(), n_masks=5, grid=3, p=0.5, seed=4)
    grids, shifts = method.draws((7, 8))
    assert grids.shape == (5, 3, 3) and set(grids.unique().tolist()) <= {0.0, 1.0}
    cell = (math.ceil(7 / 3), math.ceil(8 / 3))
    assert ((shifts >= 0) & (shifts < torch.tensor(cell))).all()
    masks = rise_masks(grids, shifts, (7, 8))
    for k in range(5):
        full = bilinear_by_hand(grids[k], (4 * cell[0], 4 * cell[1]))
        dy, dx = shifts[k].tolist()
        torch.testing.assert_close(masks[k], full[dy:dy + 7, dx:dx + 8])
    many = rise_masks(*RISE(toy(), n_masks=2000, grid=4, p=0.3).draws((16, 16)), (16, 16))
    assert 0 <= float(many.min()) and float(many.max()) <= 1
    assert float(many.mean()) == pytest.approx(0.3, abs=0.02)  # E[M(x)] = p


def test_equals_a_hand_written_reference_on_a_cnn():
    net = toy(8, 8)
    x = torch.randn(2, 3, 8, 8)
    before = snapshot(net)
    method = RISE(net, n_masks=30, grid=3, p=0.4, seed=1, batch_size=8)  # 4 copies of the batch per forward
    res = method(x, [ClassLogit(0), ClassLogit(2)])
    assert_unchanged(net, before)
    masks = rise_masks(*method.draws((8, 8)), (8, 8))  # (30, 8, 8), checked above
    for n, c in enumerate((0, 2)):
        with torch.no_grad():
            scores = torch.stack([net(x * m)[:, c] for m in masks])  # (30, B): one copy at a time
        centred = scores - scores.mean(0)
        expected = sum(centred[i][:, None, None] * masks[i] for i in range(30)) / (30 * 0.4)  # (B, 8, 8)
        torch.testing.assert_close(res.pre_relu[n], expected, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(res.raw[n], expected, rtol=1e-4, atol=1e-6)  # signed by default
        torch.testing.assert_close(res.scores[n], net(x)[:, c].detach())
    assert res.weights.shape == (2, 2, 0) and res.maps.shape == (2, 2, 8, 8)
    again = RISE(net, n_masks=30, grid=3, p=0.4, seed=1)(x, ClassLogit(0))  # same seed, same map; no N axis
    torch.testing.assert_close(again.pre_relu, res.pre_relu[0], rtol=1e-4, atol=1e-6)
    other = RISE(net, n_masks=30, grid=3, p=0.4, seed=2)(x, ClassLogit(0))
    assert not torch.allclose(other.pre_relu, res.pre_relu[0])


class Constant(torch.nn.Module):
    def forward(self, x):
        return x.new_full((x.shape[0], 1), -3.0)


class Box(torch.nn.Module):
    """The mean of the image inside rows 4..8, columns 10..14."""

    def forward(self, x):
        return x[..., 4:8, 10:14].mean(dim=(1, 2, 3))[:, None]


def test_a_score_that_ignores_the_image_gives_zero():
    res = RISE(Constant().eval(), n_masks=50, grid=4)(torch.rand(1, 3, 16, 16), ClassLogit(0))
    assert float(res.pre_relu.abs().max()) == 0.0


def test_the_maximum_lies_where_the_score_reads():
    res = RISE(Box().eval(), n_masks=500, grid=4)(torch.ones(1, 3, 16, 16), ClassLogit(0))
    row, col = divmod(int(res.raw[0].argmax()), 16)
    assert 4 <= row < 8 and 10 <= col < 14
    far = float(res.raw[0, 12:, :4].mean())  # uncorrelated with the score: 0 in expectation
    assert float(res.raw[0, 4:8, 10:14].mean()) > 10 * abs(far)


def test_llava_through_explain_caption():
    from test_lm_methods import CAPTION, built

    vlm, image, _, _, _ = built()
    before = snapshot(vlm.hf_model)
    ex = mx.explain_caption(vlm, image, " ".join(CAPTION), method="rise")
    assert_unchanged(vlm.hf_model, before)
    assert ex.maps.shape == (len(CAPTION), 32, 32) and torch.isfinite(ex.maps).all()
    assert float(ex.maps.max()) == pytest.approx(1.0)


@pytest.mark.parametrize("kwargs, name", [({"n_masks": 0}, "n_masks"), ({"n_masks": 2.5}, "n_masks"),
                                          ({"grid": True}, "grid"), ({"grid": 0}, "grid"), ({"p": 1}, "p"),
                                          ({"p": 0.0}, "p"), ({"p": "0.5"}, "p"), ({"seed": -1}, "seed")])
def test_bad_arguments_are_refused_by_name(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}: expected"):
        RISE(toy(), **kwargs)
