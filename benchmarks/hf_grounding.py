"""Per-word grounding of Grad-CAM caption maps on held-out ShapeWorld scenes: a table.

For each held-out scene, the ground-truth caption is explained word by word
(``mx.explain_caption``: one teacher-forced forward, one batched backward) and every
content word (size, colour, shape) is scored against the mask of the object it
describes (``scene.alignment``):

* pointing: the map's maximum lies inside the object's mask (``mx.metrics.pointing_game``);
* energy ratio: mean map inside the mask / mean outside (uniform map = 1.0);
* discrimination (scenes with 2-3 objects): more mean energy on the described object
  than on every other object.

Rows: the shipped Hugging Face ``models/tiny-ved`` (ViT + GPT-2 trained on ShapeWorld),
the same architecture with random weights (the Adebayo et al. sanity check: a map that
survives randomisation explains nothing), the CNN + LSTM ``mx.zoo`` captioner when it is
shipped (same scenes, same protocol, at its own resolution), and two map-free baselines
(a centred Gaussian prior and a uniform map).

Usage:
    python benchmarks/hf_grounding.py --n 200            # prints a markdown table
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import mmexplain as mx  # noqa: E402
from mmexplain import metrics  # noqa: E402

KINDS = {**{w: "size" for w in mx.world.SIZES}, **{w: "color" for w in mx.world.COLORS},
         **{w: "shape" for w in mx.world.SHAPES}}


def evaluate(explain: Callable[[torch.Tensor, str], torch.Tensor], seeds: range, size: int) -> dict:
    """Score maps ``explain(image, caption) -> (T, H, W)`` over the scenes of ``seeds``."""
    hits: dict[str, list[float]] = {}
    ratios: list[float] = []
    disc: list[float] = []
    for seed in seeds:
        scene = mx.world.generate(seed, size=size)
        maps = explain(scene.image, scene.caption)  # (T, H, W)
        words = scene.caption.split()
        for i, j in scene.alignment.items():
            saliency, mask = maps[i], scene.objects[j].mask
            hit = float(metrics.pointing_game(saliency, mask))
            hits.setdefault(KINDS[words[i]], []).append(hit)
            hits.setdefault("all", []).append(hit)
            ratios.append(metrics.energy_ratio(saliency, mask))
            others = [o.mask for k, o in enumerate(scene.objects) if k != j]
            if others:
                disc.append(float(all(metrics.discrimination(saliency, mask, m) for m in others)))
    finite = [r for r in ratios if math.isfinite(r)]
    return {
        "pointing": {k: sum(v) / len(v) for k, v in hits.items()},
        "energy_mean": sum(finite) / len(finite),
        "energy_median": statistics.median(ratios),
        "discrimination": sum(disc) / len(disc) if disc else float("nan"),
        "words": len(ratios),
    }


def gradcam_explainer(captioner) -> Callable[[torch.Tensor, str], torch.Tensor]:
    def explain(image: torch.Tensor, caption: str) -> torch.Tensor:
        return mx.explain_caption(captioner, image, caption).maps  # (T, H, W)

    return explain


def constant_explainer(make: Callable[[int, int], torch.Tensor]) -> Callable[[torch.Tensor, str], torch.Tensor]:
    def explain(image: torch.Tensor, caption: str) -> torch.Tensor:
        h, w = image.shape[-2:]
        return make(h, w).expand(len(caption.split()), h, w)

    return explain


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="held-out scenes (test split)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--model", type=Path, default=Path("models/tiny-ved"))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared, oversubscribed CPU 2 threads ran 10x slower)")
    parser.add_argument("--no-zoo", action="store_true", help="skip the mx.zoo CNN+LSTM captioner row")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from mmexplain.hf_train import TinyVEDConfig, build_model, load_tiny_ved

    seeds = mx.world.split_seeds(args.split, args.n)
    trained = load_tiny_ved(args.model)
    size = int(trained.image_processor.size["height"])
    saved = json.loads((args.model / "train_config.json").read_text())
    cfg = TinyVEDConfig(**{k: v for k, v in saved.items() if k in TinyVEDConfig.__dataclass_fields__})
    random_model = build_model(cfg, trained.tokenizer).eval()  # same architecture, seeded random weights
    random_captioner = mx.hf.caption_adapter(random_model, image_processor=trained.image_processor,
                                             tokenizer=trained.tokenizer)

    rows: list[tuple[str, int, dict, float]] = []

    def run(name: str, explain: Callable, at: int) -> None:
        t0 = time.time()
        result = evaluate(explain, seeds, at)
        rows.append((name, at, result, time.time() - t0))
        print(f"... {name}: {time.time() - t0:.0f}s", file=sys.stderr, flush=True)

    run(f"tiny-ved Grad-CAM ({trained.default_layer})", gradcam_explainer(trained), size)
    run("tiny-ved, random weights", gradcam_explainer(random_captioner), size)
    if not args.no_zoo:
        try:
            zoo_captioner = mx.zoo.load("captioner")
        except Exception as exc:  # not shipped in this checkout: say so, skip the row
            print(f"(mx.zoo captioner not available: {type(exc).__name__}: {exc})", file=sys.stderr)
        else:
            zoo_size = int(getattr(zoo_captioner, "image_size", 96))
            run("mx.zoo CNN+LSTM captioner Grad-CAM", gradcam_explainer(zoo_captioner), zoo_size)
    run("center prior (no model)", constant_explainer(metrics.center_prior), size)
    run("uniform map (no model)", constant_explainer(metrics.uniform_map), size)

    print(f"\nPer-word grounding on {args.n} held-out ShapeWorld scenes ({args.split} split, seeds "
          f"{seeds.start}..{seeds.stop - 1}); content words only (size, colour, shape)\n")
    print("| maps | px | words | pointing all | size | color | shape | energy ratio mean | median | discrimination | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, at, r, secs in rows:
        p = r["pointing"]
        print(f"| {name} | {at} | {r['words']} | {p['all']:.3f} | {p.get('size', float('nan')):.3f} | "
              f"{p.get('color', float('nan')):.3f} | {p.get('shape', float('nan')):.3f} | {r['energy_mean']:.2f} | "
              f"{r['energy_median']:.2f} | {r['discrimination']:.3f} | {secs:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
