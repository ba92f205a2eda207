"""Eval-score curves, one line per algorithm with a band over seeds, and the final scores with their
intervals and paired differences (matplotlib, Agg backend).

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
        if results.get("reference"):
            ref = results["reference"]
            ax.axhline(ref["score"], color="black", linestyle="-.", linewidth=1, label=f"{ref['label']} final (mean)")
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


DOTS = 0.2  # the seeds' dots sit just below their algorithm's interval


def plot_final_scores(results: dict, out_dir: Path) -> Path:
    """final_scores.png: left, every seed's final score (dots), the mean and its 95% interval per algorithm;
    right, the paired differences to the best (one dot per seed), their mean and its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg, cmp = results["aggregate"], results["comparison"]
    labels = [k for k in agg if agg[k]["n"]]
    pairs = {p["other"]: p for p in cmp["pairs"]}
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.6, 0.5 * max(len(labels), 2) + 1.6), dpi=120, sharey=True)
    for y, label in enumerate(labels):
        a = agg[label]
        left.scatter(a["final_scores"], [y + DOTS] * a["n"], s=16, color="C0", alpha=0.7, linewidth=0)
        _mean_with_interval(left, a["final_mean"], a["final_ci95"], y)
        if label == cmp["best"]:
            continue
        p = pairs.get(label)
        if p is None or not p["n"]:
            continue
        best, other = (dict(zip(agg[k]["seeds"], agg[k]["final_scores"])) for k in (cmp["best"], label))
        right.scatter([other[s] - best[s] for s in p["seeds"]], [y + DOTS] * p["n"], s=16, color="C1", alpha=0.7,
                      linewidth=0)
        _mean_with_interval(right, p["diff"], p["ci95"], y, color="C1")
    base = [a["base_mean"] for a in agg.values() if a["n"] and a["base_mean"] is not None]
    if base:
        left.axvline(base[0], color="gray", linestyle="--", linewidth=1, label="base model")
        left.legend(fontsize=8)
    right.axvline(0.0, color="gray", linewidth=1)
    left.set_yticks(range(len(labels)), [f"{k} (n={agg[k]['n']})" for k in labels], fontsize=8)
    left.invert_yaxis()
    left.set_xlabel("final held-out score: seeds, mean, 95% CI")
    right.set_xlabel(f"paired difference to the best ({cmp['best']}), 95% CI")
    for ax in (left, right):
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(f"{results['suite']['name']}: final scores over seeds", fontsize=10)
    fig.tight_layout()
    path = Path(out_dir) / "final_scores.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def _mean_with_interval(ax, mean: float, ci, y: float, color: str = "black") -> None:
    ax.plot([mean], [y], marker="|", markersize=14, color=color, linestyle="none")
    if ci:
        ax.plot(list(ci), [y, y], color=color, linewidth=2)
