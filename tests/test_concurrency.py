"""One model, many threads: explanations and plain predictions run at once, each result
equal to its value computed alone.

Hooks act only for the thread (and call) that registered them, so another thread's
forward through the hooked layer passes untouched, and two explanations of one model
never see each other's activations.
"""

from __future__ import annotations

import threading

import pytest
import torch

import mmexplain as mx

from conftest import assert_unchanged, snapshot

THREADS = 8
ROUNDS = 6  # calls per thread: ROUNDS explanations + ROUNDS predictions each


def _inputs(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.rand(1, 3, 96, 96, generator=g) for _ in range(n)]


def test_threads_explaining_and_predicting_one_model_agree_with_sequential_results():
    model = mx.zoo.new("classifier")
    cam = mx.GradCAM(model, model.default_layer)
    xs = _inputs(THREADS)
    expected_maps = [cam(x, mx.targets.ClassLogit(i % 4)).maps for i, x in enumerate(xs)]
    with torch.no_grad():
        expected_logits = [model(x) for x in xs]

    results: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, bool]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def work(i: int) -> None:
        try:
            start.wait()
            for r in range(ROUNDS):
                res = cam(xs[i], mx.targets.ClassLogit(i % 4))
                with torch.no_grad():
                    logits = model(xs[i])  # through the hooked layer while other threads explain
                results[i, r] = (res.maps, logits, logits.requires_grad)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == THREADS * ROUNDS
    for (i, _), (maps, logits, grad) in results.items():
        assert not grad
        torch.testing.assert_close(maps, expected_maps[i], rtol=0, atol=1e-6)
        torch.testing.assert_close(logits, expected_logits[i], rtol=0, atol=1e-6)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_several_methods_of_one_model_at_once():
    model = mx.zoo.new("classifier")
    x = _inputs(1)[0]
    makers = [mx.GradCAM, mx.HiResCAM, mx.GradCAMPlusPlus, mx.LayerCAM]
    expected = [m(model, model.default_layer)(x, mx.targets.ClassLogit(2)).maps for m in makers]
    out: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for _ in range(3):
                out[k] = makers[k](model, model.default_layer)(x, mx.targets.ClassLogit(2)).maps
                assert torch.equal(out[k], expected[k]) or torch.allclose(out[k], expected[k], atol=1e-6)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(makers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(out) == len(makers)


# ---------------------------------------------------------------- transformers models: Relevancy records one thread

def _ved_calls(model):
    """tiny-ved: Relevancy of a caption, a greedy caption, Grad-CAM of a caption."""
    scene = mx.world.generate(2_000_001, size=64)
    pixels = model.load_image(scene.image)  # (1, 3, H, W)
    return {"relevancy": lambda: mx.explain_caption(model, scene.image, scene.caption, method="relevancy").maps,
            "generate": lambda: model.generate(pixels),
            "gradcam": lambda: mx.explain_caption(model, scene.image, scene.caption, method="gradcam").maps}


def _vilt_calls(model):
    """tiny-vilt: Relevancy of an answer, a prediction (the logits), Grad-CAM++ of an answer."""
    scene = mx.world.generate(2_000_001, size=64)
    question = scene.questions[0].question
    pixels = model.load_image(scene.image)  # (1, 3, H, W)

    def predict():
        query = model.query(pixels, question)
        with torch.no_grad():
            return model.hf_model(**query.inputs).logits

    return {"relevancy": lambda: mx.explain_answer(model, scene.image, question, method="relevancy").map,
            "predict": predict,
            "gradcam++": lambda: mx.explain_answer(model, scene.image, question, method="gradcam++").map}


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return a.shape == b.shape and bool(torch.allclose(a, b, rtol=0, atol=1e-5))
    return a == b


@pytest.mark.parametrize("name,calls", [("tiny-ved", _ved_calls), ("tiny-vilt", _vilt_calls)])
def test_relevancy_generate_and_gradients_in_three_threads(name, calls):
    """Relevancy switches the model's attention to a recording kernel for its call; a thread that
    generates or runs a gradient method meanwhile must neither be recorded nor recorded into."""
    model = mx.zoo.load(name)
    work = calls(model)
    expected = {k: f() for k, f in work.items()}
    assert isinstance(expected["relevancy"], torch.Tensor) and expected["relevancy"].abs().sum() > 0
    before = snapshot(model.model)
    rounds = 4
    results: dict[tuple[str, int], object] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(work))

    def run(k: str) -> None:
        try:
            start.wait()
            for r in range(rounds):
                results[k, r] = work[k]()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in work]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == rounds * len(work)
    for (k, r), value in results.items():
        assert _same(value, expected[k]), (k, r)
    assert_unchanged(model.model, before)
    assert not any(k.startswith("mmexplain_record_") for k in _attention_names())


def _attention_names() -> list[str]:
    from transformers.masking_utils import AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    return [*AttentionInterface._global_mapping, *AttentionMaskInterface._global_mapping]
