"""One update of each algorithm on tiny random-config SD3 and FLUX pipelines with LoRA (issue 6)."""

import json

import pytest
import torch

import tiny_components as tc
from genrl import config
from genrl.trainer import Trainer


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    return {"sd3": tc.make_tiny_sd3(root / "sd3"), "flux": tc.make_tiny_flux(root / "flux")}


@pytest.mark.slow
@pytest.mark.parametrize("model", ["sd3", "flux"])
@pytest.mark.parametrize("algorithm", ["flow_grpo", "dance_grpo", "chunk_grpo"])
def test_one_update_on_a_tiny_pipeline(pipelines, model, algorithm, tmp_path):
    prompts = tmp_path / "prompts.txt"
    words = [w for w in tc.WORDS if w.isalpha()][:6]
    prompts.write_text("\n".join(f"a {w}" for w in words) + "\n")
    options = {"path": str(pipelines[model]), "resolution": tc.RESOLUTION, "max_sequence_length": 8,
               "device": "cpu", "dtype": "fp32", "lora_rank": 4, "lora_alpha": 8}
    cfg = config.from_dict(config.apply_overrides({}, [
        f"algorithm={algorithm}", f"model.name={model}", f"model.options={json.dumps(options)}",
        "reward.name=brightness", "reward.options={}", f"prompts.train={prompts}", f"prompts.eval={prompts}",
        "sampling.num_steps=4", "sampling.eval_steps=2", "sampling.micro_batch=4", "train.updates=1",
        "train.prompts_per_update=2", "train.group_size=2", "train.minibatches=1", "train.lr=1e-2",
        "log.progress=false", "log.eval_at_start=false", "log.eval_seeds=1", "log.sample_every=0",
        f"run_dir={tmp_path / 'run'}",
    ]))
    trainer = Trainer(cfg)
    adapter = trainer.parts.adapter
    trainable = {n for n, p in adapter.named_parameters() if p.requires_grad}
    assert trainable and all("lora" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in adapter.named_parameters()}
    trainer.run()
    after = dict(adapter.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and changed <= trainable  # only LoRA moved; the base (the KL reference) is untouched
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and metrics[0]["grad_norm"] > 0
    nfe_per_call = 2 if model == "sd3" else 1  # SD3 uses CFG, FLUX-dev its guidance embedding
    assert metrics[0]["nfe"] >= 4 * 4 * nfe_per_call
