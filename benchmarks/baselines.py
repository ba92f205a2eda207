"""Free baselines in a benchmark table: the base model sampled with guidance, no training.

Classifier-free guidance costs no training, only a second model pass per sampling step, and on
ShapeWorld it gives the base model much of what RL gives (docs/experiments.md, "Free baselines").
A suite's table.md shows such a baseline as a row when the results folder holds its evaluation,
written by `genrl eval` into OUT/baselines/:

    genrl bench tiny --out bench_out/tiny
    genrl eval --guidance 2 --seeds 4 --out bench_out/tiny/baselines/guidance2.json   # --seeds: the suite's log.eval_seeds
    python -m genrl.benchmarks.report bench_out/tiny    # table.md gains the row "base + guidance 2"

Each OUT/baselines/*.json is one row, named by its guidance. It must have evaluated what the
suite's runs evaluated before training (the same prompts, images per prompt and ODE steps as
their eval/base.json); one that did not is listed under the table as not comparable, not shown.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

MATCHED = ("images_per_prompt", "num_steps")  # with the prompts: what fixes the evaluated images


def collect(out: Path) -> dict:
    """{"rows": [...], "skipped": [...]}: the comparable baseline evaluations of results folder `out`."""
    files = sorted((Path(out) / "baselines").glob("*.json"))
    if not files:
        return {"rows": [], "skipped": []}
    reference = next(iter(sorted(Path(out).glob("runs/*/eval/base.json"))), None)
    ref = json.loads(reference.read_text()) if reference else None
    rows, skipped = [], []
    for path in files:
        try:
            result = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            skipped.append(f"{path.name} (unreadable: {err})")
            continue
        why = _not_comparable(result, ref)
        if why:
            skipped.append(f"{path.name} ({why})")
            continue
        rows.append(row(path.name, result))
    return {"rows": rows, "skipped": skipped}


def _not_comparable(result: dict, ref: dict | None) -> str | None:
    if not isinstance(result, dict) or "score" not in result or "per_prompt" not in result:
        return "not a `genrl eval` JSON"
    if ref is None:
        return "no run's eval/base.json to compare it with yet"
    if set(result["per_prompt"]) != set(ref.get("per_prompt", {})):
        return "other prompts than the runs' evaluation"
    for key in MATCHED:
        if result.get(key) != ref.get(key):
            return f"{key} {result.get(key)}, the runs' {ref.get(key)}"
    return None


def row(name: str, result: dict) -> dict:
    """One baseline: its label, strict score with the standard error over its images, partial, texture."""
    n = sum(p.get("n", 0) for p in result["per_prompt"].values()) or None
    score = result["score"]
    guidance = result.get("guidance")
    label = "base" + (f" + guidance {guidance:g}" if guidance not in (None, 1.0) else " (no guidance)")
    return {"file": name, "label": label, "guidance": guidance, "score": score, "partial": result.get("partial"),
            # strict is 0 / 1 per image: the standard error of its mean over n images
            "se": math.sqrt(score * (1 - score) / n) if n and 0 <= score <= 1 else None, "images": n,
            "texture_bg": result.get("texture_bg")}


def table_lines(baselines: dict | None, base_mean: float | None, fmt) -> list[str]:
    """The markdown of the baselines (none: no lines); `fmt` formats a number or None (report.fmt)."""
    if not baselines or not (baselines.get("rows") or baselines.get("skipped")):
        return []
    lines = ["", "**Free baselines** (no training; `genrl eval --guidance G` into OUT/baselines/, the runs' held-out "
             "prompts and seeds):", "",
             "| baseline | held-out strict ± s.e. (images) | Δ vs the runs' base | partial | texture bg |",
             "|---|---|---|---|---|"]
    for b in baselines.get("rows", []):
        delta = fmt(b["score"] - base_mean, "+.3f") if base_mean is not None else "–"
        lines.append(f"| {b['label']} | {fmt(b['score'])} ± {fmt(b['se'])} ({b['images']}) | {delta} | "
                     f"{fmt(b['partial'])} | {fmt(b['texture_bg'], '.4f')} |")
    if baselines.get("skipped"):
        lines += ["", "Not comparable, not shown: " + "; ".join(baselines["skipped"]) + "."]
    return lines
