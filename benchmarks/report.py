"""From run directories to results.json and table.md.

Everything is read back from what the trainer wrote (summary.json, eval/base.json,
metrics.jsonl), so a report can be rebuilt from a results folder without
rerunning anything, and a resumed run reports exactly like an uninterrupted one. Free
baselines (the base model with guidance) come from OUT/baselines/*.json (genrl.benchmarks.baselines).
This module computes the statistics and verdicts; genrl.benchmarks.tables renders them as table.md.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np

from genrl.benchmarks import baselines, stats
# fmt and table_markdown are also this module's names (the harness calls report.fmt)
from genrl.benchmarks.tables import ci, fmt, mean_or_none, signed, table_markdown


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
        # ShapeWorld's reward-hacking guard (genrl.shapeworld.quality): background texture, clean renders 0
        "base_texture_bg": base.get("texture_bg") if base else None, "final_texture_bg": final.get("texture_bg"),
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
    """Per label: the final scores over finished seeds (mean, sd, bootstrap 95% interval, IQM) and the costs."""
    out = {}
    for label in labels:
        done = [r for r in runs if r["label"] == label and r["status"] == "finished"]
        scores = [r["final_score"] for r in done]
        final = stats.describe(scores)
        hit = [r for r in done if r["nfe_to_target"] is not None]
        out[label] = {
            "n": len(done), "seeds": [r["seed"] for r in done], "final_scores": scores,
            "final_mean": final["mean"], "final_sd": final["sd"], "final_ci95": final["ci95"],
            "final_iqm": final["iqm"], "final_iqm_ci95": final["iqm_ci95"],
            "base_mean": mean_or_none([r["base_score"] for r in done if r["base_score"] is not None]),
            **{f"{k}_mean": mean_or_none([r[k] for r in done if r.get(k) is not None]) for k in ("base_texture_bg", "final_texture_bg")},
            "updates_mean": mean_or_none([r["updates"] for r in done]),
            "nfe_mean": mean_or_none([r["nfe"] for r in done]), "wall_s_mean": mean_or_none([r["wall_s"] for r in done]),
            "reached_target": len(hit),
            "nfe_to_target_mean": mean_or_none([r["nfe_to_target"] for r in hit]),
            "wall_s_to_target_mean": mean_or_none([r["wall_s_to_target"] for r in hit]),
            "images_per_s_mean": mean_or_none([r["images_per_s"] for r in done if r["images_per_s"]]),
            "peak_mem_mb_max": max((r["peak_mem_mb"] for r in done if r["peak_mem_mb"] is not None), default=None),
        }
    return out


def paired_against(agg: dict, anchor: str, others: list[str], role: str = "best") -> list[dict]:
    """Each of `others` against `anchor`, paired by seed: the mean difference (other − anchor) with its bootstrap
    interval, the paired t-test (p-values Holm-corrected over these comparisons), the minimum detectable difference.
    `role` names the anchor's key in each pair ("best", or "reference" for a suite's reference arm)."""
    pairs = []
    for other in others:
        a, b = (dict(zip(agg[k]["seeds"], agg[k]["final_scores"])) for k in (anchor, other))
        seeds = [s for s in a if s in b]  # a seed one of them has not finished cannot be paired
        diff = stats.paired_difference([b[s] for s in seeds], [a[s] for s in seeds]) or {}  # other − anchor
        one = b[seeds[0]] - a[seeds[0]] if seeds else None  # a single shared seed: a difference, no test
        pairs.append({role: anchor, "other": other, "seeds": seeds, "n": len(seeds), "diff": diff.get("mean", one),
                      **{k: diff.get(k) for k in ("sd", "ci95", "t_ci95", "t", "p", "mdd", "seeds_needed")}})
    tested = [p for p in pairs if p["p"] is not None]
    for p, adjusted in zip(tested, stats.holm([p["p"] for p in tested])):
        p["p_holm"] = adjusted
    for p in pairs:
        p.setdefault("p_holm", None)
        p["beyond_noise"] = p["p_holm"] is not None and p["p_holm"] < stats.ALPHA
    return pairs


def compare(agg: dict) -> dict:
    """The best mean against every other label, paired by seed (`paired_against`)."""
    ranked = sorted((k for k in agg if agg[k]["n"]), key=lambda k: agg[k]["final_mean"], reverse=True)
    method = {"pairing": "by seed", "interval": f"percentile bootstrap, {stats.RESAMPLES} resamples, {stats.LEVEL:.0%}",
              "test": "paired t-test (scipy.stats.ttest_rel), two-sided, Holm-corrected over the comparisons",
              "alpha": stats.ALPHA, "mdd_power": stats.POWER, "iqm_min_seeds": stats.IQM_MIN_SEEDS}
    if not ranked:
        return {"best": None, "pairs": [], "method": method, "verdict": "No run finished; nothing to compare."}
    best = ranked[0]
    pairs = paired_against(agg, best, ranked[1:])
    return {"best": best, "pairs": pairs, "method": method, "verdict": verdict(best, pairs)}


def verdict(best: str, pairs: list[dict]) -> str:
    """Plain words: which gaps to the best are beyond noise, and how large a gap the seeds could have shown."""
    if not pairs:
        return f"Only {best} finished; nothing to compare."
    if any(p["p"] is None for p in pairs):
        return (f"{best} has the best mean, but some algorithm shares fewer than two finished seeds with it, "
                "so no difference can be told from noise.")
    noisy = [p for p in pairs if not p["beyond_noise"]]
    detail = "; ".join(f"vs {p['other']}: {signed(p['diff'])} {ci(p['ci95'], '+.3f')}, p = {p['p_holm']:.2g}"
                       for p in pairs)
    if not noisy:
        return f"Beyond noise: {best} is ahead of every other algorithm ({detail})."
    n = sorted({p["n"] for p in noisy})
    seeds = f"{n[0]}" if len(n) == 1 else f"{n[0]}-{n[-1]}"
    size = _mdd_range(noisy)
    power = (f"with {seeds} seeds a true gap of {size} (the minimum detectable difference, from the observed "
             f"spread of the paired differences) would have been found {stats.POWER:.0%} of the time; "
             "smaller gaps could hide in the noise")
    if len(noisy) == len(pairs):
        return f"Within noise: {best} has the best mean, but no difference is significant ({detail}); {power}."
    ahead = ", ".join(p["other"] for p in pairs if p["beyond_noise"])
    return (f"Partly within noise: {best} is ahead of {ahead} beyond noise, but not of "
            f"{', '.join(p['other'] for p in noisy)} ({detail}); {power}.")


def _mdd_range(pairs: list[dict]) -> str:
    """The smallest to the largest minimum detectable difference of these pairs, e.g. "0.056 to 0.102"."""
    mdds = sorted(p["mdd"] for p in pairs)
    return f"{mdds[0]:.3f}" if mdds[0] == mdds[-1] else f"{mdds[0]:.3f} to {mdds[-1]:.3f}"


def first_crossing(curves: list[list[dict]], score: float) -> float | None:
    """The NFE where the mean over seeds of the eval curves first reaches `score`; None if it never gets there.

    Each seed's curve is linear between its eval points, as plotted, so their mean is linear between the union of
    the eval points (up to the shortest seed's end) and the crossing is found exactly. (On the wall-clock axis the
    seeds end at different times, so a mean there would lose the slower seeds' last points: see `reference_costs`.)
    """
    end = min(c[-1]["nfe"] for c in curves)
    grid = np.unique([p["nfe"] for c in curves for p in c if p["nfe"] <= end])
    mean = np.mean([np.interp(grid, [p["nfe"] for p in c], [p["score"] for p in c]) for c in curves], axis=0)
    above = np.nonzero(mean >= score - 1e-9)[0]  # the tolerance: the reference's own mean, summed in another order
    if not above.size:
        return None
    i = above[0]
    if i == 0 or mean[i] <= score:
        return float(grid[i])
    x0, x1, y0, y1 = grid[i - 1], grid[i], mean[i - 1], mean[i]
    return float(x0 + (score - y0) * (x1 - x0) / (y1 - y0))


def reference_costs(runs: list[dict], agg: dict, reference: str | None) -> dict | None:
    """What each algorithm spends to reach the reference algorithm's final mean score: the NFE where its seed-mean
    curve first reaches it, the training wall-clock its seeds took to spend that many NFEs (mean over seeds), the
    ratio to the reference's own NFE (> 1: fewer than the reference needed), and how many seeds' own curves reach
    it at some eval point."""
    if reference is None or not agg.get(reference, {}).get("n"):
        return None
    score = agg[reference]["final_mean"]
    costs = {}
    for label in agg:
        curves = [r["curve"] for r in runs if r["label"] == label and r["status"] == "finished" and r["curve"]]
        if curves:
            nfe = first_crossing(curves, score)
            wall = None if nfe is None else float(np.mean(
                [np.interp(nfe, [p["nfe"] for p in c], [p["wall_s"] for p in c]) for c in curves]))
            costs[label] = {"nfe": nfe, "wall_s": wall,
                            "seeds_reaching": sum(any(p["score"] >= score for p in c) for c in curves),
                            "n": len(curves)}
    own = costs[reference]["nfe"]
    for cost in costs.values():
        cost["nfe_ratio"] = own / cost["nfe"] if own and cost["nfe"] else None
    # The suite's question is often "better than the reference?" (chunks against step level), not "behind the
    # best?": every other arm paired against the reference, Holm-corrected over these comparisons.
    pairs = paired_against(agg, reference, [k for k in agg if k != reference and agg[k]["n"]], role="reference")
    return {"label": reference, "score": score, "algorithms": costs, "pairs": pairs,
            "verdict": reference_verdict(reference, pairs)}


def reference_verdict(reference: str, pairs: list[dict]) -> str:
    """Plain words: which arms differ from the reference beyond noise, in which direction, and the test's power."""
    if not pairs:
        return f"Only {reference} finished; nothing to compare with it."
    if any(p["p"] is None for p in pairs):
        return f"Some arm shares fewer than two finished seeds with {reference}, so no difference can be tested."
    above = [p["other"] for p in pairs if p["beyond_noise"] and p["diff"] > 0]
    below = [p["other"] for p in pairs if p["beyond_noise"] and p["diff"] < 0]
    noisy = [p for p in pairs if not p["beyond_noise"]]
    parts = ([f"above {reference} beyond noise: {', '.join(above)}"] if above else []) + (
        [f"below {reference} beyond noise: {', '.join(below)}"] if below else [])
    if noisy:
        parts.append(f"within noise of {reference}: {', '.join(p['other'] for p in noisy)} (gaps of {_mdd_range(noisy)} "
                     f"would have been found {stats.POWER:.0%} of the time)")
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


def summarise(results: dict) -> dict:
    """Fill in `aggregate`, `comparison` and `reference` from `runs` (the per-run records are the source of truth)."""
    results["aggregate"] = aggregate(results["runs"], list(results["suite"]["algorithms"]))
    results["comparison"] = compare(results["aggregate"])
    results["reference"] = reference_costs(results["runs"], results["aggregate"], results["suite"].get("reference"))
    return results


def write(results: dict, out: Path, with_plots: bool = True) -> None:
    """OUT/results.json and OUT/table.md (each replaced whole, so a reader never sees half a file), and the plots."""
    from genrl.benchmarks import plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results["baselines"] = baselines.collect(out)  # OUT/baselines/*.json: the base model with guidance, untrained
    for name, text in (("results.json", json.dumps(finite(results), indent=2)), ("table.md", table_markdown(results))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)
    if with_plots:
        plots.plot_curves(results, out)
        plots.plot_final_scores(results, out)


def rebuild(out: str | Path) -> dict:
    """Recompute the statistics, table.md and plots of a results folder from its results.json alone."""
    path = Path(out) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} not found: give a folder written by `genrl bench`")
    results = summarise(json.loads(path.read_text()))
    write(results, Path(out))
    return results


def finite(value):
    """NaN/inf (an undefined t statistic, an empty mean) become null: results.json stays strict JSON."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value) if isinstance(value, Path) else value


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


def main(argv: list[str] | None = None) -> int:
    """python -m genrl.benchmarks.report DIR [DIR ...]: rebuild each folder's table.md and plots from results.json."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m genrl.benchmarks.report",
                                     description="Rebuild each folder's statistics, table.md and plots "
                                                 "from its results.json (a folder written by `genrl bench`).")
    parser.add_argument("folders", nargs="+", metavar="DIR")
    for folder in parser.parse_args(argv).folders:
        try:
            results = rebuild(folder)
        except FileNotFoundError as err:  # one line, as the CLI prints user errors
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"{folder}: {results['comparison']['verdict']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
