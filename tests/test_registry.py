"""The one method registry: a user's method registered under a new name reaches every entry point."""

from __future__ import annotations

import pytest
import torch

import mmexplain as mx
from mmexplain import world, zoo
from mmexplain.cli import main


class DoubleGradCAM(mx.GradCAM):
    """Grad-CAM with every channel weight doubled (maps equal Grad-CAM's; raw is twice)."""

    def _weights(self, activation, gradient, call):
        return 2 * gradient.mean(dim=(-2, -1))  # (N, B, K)


@pytest.fixture
def registered():
    spec = mx.methods.register("double-gradcam", DoubleGradCAM, description="Grad-CAM x 2 (a test method)",
                               display="Double Grad-CAM")
    try:
        yield spec
    finally:
        del mx.methods.METHODS["double-gradcam"]


def test_a_registered_method_is_in_the_registry_the_cli_list_and_explain_caption(registered, capsys):
    assert mx.methods.METHODS["double-gradcam"] is registered and mx.explain.METHODS["double-gradcam"] is registered
    assert registered.uses_gradient and registered.needs_layer and registered.requires == {"layer"}
    assert mx.methods.get_method("Double-GradCAM") is DoubleGradCAM
    assert mx.methods.display_name("double-gradcam") == "Double Grad-CAM"
    assert main(["caption", "--method", "list"]) == 0
    assert "double-gradcam  Grad-CAM x 2 (a test method)" in capsys.readouterr().out
    torch.manual_seed(0)
    captioner = zoo.new("captioner", seed=None)
    scene = world.generate(world.split_seeds("test", 1)[0])
    ex = mx.explain_caption(captioner, scene.image, scene.caption, method="double-gradcam")
    plain = mx.explain_caption(captioner, scene.image, scene.caption)
    torch.testing.assert_close(ex.result.raw, 2 * plain.result.raw)
    torch.testing.assert_close(ex.maps, plain.maps)


def test_register_names_its_bad_arguments():
    with pytest.raises(ValueError, match="name: 'gradcam' is already registered"):
        mx.methods.register("gradcam", DoubleGradCAM, description="again")
    with pytest.raises(ValueError, match="requires: unknown capability 'gpu'"):
        mx.methods.register("x-cam", DoubleGradCAM, description="x", requires={"gpu"})
    with pytest.raises(ValueError, match="description: expected one non-empty line"):
        mx.methods.register("x-cam", DoubleGradCAM, description="two\nlines")
    with pytest.raises(ValueError, match="saliency: expected one of map, abs-channel-sum"):
        mx.methods.register("x-cam", DoubleGradCAM, description="x", saliency="max")
    assert "x-cam" not in mx.methods.METHODS
