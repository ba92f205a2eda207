"""The GPU suites and their bundled configs (sd35m, flux): they validate with the real model names
without loading weights, their budgets are what their comments say, and `--dry-run` runs them end
to end on tiny random components (genrl.testing)."""

import json
from pathlib import Path

import pytest
import torch
from genrl.benchmarks.harness import run_suite
from genrl.benchmarks.suite import load_suite, plan_runs

from genrl import config, models, rewards
from genrl.algorithms import grouping
from genrl.build import build_algorithm
from genrl.models.flux import flux_shift

REPO = Path(__file__).resolve().parent.parent
ALGORITHMS = ("flow_grpo", "dance_grpo", "chunk_grpo")
SUITES = {"sd35m-geneval-like": ("sd3", "clip_score"), "flux-hps": ("flux", "hpsv3"), "flux-pickscore": ("flux", "pickscore")}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def nfe_per_update(cfg: config.Config) -> float:
    """Rollout + trained steps (+ the KL reference's pass when beta > 0), CFG counting 2; where whole
    units are drawn (unit_fraction < 1) the expected number of trained steps."""
    algorithm = build_algorithm(cfg)
    trained = int(algorithm.stochastic_steps().sum())
    if cfg.algo.grouping == "random_subset":
        trained = int(trained * cfg.algo.grouping_options["fraction"])
    if cfg.algo.unit_fraction < 1:  # int(U · fraction) of the U units, each drawn with equal probability
        ctx = grouping.GroupingContext(algorithm.stochastic_steps(), torch.rand(1, cfg.sampling.num_steps), 0,
                                       torch.Generator().manual_seed(0))
        units = algorithm.strategy(ctx, **cfg.algo.grouping_options).units_per_trajectory
        trained = trained * int(units * cfg.algo.unit_fraction) / units
    calls = cfg.sampling.num_steps + trained * (2 if cfg.algo.beta > 0 else 1)
    cfg_passes = 2 if cfg.model.name == "sd3" else 1  # SD3 with CFG 4.5; FLUX-dev embeds its guidance
    return cfg.train.prompts_per_update * cfg.train.group_size * calls * cfg_passes


@pytest.mark.parametrize("name", SUITES)
def test_gpu_suite_validates_with_the_real_models(name):
    suite = load_suite(name)
    assert set(suite.algorithms) == set(ALGORITHMS) and suite.seeds == [0, 1, 2]
    plans = plan_runs(suite)  # every (algorithm, seed) config validated; no weights are touched
    assert len(plans) == 9
    model, reward = SUITES[name]
    for plan in plans:
        assert (plan.cfg.model.name, plan.cfg.reward.name, plan.cfg.device) == (model, reward, "cuda")
        assert plan.cfg.train.nfe_budget == suite.budget_nfe
    per_update = {p.algorithm: nfe_per_update(p.cfg) for p in plans}
    if model == "sd3":  # 64 Flow-GRPO updates: rollout 23,040 + training 20,736 + KL reference 20,736
        assert per_update["flow_grpo"] == 64_512 and suite.budget_nfe == 64 * 64_512
        # DanceGRPO int(0.6 x 9) = 5 steps, Chunk-GRPO 2 of the chunks [1, 2, 2, 4]: 4.5 steps expected
        assert per_update["dance_grpo"] == 48 * 24 * 15 * 2 and per_update["chunk_grpo"] == 48 * 24 * 14.5 * 2
    else:  # 150 Chunk-GRPO updates (no CFG): 192 x (17 + 8 expected: 2 of the 4 chunks of 16 steps)
        assert per_update["chunk_grpo"] == 192 * 25 and suite.budget_nfe == 150 * 4_800
        assert per_update["flow_grpo"] == 192 * 33 and per_update["dance_grpo"] == 192 * (17 + 9)
    assert per_update["flow_grpo"] > max(per_update["dance_grpo"], per_update["chunk_grpo"])  # fewer Flow-GRPO updates


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_bundled_sd35m_and_flux_configs_validate_for_every_algorithm(algorithm):
    sd = config.load("sd35m", [f"algorithm={algorithm}"])
    assert (sd.model.name, sd.model.options["resolution"], sd.model.options["guidance_scale"]) == ("sd3", 512, 4.5)
    assert (sd.sampling.num_steps, sd.sampling.eval_steps, sd.effective_shift, sd.train.group_size) == (10, 40, 3.0, 24)
    fx = config.load("flux", [f"algorithm={algorithm}"])
    assert (fx.model.name, fx.model.options["resolution"], fx.model.options["guidance_scale"]) == ("flux", 720, 3.5)
    assert (fx.sampling.num_steps, fx.sampling.eval_steps, fx.train.group_size, fx.train.updates) == (17, 50, 12, 150)
    assert fx.effective_shift == 3.0  # the DanceGRPO / Chunk-GRPO scripts' --shift 3
    assert flux_shift(45 * 45, {}) == pytest.approx(2.2243, abs=1e-4)  # FluxPipeline's at 720 px (sampling.shift=null)
    for cfg in (sd, fx):
        assert int(build_algorithm(cfg).stochastic_steps().sum()) == cfg.sampling.num_steps - 1
    assert sd.algorithms["flow_grpo"].beta == 0.04 and fx.algorithms["chunk_grpo"].clip_range == 5e-5
    # the references' defaults (README, Parity with the reference code)
    assert (sd.algorithms["flow_grpo"].kl, sd.algorithms["flow_grpo"].schedule) == ("reference", "diffusers")
    for cfg in (sd, fx):
        chunk, dance = cfg.algorithms["chunk_grpo"], cfg.algorithms["dance_grpo"]
        assert (chunk.schedule, chunk.unit_fraction, chunk.advantage_std, chunk.advantage_eps) == ("linspace_shift", 0.5, "unbiased", 1e-8)
        assert (dance.schedule, dance.noise_level, dance.advantage_std) == ("linspace_shift", 0.3, "unbiased")
    assert fx.reward.name == "hpsv3"


