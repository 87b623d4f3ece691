"""``mmexplain caption / vqa / demo``: files written on success; bad input -> one line, exit 2, no file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmexplain import cli, world, zoo


QUESTION = "what color is the square ?"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """Random-weight checkpoints of the three reference models, saved like shipped ones."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    for name in ("classifier", "vqa"):
        zoo.save(zoo.new(name), root / name)
    # short generated captions keep the demo fast (random weights never emit <eos>)
    captioner = zoo.build("captioner", {"max_len": 5}, zoo.caption_vocab().to_json())
    zoo.save(captioner.eval(), root / "captioner")
    return root


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    from PIL import Image

    scene = world.generate(world.split_seeds("test", 1)[0])
    path = tmp_path_factory.mktemp("img") / "scene.png"
    Image.fromarray((scene.image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
    return path


def _png(path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_caption_writes_figure(models_dir, image, tmp_path, capsys):
    out = tmp_path / "figs" / "caption.png"
    code = cli.main(["caption", str(image), "--caption", "a small red diamond", "--model", str(models_dir / "captioner"),
                     "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and _png(out)
    assert "caption (given): a small red diamond" in printed
    assert all(w in printed for w in ("small", "red", "diamond", "p = ", f"wrote {out}"))
    assert sorted(p.name for p in out.parent.iterdir()) == ["caption.png"]  # no temp files left


def test_caption_generated_guided(models_dir, image, tmp_path, capsys):
    out = tmp_path / "guided.png"
    assert cli.main(["caption", str(image), "--model", str(models_dir), "--method", "guided", "--caption", "a red",
                     "--out", str(out)]) == 0
    assert _png(out)
    out2 = tmp_path / "generated.png"
    assert cli.main(["caption", str(image), "--model", str(models_dir), "--out", str(out2)]) == 0
    assert _png(out2) and "caption (generated): " in capsys.readouterr().out


def test_vqa_writes_figure(models_dir, image, tmp_path, capsys):
    out = tmp_path / "vqa.png"
    assert cli.main(["vqa", str(image), QUESTION, "--top-k", "3", "--model", str(models_dir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert _png(out) and "answer #3:" in printed and "log p = " in printed and "square" in printed
    out2 = tmp_path / "given.png"
    assert cli.main(["vqa", str(image), QUESTION, "--answer", "red", "--model", str(models_dir), "--out", str(out2)]) == 0
    assert _png(out2) and "answer (given): red" in capsys.readouterr().out


def test_demo_writes_report(models_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--n", "1", "--models", str(models_dir), "--naming-scenes", "0"]) == 0
    names = sorted(p.name for p in out.iterdir())
    from mmexplain.zoo.efficientnet import missing_reason

    real = [] if missing_reason() else ["real-photos.png"]  # EfficientNet-Lite0 on photos: the [real] extra
    assert names == sorted(["caption_0.png", "classes.png", "report.html", "report.md", "vqa_0_0.png", "vqa_0_1.png",
                            "vqa_0_0_scorecam.png", "vqa_0_1_scorecam.png", *real])
    printed = capsys.readouterr().out
    assert ("Real photos" in (out / "report.md").read_text()) and ("Real photos skipped" in printed) == (not real)
    # next to Grad-CAM, the method that points best on each model; measured numbers only for shipped models
    report = (out / "report.md").read_text()
    assert all(m in report for m in ("Guided Grad-CAM", "Score-CAM")) and "not on these weights" in report
    html = (out / "report.html").read_text()
    assert "1 image. Point at" in html and html.count('"kind":"figure"') == 1 + bool(real)  # classes (+ photos)
    assert all(_png(out / n) for n in names if n.endswith(".png"))
    report = (out / "report.md").read_text()
    for n in names:
        if n.endswith(".png"):
            assert f"]({n})" in report
    scene = world.generate(world.split_seeds("test", 1)[0])
    assert scene.questions[0].question in report and "Caption: **" in report
    assert str(out / "report.md") in printed
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # the temporary folder is gone
    # a second run into the same folder replaces the files and keeps the user's own
    (out / "notes.txt").write_text("mine")
    assert cli.main(["demo", "--out", str(out), "--n", "1", "--seed", "1", "--models", str(models_dir),
                     "--naming-scenes", "0"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and "seed 2000001" in (out / "report.md").read_text()


def test_demo_names_missing_models(tmp_path, capsys):
    (tmp_path / "models").mkdir()
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--models", str(tmp_path / "models")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "captioner" in err and "mmexplain train captioner" in err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["models"]


BAD = {
    "missing image": (["caption", "{dir}/nope.png"], "nope.png"),
    "not an image": (["caption", "{dir}/text.png"], "not an image"),
    "unknown caption word": (["caption", "{img}", "--caption", "a small zebra"], "zebra"),
    "empty caption": (["caption", "{img}", "--caption", " "], "caption"),
    "bad method": (["caption", "{img}", "--method", "saliency"], "method"),
    "bad layer": (["caption", "{img}", "--layer", "encoder.nope"], "encoder.nope"),
    "token layer": (["caption", "{img}", "--layer", "embed"], "token-shaped"),
    "bad out extension": (["caption", "{img}", "--out-override", "{dir}/fig.txt"], ".png"),
    "empty question": (["vqa", "{img}", " "], "QUESTION"),
    "unknown question word": (["vqa", "{img}", "what is a zebra ?"], "zebra"),
    "answer outside": (["vqa", "{img}", QUESTION, "--answer", "banana"], "banana"),
    "bad top-k": (["vqa", "{img}", QUESTION, "--top-k", "0"], "top-k"),
    "vqa missing image": (["vqa", "{dir}/nope.png", QUESTION], "nope.png"),
    "wrong model kind": (["caption", "{img}", "--model", "vqa"], "captioner"),
    "missing model dir": (["vqa", "{img}", QUESTION, "--model", "{dir}/no-models"], "no-models"),
    "demo bad n": (["demo", "--n", "0"], "--n"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_one_line_exit_2_no_file(case, models_dir, image, tmp_path, capsys):
    args, expected = BAD[case]
    (tmp_path / "text.png").write_text("not an image at all")
    args = [a.format(dir=tmp_path, img=image) for a in args]
    out = tmp_path / "out" / "fig.png"
    if "--out-override" in args:
        i = args.index("--out-override")
        args[i], out = "--out", tmp_path / "out" / "fig.txt"
    elif args[0] == "demo":
        out = tmp_path / "out"
        args += ["--out", str(out)]
    else:
        args += ["--out", str(out)]
    if args[0] != "demo" and "--model" not in args:
        args += ["--model", str(models_dir)]
    if args[0] == "demo":
        args += ["--models", str(models_dir)]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # argparse's own errors too: one line, no usage block
    assert expected in err[0] and err[0].startswith(f"mmexplain {args[0]}: error: ")
    assert not out.exists() and not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text.png"]  # nothing half-written


SHIPPED_RUNS = {
    "caption tiny-ved": ["caption", "{img}", "--model", "tiny-ved"],
    "caption tiny-vlm": ["caption", "{img}", "--model", "tiny-vlm", "--caption", "a small red diamond"],
    "caption tiny-ved relevancy": ["caption", "{img}", "--model", "tiny-ved", "--method", "relevancy"],
    "vqa tiny-vilt": ["vqa", "{img}", QUESTION, "--model", "tiny-vilt", "--top-k", "2"],
    "vqa tiny-vlm": ["vqa", "{img}", QUESTION, "--model", "tiny-vlm"],
}


@pytest.mark.parametrize("case", list(SHIPPED_RUNS))
def test_caption_and_vqa_run_the_shipped_transformers_models(case, image, tmp_path, capsys):
    out = tmp_path / "fig.png"
    args = [a.format(img=image) for a in SHIPPED_RUNS[case]] + ["--out", str(out), "--threads", "1"]
    assert cli.main(args) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert _png(out)
    if args[0] == "caption":
        assert "caption (" in printed and "total" in printed
    else:
        assert "answer" in printed and "log p = " in printed
        assert ("answer #2:" in printed) == ("--top-k" in args)


def test_a_model_of_another_task_is_refused_by_name(image, tmp_path, capsys):
    assert cli.main(["vqa", str(image), QUESTION, "--model", "tiny-ved", "--out", str(tmp_path / "f.png")]) == 2
    err = capsys.readouterr().err
    assert "needs a vqa" in err and "tiny-vilt" in err and not (tmp_path / "f.png").exists()
    assert cli.main(["vqa", str(image), QUESTION, "--model", "tiny-vlm", "--top-k", "2",
                     "--out", str(tmp_path / "f.png")]) == 2
    assert "--top-k" in capsys.readouterr().err
