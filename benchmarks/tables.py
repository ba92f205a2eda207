"""table.md: the markdown of a suite's results (genrl.benchmarks.report computes them, this renders them).

A pure function of results.json's content, so a results folder's table can be rebuilt from it alone. The number
formatting here (`fmt`, `ci`, `signed`) is shared with the report's verdicts, so a number reads the same in the
verdict and in the table.
"""

from __future__ import annotations

import math

from genrl.benchmarks import baselines, stats


def mean_or_none(values: list) -> float | None:
    """The mean; None for no values (an algorithm none of whose seeds has the number)."""
    return sum(values) / len(values) if values else None


def fmt(value, spec: str = ".3f", missing: str = "–") -> str:
    """A number in `spec`; `missing` for None or NaN (a mean over no seeds, an untestable pair)."""
    return missing if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def signed(value: float | None) -> str:
    """'+0.012': a difference, with its sign."""
    return fmt(value, "+.3f")


def _seconds(s: float | None) -> str:
    if s is None:
        return "–"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def table_markdown(results: dict) -> str:
    """table.md of a summarised results dict (report.summarise): the scores with their noise, the costs, the
    reference arm, the free baselines, the runs that did not finish, and how to read the statistics."""
    suite, agg, cmp = results["suite"], results["aggregate"], results["comparison"]
    git, machine = results["git"], results["machine"]
    target = suite["target_score"]
    pairs = {p["other"]: p for p in cmp["pairs"]}
    with_iqm = any(a["final_iqm"] is not None for a in agg.values())
    lines = [
        f"# Benchmark `{suite['name']}`{' (dry run)' if results['dry_run'] else ''}{_progress(results)}",
        "",
        f"{suite['description']}".strip(),
        "",
        f"Budget {suite['budget_nfe']:,} NFE per run (rollout + training forwards) · seeds {suite['seeds']} · "
        f"held-out eval {_cadence(suite['eval_every'])} · target score {fmt(target, '.2f')} · "
        f"commit {(git['commit'] or 'unknown')[:10]}{' (uncommitted changes)' if git['dirty'] else ''} · "
        f"{machine['device']}{' ' + machine['gpu'] if machine.get('gpu') else ''}, {machine['cpu_count']} CPUs, "
        f"torch {machine['torch_version']} · {machine['date']}",
        "",
        "| algorithm | seeds | final eval score, mean [95% CI] |" + (" IQM [95% CI] |" if with_iqm else "")
        + " per seed | Δ vs best, paired [95% CI] | p (paired t, Holm) | MDD (80% power) | seeds to detect Δ |",
        "|---|---|---|" + ("---|" if with_iqm else "") + "---|---|---|---|---|",
    ]
    for label, a in agg.items():
        score = f"{fmt(a['final_mean'])} {ci(a['final_ci95'])}" if a["n"] else "no finished run"
        name = f"**{label}**" if label == cmp["best"] else label
        if label == cmp["best"]:
            score = f"**{score}**"
        per_seed = ", ".join(f"{v:.3f}" for v in a["final_scores"])
        iqm = f" {fmt(a['final_iqm'])} {ci(a['final_iqm_ci95'])} |" if with_iqm and a["final_iqm"] is not None else (
            " – |" if with_iqm else "")
        p = pairs.get(label)
        if label == cmp["best"]:
            versus = " best | | | |"
        elif p is None:
            versus = " – | – | – | – |"
        else:
            needed = p["seeds_needed"] if p["seeds_needed"] is not None else ("> 1000" if p["p"] is not None else "–")
            versus = (f" {signed(p['diff'])} {ci(p['ci95'], '+.3f')} | {fmt(p['p_holm'], '.2g')} | "
                      f"{fmt(p['mdd'])} | {needed} |")
        lines.append(f"| {name} | {a['n']} | {score} |{iqm} {per_seed} |{versus}")
    lines += ["", f"**Noise:** {cmp['verdict']}", "",
              "| algorithm | base | texture bg, base → final | updates | NFE spent | NFE to target | "
              "wall-clock to target | images/s | peak mem (MiB) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for label, a in agg.items():
        n = f" ({a['reached_target']}/{a['n']})" if target is not None and a["n"] else ""
        lines.append(
            f"| {label} | {fmt(a['base_mean'])} | {_texture(a)} | {fmt(a.get('updates_mean'), '.0f')} | "
            f"{fmt(a['nfe_mean'], ',.0f')} | "
            f"{fmt(a['nfe_to_target_mean'], ',.0f')}{n} | {_seconds(a['wall_s_to_target_mean'])}{n} | "
            f"{fmt(a['images_per_s_mean'], '.1f')} | {fmt(a['peak_mem_mb_max'], ',.0f')} |")
    lines += _reference_table(results.get("reference"))
    lines += baselines.table_lines(results.get("baselines"), mean_or_none([a["base_mean"] for a in agg.values()
                                                                     if a["base_mean"] is not None]), fmt)
    failed = [r for r in results["runs"] if r["status"] != "finished"]
    lines.append("")
    if failed:
        names = ", ".join("{label} seed {seed} ({status})".format(**r) for r in failed)
        lines += [f"Not finished: {names}.", ""]
    lines += [
        "Statistics: scores are paired by seed. A seed fixes the prompt order and the rollout's random streams "
        "(the initial noises coincide between algorithms that agree on sharing them within a group), and every run "
        "is evaluated on the same prompts and noises. 95% CI: percentile bootstrap over seeds "
        f"({stats.RESAMPLES:,} resamples), expanded for few seeds (Hesterberg 2015) so that it matches a t interval "
        "on normal data; with 2–3 seeds it cannot reach past the seeds' own range. "
        + (f"IQM: interquartile mean, the mean of the middle half of the seeds (from {stats.IQM_MIN_SEEDS} seeds). "
           if with_iqm else "")
        + "Δ vs best: mean over seeds of (algorithm − best). p: paired t-test, Holm-corrected over the "
        f"comparisons with the best; beyond noise when p < {stats.ALPHA}. MDD: minimum detectable difference, the "
        f"true gap the paired t-test would find {stats.POWER:.0%} of the time at this many seeds, from the observed "
        "sd of the paired differences; seeds to detect Δ: how many seeds the observed gap would need for the same. "
        "NFE to target / wall-clock to target: mean over the seeds that reached it (count in parentheses), first "
        "eval point at or above the target. Wall-clock counts training only, not evaluation. Texture bg: ShapeWorld's "
        "reward-hacking guard, the mean absolute adjacent-pixel difference inside the background of the held-out "
        "images (flat renders: 0; docs/shapeworld.md, \"Reward hacking\").",
        "",
    ]
    return "\n".join(lines)


def _reference_table(ref: dict | None) -> list[str]:
    if not ref:
        return []
    lines = ["", f"**Cost to reach {ref['label']}'s final score ({ref['score']:.3f}, its mean over seeds):** where "
             "each algorithm's seed-mean eval curve first reaches it (linear between eval points); × = "
             f"{ref['label']}'s NFE / the algorithm's NFE (above 1: fewer model evaluations).", "",
             "| algorithm | NFE | × | wall-clock, training | seeds whose own curve reaches it | "
             f"Δ vs {ref['label']}, paired [95% CI] | p (paired t, Holm) | MDD (80% power) |",
             "|---|---|---|---|---|---|---|---|"]
    pairs = {p["other"]: p for p in ref.get("pairs", [])}
    for label, c in ref["algorithms"].items():
        never = "not reached within the budget"
        p = pairs.get(label)
        versus = ("reference | | |" if label == ref["label"] else " – | – | – |" if p is None else
                  f"{signed(p['diff'])} {ci(p['ci95'], '+.3f')} | {fmt(p['p_holm'], '.2g')} | {fmt(p['mdd'])} |")
        lines.append(f"| {label} | {fmt(c['nfe'], ',.0f', never)} | {fmt(c['nfe_ratio'], '.2f')} | "
                     f"{_seconds(c['wall_s']) if c['wall_s'] is not None else never} | {c['seeds_reaching']}/{c['n']} | "
                     f"{versus}")
    if ref.get("verdict"):
        lines += ["", f"**Against {ref['label']}:** {ref['verdict']} Its p-values are Holm-corrected over the "
                  f"comparisons with {ref['label']}, a family apart from the comparisons with the best."]
    return lines


def _texture(a: dict) -> str:
    """'0.0033 → 0.0232': mean background texture of the base and final evaluations (– off ShapeWorld)."""
    return f"{fmt(a.get('base_texture_bg_mean'), '.4f')} → {fmt(a.get('final_texture_bg_mean'), '.4f')}"


def _cadence(every: int) -> str:
    return f"every {every} updates" if every else "before and after training"


def _progress(results: dict) -> str:
    if results.get("complete", True):
        return ""
    done = sum(r["status"] in ("finished", "done") for r in results["runs"])
    return f" (in progress: {done} of {results['planned_runs']} runs finished)"


def ci(interval, spec: str = ".3f") -> str:
    """'[0.312, 0.401]': a confidence interval; '[n/a]' where there is none (fewer than two seeds)."""
    return f"[{format(interval[0], spec)}, {format(interval[1], spec)}]" if interval else "[n/a]"
