"""SIGTERM (a scheduler's stop) and SIGINT, in one process and through `--num-processes` (issue 15).

Subprocesses with tiny budgets: a signal is sent once the first metrics line is written.
"""

import json
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from genrl import checkpoint


def tiny_run(tmp_path, run, *extra):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\na blue square\n")
    return [sys.executable, "-m", "genrl", "train", *extra,
            "model.options={pretrained: false, num_layers: 1, attention_head_dim: 8}", "reward.name=brightness",
            "reward.options={}", f"prompts.train={prompts}", f"prompts.eval={prompts}", "sampling.num_steps=3",
            "chunk_grpo.sde_window=null", "sampling.eval_steps=2", "train.prompts_per_update=2", "train.group_size=2",
            "log.progress=false", "log.eval_at_start=false", "log.eval_seeds=1", "log.sample_every=0",
            "log.checkpoint_every=1000", "train.updates=1000", f"run_dir={run}"]


def wait_for(condition, timeout=300):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


def alive(processes):
    return [p.pid for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def stop_and_check(process, run, family=()):
    """SIGTERM once metrics appear: exit 143, a checkpoint at the last logged update, nothing left running."""
    wait_for(lambda: (run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().endswith("\n"))
    family = list(family) or psutil.Process(process.pid).children(recursive=True)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 143, err[-3000:]
    assert "(SIGTERM); checkpoint saved" in out
    wait_for(lambda: not alive(family), timeout=30)
    _, _, state = checkpoint.load_latest(run)
    logged = len((run / "metrics.jsonl").read_text().splitlines())
    assert state["update"] == logged >= 1
    return logged


def resume(run, updates):
    done = subprocess.run([sys.executable, "-m", "genrl", "train", "--resume", str(run), f"train.updates={updates}"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [json.loads(line)["update"] for line in (run / "metrics.jsonl").read_text().splitlines()] == list(range(1, updates + 1))


@pytest.mark.slow
def test_sigterm_finishes_the_update_checkpoints_exits_143_and_resumes(tmp_path):
    run = tmp_path / "run"
    process = subprocess.Popen(tiny_run(tmp_path, run), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    logged = stop_and_check(process, run)
    resume(run, logged + 1)


@pytest.mark.slow
def test_sigterm_reaches_every_worker_of_a_multi_process_run_and_leaves_no_orphans(tmp_path):
    run = tmp_path / "run"
    process = subprocess.Popen(tiny_run(tmp_path, run, "--num-processes", "2"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (run / "metrics.jsonl").exists())
    family = psutil.Process(process.pid).children(recursive=True)
    assert len([p for p in family if "genrl" in " ".join(p.cmdline())]) >= 2  # the launcher and its workers
    logged = stop_and_check(process, run, family)
    resume(run, logged + 1)


# -- the launcher's signal forwarding, with a stand-in for torchrun (no torch: seconds) -------------

FAKE_LAUNCHER = textwrap.dedent("""
    # like torchrun: a worker in a session of its own; a signal is passed on to it once
    import signal, subprocess, sys
    worker = subprocess.Popen([sys.executable, sys.argv[1], sys.argv[2]], start_new_session=True)
    open(sys.argv[3], "w").write(str(worker.pid))
    stopped = []
    def shut_down(signum, frame):
        stopped.append(signum)
        worker.send_signal(signum)
    signal.signal(signal.SIGTERM, shut_down)
    signal.signal(signal.SIGINT, shut_down)
    worker.wait()
    sys.exit(1 if stopped else 0)
""")

FAKE_WORKER = textwrap.dedent("""
    # finishes its "update", writes its "checkpoint" and exits 143; with 'stuck' it ignores signals
    import signal, sys, time
    def stop(signum, frame):
        open(sys.argv[1] + ".checkpointed", "w").write(str(signum))
        sys.exit(128 + signum)
    ignore = sys.argv[1].endswith("stuck")
    signal.signal(signal.SIGTERM, signal.SIG_IGN if ignore else stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN if ignore else stop)
    open(sys.argv[1] + ".ready", "w").write("")
    while True:
        time.sleep(0.05)
""")


def start_fake(tmp_path, name):
    (tmp_path / "launcher.py").write_text(FAKE_LAUNCHER)
    (tmp_path / "worker.py").write_text(FAKE_WORKER)
    marker, pid_file = tmp_path / name, tmp_path / f"{name}.pid"
    code = ("import sys; from genrl.launch import run_launcher; "
            f"sys.exit(run_launcher([sys.executable, {str(tmp_path / 'launcher.py')!r}, "
            f"{str(tmp_path / 'worker.py')!r}, {str(marker)!r}, {str(pid_file)!r}]))")
    parent = subprocess.Popen([sys.executable, "-c", code])
    wait_for(lambda: (tmp_path / f"{name}.ready").exists() and pid_file.exists() and pid_file.read_text(), timeout=60)
    family = psutil.Process(parent.pid).children(recursive=True) + [psutil.Process(int(pid_file.read_text()))]
    return parent, family, marker


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_the_launcher_passes_a_signal_to_the_workers_and_is_waited_for(tmp_path, signum):
    parent, family, marker = start_fake(tmp_path, "worker")
    parent.send_signal(signum)
    assert parent.wait(timeout=60) == 128 + signum
    assert (tmp_path / "worker.checkpointed").read_text() == str(int(signum))  # the worker stopped cleanly
    assert not alive(family)


def test_a_second_signal_kills_a_stuck_launch_whole(tmp_path):
    parent, family, _ = start_fake(tmp_path, "stuck")
    parent.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    assert alive(family)  # the worker ignores it (as one stuck in a long update would)
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=60) == 143
    wait_for(lambda: not alive(family), timeout=30)


def test_the_workers_are_stopped_when_the_command_itself_is_killed(tmp_path):
    parent, family, _ = start_fake(tmp_path, "worker")
    parent.kill()  # SIGKILL: nothing to forward; the launcher learns it from the kernel
    parent.wait(timeout=60)
    wait_for(lambda: not alive(family), timeout=30)
    assert (tmp_path / "worker.checkpointed").read_text() == str(int(signal.SIGTERM))
