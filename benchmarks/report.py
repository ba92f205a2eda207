"""From run directories to results.json and table.md.

Everything is read back from what the trainer wrote (summary.json, eval/base.json,
metrics.jsonl), so a report can be rebuilt from a results folder without
rerunning anything, and a resumed run reports exactly like an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import time
from pathlib import Path

from genrl.benchmarks import stats


def read_run(run_dir: Path, target: float | None) -> dict:
    """One finished run: scores, the eval curve vs NFEs and wall-clock, cost to target, throughput, memory."""
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    base_path = run_dir / "eval" / "base.json"
    base = summary.get("base_eval") or (json.loads(base_path.read_text()) if base_path.exists() else None)
    final = summary["final_eval"]
    last = metrics[-1] if metrics else {"update": 0, "nfe": 0, "wall_s": 0.0}
    # Eval points: base at 0, every eval_every updates, and the final evaluation. wall_s is training time only
    # (the trainer does not count evaluation), so curves compare the algorithms, not the eval cadence.
    curve = [{"update": 0, "nfe": 0, "wall_s": 0.0, "score": base["score"]}] if base else []
    curve += [{"update": m["update"], "nfe": m["nfe"], "wall_s": m["wall_s"], "score": m["eval_score"]}
              for m in metrics if "eval_score" in m]
    curve.append({"update": last["update"], "nfe": last["nfe"], "wall_s": last["wall_s"], "score": final["score"]})
    reached = next((p for p in curve if target is not None and p["score"] >= target), None)
    speeds = [m["images_per_s"] for m in metrics if m.get("images_per_s")]
    return {
        "final_score": final["score"],
        "base_score": base["score"] if base else None,
        "final_per_category": final.get("per_category"),
        "updates": last["update"],
        "nfe": last["nfe"],
        "wall_s": last["wall_s"],
        "curve": curve,
        "nfe_to_target": reached["nfe"] if reached else None,
        "wall_s_to_target": reached["wall_s"] if reached else None,
        # every update has the same number of images, so total images / total time is the harmonic mean
        "images_per_s": round(len(speeds) / sum(1.0 / s for s in speeds), 3) if speeds else None,
        "peak_mem_mb": max((m["peak_mem_mb"] for m in metrics if "peak_mem_mb" in m), default=None),
    }


def aggregate(runs: list[dict], labels: list[str]) -> dict:
    """Per label: final score mean ± 95% t-interval over the finished seeds, and the costs."""
    out = {}
    for label in labels:
        done = [r for r in runs if r["label"] == label and r["status"] == "finished"]
        scores = [r["final_score"] for r in done]
        mean, half = stats.mean_ci(scores)
        hit = [r for r in done if r["nfe_to_target"] is not None]
        out[label] = {
            "n": len(done), "seeds": [r["seed"] for r in done], "final_scores": scores,
            "final_mean": mean, "final_ci95": half,
            "base_mean": _mean([r["base_score"] for r in done if r["base_score"] is not None]),
            "nfe_mean": _mean([r["nfe"] for r in done]), "wall_s_mean": _mean([r["wall_s"] for r in done]),
            "reached_target": len(hit),
            "nfe_to_target_mean": _mean([r["nfe_to_target"] for r in hit]),
            "wall_s_to_target_mean": _mean([r["wall_s_to_target"] for r in hit]),
            "images_per_s_mean": _mean([r["images_per_s"] for r in done if r["images_per_s"]]),
            "peak_mem_mb_max": max((r["peak_mem_mb"] for r in done if r["peak_mem_mb"] is not None), default=None),
        }
    return out


def compare(agg: dict) -> dict:
    """The best mean against every other label: Welch's t-test and whether the 95% intervals overlap."""
    ranked = sorted((k for k in agg if agg[k]["n"]), key=lambda k: agg[k]["final_mean"], reverse=True)
    if not ranked:
        return {"best": None, "pairs": [], "verdict": "No run finished; nothing to compare."}
    best = ranked[0]
    pairs = []
    for other in ranked[1:]:
        a, b = agg[best], agg[other]
        test = stats.welch_test(a["final_scores"], b["final_scores"])
        overlap = None
        if a["final_ci95"] is not None and b["final_ci95"] is not None:
            overlap = a["final_mean"] - a["final_ci95"] <= b["final_mean"] + b["final_ci95"]
        pairs.append({"best": best, "other": other, "diff": a["final_mean"] - b["final_mean"],
                      "welch_p": test["p"] if test else None, "ci_overlap": overlap})
    return {"best": best, "pairs": pairs, "verdict": verdict(best, pairs)}


