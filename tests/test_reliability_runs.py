"""Run directories and checkpoints under reuse, kills, corruption and crafted files (issue 15)."""

import errno
import json
import os
import shutil
import signal

import pytest
import torch

from genrl import checkpoint, cli, config, rundir, stopping
from genrl.trainer import Trainer


def read_updates(run):
    return [json.loads(line)["update"] for line in (run / "metrics.jsonl").read_text().splitlines()]


# -- reusing a run directory ----------------------------------------------------------------


def test_a_fresh_run_refuses_a_directory_holding_a_run_until_told_to_overwrite(toy_overrides, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", *toy_overrides, "train.updates=3"]) == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert cli.main(["train", *toy_overrides, "seed=1"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run (checkpoint update_000003)" in err and "--resume" in err and "--overwrite" in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # nothing touched
    assert cli.main(["train", *toy_overrides, "seed=1", "--overwrite"]) == 0
    assert read_updates(run) == [1, 2]  # not [1, 2, 3, 1, 2]
    assert config.load(run / "config.yaml").seed == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "update_000001", "update_000002"]
    assert checkpoint.latest(run).name == "update_000002"


def test_a_rerun_of_a_run_killed_before_its_first_checkpoint_starts_clean(toy_overrides, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / rundir.RECORD).write_text(json.dumps({"genrl": "run", "format": 1, "outputs": list(rundir.OUTPUTS)}))
    (run / "config.yaml").write_text("seed: 7\n")  # what a run killed during update 1 leaves
    (run / "metrics.jsonl").write_text('{"update": 1, "reward_mean": 9.0}\n')
    (run / "eval").mkdir()
    (run / "eval" / "base.json").write_text('{"score": 9.0}')
    (run / "checkpoints").mkdir()
    (run / ".summary.json.k3j2x1").write_text("{")  # a write cut short
    (run / "tensorboard").mkdir()  # a tracker's files (log.trackers: [tensorboard])
    (run / "tensorboard" / "events.out.tfevents.1").write_bytes(b"old")
    assert cli.main(["train", *toy_overrides]) == 0
    assert "stopped before its first checkpoint: starting it again" in capsys.readouterr().err
    assert read_updates(run) == [1, 2]  # not [1, 1, 2]
    assert config.load(run / "config.yaml").seed == 0
    assert json.loads((run / "eval" / "base.json").read_text())["score"] != 9.0  # evaluated again
    assert not (run / ".summary.json.k3j2x1").exists()
    assert not (run / "tensorboard").exists()  # the restarted run logged to no tracker: the old events are gone


