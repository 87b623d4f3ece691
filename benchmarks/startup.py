"""Wall time of short ``mmexplain`` commands, one checkout against another.

Each command runs as a fresh process (``python -m mmexplain ...`` with the checkout on
``PYTHONPATH``), as a user's shell would run it; the table shows the median wall time
and CPU time (user + system, which a busy machine inflates far less) of ``--runs`` runs
per checkout, the checkouts interleaved run by run so that a busy machine slows them
alike. The ratios are the first checkout's medians over the last one's.

Example:
    $ python benchmarks/startup.py --repos /work/main . --runs 7
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUESTION = "what color is the circle ?"


def commands(image: str, out: str) -> dict[str, list[str]]:
    """name -> mmexplain arguments."""
    return {
        "--help": ["--help"],
        "vqa --help": ["vqa", "--help"],
        "argument error (--threads 0)": ["vqa", image, QUESTION, "--out", out, "--threads", "0"],
        "vqa (shipped model, 1 thread)": ["vqa", image, QUESTION, "--out", out, "--threads", "1"],
        "caption (shipped model, 1 thread)": ["caption", image, "--out", out, "--threads", "1"],
    }


def run_once(repo: Path, args: list[str]) -> tuple[float, float, int]:
    """(wall s, CPU s, exit status) of one run."""
    env = {**os.environ, "PYTHONPATH": str(repo)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mmexplain", *args], env=env, cwd=repo, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repos", nargs="+", default=["."], help="checkouts to time (default: this one)")
    parser.add_argument("--runs", type=int, default=5, help="runs per command and checkout (default 5)")
    parser.add_argument("--only", nargs="*", default=None, help="command names to run (default all)")
    args = parser.parse_args()
    repos = [Path(r).resolve() for r in args.repos]
    with tempfile.TemporaryDirectory() as tmp:
        image = str(Path(tmp, "scene.png"))
        env = {**os.environ, "PYTHONPATH": str(repos[0])}
        subprocess.run([sys.executable, "-c", "import sys, mmexplain as mx; from PIL import Image; "
                        "Image.fromarray((mx.world.generate(7).image.permute(1, 2, 0) * 255).byte().numpy())"
                        ".save(sys.argv[1])", image], env=env, check=True)
        table = commands(image, str(Path(tmp, "out.png")))
        names = [n for n in table if args.only is None or any(o in n for o in args.only)]
        print(f"median of {args.runs} runs: wall s / CPU s (exit status); load average {os.getloadavg()[0]:.1f} "
              "at start")
        head = " | ".join(str(r) for r in repos)
        ratio = " wall ratio | CPU ratio |" if len(repos) > 1 else ""
        print(f"| command | {head} |{ratio}")
        print("|---|" + "---|" * len(repos) + ("---|---|" if len(repos) > 1 else ""))
        for name in names:
            runs: dict[Path, list[tuple[float, float, int]]] = {r: [] for r in repos}
            for _ in range(args.runs):
                for r in repos:
                    runs[r].append(run_once(r, table[name]))
            wall = [statistics.median(w for w, _, _ in runs[r]) for r in repos]
            cpu = [statistics.median(c for _, c, _ in runs[r]) for r in repos]
            cells = " | ".join(f"{w:.2f} / {c:.2f} ({runs[r][-1][2]})" for w, c, r in zip(wall, cpu, repos))
            ratio = f" {wall[0] / wall[-1]:.1f}× | {cpu[0] / cpu[-1]:.1f}× |" if len(repos) > 1 else ""
            print(f"| {name} | {cells} |{ratio}", flush=True)


if __name__ == "__main__":
    main()
