"""Run directories and checkpoints, round two (issue 28): nothing genrl did not record writing is deleted,
one writer per run directory, checkpoint checks that cannot be switched off, one-line messages."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from genrl import checkpoint, cli, config, dirlock, rundir, stopping
from genrl.trainer import Trainer


def read_updates(run):
    return [json.loads(line)["update"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def errors(stderr):
    return [line for line in stderr.splitlines() if line.startswith("genrl: error:")]


def snapshot(directory):
    return {p.relative_to(directory): p.read_bytes() if p.is_file() else None for p in directory.rglob("*")}


# -- only what genrl recorded writing is ever deleted ------------------------------------------


def test_files_under_genrl_names_that_no_run_recorded_are_never_deleted(toy_overrides, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "config.yaml").write_text("my: own config\n")
    (run / "eval" / "results.csv").write_text("mine")
    (run / "samples").mkdir()
    (run / "samples" / "holiday.png").write_bytes(b"\x89PNG mine")
    (run / "tensorboard").mkdir()
    before = snapshot(run)
    assert cli.main(["train", *toy_overrides]) == 2  # was taken for "a run that stopped before its first checkpoint"
    err = capsys.readouterr().err
    assert "holds config.yaml, eval, samples and 1 more, which no genrl run recorded writing" in err
    assert "move or delete them yourself, or choose another run_dir" in err and len(errors(err)) == 1
    assert cli.main(["train", *toy_overrides, "--overwrite"]) == 2  # --overwrite deletes only genrl's outputs
    assert snapshot(run) == before


def test_the_record_is_written_before_anything_else_and_a_restart_clears_only_it(toy_overrides, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    written = []
    write = checkpoint.write_text_atomic
    monkeypatch.setattr(checkpoint, "write_text_atomic", lambda path, text: written.append(path.name) or write(path, text))
    assert cli.main(["train", *toy_overrides, "train.updates=1"]) == 0
    assert written[0] == rundir.RECORD and written.index("config.yaml") > 0
    assert rundir.recorded(run) == set(rundir.OUTPUTS)
    shutil.rmtree(run / "checkpoints")  # as a run killed before its first checkpoint leaves it
    (run / "summary.json").unlink()
    (run / "metrics.jsonl").write_text('{"update": 1, "reward_mean": 9.0}\n')
    assert cli.main(["train", *toy_overrides]) == 0
    assert "stopped before its first checkpoint: starting it again" in capsys.readouterr().err
    assert read_updates(run) == [1, 2]


def test_a_run_of_a_genrl_from_before_the_record_resumes_and_keeps_what_it_cannot_claim(toy_overrides, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", *toy_overrides]) == 0
    (run / rundir.RECORD).unlink()  # an older genrl wrote no record
    assert cli.main(["train", "--resume", str(run), "train.updates=3"]) == 0
    assert read_updates(run) == [1, 2, 3]
    assert {"config.yaml", "metrics.jsonl", "checkpoints"} <= rundir.recorded(run)
    assert not {"eval", "samples"} & rundir.recorded(run)  # there before the record: maybe not genrl's
    capsys.readouterr()
    assert cli.main(["train", *toy_overrides, "--overwrite"]) == 2
    assert "holds eval, samples, which no genrl run recorded writing" in capsys.readouterr().err
    assert (run / "eval" / "base.json").is_file() and checkpoint.latest(run).name == "update_000003"


def test_a_lock_file_alone_is_genrl_s_own_and_not_in_the_way(toy_overrides, tmp_path):
    run = tmp_path / "run"
    dirlock.hold(run).release()  # what a run killed before it wrote anything leaves
    assert rundir.plan_start(run, resumed=False).kind == "new"
    assert cli.main(["train", *toy_overrides]) == 0 and read_updates(run) == [1, 2]


# -- one writer per run directory -------------------------------------------------------------


def test_a_second_run_on_a_run_directory_in_use_is_refused_naming_the_pid(toy_overrides, tmp_path, capsys):
    run = tmp_path / "run"
    trainer = Trainer(config.load(overrides=toy_overrides + ["train.updates=3"]))
    iteration, answers = trainer.iteration, []

    def a_second_run_during_update_two():
        if trainer.progress.update == 1:  # after the first checkpoint
            answers.append(cli.main(["train", *toy_overrides, "seed=5"]))
            answers.append(cli.main(["train", "--resume", str(run), "train.updates=4"]))
        return iteration()

    trainer.iteration = a_second_run_during_update_two
    trainer.run()
    err = capsys.readouterr().err
    assert answers == [2, 2]
    assert err.count(f"is in use by process {os.getpid()} (one writer at a time)") == 2
    assert read_updates(run) == [1, 2, 3] and config.load(run / "config.yaml").seed == 0
    assert cli.main(["train", "--resume", str(run), "train.updates=4"]) == 0  # released when the run ended
    assert read_updates(run) == [1, 2, 3, 4]


def tiny_run(tmp_path, run):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\na blue square\n")
    return [sys.executable, "-m", "genrl", "train",
            "model.options={pretrained: false, num_layers: 1, attention_head_dim: 8}", "reward.name=brightness",
            "reward.options={}", f"prompts.train={prompts}", f"prompts.eval={prompts}", "sampling.num_steps=3",
            "chunk_grpo.sde_window=null", "sampling.eval_steps=2", "train.prompts_per_update=2", "train.group_size=2",
            "log.progress=false", "log.eval_at_start=false", "log.eval_seeds=1", "log.sample_every=0",
            "log.checkpoint_every=1", "train.updates=100000", f"run_dir={run}"]


def test_a_killed_run_releases_its_run_directory(tmp_path, capsys):
    run = tmp_path / "run"
    process = subprocess.Popen(tiny_run(tmp_path, run), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env=os.environ | {"OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 300
        while not checkpoint.candidates(run):
            assert process.poll() is None and time.time() < deadline, "the run did not write a checkpoint"
            time.sleep(0.2)
        assert cli.main(["train", "--resume", str(run), "train.updates=1"]) == 2  # (updates=1: no long run if not)
        assert f"is in use by process {process.pid} (one writer at a time)" in capsys.readouterr().err
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    dirlock.hold(run).release()  # the kernel dropped the killed process's lock
    update = checkpoint.load_latest(run)[2]["update"]
    assert cli.main(["train", "--resume", str(run), f"train.updates={update + 1}"]) == 0


# -- checkpoints: checks that cannot be switched off, nothing followed out of the run ------------------


def test_deleting_the_manifest_does_not_switch_off_the_checks(toy_overrides, tmp_path, capsys):
    chunk, flow = tmp_path / "chunk", tmp_path / "flow"
    for run, algorithm in ((chunk, "chunk_grpo"), (flow, "flow_grpo")):
        Trainer(config.load(overrides=toy_overrides + [f"algorithm={algorithm}", f"run_dir={run}", "train.updates=1"])).run()
    (chunk / "checkpoints" / "update_000001" / "manifest.json").unlink()
    with pytest.raises(checkpoint.CheckpointError, match="has no manifest.json, but its state.pt says it was written with one"):
        checkpoint.load(checkpoint.latest(chunk))
    shutil.rmtree(flow / "checkpoints")
    shutil.copytree(chunk / "checkpoints", flow / "checkpoints")  # another experiment's, its manifest deleted
    assert cli.main(["train", "--resume", str(flow), "train.updates=2"]) == 2
    assert "has no manifest.json" in capsys.readouterr().err
    assert read_updates(flow) == [1]


def test_a_checkpoint_without_a_manifest_loads_only_if_written_before_manifests(tmp_path, capsys):
    weights = {"w": torch.ones(3)}
    checkpoint.save(tmp_path, 1, weights, {"update": 1})
    old = checkpoint.latest(tmp_path)
    (old / "manifest.json").unlink()
    torch.save({"update": 1}, old / "state.pt")  # as a genrl from before manifests wrote it: no format in state.pt
    assert checkpoint.load(old)[1] == {"update": 1}
    assert "has no manifest.json (written by an older genrl)" in capsys.readouterr().err
    checkpoint.save(tmp_path, 2, weights, {"update": 2})  # its run's later checkpoint has one: the deletion shows
    with pytest.raises(checkpoint.CheckpointError, match=r"its run's other checkpoints have one \(update_000002\)"):
        checkpoint.load(old)


def test_a_checkpoints_link_to_another_run_is_refused_and_that_run_left_alone(toy_overrides, tmp_path, capsys):
    mine, other = tmp_path / "mine", tmp_path / "other"
    for run in (mine, other):
        Trainer(config.load(overrides=toy_overrides + [f"run_dir={run}"])).run()
    before = snapshot(other / "checkpoints")
    shutil.rmtree(mine / "checkpoints")
    (mine / "checkpoints").symlink_to(other / "checkpoints", target_is_directory=True)
    assert cli.main(["train", "--resume", str(mine), "train.updates=4"]) == 2
    err = capsys.readouterr().err
    assert f"{mine / 'checkpoints'} is a symbolic link to {other / 'checkpoints'}, outside the run directory" in err
    assert snapshot(other / "checkpoints") == before
    assert cli.main(["eval", str(mine), "--out", str(tmp_path / "e.json"), "--seeds", "1", "--steps", "2"]) == 2
    assert "outside the run directory" in capsys.readouterr().err
    with pytest.raises(checkpoint.CheckpointError, match="outside the run directory"):
        checkpoint.save(mine, 9, {"w": torch.ones(1)}, {"update": 9})
    assert snapshot(other / "checkpoints") == before


def test_a_checkpoint_link_is_never_pruned_through(tmp_path):
    other = tmp_path / "other"
    checkpoint.save(other, 1, {"w": torch.ones(1)}, {"update": 1})
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "update_000001").symlink_to(other / "checkpoints" / "update_000001")
    for update in (2, 3, 4):
        checkpoint.save(tmp_path / "run", update, {"w": torch.ones(1)}, {"update": update})
    assert checkpoint.load(other / "checkpoints" / "update_000001")[1]["update"] == 1
    assert checkpoint.load_latest(tmp_path / "run")[0].name == "update_000004"


# -- one clear line -----------------------------------------------------------------------------


def test_a_full_disk_while_logging_metrics_is_one_line(toy_overrides, tmp_path, monkeypatch, capsys):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir, "open", full, raising=False)  # metrics.jsonl is appended with rundir's open
    assert cli.main(["train", *toy_overrides]) == 2
    metrics = tmp_path / "run" / "metrics.jsonl"
    assert errors(capsys.readouterr().err) == [(f"genrl: error: no space left on device while writing {metrics}; "
                   "free some space, then run the same command again (the run has no checkpoint yet)")]


def test_a_full_disk_on_the_first_checkpoint_does_not_promise_an_earlier_one(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "_HashingFile", full)
    with pytest.raises(checkpoint.CheckpointError) as first:
        checkpoint.save(tmp_path, 1, {"w": torch.ones(1)}, {"update": 1})
    assert "it was the run's first, so there is none to resume from" in str(first.value)
    assert "is kept" not in str(first.value)
    monkeypatch.undo()
    checkpoint.save(tmp_path, 1, {"w": torch.ones(1)}, {"update": 1})
    monkeypatch.setattr(checkpoint, "_HashingFile", full)
    with pytest.raises(checkpoint.CheckpointError, match=f"update_000001 is kept .*--resume {tmp_path}"):
        checkpoint.save(tmp_path, 2, {"w": torch.ones(1)}, {"update": 2})


def test_resume_with_an_emptied_checkpoints_folder_says_so(toy_overrides, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", *toy_overrides]) == 0
    for entry in (run / "checkpoints").iterdir():
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"no checkpoint in {run / 'checkpoints'}: {run / 'checkpoints'} is empty (its checkpoints were deleted" in err
    assert f"run_dir={run} --overwrite`" in err  # it finished: a fresh start needs --overwrite


def test_sigterm_during_a_checkpoint_write_stops_right_after_it(toy_overrides, tmp_path, monkeypatch):
    saved, save = [], checkpoint.save

    def signalled_while_writing(run, update, *args, **kwargs):
        saved.append(update)
        if update == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # the trainer's handler: stop after this write
        return save(run, update, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save", signalled_while_writing)
    trainer = Trainer(config.load(overrides=toy_overrides + ["train.updates=6", "log.checkpoint_every=2"]))
    with stopping.handled(stopping.raise_interrupted, (signal.SIGTERM,)):  # as the CLI: a regression fails, not kills
        summary = trainer.run()
    assert (summary["interrupted_at"], summary["signal"]) == (2, signal.SIGTERM)  # not one more update
    assert saved == [2] and read_updates(tmp_path / "run") == [1, 2]
