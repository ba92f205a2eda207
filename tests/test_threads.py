"""Torch threads per process (genrl.threads): a share of the cores, said once, warned when they do not fit."""

import pytest
import torch

from genrl import cli, threads
from genrl.errors import ConfigError


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def two_cores(monkeypatch):
    """This machine as the issue saw it: 2 cores, torch's default 2 threads."""
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)


def test_one_process_keeps_torch_default_and_processes_share_the_cores(two_cores, monkeypatch):
    assert threads.plan(1, environ={}).threads == 2  # what a single run uses today: the same numerics
    assert threads.plan(2, environ={}).threads == 1
    assert threads.plan(3, environ={}).threads == 1  # never 0
    monkeypatch.setattr(threads, "available_cores", lambda: 16)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)  # torch's default (its physical cores) is a ceiling
    assert threads.plan(1, environ={}).threads == 8
    assert threads.plan(4, environ={}).threads == 4


def test_an_explicit_choice_wins_and_a_bad_one_is_refused(two_cores):
    chosen = threads.plan(2, environ={"OMP_NUM_THREADS": "2"})
    assert (chosen.threads, chosen.source, chosen.oversubscribed) == (2, "OMP_NUM_THREADS", True)
    assert threads.plan(1, requested=3, environ={"OMP_NUM_THREADS": "2"}).threads == 3
    assert threads.plan(1, environ={"OMP_NUM_THREADS": "junk"}).threads == 2
    with pytest.raises(ConfigError, match="--threads 0 is not allowed"):
        threads.plan(1, requested=0)


def test_the_warning_names_threads_and_cores_and_a_busy_machine_gets_a_note():
    over = threads.ThreadPlan(threads=2, processes=2, cores=2, source="OMP_NUM_THREADS")
    assert "2 process(es) x 2 threads = 4 threads on 2 cores" in over.warning()
    fits = threads.ThreadPlan(threads=2, processes=1, cores=2, source="the default")
    assert fits.warning() is None and fits.busy_note(0.1) is None and fits.busy_note(None) is None
    assert "1-minute load average 2.0 on 2 cores" in fits.busy_note(2.0)  # another 2-thread job is running
    assert threads.ThreadPlan(1, 1, 2, "--threads").busy_note(1.0) is None  # one busy core, one free


def test_a_load_average_left_by_a_finished_job_is_no_busy_note():
    fits = threads.ThreadPlan(threads=2, processes=1, cores=2, source="the default")
    assert fits.busy_note(1.0, busy_now=0.05) is None  # pip just ended: the 1-minute average still reads 1.0
    assert "load average 1.0" in fits.busy_note(1.0, busy_now=1.0)  # another job holds a core now
    busy = threads._busy_cores_now(0.05)
    assert busy is None or 0.0 <= busy <= threads.available_cores() + 1e-9


def test_train_says_what_it_chose_once_and_sets_it(toy_overrides, two_cores, monkeypatch, capsys):
    set_to = []
    monkeypatch.setattr(torch, "set_num_threads", set_to.append)
    assert cli.main(["train", *toy_overrides, "train.updates=1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("torch thread") == 1 and "genrl: 1 torch thread on 2 cores (--threads;" in out
    assert set_to[0] == 1


def test_workers_of_a_relaunch_get_a_share_of_the_cores_and_the_imports(toy_overrides, two_cores, monkeypatch, capsys):
    launched = []
    monkeypatch.setattr(cli, "run_launcher", lambda command: launched.append(command) or 0)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert cli.main(["train", "--num-processes", "2", "--import", "json", *toy_overrides]) == 0
    command = launched[0]
    assert command[command.index("--num_cpu_threads_per_process") + 1] == "1"  # accelerate's own default: 1
    assert command[command.index("--import") + 1] == "json"
    assert "genrl: 2 processes x 1 torch thread on 2 cores (the cores shared by the processes" in capsys.readouterr().out
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert cli.main(["train", "--num-processes", "2", *toy_overrides]) == 0
    assert launched[1][launched[1].index("--num_cpu_threads_per_process") + 1] == "2"
    assert "2 process(es) x 2 threads = 4 threads on 2 cores" in capsys.readouterr().err


def test_bench_side_by_side_gives_each_run_its_share(two_cores, monkeypatch, capsys):
    from genrl.benchmarks import harness

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    monkeypatch.setattr(harness, "run_suite", lambda *a, **kw: seen.append(("jobs", kw["jobs"])))
    assert cli.main(["bench", "smoke", "--jobs", "2", "--dry-run"]) == 0
    # The harness gives each of its N runs 1/N of this process's threads: 2 // 2 = 1 each.
    assert seen == [1, 2, ("jobs", 2)]
    assert "genrl: 2 processes x 1 torch thread on 2 cores" in capsys.readouterr().out
