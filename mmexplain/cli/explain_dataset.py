"""``mmexplain explain-dataset``: explain every item of a dataset into resumable Parquet + safetensors shards.

Also home of the runner options that ``evaluate grounding`` and ``dissect`` share
(``--workers``, ``--device``, ``--dtype``). Every option's name is chosen to pass
through torchrun's own parser, which reads the whole command line and takes any
unambiguous prefix of its options (``--start`` would become ``--start-method``).

Example:
    $ mmexplain explain-dataset --model captioner --method gradcam --out runs/words
    $ torchrun --nproc-per-node 2 -m mmexplain explain-dataset --model vqa --out runs/vqa --resume
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from typing import Any

from .common import (CLIError, add_models, add_progress, add_threads, apply_threads, check_out, positive_int, scene_seeds,
                     show_progress)

__all__ = ["add_explain_dataset_command", "add_runner_options", "runner_from_args"]


def add_runner_options(parser: argparse.ArgumentParser) -> None:
    """``--workers N``, ``--device cpu|cuda``, ``--dtype bfloat16|float16|float32``, ``--progress/--quiet``."""
    from .common import nonnegative_int

    parser.add_argument("--workers", type=nonnegative_int, default=0, metavar="N",
                        help="DataLoader worker processes making the items (default 0: in the main process)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the model runs; under torchrun each rank takes cuda:LOCAL_RANK (default cpu)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="autocast dtype of the model's forward and backward; maps are computed in float32 "
                             "(default float32)")
    add_progress(parser)


@contextlib.contextmanager
def runner_from_args(args: argparse.Namespace) -> Iterator[Any]:
    """The runner of ``--workers/--device/--dtype/--progress``, inside torchrun's process group when started by torchrun."""
    from ..runner import distributed

    with distributed(workers=args.workers, device=args.device, dtype=args.dtype, progress=show_progress(args)) as runner:
        yield runner


def _map_side(text: str) -> int:
    """argparse type of ``--map-size``: an integer in 1..MAX_MAP_SIZE."""
    from ..evaluation.shards import MAX_MAP_SIZE

    value = positive_int(text)
    if value > MAX_MAP_SIZE:
        raise argparse.ArgumentTypeError(f"expected an integer in 1..{MAX_MAP_SIZE} (pixels per side of a stored "
                                         f"map), got {value}")
    return value


def add_explain_dataset_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``mmexplain explain-dataset``."""
    p = subparsers.add_parser(
        "explain-dataset", help="explain every item of a dataset into Parquet rows + safetensors map shards",
        description="Explain every item of a dataset with one model and one method. Writes rows-NNNNN.parquet "
                    "(one row per word / answer / class: id, image, target, score, method, pointing and energy "
                    "ratio where ground truth exists), maps-NNNNN.safetensors (float16 maps) and manifest.json "
                    "to --out, each shard atomically; --resume finishes an interrupted run. Read the result with "
                    "mmexplain.evaluation.read_dataset(DIR). Runs under torchrun --nproc-per-node N -m mmexplain.")
    p.add_argument("--input", default="shapeworld", metavar="SOURCE",
                   help="shapeworld (default), an image folder, a COCO-format FILE.json, or a saved HF dataset folder")
    p.add_argument("--model", default="captioner", metavar="NAME",
                   help="a shipped model: captioner, vqa, classifier, tiny-ved, tiny-vilt, tiny-vlm (default captioner)")
    p.add_argument("--method", default="gradcam", metavar="NAME",
                   help="explanation method (default gradcam; `mmexplain caption --method list` prints them)")
    p.add_argument("--layer", default=None, help="layer to explain (default: the model's)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--scenes", type=positive_int, default=None, metavar="N",
                   help="items to explain: ShapeWorld scenes (default 100), or the first N items of other inputs")
    p.add_argument("--map-size", type=_map_side, default=None, metavar="PX",
                   help="side of the stored maps, at most 4096 (default: each image's own size)")
    p.add_argument("--shard-size", type=positive_int, default=64, metavar="N", help="items per shard (default 64)")
    p.add_argument("--resume", action="store_true", help="skip the shards an earlier run of the same options finished")
    p.add_argument("--html", default=None, metavar="FILE.html",
                   help="also write an interactive report of the first --html-items captions / answers (point at a word)")
    p.add_argument("--html-items", type=positive_int, default=20, metavar="N", help="items in the --html report (default 20)")
    p.add_argument("--images", default=None, metavar="DIR", help="folder of a COCO file's images (default: the file's)")
    p.add_argument("--question", default=None, metavar="TEXT",
                   help="question asked of every image, for VQA models on inputs without questions")
    add_models(p)
    add_runner_options(p)
    add_threads(p, default=None)
    p.set_defaults(func=_handler)
    return p


def _handler(args: argparse.Namespace) -> int:
    from .. import zoo
    from ..evaluation.dataset_job import explain_dataset
    from ..evaluation.grounding import image_size, kind_of
    from ..evaluation.inputs import open_input
    from ..explain import METHODS

    if args.method not in METHODS:
        raise CLIError(f"--method: expected one of {', '.join(METHODS)}, got {args.method!r}")
    out = check_out(args.out, kind="folder")
    if args.html is not None:
        check_out(args.html, kind="file", suffixes=(".html",), option="--html")
    from ..zoo.tasks import shipped_names

    if args.model not in shipped_names():
        raise CLIError(f"--model: expected one of {', '.join(shipped_names())}, got {args.model!r}")
    if args.input == "shapeworld" and args.scenes is not None:
        scene_seeds(args.scenes)
    apply_threads(args)
    with runner_from_args(args) as runner:
        model = zoo.load(args.model, args.models)
        module = model if hasattr(model, "parameters") else model.model
        module.to(runner.device)
        kind = kind_of(model)
        data = open_input(args.input, size=image_size(model), limit=args.scenes, images=args.images,
                          question=args.question)
        if kind == "answer" and args.input != "shapeworld" and args.question is None:
            raise CLIError("--question: a VQA model on this input needs a question to ask of every image")
        options = {"input": args.input, "model": args.model, "layer": args.layer, "items": len(data),
                   "images": args.images, "question": args.question, "dtype": args.dtype}
        manifest = explain_dataset(model, data, out, method=args.method, layer=args.layer, map_size=args.map_size,
                                   shard_size=args.shard_size, resume=args.resume, runner=runner, options=options,
                                   html=args.html, html_items=args.html_items)
        if runner.main:
            print(f"explained {manifest['items']} items into {manifest['rows']} rows, "
                  f"{len(manifest['shards'])} shards: wrote {out}" + (f" and {args.html}" if args.html else ""))
    return 0
