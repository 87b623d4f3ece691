"""The interactive HTML report: what it embeds (exact, escaped, offline) and how it behaves in a browser.

The browser tests drive headless Chromium through Selenium (Debian: ``chromium`` and
``chromium-driver``); they skip, saying why, only when those cannot be found.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import re
import shutil
import time

import numpy as np
import pytest
import torch
from PIL import Image

import mmexplain as mx
from mmexplain.viz import report as rp

QUANT = 0.5 / 255 + 1e-6  # uint8 quantisation error of a map in [0, 1]
EVIL = ['</script><script>window.__pwned = 1</script>', '<img src=x onerror="window.__pwned = 1">',
        "\"quotes' & <b>bold</b>", "\u2028line"]


# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def scene_image():
    return mx.world.generate(7).image


@pytest.fixture(scope="module")
def ex(scene_image):
    return mx.explain_caption(mx.zoo.load("captioner"), scene_image)


@pytest.fixture(scope="module")
def ax(scene_image):
    return mx.explain_answer(mx.zoo.load("vqa"), scene_image, "what color is the circle ?", top_k=3)


def embedded(doc: str) -> dict:
    """The report's JSON, parsed back out of the HTML."""
    found = re.findall(r'<script type="application/json" class="mmx-data">(.*?)</script>', doc, flags=re.S)
    assert len(found) == 1
    return json.loads(found[0])


def decode(b64: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), dtype=np.uint8).reshape(shape).astype(np.float64) / 255


def evil_caption(ex):
    words = (EVIL * len(ex.words))[: len(ex.words)]
    return dataclasses.replace(ex, words=words)


# ---------------------------------------------------------------- what the document holds


def test_caption_maps_decode_back_to_the_explanation(ex):
    data = embedded(rp.render_report([ex]))
    (sec,) = data["sections"]
    T, (H, W) = len(ex.words), ex.maps.shape[-2:]
    assert sec["kind"] == "caption" and sec["words"] == ex.words
    assert (sec["width"], sec["height"], sec["map_width"], sec["map_height"]) == (W, H, W, H)
    (method,) = sec["methods"]
    assert method["name"] == "Grad-CAM" and method["count"] == T + 1
    maps = decode(method["maps"], (T + 1, H, W))
    want = torch.cat([ex.maps, ex.caption_map[None]]).double().numpy()
    assert np.abs(maps - want).max() <= QUANT
    np.testing.assert_allclose(sec["probabilities"], ex.logprobs.exp().numpy(), rtol=1e-5)
    assert sec["caption_probability"] == pytest.approx(float(ex.logprobs.sum().exp()), rel=1e-5)
    png = base64.b64decode(sec["image"].removeprefix("data:image/png;base64,"))
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64) / 255  # (H, W, 3)
    assert np.abs(pixels - ex.image.permute(1, 2, 0).double().numpy()).max() <= QUANT


