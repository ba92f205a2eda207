"""Multi-process training through accelerate (gloo on CPU): 2 processes follow 1 process."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

PROMPTS = ["a red circle", "a blue square", "two green triangles", "a yellow square above a red circle"]


def overrides(tmp_path, run):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    return [
        "model.options={pretrained: false, num_layers: 1, attention_head_dim: 8, finetune: full}",
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
