"""Grounding of the transformers models beside their random-weight twins and the CNN+LSTM models: one table.

The protocol is ``mmexplain evaluate grounding``'s leaderboard
(:func:`mmexplain.evaluation.grounding.leaderboard`): the ground-truth caption of each
held-out ShapeWorld scene is explained word by word, and the ground-truth answer of
every question that refers to objects, with every applicable method; each map is
scored against the referred object's mask (pointing game, energy ratio,
discrimination). The rows with random weights are the Adebayo et al. sanity check: a
map that survives randomisation explains nothing.

Usage:
    python benchmarks/hf_grounding.py --scenes 200 --methods gradcam,hirescam,layercam,relevancy
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import mmexplain as mx  # noqa: E402
from mmexplain.evaluation.grounding import format_leaderboard, leaderboard  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", "--n", dest="scenes", type=int, default=200, help="held-out test scenes")
    parser.add_argument("--methods", default="gradcam,hirescam,layercam,scorecam,relevancy",
                        help="comma-separated method names, or 'all'")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--no-zoo", action="store_true", help="leave out the CNN+LSTM captioner and VQA rows")
    args = parser.parse_args(argv)
    if args.scenes < 1:
        parser.error(f"--scenes: expected an integer >= 1, got {args.scenes}")
    torch.set_num_threads(args.threads)
    methods = "all" if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    models = {}
    for name in ("tiny-ved", "tiny-vilt"):
        trained = mx.zoo.load(name)
        models[name] = trained
        models[f"{name}, random weights"] = mx.zoo.new(name, config=mx.zoo.tiny_hf.config_of(trained), seed=0)
    if not args.no_zoo:
        models |= {"captioner (CNN+LSTM)": mx.zoo.load("captioner"), "vqa (CNN+LSTM)": mx.zoo.load("vqa")}
    report = leaderboard(models, mx.world.split_seeds("test", args.scenes), methods=methods)
    print(format_leaderboard(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
