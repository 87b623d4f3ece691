"""Scaling of the dataset runner: items/s for 1 vs 2 processes and 0 vs 2 DataLoader workers, peak memory vs size.

Runs ``mmexplain evaluate grounding`` and ``mmexplain dissect`` as subprocesses (plain
``python -m mmexplain`` for one process, ``torchrun --standalone --nproc-per-node 2`` for
two, gloo on CPU) and reads each rank's summary line (items, seconds from the runner's
start, so imports and model loading are left out; peak RSS). items/s = all ranks'
items / the slowest rank's seconds; the median of ``--repeats`` runs. Prints Markdown.

Example:
    $ OMP_NUM_THREADS=1 python benchmarks/scale.py --repeats 3
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

LINE = re.compile(r"rank (\d+)/(\d+) [\w -]+: (\d+) items in ([\d.]+) s [^\n]*?peak (\d+) MiB")


def run(command: list[str], *, procs: int, workers: int) -> tuple[float, float]:
    """(items/s, peak MiB of the largest rank) of one run."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs)]
                if procs > 1 else [sys.executable])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        args = [a.replace("{tmp}", tmp) for a in command]
        done = subprocess.run([*launcher, "-m", "mmexplain", *args, "--workers", str(workers), "--threads", "1"],
                              env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    ranks = list(LINE.finditer(done.stderr))
    if len(ranks) != procs:
        raise RuntimeError(f"expected {procs} summary lines, got {len(ranks)}:\n{done.stderr[-2000:]}")
    items = sum(int(m.group(3)) for m in ranks)
    seconds = max(float(m.group(4)) for m in ranks)
    return items / seconds, max(float(m.group(5)) for m in ranks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eval-scenes", type=int, default=8)
    parser.add_argument("--dissect-scenes", type=int, default=96)
    args = parser.parse_args()
    jobs = {
        "evaluate grounding": lambda n: ["evaluate", "grounding", "--scenes", str(n), "--methods", "gradcam"],
        "dissect classifier": lambda n: ["dissect", "classifier", "--scenes", str(n), "--no-gallery", "--quiet",
                                         "--out", "{tmp}/d"],
    }
    sizes = {"evaluate grounding": args.eval_scenes, "dissect classifier": args.dissect_scenes}
    print(f"CPU: {os.cpu_count()} cores, torch threads 1 per process; median of {args.repeats} runs; "
          "dissect items count both passes.\n")
    print("| job | scenes | processes | workers | items/s | peak MiB per rank |")
    print("|---|---|---|---|---|---|")
    for name, make in jobs.items():
        for procs in (1, 2):
            for workers in (0, 2):
                runs = [run(make(sizes[name]), procs=procs, workers=workers) for _ in range(args.repeats)]
                rate = statistics.median(r[0] for r in runs)
                peak = max(r[1] for r in runs)
                print(f"| {name} | {sizes[name]} | {procs} | {workers} | {rate:.2f} | {peak:.0f} |", flush=True)
    print("\nPeak memory against dataset size (one process, no workers):\n")
    print("| job | scenes | items/s | peak MiB |")
    print("|---|---|---|---|")
    for name, make in jobs.items():
        for factor in (1, 4):
            rate, peak = run(make(sizes[name] * factor), procs=1, workers=0)
            print(f"| {name} | {sizes[name] * factor} | {rate:.2f} | {peak:.0f} |", flush=True)


if __name__ == "__main__":
    main()
