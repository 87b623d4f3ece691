"""The dataset runner: torchrun (2 gloo processes) gives the single-process numbers, every option passes
torchrun's parser, explain-dataset resumes after SIGKILL into the same files, workers change nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import mmexplain as mx
from mmexplain.cli import build_parser, main
from mmexplain.runner import Runner, world_from_env

SCENES = 7  # does not divide by the world size 2
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MMEXPLAIN_TRACEBACK": "1"}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "mmexplain", *args]
    proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its workers: this test's own process group
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def _ranks(stderr: str) -> dict[int, int]:
    """rank -> items, from the per-rank summary lines."""
    import re

    return {int(m.group(1)): int(m.group(2)) for m in re.finditer(r"rank (\d+)/2 [\w -]+: (\d+) items in", stderr)}


def _subcommand(parser, path):
    for name in path:
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        parser = sub.choices[name]
    return parser


@pytest.mark.parametrize("path", [("evaluate", "grounding"), ("dissect",), ("explain-dataset",)])
def test_every_option_passes_torchruns_parser(path):
    """torchrun's parser reads the whole line and takes any unambiguous prefix: each option of ours must reach us."""
    from torch.distributed.run import get_args_parser

    ours = _subcommand(build_parser(), path)
    plain_only = {"--n", "--start"}  # aliases kept for plain runs (torchrun reads them as its own options)
    checked = 0
    for action in ours._actions:
        spellings = [o for o in action.option_strings if o.startswith("--") and o != "--help"]
        if not spellings:
            continue
        assert [o for o in spellings if o not in plain_only], f"{action.dest}: only torchrun-unsafe spellings"
        for option in spellings:
            if option in plain_only:
                continue
            tail = [*path, option, "1"]
            ns = get_args_parser().parse_args(["--nproc-per-node", "2", "-m", "mmexplain", *tail])
            assert ns.training_script == "mmexplain" and ns.training_script_args == tail, option
            checked += 1
    assert checked >= 8
    # the reason for the rule: torchrun rejects an ambiguous prefix
    with pytest.raises(SystemExit):
        get_args_parser().parse_args(["--nproc-per-node", "2", "-m", "mmexplain", "evaluate", "grounding", "--n", "3"])


