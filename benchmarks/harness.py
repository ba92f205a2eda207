"""`genrl bench SUITE`: every (algorithm, seed) of a suite under one NFE budget, then results, table, plots.

    from genrl.benchmarks.harness import run_suite
    results = run_suite("smoke", "bench_out/smoke")   # dict, also OUT/results.json

OUT/runs/{label}__{seed} is an ordinary genrl run directory (config.yaml,
metrics.jsonl, eval/, checkpoints/, summary.json). Calling run_suite again with
the same OUT is how a suite resumes: a run with summary.json is kept, a run with
a checkpoint continues from it, a run that stopped before its first checkpoint
starts over (genrl.rundir clears only the files it recorded writing; a folder
holding anything else is refused, never deleted). A run directory made with a
different config is an error, never silently mixed into the table.
OUT/results.json and OUT/table.md are rewritten after every run, so a suite
running in the background can be read while it runs.

Ctrl-C (SIGINT) and SIGTERM stop a suite cleanly: the run in flight finishes its
update, checkpoints and the suite exits; the same command then resumes it.

With jobs=1 the runs execute in this process, one after the other (the tiny model
loads in a second, and the trainer resets every random stream from the seed).
Peak memory is reset between runs: CUDA's peak counter, and on Linux the
process's resident high-water mark (/proc/self/clear_refs), which the trainer
reads. With jobs=N, N runs execute side by side, each in its own fresh process
with 1/N of this process's torch threads: on a CPU machine, two one-thread runs
get more from two cores than one run with two threads of small matrix products.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from pathlib import Path

import yaml

from genrl import dirlock
from genrl.benchmarks import report
from genrl.benchmarks.suite import RunPlan, load_suite, plan_runs
from genrl.config import ConfigError
from genrl.distributed import Dist

REPO = Path(__file__).resolve().parent.parent


def run_suite(suite: str | Path, out: str | Path | None = None, dry_run: bool = False,
              overrides: list[str] | tuple = (), jobs: int = 1, imports: list[str] | tuple = ()) -> dict:
    """Run (or resume) a suite into OUT; write results.json, table.md and the PNG plots; return the results.
    `imports`: modules of your own algorithms etc. (genrl.plugins), added to every run's `imports:`."""
    spec = load_suite(suite)
    out = Path(out) if out else Path("bench_out") / (spec.name + ("-dry-run" if dry_run else ""))
    plans = plan_runs(spec, dry_run, list(overrides), out, list(imports))
    # Under `accelerate launch` (genrl bench --num-processes N) every process runs every run together;
    # only the main process prints and writes the suite's files.
    global _MAIN
    dist = Dist(plans[0].cfg.device)
    _MAIN = dist.is_main
    if not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"--jobs={jobs!r} is not allowed: expected a number of runs side by side >= 1")
    if jobs > 1 and dist.world > 1:
        raise ConfigError("--jobs runs whole runs side by side, --num-processes splits each run: use one of them")
    # One suite at a time in OUT: a second `genrl bench` on it is refused in one line naming the first's PID
    # (the main process holds the lock; the kernel drops it however the process ends).
    with dirlock.hold(out, "bench output directory") if dist.is_main else contextlib.nullcontext():
        return _run_suite_in(spec, out, plans, dist, dry_run, list(overrides), jobs)


