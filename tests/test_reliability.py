"""Bad input gets a clear error and loses nothing (issue 7)."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from genrl import checkpoint, cli, config, rewards
from genrl.loss import GRPOLoss
from genrl.trainer import StabilityMonitor, Trainer, TrainingStopped


def test_reward_of_the_wrong_shape_is_named(toy_overrides):
    @rewards.register("wrong_shape_for_test")
    class WrongShape:
        name = "wrong_shape_for_test"

        def __call__(self, images, prompts):
            return images.mean((2, 3))  # [N, 3]

    cfg = config.load(overrides=toy_overrides + ["reward.name=wrong_shape_for_test", "log.eval_at_start=false"])
    with pytest.raises(rewards.RewardError, match=r"reward 'wrong_shape_for_test' returned shape \(8, 3\), expected \(8,\)"):
        Trainer(cfg).run()


def test_non_finite_updates_are_skipped_counted_and_stop_the_run(toy_overrides, tmp_path, monkeypatch):
    original = GRPOLoss.forward

    def poisoned(self, td):
        out = original(self, td)
        out["loss_policy"] = out["loss_policy"] * float("nan")
        return out

    monkeypatch.setattr(GRPOLoss, "forward", poisoned)
    cfg = config.load(overrides=toy_overrides + ["train.updates=10", "train.max_bad_updates=2", "log.eval_at_start=false"])
    trainer = Trainer(cfg)
    before = {k: v.clone() for k, v in trainer.parts.adapter.trainable_state_dict().items()}
    with pytest.raises(TrainingStopped, match="2 updates in a row had a non-finite loss or gradient"):
        trainer.run()
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["skipped"] for m in metrics] == [2.0, 2.0]  # both minibatches of both updates skipped
    after = trainer.parts.adapter.trainable_state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # no NaN reached the weights
    assert checkpoint.latest(tmp_path / "run").name == "update_000002"


def test_missing_checkpoint_is_named(toy_overrides, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("algorithm: flow_grpo\n")
    trainer_cfg = config.load(overrides=toy_overrides)
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint in"):
        Trainer(trainer_cfg, run_dir=run).load_checkpoint()
    assert cli.main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "config.yaml not found" in capsys.readouterr().err


def test_corrupt_checkpoint_is_named(toy_overrides, tmp_path, capsys):
    trainer = Trainer(config.load(overrides=toy_overrides))
    trainer.run()
    latest = checkpoint.latest(tmp_path / "run")
    (latest / "state.pt").write_bytes(b"not a checkpoint")
    resumed = Trainer(config.load(overrides=toy_overrides), run_dir=tmp_path / "run")
    resumed.load_checkpoint()  # the previous checkpoint takes over
    assert resumed.progress.update == 1
    assert f"checkpoint {latest} is corrupt: state.pt does not match the sha256" in capsys.readouterr().err
    (latest.parent / "update_000001" / "manifest.json").unlink()  # as written by an older genrl: no checksum
    (latest.parent / "update_000001" / "state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="update_000001 cannot be read"):
        Trainer(config.load(overrides=toy_overrides), run_dir=tmp_path / "run").load_checkpoint()


def test_a_crash_while_writing_a_checkpoint_keeps_the_previous_one(toy_overrides, tmp_path, monkeypatch):
    trainer = Trainer(config.load(overrides=toy_overrides + ["train.updates=1"]))
    trainer.run()
    good = checkpoint.latest(tmp_path / "run")

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", crash)
    trainer.progress.update = 5
    with pytest.raises(OSError, match="simulated"):
        trainer.save_checkpoint()
    assert checkpoint.latest(tmp_path / "run") == good
    checkpoint.load(good)  # still readable
    leftovers = [p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if "000005" in p.name]
    assert leftovers == []


def test_unwritable_run_directory_is_named(toy_overrides, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    cfg = config.load(overrides=toy_overrides + [f"run_dir={blocker / 'run'}"])
    with pytest.raises(OSError, match="is not writable"):
        Trainer(cfg).run()


def test_stability_monitor_warns_after_patience():
    cfg = config.load(overrides=["log.warn_patience=3", "log.warn_clip_frac=0.5"])
    monitor = StabilityMonitor(cfg)
    fired = [monitor.check({"clip_frac": 0.9, "approx_kl": 0.0}) for _ in range(4)]
    assert [len(f) for f in fired] == [0, 0, 1, 0] and "clip_frac has been above 0.5 for 3 updates" in fired[2][0]
    assert monitor.check({"clip_frac": 0.1, "approx_kl": 0.0}) == []


@pytest.mark.slow
def test_sigint_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\na blue square\n")
    run = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "genrl", "train", "model.options={pretrained: false, num_layers: 1, attention_head_dim: 8}",
         "reward.name=brightness", "reward.options={}", f"prompts.train={prompts}", f"prompts.eval={prompts}",
         "sampling.num_steps=3", "chunk_grpo.sde_window=null", "sampling.eval_steps=2", "train.updates=1000", "train.prompts_per_update=2",
         "train.group_size=2", "log.progress=false", "log.eval_at_start=false", "log.eval_seeds=1",
         "log.sample_every=0", "log.checkpoint_every=1000", f"run_dir={run}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-2000:]
    assert "interrupted after update" in out
    saved = checkpoint.latest(run)
    _, state = checkpoint.load(saved)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert state["update"] == len(lines) >= 1  # the checkpoint is at the last logged update