def test_world_from_env_and_shards():
    assert world_from_env({}) == (0, 1, 0)
    assert world_from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == (1, 2, 1)
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        world_from_env({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="RANK"):
        world_from_env({"RANK": "x"})
    shards = [list(Runner(rank=r, world_size=2).shard(SCENES)) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(SCENES))  # every item once, no padding
    with pytest.raises(ValueError, match="dtype"):
        Runner(dtype="int8")
    with pytest.raises(ValueError, match="workers"):
        Runner(workers=-1)


def _strip_times(report):
    for key in ("seconds", "caption_seconds"):
        report.pop(key)
    for part in ("caption", "vqa"):
        report[part].pop("seconds_per_item")
    return report


def test_grounding_two_processes_equal_one(tmp_path):
    _torchrun("evaluate", "grounding", "--scenes", str(SCENES), "--methods", "gradcam", "--workers", "1",
              "--device", "cpu", "--dtype", "float32", "--threads", "1", "--json", "two.json", cwd=tmp_path)
    done = _torchrun("evaluate", "grounding", "--scenes", str(SCENES), "--methods", "gradcam",
                     "--json", "two_again.json", cwd=tmp_path)
    assert _ranks(done.stderr) == {0: 4, 1: 3}
    assert main(["evaluate", "grounding", "--scenes", str(SCENES), "--methods", "gradcam",
                 "--json", str(tmp_path / "one.json")]) == 0
    one, two = (_strip_times(json.loads((tmp_path / f).read_text())) for f in ("one.json", "two.json"))
    assert two == one  # exactly, every metric of every group
    scenes = [mx.world.generate(s) for s in mx.world.split_seeds("test", SCENES)]
    assert two["caption"]["groups"]["all"]["n"] == sum(len(s.alignment) for s in scenes)
    assert two["vqa"]["questions"] == sum(1 for s in scenes for q in s.questions if q.objects)


def test_dissect_two_processes_equal_one(tmp_path):
    done = _torchrun("dissect", "classifier", "--scenes", str(SCENES), "--batch-size", "3", "--workers", "1",
                     "--no-gallery", "--quiet", "--out", "two", cwd=tmp_path)
    assert _ranks(done.stderr) == {0: 8, 1: 6}  # two passes over 4 and 3 scenes
    assert main(["dissect", "classifier", "--scenes", str(SCENES), "--no-gallery", "--quiet",
                 "--out", str(tmp_path / "one")]) == 0
    for name in ("labels.json", "tally.csv"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    labels = json.loads((tmp_path / "one" / "labels.json").read_text())
    assert labels["n_images"] == SCENES


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_explain_dataset_killed_and_resumed_gives_the_same_files(tmp_path):
    args = ["explain-dataset", "--scenes", "12", "--shard-size", "1", "--quiet", "--threads", "1"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    out = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "mmexplain", *args, "--workers", "2", "--out", str(out)],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "rows-00000.parquet"
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists()
    finished = sorted(out.glob("rows-*.parquet"))
    assert len(finished) < 12, "the run finished before the kill: nothing was interrupted"
    with pytest.raises(ValueError, match="unfinished"):
        mx.evaluation.read_dataset(out)
    assert main([*args, "--workers", "2", "--out", str(out)]) == 2  # no silent overwrite without --resume
    assert main([*args, "--workers", "2", "--out", str(out), "--resume"]) == 0
    assert _files(out) == _files(tmp_path / "whole")  # workers 2 + resume == workers 0, byte for byte
    assert main([*args, "--method", "hirescam", "--out", str(out), "--resume"]) == 2  # other options


def test_parquet_and_safetensors_round_trip_exactly(tmp_path):
    assert main(["explain-dataset", "--model", "vqa", "--scenes", "3", "--shard-size", "2", "--map-size", "48",
                 "--quiet", "--out", str(tmp_path / "vqa")]) == 0
    ds = mx.evaluation.read_dataset(tmp_path / "vqa")
    rows = ds.rows.to_pylist()
    vqa = mx.zoo.load("vqa")
    scenes = [mx.world.generate(s) for s in mx.world.split_seeds("test", 3)]
    expected = [(s, q, qa) for s in scenes for q, qa in enumerate(s.questions)]
    assert len(rows) == len(ds.maps) == len(expected) == ds.manifest["rows"]
    assert [len(ds.maps.shard(k)) for k in (0, 1)] == [s["rows"] for s in ds.manifest["shards"]]
    for i, (row, (scene, q, qa)) in enumerate(zip(rows, expected)):
        ex = mx.explain_answer(vqa, scene.image, qa.question)
        want = torch.nn.functional.interpolate(ex.map[None, None].float(), size=(48, 48), mode="bilinear",
                                               align_corners=False)[0, 0].half()
        assert torch.equal(ds.maps[i], want)
        assert (row["id"], row["position"], row["target"], row["truth"]) == (f"shapeworld-{scene.seed}", q,
                                                                            ex.answer, qa.answer)
        assert row["score"] == float(ex.score) and row["method"] == "gradcam"
        assert (row["pointing"] is None) == (not qa.objects)
    assert torch.equal(torch.stack(ds.maps.all()), torch.stack([ds.maps[i] for i in range(len(rows))]))


def test_workers_do_not_change_grounding():
    captioner, vqa = mx.zoo.new("captioner", seed=0), mx.zoo.new("vqa", seed=0)
    seeds = mx.world.split_seeds("test", 3)
    plain = _strip_times(mx.evaluation.grounding.grounding_report(captioner, vqa, seeds, methods=["gradcam"]))
    workers = _strip_times(mx.evaluation.grounding.grounding_report(captioner, vqa, seeds, methods=["gradcam"],
                                                                    runner=Runner(workers=2)))
    assert workers == plain


def test_bfloat16_autocast_keeps_float32_maps(tmp_path):
    assert main(["explain-dataset", "--model", "classifier", "--scenes", "2", "--dtype", "bfloat16", "--quiet",
                 "--out", str(tmp_path / "bf16")]) == 0
    ds = mx.evaluation.read_dataset(tmp_path / "bf16")
    assert ds.manifest["options"]["dtype"] == "bfloat16" and ds.rows.num_rows == 2
    assert all(0.0 <= float(m.min()) and float(m.max()) <= 1.0 for m in ds.maps.all())


def test_folder_coco_and_hf_inputs(tmp_path):
    """The same two images as a folder, a COCO annotation file and a saved HF dataset give the same maps."""
    import datasets
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    scenes = [mx.world.generate(s, size=64) for s in mx.world.split_seeds("test", 2)]
    for k, scene in enumerate(scenes):
        array = (scene.image.permute(1, 2, 0) * 255).round().byte().numpy()
        Image.fromarray(array).save(images / f"img{k}.png")
    coco = {"images": [{"id": k, "file_name": f"img{k}.png"} for k in range(2)],
            "annotations": [{"id": k, "image_id": k, "caption": s.caption} for k, s in enumerate(scenes)]}
    (images / "captions.json").write_text(json.dumps(coco))
    hf = datasets.Dataset.from_dict({"image": [Image.open(images / f"img{k}.png") for k in range(2)],
                                     "caption": [s.caption for s in scenes]}).cast_column("image", datasets.Image())
    hf.save_to_disk(str(tmp_path / "hf"))
    for name, source in (("folder", images), ("coco", images / "captions.json"), ("hf", tmp_path / "hf")):
        assert main(["explain-dataset", "--input", str(source), "--quiet", "--out", str(tmp_path / f"out-{name}")]) == 0
    folder, coco_ds, hf_ds = (mx.evaluation.read_dataset(tmp_path / f"out-{n}") for n in ("folder", "coco", "hf"))
    assert folder.rows.num_rows >= 2 and folder.maps[0].shape == (64, 64)  # the image's own size by default
    # COCO and HF explain the given captions, word by word
    want = [w for s in scenes for w in s.caption.split()]
    assert coco_ds.rows.column("target").to_pylist() == want == hf_ds.rows.column("target").to_pylist()
    assert torch.equal(torch.stack(coco_ds.maps.all()), torch.stack(hf_ds.maps.all()))
    assert main(["explain-dataset", "--input", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert main(["explain-dataset", "--model", "vqa", "--input", str(images), "--out", str(tmp_path / "y")]) == 2


def test_explain_dataset_writes_an_html_report(tmp_path, capsys):
    """--html: the first items' explanations as one self-contained interactive page."""
    from mmexplain.cli import main

    out, page = tmp_path / "run", tmp_path / "report.html"
    assert main(["explain-dataset", "--model", "captioner", "--scenes", "2", "--out", str(out), "--html", str(page),
                 "--html-items", "1", "--quiet"]) == 0
    text = page.read_text()
    first = mx.world.generate(mx.world.split_seeds("test", 1)[0]).caption
    assert "data-mmx-root" in text and all(w in text for w in first.split())
    assert main(["explain-dataset", "--model", "captioner", "--scenes", "2", "--out", str(tmp_path / "b"),
                 "--html", str(tmp_path / "r.txt"), "--quiet"]) == 2
