"""viz.core: overlays align with the image, figures render and save atomically."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import mmexplain as mx
from mmexplain.viz import core


@pytest.fixture
def image() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(3, 12, 20)


def test_to_image_array(image) -> None:
    arr = mx.viz.to_image_array(image)
    assert arr.shape == (12, 20, 3) and arr.dtype == np.float32
    np.testing.assert_allclose(arr[3, 7], image[:, 3, 7].numpy())
    gray = mx.viz.to_image_array(image[0])
    assert gray.shape == (12, 20, 3) and np.allclose(gray[..., 0], gray[..., 2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mx.viz.to_image_array(image * 3 - 1)  # looks like a mean/std-normalised tensor
    with pytest.raises(ValueError, match="shape"):
        mx.viz.to_image_array(torch.rand(4, 5, 5))
    grad = torch.zeros(3, 4, 4)
    grad[0, 0, 0], grad[1, 1, 1] = 2.0, -2.0
    shown = mx.viz.to_image_array(grad, normalize=True)  # zero -> grey, signs either side
    assert shown[2, 2, 0] == pytest.approx(0.5) and shown[0, 0, 0] > 0.5 > shown[1, 1, 1]
    assert np.all(mx.viz.to_image_array(torch.zeros(3, 2, 2), normalize=True) == 0.5)


def test_overlay_is_pixel_aligned_with_the_image(image) -> None:
    cam_map = torch.zeros(12, 20)
    cam_map[4, 9] = 1.0
    ax = mx.viz.overlay(image, cam_map, title="t")
    base, shown = ax.images
    assert base.get_extent() == shown.get_extent() == [-0.5, 19.5, 11.5, -0.5]
    assert shown.get_interpolation() == "nearest"
    assert shown.norm.vmin == 0.0 and shown.norm.vmax == 1.0
    np.testing.assert_array_equal(np.asarray(shown.get_array()), cam_map.numpy())
    cbar_axes = [a for a in ax.figure.axes if a is not ax]
    assert len(cbar_axes) == 1
    ticks = cbar_axes[0].get_yticks()
    assert ticks[0] == 0.0 and ticks[-1] == 1.0
    assert ax.get_title() == "t"


def test_overlay_renders_map_cell_over_its_image_pixel() -> None:
    """Render with alpha=1 on a black image: cell (4, 9) is jet's top colour, its neighbours the bottom."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    cam_map = torch.zeros(12, 20)
    cam_map[4, 9] = 1.0
    ax = mx.viz.overlay(torch.zeros(3, 12, 20), cam_map, alpha=1.0)
    canvas = FigureCanvasAgg(ax.figure)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())  # (rows, cols, 4), row 0 at the top

    def pixel(row: float, col: float) -> np.ndarray:
        x, y = ax.transData.transform((col, row))  # display coords, origin bottom-left
        return rgba[int(rgba.shape[0] - y), int(x), :3].astype(int)

    hot, cold = np.array([128, 0, 0]), np.array([0, 0, 128])  # jet(1), jet(0)
    for dr, dc in [(0, 0), (0.4, 0.4), (-0.4, -0.4), (0.4, -0.4), (-0.4, 0.4)]:  # inside the cell
        assert np.abs(pixel(4 + dr, 9 + dc) - hot).max() <= 8, (dr, dc)
    for dr, dc in [(0, 1), (0, -1), (1, 0), (-1, 0), (0, 0.65), (0.65, 0)]:  # neighbours
        assert np.abs(pixel(4 + dr, 9 + dc) - cold).max() <= 8, (dr, dc)


def test_overlay_rejects_unnormalised_maps(image) -> None:
    with pytest.raises(ValueError, match="map values must lie in"):
        mx.viz.overlay(image, torch.rand(12, 20) * 5)
    with pytest.raises(ValueError, match="alpha"):
        mx.viz.overlay(image, torch.rand(12, 20), alpha=2.0)


def test_plot_maps_grid_and_save(tmp_path) -> None:
    torch.manual_seed(0)
    images, maps = torch.rand(2, 3, 10, 10), torch.rand(3, 2, 10, 10)
    fig = mx.viz.plot_maps(images, maps, titles=["a", "b", "c"])
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 2 * 4
    assert [ax.get_title() for ax in panels[:4]] == ["image", "a", "b", "c"]
    path = mx.viz.save_figure(fig, tmp_path / "sub" / "dir" / "grid.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(path.parent) == ["grid.png"]  # no temporary files left behind
    one = mx.viz.plot_maps(images, maps[0])  # (B, H, W): one target
    assert len([ax for ax in one.axes if ax.get_label() != "<colorbar>"]) == 2 * 2
    with pytest.raises(ValueError, match="titles"):
        mx.viz.plot_maps(images, maps, titles=["a"])
    with pytest.raises(ValueError, match="maps must be"):
        mx.viz.plot_maps(images, torch.rand(3, 10, 10))


def test_save_figure_errors_and_atomicity(tmp_path, image, monkeypatch) -> None:
    fig = mx.viz.overlay(image, torch.rand(12, 20)).figure
    with pytest.raises(ValueError, match=r"extension '\.xyz' is not a figure format"):
        mx.viz.save_figure(fig, tmp_path / "fig.xyz")
    with pytest.raises(ValueError, match="extension"):
        mx.viz.save_figure(fig, tmp_path / "fig")
    with pytest.raises(IsADirectoryError):
        (tmp_path / "d.png").mkdir()
        mx.viz.save_figure(fig, tmp_path / "d.png")

    target = tmp_path / "keep.png"
    target.write_bytes(b"old")

    def broken_savefig(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="disk full"):
        mx.viz.save_figure(fig, target)
    assert target.read_bytes() == b"old"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.png", "keep.png"]  # no temp file left
    monkeypatch.undo()
    mx.viz.save_figure(fig, tmp_path / "fig.svg")
    assert (tmp_path / "fig.svg").read_text().lstrip().startswith("<?xml")


def test_viz_imports_matplotlib_lazily() -> None:
    import subprocess
    import sys

    code = "import sys, mmexplain as mx; mx.GuidedBackprop; import mmexplain.viz; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert core.__name__ == "mmexplain.viz.core"


def test_viz_does_not_import_the_explainers() -> None:
    """viz draws results and never runs a model: importing it leaves mmexplain.explain unloaded."""
    import subprocess
    import sys

    code = ("import sys, mmexplain.viz.caption, mmexplain.viz.core; from mmexplain.words import FUNCTION_WORDS; "
            "print('mmexplain.explain' in sys.modules, 'a' in FUNCTION_WORDS)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]
