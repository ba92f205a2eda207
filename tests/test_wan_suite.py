"""The `wan` config and bench suite (issue 33 item 2): flow_grpo's Wan 2.1 settings validate for every
algorithm without weights, the suite's budget is what its comment says, `--estimate` counts Wan 2.1 1.3B
at those shapes, and `--dry-run` runs the suite end to end on the tiny random Wan (genrl.testing)."""

import json
from pathlib import Path

import pytest
import torch

import genrl.algorithms  # noqa: F401  (registers the algorithms' config sections)
from genrl import config, models
from genrl.benchmarks.harness import run_suite
from genrl.benchmarks.suite import load_suite, plan_runs
from genrl.build import build_algorithm

REPO = Path(__file__).resolve().parent.parent
ALGORITHMS = ("flow_grpo", "dance_grpo", "chunk_grpo")
CLIPS = 32 * 4  # prompts x group per update


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_bundled_wan_config_is_flow_grpos_wan_recipe(algorithm):
    cfg = config.load("wan", [f"algorithm={algorithm}"])
    o = cfg.model.options
    assert (cfg.model.name, o["height"], o["width"], o["frames"], o["guidance_scale"]) == ("wan", 240, 416, 33, 4.5)
    assert (o["dtype"], o["vae_dtype"], o["lora_rank"], o["lora_alpha"]) == ("bf16", "fp32", 32, 64)
    assert sorted(o["lora_targets"]) == ["to_k", "to_out.0", "to_q", "to_v"] and o["max_sequence_length"] == 512
    assert (cfg.sampling.num_steps, cfg.sampling.eval_steps, cfg.effective_shift) == (20, 50, 3.0)
    assert (cfg.train.prompts_per_update, cfg.train.group_size, cfg.train.lr) == (32, 4, 1e-4)
    assert int(build_algorithm(cfg).stochastic_steps().sum()) == 19  # int(20 x 0.99) trained steps
    flow = cfg.algorithms["flow_grpo"]
    assert (flow.beta, flow.clip_range, flow.noise_level, flow.advantage) == (0.004, 1e-3, 0.7, "per_prompt")
    assert cfg.reward.options == {"frames": "mean"}  # an image reward on clips, reduced over frames


def test_wan_suite_validates_with_the_real_model_and_its_budget():
    suite = load_suite("wan")
    plans = plan_runs(suite)  # every (algorithm, seed) config validated; no weights are touched
    assert len(plans) == 9 and {p.algorithm for p in plans} == set(ALGORITHMS)
    assert all((p.cfg.model.name, p.cfg.device, p.cfg.train.nfe_budget) == ("wan", "cuda", suite.budget_nfe)
               for p in plans)
    flow = next(p.cfg for p in plans if p.algorithm == "flow_grpo")
    # rollout 20 steps + 19 trained + 19 KL reference, CFG counting 2: 14,848 NFE, 50 updates in the budget
    per_update = CLIPS * (20 + 19 + 19) * 2
    assert flow.algo.beta > 0 and per_update == 14_848 and suite.budget_nfe == 50 * per_update


@pytest.mark.slow
def test_wan_estimate_counts_wan21_1_3b_at_the_suites_shapes():
    from genrl.benchmarks import estimate as est

    result = est.estimate("wan")
    assert result["model"] == "wan21-1.3b" and result["eval_prompts"].startswith("data/prompts/ocr/test.txt")
    arms = {a.label: a for a in result["arms"]}
    u = arms["flow_grpo"].update
    # 128 clips in calls of 8 (x2 rows with CFG): 20 rollout steps, 19 trained with their KL reference calls
    assert (u.forward, u.train, u.reference, u.images, u.nfe) == (CLIPS * 20 // 8, CLIPS * 19 // 8, CLIPS * 19 // 8,
                                                                   CLIPS, 14_848)
    call = arms["flow_grpo"].call
    # LoRA r 32 on q, k, v, out of both attentions of 30 blocks of width 1536: r x (in + out) each
    assert call.rows == 16 and call.trainable == 30 * 2 * 4 * 32 * (1536 + 1536)
    assert 1.40e9 < call.params - call.trainable < 1.43e9  # Wan2.1-T2V-1.3B: 1.42B parameters
    latent = 16 * 9 * 30 * 52  # 33 frames -> 9 latent frames of 240/8 x 416/8
    assert arms["flow_grpo"].rollout_bytes == CLIPS * (21 * latent * 4 + 512 * 4096 * 2)


def test_memory_benchmark_counts_the_wan_suites_rollout_against_its_minimum():
    """`python -m genrl.benchmarks.memory`: the wan suite's rollout at its shapes, bytes against K + 1 latents
    and one UMT5 context per clip."""
    from genrl.benchmarks import memory

    r = memory.computed("wan", "flow_grpo")
    latent = 16 * 9 * 30 * 52 * 4  # fp32 [16, 9, 30, 52]
    assert (r["trajectories"], r["K"]) == (CLIPS, 20)
    assert r["rollout_minimum"] == CLIPS * (21 * latent + 512 * 4096 * 2)
    assert r["rollout_minimum"] <= r["rollout"] < 1.001 * r["rollout_minimum"]


def test_tiny_random_wan_loads_through_the_real_adapter():
    adapter = models.load("tiny-random-wan", lora_rank=4, lora_alpha=8)
    assert type(adapter).__name__ == "WanModel" and adapter.latent_shape == (16, 3, 2, 4)
    x = torch.randn(2, *adapter.latent_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        v = adapter.velocity(x, torch.full((2,), 0.5), adapter.encode(["a photo of a cat", "the mat"]))
    assert v.shape == x.shape and torch.isfinite(v).all() and adapter.decode(x).shape == (2, 9, 3, 16, 32)
    with pytest.raises(TypeError, match="random weights"):
        models.load("tiny-random-wan", path="/models/real")


@pytest.mark.slow
def test_wan_suite_dry_run_finishes_on_cpu(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the dry-run prompt file is named relative to the repository root
    results = run_suite("wan", tmp_path / "out", dry_run=True)
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert written["dry_run"] and len(written["runs"]) == 9
    assert all(r["status"] == "finished" and r["updates"] == 1 for r in results["runs"])
    assert {r["label"] for r in results["runs"]} == set(ALGORITHMS)
