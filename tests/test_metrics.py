"""Grounding metrics on hand-built maps and masks, with exact expected values."""

from __future__ import annotations

import math

import pytest
import torch

from mmexplain import metrics



def _mask(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    m = torch.zeros(h, w, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


# ----------------------------------------------------------------------------- pointing


def test_pointing_game_hit_miss_and_ties():
    mask = _mask(6, 6, 1, 3, 1, 3)  # rows 1-2, cols 1-2
    m = torch.zeros(6, 6)
    m[2, 2] = 1.0
    assert metrics.pointing_game(m, mask) is True
    m[2, 2], m[4, 4] = 0.5, 1.0
    assert metrics.pointing_game(m, mask) is False
    # tie: the first maximal pixel in row-major order decides
    t = torch.zeros(6, 6)
    t[1, 1] = t[5, 5] = 1.0
    assert metrics.pointing_game(t, mask) is True
    assert metrics.pointing_expected(t, mask) == 0.5
    u = torch.zeros(6, 6)
    u[0, 0] = u[2, 2] = 1.0  # the first maximum (0, 0) is outside
    assert metrics.pointing_game(u, mask) is False and metrics.pointing_expected(u, mask) == 0.5
    # a constant map points nowhere; the expected hit is the mask's share of the image
    assert metrics.pointing_game(torch.zeros(6, 6), mask) is False
    assert metrics.pointing_expected(torch.zeros(6, 6), mask) == 4 / 36
    assert metrics.pointing_expected(metrics.uniform_map(6, 6), mask) == 4 / 36


def test_pointing_game_tolerance_is_euclidean():
    mask = _mask(10, 10, 0, 1, 0, 1)  # pixel (0, 0) only
    m = torch.zeros(10, 10)
    m[2, 2] = 1.0  # distance sqrt(8) = 2.83 px from the mask
    assert not metrics.pointing_game(m, mask)
    assert not metrics.pointing_game(m, mask, tolerance=2.8)
    assert metrics.pointing_game(m, mask, tolerance=2.9)
    m = torch.zeros(10, 10)
    m[0, 3] = 1.0  # 3 px away along a row
    assert metrics.pointing_game(m, mask, tolerance=3) and not metrics.pointing_game(m, mask, tolerance=2)
    with pytest.raises(ValueError, match="tolerance"):
        metrics.pointing_game(m, mask, tolerance=-1)


# ----------------------------------------------------------------------------- energy


def test_energy_ratio_and_inside_exact():
    mask = _mask(4, 4, 0, 2, 0, 2)  # 4 pixels in, 12 out
    m = torch.zeros(4, 4)
    m[:2, :2] = 1.0
    m[3, 3] = 0.6  # outside mean 0.6 / 12 = 0.05
    assert metrics.energy_ratio(m, mask) == pytest.approx(1.0 / 0.05)
    assert metrics.energy_inside(m, mask) == pytest.approx(4.0 / 4.6)
    assert metrics.energy_ratio(metrics.uniform_map(4, 4), mask) == 1.0
    assert metrics.energy_inside(metrics.uniform_map(4, 4), mask) == 0.25
    # no energy at all: treated as uniform
    assert metrics.energy_ratio(torch.zeros(4, 4), mask) == 1.0
    assert metrics.energy_inside(torch.zeros(4, 4), mask) == 0.25
    # energy inside only
    only = torch.zeros(4, 4)
    only[0, 0] = 1.0
    assert metrics.energy_ratio(only, mask) == math.inf and metrics.energy_inside(only, mask) == 1.0
    # all the energy outside
    out = torch.zeros(4, 4)
    out[3, 3] = 1.0
    assert metrics.energy_ratio(out, mask) == 0.0 and metrics.energy_inside(out, mask) == 0.0


def test_discrimination_uses_mean_not_sum():
    big = _mask(8, 8, 0, 4, 0, 4)  # 16 px
    small = _mask(8, 8, 6, 8, 6, 8)  # 4 px
    m = torch.zeros(8, 8)
    m[big] = 0.5  # sum 8, mean 0.5
    m[small] = 0.9  # sum 3.6, mean 0.9
    assert metrics.discrimination(m, small, big) is True
    assert metrics.discrimination(m, big, small) is False
    assert metrics.discrimination(metrics.uniform_map(8, 8), small, big) is False  # tie: miss


def test_bad_inputs_name_the_argument():
    mask = _mask(4, 4, 0, 2, 0, 2)
    with pytest.raises(TypeError, match="mask"):
        metrics.pointing_game(torch.rand(4, 4), mask.float())
    with pytest.raises(ValueError, match="mask.*shape"):
        metrics.energy_ratio(torch.rand(4, 5), mask)
    with pytest.raises(ValueError, match="empty"):
        metrics.energy_inside(torch.rand(4, 4), torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="whole image"):
        metrics.energy_ratio(torch.rand(4, 4), torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="saliency.*NaN"):
        metrics.pointing_game(torch.full((4, 4), float("nan")), mask)
    with pytest.raises(ValueError, match="saliency.*\\(H, W\\)"):
        metrics.pointing_game(torch.rand(1, 4, 4), mask)


# ----------------------------------------------------------------------------- localisation


def test_connected_components_match_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    g = torch.Generator().manual_seed(0)
    for p in (0.3, 0.5, 0.7):
        for _ in range(5):
            m = torch.rand(23, 31, generator=g) < p
            expected = torch.from_numpy(ndimage.label(m.numpy())[0]).long()
            assert torch.equal(metrics.connected_components(m, backend="torch"), expected)
            assert torch.equal(metrics.connected_components(m), expected)
    # diagonal neighbours are separate segments (4-connectivity)
    d = torch.eye(3, dtype=torch.bool)
    assert metrics.connected_components(d, backend="torch").tolist() == [[1, 0, 0], [0, 2, 0], [0, 0, 3]]


def test_largest_segment_box_threshold_and_iou():
    m = torch.zeros(10, 10)
    m[1:3, 1:3] = 1.0  # 4 px segment at the peak
    m[5:9, 4:9] = 0.2  # 20 px segment at 20% of the max: above 15%
    assert metrics.largest_segment_box(m) == (4, 5, 9, 9)
    assert metrics.largest_segment_box(m, threshold=0.25) == (1, 1, 3, 3)
    m[5:9, 4:9] = 0.1  # below 15%: only the peak survives
    assert metrics.largest_segment_box(m) == (1, 1, 3, 3)
    assert metrics.largest_segment_box(torch.zeros(5, 5)) is None
    assert metrics.box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert metrics.box_iou((0, 0, 2, 2), (2, 2, 4, 4)) == 0.0
    assert metrics.localization(m, (1, 1, 3, 3)) is True
    assert metrics.localization(m, (1, 1, 4, 4)) is False  # IoU 4/9 < 0.5
    assert metrics.localization(m, (1, 1, 3, 5)) is True  # IoU 4/8 = 0.5
    assert metrics.localization(torch.zeros(10, 10), (1, 1, 3, 3)) is False


# ----------------------------------------------------------------------------- deletion / insertion


def test_deletion_insertion_exact_curves():
    image = torch.zeros(1, 2, 2)
    image[0, 0, 0] = 1.0  # one bright pixel
    model_fn = lambda x: x[:, 0, 0, 0]  # noqa: E731  "probability" = that pixel's value
    good = torch.tensor([[1.0, 0.5], [0.2, 0.1]])  # ranks the bright pixel first
    bad = good.flip(0, 1)  # ranks it last
    start = torch.zeros_like(image)
    r = metrics.deletion_insertion(model_fn, image, good, steps=4, start=start)
    assert r.deletion.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert r.insertion.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0]
    assert r.deletion_auc == pytest.approx(0.5 / 4) and r.insertion_auc == pytest.approx(3.5 / 4)
    r = metrics.deletion_insertion(model_fn, image, bad, steps=4, start=start, batch_size=2)
    assert r.deletion.tolist() == [1.0, 1.0, 1.0, 1.0, 0.0]
    assert r.deletion_auc == pytest.approx(3.5 / 4) and r.insertion_auc == pytest.approx(0.5 / 4)
    # mean brightness falls linearly under deletion of a uniform image: AUC 1/2
    flat = torch.ones(3, 4, 4)
    lin = metrics.deletion_insertion(lambda x: x.mean(dim=(1, 2, 3)), flat, torch.rand(4, 4), steps=8)
    assert torch.allclose(lin.deletion, torch.linspace(1, 0, 9)) and lin.deletion_auc == pytest.approx(0.5)
    with pytest.raises(ValueError, match="saliency.*size"):
        metrics.deletion_insertion(model_fn, image, torch.rand(3, 3))


def test_gaussian_blur_keeps_constant_images():
    x = torch.full((3, 20, 20), 0.4)
    assert torch.allclose(metrics.gaussian_blur(x), x, atol=1e-6)
    y = torch.zeros(1, 21, 21)
    y[0, 10, 10] = 1.0
    b = metrics.gaussian_blur(y)
    g = torch.exp(-torch.arange(-5.0, 6.0) ** 2 / 50)  # the 11-tap, sigma-5 kernel
    assert b.sum() == pytest.approx(1.0, abs=1e-5)
    assert b[0, 10, 10] == pytest.approx(float((1 / g.sum()) ** 2)) and b[0, 10, 10] == b.max()


# ----------------------------------------------------------------------------- baselines


def test_baselines():
    c = metrics.center_prior(5, 5, sigma=0.2)
    assert c[2, 2] == 1.0 and c.argmax() == 12 and torch.allclose(c, c.T) and torch.allclose(c, c.flip(0))
    assert c[2, 3] == pytest.approx(math.exp(-0.5 * (1 / (0.2 * 5)) ** 2))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(metrics.random_map(4, 6, generator=g1), metrics.random_map(4, 6, generator=g2))
    assert metrics.uniform_map(2, 3).tolist() == [[1.0] * 3] * 2
