"""`genrl bench SUITE`: every (algorithm, seed) of a suite under one NFE budget, then results, table, plots.

    from genrl.benchmarks.harness import run_suite
    results = run_suite("smoke", "bench_out/smoke")   # dict, also OUT/results.json

OUT/runs/{label}__{seed} is an ordinary genrl run directory (config.yaml,
metrics.jsonl, eval/, checkpoints/, summary.json). Calling run_suite again with
the same OUT is how a suite resumes: a run with summary.json is kept, a run with
a checkpoint continues from it, anything else starts over. A run directory made
with a different config is an error, never silently mixed into the table.

Runs execute in this process, one after the other (the tiny model loads in a
second, and the trainer resets every random stream from the seed). Peak memory is
reset between runs: CUDA's peak counter, and on Linux the process's resident
high-water mark (/proc/self/clear_refs), which the trainer reads.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import yaml

from genrl.benchmarks import plots, report
from genrl.benchmarks.suite import RunPlan, load_suite, plan_runs
from genrl.config import ConfigError
from genrl.distributed import Dist

REPO = Path(__file__).resolve().parent.parent


def run_suite(suite: str | Path, out: str | Path | None = None, dry_run: bool = False,
              overrides: list[str] | tuple = ()) -> dict:
    """Run (or resume) a suite into OUT; write results.json, table.md and the PNG curves; return the results."""
    spec = load_suite(suite)
    out = Path(out) if out else Path("bench_out") / (spec.name + ("-dry-run" if dry_run else ""))
    plans = plan_runs(spec, dry_run, list(overrides), out)
    # Under `accelerate launch` (genrl bench --num-processes N) every process runs every run together;
    # only the main process prints and writes the suite's files.
    global _MAIN
    dist = Dist(plans[0].cfg.device)
    _MAIN = dist.is_main
    out.mkdir(parents=True, exist_ok=True)
    _say(f"suite {spec.name}: {len(plans)} runs ({len(spec.algorithms)} algorithms x {len(spec.seeds)} seeds), "
         f"{spec.budget_nfe:,} NFE each{' [dry run: 1 update each]' if dry_run else ''} -> {out}")
    started, spent = time.perf_counter(), []
    runs = []
    for i, plan in enumerate(plans, 1):
        run_dir = Path(plan.cfg.run_dir)
        head = f"[{i}/{len(plans)}] {plan.label} seed {plan.seed}"
        t0 = time.perf_counter()
        status = _run_one(plan, run_dir, head, dist)
        elapsed = round(time.perf_counter() - t0, 1) if status == "ran" else None  # with evaluation and loading
        spent += [elapsed] if elapsed is not None else []
        entry = {"label": plan.label, "algorithm": plan.algorithm, "seed": plan.seed, "run_dir": str(run_dir),
                 "elapsed_s": elapsed}
        if (run_dir / "summary.json").exists():
            entry |= {"status": "finished"} | report.read_run(run_dir, spec.target_score)
            left = len(plans) - i
            eta = f", about {_duration(left * sum(spent) / len(spent))} left" if spent and left else ""
            _say(f"{head}: final {entry['final_score']:.3f} (base {report.fmt(entry['base_score'])}), "
                 f"{entry['nfe']:,} NFE, {entry['wall_s']:.0f} s training{eta}")
        else:
            entry |= {"status": status}
        runs.append(entry)

    results = {
        "suite": spec.settings(),
        "dry_run": dry_run,
        "cli_overrides": list(overrides),
        "git": report.git_commit(REPO),
        "machine": report.machine_info(plans[0].cfg.device),
        "suite_wall_s": round(time.perf_counter() - started, 1),
        "runs": runs,
    }
    labels = list(spec.algorithms)
    results["aggregate"] = report.aggregate(runs, labels)
    results["comparison"] = report.compare(results["aggregate"])
    _check_equal_budgets(runs, spec.budget_nfe, dry_run)
    if not dist.is_main:
        return results
    (out / "results.json").write_text(json.dumps(_finite(results), indent=2))
    table = report.table_markdown(results)
    (out / "table.md").write_text(table)
    plots.plot_curves(results, out)
    _say("\n" + table + f"\nwrote {out / 'results.json'}, {out / 'table.md'}, {out}/score_vs_*.png "
         f"(suite {_duration(results['suite_wall_s'])})")
    return results


def _run_one(plan: RunPlan, run_dir: Path, head: str, dist: Dist) -> str:
    """'done' (kept), 'ran', or 'failed: …'; a Ctrl-C stops the whole suite after the run has checkpointed."""
    from genrl import checkpoint
    from genrl.stopping import Interrupted
    from genrl.trainer import Trainer, TrainingStopped

    if (run_dir / "summary.json").exists():
        _check_same_config(plan, run_dir)
        _say(f"{head}: already finished, kept ({run_dir})")
        return "done"
    resume = bool(checkpoint.candidates(run_dir))  # even if `latest` is unreadable: the trainer falls back
    if resume:
        _check_same_config(plan, run_dir)
    elif run_dir.exists() and dist.is_main:
        shutil.rmtree(run_dir)  # an attempt that died before its first checkpoint: its metrics would be stale
    dist.barrier()
    _reset_peak_memory(plan.cfg.device)
    trainer = Trainer(plan.cfg, run_dir=run_dir)
    if resume:
        trainer.load_checkpoint()
    _say(f"{head}: {'resuming at update ' + str(trainer.progress.update) if resume else 'training'} -> {run_dir}")
    try:
        summary = trainer.run()
    except TrainingStopped as err:
        _say(f"{head}: stopped: {err}")
        return f"failed: {err}"
    if "interrupted_at" in summary:
        _say(f"{head}: interrupted at update {summary['interrupted_at']}; run the same command again to resume")
        raise Interrupted(summary["signal"]) if summary.get("signal") else KeyboardInterrupt
    return "ran"


def _check_same_config(plan: RunPlan, run_dir: Path) -> None:
    """Refuse to reuse a run made under a different config (another budget, another suite, a dry run)."""
    path = run_dir / "config.yaml"
    if not path.exists():
        return
    ignore = {"run_dir", "log.progress", "device"}  # the trainer may pin "cuda" to "cuda:0"
    old = _flatten(yaml.safe_load(path.read_text()) or {})
    new = _flatten(yaml.safe_load(yaml.safe_dump(plan.cfg.to_dict(), sort_keys=False)))
    differ = sorted(k for k in set(old) | set(new) if k not in ignore and old.get(k) != new.get(k))
    if differ:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differ[:5])
        raise ConfigError(f"{run_dir} was made with a different config ({shown}); use another --out, "
                          f"or delete that run directory to redo it")


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _check_equal_budgets(runs: list[dict], budget: int, dry_run: bool) -> None:
    """Every finished run must have spent the budget and at most one update more; say so if not."""
    if dry_run:
        return
    for run in runs:
        if run["status"] == "finished" and run["nfe"] < budget:
            _say(f"warning: {run['label']} seed {run['seed']} stopped at {run['nfe']:,} NFE, below the budget "
                 f"{budget:,} (train.updates cap reached?); its score is not comparable")


def _reset_peak_memory(device: str) -> None:
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(device)
    try:  # Linux: "5" resets the resident-set high-water mark that getrusage reports
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _finite(value):
    """NaN/inf (an undefined t statistic, an empty mean) become null: results.json stays strict JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value) if isinstance(value, Path) else value


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


_MAIN = True  # False in the other processes of a multi-process suite


def _say(text: str) -> None:
    """Print between tqdm bars without breaking them (main process only)."""
    from tqdm.auto import tqdm

    if _MAIN:
        tqdm.write(text)