def test_answer_maps_and_attributions_decode_back(ax):
    (sec,) = embedded(rp.render_report(ax))["sections"]
    k, (H, W) = len(ax.answers), ax.maps.shape[-2:]
    assert sec["answers"] == ax.answers and sec["question"] == ax.question and sec["tokens"] == ax.question_tokens
    assert np.abs(decode(sec["maps"], (k, H, W)) - ax.maps.double().numpy()).max() <= QUANT
    assert np.abs(decode(sec["counterfactuals"], (k, H, W)) - ax.counterfactuals.double().numpy()).max() <= QUANT
    np.testing.assert_allclose(sec["probabilities"], ax.probabilities.numpy(), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(sec["attributions"], ax.token_attributions.numpy(), rtol=1e-5, atol=1e-9)


def test_large_maps_are_area_averaged_down(ex):
    sec = rp.caption_view(ex, max_map_side=32)  # 96 -> 32: each embedded pixel is a 3 x 3 block mean
    T, (H, W) = len(ex.words), ex.maps.shape[-2:]
    assert (sec["map_width"], sec["map_height"]) == (32, 32) and (sec["width"], sec["height"]) == (W, H)
    maps = decode(sec["methods"][0]["maps"], (T + 1, 32, 32))
    want = torch.cat([ex.maps, ex.caption_map[None]]).double().numpy().reshape(T + 1, 32, 3, 32, 3).mean(axis=(2, 4))
    assert np.abs(maps - want).max() <= QUANT + 1e-5


def test_methods_and_guided_maps_are_sections_entries(ex):
    other = dataclasses.replace(ex, maps=1 - ex.maps, caption_map=1 - ex.caption_map)
    T, (H, W) = len(ex.words), ex.maps.shape[-2:]
    sec = rp.caption_view(ex, methods={"Grad-CAM": ex, "inverted": other})
    assert [m["name"] for m in sec["methods"]] == ["Grad-CAM", "inverted"]
    assert np.abs(decode(sec["methods"][1]["maps"], (T + 1, H, W))[:T] - (1 - ex.maps).double().numpy()).max() <= QUANT
    sec = rp.caption_view(ex, methods={"inverted": other}, method="plain")  # ex joins first, under its name
    assert [m["name"] for m in sec["methods"]] == ["plain", "inverted"]
    with pytest.raises(ValueError, match=r"methods\['wrong'\]: words differ"):
        rp.caption_view(ex, methods={"wrong": dataclasses.replace(ex, words=list(reversed(ex.words)))})
    with pytest.raises(ValueError, match="name 'Grad-CAM' is taken"):
        rp.caption_view(ex, methods={"Grad-CAM": other})

    guided = torch.zeros(T, 3, H, W)
    guided[:, 0, 10, 20] = 1.0  # one red pixel per word on grey
    (plain, extra) = rp.caption_view(dataclasses.replace(ex, guided=guided))["methods"]
    assert (extra["name"], extra["kind"], extra["count"]) == ("Guided Grad-CAM", "rgb", T)
    rgb = decode(extra["maps"], (T, H, W, 3))
    assert np.allclose(rgb[:, 10, 20], [1.0, 0.5, 0.5], atol=QUANT)
    assert np.allclose(np.delete(rgb.reshape(T, -1, 3), 10 * W + 20, axis=1), 0.5, atol=QUANT)


def test_answer_methods_toggle_and_figure_sections(ex, ax, tmp_path):
    k, (H, W) = len(ax.answers), ax.maps.shape[-2:]
    other = dataclasses.replace(ax, maps=1 - ax.maps, counterfactuals=1 - ax.counterfactuals)
    sec = rp.answer_view(ax, methods={"inverted": other}, method="plain")
    assert [m["name"] for m in sec["methods"]] == ["plain", "inverted"]
    assert sec["maps"] == sec["methods"][0]["maps"]  # the first method stays the section's own maps
    assert np.abs(decode(sec["methods"][1]["maps"], (k, H, W)) - (1 - ax.maps).double().numpy()).max() <= QUANT
    assert np.abs(decode(sec["methods"][1]["counterfactuals"], (k, H, W))
                  - (1 - ax.counterfactuals).double().numpy()).max() <= QUANT
    with pytest.raises(ValueError, match=r"methods\['wrong'\]: answers differ"):
        rp.answer_view(ax, methods={"wrong": dataclasses.replace(ax, answers=list(reversed(ax.answers)))})
    with pytest.raises(ValueError, match="name 'Grad-CAM' is taken"):
        rp.answer_view(ax, methods={"Grad-CAM": other})

    png = tmp_path / "figure.png"
    Image.new("RGB", (4, 3), (255, 0, 0)).save(png)
    fig = rp.figure_view(png, title=EVIL[0], paragraphs=["one", EVIL[1]], items=["a", "b"])
    assert fig["kind"] == "figure" and fig["image"].startswith("data:image/png;base64,")
    assert base64.b64decode(fig["image"].split(",", 1)[1]) == png.read_bytes()
    with pytest.raises(ValueError, match="image: expected PNG data"):
        rp.figure_view(b"GIF89a", title="t")
    with pytest.raises(TypeError, match="paragraphs"):
        rp.figure_view(None, title="t", paragraphs="one string")
    # the lead counts images, not sections: 2 sections of one image, plus a figure
    doc = rp.render_report([rp.caption_view(ex), rp.answer_view(ax), fig])
    assert "1 image. Point at a caption word or an answer" in doc
    data = embedded(doc)
    assert [s["kind"] for s in data["sections"]] == ["caption", "answer", "figure"]
    assert data["sections"][2]["title"] == EVIL[0] and EVIL[0] not in doc  # escaped in the page


def test_text_is_escaped_and_round_trips(ex, ax):
    bad_ax = dataclasses.replace(ax, question=EVIL[1], answers=EVIL[:3], question_tokens=(EVIL * 3)[: len(ax.question_tokens)])
    doc = rp.render_report([rp.caption_view(evil_caption(ex), descriptions=EVIL[:1] * len(ex.words)),
                            rp.answer_view(bad_ax, title=EVIL[0])], title=EVIL[0])
    assert doc.count("<script") == 2 and doc.count("</script") == 2  # the data block and the page script
    assert "<img" not in doc and "<b>" not in doc and "onerror=\"" not in doc
    assert "<title>&lt;/script&gt;&lt;script&gt;" in doc
    caption, answer = embedded(doc)["sections"]
    assert caption["words"] == evil_caption(ex).words and caption["descriptions"][0] == EVIL[0]
    assert answer["question"] == EVIL[1] and answer["answers"] == EVIL[:3] and answer["title"] == EVIL[0]


def test_document_loads_nothing_from_the_network(ex, ax):
    doc = rp.render_report([ex, ax])
    attrs = re.findall(r"""<\w+[^>]*?\s(?:src|href)\s*=\s*["']?([^"'\s>]*)""", doc)  # in tags
    assert attrs and all(a.startswith("data:") for a in attrs), attrs
    code = re.sub(r'<script type="application/json" class="mmx-data">.*?</script>', "", doc, flags=re.S)
    for needle in ("http:", "https:", "//cdn", "@import", "url(", "fetch(", "XMLHttpRequest", "@font-face"):
        assert needle not in code, needle
    assert embedded(doc)["sections"][0]["image"].startswith("data:image/png;base64,")


def test_write_report_is_atomic(ex, ax, tmp_path, monkeypatch):
    path = rp.write_report([ex, ax], tmp_path / "out" / "report.html")
    assert path.read_text(encoding="utf-8") == rp.render_report([ex, ax])
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"ex\.maps: contains NaN"):  # rendering fails: nothing written
        rp.write_report(dataclasses.replace(ex, maps=torch.full_like(ex.maps, float("nan"))), path)
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):  # writing fails at the rename: the temp file goes
        rp.write_report(ax, path)
    assert path.read_bytes() == before and os.listdir(path.parent) == ["report.html"]
    with pytest.raises(ValueError, match="path .*report.png.*html"):
        rp.write_report(ex, tmp_path / "report.png")
    (tmp_path / "d.html").mkdir()
    with pytest.raises(IsADirectoryError, match="path"):
        rp.write_report(ex, tmp_path / "d.html")


