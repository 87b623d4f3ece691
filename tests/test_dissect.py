"""Network Dissection and textual explanations (mmexplain.dissect). Fast, CPU, seeded."""

from __future__ import annotations

import csv
import json
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mmexplain as mx
from mmexplain import world
from mmexplain.dissect import (
    BrodenDataset,
    NeuronLabels,
    StreamingQuantile,
    TopActivations,
    UnitLabel,
    describe,
    dissect,
    iou_counts,
    shapeworld_categories,
    shapeworld_concepts,
    top_activating,
    unit_evidence,
)


class Probe(nn.Module):
    """The 'image' is the activation: layer ``body`` is an identity."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _mask(h: int, w: int, cells: list[tuple[int, int]]) -> torch.Tensor:
    m = torch.zeros(h, w, dtype=torch.bool)
    for y, x in cells:
        m[y, x] = True
    return m


# ----------------------------------------------------------------------------- package and concept data


def test_package_names_and_the_callable_package():
    import importlib.util

    import mmexplain.dissect as pkg

    assert callable(mx.dissect) and mx.dissect.dissect is dissect
    assert mx.describe is describe and mx.NeuronLabels is NeuronLabels
    for name in pkg.__all__:
        assert getattr(mx.dissect, name) is getattr(pkg, name)
    assert importlib.util.find_spec("mmexplain.dissect.core") is None
    homes = {"StreamingQuantile": "quantile", "iou_counts": "iou", "upsample_bilinear": "iou", "UnitLabel": "labels",
             "NeuronLabels": "labels", "BrodenDataset": "datasets", "dissect": "network", "image_forward": "network",
             "TopActivations": "top", "top_activating": "top", "Evidence": "describe", "unit_evidence": "describe",
             "describe": "describe"}
    for name, module in homes.items():
        assert getattr(pkg, name).__module__ == f"mmexplain.dissect.{module}", name


def test_shapeworld_concepts_is_world_concept_dataset():
    data = shapeworld_concepts(5, seed=7, size=48)
    same = world.concept_dataset(5, 7, size=48)
    assert isinstance(data, world.ConceptDataset) and len(data) == 5
    assert list(data.seeds) == list(range(1_000_007, 1_000_012)) == list(world.SPLITS["val"][7:12])
    for (image, masks), (image2, masks2), seed in zip(data, same, data.seeds):
        scene = world.generate(seed, size=48)
        assert image.shape == (3, 48, 48) and torch.equal(image, scene.image) and torch.equal(image, image2)
        assert list(masks) == world.concept_names() and masks.keys() == masks2.keys()
        assert all(torch.equal(masks[c], masks2[c]) and torch.equal(masks[c], world.concepts(scene)[c]) for c in masks)
    assert data.categories == world.concept_categories() == shapeworld_categories()
    assert shapeworld_categories()["purple"] == "color" and shapeworld_categories()["large"] == "size"
    assert torch.equal(shapeworld_concepts(2)[1][0], world.generate(world.SPLITS["val"][1]).image)  # defaults


# ----------------------------------------------------------------------------- IoU


def test_iou_counts_known_values_and_bilinear_upsampling():
    acts = torch.zeros(2, 4, 4)
    acts[0, :2, :2] = 1.0  # unit 0: top-left 2x2
    acts[1, 3, 3] = 2.0  # unit 1: one pixel
    masks = torch.stack([_mask(4, 4, [(0, 0), (0, 1), (0, 2), (0, 3)]), _mask(4, 4, [(3, 3), (3, 2)])])
    inter, unit_area, mask_area = iou_counts(acts, torch.tensor([0.5, 0.5]), masks)
    assert inter.tolist() == [[2.0, 0.0], [0.0, 1.0]]
    assert unit_area.tolist() == [4.0, 1.0]
    assert mask_area.tolist() == [4.0, 2.0]

    # a 2x2 map against 4x4 masks is upsampled bilinearly (align_corners=False) before thresholding
    small = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
    up = F.interpolate(small[None], size=(4, 4), mode="bilinear", align_corners=False)[0, 0]
    expected = int((up > 0.3).sum())
    _, area, _ = iou_counts(small, torch.tensor([0.3]), torch.ones(1, 4, 4, dtype=torch.bool))
    assert area.item() == expected and 0 < expected < 16


def test_dissect_matches_an_independent_per_image_computation():
    g = torch.Generator().manual_seed(3)
    names = ["a", "b", "c"]
    data = []
    for _ in range(6):
        acts = torch.rand(4, 3, 3, generator=g) ** 3  # (K, h, w), upsampled to the 12 x 12 masks
        masks = {n: torch.rand(12, 12, generator=g) > 0.7 for n in names}
        data.append((acts, masks))
    labels = dissect(Probe(), "body", data, quantile=0.05, categories=dict.fromkeys(names, "x"), progress=False)
    thr = torch.tensor([u.threshold for u in labels])
    inter = torch.zeros(4, 3, dtype=torch.float64)
    union = torch.zeros(4, 3, dtype=torch.float64)
    for acts, masks in data:
        up = F.interpolate(acts[None], size=(12, 12), mode="bilinear", align_corners=False)[0]
        m = up > thr[:, None, None]  # (K, H, W)
        for j, n in enumerate(names):
            inter[:, j] += (m & masks[n]).flatten(1).sum(1)
            union[:, j] += (m | masks[n]).flatten(1).sum(1)
    assert torch.allclose(labels.iou_matrix(), inter / union, atol=1e-12)
    # the thresholds are the 0.05 top quantile of the raw (not upsampled) activations
    raw = torch.stack([d[0] for d in data]).transpose(0, 1).reshape(4, -1).double()
    v = raw.sort(1, descending=True).values[:, math.ceil(0.05 * raw.shape[1]) - 1]
    err = torch.tensor([u.threshold_error for u in labels], dtype=torch.float64)
    assert ((torch.tensor([u.threshold for u in labels], dtype=torch.float64) - v).abs() <= err).all()


def _known_dataset():
    # unit 0 fires (1.0) on 4 pixels of image 0 and 2 pixels of image 1; unit 1 is dead
    a0 = torch.zeros(2, 4, 4)
    a0[0, :2, :2] = 1.0
    a1 = torch.zeros(2, 4, 4)
    a1[0, 3, 0:2] = 1.0
    item0 = {"a": _mask(4, 4, [(0, 0), (0, 1), (0, 2), (0, 3)]),  # |M∩L| 2, |M∪L| 6
             "b": torch.zeros(4, 4, dtype=torch.bool)}  # union 4
    item1 = {"a": _mask(4, 4, [(3, 0), (3, 1), (2, 0), (2, 1)]),  # |M∩L| 2, |M∪L| 4
             "b": _mask(4, 4, [(0, 3), (1, 3), (2, 3)]),  # union 5
             "c": _mask(4, 4, [(3, 0), (3, 1)])}  # category 'other' annotated only here: 2/2
    return [(a0, item0), (a1, item1)], {"a": "letter", "b": "letter", "c": "other"}


def test_dissect_iou_summed_over_dataset_on_hand_built_activations():
    data, cats = _known_dataset()
    labels = dissect(Probe(), "body", data, quantile=0.1, categories=cats, progress=False)
    assert len(labels) == 2 and labels.n_images == 2 and labels.layer == "body"
    u0 = labels[0]
    assert u0.ious["a"] == pytest.approx(4 / 10)
    assert u0.ious["b"] == 0.0
    # 'c' counts only on the image that annotates its category: 2/2, not 2/(2+4)
    assert u0.ious["c"] == pytest.approx(1.0)
    assert (u0.concept, u0.category, u0.iou) == ("c", "other", pytest.approx(1.0))
    assert 0.0 < u0.threshold < 1.0 and u0.threshold_error > 0
    assert labels[1].iou == 0.0 and labels[1].threshold == 0.0  # dead unit: never above its threshold
    assert [u.unit for u in labels.detectors()] == [0]


def test_dissect_threshold_quantile_changes_result():
    data, cats = _known_dataset()
    # a tiny quantile still keeps every tied top value (threshold rounds down to the bin edge)
    tight = dissect(Probe(), "body", data, quantile=0.001, categories=cats, progress=False)
    assert tight[0].ious["a"] == pytest.approx(0.4)
    # a huge quantile takes zeros too: threshold 0 stays (ReLU-like ties at 0 never pass a > 0)
    loose = dissect(Probe(), "body", data, quantile=0.9, categories=cats, progress=False)
    assert loose[0].threshold <= 0.0 + 1e-12


def test_dissect_without_categories_puts_every_concept_in_one_category():
    data, cats = _known_dataset()
    labels = dissect(Probe(), "body", data, quantile=0.1, progress=False)
    assert labels.categories == dict.fromkeys(["a", "b", "c"], "concept")
    u0 = labels[0]
    assert u0.ious["a"] == pytest.approx(4 / 10) and u0.ious["b"] == 0.0
    # 'c' now shares the category of 'a' and 'b', annotated on both images: 2 / (4 + 2 + 2 - 2)
    assert u0.ious["c"] == pytest.approx(2 / 6)
    assert (u0.concept, u0.category) == ("a", "concept")
    # ShapeWorld names in a plain list: no ShapeWorld categories are guessed
    plain = [world.concept_dataset(3, size=64)[i] for i in range(3)]
    named = dissect(PlantedColors(), "features.2", plain, progress=False)
    assert set(named.categories.values()) == {"concept"} and named[0].category == "concept"


def test_dissect_reads_categories_from_the_dataset_or_the_argument():
    data, cats = _known_dataset()

    class WithCategories(list):
        categories = cats

    labels = dissect(Probe(), "body", WithCategories(data), quantile=0.1, progress=False)
    assert labels.categories == cats and labels[0].ious["c"] == pytest.approx(1.0)
    # the argument wins over the dataset's: 'c' in the category of 'a' and 'b', annotated on both images
    override = dissect(Probe(), "body", WithCategories(data), quantile=0.1, categories=dict.fromkeys("abc", "letter"),
                       progress=False)
    assert override.categories == dict.fromkeys("abc", "letter")
    assert override[0].ious["c"] == pytest.approx(2 / 6)
    partial = dissect(Probe(), "body", data, quantile=0.1, categories={"c": "other"}, progress=False)
    assert partial.categories == {"a": "concept", "b": "concept", "c": "other"}
    assert partial[0].ious["c"] == pytest.approx(1.0)
    with pytest.raises(TypeError, match="categories"):
        dissect(Probe(), "body", data, categories=["a", "b"], progress=False)

    class BadCategories(list):
        categories = ["letter"]

    with pytest.raises(TypeError, match="dataset.categories"):
        dissect(Probe(), "body", BadCategories(data), progress=False)


# ----------------------------------------------------------------------------- streaming quantile


@pytest.mark.parametrize("relu", [False, True])
def test_streaming_quantile_matches_torch_quantile_within_its_bound(relu):
    g = torch.Generator().manual_seed(0)
    k, bins = 6, 512
    chunks = [torch.randn(k, 400, generator=g) * (i + 1) + torch.rand(k, 1, generator=g) * 5 for i in range(5)]
    if relu:
        chunks = [c.relu() for c in chunks]
    sq = StreamingQuantile(k, bins=bins)
    for c in chunks:
        sq.update(c)
        assert sq.counts.shape == (k, bins)  # fixed memory
    values = torch.cat(chunks, 1).double()  # (K, n)
    w = sq.bin_width
    assert (w <= 4 * values.abs().amax(1) / bins + 1e-12).all()  # the documented bound on the bin width
    for q in (0.005, 0.05, 0.25):
        est = sq.upper(q)
        ref = torch.quantile(values, 1 - q, dim=1)  # (K,)
        lo = torch.quantile(values, 1 - q, dim=1, interpolation="lower")
        hi = torch.quantile(values, 1 - q, dim=1, interpolation="higher")
        assert ((est >= lo - w) & (est <= hi + w)).all(), (est, ref, w)
        assert ((est - ref).abs() <= w + (hi - lo)).all()
        v = values.sort(1, descending=True).values[:, math.ceil(q * values.shape[1]) - 1]
        assert ((v - est) >= -1e-9).all() and ((v - est) < w).all()  # 0 <= v - T < w (lower bin edge)
        # at least the top fraction q passes a > T
        assert ((values > est[:, None]).double().mean(1) >= q).all()


def test_streaming_quantile_is_accurate_not_just_bounded():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 20000, generator=g)
    sq = StreamingQuantile(1, bins=4096)
    for chunk in x.split(1000, dim=1):
        sq.update(chunk)
    assert abs(sq.upper(0.005).item() - torch.quantile(x[0].double(), 0.995).item()) < 1e-3
    with pytest.raises(ValueError, match="q"):
        sq.upper(1.5)
    with pytest.raises(ValueError, match="values"):
        sq.update(torch.zeros(2, 3))


# ----------------------------------------------------------------------------- planted unit


class PlantedColors(nn.Module):
    """Unit 0 fires on red pixels, unit 1 on blue pixels, unit 2 on everything bright."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0], [0.3, 0.3, 0.3]])[:, :, None, None])
            self.conv.bias.zero_()
        self.features = nn.Sequential(self.conv, nn.ReLU(), nn.AvgPool2d(8))
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def test_planted_red_unit_is_named_red_and_model_is_left_as_found():
    torch.manual_seed(0)
    model = PlantedColors().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = world.concept_dataset(48, size=64)
    labels = dissect(model, "features.2", data, batch_size=16, progress=False)
    assert (labels[0].concept, labels[0].category) == ("red", "color")
    assert labels[1].concept == "blue"
    assert labels[0].iou > 0.04 and labels.is_detector(0)
    others = [v for c, v in labels[0].ious.items() if c != "red"]
    assert labels[0].iou >= 1.5 * max(others)
    # model untouched: training flags, hooks, weights
    assert all(m.training for m in model.modules())
    assert all(not m._forward_hooks for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_dissect_cleans_up_after_an_error_and_rejects_bad_input():
    model = PlantedColors().train()
    bad = [(torch.rand(3, 16, 16), {"red": torch.zeros(16, 16, dtype=torch.bool)}), ("not an image", {})]
    with pytest.raises(TypeError, match="dataset"):
        dissect(model, "features.2", bad, progress=False)
    assert all(m.training for m in model.modules()) and all(not m._forward_hooks for m in model.modules())
    gen = ((torch.rand(3, 16, 16), {}) for _ in range(2))
    with pytest.raises(TypeError, match="one-shot"):
        dissect(model, "features.2", gen, progress=False)
    with pytest.raises(ValueError, match="features.9"):
        dissect(model, "features.9", bad, progress=False)
    with pytest.raises(ValueError, match="device"):
        dissect(model, "features.2", bad, device="meta", progress=False)
    with pytest.raises(ValueError, match="quantile"):
        dissect(model, "features.2", bad, quantile=2.0, progress=False)
    with pytest.raises(ValueError, match="cannot|B, K, h, w"):
        dissect(model, "head", [(torch.rand(3, 16, 16), {"red": torch.zeros(16, 16, dtype=torch.bool)})],
                progress=False)


def test_top_activating_matches_brute_force():
    torch.manual_seed(0)
    model = PlantedColors()
    data = [(torch.rand(3, 16, 16), {}) for _ in range(10)]
    tops = top_activating(model, "features.2", data, [0, 2], top=3, batch_size=4)
    with torch.no_grad():
        acts = model.features(torch.stack([d[0] for d in data]))  # (10, 3, 2, 2)
    for row, unit in enumerate([0, 2]):
        ref = acts[:, unit].flatten(1).amax(1).topk(3).indices
        assert tops.indices[row].tolist() == ref.tolist()
        for col in range(3):
            assert torch.equal(tops.images[row, col], data[int(ref[col])][0])
            assert torch.equal(tops.maps[row, col], acts[int(ref[col]), unit])
    assert tops.maps.shape == (2, 3, 2, 2)


# ----------------------------------------------------------------------------- describe


def _labels() -> NeuronLabels:
    spec = [("red", "color", 0.30), ("circle", "shape", 0.20), ("blue", "color", 0.02),  # unit 2 below min_iou
            ("square", "shape", 0.10), ("small", "size", 0.06), ("green", "color", 0.08)]
    cats = {c: cat for c, cat, _ in spec}
    return NeuronLabels([UnitLabel(i, c, cat, iou, ious={c: iou}) for i, (c, cat, iou) in enumerate(spec)],
                        categories=cats, layer="features", quantile=0.005)


def test_describe_orders_by_alpha_and_filters_by_iou():
    alpha = torch.tensor([[0.1, 0.5, 9.0, -0.3, 0.2, -0.05]])  # (B=1, K=6); unit 2 has the largest alpha but IoU 0.02
    (sentence,) = describe(alpha, _labels(), k=2, target_names=["red circle"])
    assert sentence == ("red circle — evidence for: circle (unit 1, IoU 0.20), small (unit 4, IoU 0.06); "
                        "evidence against: square (unit 3, IoU 0.10), green (unit 5, IoU 0.08).")
    assert "unit 2" not in sentence
    # lowering min_iou admits unit 2 first
    (loose,) = describe(alpha, _labels(), k=1, min_iou=0.0)
    assert loose.startswith("target — evidence for: blue (unit 2, IoU 0.02)")
    pos, neg = unit_evidence(alpha[0], _labels(), k=5)
    assert [e.unit for e in pos] == [1, 4, 0] and [e.unit for e in neg] == [3, 5]
    assert all(a.alpha >= b.alpha for a, b in zip(pos, pos[1:]))


def test_describe_accepts_camresult_and_explanations():
    labels = _labels()
    w = torch.randn(3, 2, 6, generator=torch.Generator().manual_seed(0))  # (N=3 targets, B=2 images, K)
    out = describe(SimpleNamespace(weights=w), labels)
    assert len(out) == 6 and out[1].startswith("target 0, sample 1 — ")
    caption = SimpleNamespace(words=["a", "red", "circle"], result=SimpleNamespace(weights=w[:, :1]))
    out = describe(caption, labels, k=1)
    assert [s.split(" — ")[0] for s in out] == ["a", "red", "circle"]
    answer = SimpleNamespace(answer="red", result=SimpleNamespace(weights=w[0, :1]))
    assert describe(answer, labels)[0].startswith("red — ")
    # explain_answer: rows = answers, then their counterfactuals (negated alpha), which are skipped
    two = torch.cat([w[:2, :1], -w[:2, :1]])  # (2k, 1, K)
    answers = SimpleNamespace(answers=["red", "blue"], result=SimpleNamespace(weights=two))
    out = describe(answers, labels)
    assert [s.split(" — ")[0] for s in out] == ["red", "blue"] and out == describe(w[:2, :1], labels, target_names=["red", "blue"])
    classes = SimpleNamespace(labels=["red circle"], result=SimpleNamespace(weights=w[:1, :1]))
    assert describe(classes, labels)[0].startswith("red circle — ")
    with pytest.raises(ValueError, match="target_names"):
        describe(SimpleNamespace(weights=w), labels, target_names=["x"])
    with pytest.raises(ValueError, match="labels"):
        describe(torch.zeros(1, 5), labels)
    with pytest.raises(TypeError, match="result"):
        describe("words", labels)


# ----------------------------------------------------------------------------- files


def test_labels_json_and_csv_round_trip(tmp_path):
    data, cats = _known_dataset()
    labels = dissect(Probe(), "body", data, quantile=0.1, categories=cats, progress=False)
    assert NeuronLabels.load(labels.save(tmp_path / "labels.json")) == labels
    back = NeuronLabels.load(labels.save(tmp_path / "tally.csv"))
    assert back.units == labels.units and back.categories == labels.categories
    with (tmp_path / "tally.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:4] == ["unit", "category", "label", "score"]
    assert rows[0]["label"] == labels[0].concept and float(rows[0]["score"]) == labels[0].iou
    assert json.loads((tmp_path / "labels.json").read_text())["units"][0]["ious"]["a"] == pytest.approx(0.4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.json", "tally.csv"]  # no temp files left
    assert "2 units, 1 detectors" in labels.summary()
    assert [u.unit for u in labels.top(1)] == [0]
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="JSON"):
        NeuronLabels.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="json or .csv"):
        labels.save(tmp_path / "labels.txt")


def test_labels_files_are_written_by_the_project_writer(tmp_path, monkeypatch):
    data, cats = _known_dataset()
    labels = dissect(Probe(), "body", data, quantile=0.1, categories=cats, progress=False)
    written = []
    import mmexplain._io as io_mod

    real = io_mod.atomic_write
    monkeypatch.setattr(io_mod, "atomic_write", lambda path, write: written.append(path) or real(path, write))
    old = os.umask(0o022)
    try:
        labels.save(tmp_path / "sub" / "labels.json")
        labels.save(tmp_path / "sub" / "tally.csv")
    finally:
        os.umask(old)
    assert [p.name for p in written] == ["labels.json", "tally.csv"]
    assert all((tmp_path / "sub" / n).stat().st_mode & 0o777 == 0o644 for n in ("labels.json", "tally.csv"))
    assert (tmp_path / "sub" / "labels.json").read_text(encoding="utf-8") == json.dumps(labels.to_dict(), indent=1) + "\n"


# ----------------------------------------------------------------------------- Broden


def _write_broden(root):
    from PIL import Image

    (root / "images" / "src").mkdir(parents=True)
    labels = [("0", "-", "-"), ("1", "red-c", "color(2)"), ("2", "wall", "object(2);part(1)"),
              ("300", "street", "scene(1)"), ("4", "window", "part(3);object(1)")]
    with (root / "label.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "name", "category", "frequency", "coverage", "syns"])
        for number, name, cat in labels:
            w.writerow([number, name, cat, 1, 1.0, ""])

    def seg(name, numbers):  # (4, 4) label numbers -> R + 256 G
        numbers = np.asarray(numbers, dtype=np.int64)
        rgb = np.stack([numbers % 256, numbers // 256, np.zeros_like(numbers)], -1).astype(np.uint8)
        Image.fromarray(rgb).save(root / "images" / name)

    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / "images" / f"src/im{i}.png")
    seg("src/im0_color.png", [[1, 1, 0, 0]] * 2 + [[0] * 4] * 2)
    seg("src/im0_object.png", [[0, 0, 2, 2]] * 4)
    seg("src/im1_object.png", [[4, 4, 0, 0]] + [[0] * 4] * 3)
    with (root / "index.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "split", "ih", "iw", "sh", "sw", "color", "object", "scene"])
        w.writerow(["src/im0.png", "train", 8, 8, 4, 4, "src/im0_color.png", "src/im0_object.png", "300"])
        w.writerow(["src/im1.png", "val", 8, 8, 4, 4, "", "src/im1_object.png", ""])


def test_broden_fixture_loads_and_dissects(tmp_path):
    _write_broden(tmp_path)
    data = BrodenDataset(tmp_path)
    assert len(data) == 2
    assert data.categories == {"red-c": "color", "wall": "object", "street": "scene", "window": "part"}
    image, masks = data[0]
    assert image.shape == (3, 8, 8) and 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert sorted(masks) == ["red-c", "street", "wall"]
    assert masks["red-c"].tolist() == _mask(4, 4, [(0, 0), (0, 1), (1, 0), (1, 1)]).tolist()
    assert int(masks["wall"].sum()) == 8
    assert bool(masks["street"].all())  # image-level label: the whole image
    _, masks1 = data[1]
    assert sorted(masks1) == ["window"] and int(masks1["window"].sum()) == 2
    assert len(BrodenDataset(tmp_path, split="val")) == 1
    assert sorted(BrodenDataset(tmp_path, categories=["color"])[0][1]) == ["red-c"]
    assert BrodenDataset(tmp_path, image_size=6)[0][0].shape == (3, 6, 6)
    with pytest.raises(ValueError, match="categories"):
        BrodenDataset(tmp_path, categories=["texture"])
    with pytest.raises(FileNotFoundError, match="index.csv"):
        BrodenDataset(tmp_path / "images")

    model = nn.Sequential(nn.AvgPool2d(4))  # (3, 8, 8) -> 3 units of 2x2, upsampled to the 4x4 masks
    labels = dissect(model, "0", data, progress=False)
    assert set(labels.categories) == {"red-c", "wall", "street", "window"}
    assert labels.categories["street"] == "scene" and len(labels) == 3


# ----------------------------------------------------------------------------- figure and CLI


def _hand_tops() -> tuple[TopActivations, NeuronLabels]:
    """Two units, two images each: known images, maps and thresholds."""
    g = torch.Generator().manual_seed(4)
    images = torch.rand(2, 2, 3, 8, 8, generator=g)  # (U, top, 3, H, W)
    maps = torch.zeros(2, 2, 4, 4)  # (U, top, h, w)
    maps[0, 0, :2, :2] = 1.0
    maps[0, 1, 3, 3] = 1.0
    maps[1, :, :, 2:] = 2.0
    tops = TopActivations([1, 3], images, maps, torch.tensor([[1.0, 1.0], [2.0, 2.0]]), torch.tensor([[0, 1], [1, 0]]))
    spec = [("red", "color", 0.01), ("circle", "shape", 0.2), ("blue", "color", 0.0), ("small", "size", 0.03)]
    units = [UnitLabel(i, c, cat, iou, threshold=0.5) for i, (c, cat, iou) in enumerate(spec)]
    return tops, NeuronLabels(units, categories={c: cat for c, cat, _ in spec}, layer="features", quantile=0.005)


def test_unit_gallery_draws_a_top_activations_without_running_a_model(monkeypatch):
    tops, labels = _hand_tops()

    def no_model(*args, **kwargs):
        raise AssertionError("the gallery ran a model")

    monkeypatch.setattr(nn.Module, "__call__", no_model)
    monkeypatch.setattr("mmexplain.dissect.top.top_activating", no_model)
    fig = mx.viz.plot_unit_gallery(tops, labels, dim=0.25)
    assert len(fig.axes) == 4
    assert fig.axes[0].get_title(loc="left") == "unit 1: circle (shape), IoU 0.200"
    assert fig.axes[2].get_title(loc="left") == "unit 3: small (size), IoU 0.030 (not a detector)"
    # the drawn pixels: the image inside M = upsample(map) > T, dimmed to 0.25 outside
    for ax, (row, col) in zip(fig.axes, [(0, 0), (0, 1), (1, 0), (1, 1)]):
        up = F.interpolate(tops.maps[row, col][None, None], size=(8, 8), mode="bilinear", align_corners=False)[0, 0]
        inside = (up > 0.5).numpy()[..., None]  # (H, W, 1)
        img = tops.images[row, col].permute(1, 2, 0).numpy()  # (H, W, 3)
        drawn = np.asarray(ax.images[0].get_array())
        assert np.allclose(drawn, np.where(inside, img, 0.25 * img), atol=1e-6)
        assert 0 < inside.sum() < 64


def test_unit_gallery_draws_what_top_activating_found_after_the_model_is_gone():
    torch.manual_seed(0)
    model = PlantedColors()
    data = world.concept_dataset(16, size=64)
    labels = dissect(model, "features.2", data, progress=False)
    tops = top_activating(model, "features.2", data, [0, 1], top=3)

    def broken(*args, **kwargs):
        raise RuntimeError("forward must not run")

    model.forward = broken
    fig = mx.viz.plot_unit_gallery(tops, labels)
    assert len(fig.axes) == 6
    assert fig.axes[0].get_title(loc="left").startswith(f"unit 0: {labels[0].concept} (color), IoU")


def test_unit_gallery_rejects_mismatched_input():
    tops, labels = _hand_tops()
    with pytest.raises(TypeError, match="tops"):
        mx.viz.plot_unit_gallery(labels, labels)
    with pytest.raises(TypeError, match="labels"):
        mx.viz.plot_unit_gallery(tops, {"units": []})
    small = NeuronLabels(labels.units[:2], categories=labels.categories)
    with pytest.raises(ValueError, match="unit 3"):
        mx.viz.plot_unit_gallery(tops, small)
    bad = TopActivations(tops.units, tops.images, tops.maps[:, :1], tops.scores, tops.indices)
    with pytest.raises(ValueError, match="tops.maps"):
        mx.viz.plot_unit_gallery(bad, labels)
    with pytest.raises(ValueError, match="dim"):
        mx.viz.plot_unit_gallery(tops, labels, dim=2.0)



def test_cli_dissect_writes_labels_and_gallery(tmp_path, monkeypatch, capsys):
    from mmexplain.cli import main

    torch.manual_seed(0)
    model = mx.zoo.build("classifier", {}, {})
    monkeypatch.setattr(mx.zoo, "load", lambda name, root=None: model.eval())
    out = tmp_path / "run"
    rc = main(["dissect", "classifier", "--n", "12", "--units", "2", "--top", "2", "--out", str(out), "--quiet"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["labels.json", "tally.csv", "units.png"]
    labels = NeuronLabels.load(out / "labels.json")
    assert labels.layer == model.default_layer and labels.n_images == 12
    assert NeuronLabels.load(out / "tally.csv").units == labels.units
    assert "unique concepts" in capsys.readouterr().out
    for argv in (["dissect", "nope", "--out", str(out)], ["dissect", "classifier", "--n", "0", "--out", str(out)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("mmexplain dissect: error:")


def test_streaming_quantile_merge_equals_one_histogram_of_all_values():
    from mmexplain.dissect.quantile import StreamingQuantile

    torch.manual_seed(0)
    values = torch.randn(3, 600) * torch.tensor([[1.0], [5.0], [0.01]])  # (K, n)
    ladder = torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64)  # one ladder: every range is 0.5 * 2^e
    whole = StreamingQuantile(3, bins=64, radius=ladder)
    whole.update(values)
    first, second = StreamingQuantile(3, bins=64, radius=ladder), StreamingQuantile(3, bins=64, radius=ladder)
    first.update(values[:, :300])
    second.update(values[:, 300:])
    assert not torch.equal(first.radius, second.radius)  # the merge has ranges to widen
    merged = StreamingQuantile(3, bins=64).merge(first).merge(second)
    assert torch.equal(merged.radius, whole.radius) and torch.equal(merged.counts, whole.counts)
    assert merged.count == 600 and torch.equal(merged.upper(0.05), whole.upper(0.05))
    odd = StreamingQuantile(3, bins=64, radius=ladder * 3)  # another ladder: 1.5 * 2^e
    odd.update(values[:, :10])
    with pytest.raises(ValueError, match="do not nest"):
        first.merge(odd)