def test_a_directory_of_other_files_is_refused_and_overwrite_leaves_them(toy_overrides, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    assert cli.main(["train", *toy_overrides]) == 2
    assert "is not empty and is not a genrl run (it holds notes.txt)" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    assert cli.main(["train", *toy_overrides, "--overwrite"]) == 0
    assert (run / "notes.txt").read_text() == "mine" and read_updates(run) == [1, 2]


def test_resume_without_a_checkpoint_says_how_to_start_again(toy_overrides, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")
    assert cli.main(["train", "--resume", str(run)]) == 2
    assert f"start it again with `genrl train {run / 'config.yaml'} run_dir={run}`" in capsys.readouterr().err
    assert cli.main(["train", "--resume", str(run), "--overwrite"]) == 2
    assert "give one of them" in capsys.readouterr().err


# -- writing checkpoints --------------------------------------------------------------------


def tensors(value):
    return {"w": torch.full((4,), float(value))}


def test_old_checkpoints_are_removed_by_update_number_never_the_one_just_written(tmp_path):
    for update in (999_998, 999_999, 1_000_000):  # by name, update_1000000 sorts before update_999998
        checkpoint.save(tmp_path, update, tensors(update), {"update": update})
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == ["latest", "update_1000000", "update_999999"]
    assert checkpoint.latest(tmp_path).name == "update_1000000"


def test_checkpoints_after_the_one_written_are_a_stale_continuation_and_go(tmp_path):
    for update in (1, 2, 3):
        checkpoint.save(tmp_path, update, tensors(update), {"update": update})
    checkpoint.save(tmp_path, 2, tensors(20), {"update": 2})  # resumed from update 2, e.g. after update 3 was corrupt
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "update_000002"]
    path, trainable, _ = checkpoint.load_latest(tmp_path)
    assert path.name == "update_000002" and trainable["w"][0] == 20


def test_resaving_an_update_keeps_a_loadable_checkpoint_at_every_step(tmp_path, monkeypatch):
    """Before: the second save rmtree'd the good directory, then renamed the new one into place."""
    checkpoint.save(tmp_path, 5, tensors(1), {"update": 5})
    seen = []

    def check_then(fn):
        def wrapped(*args, **kwargs):
            path, trainable, _ = checkpoint.load_latest(tmp_path, warn=lambda message: None)
            seen.append(float(trainable["w"][0]))
            assert path.name == "update_000005"
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(checkpoint.shutil, "rmtree", check_then(shutil.rmtree))
    monkeypatch.setattr(checkpoint.os, "replace", check_then(os.replace))
    checkpoint.save(tmp_path, 5, tensors(2), {"update": 5})
    monkeypatch.undo()
    assert seen and set(seen) <= {1.0, 2.0}
    assert float(checkpoint.load_latest(tmp_path)[1]["w"][0]) == 2.0
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "update_000005"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "rename-aside"])
def test_resaving_an_update_replaces_it_whole(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(checkpoint, "_exchange", lambda a, b: False)
    checkpoint.save(tmp_path, 5, tensors(1), {"update": 5})
    checkpoint.save(tmp_path, 5, tensors(2), {"update": 5})
    assert float(checkpoint.load(tmp_path / "checkpoints" / "update_000005")[0]["w"][0]) == 2.0
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "update_000005"]


def test_a_full_disk_during_a_checkpoint_is_named_and_keeps_the_previous_one(tmp_path, monkeypatch):
    checkpoint.save(tmp_path, 1, tensors(1), {"update": 1})
    real_open = open

    class FullDisk:
        def __init__(self, path, mode):
            self.file = real_open(path, mode)

        def write(self, data):
            self.file.write(bytes(data)[:100])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.file, name)

    monkeypatch.setattr(checkpoint, "open", FullDisk, raising=False)
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"no space left on device while writing checkpoint .*checkpoints/update_000002"):
        checkpoint.save(tmp_path, 2, tensors(2), {"update": 2})
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "update_000001"]
    assert float(checkpoint.load_latest(tmp_path)[1]["w"][0]) == 1.0


def test_a_full_disk_while_logging_metrics_names_the_file(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir, "open", full, raising=False)
    with pytest.raises(OSError, match=f"no space left on device while writing {tmp_path / 'metrics.jsonl'}"):
        rundir.append_metrics(tmp_path / "metrics.jsonl", {"update": 1})


def test_a_stop_right_after_a_checkpoint_saves_once(toy_overrides, tmp_path, monkeypatch):
    """Ctrl-C used to save the same checkpoint twice (in the loop, then after it). SIGTERM is tested
    in a subprocess (tests/test_reliability_signals.py): here it would stop pytest on a regression."""
    saved = []
    save = checkpoint.save
    monkeypatch.setattr(checkpoint, "save", lambda run, update, *a, **k: saved.append(update) or save(run, update, *a, **k))
    trainer = Trainer(config.load(overrides=toy_overrides + ["train.updates=5"]))
    iteration = trainer.iteration

    def signalled_during_update_two():
        metrics = iteration()
        if metrics["update"] == 2:
            os.kill(os.getpid(), signal.SIGINT)  # the trainer's handler: finish this update, checkpoint
        return metrics

    trainer.iteration = signalled_during_update_two
    summary = trainer.run()
    assert (summary["interrupted_at"], summary["signal"]) == (2, signal.SIGINT)
    assert saved == [1, 2]


