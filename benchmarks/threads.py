"""Wall and CPU time of one command at several torch thread counts, to choose the default.

Each setting runs the same ``mmexplain`` command as a fresh process (``--threads N``, or
no option: torch's own default, one thread per core); the settings are interleaved run by
run so that a busy machine slows them alike. The table shows medians and the ratio to
one thread.

Example:
    $ python benchmarks/threads.py --runs 5 -- evaluate grounding --scenes 10
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time


def run(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds user + system) of ``python -m mmexplain ARGV``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mmexplain", *argv], check=True, capture_output=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per setting (default 5)")
    parser.add_argument("--threads", nargs="+", default=["1", "2", "default"],
                        help="settings: numbers, or 'default' for torch's own (default: 1 2 default)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the mmexplain command, after --")
    args = parser.parse_args()
    command = [a for a in args.command if a != "--"] or ["evaluate", "grounding", "--scenes", "10"]
    import torch

    results: dict[str, list[tuple[float, float]]] = {t: [] for t in args.threads}
    for _ in range(args.runs):
        for t in args.threads:
            results[t].append(run(command + ([] if t == "default" else ["--threads", t])))
    print(f"`mmexplain {' '.join(command)}`, median of {args.runs} runs; {os.cpu_count()} cores, torch default "
          f"{torch.get_num_threads()} threads; load average {os.getloadavg()[0]:.1f} at the end")
    print("| threads | wall s | CPU s | wall / 1 thread | CPU / 1 thread |")
    print("|---|---|---|---|---|")
    base = results[args.threads[0]]
    w0, c0 = statistics.median(w for w, _ in base), statistics.median(c for _, c in base)
    for t, rows in results.items():
        w, c = statistics.median(x for x, _ in rows), statistics.median(y for _, y in rows)
        name = f"torch default ({torch.get_num_threads()})" if t == "default" else t
        print(f"| {name} | {w:.1f} | {c:.1f} | {w / w0:.2f} | {c / c0:.2f} |")


if __name__ == "__main__":
    main()
