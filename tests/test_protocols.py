"""The evaluation protocols: map similarity, ROAD imputation, localisation, PGD, sanity checks, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import mmexplain as mx
from mmexplain import metrics
from mmexplain.evaluation import diagnosis, faithfulness, localization, sanity
from mmexplain.evaluation.items import Item

from conftest import assert_unchanged, snapshot


def _fixed(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(20, 24, generator=g)
    b = (a + 0.5 * torch.rand(20, 24, generator=g)).clamp(max=0.9)  # ties at 0.9
    return a, b


def test_spearman_matches_scipy_with_ties():
    from scipy.stats import spearmanr

    a, b = _fixed()
    assert metrics.spearman(a, b) == pytest.approx(spearmanr(a.flatten(), b.flatten())[0], abs=1e-12)
    assert metrics.spearman(a, -a) == pytest.approx(-1.0)
    assert np.isnan(metrics.spearman(a, torch.ones_like(a)))
    assert metrics.rank(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_ssim_matches_skimage():
    from skimage.metrics import structural_similarity

    a, b = _fixed(1)
    want = structural_similarity(a.double().numpy(), b.double().numpy(), data_range=1.0)
    assert metrics.ssim(a, b) == pytest.approx(want, abs=1e-10)
    assert metrics.ssim(a, a) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="window"):
        metrics.ssim(a[:5, :5], b[:5, :5])


def _hole(h: int = 16, w: int = 16) -> torch.Tensor:
    m = torch.zeros(h, w, dtype=torch.bool)
    m[4:10, 3:12] = True
    m[12, 12] = True
    return m


def test_imputation_of_constant_and_ramp():
    constant = torch.full((3, 16, 16), 0.3)
    assert torch.allclose(metrics.noisy_linear_imputation(constant, _hole(), noise=0), constant, atol=1e-6)
    y, x = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    ramp = torch.stack([0.01 * x + 0.02 * y, 0.03 * x, 0.5 - 0.01 * y])  # (3, 16, 16)
    out = metrics.noisy_linear_imputation(ramp, _hole(), noise=0)
    assert torch.allclose(out, ramp, atol=1e-5)
    noisy = metrics.noisy_linear_imputation(ramp, _hole(), noise=0.05, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noisy[:, ~_hole()], ramp[:, ~_hole()])  # kept pixels untouched
    assert 0.02 < float((noisy - ramp)[:, _hole()].std()) < 0.08
    # a checkerboard is NOT reproduced (the imputation smooths): the test can fail
    board = ((x + y) % 2).expand(3, 16, 16).clone()
    assert float((metrics.noisy_linear_imputation(board, _hole(), noise=0) - board).abs().max()) > 0.3


def test_road_ranks_a_map_that_points_at_the_evidence():
    # the "model" reads the mean of the top-left quadrant: a map on it must make MoRF fall first
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.2 + 0.8
    image[:, 8:, 8:] = 0.0
    fn = lambda x: x[:, :, :8, :8].mean(dim=(1, 2, 3))  # noqa: E731
    good = torch.zeros(16, 16)
    good[:8, :8] = 1.0
    r_good = metrics.road(fn, image, good, noise=0)
    r_bad = metrics.road(fn, image, 1 - good, noise=0)
    assert r_good.morf.shape == (9,)
    assert r_good.morf_auc < r_bad.morf_auc
    assert r_good.lerf_auc > r_good.morf_auc


def test_localization_box_and_iou_on_hand_masks():
    m = torch.zeros(20, 20)
    m[2:6, 3:9] = 1.0  # 24 px segment
    m[12:19, 10:18] = 0.5  # 56 px segment: the largest above 15% of the max
    m[0, 19] = 0.1  # below 0.15 * max
    assert metrics.largest_segment_box(m) == (10, 12, 18, 19)
    assert metrics.box_iou((10, 12, 18, 19), (10, 12, 18, 19)) == 1.0
    assert metrics.box_iou((0, 0, 4, 4), (2, 0, 6, 4)) == pytest.approx(8 / 24)
    assert metrics.localization(m, (9, 12, 18, 19))
    assert not metrics.localization(m, (3, 2, 9, 6))


class _Toy(nn.Module):
    """Two-class linear model on the mean of the red channel: logits (r, 1 - r) * 10."""

    def forward(self, x):
        r = x[:, 0].mean(dim=(1, 2))
        return torch.stack([10 * r, 10 * (1 - r)], dim=1)


def test_pgd_flips_a_toy_model_within_the_ball():
    images = torch.full((2, 3, 8, 8), 0.52)
    adv = diagnosis.pgd_attack(_Toy(), images, 0, eps=0.05, alpha=0.01, steps=20)
    assert (_Toy()(adv).argmax(dim=-1) == 1).all()
    assert float((adv - images).abs().max()) <= 0.05 + 1e-6
    # a radius too small cannot flip it
    small = diagnosis.pgd_attack(_Toy(), images, 0, eps=0.01, alpha=0.005, steps=20)
    assert (_Toy()(small).argmax(dim=-1) == 0).all()


def _tiny_classifier():
    return mx.zoo.new("classifier", config={"widths": (4, 8, 8), "extra": 0})


def test_randomise_copies_and_leaves_the_model_unchanged():
    model = _tiny_classifier()
    before = snapshot(model)
    layers = sanity.parametrised_layers(model)
    assert layers[0] == "fc"
    clone = sanity.randomise(model, layers[:1], seed=0)
    assert_unchanged(model, before)
    assert not torch.equal(clone.fc.weight, model.fc.weight)
    assert torch.equal(clone.encoder.features[0][0].weight, model.encoder.features[0][0].weight)
    with pytest.raises(ValueError, match="layers"):
        sanity.randomise(model, ["nope"])


def test_sanity_check_reports_and_flags():
    model = _tiny_classifier()
    before = snapshot(model)
    report = sanity.sanity_check(model, mx.world.split_seeds("test", 1), methods=["gradcam", "guided"], max_stages=2)
    assert_unchanged(model, before)
    assert [r["stage"] for r in report["cascading"]] == [round(report["layers"] / 2), report["layers"]]
    for row in report["cascading"] + report["independent"]:
        for m in ("gradcam", "guided"):
            assert -1 <= row[m]["spearman"] <= 1 and -1 <= row[m]["ssim"] <= 1
    # identical maps correlate 1: with the threshold below every |Spearman|, every method is flagged
    flagged = sanity.sanity_check(model, mx.world.split_seeds("test", 1), methods=["gradcam"], max_stages=1,
                                  threshold=-1.0)
    assert flagged["flagged"] == ["gradcam"]
    assert "Sanity check" in sanity.format_sanity(report)


def test_compare_identical_maps_is_one():
    a, _ = _fixed()
    row = sanity._compare(a[None], a[None])
    assert row == pytest.approx({"spearman": 1.0, "spearman_abs": 1.0, "ssim": 1.0})


def test_faithfulness_rows_and_baselines():
    model = mx.zoo.load("classifier")
    before = snapshot(model)
    report = faithfulness.faithfulness(model, mx.world.split_seeds("test", 2), methods=["gradcam"], steps=8,
                                       fractions=(0.2, 0.6))
    assert_unchanged(model, before)
    assert report["methods"] == ["gradcam", "random", "center"]
    assert report["rows"]["gradcam"]["deletion_auc"] < report["rows"]["random"]["deletion_auc"]
    assert report["rows"]["gradcam"]["road_morf"] < report["rows"]["random"]["road_morf"]


def test_localization_error_counts_a_hand_made_case():
    class Fixed(nn.Module):
        """Class 0 always first; its map (through the identity layer) is the image's red channel."""

        classes = ["a", "b"]
        default_layer = "body"

        def __init__(self):
            super().__init__()
            self.body = nn.Identity()

        def preprocess(self, image):
            return image[None]

        def forward(self, x):
            a = self.body(x)
            return torch.stack([a[:, 0].mean(dim=(1, 2)) + 1, a[:, 1].mean(dim=(1, 2))], dim=1)

    image = torch.zeros(3, 20, 20)
    image[0, 5:10, 5:10] = 1.0
    right = localization.localization_error(Fixed().eval(), [(image, {0: [(5, 5, 10, 10)]})], top_k=2)
    wrong = localization.localization_error(Fixed().eval(), [(image, {0: [(12, 12, 20, 20)]})], top_k=2)
    absent = localization.localization_error(Fixed().eval(), [(image, {1: [(5, 5, 10, 10)]})], top_k=1)
    assert right["top1_loc_error"] == 0.0 and right["mean_iou"] == pytest.approx(1.0)
    assert wrong["top1_loc_error"] == 1.0 and wrong["top1_cls_error"] == 0.0
    assert absent["top1_cls_error"] == 1.0


