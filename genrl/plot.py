"""`genrl plot RUN_DIR [RUN_DIR ...] --out F.png`: a run's curves, several runs overlaid.

One PNG: training reward, held-out score, KL, clip fraction, gradient norm and images/s, each
against updates (left) and against model evaluations, NFEs (right). Read from each run's
metrics.jsonl (a torn last line, from a run still writing or killed mid-write, is skipped) and
eval/base.json / eval/final.json (the held-out score before the first and after the last update).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

from genrl.errors import ConfigError, RunDirError, RunNotFoundError

# (panel title, metrics drawn in it: solid line first, dashed after)
PANELS = (
    ("reward (training batch mean)", ("reward_mean",)),
    ("held-out score", ("eval_score",)),
    ("KL: approx_kl (solid), kl to the reference (dashed)", ("approx_kl", "kl")),
    ("clip fraction", ("clip_frac",)),
    ("gradient norm (before clipping)", ("grad_norm",)),
    ("images / s", ("images_per_s",)),
)
X_AXES = (("update", "updates"), ("nfe", "model evaluations (NFE)"))
LOG_SCALE = {"approx_kl", "kl"}  # spans decades over a run


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of RUN_DIR/metrics.jsonl; a torn last line is dropped, any other bad line is an error."""
    run = Path(run_dir)
    if not run.is_dir():
        raise RunNotFoundError(f"run directory {str(run)!r} does not exist")
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise RunNotFoundError(f"{str(run)!r} has no metrics.jsonl: not a genrl run directory, or no update finished yet")
    lines = path.read_text().splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # the line being written when the file was read
                break
            raise RunDirError(f"{path}:{number} is not a JSON object: {line[:60]!r}") from None
        if not isinstance(row, dict) or "update" not in row:
            raise RunDirError(f"{path}:{number} is not a metrics row (no 'update'): {line[:60]!r}")
        rows.append(row)
    if not rows:
        raise RunDirError(f"{path} holds no finished update yet")
    return rows


def value(row: dict, name: str) -> float | None:
    """row[name], also under a namespace ('train/reward_mean'); None when absent or not a finite number."""
    found = row.get(name)
    if found is None:
        found = next((v for k, v in row.items() if k.endswith("/" + name)), None)
    if isinstance(found, (int, float)) and not isinstance(found, bool) and math.isfinite(found):
        return float(found)
    return None


def held_out_points(run_dir: Path, rows: list[dict]) -> list[dict]:
    """{update, nfe, eval_score} points: eval/base.json at 0, the eval_score rows, eval/final.json at the end."""
    points = []
    base, final = run_dir / "eval" / "base.json", run_dir / "eval" / "final.json"
    if base.is_file():
        points.append({"update": 0, "nfe": 0, "eval_score": json.loads(base.read_text())["score"]})
    points += [r for r in rows if value(r, "eval_score") is not None]
    if final.is_file():
        points.append({"update": rows[-1]["update"], "nfe": rows[-1].get("nfe", 0),
                       "eval_score": json.loads(final.read_text())["score"]})
    return points


def smooth(ys: list[float], window: int) -> list[float]:
    """Trailing moving average over `window` points (the first points average what there is)."""
    out, total = [], 0.0
    for i, y in enumerate(ys):
        total += y - (ys[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot_runs(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Write the curves of `run_dirs` to `out` (PNG); returns its path."""
    if not run_dirs:
        raise ConfigError("give at least one run directory")
    runs = [(Path(d), read_metrics(d)) for d in run_dirs]  # every input checked before drawing
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [d.name for d, _ in runs]
    if len(set(names)) < len(names):  # same-named runs in different folders
        names = [str(d) for d, _ in runs]
    fig, axes = plt.subplots(len(PANELS), len(X_AXES), figsize=(12, 3 * len(PANELS)), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for r, ((run_dir, rows), name) in enumerate(zip(runs, names)):
        color = colors[r % len(colors)]
        held_out = held_out_points(run_dir, rows)
        for p, (title, metrics) in enumerate(PANELS):
            for a, (x_key, x_label) in enumerate(X_AXES):
                ax = axes[p][a]
                for m, metric in enumerate(metrics):
                    source = held_out if metric == "eval_score" else rows
                    xy = [(value(row, x_key), value(row, metric)) for row in source]
                    xy = [(x, y) for x, y in xy if x is not None and y is not None]
                    if not xy:
                        continue
                    xs, ys = zip(*xy)
                    style = "-" if m == 0 else "--"
                    label = name if (p, a, m) == (0, 0, 0) else None
                    if metric == "eval_score":
                        ax.plot(xs, ys, style, marker="o", color=color, label=label)
                        continue
                    window = max(1, len(ys) // 20)
                    if window > 1:  # raw values faint, their moving average solid
                        ax.plot(xs, ys, style, color=color, alpha=0.25, linewidth=0.8)
                        ys = smooth(list(ys), window)
                    ax.plot(xs, ys, style, color=color, label=label, linewidth=1.4)
                    if metric in LOG_SCALE and min(ys) > 0:
                        ax.set_yscale("log")
                ax.set_title(title, fontsize=9)
                ax.set_xlabel(x_label, fontsize=8)
                ax.tick_params(labelsize=7)
                ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)
    return out
