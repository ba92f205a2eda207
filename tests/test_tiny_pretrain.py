"""The pretraining script of the tiny ShapeWorld model: schedule, reproducibility, exact resume."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from safetensors.torch import load_file

from genrl.models import load
from genrl.shapeworld.pretrain import learning_rate, main


def pretrain(out, *extra):
    main(["--out", str(out), "--batch", "4", "--num-layers", "1", "--threads", "1", "--seed", "3", *extra])


def same_weights(a, b) -> bool:
    wa, wb = load_file(str(a / "transformer.safetensors")), load_file(str(b / "transformer.safetensors"))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_learning_rate_warms_up_holds_and_anneals_to_zero():
    args = argparse.Namespace(lr=1e-3, warmup=10, steps=100, decay_fraction=0.4)
    lrs = [learning_rate(i, args) for i in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(lr == pytest.approx(1e-3) for lr in lrs[10:60])
    assert all(a > b for a, b in zip(lrs[60:], lrs[61:])) and lrs[-1] == pytest.approx(1e-3 / 40)
    assert learning_rate(50, argparse.Namespace(lr=1e-3, warmup=10, steps=100, decay_fraction=0.0)) == 1e-3


@pytest.mark.slow
def test_same_seed_and_steps_give_the_same_weights_and_they_load(tmp_path):
    pretrain(tmp_path / "a", "--steps", "3")
    pretrain(tmp_path / "b", "--steps", "3")
    assert same_weights(tmp_path / "a", tmp_path / "b")
    meta = json.loads((tmp_path / "a" / "config.json").read_text())
    assert meta["training"]["steps_done"] == 3 and "--steps 3" in meta["training"]["reproduce"]
    model = load("tiny", weights=tmp_path / "a", finetune="none")
    assert model.config.num_layers == 1


@pytest.mark.slow
def test_a_run_cut_short_resumes_exactly(tmp_path):
    pretrain(tmp_path / "straight", "--steps", "3", "--decay-fraction", "0")
    state = str(tmp_path / "state.pt")
    pretrain(tmp_path / "cut", "--steps", "2", "--decay-fraction", "0", "--state", state)
    pretrain(tmp_path / "cut", "--steps", "3", "--decay-fraction", "0", "--state", state, "--resume")
    assert same_weights(tmp_path / "straight", tmp_path / "cut")


@pytest.mark.slow
def test_extending_a_finished_run_records_its_legs_and_their_commands_reproduce_it(tmp_path):
    schedule = ("--warmup", "1", "--decay-fraction", "0.5")  # leg one anneals its step 3; a 6-step run does not
    state = str(tmp_path / "state.pt")
    pretrain(tmp_path / "extended", *schedule, "--steps", "4", "--state", state)
    pretrain(tmp_path / "extended", *schedule, "--steps", "6", "--state", state, "--resume")
    training = json.loads((tmp_path / "extended" / "config.json").read_text())["training"]
    assert training["schedule_legs"] == [{"from_step": 0, "steps": 4}, {"from_step": 4, "steps": 6}]
    first, second = training["reproduce"].split(" && ")
    assert "--steps 4 --state S.pt" in first and "--resume" not in first and second.endswith("--steps 6 --state S.pt --resume")
    # the chained commands give these weights; one straight 6-step run anneals once and differs
    again = str(tmp_path / "again.pt")
    pretrain(tmp_path / "again", *schedule, "--steps", "4", "--state", again)
    pretrain(tmp_path / "again", *schedule, "--steps", "6", "--state", again, "--resume")
    pretrain(tmp_path / "straight", *schedule, "--steps", "6")
    assert same_weights(tmp_path / "extended", tmp_path / "again")
    assert not same_weights(tmp_path / "extended", tmp_path / "straight")
    assert "schedule_legs" not in json.loads((tmp_path / "straight" / "config.json").read_text())["training"]


def replay(reproduce: str, out, state) -> None:
    """Run config.json's `reproduce` commands, as a user would paste them, into `out` with state file `state`."""
    for command in reproduce.split(" && "):
        argv = command.replace("DIR", str(out)).replace("S.pt", str(state)).split()
        assert argv[:3] == ["python", "-m", "genrl.shapeworld.pretrain"]
        main([*argv[3:], "--threads", "1"])


