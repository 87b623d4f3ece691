"""EfficientNet-Lite0 on real photos (the optional [real] extra): maps on the object, counterfactual, protocols."""

from __future__ import annotations

import pytest
import torch

from mmexplain.zoo import efficientnet

pytestmark = pytest.mark.skipif(not efficientnet.available(), reason=str(efficientnet.missing_reason()))

# hand-made boxes (x0, y0, x1, y1) in the photos' own pixels
CAT_BOX = (100, 20, 420, 300)  # skimage.data.chelsea(): the cat's head and body, 451 x 300
CUP_BOX = (100, 30, 500, 330)  # skimage.data.coffee(): the cup and saucer's top, 600 x 400


@pytest.fixture(scope="module")
def model():
    return efficientnet.load_efficientnet()


def _peak_in(m: torch.Tensor, box, shape) -> bool:
    h, w = shape
    y, x = divmod(int(m.argmax()), m.shape[-1])
    px, py = (x + 0.5) * w / m.shape[-1], (y + 0.5) * h / m.shape[-2]
    return box[0] <= px < box[2] and box[1] <= py < box[3]


@pytest.mark.parametrize("photo, index, name, box", [("chelsea", 285, "Egyptian cat", CAT_BOX),
                                                      ("coffee", 967, "espresso", CUP_BOX)])
def test_map_peaks_on_the_object(model, photo, index, name, box):
    import skimage.data

    import mmexplain as mx
    from mmexplain.methods import GradCAM
    from mmexplain.targets import ClassLogit, Counterfactual

    image = getattr(skimage.data, photo)()
    assert model.classes[index] == name
    pixels = model.preprocess(image)
    with torch.no_grad():
        assert int(model(pixels).argmax()) == index
    ex = mx.explain_class(model, image, [index])
    assert _peak_in(ex.maps[0], box, image.shape[:2])
    counter = GradCAM(model, model.default_layer)(pixels, Counterfactual(ClassLogit(index)), size=(224, 224)).maps[0]
    from mmexplain import metrics

    assert metrics.spearman(ex.maps[0], counter) < 0.5  # the counterfactual marks other pixels


def test_sanity_and_road_run_on_a_photo(model):
    from conftest import assert_unchanged, snapshot

    from mmexplain.cli.evaluate_protocols import photo_items
    from mmexplain.evaluation.faithfulness import faithfulness
    from mmexplain.evaluation.sanity import sanity_check

    items = photo_items(model)[:1]
    before = snapshot(model)
    report = sanity_check(model, items=items, methods=["gradcam"], max_stages=1)
    assert_unchanged(model, before)
    assert report["cascading"][0]["gradcam"]["spearman_abs"] < 0.9
    faith = faithfulness(model, items=items, methods=["gradcam"], steps=4, fractions=(0.3, 0.7))
    rows = faith["rows"]
    assert rows["gradcam"]["road_morf"] < rows["random"]["road_morf"]


def test_real_photo_section(tmp_path):
    from mmexplain.demo import real_photos

    photos = real_photos(tmp_path)
    assert [name for _, name, _ in photos.rows] == ["Egyptian cat", "espresso"]
    assert "| chelsea | Egyptian cat |" in photos.markdown() and (tmp_path / "real-photos.png").stat().st_size > 1000
