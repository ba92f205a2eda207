"""DiffusionNFT and AWM with the shared trainer: calls counted, learning, exact resume, the old policy,
bad input, the ShapeWorld and GPU configs, several processes (algorithms/forward_process.py)."""

import json

import pytest
import torch
from conftest import TOY_PROMPTS, resumed_and_uninterrupted

from genrl import cli, config, keys
from genrl.build import build
from genrl.trainer import Trainer

ALGORITHMS = ("diffusion_nft", "awm")
N, K = 8, 6  # toy_overrides: 2 prompts x 4 images, 6 steps


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def rows_per_trajectory(cfg) -> int:
    return int(K * cfg.algo.timestep_fraction) if cfg.algorithm == "diffusion_nft" else cfg.algo.timesteps


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_each_trains_through_the_cli_with_every_model_call_counted(algorithm, toy_overrides, tmp_path):
    assert cli.main(["train", *toy_overrides, f"algorithm={algorithm}"]) == 0
    cfg = config.load(tmp_path / "run" / "config.yaml")
    metrics = read_metrics(tmp_path / "run")
    m = rows_per_trajectory(cfg)
    # rollout: N x K ODE steps; objective: θ, the old policy (NFT's v_old, AWM's KL to it), the base (beta > 0)
    per_row = 3
    assert [x["nfe"] for x in metrics] == [u * (N * K + N * m * per_row) for u in (1, 2)]
    for x in metrics:
        assert x["num_units"] == N * m and x["skipped"] == 0 and x["grad_norm"] > 0
        assert {"loss_policy", "loss_kl", "kl", "t_mean", "adv_std"} <= set(x) and "clip_frac" not in x
        assert 0 < x["adv_std"] <= 1.0  # the advantage trained on is Â = clip(A, ±5) / 5
    state = torch.load(tmp_path / "run" / "checkpoints" / "update_000002" / "state.pt", weights_only=False)
    assert state["algorithm"]["steps"] == 2 * cfg.train.minibatches
    trainable = dict(Trainer(cfg).parts.adapter.named_parameters())
    assert state["algorithm"]["old"].keys() == {k for k, p in trainable.items() if p.requires_grad}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_without_kl_weights_the_base_and_old_policy_are_not_called(algorithm, toy_overrides, tmp_path):
    off = [f"{algorithm}.beta=0"] + (["awm.old_beta=0"] if algorithm == "awm" else [])
    trainer = Trainer(config.load(overrides=toy_overrides + [f"algorithm={algorithm}", "train.updates=1", *off]))
    trainer.run()
    (m,) = read_metrics(tmp_path / "run")
    per_row = 2 if algorithm == "diffusion_nft" else 1  # NFT's v_old is part of its loss
    assert m["nfe"] == N * K + N * rows_per_trajectory(trainer.cfg) * per_row and "kl" not in m


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_each_raises_a_cheap_reward_on_a_tiny_random_model(algorithm, toy_overrides, tmp_path):
    """Brightness, a toy random conv net: the held-out evaluation (fixed seeds) improves in 6 updates."""
    prompts = tmp_path / "free_text.txt"  # not ShapeWorld prompts: the evaluation scores them with the reward
    prompts.write_text("a bright morning\na dim evening\n")
    overrides = toy_overrides + [f"algorithm={algorithm}", f"prompts.train={prompts}", f"prompts.eval={prompts}",
                                 "train.updates=6", "train.lr=0.01", "train.minibatches=1", "log.eval_seeds=2",
                                 "log.sample_every=0", "log.checkpoint_every=6"]
    summary = Trainer(config.load(overrides=overrides)).run()
    rewards = [m["reward_mean"] for m in read_metrics(tmp_path / "run")]
    assert summary["final_eval"]["score"] > summary["base_eval"]["score"] + 0.1
    assert rewards[-1] > rewards[0] + 0.1


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_resumed_run_continues_exactly(algorithm, toy_overrides, tmp_path):
    common = toy_overrides + [f"algorithm={algorithm}", "log.eval_at_start=false", "train.lr=0.01"]
    a, b = resumed_and_uninterrupted(common, tmp_path)
    assert a["algorithm"]["steps"] == b["algorithm"]["steps"] == 8
    assert all(torch.equal(a["algorithm"]["old"][k], b["algorithm"]["old"][k]) for k in a["algorithm"]["old"])


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_old_policy_moves_once_per_update_on_its_decay_schedule(algorithm, toy_overrides):
    parts = build(config.load(overrides=toy_overrides + [f"algorithm={algorithm}"]))
    algorithm_, adapter = parts.algorithm, parts.adapter
    start = adapter.trainable_state_dict()
    with torch.no_grad():
        for p in adapter.trainable_parameters():
            p.add_(1.0)
    algorithm_.after_step()  # an optimizer step moves only the clock
    assert algorithm_.steps == 1 and all(torch.equal(algorithm_.old.average[k], start[k]) for k in start)
    algorithm_.steps = 200  # d = min(0.001 · 200, max) = 0.2
    algorithm_.after_update()
    assert all(torch.allclose(algorithm_.old.average[k], start[k] + 0.8) for k in start)
    algorithm_.steps = 10_000  # capped: 0.5 (NFT), 0.3 (AWM)
    algorithm_.after_update()
    cap = {"diffusion_nft": 0.5, "awm": 0.3}[algorithm]
    assert all(torch.allclose(algorithm_.old.average[k], start[k] + 1 - 0.2 * cap) for k in start)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_nft_samples_with_the_old_policy_and_awm_with_the_trained_one(algorithm, toy_overrides):
    parts = build(config.load(overrides=toy_overrides + [f"algorithm={algorithm}"]))
    old = parts.algorithm.old
    with torch.no_grad():
        for average in old.average.values():
            average.add_(0.5)  # the old policy now differs from θ
    live = parts.adapter.trainable_state_dict()
    env_state = parts.env.state_dict()
    torch.manual_seed(0)
    rollout = parts.env.rollout(policy=parts.policy)
    assert all(torch.equal(parts.adapter.trainable_state_dict()[k], live[k]) for k in live)  # θ is back
    policy_of = {}
    for name, weights in (("theta", live), ("old", old.average)):
        parts.adapter.load_trainable_state_dict(weights)
        parts.env.load_state_dict(env_state)
        torch.manual_seed(0)
        actor = getattr(parts.policy, "actor", parts.policy)
        policy_of[name] = parts.env.rollout(policy=actor).get(keys.ACTION)
    sampler = "old" if algorithm == "diffusion_nft" else "theta"
    assert torch.equal(rollout.get(keys.ACTION), policy_of[sampler])
    assert not torch.equal(policy_of["old"], policy_of["theta"])