def test_views_dispatch_and_bad_input(ex, ax):
    view = mx.viz.show(ex, descriptions={0: "first word"})
    assert isinstance(view, mx.viz.ReportView) and view.sections[0]["descriptions"][0] == "first word"
    fragment = view._repr_html_()
    assert fragment.startswith('<div class="mmx-report"') and "<html" not in fragment
    assert 'data-standalone="false"' in fragment and 'data-standalone="true"' in view.html
    assert [s["kind"] for s in mx.viz.show([ex, ax, rp.answer_view(ax)]).sections] == ["caption", "answer", "answer"]
    with pytest.raises(ValueError, match="descriptions: per-explanation options need exactly one"):
        mx.viz.show([ex, ax], descriptions=["x"])
    with pytest.raises(ValueError, match=f"descriptions: expected {len(ex.words)} or {len(ex.words) + 1} entries"):
        rp.caption_view(ex, descriptions=["x"])
    with pytest.raises(TypeError, match=r"sections\[1\]: expected a section"):
        rp.render_report([ex, 3])
    with pytest.raises(ValueError, match=r"ax\.maps: values must lie in \[0, 1\]"):
        rp.answer_view(dataclasses.replace(ax, maps=ax.maps * 3))
    with pytest.raises(ValueError, match=r"ax\.token_attributions: expected shape"):
        rp.answer_view(dataclasses.replace(ax, token_attributions=ax.token_attributions[:, :2]))


# ---------------------------------------------------------------- in a real browser


def _browser_paths() -> tuple[str, str]:
    binary = next((p for n in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
                   if (p := shutil.which(n))), None)
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip("browser tests need Chromium and chromedriver (Debian: apt-get install chromium chromium-driver)")
    return binary, driver


