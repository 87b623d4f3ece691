"""ShapeWorld: determinism, exact masks, caption alignment, correct answers, splits, bias."""

from __future__ import annotations

import pytest
import torch

from mmexplain import world

SEEDS = list(world.split_seeds("test", 60)) + list(range(40))


@pytest.fixture(scope="module")
def scenes():
    return [world.generate(s) for s in SEEDS]


def test_same_seed_same_scene():
    a, b = world.generate(123), world.generate(123)
    assert torch.equal(a.image, b.image)
    assert a.caption == b.caption and a.alignment == b.alignment
    assert a.questions == b.questions
    assert all(torch.equal(x.mask, y.mask) and x.box == y.box for x, y in zip(a.objects, b.objects))
    assert not torch.equal(a.image, world.generate(124).image)


def test_pinned_scenes_are_stable():
    # generation must not drift between versions or machines (numpy PCG64, fixed draw order)
    assert world.generate(0).caption == (
        "a small purple diamond left of a small red square left of a small yellow triangle")
    assert world.generate(1).caption == "a large green triangle"
    assert world.generate(2).caption == "a large yellow triangle left of a small blue diamond"
    assert float(world.generate(0).image.double().sum()) == pytest.approx(11565.8639, abs=1e-3)
    assert float(world.generate(1).image.double().sum()) == pytest.approx(13403.2257, abs=1e-3)


def test_image_shape_and_range(scenes):
    for s in scenes:
        assert s.image.shape == (3, 96, 96) and s.image.dtype == torch.float32
        assert float(s.image.min()) >= 0.0 and float(s.image.max()) <= 1.0
        assert 1 <= len(s.objects) <= 3
    small = world.generate(5, size=48)
    assert small.image.shape == (3, 48, 48) and small.objects[0].mask.shape == (48, 48)