@pytest.mark.slow
def test_a_leg_cut_short_then_extended_is_replayed_up_to_its_cut(tmp_path):
    schedule = ("--warmup", "1", "--decay-fraction", "0.5")
    state = str(tmp_path / "state.pt")
    pretrain(tmp_path / "run", *schedule, "--steps", "4", "--stop-at", "2", "--state", state)  # cut as --minutes or a signal cuts
    cut = json.loads((tmp_path / "run" / "config.json").read_text())["training"]
    assert cut["steps_done"] == 2 and cut["reproduce"].endswith("--steps 4 --stop-at 2")
    pretrain(tmp_path / "run", *schedule, "--steps", "6", "--state", state, "--resume")
    training = json.loads((tmp_path / "run" / "config.json").read_text())["training"]
    assert training["schedule_legs"] == [{"from_step": 0, "steps": 4, "until": 2}, {"from_step": 2, "steps": 6}]
    replay(training["reproduce"], tmp_path / "again", tmp_path / "again.pt")
    assert same_weights(tmp_path / "run", tmp_path / "again")
    # without the cut, the first leg would run its 4 steps (annealing steps 2-3) and give other weights
    replay(training["reproduce"].replace(" --stop-at 2", ""), tmp_path / "uncut", tmp_path / "uncut.pt")
    assert not same_weights(tmp_path / "run", tmp_path / "uncut")


@pytest.mark.slow
def test_sigterm_finishes_the_step_saves_the_state_and_the_resume_is_exact(tmp_path, monkeypatch, capsys):
    import os
    import signal

    from genrl import flow_pretraining

    pretrain(tmp_path / "straight", "--steps", "3", "--decay-fraction", "0")
    schedule = flow_pretraining.learning_rate

    def signalled_in_step_two(step, args):  # as a scheduler's SIGTERM would arrive, mid-step
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return schedule(step, args)

    monkeypatch.setattr(flow_pretraining, "learning_rate", signalled_in_step_two)
    state = str(tmp_path / "state.pt")
    with pytest.raises(SystemExit) as stopped:
        pretrain(tmp_path / "cut", "--steps", "3", "--decay-fraction", "0", "--state", state)
    assert stopped.value.code == 128 + signal.SIGTERM
    out = capsys.readouterr().out
    assert "stopped by SIGTERM at step 2" in out and f"--state {state} --resume" in out
    assert torch.load(state, weights_only=True)["step"] == 2
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["training"]["steps_done"] == 2
    monkeypatch.setattr(flow_pretraining, "learning_rate", schedule)
    pretrain(tmp_path / "cut", "--steps", "3", "--decay-fraction", "0", "--state", state, "--resume")
    assert same_weights(tmp_path / "straight", tmp_path / "cut")


def test_a_second_signal_stops_at_once_with_the_signals_exit_code(tmp_path, monkeypatch, capsys):
    import os
    import signal

    from genrl import flow_pretraining

    schedule = flow_pretraining.learning_rate

    def signalled_twice(step, args):
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)  # the impatient second: abandon the step in flight
        return schedule(step, args)

    monkeypatch.setattr(flow_pretraining, "learning_rate", signalled_twice)
    with pytest.raises(SystemExit) as stopped:
        pretrain(tmp_path / "cut", "--steps", "3", "--state", str(tmp_path / "state.pt"))
    assert stopped.value.code == 128 + signal.SIGTERM
    assert "stopped by SIGTERM; the last checkpoint stays" in capsys.readouterr().out
    assert not (tmp_path / "cut").exists() and not (tmp_path / "state.pt").exists()  # none was due yet


@pytest.mark.parametrize("stop_at", ["-1", "5"])
def test_a_stop_outside_the_schedule_is_one_line_before_anything_is_written(tmp_path, capsys, stop_at):
    with pytest.raises(SystemExit) as refused:
        pretrain(tmp_path / "out", "--steps", "4", "--stop-at", stop_at)
    assert refused.value.code == 2 and not (tmp_path / "out").exists()
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"--stop-at {stop_at}" in err and "--steps 4" in err
