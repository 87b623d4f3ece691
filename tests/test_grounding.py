"""Measured grounding: per-word maps cross-checked with Captum, the report's counts and baselines, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

import mmexplain as mx
from mmexplain import metrics, zoo
from mmexplain.cli import main
from mmexplain.evaluation.grounding import caption_word_maps, format_report, grounding_report



@pytest.fixture(autouse=True)
def one_thread():
    """Small models: one thread is faster than two (and much faster on a shared, busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def random_models():
    torch.manual_seed(0)
    return zoo.new("captioner", seed=None), zoo.new("vqa", seed=None)


def _shipped(name: str):
    try:
        return zoo.load(name)
    except FileNotFoundError:
        pytest.skip(f"models/{name} not shipped yet")


def test_word_maps_equal_captum_layergradcam(random_models):
    """mmexplain's per-word raw maps == Captum LayerGradCam with a (t, word) target, word by word."""
    captum_attr = pytest.importorskip("captum.attr")
    captioner, _ = random_models
    scene = mx.world.generate(mx.world.split_seeds("test", 3)[2])
    ex = mx.explain_caption(captioner, scene.image, scene.caption)
    words = scene.caption.split()
    tokens = torch.tensor([[captioner.vocab.bos, *captioner.vocab.encode(words)]])  # (1, T+1)
    layer = captioner.get_submodule(captioner.default_layer)
    # Captum explains an output index; log-softmax outputs make (t, word) the word's log-probability
    gc = captum_attr.LayerGradCam(lambda images, toks: captioner(images, toks).log_softmax(-1), layer)
    image = scene.image[None]
    for t, word in enumerate(words):
        pre = gc.attribute(image, target=(t, captioner.vocab.stoi[word]), additional_forward_args=(tokens,))  # (1, 1, u, v)
        assert torch.allclose(ex.result.pre_relu[t, 0], pre[0, 0], atol=1e-6, rtol=1e-4), word
        # relu_attributions=True is Captum's ReLU of the same sum
        assert torch.allclose(ex.result.raw[t, 0], pre[0, 0].relu(), atol=1e-6, rtol=1e-4), word
    assert ex.result.raw[:, 0].std(dim=0).mean() > 0  # the words' maps differ: the check is not vacuous


def test_batched_word_maps_equal_explain_caption(random_models):
    captioner, _ = random_models
    scenes = [mx.world.generate(s) for s in mx.world.split_seeds("test", 40)]
    same = [s for s in scenes if len(s.caption.split()) == 10][:3]
    assert len(same) == 3
    words = sorted(same[0].alignment)
    res = caption_word_maps(captioner, torch.stack([s.image for s in same]), [s.caption for s in same], words)
    assert res.maps.shape == (len(words), 3, 96, 96)
    for b, scene in enumerate(same):
        ex = mx.explain_caption(captioner, scene.image, scene.caption)
        assert torch.allclose(res.maps[:, b], ex.maps[words], atol=1e-5)
        assert torch.allclose(res.raw[:, b], ex.result.raw[words, 0], atol=1e-6, rtol=1e-4)
        assert torch.allclose(res.logits[b], ex.result.output[0], atol=1e-5)
    other = next(s for s in scenes if len(s.caption.split()) != 10)
    with pytest.raises(ValueError, match="equal length"):
        caption_word_maps(captioner, torch.stack([other.image, same[0].image]), [other.caption, same[0].caption], [1])


def test_report_counts_and_baselines(random_models):
    captioner, vqa = random_models
    seeds = mx.world.split_seeds("test", 5)
    report = grounding_report(captioner, vqa, seeds, guided=False, batch_size=4)
    scenes = [mx.world.generate(s) for s in seeds]
    cap, ans = report["caption"]["groups"], report["vqa"]["groups"]
    assert cap["all"]["n"] == sum(len(s.alignment) for s in scenes)
    assert cap["color"]["n"] == cap["size"]["n"] == cap["shape"]["n"] == cap["all"]["n"] // 3
    assert cap["all"]["n_two"] == sum(len(s.alignment) for s in scenes if len(s.objects) == 2)
    assert cap["unique"]["n"] + cap.get("shared", {"n": 0})["n"] == cap["all"]["n"]
    single = sum(len(s.alignment) for s in scenes if len(s.objects) == 1)
    assert cap["unique"]["n"] >= single > 0  # a word of a one-object scene is always unique
    refs = [(s, q) for s in scenes for q in s.questions if q.objects]
    assert ans["all"]["n"] == report["vqa"]["questions"] == len(refs)
    # uniform map: energy ratio exactly 1, pointing at chance (mask share of the image)
    shares = [float(s.objects[j].mask.float().mean()) for s in scenes for j in s.alignment.values()]
    assert cap["all"]["uniform"]["energy_ratio"] == pytest.approx(1.0)
    assert cap["all"]["uniform"]["pointing"] == pytest.approx(sum(shares) / len(shares))
    assert cap["all"]["uniform"]["discrimination"] == 0.0  # a tie is a miss
    assert "guided" not in cap["all"] and report["methods"] == ["gradcam", "uniform", "center", "random"]
    # the random baseline is seeded
    again = grounding_report(captioner, vqa, seeds, guided=False, batch_size=3)
    assert again["caption"]["groups"]["all"]["random"] == cap["all"]["random"]
    assert again["caption"]["groups"]["all"]["gradcam"] == pytest.approx(cap["all"]["gradcam"])
    text = format_report(report)
    assert "pointing game" in text and "Grad-CAM" in text and "Goals" not in text and "MISSED" not in text
    with pytest.raises(ValueError, match="seeds"):
        grounding_report(captioner, vqa, [])
    with pytest.raises(TypeError, match="vqa"):
        grounding_report(captioner, captioner, seeds)


def test_cli_writes_json(random_models, tmp_path, capsys):
    captioner, vqa = random_models
    zoo.save(captioner, tmp_path / "models" / "captioner")
    zoo.save(vqa, tmp_path / "models" / "vqa")
    out = tmp_path / "report.json"
    code = main(["evaluate", "grounding", "--n", "2", "--models", str(tmp_path / "models"), "--json", str(out),
                 "--no-guided"])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["n_scenes"] == 2 and data["layer"] == captioner.default_layer
    assert "pointing game" in capsys.readouterr().out
    assert main(["evaluate", "grounding", "--n", "0", "--models", str(tmp_path / "models")]) == 2
    assert main(["evaluate", "grounding", "--n", "1", "--models", str(tmp_path / "nowhere")]) == 2
    assert main(["evaluate", "grounding", "--n", "1", "--layer", "encoder.nope", "--models", str(tmp_path / "models")]) == 2


def test_shipped_captioner_words_point_at_their_objects():
    """Floors well under the measured values (n=500: pointing 0.395, energy ratio 5.96, discrimination 0.688)."""
    captioner = _shipped("captioner")
    scenes = [s for s in (mx.world.generate(x) for x in mx.world.split_seeds("test", 40)) if len(s.objects) == 2][:12]
    words = sorted(scenes[0].alignment)
    res = caption_word_maps(captioner, torch.stack([s.image for s in scenes]), [s.caption for s in scenes], words)
    hits, ratios, discriminates = [], [], []
    for b, scene in enumerate(scenes):
        for n, i in enumerate(words):
            j = scene.alignment[i]
            m, mask = res.maps[n, b], scene.objects[j].mask
            hits.append(metrics.pointing_game(m, mask))
            ratios.append(metrics.energy_ratio(m, mask))
            discriminates.append(metrics.discrimination(m, mask, scene.objects[1 - j].mask))
    assert sum(hits) / len(hits) > 0.2  # chance (mask share of the image) is about 0.05
    assert sum(ratios) / len(ratios) > 3.0
    assert sum(discriminates) / len(discriminates) > 0.55


def test_shipped_models_report():
    captioner, vqa = _shipped("captioner"), _shipped("vqa")
    report = grounding_report(captioner, vqa, mx.world.split_seeds("test", 10), guided=False)
    cap, ans = report["caption"]["groups"]["all"], report["vqa"]["groups"]["all"]
    assert report["caption"]["word_accuracy"] > 0.9
    assert cap["gradcam"]["pointing"] > cap["center"]["pointing"] and cap["gradcam"]["energy_ratio"] > 3.0
    assert ans["gradcam"]["energy_ratio"] > ans["uniform"]["energy_ratio"]
