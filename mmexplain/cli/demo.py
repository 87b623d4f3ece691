"""``mmexplain demo``: the shipped models explained on held-out ShapeWorld scenes.

Parses the options and prints; the work is :func:`mmexplain.demo.run_demo`, which writes
per-word caption maps, VQA answer/counterfactual maps, class maps, ``report.md`` and
``report.html`` to ``--out`` (default ``./mmexplain-demo``), each map next to the measured
pointing of its method. A failure or an interrupt leaves ``--out`` as it was.

Example:
    $ mmexplain demo --out demo
    $ open demo/report.html
"""

from __future__ import annotations

import argparse
import time

from .common import add_models, add_threads, apply_threads, check_out, nonnegative_int, positive_int, scene_seeds

__all__ = ["add_demo_command"]


def _demo_handler(args: argparse.Namespace) -> int:
    check_out(args.out, kind="folder")
    scene_seeds(args.scenes, start=args.seed, start_option="--seed")
    from ..demo import run_demo

    apply_threads(args)
    start = time.perf_counter()
    report = run_demo(args.out, seed=args.seed, n=args.scenes, root=args.models, naming_scenes=args.naming_scenes,
                      with_real_photos=not args.no_real_photos)
    files = sorted(p.name for p in report.parent.iterdir() if p.name.endswith((".png", ".md", ".html")))
    print(f"wrote {len(files)} files to {report.parent} in {time.perf_counter() - start:.0f} s; "
          f"open {report.with_suffix('.html')} (interactive) or {report}")
    return 0


def add_demo_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """``mmexplain demo [--out DIR] [--seed N] [--scenes N]``."""
    p = subparsers.add_parser(
        "demo", help="explain the shipped models on held-out scenes: figures, report.md, report.html",
        description="Run the shipped captioner, VQA model and classifier on held-out ShapeWorld scenes and "
                    "write per-word caption maps, VQA answer/counterfactual maps, class maps, a one-page "
                    "report (report.md) and an interactive one (report.html: point at a word) to DIR. Each "
                    "map is drawn by Grad-CAM and by the method that points best on that model, with the "
                    "measured pointing of each.")
    p.add_argument("--out", default="mmexplain-demo", metavar="DIR", help="output folder (default ./mmexplain-demo)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="offset into the held-out test scenes (default 0)")
    p.add_argument("--scenes", "--n", dest="scenes", type=positive_int, default=4, metavar="N",
                   help="number of scenes (default 4)")
    add_models(p)
    p.add_argument("--naming-scenes", type=nonnegative_int, default=200, metavar="N",
                   help="scenes dissected to name units for the textual explanations (0: skip; default 200)")
    p.add_argument("--no-real-photos", action="store_true",
                   help="leave out EfficientNet-Lite0 on two real photos (needs the [real] extra)")
    add_threads(p)
    p.set_defaults(func=_demo_handler)
    return p