@pytest.mark.parametrize("name", ["tiny-random-sd3", "tiny-random-flux"])
def test_tiny_random_models_load_through_the_real_adapters(name):
    adapter = models.load(name, lora_rank=4, lora_alpha=8)
    assert type(adapter).__name__ == ("SD3Model" if name.endswith("sd3") else "FluxModel")
    assert adapter.latent_shape == (16, 8, 8) and adapter.nfe_per_velocity == (2 if name.endswith("sd3") else 1)
    assert {n for n, p in adapter.named_parameters() if p.requires_grad} and all(
        "lora" in n for n, p in adapter.named_parameters() if p.requires_grad)
    x = torch.randn(3, *adapter.latent_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        v = adapter.velocity(x, torch.full((3,), 0.5), adapter.encode(["a photo of a cat", "a red dog", "the mat"]))
    assert v.shape == x.shape and v.dtype == torch.float32 and torch.isfinite(v).all()
    assert adapter.decode(x).shape == (3, 3, 16, 16)
    with pytest.raises(TypeError, match="random weights"):
        models.load(name, path="/models/real")


@pytest.mark.parametrize("name", ["pickscore", "clip_score", "hpsv2", "hpsv3", "imagereward"])
def test_tiny_random_rewards_are_the_real_reward_classes(name):
    reward = rewards.load(f"tiny-random-{name}")
    assert isinstance(reward, rewards.REWARDS.get(name)) and reward.name == f"tiny-random-{name}"
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    scores = rewards.checked_call(reward, images, ["a photo of a cat", "a blue circle", "a photo of a cat"])
    assert scores.shape == (3,)


@pytest.mark.slow
@pytest.mark.parametrize("name", SUITES)
def test_gpu_suite_dry_run_finishes_on_cpu(name, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the dry-run prompt file is named relative to the repository root
    results = run_suite(name, tmp_path / "out", dry_run=True)
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert written["dry_run"] and len(written["runs"]) == 9
    assert all(r["status"] == "finished" and r["updates"] == 1 for r in results["runs"])
    assert {r["label"] for r in results["runs"]} == set(ALGORITHMS)


@pytest.mark.slow
def test_gpu_suite_dry_run_with_two_sharded_processes(tmp_path):
    """`genrl bench SUITE --num-processes 2 --sharding zero2`: every run trains in both processes
    (gloo), the main process alone reports and writes the suite's files."""
    import subprocess
    import sys

    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "genrl", "bench", "sd35m-geneval-like", "--dry-run", "--out", str(out),
                          "--num-processes", "2", "--sharding", "zero2"], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    written = json.loads((out / "results.json").read_text())
    assert all(r["status"] == "finished" and r["updates"] == 1 for r in written["runs"]) and len(written["runs"]) == 9
    assert run.stdout.count("[9/9]") == 2  # one "training" and one "final" line: printed once, not per process
    summary = json.loads((Path(written["runs"][0]["run_dir"]) / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["sharding"] == "zero2 (FSDP2, ZeRO-2)"
