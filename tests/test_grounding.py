"""Measured grounding: per-word maps cross-checked with Captum, the report's counts and baselines, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

import mmexplain as mx
from mmexplain import zoo
from mmexplain.cli import main
from mmexplain.evaluation.grounding import (
    applicable_methods, format_leaderboard, format_report, grounding_report, kind_of, leaderboard,
)



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


def test_report_maps_are_the_explainers_maps(random_models, monkeypatch):
    """Each item's map is exactly explain_caption's / explain_answer's map of that word / answer."""
    captioner, vqa = random_models
    seeds = mx.world.split_seeds("test", 2)
    seen = []
    real_add = mx.evaluation.scoring.Tally.add

    def spy(self, groups, maps, mask, other, box):
        seen.append((list(groups), maps["gradcam"].clone()))
        return real_add(self, groups, maps, mask, other, box)

    monkeypatch.setattr(mx.evaluation.scoring.Tally, "add", spy)
    grounding_report(captioner, vqa, seeds, methods=["gradcam"])
    expected = []
    for s in seeds:
        scene = mx.world.generate(s)
        ex = mx.explain_caption(captioner, scene.image, scene.caption)
        expected += [ex.maps[i] for i in sorted(scene.alignment)]
    n = len(expected)
    caption_maps = [m for groups, m in seen if "unique" in groups or "shared" in groups][:n]
    assert len(caption_maps) == n
    for got, want in zip(caption_maps, expected):
        assert torch.equal(got, want)
    scene = mx.world.generate(seeds[0])
    qa = next(q for q in scene.questions if q.objects)
    ax = mx.explain_answer(vqa, scene.image, qa.question, qa.answer)
    assert any(torch.equal(m, ax.maps[0]) for groups, m in seen if qa.kind in groups)


def test_report_counts_and_baselines(random_models):
    captioner, vqa = random_models
    seeds = mx.world.split_seeds("test", 5)
    report = grounding_report(captioner, vqa, seeds, methods=["gradcam"])
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
    again = grounding_report(captioner, vqa, seeds, methods=["gradcam"])
    assert again["caption"]["groups"]["all"]["random"] == cap["all"]["random"]
    assert again["caption"]["groups"]["all"]["gradcam"] == pytest.approx(cap["all"]["gradcam"])
    text = format_report(report)
    assert "pointing game" in text and "Grad-CAM" in text and "Goals" not in text and "MISSED" not in text
    with pytest.raises(ValueError, match="seeds"):
        grounding_report(captioner, vqa, [])
    with pytest.raises(TypeError, match="vqa"):
        grounding_report(captioner, captioner, seeds)
    with pytest.raises(ValueError, match="methods"):
        grounding_report(captioner, vqa, seeds, methods=["saliency"])


def test_leaderboard_rows_and_applicability(random_models):
    captioner, vqa = random_models
    classifier = zoo.new("classifier", seed=0)
    assert [kind_of(m) for m in (captioner, vqa, classifier)] == ["caption", "answer", "class"]
    assert "relevancy" not in applicable_methods(captioner, ["gradcam", "relevancy", "guided"])
    report = leaderboard({"cap": captioner, "cls": classifier}, mx.world.split_seeds("test", 2),
                         methods=["gradcam", "hirescam", "guided"])
    rows = {(r["model"], r["method"]): r for r in report["rows"]}
    assert set(rows) == {(m, k) for m in ("cap", "cls") for k in ("gradcam", "hirescam", "guided", "uniform",
                                                                   "center", "random")}
    # GAP + linear classifier: the gradient is spatially constant, so HiResCAM's maps are Grad-CAM's
    assert rows[("cls", "hirescam")]["pointing"] == rows[("cls", "gradcam")]["pointing"]
    assert rows[("cls", "uniform")]["energy_ratio"] == pytest.approx(1.0)
    assert rows[("cap", "gradcam")]["seconds_per_item"] > 0 and rows[("cap", "uniform")]["seconds_per_item"] is None
    assert "| cap |" in format_leaderboard(report) and "Guided Grad-CAM" in format_leaderboard(report)
    # Zhang et al.'s tolerance widens each mask, so it only adds hits; a uniform map's chance grows with the mask
    scored = [r for r in rows.values() if r["pointing"] is not None]
    assert scored and all(r["pointing_tolerance"] >= r["pointing"] for r in scored)
    assert rows[("cap", "uniform")]["pointing_tolerance"] > rows[("cap", "uniform")]["pointing"]
    table = format_leaderboard(report).splitlines()[2:]
    assert table[0].count("|") == 10 and all(line.count("|") == 10 for line in table)


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
    assert main(["evaluate", "grounding", "--n", "1", "--methods", "saliency", "--models", str(tmp_path / "models")]) == 2
    assert main(["evaluate", "grounding", "--n", "1", "--on", "zebra", "--models", str(tmp_path / "models")]) == 2
    capsys.readouterr()
    assert main(["evaluate", "grounding", "--scenes", "1", "--on", "captioner", "--methods", "gradcam,layercam",
                 "--models", str(tmp_path / "models")]) == 0
    assert "| captioner |" in capsys.readouterr().out


def test_shipped_models_report():
    captioner, vqa = _shipped("captioner"), _shipped("vqa")
    report = grounding_report(captioner, vqa, mx.world.split_seeds("test", 10), methods=["gradcam"])
    cap, ans = report["caption"]["groups"]["all"], report["vqa"]["groups"]["all"]
    # floors well under the measured values (500 scenes: pointing 0.517, energy ratio 7.66)
    assert cap["gradcam"]["pointing"] > 0.2 > cap["uniform"]["pointing"]
    assert report["caption"]["word_accuracy"] > 0.9
    assert cap["gradcam"]["pointing"] > cap["center"]["pointing"] and cap["gradcam"]["energy_ratio"] > 3.0
    assert ans["gradcam"]["energy_ratio"] > ans["uniform"]["energy_ratio"]


def test_cli_grounding_on_coco_format_data(random_models, tmp_path, capsys):
    """ShapeWorld exported as COCO files goes through --coco end to end; missing partners are one-line errors."""
    captioner, _ = random_models
    zoo.save(captioner, tmp_path / "models" / "captioner")
    data = tmp_path / "coco"
    mx.world.export_coco(mx.world.split_seeds("test", 3), data)
    base = ["evaluate", "grounding", "--coco", str(data / "instances.json"), "--models", str(tmp_path / "models")]
    assert main(base + ["--captions", str(data / "captions.json"), "--images", str(data / "images"),
                        "--methods", "gradcam", "--json", str(tmp_path / "coco.json")]) == 0
    out = capsys.readouterr().out
    assert "matched caption words on 3 images" in out and "| Grad-CAM |" in out
    report = json.loads((tmp_path / "coco.json").read_text())
    assert report["words"] > 0 and report["groups"]["all"]["n"] == report["words"]
    assert main(base + ["--images", str(data / "images")]) == 2
    assert main(base + ["--captions", str(data / "captions.json")]) == 2