def test_a_second_signal_abandons_the_update_and_keeps_the_last_checkpoint(toy_overrides, tmp_path):
    trainer = Trainer(config.load(overrides=toy_overrides + ["train.updates=5"]))
    iteration = trainer.iteration

    def signalled_twice_during_update_two():
        if trainer.progress.update == 1:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return iteration()

    trainer.iteration = signalled_twice_during_update_two
    with pytest.raises(stopping.Interrupted) as stopped:
        trainer.run()
    assert stopped.value.exit_code == 130
    assert checkpoint.load_latest(tmp_path / "run")[0].name == "update_000001"
    assert read_updates(tmp_path / "run") == [1]


# -- resuming -------------------------------------------------------------------------------


def test_resume_drops_a_torn_last_metrics_line_and_names_the_file_otherwise(toy_overrides, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", *toy_overrides]) == 0
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"update": 3, "reward_mean": 0.1')  # killed mid-write
    assert cli.main(["train", "--resume", str(run), "train.updates=3"]) == 0
    assert "metrics.jsonl line 3 is incomplete" in capsys.readouterr().err
    assert read_updates(run) == [1, 2, 3]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    assert cli.main(["train", "--resume", str(run), "train.updates=4"]) == 2
    assert f"{run / 'metrics.jsonl'} line 2 is not a metrics record" in capsys.readouterr().err


@pytest.mark.parametrize("pointer", ["garbage\x00\xff", "", "update_000009", "../../elsewhere/update_000002"])
def test_resume_falls_back_when_latest_is_unreadable(toy_overrides, tmp_path, capsys, pointer):
    run = tmp_path / "run"
    assert cli.main(["train", *toy_overrides]) == 0
    elsewhere = tmp_path / "elsewhere" / "update_000002"
    shutil.copytree(run / "checkpoints" / "update_000002", elsewhere)
    (run / "checkpoints" / "latest").write_bytes(pointer.encode("utf-8", "surrogateescape"))
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run), "train.updates=3"]) == 0
    assert "resuming from update_000002 instead" in capsys.readouterr().err
    assert read_updates(run) == [1, 2, 3]
    assert checkpoint.latest(run).name == "update_000003"


def test_latest_is_never_followed_out_of_the_run_directory(toy_overrides, tmp_path):
    run = tmp_path / "run"
    Trainer(config.load(overrides=toy_overrides)).run()
    outside = tmp_path / "elsewhere"
    shutil.copytree(run / "checkpoints" / "update_000002", outside)
    (run / "checkpoints" / "latest").write_text("../../elsewhere\n")
    with pytest.raises(checkpoint.CheckpointError, match="which is not a checkpoint name"):
        checkpoint.latest(run)
    (run / "checkpoints" / "update_000009").symlink_to(outside, target_is_directory=True)
    (run / "checkpoints" / "latest").write_text("update_000009\n")
    with pytest.raises(checkpoint.CheckpointError, match="leads outside"):
        checkpoint.latest(run)
    assert checkpoint.load_latest(run, warn=lambda message: None)[0].name == "update_000002"


def test_orphaned_temporary_checkpoints_are_removed(toy_overrides, tmp_path):
    run = tmp_path / "run"
    Trainer(config.load(overrides=toy_overrides)).run()
    orphan = run / "checkpoints" / ".update_000003.x1y2z3"
    orphan.mkdir()
    (orphan / "trainable.safetensors").write_bytes(b"\0" * 1000)
    (run / "checkpoints" / ".latest.abc").write_text("update_000003")
    trainer = Trainer(config.load(run / "config.yaml", ["train.updates=2"]), run_dir=run)
    trainer.load_checkpoint()
    trainer.run()  # nothing left to train: the run directory is tidied all the same
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "update_000001", "update_000002"]


