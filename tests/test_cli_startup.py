"""The command line's first seconds: no torch for --help and argument errors, no nltk for tokens,
quiet output to files, and user errors told apart from bugs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mmexplain.cli import main
from mmexplain.errors import InputError, InputTypeError
from mmexplain.zoo.vocab import tokenize

from conftest import REPO

# prints which heavy modules the command imported, after running it in-process
PROBE = ("import sys; from mmexplain.cli import main; rc = main(sys.argv[1:]); "
         "print('IMPORTED', sorted(m for m in ('torch', 'nltk', 'matplotlib', 'transformers') if m in sys.modules)); "
         "print('RC', rc)")


def probe(*argv: str, cwd=None) -> tuple[int, list[str], str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=120)
    lines = proc.stdout.splitlines()
    imported = eval(next(line for line in lines if line.startswith("IMPORTED"))[len("IMPORTED "):])
    rc = int(next(line for line in lines if line.startswith("RC"))[3:])
    return rc, imported, proc.stderr


@pytest.mark.parametrize("argv", [
    ["--help"],
    ["vqa", "--help"],
    ["evaluate", "grounding", "--help"],
    ["explain-dataset", "--help"],
])
def test_help_imports_no_torch(argv):
    rc, imported, _ = probe(*argv)
    assert rc == 0 and imported == []


@pytest.mark.parametrize("argv, needle", [
    (["vqa", "x.png", "what ?", "--out", "o.png", "--threads", "0"], "--threads"),
    (["caption", "--scenes", "3"], "unrecognized"),
    (["vqa", "missing.png", "what color ?", "--out", "o.png"], "IMAGE"),
    (["caption", "missing.png", "--out", "o.txt"], "--out"),
    (["evaluate", "grounding", "--scenes", "0"], "--scenes"),
])
def test_argument_errors_import_no_torch(tmp_path, argv, needle):
    rc, imported, err = probe(*argv, cwd=tmp_path)
    assert rc == 2 and imported == [], (imported, err)
    assert len(err.strip().splitlines()) == 1 and needle in err, err


@pytest.mark.parametrize("text", [
    "What color is the square?", "how many objects are there ?", "it's a red-ish circle... (maybe)!",
    "  tabs\tand\nnewlines  ", "digits 3.14 and 1,000", "über café naïve — dash", "a_b __init__ x=y+z", "?!?", "",
])
def test_tokenize_splits_as_nltk_wordpunct(text):
    from nltk.tokenize import wordpunct_tokenize  # the reference the zoo models were trained with

    assert tokenize(text) == wordpunct_tokenize(text.lower())


def test_vqa_imports_no_nltk(tmp_path):
    import mmexplain as mx
    from PIL import Image

    image = tmp_path / "scene.png"
    Image.fromarray((mx.world.generate(7).image.permute(1, 2, 0) * 255).byte().numpy()).save(image)
    rc, imported, err = probe("vqa", str(image), "what color is the circle ?", "--out", "o.html", "--threads", "1",
                              cwd=tmp_path)
    assert rc == 0, err
    assert "torch" in imported and "nltk" not in imported


def run_to_file(tmp_path, *argv: str) -> bytes:
    """Run ``mmexplain ARGV`` with stdout and stderr going to one file; its bytes."""
    log = tmp_path / "log.txt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log, "wb") as fh:
        proc = subprocess.run([sys.executable, "-m", "mmexplain", *argv], stdout=fh, stderr=subprocess.STDOUT,
                              env=env, cwd=tmp_path, timeout=600)
    data = log.read_bytes()
    assert proc.returncode == 0, data.decode(errors="replace")
    return data


GROUNDING = ["evaluate", "grounding", "--on", "tiny-ved", "--methods", "gradcam", "--scenes", "1", "--threads", "1"]


def test_evaluate_grounding_to_a_file_writes_no_carriage_return(tmp_path):
    data = run_to_file(tmp_path, *GROUNDING)
    assert b"| tiny-ved |" in data
    assert b"\r" not in data and b"Loading weights" not in data and b"Warning" not in data, data[:500]


@pytest.mark.slow
def test_progress_forces_bars_into_a_file(tmp_path):
    data = run_to_file(tmp_path, *GROUNDING, "--progress")
    assert b"\r" in data  # the check above can fail: the bar is there when asked for


def test_input_error_is_one_line_and_a_bug_keeps_its_traceback(monkeypatch, capsys):
    def user_mistake(args):
        raise InputError("--answer 'blue' is not one of the model's answers\nsecond line")

    def wrong_type(args):
        raise InputTypeError("image: expected a path or a tensor, got int")

    def bug(args):
        raise RuntimeError("shapes (2, 3) and (4,) do not broadcast")

    argv = ["vqa", "x.png", "q", "--out", "o.png"]
    for handler in (user_mistake, wrong_type):
        monkeypatch.setattr("mmexplain.cli.vqa._vqa_handler", handler)
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("mmexplain vqa: error: ")
    monkeypatch.setattr("mmexplain.cli.vqa._vqa_handler", bug)
    with pytest.raises(RuntimeError, match="broadcast"):
        main(argv)


def test_a_bug_shows_its_traceback_from_the_command(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    code = ("import sys, mmexplain.cli.vqa as v\n"
            "def bug(args): raise KeyError('internal')\n"
            "v._vqa_handler = bug\n"
            "from mmexplain.cli import main\n"
            "sys.exit(main(['vqa', 'x.png', 'q', '--out', 'o.png']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "KeyError: 'internal'" in proc.stderr