@pytest.mark.parametrize("key", ["sde_window=[0, 2]", "grouping=per_step", "clip_range=0.1", "unit_fraction=0.5",
                                 "dynamics=flow_sde", "kl=exact"])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_an_option_of_the_grpo_family_is_an_error_naming_key_and_algorithm(algorithm, key, toy_overrides, capsys):
    assert cli.main(["train", *toy_overrides, f"algorithm={algorithm}", f"{algorithm}.{key}"]) == 2
    err = capsys.readouterr().err
    assert f"unknown config key '{algorithm}.{key.split('=')[0]}'" in err


@pytest.mark.parametrize("value", ["0", "-0.5", "1.5"])
def test_nft_mixing_coefficient_outside_zero_one_is_an_error_naming_it(value, toy_overrides, capsys):
    assert cli.main(["train", *toy_overrides, "algorithm=diffusion_nft", f"diffusion_nft.mix={value}"]) == 2
    err = capsys.readouterr().err
    assert f"diffusion_nft.mix={float(value)!r} is not allowed: expected a float in (0, 1]" in err
    assert "the KL weight is `beta`" in err


@pytest.mark.parametrize("override, key", [
    ("diffusion_nft.timestep_fraction=0.1", "diffusion_nft.timestep_fraction"),  # int(6 x 0.1) = 0 steps
    ("diffusion_nft.beta=-1", "diffusion_nft.beta"), ("diffusion_nft.old_decay_max=1.0", "diffusion_nft.old_decay_max"),
    ("awm.timesteps=0", "awm.timesteps"), ("awm.ghuber_power=0", "awm.ghuber_power"), ("awm.old_beta=-1", "awm.old_beta"),
    ("awm.timestep_sampling=uniform", "awm.timestep_sampling"), ("awm.timestep_fraction=0.1", "awm.timestep_fraction"),
])
def test_bad_values_are_errors_naming_the_key(override, key, toy_overrides):
    algorithm = override.split(".")[0]
    with pytest.raises(config.ConfigError, match=f"^{key}="):
        config.load(overrides=toy_overrides + [f"algorithm={algorithm}", override])