def _run_suite_in(spec, out: Path, plans: list[RunPlan], dist: Dist, dry_run: bool, overrides: list[str],
                  jobs: int) -> dict:
    """run_suite once its inputs are checked and OUT is this process's."""
    if dist.is_main:
        _check_run_folders(plans)
    out.mkdir(parents=True, exist_ok=True)
    _say(f"suite {spec.name}: {len(plans)} runs ({len(spec.algorithms)} algorithms x {len(spec.seeds)} seeds), "
         f"{spec.budget_nfe:,} NFE each{' [dry run: 1 update each]' if dry_run else ''}"
         f"{f', {jobs} at a time' if jobs > 1 else ''} -> {out}")
    results = {
        "suite": spec.settings(),
        "dry_run": dry_run,
        "cli_overrides": list(overrides),
        "git": report.git_commit(REPO),
        "machine": report.machine_info(plans[0].cfg.device),
        "jobs": jobs,
        "planned_runs": len(plans),
        "complete": False,
        "suite_wall_s": None,
        "runs": [None] * len(plans),
    }
    started, spent = time.perf_counter(), []

    def record(i: int, status: str, elapsed: float | None) -> None:
        """Fill in run i and rewrite the partial report (main process only)."""
        plan, head = plans[i], _head(i, plans)
        run_dir = Path(plan.cfg.run_dir)
        entry = {"label": plan.label, "algorithm": plan.algorithm, "seed": plan.seed, "run_dir": str(run_dir),
                 "elapsed_s": elapsed}
        if (run_dir / "summary.json").exists():
            entry |= {"status": "finished"} | report.read_run(run_dir, spec.target_score)
            spent.extend([_run_cost(elapsed, entry["wall_s"])] if elapsed is not None else [])
            left = sum(r is None for r in results["runs"]) - 1
            eta = f", about {_duration(left * sum(spent) / len(spent) / jobs)} left" if spent and left > 0 else ""
            _say(f"{head}: final {entry['final_score']:.3f} (base {report.fmt(entry['base_score'])}), "
                 f"{entry['nfe']:,} NFE, {entry['wall_s']:.0f} s training{eta}")
        else:
            entry |= {"status": status}
        results["runs"][i] = entry
        if dist.is_main:
            try:
                _write(results, out, final=False)
            except Exception as err:  # a report problem must not stop hours of runs; the final report raises it
                _say(f"warning: could not write the partial report ({type(err).__name__}: {err})")

    try:
        with _sigterm_stops_like_ctrl_c():
            if jobs == 1:
                for i, plan in enumerate(plans):
                    t0 = time.perf_counter()
                    try:
                        status = _run_one(plan, Path(plan.cfg.run_dir), _head(i, plans), dist)
                    except KeyboardInterrupt:
                        record(i, "interrupted", None)
                        raise
                    record(i, status, round(time.perf_counter() - t0, 1) if status == "ran" else None)
            else:
                _run_side_by_side(plans, jobs, record)
    except KeyboardInterrupt:
        _say(f"suite {spec.name} interrupted; partial results in {out / 'table.md'}; "
             "run the same command again to resume")
        raise

    results["runs"] = [r for r in results["runs"] if r is not None]
    results["complete"] = True
    results["suite_wall_s"] = round(time.perf_counter() - started, 1)
    _check_equal_budgets(results["runs"], spec.budget_nfe, dry_run)
    if not dist.is_main:
        return report.summarise(results)
    _write(results, out, final=True)
    _say("\n" + (out / "table.md").read_text() + f"\nwrote {out / 'results.json'}, {out / 'table.md'}, "
         f"{out}/*.png (suite {_duration(results['suite_wall_s'])})")
    return results


def _write(results: dict, out: Path, final: bool) -> None:
    """The report of the runs recorded so far; plots only at the end (they take a second each)."""
    partial = dict(results, runs=[r for r in results["runs"] if r is not None])
    report.write(report.summarise(partial), out, with_plots=final)
    results.update(aggregate=partial["aggregate"], comparison=partial["comparison"])


def _run_cost(elapsed: float, wall_s: float) -> float:
    """Seconds a whole run takes, for the estimate of the time left. A run resumed halfway spent only its second
    half in this invocation, so its elapsed time is short; its training wall-clock (wall_s, summed over every
    invocation, evaluations excluded) is then the better measure of a whole run."""
    return max(elapsed, wall_s)


def _head(i: int, plans: list[RunPlan]) -> str:
    return f"[{i + 1}/{len(plans)}] {plans[i].label} seed {plans[i].seed}"


def _run_one(plan: RunPlan, run_dir: Path, head: str, dist: Dist) -> str:
    """'done' (kept), 'ran', or 'failed: …'; a Ctrl-C stops the whole suite after the run has checkpointed."""
    from genrl.stopping import Interrupted
    from genrl.trainer import Trainer, TrainingStopped

    if _kept_or_checked(plan, head):
        return "done"
    # An attempt that died before its first checkpoint is the trainer's to restart (genrl.rundir): it clears only
    # the outputs that attempt recorded writing, and refuses a folder holding anything else, which stays untouched.
    resume = _has_checkpoint(run_dir)
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


# ------------------------------------------------------------------------------------- runs side by side


