"""Torch threads per process: a share of the cores this process may use, said once, warned when oversubscribed.

Processes whose threads outnumber the cores slow each other far more than in proportion: torch's
OpenMP threads wait for one another at the end of every parallel region, so a thread that lost its
core stalls all of them. Two 2-thread jobs on 2 cores took 30-60 s per update of the shipped model
instead of 1.7 s. So each genrl process takes cores // processes threads (at most torch's own
default), unless the user says otherwise (`--threads N`, or OMP_NUM_THREADS), and a command that
starts work prints what it chose and warns when its processes, or other busy processes, would
need more cores than there are.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Mapping

from genrl.errors import ConfigError


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's or taskset's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


FIX = "give each process fewer threads (--threads N or OMP_NUM_THREADS=N) so that all of them fit the cores"


@dataclass(frozen=True)
class ThreadPlan:
    threads: int  # per process
    processes: int  # of this command, on this machine
    cores: int
    source: str  # what decided `threads`

    @property
    def oversubscribed(self) -> bool:
        return self.threads * self.processes > self.cores

    def line(self) -> str:
        who = f"{self.processes} processes x {self.threads}" if self.processes > 1 else f"{self.threads}"
        return (f"genrl: {who} torch thread{'s' if self.threads > 1 else ''} on {self.cores} cores ({self.source}; "
                "--threads N or OMP_NUM_THREADS=N to change)")

    def warning(self) -> str | None:
        """Why this command's threads will be slow (more of them than cores), or None."""
        if not self.oversubscribed:
            return None
        return (f"genrl: warning: {self.processes} process(es) x {self.threads} threads = {self.threads * self.processes} "
                f"threads on {self.cores} cores: threads waiting for a core stall the others, and updates can take "
                f"many times longer; {FIX}")

    def busy_note(self, load: float | None, busy_now: float | None = None) -> str | None:
        """A note when other processes already keep the cores busy (another job: the issue's two 2-thread runs
        on 2 cores, 30-60 s per update instead of 1.7 s), or None. The load average lags by a minute (a pip
        install that just ended still reads 1.0), so when `busy_now` (cores busy over the last instant) is known
        it must agree."""
        added = self.threads * self.processes
        if load is None or load < 1 or load + added <= self.cores + 0.5:
            return None
        if busy_now is not None and busy_now + added <= self.cores + 0.5:
            return None
        return (f"genrl: note: the machine is busy (1-minute load average {load:.1f} on {self.cores} cores) and this "
                f"command adds {added} thread{'s' if added != 1 else ''}: if another job is running, both can be many "
                f"times slower; {FIX}, or run one job at a time")


def plan(processes: int = 1, requested: int | None = None, environ: Mapping[str, str] | None = None) -> ThreadPlan:
    """Threads per process for `processes` processes: `requested` (--threads), else OMP_NUM_THREADS, else
    cores // processes, at most torch's own default (on one process: what torch would use anyway)."""
    import torch

    environ = os.environ if environ is None else environ
    cores = available_cores()
    if requested is not None:
        if requested < 1:
            raise ConfigError(f"--threads {requested} is not allowed: expected a number of threads >= 1")
        return ThreadPlan(requested, processes, cores, "--threads")
    omp = environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) >= 1:
        return ThreadPlan(int(omp), processes, cores, "OMP_NUM_THREADS")
    share = max(1, min(torch.get_num_threads(), cores // processes))
    return ThreadPlan(share, processes, cores, "the cores shared by the processes" if processes > 1 else "the default")


def apply(chosen: ThreadPlan, say: bool = True) -> ThreadPlan:
    """Set this process's torch threads; with `say`, print the choice and, once, why it may be slow."""
    import torch

    torch.set_num_threads(chosen.threads)
    if say:
        announce(chosen)
    return chosen


def announce(chosen: ThreadPlan) -> None:
    """The choice in one line (stdout, with a note when the machine is already busy), and a warning (stderr)
    when this command's own threads outnumber the cores."""
    print(chosen.line())
    load = _load_average()
    note = chosen.busy_note(load, _busy_cores_now() if load is not None and load >= 1 else None)
    if note:
        print(note)
    warning = chosen.warning()
    if warning:
        print(warning, file=sys.stderr)


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # not available on this system
        return None


def _busy_cores_now(interval: float = 0.25) -> float | None:
    """Cores kept busy by other processes over `interval` seconds (this one sleeps meanwhile), from the
    kernel's CPU time counters; None where /proc/stat is not there."""
    import time

    def times() -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as stat:
                fields = [int(v) for v in stat.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle

    first = times()
    time.sleep(interval)
    second = times()
    if first is None or second is None or second[0] <= first[0]:
        return None
    total, idle = second[0] - first[0], second[1] - first[1]
    return (total - idle) / total * available_cores()


def for_command(requested: int | None, runs_side_by_side: int = 1) -> ThreadPlan:
    """The torch threads of a command's process, said once. A worker of `--num-processes` (started by
    accelerate, WORLD_SIZE set) takes what its launcher chose (OMP_NUM_THREADS) and says nothing; with
    `runs_side_by_side` (bench --jobs N) this process keeps N shares: the harness gives each run one."""
    if "WORLD_SIZE" in os.environ:
        return apply(plan(int(os.environ.get("LOCAL_WORLD_SIZE", 1)), requested), say=False)
    chosen = apply(plan(runs_side_by_side, requested))
    if runs_side_by_side > 1:
        import torch

        torch.set_num_threads(chosen.threads * runs_side_by_side)
    return chosen