@pytest.fixture(scope="module")
def driver():
    binary, driver_path = _browser_paths()
    webdriver = pytest.importorskip("selenium.webdriver", reason="browser tests need selenium (pip install -e '.[test]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,1000", "--force-device-scale-factor=1"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(driver_path), options=options)
    yield d
    d.quit()


@pytest.fixture(scope="module")
def page(driver, ex, ax, tmp_path_factory):
    inverted = dataclasses.replace(ex, maps=1 - ex.maps, caption_map=1 - ex.caption_map)
    sections = [rp.caption_view(ex, methods={"Grad-CAM": ex, "inverted": inverted}, descriptions=EVIL[:1] * len(ex.words)),
                rp.answer_view(ax), rp.caption_view(evil_caption(ex))]
    path = rp.write_report(sections, tmp_path_factory.mktemp("report") / "report.html", title=EVIL[0])
    driver.get(path.resolve().as_uri())
    deadline = time.monotonic() + 10
    while driver.execute_script("return document.querySelectorAll('canvas.mmx-canvas[data-ready]').length") < 3:
        assert time.monotonic() < deadline, "the report did not draw its canvases"
        time.sleep(0.02)
    return driver


def _canvas(d, section):
    return d.find_elements("css selector", "canvas.mmx-canvas")[section]


def _chips(d, section, group="mmx-words"):
    return d.find_elements("css selector", f"section.mmx-section:nth-of-type({section + 1}) .{group} .mmx-chip")


def _pixel(d, section, y, x, shape):
    """The RGB on the canvas over image pixel (y, x) of an image of ``shape`` (H, W)."""
    return d.execute_script("""
        var c = document.querySelectorAll('canvas.mmx-canvas')[arguments[0]];
        var cx = Math.floor((arguments[2] + 0.5) * c.width / arguments[4]);
        var cy = Math.floor((arguments[1] + 0.5) * c.height / arguments[3]);
        return Array.from(c.getContext('2d').getImageData(cx, cy, 1, 1).data).slice(0, 3);""",
        section, y, x, shape[0], shape[1])


def _opacity(d, section, value):
    slider = d.find_elements("css selector", "input.mmx-opacity")[section]
    d.execute_script("arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input'));", slider, str(value))


def _jet(v: float) -> np.ndarray:
    from matplotlib import colormaps

    return np.asarray(colormaps["jet"](float(v))[:3]) * 255


def _closest(pixel, a: float, b: float) -> float:
    """The one of the map values a, b whose jet colour the pixel shows (asserting it is near)."""
    pixel = np.asarray(pixel, dtype=float)
    da, db = np.abs(pixel - _jet(a)).max(), np.abs(pixel - _jet(b)).max()
    assert min(da, db) < 40, (pixel, _jet(a), _jet(b))
    return a if da < db else b


def _where_maps_differ(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int]:
    y, x = divmod(int((a - b).abs().argmax()), a.shape[-1])
    return y, x


def test_clicking_a_word_draws_its_map(page, ex):
    diff = (ex.maps[:, None] - ex.maps[None]).abs().flatten(2).amax(-1)  # (T, T)
    i, j = divmod(int(diff.argmax()), len(ex.words))
    assert diff[i, j] > 0.3
    y, x = _where_maps_differ(ex.maps[i], ex.maps[j])
    shape = ex.maps.shape[-2:]
    _opacity(page, 0, 100)  # the map alone: the canvas shows jet(map)
    words = _chips(page, 0)
    assert len(words) == len(ex.words) + 1
    canvas = _canvas(page, 0)
    words[i].click()
    assert canvas.get_attribute("data-word-index") == str(i) and canvas.get_attribute("data-word") == ex.words[i]
    first = _pixel(page, 0, y, x, shape)
    assert _closest(first, float(ex.maps[i, y, x]), float(ex.maps[j, y, x])) == float(ex.maps[i, y, x])
    words[j].click()
    assert canvas.get_attribute("data-word-index") == str(j)
    second = _pixel(page, 0, y, x, shape)
    assert _closest(second, float(ex.maps[i, y, x]), float(ex.maps[j, y, x])) == float(ex.maps[j, y, x])
    assert first != second
    assert "mmx-selected" in words[j].get_attribute("class") and "mmx-selected" not in words[i].get_attribute("class")
    info = page.find_elements("css selector", ".mmx-info .mmx-prob")[0].text
    assert float(info.split("=")[-1]) == pytest.approx(float(ex.logprobs[j].exp()), rel=0.06, abs=0.006)
    assert page.find_elements("css selector", ".mmx-info .mmx-desc")[0].text == EVIL[0]


def test_arrow_keys_and_hover_move_the_selection(page, ex):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    canvas, words = _canvas(page, 0), _chips(page, 0)
    words[2].click()
    ActionChains(page).send_keys(Keys.ARROW_RIGHT).perform()
    assert canvas.get_attribute("data-word-index") == "3"
    ActionChains(page).send_keys(Keys.ARROW_LEFT, Keys.ARROW_LEFT, Keys.ARROW_LEFT).perform()
    assert canvas.get_attribute("data-word-index") == "0"
    ActionChains(page).send_keys(Keys.ARROW_LEFT).perform()  # wraps round to the whole caption
    assert canvas.get_attribute("data-word-index") == str(len(ex.words))
    ActionChains(page).move_to_element(words[4]).perform()  # pointing previews a word
    assert canvas.get_attribute("data-word-index") == "4"
    ActionChains(page).move_to_element(page.find_element("css selector", "h1")).perform()  # leaving restores it
    assert canvas.get_attribute("data-word-index") == str(len(ex.words))


def test_whole_caption_and_method_toggle(page, ex):
    canvas, words = _canvas(page, 0), _chips(page, 0)
    words[-1].click()
    T = len(ex.words)
    assert canvas.get_attribute("data-word-index") == str(T) and canvas.get_attribute("data-method") == "Grad-CAM"
    y, x = divmod(int((ex.caption_map - 0.5).abs().argmax()), ex.caption_map.shape[-1])  # far from 0.5
    v = float(ex.caption_map[y, x])
    assert _closest(_pixel(page, 0, y, x, ex.maps.shape[-2:]), v, 1 - v) == v
    methods = _chips(page, 0, "mmx-methods")
    assert [m.text for m in methods] == ["Grad-CAM", "inverted"]
    methods[1].click()
    assert canvas.get_attribute("data-method") == "inverted" and canvas.get_attribute("data-word-index") == str(T)
    assert _closest(_pixel(page, 0, y, x, ex.maps.shape[-2:]), v, 1 - v) == 1 - v
    methods[0].click()


def test_answer_switching_and_counterfactual(page, ax):
    canvas, answers = _canvas(page, 1), _chips(page, 1, "mmx-answers")
    assert len(answers) == len(ax.answers)
    assert canvas.get_attribute("data-answer-index") == "0" and canvas.get_attribute("data-counterfactual") == "false"
    _opacity(page, 1, 100)
    shape = ax.maps.shape[-2:]
    answers[2].click()
    assert canvas.get_attribute("data-answer-index") == "2" and canvas.get_attribute("data-answer") == ax.answers[2]
    y, x = _where_maps_differ(ax.maps[2], ax.counterfactuals[2])
    m, c = float(ax.maps[2, y, x]), float(ax.counterfactuals[2, y, x])
    assert _closest(_pixel(page, 1, y, x, shape), m, c) == m
    toggle = _chips(page, 1, "mmx-cf")
    toggle[1].click()
    assert canvas.get_attribute("data-counterfactual") == "true" and canvas.get_attribute("data-answer-index") == "2"
    assert _closest(_pixel(page, 1, y, x, shape), m, c) == c
    # the question words take the colours of the selected answer's attributions
    tokens = page.find_elements("css selector", "section.mmx-section:nth-of-type(2) .mmx-token")
    assert [t.text for t in tokens] == ax.question_tokens
    row = ax.token_attributions[2]
    rgba = [re.findall(r"[\d.]+", t.value_of_css_property("background-color")) for t in tokens]
    top, low = int(row.argmax()), int(row.argmin())
    if row[top] > 0:
        assert float(rgba[top][1]) > float(rgba[top][0])  # green: supports the answer
    if row[low] < 0:
        assert float(rgba[low][0]) > float(rgba[low][1])  # red: argues against it
    toggle[0].click()
    answers[0].click()
    assert canvas.get_attribute("data-counterfactual") == "false" and canvas.get_attribute("data-answer-index") == "0"