def test_a_resumed_run_keeps_its_base_evaluation_in_the_summary(toy_overrides, tmp_path, capsys):
    run = tmp_path / "run"
    trainer = Trainer(config.load(overrides=toy_overrides + ["train.updates=3"]))
    iteration = trainer.iteration

    def interrupted_after_one():
        metrics = iteration()
        trainer._stop_requested = True
        return metrics

    trainer.iteration = interrupted_after_one
    assert trainer.run()["interrupted_at"] == 1
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["base_eval"] == json.loads((run / "eval" / "base.json").read_text())
    printed = capsys.readouterr().out
    assert f"base {summary['base_eval']['score']:.3f}, change" in printed


# -- integrity and security -----------------------------------------------------------------


@pytest.mark.parametrize("manifest", [True, False], ids=["checksum", "no-manifest-finite-check"])
def test_garbage_in_the_weights_is_detected_not_loaded_as_nan(toy_overrides, tmp_path, capsys, manifest):
    run = tmp_path / "run"
    Trainer(config.load(overrides=toy_overrides + ["train.updates=1"])).run()
    path = checkpoint.latest(run)
    if not manifest:
        (path / "manifest.json").unlink()
    data = bytearray((path / "trainable.safetensors").read_bytes())
    data[-64:] = b"\xff" * 64  # tensor data, past the header: float32 0xffffffff is NaN
    (path / "trainable.safetensors").write_bytes(data)
    expected = "does not match the sha256" if manifest else "holds non-finite values"
    with pytest.raises(checkpoint.CheckpointError, match=expected):
        checkpoint.load(path)
    assert cli.main(["eval", str(run), "--out", str(tmp_path / "e.json"), "--seeds", "1", "--steps", "2"]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "e.json").exists()


def test_a_checkpoint_of_another_experiment_is_refused_naming_the_key(toy_overrides, tmp_path, capsys):
    chunk, flow = tmp_path / "chunk", tmp_path / "flow"
    for run, algorithm in ((chunk, "chunk_grpo"), (flow, "flow_grpo")):
        Trainer(config.load(overrides=toy_overrides + [f"algorithm={algorithm}", f"run_dir={run}"])).run()
    shutil.rmtree(flow / "checkpoints")
    shutil.copytree(chunk / "checkpoints", flow / "checkpoints")
    assert cli.main(["train", "--resume", str(flow), "train.updates=3"]) == 2
    err = capsys.readouterr().err
    assert "was written by a different experiment: algorithm='chunk_grpo' (this run: 'flow_grpo')" in err
    assert cli.main(["eval", str(flow), "--out", str(tmp_path / "e.json"), "--seeds", "1", "--steps", "2"]) == 2
    assert "algorithm='chunk_grpo'" in capsys.readouterr().err


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {_Payload.marker}",))


def test_a_crafted_state_file_does_not_run_code(toy_overrides, tmp_path, capsys):
    run = tmp_path / "run"
    Trainer(config.load(overrides=toy_overrides + ["train.updates=1"])).run()
    path = checkpoint.latest(run)
    _Payload.marker = tmp_path / "pwned"
    torch.save({"update": 1, "x": _Payload()}, path / "state.pt")
    (path / "manifest.json").unlink()  # a crafted directory would carry a matching manifest anyway
    with pytest.raises(checkpoint.CheckpointError, match="cannot be read"):
        checkpoint.load(path)
    assert cli.main(["eval", str(run), "--out", str(tmp_path / "e.json"), "--seeds", "1", "--steps", "2"]) == 2
    assert not _Payload.marker.exists()


def test_genuine_checkpoints_load_with_weights_only(toy_overrides, tmp_path):
    """Replicated weights, the EMA average, optimizer and RNG states: all plain tensors and containers."""
    Trainer(config.load(overrides=toy_overrides + ["train.ema=0.5", "train.updates=1"])).run()
    trainable, state = checkpoint.load(checkpoint.latest(tmp_path / "run"))
    assert state["ema"].keys() == trainable.keys() and state["optimizer"]["state"]