def _run_side_by_side(plans: list[RunPlan], jobs: int, record) -> None:
    """At most `jobs` runs at once, each in a fresh process. On SIGINT/SIGTERM no new run starts and the running
    ones checkpoint and stop (they get the signal too), then KeyboardInterrupt; a run that raises stops the
    suite the same way, then its error is raised, as it would be one by one."""
    import torch

    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited torch threads or state
    threads = max(1, torch.get_num_threads() // jobs)  # this process's threads (OMP_NUM_THREADS, else the cores)
    waiting, running, stop, errors = list(range(len(plans))), {}, [], []

    def interrupt_runs(signum=None, frame=None):
        stop.append(signum)
        for child, _, _ in running.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGINT)  # a `kill` of this process alone reaches the runs too

    previous = {sig: signal.signal(sig, interrupt_runs) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while waiting or running:
            while waiting and len(running) < jobs and not stop:
                i = waiting.pop(0)
                if _kept_or_checked(plans[i], _head(i, plans)):  # a wrong config is refused here, before any run
                    record(i, "done", None)
                    continue
                receive, send = context.Pipe(duplex=False)
                child = context.Process(target=_child, args=(plans[i], _head(i, plans), threads, send))
                child.start()
                send.close()
                running[i] = (child, receive, time.perf_counter())
            if not running:
                break
            multiprocessing.connection.wait([c.sentinel for c, _, _ in running.values()])
            for i in [i for i, (c, _, _) in running.items() if not c.is_alive()]:
                child, receive, t0 = running.pop(i)
                status = _received(receive) or (
                    "interrupted" if stop else f"error: its process exited with code {child.exitcode}")
                if status.startswith("error: "):
                    errors.append(f"{_head(i, plans)}: {status[len('error: '):]}")
                    status = "failed: " + status[len("error: "):]
                    interrupt_runs()
                record(i, status, round(time.perf_counter() - t0, 1) if status == "ran" else None)
    except BaseException:  # e.g. the next run's directory holds another config: stop the running ones first
        interrupt_runs()
        for child, _, _ in running.values():
            child.join()
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if errors:
        raise RuntimeError("; ".join(errors) + " (the other runs checkpointed; the same command resumes)")
    if stop:
        raise KeyboardInterrupt


def _received(receive) -> str | None:
    """The status a child sent, or None when it ended without sending one (e.g. stopped by Ctrl-C while it was
    still starting: its end of the pipe is then closed, which `poll` reports as readable)."""
    try:
        return receive.recv() if receive.poll() else None
    except EOFError:
        return None


def _kept_or_checked(plan: RunPlan, head: str) -> bool:
    """True for a finished run (kept). A run directory with a summary or a checkpoint made under another config
    is refused (ConfigError) before anything runs."""
    run_dir = Path(plan.cfg.run_dir)
    finished = (run_dir / "summary.json").exists()
    if finished or _has_checkpoint(run_dir):
        _check_same_config(plan, run_dir)
    if finished:
        _say(f"{head}: already finished, kept ({run_dir})")
    return finished


def _check_run_folders(plans: list[RunPlan]) -> None:
    """Before the suite writes anything, what a run would refuse only when its turn came, hours later: a
    finished or checkpointed run made under another config, and a run folder that the trainer may not start in
    (files genrl did not record writing, another process holding it: genrl.rundir.plan_start)."""
    from genrl import rundir

    for plan in plans:
        run_dir = Path(plan.cfg.run_dir)
        if (run_dir / "summary.json").exists() or _has_checkpoint(run_dir):
            _check_same_config(plan, run_dir)
        elif run_dir.exists():
            rundir.plan_start(run_dir, resumed=False)


def _has_checkpoint(run_dir: Path) -> bool:
    """Any checkpoint directory, even when `latest` is unreadable: the trainer falls back to it."""
    from genrl import checkpoint

    return bool(checkpoint.candidates(run_dir))


def _child(plan: RunPlan, head: str, threads: int, send) -> None:
    """One run in its own process; sends back its status: 'ran', 'interrupted', 'failed: …' (training stopped
    itself, as one by one) or 'error: …' (an exception, which stops the suite)."""
    import traceback

    import torch

    from genrl import plugins

    torch.set_num_threads(threads)
    plugins.load(plan.cfg.imports)  # a fresh interpreter: register the run's own algorithm, grouping ... again
    plan.cfg.log.progress = False  # bars of several processes would overwrite each other
    try:
        status = _run_one(plan, Path(plan.cfg.run_dir), head, Dist(plan.cfg.device))
    except KeyboardInterrupt:
        status = "interrupted"
    except Exception as err:
        traceback.print_exc()
        status = f"error: {type(err).__name__}: {err}"
    send.send(status)
    send.close()


@contextlib.contextmanager
def _sigterm_stops_like_ctrl_c():
    """SIGTERM (`kill PID`, a scheduler's stop) becomes SIGINT: the run in flight checkpoints before the suite exits."""
    try:
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: signal.raise_signal(signal.SIGINT))
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


_MAIN = True  # False in the other processes of a multi-process suite


def _say(text: str) -> None:
    """Print between tqdm bars without breaking them (main process only); flushed, so that the log of a suite
    running in the background (`nohup genrl bench … > log &`) shows each line when it happens."""
    import sys

    from tqdm.auto import tqdm

    if _MAIN:
        tqdm.write(text)
        sys.stdout.flush()
