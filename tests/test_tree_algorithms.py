"""The tree algorithms trained by the unchanged trainer: mix_grpo gives exactly what chains with shared
noise give (DanceGRPO on the same window) at fewer model calls; every edge is trained once; a tree
run resumes to the uninterrupted one."""

from __future__ import annotations

import json

import pytest

from conftest import resumed_and_uninterrupted
from genrl import config
from genrl.trainer import Trainer

MEASURED = {"wall_s", "images_per_s", "peak_mem_mb"}
# DanceGRPO with MixGRPO's choices, on a fixed window [2, 4) of 6 steps, every step of it trained
CHAINS = ["algorithm=dance_grpo", "dance_grpo.sde_window=[2, 2]", "dance_grpo.noise_level=0.7",
          "dance_grpo.grouping=per_step", "dance_grpo.grouping_options={}", "dance_grpo.schedule=linspace_shift",
          "dance_grpo.advantage=per_prompt", "dance_grpo.advantage_std=unbiased", "dance_grpo.advantage_eps=1e-8"]
PREFIX = ["algorithm=mix_grpo", "mix_grpo.structure_options={size: 2, start: 2}"]


def _metrics(overrides: list[str], run_dir) -> list[dict]:
    Trainer(config.load(overrides=overrides + [f"run_dir={run_dir}", "log.eval_at_start=false",
                                               "log.eval_at_end=false"])).run()
    return [{k: v for k, v in json.loads(line).items() if k not in MEASURED}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_mix_grpo_on_a_shared_prefix_trains_exactly_as_chains_with_shared_noise(toy_overrides, tmp_path):
    chains = _metrics(toy_overrides + CHAINS, tmp_path / "chains")
    prefix = _metrics(toy_overrides + PREFIX, tmp_path / "prefix")
    for c, p in zip(chains, prefix):
        for key in ("reward_mean", "reward_std", "adv_std", "loss_policy", "ratio_mean", "ratio_min", "ratio_max",
                    "approx_kl", "clip_frac", "grad_norm", "num_units", "l1_rel"):
            assert c[key] == p[key], key
    # the rollout's prefix x_0 … x_2 is evaluated once per prompt, not once per sample: 2 prompts, G = 4, K = 6
    assert chains[0]["nfe"] - prefix[0]["nfe"] == 2 * (4 - 1) * 3


@pytest.mark.parametrize("algorithm,extra,edges", [
    ("branch_grpo", ["branch_grpo.structure_options={points: [0, 2], fork: 2}"], 2 * (2 + 2 + 4 + 4 + 4)),
    ("tempflow_grpo", ["tempflow_grpo.structure_options={children: 3, fraction: 0.2}"], 2 * 3),
])
def test_every_sde_edge_of_a_tree_is_trained_once(toy_overrides, tmp_path, algorithm, extra, edges):
    metrics = _metrics(toy_overrides + [f"algorithm={algorithm}", "train.updates=1", "train.minibatches=1"] + extra,
                       tmp_path / algorithm)
    assert metrics[0]["edges_trained"] == edges == metrics[0]["num_units"]


def test_a_moving_tree_resumes_to_the_uninterrupted_run(toy_overrides, tmp_path):
    """The window moves every update, so the resumed env must know which rollout it is at."""
    resumed_and_uninterrupted(toy_overrides + ["algorithm=mix_grpo", "mix_grpo.structure_options={size: 2, every: 1}",
                                               "log.eval_at_start=false", "log.eval_at_end=false"], tmp_path)


def test_the_trees_benchmark_counts_fewer_calls_than_chains():
    from genrl.benchmarks.trees import measure

    structure = ["branch_grpo.structure_options={points: [0, 2], fork: 2}"]
    calls, nbytes = measure("branch_grpo", 6, 4, structure)
    chain_calls, chain_bytes = measure("dance_grpo", 6, 4, ["dance_grpo.sde_window=null"])
    assert (calls, chain_calls) == (1 + 2 + 2 + 4 + 4 + 4, 4 * 6)
    assert chain_bytes <= nbytes < 1.1 * chain_bytes  # every leaf's path, plus the tree's ids