def test_a_zero_advantage_clip_is_refused_at_load(toy_overrides):
    """Â = clip(A, ±c) / c: c = 0 would divide by zero (and gives the GRPO family nothing to train on)."""
    with pytest.raises(config.ConfigError, match=r"^train.adv_clip=0.0 is not allowed: expected a positive float"):
        config.load(overrides=toy_overrides + ["algorithm=diffusion_nft", "train.adv_clip=0"])


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_shapeworld_config_trains_them_by_changing_the_algorithm_line(algorithm, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(TOY_PROMPTS) + "\n")
    run = tmp_path / "run"
    assert cli.main(["train", f"algorithm={algorithm}", "train.prompts_per_update=2", "train.group_size=2",
                     "train.updates=1", "sampling.eval_steps=2", "log.eval_seeds=1", "log.progress=false",
                     f"prompts.eval={prompts}", f"run_dir={run}"]) == 0
    (m,) = read_metrics(run)
    assert m["grad_norm"] > 0 and config.load(run / "config.yaml").algo.shift == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("suite", ["sd35m-geneval-like", "flux-hps"])
def test_the_gpu_suites_dry_run_with_them(suite, tmp_path, monkeypatch):
    """The GPU suites' configs (sd35m, flux) with the two algorithms, on tiny random components."""
    import yaml
    from genrl.benchmarks.harness import run_suite
    from genrl.benchmarks.suite import SUITES_DIR, load_suite

    from test_gpu_suites import REPO

    spec = yaml.safe_load((SUITES_DIR / f"{suite}.yaml").read_text())
    spec.update(algorithms={a: {} for a in ALGORITHMS}, seeds=[0])
    path = tmp_path / f"{suite}.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert load_suite(path).base in ("sd35m", "flux")
    monkeypatch.chdir(REPO)  # the dry-run prompt file is named relative to the repository root
    results = run_suite(path, tmp_path / "out", dry_run=True)
    assert {r["label"] for r in results["runs"]} == set(ALGORITHMS)
    assert all(r["status"] == "finished" and r["updates"] == 1 for r in results["runs"])


@pytest.mark.slow
def test_two_processes_and_a_sharded_run_train_what_one_process_would(tmp_path):
    from test_distributed import assert_same_runs, overrides, train

    args = lambda run, *extra: [*overrides(tmp_path, run), "algorithm=diffusion_nft", "log.checkpoint_every=1", *extra]  # noqa: E731
    train(*args("one"))
    train("--num-processes", "2", *args("two"))
    train("--num-processes", "2", "--sharding", "fsdp", *args("fsdp"))
    assert any(m["grad_norm"] > 0 for m in read_metrics(tmp_path / "one"))
    assert_same_runs(tmp_path / "one", tmp_path / "two")
    assert_same_runs(tmp_path / "one", tmp_path / "fsdp")
    olds = [torch.load(tmp_path / r / "checkpoints" / "update_000003" / "state.pt", weights_only=False)["algorithm"]["old"]
            for r in ("one", "two", "fsdp")]
    for other in olds[1:]:
        for k in olds[0]:
            torch.testing.assert_close(olds[0][k], other[k], rtol=1e-4, atol=1e-6)