def test_masks_agree_with_drawn_pixels(scenes):
    tol = 1e-5
    for s in scenes:
        union = torch.zeros(96, 96, dtype=torch.bool)
        for o in s.objects:
            assert o.mask.dtype == torch.bool and o.mask.shape == (96, 96) and o.mask.sum() > 30
            assert not (union & o.mask).any(), "objects overlap"
            union |= o.mask
            rgb = torch.tensor(o.rgb).view(3, 1)
            inside = s.image[:, o.mask]  # (3, N)
            assert float((inside - rgb).abs().max()) <= world.OBJECT_NOISE + tol
            # the drawn colour is the named one (with a small jitter)
            assert float((rgb.view(3) - torch.tensor(world.COLORS[o.color])).abs().max()) <= 0.05 + tol
            ys, xs = torch.nonzero(o.mask, as_tuple=True)
            assert o.box == (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        bg = torch.tensor(s.background).view(3, 1)
        outside = s.image[:, ~union]
        assert float((outside - bg).abs().max()) <= world.BACKGROUND_NOISE + tol
        # every object pixel is far from the background colour: the mask is all that is drawn
        for o in s.objects:
            assert float((torch.tensor(o.rgb) - bg.view(3)).abs().max()) > world.BACKGROUND_NOISE + world.OBJECT_NOISE


def test_objects_left_to_right_and_caption_alignment(scenes):
    attrs = set(world.SIZES) | set(world.COLORS) | set(world.SHAPES)
    for s in scenes:
        words = s.caption.split()
        assert s.caption == " ".join(words) and s.caption == s.caption.lower()
        xs = [o.center[0] for o in s.objects]
        assert xs == sorted(xs)
        content = {i for i, w in enumerate(words) if w in attrs}
        assert set(s.alignment) == content, "every content word is aligned, nothing else"
        for i, j in s.alignment.items():
            o = s.objects[j]
            assert words[i] in (o.size, o.color, o.shape)
            assert words[i] == (o.size if words[i] in world.SIZES else o.color if words[i] in world.COLORS
                                else o.shape)
        assert sorted(set(s.alignment.values())) == list(range(len(s.objects)))
        assert words.count("a") == len(s.objects)
        assert words.count("left") == len(s.objects) - 1


def _matching(s, color=None, shape=None):
    return [i for i, o in enumerate(s.objects)
            if (color is None or o.color == color) and (shape is None or o.shape == shape)]


def test_every_answer_is_correct(scenes):
    kinds = set()
    for s in scenes:
        assert {q.kind for q in s.questions} >= {"count", "exist"}
        for q in s.questions:
            kinds.add(q.kind)
            w = q.question.split()
            assert w[-1] == "?" and q.question == q.question.lower()
            if q.kind == "color":  # what color is the <shape> ?
                m = _matching(s, shape=w[4])
                assert len(m) == 1 and q.objects == m and q.answer == s.objects[m[0]].color
            elif q.kind == "shape":  # what shape is the <color> object ?
                m = _matching(s, color=w[4])
                assert len(m) == 1 and q.objects == m and q.answer == s.objects[m[0]].shape
            elif q.kind == "size":  # what size is the <color> <shape> ?
                m = _matching(s, color=w[4], shape=w[5])
                assert len(m) == 1 and q.objects == m and q.answer == s.objects[m[0]].size
            elif q.kind == "count":  # how many <shape>s / <color> objects are there ?
                m = _matching(s, shape=w[2][:-1]) if w[3] == "are" else _matching(s, color=w[2])
                assert q.objects == m and q.answer == world.NUMBERS[len(m)]
            elif q.kind == "exist":  # is there a <color> <shape> ?
                m = _matching(s, color=w[3], shape=w[4])
                assert q.objects == m and q.answer == ("yes" if m else "no")
            else:
                raise AssertionError(q.kind)
            assert q.answer in world.answers()
    assert kinds == set(world.QUESTION_KINDS)


def test_splits_are_disjoint():
    names = list(world.SPLITS)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ra, rb = world.SPLITS[a], world.SPLITS[b]
            assert ra.stop <= rb.start or rb.stop <= ra.start
    seeds = world.split_seeds("test", 5)
    assert list(seeds) == list(range(world.SPLITS["test"].start, world.SPLITS["test"].start + 5))
    with pytest.raises(ValueError, match="split"):
        world.split_seeds("dev", 3)
    with pytest.raises(ValueError, match="exceeds"):
        world.split_seeds("val", 10**9)


def test_bias_forces_colour():
    seen = 0
    for seed in range(150):
        s = world.generate(seed, bias={"circle": "red"})
        for o in s.objects:
            if o.shape == "circle":
                seen += 1
                assert o.color == "red"
    assert seen > 20
    unbiased = [o.color for seed in range(150) for o in world.generate(seed).objects if o.shape == "circle"]
    assert set(unbiased) != {"red"}
    with pytest.raises(ValueError, match="shape"):
        world.generate(0, bias={"hexagon": "red"})
    with pytest.raises(ValueError, match="colour"):
        world.generate(0, bias={"circle": "pink"})


def test_bad_arguments():
    with pytest.raises(ValueError, match="seed"):
        world.generate(-1)
    with pytest.raises(TypeError, match="seed"):
        world.generate("7")
    with pytest.raises(ValueError, match="size"):
        world.generate(0, size=8)
    with pytest.raises(TypeError, match="scene"):
        world.concepts("not a scene")


def test_concepts_are_unions(scenes):
    for s in scenes[:20]:
        c = world.concepts(s)
        assert set(c) == set(world.concept_names())
        for name, mask in c.items():
            expected = torch.zeros(96, 96, dtype=torch.bool)
            for o in s.objects:
                if name in (o.color, o.shape, o.size):
                    expected |= o.mask
            assert torch.equal(mask, expected)
    ds = world.concept_dataset(4, seed=2)
    items = list(ds)
    assert len(ds) == 4 and len(items) == 4
    image, concepts = items[0]
    assert image.shape == (3, 96, 96) and concepts["red"].shape == (96, 96)
    assert torch.equal(image, world.generate(world.SPLITS["val"][2]).image)


def test_concept_categories_and_the_dataset_that_carries_them():
    cats = world.concept_categories()
    assert list(cats) == world.concept_names()
    assert {c for c, k in cats.items() if k == "color"} == set(world.COLORS)
    assert {c for c, k in cats.items() if k == "shape"} == set(world.SHAPES)
    assert {c for c, k in cats.items() if k == "size"} == set(world.SIZES)
    ds = world.concept_dataset(3, seed=10, size=48)
    assert ds.categories == cats and list(ds.seeds) == list(world.SPLITS["val"][10:13])
    ds.categories["red"] = "changed"
    assert world.concept_categories()["red"] == "color"  # each call builds a new dict
    image, masks = ds[2]
    scene = world.generate(world.SPLITS["val"][12], size=48)
    assert image.shape == (3, 48, 48) and torch.equal(image, scene.image)
    assert all(torch.equal(masks[c], m) for c, m in world.concepts(scene).items())
    assert [torch.equal(a[0], b[0]) for a, b in zip(ds, ds)] == [True] * 3  # re-iterable, same scenes
    with pytest.raises(ValueError, match="exceeds"):
        world.concept_dataset(10, seed=len(world.SPLITS["val"]))


def test_dataset_and_collate():
    ds = world.SceneDataset("val", 6, bias={"square": "blue"})
    assert len(ds) == 6
    batch = world.collate([ds[i] for i in range(3)])
    assert batch["images"].shape == (3, 3, 96, 96)
    assert batch["captions"][0] == ds[0].caption
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=world.collate)
    assert next(iter(loader))["images"].shape == (3, 3, 96, 96)
    with pytest.raises(ValueError, match="scenes"):
        world.collate([])
