"""Tiny fixtures: a toy model adapter and cheap rewards, registered the way users register their own."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import genrl.algorithms  # noqa: E402,F401  (config parses the sections of the registered algorithms)
import genrl.testing  # noqa: E402,F401  (the tiny-random-* models and rewards)
from genrl import models, rewards  # noqa: E402
from toy_adapter import ToyAdapter  # noqa: E402

TOY_PROMPTS = ["a red circle", "a blue square", "two green triangles", "a yellow square above a red circle"]

if "toy" not in models.MODELS:
    models.register("toy")(ToyAdapter)


class MeanBrightness:
    """Mean pixel value: cheap and differentiable-free, enough to see learning."""

    name = "toy_brightness"

    def __call__(self, images, prompts):
        return images.float().mean(dim=(1, 2, 3))


if "toy_brightness" not in rewards.REWARDS:
    rewards.register("toy_brightness")(MeanBrightness)


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(TOY_PROMPTS) + "\n")
    return path


# The bundled config trains a window of steps; tests of whole trajectories (and few steps) turn it off.
EVERY_STEP = ["flow_grpo.sde_window=null", "dance_grpo.sde_window=null", "chunk_grpo.sde_window=null"]


@pytest.fixture
def toy_overrides(prompt_file, tmp_path):
    """Config overrides for a seconds-long run on the toy model."""
    return [
        *EVERY_STEP,
        "model.name=toy",
        "model.options={}",
        "reward.name=toy_brightness",
        "reward.options={}",
        f"prompts.train={prompt_file}",
        f"prompts.eval={prompt_file}",
        "sampling.num_steps=6",
        "sampling.eval_steps=4",
        "sampling.micro_batch=8",
        "train.updates=2",
        "train.prompts_per_update=2",
        "train.group_size=4",
        "train.minibatches=2",
        "log.progress=false",
        "log.eval_seeds=1",
        "log.sample_every=1",
        "log.checkpoint_every=1",
        f"run_dir={tmp_path / 'run'}",
    ]


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """One torch thread for the test (`pytestmark = pytest.mark.usefixtures("one_thread")`): the tiny models'
    small matrix products only contend for a shared machine's cores with a second thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _own_eval_cache(tmp_path, monkeypatch):
    """Each test its own evaluation cache (genrl.eval_cache), never the user's ~/.cache."""
    monkeypatch.setenv("GENRL_CACHE", str(tmp_path / "genrl_cache"))


def resumed_and_uninterrupted(overrides: list[str], tmp_path: Path) -> tuple[dict, dict]:
    """Train 4 updates in one go and 2 + a resume to 4; assert their metrics are equal (timings aside)
    and return both runs' update-4 checkpoint states (uninterrupted, resumed)."""
    import json

    from genrl import cli, config
    from genrl.trainer import Trainer

    Trainer(config.load(overrides=overrides + ["train.updates=4", f"run_dir={tmp_path / 'a'}"])).run()
    Trainer(config.load(overrides=overrides + ["train.updates=2", f"run_dir={tmp_path / 'b'}"])).run()
    assert cli.main(["train", "--resume", str(tmp_path / "b"), "train.updates=4"]) == 0
    measured = {"wall_s", "images_per_s", "peak_mem_mb"}
    metrics = [[{k: v for k, v in json.loads(line).items() if k not in measured}
                for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()] for run in "ab"]
    assert metrics[0] == metrics[1]
    a, b = (torch.load(tmp_path / r / "checkpoints" / "update_000004" / "state.pt", weights_only=False) for r in "ab")
    return a, b
