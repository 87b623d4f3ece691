"""Network Dissection and textual explanations (mmexplain.dissect). Fast, CPU, seeded."""

from __future__ import annotations

import csv
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmexplain.dissect import (
    BrodenDataset,
    NeuronLabels,
    StreamingQuantile,
    UnitLabel,
    describe,
    dissect,
    iou_counts,
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
    data = shapeworld_concepts(48, size=64)
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


def test_unit_gallery_shows_top_images_with_labels():
    import mmexplain as mx

    torch.manual_seed(0)
    model = PlantedColors()
    data = shapeworld_concepts(16, size=64)
    labels = dissect(model, "features.2", data, progress=False)
    fig = mx.viz.plot_unit_gallery(labels, model, "features.2", data, units=[0, 1], top=3)
    assert len(fig.axes) == 6
    assert fig.axes[0].get_title(loc="left").startswith(f"unit 0: {labels[0].concept} (color), IoU")
    with pytest.raises(ValueError, match="units"):
        mx.viz.plot_unit_gallery(labels, model, "features.2", data, units=[7])


def test_cli_dissect_writes_labels_and_gallery(tmp_path, monkeypatch, capsys):
    import mmexplain as mx
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
