"""Eval-score curves, one line per algorithm with a band over seeds (matplotlib, Agg backend).

Eval points fall at different NFEs for different algorithms (their updates cost
different numbers of forwards), so each seed's curve is linearly interpolated on
a common grid, from 0 to the shortest seed's last point (no extrapolation),
before taking the mean. The band is min–max over seeds: with 2–3 seeds a t
interval is wider than the plot and says less than the seeds themselves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

AXES = {"nfe": "model evaluations (NFE)", "wall_s": "wall-clock, training only (s)"}


def seed_band(curves: list[list[dict]], axis: str, points: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(grid, mean, min, max) over seeds of score vs `axis` ('nfe' or 'wall_s')."""
    end = min(c[-1][axis] for c in curves)
    grid = np.linspace(0.0, end, points) if end > 0 else np.zeros(1)
    ys = np.stack([np.interp(grid, [p[axis] for p in c], [p["score"] for p in c]) for c in curves])
    return grid, ys.mean(0), ys.min(0), ys.max(0)


def plot_curves(results: dict, out_dir: Path) -> list[Path]:
    """score_vs_nfe.png and score_vs_wall.png in out_dir; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    suite = results["suite"]
    by_label: dict[str, list] = {}
    for run in results["runs"]:
        if run["status"] == "finished" and run["curve"]:
            by_label.setdefault(run["label"], []).append(run["curve"])
    paths = []
    for axis, name in (("nfe", "score_vs_nfe.png"), ("wall_s", "score_vs_wall.png")):
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
        for i, (label, curves) in enumerate(by_label.items()):
            color = f"C{i}"
            grid, mean, lo, hi = seed_band(curves, axis)
            ax.plot(grid, mean, color=color, label=f"{label} (n={len(curves)})")
            ax.fill_between(grid, lo, hi, color=color, alpha=0.2, linewidth=0)
        if axis == "nfe" and not results["dry_run"]:
            ax.axvline(suite["budget_nfe"], color="gray", linestyle=":", linewidth=1, label="budget")
        if suite.get("target_score") is not None:
            ax.axhline(suite["target_score"], color="gray", linestyle="--", linewidth=1, label="target")
        ax.set_xlabel(AXES[axis])
        ax.set_ylabel("held-out eval score")
        ax.set_title(f"{suite['name']}: mean over seeds, band min–max", fontsize=10)
        ax.grid(alpha=0.3)
        if by_label:
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = Path(out_dir) / name
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths
