"""Regenerate docs/report.png: the demo's report of the shipped captioner and VQA model, in headless Chromium.

The scene is the first held-out test scene (the demo's first), not a chosen one; each map
comes with the method that points best on its model, labelled with the measured pointing
of each (``mmexplain.demo``). Needs the Debian packages ``chromium`` and
``chromium-driver`` and the ``selenium`` package (``pip install -e '.[test]'``). Run from anywhere:

    python docs/make_report_screenshot.py            # writes docs/report.png
    python docs/make_report_screenshot.py --html out.html --png out.png --word square
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # this checkout's mmexplain

import mmexplain as mx  # noqa: E402
from mmexplain.demo import best_method, method_label, pick_questions  # noqa: E402


def _driver(width: int, height: int):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        raise SystemExit("needs chromium and chromedriver (apt-get install -y chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--hide-scrollbars", f"--window-size={width},{height}", "--force-device-scale-factor=1"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver_path), options=options)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--png", type=Path, default=HERE / "report.png", help="screenshot to write")
    parser.add_argument("--html", type=Path, default=None, help="also keep the report here")
    parser.add_argument("--seed", type=int, default=None, help="ShapeWorld scene (default: the first test scene)")
    parser.add_argument("--word", default=None, help="caption word to select, its last occurrence (default: the last word)")
    parser.add_argument("--scenes", type=int, default=200,
                        help="scenes dissected to name the captioner's units for the word descriptions (0: none)")
    parser.add_argument("--width", type=int, default=1200, help="browser window width, CSS pixels")
    args = parser.parse_args(argv)

    seed = args.seed if args.seed is not None else mx.world.split_seeds("test", 1)[0]
    scene = mx.world.generate(seed)
    captioner, vqa = mx.zoo.load("captioner"), mx.zoo.load("vqa")
    ex = mx.explain_caption(captioner, scene.image)
    best = best_method("captioner")
    other = mx.explain_caption(captioner, scene.image, ex.caption, method=best)
    question = pick_questions(scene)[0].question
    ax = mx.explain_answer(vqa, scene.image, question, top_k=3)
    ax_best = mx.explain_answer(vqa, scene.image, question, top_k=3, method=best_method("vqa"))
    descriptions = None
    if args.scenes > 0:  # textual explanations: the named units behind each word (Network Dissection)
        from mmexplain.dissect import describe, dissect, image_forward, shapeworld_concepts

        data = shapeworld_concepts(args.scenes, seed=0, size=captioner.config.image_size)
        labels = dissect(captioner, captioner.default_layer, data, forward=image_forward, progress=False)
        descriptions = describe(ex, labels, k=3)
    gc, bm = method_label("captioner", "gradcam"), method_label("captioner", best)
    if other.guided is not None:  # Guided Grad-CAM: the guided images join Grad-CAM's maps
        caption = mx.viz.caption_view(other, descriptions=descriptions, method=gc,
                                      title=f"Scene seed {seed}: caption")
        for entry in caption["methods"]:
            entry["name"] = bm if entry["name"] == f"Guided {gc}" else entry["name"]
    else:
        caption = mx.viz.caption_view(ex, methods={bm: other}, descriptions=descriptions, method=gc,
                                      title=f"Scene seed {seed}: caption")
    answer = mx.viz.answer_view(ax, methods={method_label("vqa", best_method("vqa")): ax_best},
                                method=method_label("vqa", "gradcam"), title=f"Scene seed {seed}: {question}")
    with tempfile.TemporaryDirectory() as tmp:
        html = mx.viz.write_report([caption, answer], args.html or Path(tmp) / "report.html", title="mmexplain demo")
        driver = _driver(args.width, 900)
        try:
            driver.get(html.resolve().as_uri())
            canvases = driver.find_elements("css selector", "canvas.mmx-canvas")
            deadline = time.monotonic() + 10
            while not all(c.get_attribute("data-ready") for c in canvases) and time.monotonic() < deadline:
                time.sleep(0.05)
            words = driver.find_elements("css selector", "section[data-kind=caption] .mmx-words .mmx-chip")
            index = max((i for i, w in enumerate(ex.words) if w == args.word), default=len(ex.words) - 1)
            words[index].click()
            # the VQA section shows the method that points best on the VQA model
            driver.find_elements("css selector", "section[data-kind=answer] .mmx-methods .mmx-chip")[1].click()
            driver.execute_script("document.activeElement.blur(); window.scrollTo(0, 0);")
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                   {"width": args.width, "height": height, "deviceScaleFactor": 1, "mobile": False})
            time.sleep(0.2)
            args.png.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(args.png))
        finally:
            driver.quit()
    print(f"wrote {args.png} ({ex.caption!r}; selected {ex.words[index]!r})")


if __name__ == "__main__":
    main()
