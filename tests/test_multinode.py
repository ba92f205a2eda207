"""Several machines through accelerate (issue 32): `genrl train --num-machines M --machine-rank R
--main-process-ip IP --main-process-port P`, tested as two launchers on this machine over loopback (gloo),
one process each, both given the same run_dir (a shared filesystem)."""

import json
import signal
import socket
import subprocess
import sys

import psutil
import pytest
from test_distributed import assert_same_runs, overrides
from test_reliability_signals import alive, tiny_run, wait_for

from genrl import checkpoint, cli, stopping
from genrl.launch import Machines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine(rank, port, machines=2, processes=2):
    return ["--num-machines", str(machines), "--machine-rank", str(rank), "--main-process-ip", "127.0.0.1",
            "--main-process-port", str(port), "--num-processes", str(processes)]


def launch(command):
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# -- bad input: one line, exit 2, nothing written ------------------------------------------------------

@pytest.mark.parametrize("flags, message", [
    (["--num-machines", "0"], "--num-machines 0 is not allowed"),
    (["--num-machines", "2", "--machine-rank", "2", "--main-process-ip", "10.0.0.1", "--num-processes", "2"],
     "--machine-rank 2 is out of range for --num-machines 2: give 0 (the machine of the main process) to 1"),
    (["--num-machines", "2", "--machine-rank", "-1", "--main-process-ip", "10.0.0.1", "--num-processes", "2"],
     "--machine-rank -1 is out of range"),
    (["--num-machines", "2", "--machine-rank", "1", "--num-processes", "2"], "--num-machines 2 needs --main-process-ip"),
    (["--num-machines", "2", "--machine-rank", "1", "--main-process-ip", "10.0.0.1", "--main-process-port", "70000",
      "--num-processes", "2"], "--main-process-port 70000 is out of range: give a port from 1 to 65535"),
    (["--num-machines", "2", "--main-process-ip", "10.0.0.1", "--main-process-port", "0", "--num-processes", "2"],
     "--main-process-port 0 is out of range"),
    (["--num-machines", "2", "--main-process-ip", "10.0.0.1", "--num-processes", "3"],
     "--num-processes 3 is the total over all machines"),
    (["--num-machines", "2", "--main-process-ip", "10.0.0.1"], "--num-processes 1 is the total over all machines"),
])
def test_bad_machine_options_are_one_line_before_anything_is_written(tmp_path, capsys, flags, message):
    code = cli.main(["train", *flags, f"run_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_prompts_must_split_over_the_total_of_all_machines(tmp_path, capsys):
    # 2 prompts over 2 machines x 2 processes = 4: would pass a per-machine check, not the total one
    code = cli.main(["train", *machine(1, 29555, processes=4), *overrides(tmp_path, "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "train.prompts_per_update=2 cannot be split whole over --num-processes 4 (the total over all machines)" in err
    assert not (tmp_path / "run").exists()


def test_a_port_in_use_on_machine_0_is_one_line(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = cli.main(["train", *machine(0, port), *overrides(tmp_path, "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"--main-process-port {port} is in use on this machine (machine 0)" in err


def test_machine_1_does_not_refuse_the_run_directory_machine_0_holds(tmp_path, monkeypatch):
    """With a shared filesystem machine 0's main process holds RUN_DIR/.genrl.lock while machine 1's
    launcher starts: only machine 0's launcher checks the directory (another run there is refused)."""
    from genrl import dirlock

    launched = []
    monkeypatch.setattr(cli, "run_launcher", lambda command: launched.append(command) or 0)
    run = tmp_path / "run"
    with dirlock.hold(run):  # as machine 0's main process does while it runs
        assert cli.main(["train", *machine(1, 29555), *overrides(tmp_path, "run")]) == 0
        assert cli.main(["train", *machine(0, free_port()), *overrides(tmp_path, "run")]) == 2
    (command,) = launched
    flags = command[command.index("--num_processes"):command.index("-m", 3)]
    assert flags[:2] == ["--num_processes", "2"]  # the total, as accelerate counts
    assert flags[flags.index("--num_machines") + 1] == "2" and flags[flags.index("--machine_rank") + 1] == "1"
    assert flags[flags.index("--main_process_ip") + 1] == "127.0.0.1"
    assert flags[flags.index("--main_process_port") + 1] == "29555"


def test_one_machine_passes_no_rank_to_accelerate_but_a_given_port():
    assert Machines().accelerate_flags() == []  # one machine: launched as before
    assert Machines(main_port=0).accelerate_flags() == ["--main_process_port", "0"]


def test_a_stop_noted_by_the_workers_sets_the_launchers_exit_code(tmp_path, monkeypatch):
    """A launcher that was not signalled itself (the signal went to another machine) still exits 143
    when its workers stopped on an agreed SIGTERM, and its ordinary failures keep their code."""
    from genrl.launch import run_launcher

    worker = ("import os, sys; from genrl import stopping; stopping.note_for_launcher(15); sys.exit(1)")
    assert run_launcher([sys.executable, "-c", worker]) == 143
    assert run_launcher([sys.executable, "-c", "import sys; sys.exit(1)"]) == 1
    monkeypatch.delenv(stopping.STOP_NOTES, raising=False)
    stopping.note_for_launcher(15)  # started without genrl's launcher: nothing to note, nothing raised


# -- end to end: two launchers on localhost, gloo -------------------------------------------------------

@pytest.mark.slow
def test_two_machines_match_one_process(tmp_path):
    items = [o for o in overrides(tmp_path, "one") if not o.startswith("train.updates")] + ["train.updates=2"]
    one = subprocess.run([sys.executable, "-m", "genrl", "train", *items], capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]
    shared = [o.replace(str(tmp_path / "one"), str(tmp_path / "two")) for o in items]
    port = free_port()
    nodes = [launch([sys.executable, "-m", "genrl", "train", *machine(rank, port), *shared]) for rank in (0, 1)]
    for node in nodes:
        out, err = node.communicate(timeout=600)
        assert node.returncode == 0, err[-3000:]
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["processes"] == 2
    assert_same_runs(tmp_path / "one", tmp_path / "two", update=2)


@pytest.mark.slow
def test_sigterm_to_one_machine_stops_both_with_one_checkpoint(tmp_path):
    """The signal reaches only machine 1's worker; the workers agree over the network, machine 0's main
    process writes the one checkpoint, and both launchers exit 143 with no process left."""
    run, port = tmp_path / "run", free_port()
    nodes = [launch(tiny_run(tmp_path, run, *machine(rank, port))) for rank in (0, 1)]
    wait_for(lambda: (run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().endswith("\n"))
    families = [psutil.Process(node.pid).children(recursive=True) for node in nodes]
    nodes[1].send_signal(signal.SIGTERM)
    outs = [node.communicate(timeout=600) for node in nodes]
    assert [node.returncode for node in nodes] == [143, 143], outs[0][1][-2000:] + outs[1][1][-2000:]
    assert "(SIGTERM); checkpoint saved" in outs[0][0]  # printed by the main process, on machine 0
    wait_for(lambda: not alive(families[0] + families[1]), timeout=30)
    saved = checkpoint.candidates(run)
    logged = len((run / "metrics.jsonl").read_text().splitlines())
    assert len(saved) == 1 and checkpoint.load_latest(run)[2]["update"] == logged >= 1