def test_text_stays_text_in_the_browser(page, ex):
    words = _chips(page, 2)
    assert [w.find_element("css selector", "span").text for w in words[:-1]] == [w.strip() for w in evil_caption(ex).words]
    assert page.execute_script("return document.querySelectorAll('script').length") == 2
    assert page.execute_script("return document.querySelectorAll('.mmx-report img, .mmx-report b').length") == 0
    assert page.execute_script("return window.__pwned === undefined")
    assert page.title == EVIL[0]


def test_no_console_errors_and_no_requests(page):
    errors = [e for e in page.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not errors, errors
    names = page.execute_script("return performance.getEntriesByType('resource').map(function (e) { return e.name; })")
    assert all(n.startswith(("file:", "data:")) for n in names), names
    assert page.current_url.startswith("file:")


def test_notebook_view_draws_when_inserted_twice(driver, ex, ax, tmp_path):
    """As JupyterLab does: the fragment set as innerHTML, its scripts re-created; twice on one page."""
    fragment = mx.viz.show([ex, ax])._repr_html_()
    host = (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><link rel="icon" href="data:,"></head><body>'
        '<div class="out"></div><div class="out"></div><script>var fragment = ' + json.dumps(fragment).replace("</", "<\\/")
        + ';document.querySelectorAll(".out").forEach(function (out) {'
        '  out.innerHTML = fragment;'
        '  out.querySelectorAll("script").forEach(function (old) {'
        '    var s = document.createElement("script");'
        '    Array.from(old.attributes).forEach(function (a) { s.setAttribute(a.name, a.value); });'
        '    s.textContent = old.textContent; old.parentNode.replaceChild(s, old); }); });</script></body></html>'
    )
    path = tmp_path / "notebook.html"
    path.write_text(host, encoding="utf-8")
    driver.get(path.resolve().as_uri())
    deadline = time.monotonic() + 10
    while driver.execute_script("return document.querySelectorAll('canvas.mmx-canvas[data-ready]').length") < 4:
        assert time.monotonic() < deadline, "the inserted views did not draw"
        time.sleep(0.02)
    assert driver.execute_script("return document.querySelectorAll('[data-mmx-root][data-mmx-bound]').length") == 2
    second = driver.find_elements("css selector", ".out")[1]
    second.find_elements("css selector", ".mmx-words .mmx-chip")[3].click()
    canvases = driver.find_elements("css selector", "canvas.mmx-canvas")
    assert canvases[2].get_attribute("data-word-index") == "3"  # the second copy answers its own clicks
    assert canvases[0].get_attribute("data-word-index") == str(len(ex.words))
    assert not [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def test_answer_method_toggle_and_figure_section_in_the_browser(driver, ax, tmp_path):
    other = dataclasses.replace(ax, maps=1 - ax.maps, counterfactuals=1 - ax.counterfactuals)
    png = tmp_path / "figure.png"
    Image.new("RGB", (40, 30), (255, 0, 0)).save(png)
    sections = [rp.answer_view(ax, methods={"inverted": other}), rp.figure_view(png, title="classes", items=["x", "y"])]
    path = rp.write_report(sections, tmp_path / "r.html")
    driver.get(path.resolve().as_uri())
    deadline = time.monotonic() + 10
    while driver.execute_script("return document.querySelectorAll('canvas.mmx-canvas[data-ready]').length") < 1:
        assert time.monotonic() < deadline, "the report did not draw"
        time.sleep(0.02)
    _opacity(driver, 0, 100)
    canvas, shape = _canvas(driver, 0), ax.maps.shape[-2:]
    y, x = _where_maps_differ(ax.maps[0], other.maps[0])
    a, b = float(ax.maps[0, y, x]), float(other.maps[0, y, x])
    assert canvas.get_attribute("data-method") == "Grad-CAM" and _closest(_pixel(driver, 0, y, x, shape), a, b) == a
    _chips(driver, 0, "mmx-methods")[1].click()
    assert canvas.get_attribute("data-method") == "inverted" and _closest(_pixel(driver, 0, y, x, shape), a, b) == b
    figure = driver.find_element("css selector", "section[data-kind=figure]")
    assert [li.text for li in figure.find_elements("css selector", "li")] == ["x", "y"]
    assert driver.execute_script("return arguments[0].querySelector('img').naturalWidth", figure) == 40
    assert not [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