def test_items_probability_matches_the_model():
    vqa = mx.zoo.load("vqa")
    scene = mx.world.generate(mx.world.split_seeds("test", 1)[0])
    qa = next(q for q in scene.questions if len(q.objects) == 1)
    item = Item("answer", scene.image, [qa.answer], question=qa.question, answer=qa.answer)
    from mmexplain.evaluation.items import adapter_of

    p = adapter_of(vqa).probability(scene.image[None], item, 0)
    with torch.no_grad():
        want = vqa(scene.image[None], vqa.encode_question(qa.question)[None]).softmax(-1)[0, vqa.answers.index(qa.answer)]
    assert float(p) == pytest.approx(float(want))


def test_cli_sanity_and_faithfulness(tmp_path, capsys):
    from mmexplain.cli import main

    out = tmp_path / "s.json"
    assert main(["evaluate", "sanity", "--on", "classifier", "--scenes", "1", "--methods", "gradcam", "--stages", "1",
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "cascading randomisation" in text and json.loads(out.read_text())["methods"] == ["gradcam"]
    assert main(["evaluate", "faithfulness", "--scenes", "1", "--methods", "gradcam", "--steps", "4"]) == 0
    assert "ROAD MoRF" in capsys.readouterr().out
    assert main(["evaluate", "sanity", "--on", "nope"]) == 2
    assert "--on" in capsys.readouterr().err


def test_export_coco_round_trip_and_word_matching(tmp_path):
    from pycocotools import mask as coco_mask

    from mmexplain.evaluation.coco import coco_grounding, coco_items, match_words, default_word_map
    from mmexplain.world import export_coco

    seeds = list(mx.world.split_seeds("test", 3))
    paths = export_coco(seeds, tmp_path)
    data = json.loads(paths["instances"].read_text())
    scene = mx.world.generate(seeds[0])
    first = [a for a in data["annotations"] if a["image_id"] == 1]
    assert len(first) == len(scene.objects)
    decoded = coco_mask.decode({**first[0]["segmentation"], "counts": first[0]["segmentation"]["counts"].encode()})
    assert np.array_equal(decoded.astype(bool), scene.objects[0].mask.numpy())
    questions = json.loads(paths["questions"].read_text())
    assert len(questions["questions"]) == sum(len(mx.world.generate(s).questions) for s in seeds)
    items = list(coco_items(paths["instances"], paths["images"], captions=paths["captions"]))
    assert items[0].caption == scene.caption
    words = scene.caption.split()
    for i, mask in items[0].words.items():
        obj = scene.objects[scene.alignment[i]]
        assert words[i] == obj.shape and bool((mask & obj.mask).sum() == obj.mask.sum())
    wm = default_word_map()
    assert match_words("A man rides a bike past a fire hydrant.", wm) == {1: "person", 4: "bicycle", 8: "fire hydrant"}
    assert match_words("two teddy bears", {**wm, "teddy bears": "teddy bear"}) == {2: "teddy bear"}
    report = coco_grounding(mx.zoo.load("captioner"), items[:2], methods=["gradcam"])
    assert report["words"] == sum(len(it.words) for it in items[:2])
    assert 0 <= report["groups"]["all"]["gradcam"]["pointing"] <= 1
    with pytest.raises(ValueError, match="instances"):
        list(coco_items(tmp_path / "missing.json", paths["images"]))


def test_failure_modes_explain_the_predicted_and_the_right_answer():
    from mmexplain.evaluation.diagnosis import failure_modes, format_failures

    vqa = mx.zoo.new("vqa", seed=0)  # untrained: most answers are wrong
    seeds = mx.world.split_seeds("test", 2)
    report = failure_modes(vqa, seeds, keep=2)
    asked = sum(1 for s in seeds for q in mx.world.generate(s).questions if q.objects)
    assert report["questions"] == asked and 0 < report["wrong"] <= asked
    assert sum(w for w, _ in report["by_kind"].values()) == report["wrong"]
    case = report["cases"][0]
    assert case["predicted"] != case["right"] and case["maps"].shape == (2, 96, 96)
    scene = mx.world.generate(seeds[0])
    qa = next(q for q in scene.questions if q.objects and q.question == case["question"])
    right = mx.explain_answer(vqa, scene.image, qa.question, qa.answer)
    assert torch.equal(case["maps"][1], right.map)  # the right answer's map, as explain_answer gives it
    assert 0 <= report["pointing_predicted"] <= 1 and "Failure modes" in format_failures(report)
