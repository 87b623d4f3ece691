"""The one method registry: a user's method registered under a new name reaches every entry point."""

from __future__ import annotations

import re

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
    assert re.search(r"^double-gradcam +Grad-CAM x 2 \(a test method\)$", capsys.readouterr().out, re.M)
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


# ----------------------------------------------------------------------------- a user's method, end to end
class PeakGradCAM(mx.methods.GradientMethod):
    """A method written by a user: w_k = max_ij dy/dA_kij x mean_ij A_kij (only ``weights`` is overridden)."""

    def weights(self, activation, gradient):
        return gradient.amax(dim=(-2, -1)) * activation.mean(dim=(-2, -1))  # (N, B, K)


def _by_hand(model, layer, inputs, score, size):
    """The PeakGradCAM map by hand: forward hook, autograd.grad, max, weighted sum, ReLU, upsample."""
    store = {}
    module = model.get_submodule(layer)
    handle = module.register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    try:
        out = model(*inputs) if isinstance(inputs, tuple) else model(inputs)
    finally:
        handle.remove()
    a = store["a"]  # (1, K, u, v)
    (g,) = torch.autograd.grad(score(out).sum(), a)
    w = g.amax(dim=(-2, -1)) * a.mean(dim=(-2, -1))  # (1, K)
    cam = torch.relu((w[..., None, None] * a).sum(dim=1)).detach()  # (1, u, v)
    return mx.methods.upsample_and_normalize(cam, size)[0]  # (H, W)


@pytest.fixture
def peak():
    spec = mx.methods.register("peakgradcam", PeakGradCAM, description="max-gradient channel weights (a test method)")
    try:
        yield spec
    finally:
        del mx.methods.METHODS["peakgradcam"]


def test_a_user_gradient_method_gives_the_hand_computed_map_through_every_explainer(peak):
    from mmexplain.targets import AnswerScore, ClassLogit, SequenceLogProb

    torch.manual_seed(0)
    captioner, vqa, classifier = (zoo.new(name, seed=None) for name in ("captioner", "vqa", "classifier"))
    scene = world.generate(world.split_seeds("test", 1)[0])
    words = scene.caption.split()[:4]
    ex = mx.explain_caption(captioner, scene.image, " ".join(words), method="peakgradcam")
    ids = captioner.vocab.encode(words)
    inputs = (captioner.preprocess(scene.image), torch.tensor([[captioner.vocab.bos, *ids]]))
    for t in range(len(words)):
        expected = _by_hand(captioner, captioner.default_layer, inputs, SequenceLogProb([ids[t]], positions=[t]), (96, 96))
        torch.testing.assert_close(ex.maps[t], expected, rtol=1e-4, atol=1e-5)

    ax = mx.explain_answer(vqa, scene.image, "what color is the square ?", "red", method="peakgradcam")
    inputs = (vqa.preprocess(scene.image), vqa.encode_question("what color is the square ?")[None])
    expected = _by_hand(vqa, vqa.default_layer, inputs, AnswerScore(vqa.answers.index("red")), (96, 96))
    torch.testing.assert_close(ax.maps[0], expected, rtol=1e-4, atol=1e-5)

    cx = mx.explain_class(classifier, scene.image, [0, 3], method="peakgradcam")
    pixels = classifier.preprocess(scene.image)
    for row, c in enumerate((0, 3)):
        expected = _by_hand(classifier, classifier.default_layer, pixels, ClassLogit(c), tuple(pixels.shape[-2:]))
        torch.testing.assert_close(cx.maps[row], expected, rtol=1e-4, atol=1e-5)
    # the map is its own, not Grad-CAM's
    assert not torch.allclose(cx.maps, mx.explain_class(classifier, scene.image, [0, 3]).maps, atol=1e-3)


def test_a_user_method_runs_through_the_grounding_api(peak):
    """evaluate grounding's API: the method is applicable, scored, and named in the table.

    Waits for the adapters' evaluation path (issue 18's adapter part): until then
    ``leaderboard`` runs the zoo models through ``explain_*`` directly.
    """
    from mmexplain.evaluation.grounding import applicable_methods, format_leaderboard, leaderboard

    torch.manual_seed(0)
    classifier = zoo.new("classifier", seed=None)
    assert applicable_methods(classifier, ["peakgradcam", "relevancy"]) == ["peakgradcam"]
    report = leaderboard({"classifier": classifier}, world.split_seeds("test", 2), methods=["peakgradcam"])
    rows = [r for r in report["rows"] if r["method"] == "peakgradcam"]
    assert len(rows) == 1 and rows[0]["n"] > 0 and rows[0]["pointing"] is not None
    assert "| peakgradcam |" in format_leaderboard(report)


def test_applicability_reads_the_capabilities_an_adapter_states():
    from mmexplain.evaluation.grounding import applicable_methods, capabilities_of, inapplicable_methods
    from mmexplain.methods import method_spec

    stated = frozenset({"layer", "lm"})  # what an LLM-based VLM adapter states
    names = ["gradcam", "occlusion", "guided", "relevancy", "eigencam"]
    assert [m for m in names if method_spec(m).why_not(stated) is None] == ["gradcam", "eigencam"]
    assert method_spec("occlusion").why_not(stated) == (
        "Occlusion needs an image masked before the model runs: its pixel tensor, or a picture the adapter processes "
        "again (picture)")
    assert method_spec("guided").why_not(stated) == (
        "Guided Grad-CAM needs an editable float image tensor (B, C, H, W) among the inputs (pixels); "
        "ReLU-like units for guided backprop (relu)")
    assert method_spec("gradcam").why_not(stated) is None
    torch.manual_seed(0)
    zoo_model = zoo.new("classifier", seed=None)  # no stated capabilities: a zoo model has a layer, pixels, ReLUs
    assert capabilities_of(zoo_model) == {"layer", "pixels", "picture", "image-gradient", "relu"}
    not_here = inapplicable_methods(zoo_model, mx.methods.METHODS)
    assert list(not_here) == ["relevancy", "attention", "tam", "lm-gradcam", "gradxinput"]
    assert applicable_methods(zoo_model, ["gradcam", "relevancy", "guided"]) == ["gradcam", "guided"]
