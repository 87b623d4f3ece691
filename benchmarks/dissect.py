"""Network Dissection throughput and peak memory at two dataset sizes (memory must stay flat).

Each size runs in a fresh child process so that its peak resident memory
(``ru_maxrss``) is its own. The dataset is ShapeWorld, generated lazily, so the only
state that could grow with the dataset is the dissection's own; a non-streaming
implementation that kept every activation would need ``n x K x h x w x 4`` bytes
(the last column, for contrast).

Usage:

    python benchmarks/dissect.py                      # shipped classifier, n = 250 and 1000
    python benchmarks/dissect.py --sizes 200 800 --model captioner
    python benchmarks/dissect.py --untrained          # random weights (same cost)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    import torch

    import mmexplain as mx
    from mmexplain.dissect import dissect, image_forward

    torch.set_num_threads(args.threads)
    if args.untrained:
        from mmexplain.zoo import new as new_model

        torch.manual_seed(0)
        model = new_model(args.model).eval()
    else:
        model = mx.zoo.load(args.model)
    data = mx.world.concept_dataset(args.child)
    # warm-up on a few images (allocator, kernels), not timed
    dissect(model, model.default_layer, mx.world.concept_dataset(8, seed=50_000), forward=image_forward, progress=False)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    labels = dissect(model, model.default_layer, data, batch_size=args.batch_size, forward=image_forward,
                     progress=False)
    seconds = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with torch.no_grad():
        a = model.encoder(model.norm(data[0][0][None]))  # (1, K, h, w)
    print(json.dumps({"n": args.child, "seconds": seconds, "peak_rss_mib": rss / 1024,
                      "rss_before_mib": rss_before / 1024, "units": len(labels),
                      "detectors": len(labels.detectors()),
                      "all_acts_mib": args.child * a.numel() * 4 / 2**20}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="classifier", choices=["classifier", "captioner", "vqa"])
    p.add_argument("--sizes", type=int, nargs=2, default=[250, 1000])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--untrained", action="store_true")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        child(args)
        return 0
    rows = []
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--child", str(n), "--model", args.model, "--batch-size",
               str(args.batch_size), "--threads", str(args.threads)] + (["--untrained"] if args.untrained else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return out.returncode
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    import torch

    weights = "random weights" if args.untrained else "shipped checkpoint"
    print(f"\nmx.dissect({args.model}, default_layer), {weights}, batch {args.batch_size}, {args.threads} CPU threads, "
          f"torch {torch.__version__}; two passes over the data (thresholds, IoU)\n")
    print("| images | seconds | images/s | peak RSS (MiB) | RSS before dissect (MiB) | detectors | "
          "all activations would be (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']} | {r['seconds']:.1f} | {r['n'] / r['seconds']:.1f} | {r['peak_rss_mib']:.0f} | "
              f"{r['rss_before_mib']:.0f} | {r['detectors']}/{r['units']} | {r['all_acts_mib']:.0f} |")
    growth = rows[1]["peak_rss_mib"] - rows[0]["peak_rss_mib"]
    print(f"\npeak RSS change from {rows[0]['n']} to {rows[1]['n']} images: {growth:+.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
