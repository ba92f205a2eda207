"""Multi-process training through accelerate (gloo on CPU): 2 processes follow 1 process."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import EVERY_STEP
from safetensors.torch import load_file

PROMPTS = ["a red circle", "a blue square", "two green triangles", "a yellow square above a red circle"]


def overrides(tmp_path, run):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    return [
        *EVERY_STEP, "model.options={pretrained: false, num_layers: 1, attention_head_dim: 8, finetune: full}",
        "reward.name=brightness", "reward.options={}", f"prompts.train={prompts}", f"prompts.eval={prompts}",
        "sampling.num_steps=4", "sampling.eval_steps=2", "sampling.micro_batch=4", "train.updates=3",
        "train.prompts_per_update=2", "train.group_size=2", "train.minibatches=2", "log.progress=false",
        "log.eval_seeds=1", "log.eval_at_start=false", "log.sample_every=0", f"run_dir={tmp_path / run}",
    ]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    one = subprocess.run([sys.executable, "-m", "genrl", "train", *overrides(tmp_path, "one")], capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "genrl", "train", "--num-processes", "2", *overrides(tmp_path, "two")],
                         capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-2000:]
    # accelerate's `--cpu` launcher starts one process whatever --num_processes says: check there were two
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["processes"] == 2
    m1 = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert len(m1) == len(m2) == 3
    for a, b in zip(m1, m2):
        assert a["nfe"] == b["nfe"]
        assert a["reward_mean"] == pytest.approx(b["reward_mean"], rel=1e-5, abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3)
    p1 = load_file(tmp_path / "one" / "checkpoints" / "update_000003" / "trainable.safetensors")
    p2 = load_file(tmp_path / "two" / "checkpoints" / "update_000003" / "trainable.safetensors")
    assert p1.keys() == p2.keys()
    assert any(m["grad_norm"] > 0 for m in m1)
    for k in p1:
        torch.testing.assert_close(p1[k], p2[k], rtol=1e-4, atol=1e-6)


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_runs(a, b, update=3, atol=1e-6):
    ma, mb = metrics(a), metrics(b)
    assert len(ma) == len(mb) == update
    for x, y in zip(ma, mb):
        assert x["nfe"] == y["nfe"]  # lockstep filler passes are not charged
        assert x["reward_mean"] == pytest.approx(y["reward_mean"], rel=1e-5, abs=1e-6)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-3)
    pa = load_file(a / "checkpoints" / f"update_{update:06d}" / "trainable.safetensors")
    pb = load_file(b / "checkpoints" / f"update_{update:06d}" / "trainable.safetensors")
    assert pa.keys() == pb.keys()
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], rtol=1e-4, atol=atol)
    ema_a, ema_b = (torch.load(r / "checkpoints" / f"update_{update:06d}" / "state.pt").get("ema") for r in (a, b))
    assert (ema_a is None) == (ema_b is None)
    for k in ema_a or {}:
        torch.testing.assert_close(ema_a[k], ema_b[k], rtol=1e-4, atol=atol)


def train(*args):
    run = subprocess.run([sys.executable, "-m", "genrl", "train", *args], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


@pytest.mark.slow
@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_sharded_runs_match_one_process_and_resume_exactly(tmp_path, finetune):
    """FSDP2 (ZeRO-3) and ZeRO-2 over 2 gloo processes follow the 1-process run; a sharded run
    stopped after 2 updates and resumed ends where an uninterrupted one does."""
    def args(run, *extra):
        items = [o.replace("finetune: full", f"finetune: {finetune}") for o in overrides(tmp_path, run)]
        return [*items, "log.checkpoint_every=1", "train.ema=0.5", *extra]  # the average is sharded like the weights

    train(*args("one"))
    train("--num-processes", "2", "--sharding", "fsdp", *args("fsdp"))
    train("--num-processes", "2", "--sharding", "zero2", *args("zero2", "train.updates=2"))
    train("--num-processes", "2", "--sharding", "zero2", "--resume", str(tmp_path / "zero2"), "train.updates=3")
    assert json.loads((tmp_path / "fsdp" / "summary.json").read_text())["sharding"] == "fsdp (ZeRO-3)"
    assert json.loads((tmp_path / "zero2" / "summary.json").read_text())["sharding"] == "zero2 (FSDP2, ZeRO-2)"
    assert any(m["grad_norm"] > 0 for m in metrics(tmp_path / "one"))
    assert_same_runs(tmp_path / "one", tmp_path / "fsdp")
    assert_same_runs(tmp_path / "one", tmp_path / "zero2")


def test_deepspeed_and_fsdp1_launcher_configs_are_refused_with_the_way_out(monkeypatch):
    from genrl import sharding
    from genrl.config import ConfigError

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match="DeepSpeed.*zero2.yaml"):
        sharding.from_launcher()
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    assert sharding.from_launcher() is None
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ConfigError, match="fsdp_version: 1.*fsdp_version: 2"):
        sharding.from_launcher()
    monkeypatch.setenv("FSDP_VERSION", "2")
    monkeypatch.setenv("FSDP_RESHARD_AFTER_FORWARD", "false")
    assert sharding.from_launcher() == sharding.Sharding(reshard_after_forward=False)


def test_sharding_needs_several_processes():
    run = subprocess.run([sys.executable, "-m", "genrl", "train", "--sharding", "zero2"], capture_output=True, text=True)
    assert run.returncode != 0
    assert "--sharding needs --num-processes 2 or more" in run.stderr


def test_a_replicated_checkpoint_is_not_resumed_sharded(tmp_path, monkeypatch):
    from genrl import config
    from genrl.checkpoint import CheckpointError
    from genrl.sharding import Sharding
    from genrl.trainer import Trainer

    cfg = config.load(None, [o for o in overrides(tmp_path, "run") if "log.progress" not in o] + ["train.updates=1"])
    trainer = Trainer(cfg)
    trainer.run()
    trainer.sharding = Sharding(reshard_after_forward=False)  # as if relaunched with --sharding zero2
    with pytest.raises(CheckpointError, match="written by a replicated run: resume it without --sharding"):
        trainer.load_checkpoint()


@pytest.mark.slow
def test_sharded_flux_chunk_grpo_matches_one_process(tmp_path):
    """The real FLUX adapter (tiny random weights), LoRA, Chunk-GRPO: chunks put unequal numbers of
    steps in a process's backward passes, which must still call the sharded model in lockstep."""
    common = ["flux", "model.name=tiny-random-flux", "model.options={lora_rank: 4, lora_alpha: 8}",
              "reward.name=tiny-random-hpsv2", "reward.options={}", "prompts.train=benchmarks/suites/tiny-random-prompts.txt",
              "prompts.eval=benchmarks/suites/tiny-random-prompts.txt", "device=cpu", "train.prompts_per_update=2",
              "train.group_size=2", "sampling.eval_steps=2", "sampling.micro_batch=4", "log.progress=false",
              "train.updates=2", "log.eval_at_start=false", "log.eval_seeds=1", "train.lr=1e-3", "algorithm=chunk_grpo"]
    train(*common, f"run_dir={tmp_path / 'one'}")
    train("--num-processes", "2", "--sharding", "fsdp", *common, f"run_dir={tmp_path / 'fsdp'}")
    # Adam divides by √v: float-order differences in near-zero gradients move a weight by up to ~lr·1e-3
    assert_same_runs(tmp_path / "one", tmp_path / "fsdp", update=2, atol=1e-5)