def verdict(best: str, pairs: list[dict]) -> str:
    if not pairs:
        return f"Only {best} finished; nothing to compare."
    if any(p["welch_p"] is None for p in pairs):
        return (f"{best} has the best mean, but some algorithm has fewer than two finished seeds, "
                "so no difference can be told from noise.")
    noisy = [p for p in pairs if p["welch_p"] >= 0.05 or p["ci_overlap"]]
    detail = "; ".join(f"vs {p['other']}: {p['diff']:+.3f}, Welch p ≈ {p['welch_p']:.2g}, 95% CIs "
                       f"{'overlap' if p['ci_overlap'] else 'do not overlap'}" for p in pairs)
    if len(noisy) == len(pairs):
        return (f"Within noise: {best} has the best mean, but no difference is significant ({detail}). "
                "With this few seeds the test has little power; more seeds would be needed to rank them.")
    if noisy:
        return (f"Partly within noise: {best} is ahead of "
                f"{', '.join(p['other'] for p in pairs if p not in noisy)} beyond noise, but not of "
                f"{', '.join(p['other'] for p in noisy)} ({detail}).")
    return f"Beyond noise: {best} is ahead of every other algorithm ({detail})."


def machine_info(device: str) -> dict:
    import torch

    info = {"cpu_count": os.cpu_count(), "torch_version": torch.__version__, "device": device,
            "python": platform.python_version(), "platform": platform.platform(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def git_commit(repo: Path) -> dict:
    """The commit of the code that ran (cleanrl tags every run with it); dirty: uncommitted changes."""
    def git(*args):
        try:
            done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


# ---------------------------------------------------------------------------------------------- table.md


def _mean(values: list) -> float | None:
    return sum(values) / len(values) if values else None


def fmt(value, spec: str = ".3f", missing: str = "–") -> str:
    return missing if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _seconds(s: float | None) -> str:
    if s is None:
        return "–"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def table_markdown(results: dict) -> str:
    suite, agg, cmp = results["suite"], results["aggregate"], results["comparison"]
    git, machine = results["git"], results["machine"]
    target = suite["target_score"]
    lines = [
        f"# Benchmark `{suite['name']}`{' (dry run)' if results['dry_run'] else ''}",
        "",
        f"{suite['description']}".strip(),
        "",
        f"Budget {suite['budget_nfe']:,} NFE per run (rollout + training forwards) · seeds {suite['seeds']} · "
        f"held-out eval every {suite['eval_every']} updates · target score {fmt(target, '.2f')} · "
        f"commit {(git['commit'] or 'unknown')[:10]}{' (uncommitted changes)' if git['dirty'] else ''} · "
        f"{machine['device']}{' ' + machine['gpu'] if machine.get('gpu') else ''}, {machine['cpu_count']} CPUs, "
        f"torch {machine['torch_version']} · {machine['date']}",
        "",
        "| algorithm | final eval score (mean ± 95% CI) | per seed | base | NFE spent | NFE to target | "
        "wall-clock to target | images/s | peak mem (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, a in agg.items():
        score = f"{fmt(a['final_mean'])} ± {fmt(a['final_ci95'], '.3f', 'n/a')}" if a["n"] else "no finished run"
        if label == cmp["best"]:
            score = f"**{score}**"
        per_seed = ", ".join(f"{v:.3f}" for v in a["final_scores"])
        n = f" ({a['reached_target']}/{a['n']})" if target is not None and a["n"] else ""
        lines.append(
            f"| {label} | {score} | {per_seed} | {fmt(a['base_mean'])} | {fmt(a['nfe_mean'], ',.0f')} | "
            f"{fmt(a['nfe_to_target_mean'], ',.0f')}{n} | {_seconds(a['wall_s_to_target_mean'])}{n} | "
            f"{fmt(a['images_per_s_mean'], '.1f')} | {fmt(a['peak_mem_mb_max'], ',.0f')} |")
    failed = [r for r in results["runs"] if r["status"] != "finished"]
    lines += ["", f"**Noise:** {cmp['verdict']}", ""]
    if failed:
        names = ", ".join("{label} seed {seed} ({status})".format(**r) for r in failed)
        lines += [f"Not finished: {names}.", ""]
    lines += [
        "CI: Student t interval over seeds, mean ± t(0.975, n−1)·s/√n. NFE to target / wall-clock to target: mean over "
        "the seeds that reached it (count in parentheses), first eval point at or above the target. "
        "Wall-clock counts training only, not evaluation.",
        "",
    ]
    return "\n".join(lines)
