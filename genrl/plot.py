"""`genrl plot RUN_DIR [RUN_DIR ...] --out F.png`: a run's curves, several runs overlaid.

One PNG: training reward, held-out score, held-out image texture (ShapeWorld's reward-hacking guard),
KL, clip fraction, gradient norm and images/s, each against updates (left) and against model
evaluations, NFEs (right). Read from each run's metrics.jsonl (a torn last line, from a run still
writing or killed mid-write, is skipped) and eval/base.json / eval/final.json (the held-out score
and texture before the first and after the last update).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Sequence

from genrl.errors import ConfigError, RunDirError, RunNotFoundError

# (panel title, metrics drawn in it: solid line first, dashed after)
PANELS = (
    ("reward (training batch mean)", ("reward_mean",)),
    ("held-out score", ("eval_score",)),
    # the reward-hacking guard (genrl.shapeworld.quality): texture a flat ShapeWorld render does not have
    ("held-out image texture: background (solid), shapes (dashed); clean renders 0", ("eval_texture_bg", "eval_texture_fg")),
    ("KL: approx_kl (solid), kl to the reference (dashed)", ("approx_kl", "kl")),
    ("clip fraction", ("clip_frac",)),
    ("gradient norm (before clipping)", ("grad_norm",)),
    ("images / s", ("images_per_s",)),
)
# held-out metrics: their metrics.jsonl key -> the key of eval/base.json and eval/final.json
HELD_OUT = {"eval_score": "score", "eval_texture_bg": "texture_bg", "eval_texture_fg": "texture_fg"}
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
    lines = path.read_bytes().splitlines()  # decoded line by line: a bad byte is named with its line
    rows = []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
            row = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            if number == len(lines):  # the line being written when the file was read
                break
            what = "UTF-8 text" if isinstance(err, UnicodeDecodeError) else "a JSON object"
            raise RunDirError(f"{path}:{number} is not {what}: {raw[:60].decode('utf-8', 'replace')!r}") from None
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
    """{update, nfe, eval_score, eval_texture_*?} points: eval/base.json at 0, the eval_score rows, eval/final.json
    at the end (the HELD_OUT metrics each holds)."""
    def point(path: Path, update: int, nfe: int) -> dict:
        result = read_summary(path)
        return {"update": update, "nfe": nfe} | {m: result[k] for m, k in HELD_OUT.items() if result.get(k) is not None}

    points = []
    base, final = run_dir / "eval" / "base.json", run_dir / "eval" / "final.json"
    if base.is_file():
        points.append(point(base, 0, 0))
    points += [r for r in rows if value(r, "eval_score") is not None]
    if final.is_file():
        points.append(point(final, rows[-1]["update"], rows[-1].get("nfe", 0)))
    return points


def read_summary(path: Path) -> dict:
    """An evaluation summary (eval/base.json, eval/final.json); one that is not JSON or has no numeric score is
    named in one line."""
    try:
        result = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise RunDirError(f"{path} is not an evaluation summary (not JSON: {err}); delete it to plot without it") from None
    score = result.get("score") if isinstance(result, dict) else None
    if not isinstance(score, (int, float)) or isinstance(score, bool):
        raise RunDirError(f"{path} is not an evaluation summary (its score is {score!r}, not a number); "
                          "delete it to plot without it")
    return result


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
    names = _with_seed_counts(names, [evaluated_seeds(d) for d, _ in runs])
    fig, axes = plt.subplots(len(PANELS), len(X_AXES), figsize=(12, 3 * len(PANELS)), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for r, ((run_dir, rows), name) in enumerate(zip(runs, names)):
        color = colors[r % len(colors)]
        held_out = held_out_points(run_dir, rows)
        for p, (title, metrics) in enumerate(PANELS):
            for a, (x_key, x_label) in enumerate(X_AXES):
                ax = axes[p][a]
                for m, metric in enumerate(metrics):
                    source = held_out if metric in HELD_OUT else rows
                    xy = [(value(row, x_key), value(row, metric)) for row in source]
                    xy = [(x, y) for x, y in xy if x is not None and y is not None]
                    if not xy:
                        continue
                    xs, ys = zip(*xy)
                    style = "-" if m == 0 else "--"
                    label = name if (p, a, m) == (0, 0, 0) else None
                    if metric in HELD_OUT:
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


def evaluated_seeds(run_dir: Path) -> int | None:
    """Images per held-out prompt of the run's evaluations (eval/final.json, else eval/base.json); None if unknown."""
    for tag in ("final", "base"):
        try:
            seeds = json.loads((run_dir / "eval" / f"{tag}.json").read_text()).get("images_per_prompt")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(seeds, int):
            return seeds
    return None


def _with_seed_counts(names: list[str], seeds: list[int | None]) -> list[str]:
    """The legend's names, with each run's seed count when the runs' held-out scores were measured with different
    numbers of images per prompt (so differ in precision, not only in policy); said once on stderr too."""
    if len({s for s in seeds if s is not None}) < 2:
        return names
    counts = ", ".join(f"{n}: {s if s is not None else '?'}" for n, s in zip(names, seeds))
    print(f"genrl: note: these runs' held-out scores were evaluated with different numbers of images per prompt "
          f"({counts}): a score from fewer seeds is noisier (genrl eval RUN_DIR --seeds N evaluates them alike)",
          file=sys.stderr)
    return [f"{n} ({s} seeds)" if s is not None else n for n, s in zip(names, seeds)]
