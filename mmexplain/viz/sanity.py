"""Sanity-check curves: map similarity against the trained model's, per randomisation stage and method."""

from __future__ import annotations

from typing import Any

from ..errors import InputError

__all__ = ["plot_sanity"]


def plot_sanity(report: dict[str, Any], *, metric: str = "spearman_abs") -> Any:
    """Two panels (cascading, independent): ``metric`` per stage, one line per method.

    Args:
        report: :func:`mmexplain.evaluation.sanity.sanity_check`'s result.
        metric: ``"spearman"``, ``"spearman_abs"`` or ``"ssim"``.

    Returns:
        The matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    names = report.get("method_names", {})
    if metric not in ("spearman", "spearman_abs", "ssim"):
        raise InputError(f"metric: expected 'spearman', 'spearman_abs' or 'ssim', got {metric!r}")
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for ax, mode in zip(axes, ("cascading", "independent")):
        rows = report[mode]
        xs = list(range(len(rows)))
        for m in report["methods"]:
            ax.plot(xs, [r[m][metric] for r in rows], marker="o", label=names.get(m, m))
        ax.set_xticks(xs, [r["layer"] for r in rows], rotation=45, ha="right", fontsize=7)
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_title(f"{report['model']}: {mode} randomisation")
        ax.set_ylim(-1.05, 1.05)
    axes[0].set_ylabel({"spearman": "Spearman (signed)", "spearman_abs": "Spearman (|map|)", "ssim": "SSIM"}[metric])
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig
