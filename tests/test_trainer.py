"""The trainer and CLI on the toy model: every algorithm trains, logs, checkpoints and resumes."""

import itertools
import json

import pytest
import torch

from genrl import cli, config, keys
from genrl.algorithms import grouping
from genrl.trainer import Trainer

REQUIRED_METRICS = {"update", "reward_mean", "reward_std", "approx_kl", "clip_frac", "ratio_mean", "grad_norm", "nfe", "wall_s",
                    "adv_std", "zero_std_frac", "ratio_min", "ratio_max", "lr"}


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("algorithm", ["flow_grpo", "dance_grpo", "chunk_grpo"])
def test_each_algorithm_trains_through_the_cli(algorithm, toy_overrides, tmp_path, capsys):
    assert cli.main(["train", *toy_overrides, f"algorithm={algorithm}"]) == 0
    run = tmp_path / "run"
    metrics = read_metrics(run)
    assert [m["update"] for m in metrics] == [1, 2]
    assert REQUIRED_METRICS <= set(metrics[0])
    assert metrics[1]["nfe"] > metrics[0]["nfe"] > 0
    # rollout NFEs: N trajectories x K steps; plus one forward per trained step
    n, k = 8, 6
    assert metrics[0]["nfe"] >= n * k
    assert all(torch.isfinite(torch.tensor(m["grad_norm"])) and m["grad_norm"] > 0 for m in metrics)
    resolved = config.load(run / "config.yaml")
    assert resolved.algorithm == algorithm
    assert (run / "summary.json").exists() and (run / "eval" / "base.json").exists() and (run / "eval" / "final.json").exists()
    assert (run / "samples" / "update_000001.png").exists()
    assert (run / "checkpoints" / "latest").read_text().strip() == "update_000002"
    assert "eval score" in capsys.readouterr().out


def test_training_changes_the_trainable_parameters_only(toy_overrides):
    cfg = config.load(overrides=toy_overrides)
    trainer = Trainer(cfg)
    before = {k: v.clone() for k, v in trainer.parts.adapter.state_dict().items()}
    trainer.run()
    after = trainer.parts.adapter.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    trainable = {k for k, p in trainer.parts.adapter.named_parameters() if p.requires_grad}
    assert changed and changed <= trainable


def test_the_trainer_draws_its_minibatches_as_configured(toy_overrides, monkeypatch):
    from genrl import trainer as trainer_module

    drawn, seen = [], []
    real_draw, real_step = trainer_module.minibatch_groups, Trainer.step

    def spy_draw(*args):
        drawn.append((args[:3], real_draw(*args)))
        return drawn[-1][1]

    def spy_step(self, batch, rows):
        seen.append(sorted(set(rows.get(keys.TRAJECTORY).tolist())))
        return real_step(self, batch, rows)

    monkeypatch.setattr(trainer_module, "minibatch_groups", spy_draw)
    monkeypatch.setattr(Trainer, "step", spy_step)
    cfg = config.load(overrides=[*toy_overrides, "train.prompts_per_update=4", "train.updates=1",
                                 "train.minibatch_draw=balanced"])
    Trainer(cfg).run()
    (args, minibatches), = drawn
    assert args == (4, 2, "balanced")
    for groups, trajectories in zip(minibatches, seen):
        assert sorted((groups // 2).tolist()) == [0, 1]  # one group of the block 0-1, one of 2-3
        assert trajectories == sorted(t for g in groups.tolist() for t in range(4 * g, 4 * g + 4))  # group_size 4


@pytest.mark.parametrize("extra", [[], ["train.ema=0.5"]], ids=["live", "ema"])
def test_resume_continues_exactly(toy_overrides, tmp_path, extra):
    straight = config.load(overrides=toy_overrides + extra + ["train.updates=4", f"run_dir={tmp_path / 'a'}"])
    Trainer(straight).run()
    first = config.load(overrides=toy_overrides + extra + ["train.updates=2", f"run_dir={tmp_path / 'b'}"])
    Trainer(first).run()
    assert cli.main(["train", "--resume", str(tmp_path / "b"), "train.updates=4"]) == 0
    measured = {"wall_s", "images_per_s", "peak_mem_mb"}  # timings and memory, not results
    strip = lambda ms: [{k: v for k, v in m.items() if k not in measured} for m in ms]  # noqa: E731
    assert strip(read_metrics(tmp_path / "a")) == strip(read_metrics(tmp_path / "b"))
    from safetensors.torch import load_file

    a = load_file(tmp_path / "a" / "checkpoints" / "update_000004" / "trainable.safetensors")
    b = load_file(tmp_path / "b" / "checkpoints" / "update_000004" / "trainable.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ema_a, ema_b = (torch.load(tmp_path / r / "checkpoints" / "update_000004" / "state.pt").get("ema") for r in "ab")
    assert (ema_a is None) == (not extra)
    if extra:
        assert all(torch.equal(ema_a[k], ema_b[k]) for k in a)


def test_resume_refuses_to_change_the_experiment(toy_overrides, tmp_path, capsys):
    Trainer(config.load(overrides=toy_overrides)).run()
    assert cli.main(["train", "--resume", str(tmp_path / "run"), "train.lr=1.0"]) == 2
    assert "not allowed on resume" in capsys.readouterr().err


def test_config_errors_exit_non_zero_and_name_the_key(capsys):
    assert cli.main(["train", "train.lr=fast"]) == 2
    assert "train.lr='fast'" in capsys.readouterr().err
    assert cli.main(["train", "algorithm=ppo"]) == 2
    assert "choose one of awm, branch_grpo, chunk_grpo, dance_grpo, diffusion_nft, flow_grpo" in capsys.readouterr().err


def test_empty_prompt_file_is_an_error_and_writes_nothing(toy_overrides, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert cli.main(["train", *toy_overrides, f"prompts.train={empty}"]) == 2
    assert "holds no prompts" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_bad_grouping_options_are_named(toy_overrides, capsys):
    assert cli.main(["train", *toy_overrides, "chunk_grpo.grouping_options={size: 3}"]) == 2
    assert "chunk_grpo.grouping_options has unknown option(s) ['size']" in capsys.readouterr().err


def test_a_grouping_strategy_registered_outside_the_package_trains(toy_overrides, tmp_path):
    """The README example: pairs of consecutive steps, summed log-ratios."""

    @grouping.register("pairs_for_test")
    def pairs(ctx, combine="sum"):
        steps = ctx.trainable_steps
        sizes = [2] * (len(steps) // 2) + [1] * (len(steps) % 2)
        return grouping.Units(grouping.chunks_to_units(ctx, sizes).assignment, combine)

    cfg = config.load(overrides=toy_overrides + ["chunk_grpo.grouping=pairs_for_test"])
    trainer = Trainer(cfg)
    trainer.run()
    metrics = read_metrics(tmp_path / "run")
    assert metrics[-1]["units_per_trajectory"] == 3  # 5 trainable steps -> 2 + 2 + 1
    assert trainer.parts.loss.combine == "sum"


def test_non_finite_reward_is_an_error_naming_reward_and_prompt(toy_overrides, tmp_path):
    from genrl import rewards

    @rewards.register("nan_for_test")
    class NaNReward:
        name = "nan_for_test"

        def __call__(self, images, prompts):
            out = images.mean((1, 2, 3))
            out[1] = float("nan")
            return out

    cfg = config.load(overrides=toy_overrides + ["reward.name=nan_for_test", "log.eval_at_start=false"])
    with pytest.raises(rewards.RewardError, match="reward 'nan_for_test' returned nan for prompt"):
        Trainer(cfg).run()


def test_same_seed_same_initial_adapter_whatever_the_global_rng():
    """LoRA's random init comes from the run's seed, not from the process: reruns and the processes of a
    multi-process run start from one set of weights (the global generator starts at random per process)."""
    from genrl.build import build_model

    lora = ["model.options={finetune: lora}"]  # the default fine-tunes fully: no random init to check
    cfg = config.load("shapeworld", lora)

    def initial_weights():
        torch.seed()  # whatever state the process is in
        return [p.detach().clone() for p in build_model(cfg).trainable_parameters()]

    first, second = initial_weights(), initial_weights()
    assert any(p.abs().sum() > 0 for p in first)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    other = [p.detach() for p in build_model(config.load("shapeworld", [*lora, "seed=1"])).trainable_parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_learning_rate_schedules():
    from genrl.trainer import learning_rate

    train = config.TrainConfig(lr=1e-3, updates=100)
    assert [learning_rate(train, u) for u in (0, 50, 99)] == [1e-3] * 3
    train.lr_schedule = "cosine"
    lrs = [learning_rate(train, u) for u in range(100)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[50] == pytest.approx(5e-4) and 0 < lrs[-1] < 1e-5
    assert all(a > b for a, b in itertools.pairwise(lrs))
    train.warmup = 4
    assert [learning_rate(train, u) / lrs[u] for u in range(6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])


def test_the_trainer_follows_the_schedule_and_resumes_on_it(toy_overrides, tmp_path, capsys):
    from genrl.trainer import learning_rate

    schedule = ["train.lr_schedule=cosine", "train.warmup=1", "train.updates=4"]
    straight = config.load(overrides=toy_overrides + schedule + [f"run_dir={tmp_path / 'a'}"])
    Trainer(straight).run()
    logged = [m["lr"] for m in read_metrics(tmp_path / "a")]
    assert logged == pytest.approx([learning_rate(straight.train, u) for u in range(4)])
    assert logged[0] < logged[1] > logged[2] > logged[3]  # warm-up, then the decay
    interrupted = config.load(overrides=toy_overrides + schedule + [f"run_dir={tmp_path / 'b'}"])
    trainer = Trainer(interrupted)
    iteration = trainer.iteration

    def interrupted_after_two():  # as Ctrl-C during update 2 would
        metrics = iteration()
        trainer._stop_requested = metrics["update"] == 2
        return metrics

    trainer.iteration = interrupted_after_two
    assert trainer.run()["interrupted_at"] == 2
    assert cli.main(["train", "--resume", str(tmp_path / "b"), "train.updates=6"]) == 2  # would move the decay's end
    assert "cosine learning-rate schedule ends at train.updates=4" in capsys.readouterr().err
    assert cli.main(["train", "--resume", str(tmp_path / "b")]) == 0
    assert [m["lr"] for m in read_metrics(tmp_path / "b")] == logged


def test_cuda_runs_keep_attention_off_the_cudnn_backend():
    """cuDNN's SDPA backward gave NaN gradients for FLUX in bf16 on an H100 (README, GPU check)."""
    from genrl.trainer import avoid_cudnn_attention

    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        torch.backends.cuda.enable_cudnn_sdp(True)
        avoid_cudnn_attention("cpu")
        assert torch.backends.cuda.cudnn_sdp_enabled()
        avoid_cudnn_attention("cuda:1")
        assert not torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)
