"""The env built from a config carries its reward, so torchrl's own collector gathers rewarded
trajectories; the trainer's env does not, so a training update scores its images once."""

import torch
from torchrl.collectors import Collector

from genrl import build, config, keys, rewards
from genrl.trainer import Trainer

CHEAP = ["train.prompts_per_update=2", "train.group_size=2", "train.minibatches=1", "sampling.num_steps=3",
         "chunk_grpo.sde_window=null", "sampling.micro_batch=4", "reward.name=shapeeval",
         "reward.options={mode: partial}"]  # fmt: skip


def test_a_torchrl_collector_gathers_the_rewards_of_the_configs_reward():
    parts = build.build(config.load(overrides=CHEAP))  # the shipped tiny ShapeWorld model
    n, k = parts.env.batch_size[0], parts.env.num_steps
    collector = Collector(parts.env, parts.policy, frames_per_batch=n * k, total_frames=2 * n * k,
                          auto_register_policy_transforms=False)
    batches = list(collector)
    collector.shutdown()
    assert len(batches) == 2
    for batch in batches:
        assert batch.batch_size == (n, k)  # one trajectory per row: the env resets after its last step
        reward, done = batch["next", "reward"].squeeze(-1), batch["next", "done"].squeeze(-1)
        assert done[:, -1].all() and not done[:, :-1].any()
        assert (reward[:, :-1] == 0).all()
        prompts = [parts.train_prompts[i] for i in batch[keys.PROMPT_INDEX][:, 0].tolist()]
        images = parts.adapter.decode(batch[keys.ACTION][:, -1])
        torch.testing.assert_close(reward[:, -1], parts.reward(images, prompts))
    assert not torch.equal(batches[0][keys.LATENTS][:, 0], batches[1][keys.LATENTS][:, 0])  # fresh noise per batch
    assert any((batch["next", "reward"][:, -1] > 0).any() for batch in batches)  # partial credit (seeded)


def test_the_trainer_scores_each_batch_once(toy_overrides):
    calls = []

    @rewards.register("counted_brightness_for_test")
    class Counted:
        def __call__(self, images, prompts):
            calls.append(len(prompts))
            return images.mean((1, 2, 3))

    cfg = config.load(overrides=toy_overrides + ["reward.name=counted_brightness_for_test"])
    assert build.build(cfg).env.reward_fn is not None
    trainer = Trainer(cfg)
    assert trainer.parts.env.reward_fn is None
    trainer.iteration()
    assert calls == [cfg.train.prompts_per_update * cfg.train.group_size]


def rollout_with_advantage(parts, trailing: bool = False):
    with torch.no_grad():
        rollout = parts.env.rollout(max_steps=parts.env.num_steps, policy=parts.policy)
    n, k = rollout.batch_size
    advantage = torch.linspace(-1.5, 1.5, n)[:, None].expand(n, k)  # per trajectory, seen along K
    rollout.set(keys.ADVANTAGE, advantage.unsqueeze(-1) if trailing else advantage)
    return rollout


def test_torchrl_s_clip_ppo_loss_trains_on_the_n_by_k_rollout():
    """ClipPPOLoss takes the [N, K] rollout as it is (advantage [N, K, 1], torchrl's convention):
    the same loss and gradient as on the flattened rollout; the ODE steps (s = 0, log-prob 0)
    have ratio 1 and no gradient."""
    from torchrl.objectives import ClipPPOLoss

    parts = build.build(config.load(overrides=CHEAP + ["chunk_grpo.sde_window=[0, 2]"]))
    rollout = rollout_with_advantage(parts, trailing=True)
    loss = ClipPPOLoss(parts.policy, critic_network=None, clip_epsilon=0.2, entropy_bonus=False)
    loss.set_keys(advantage=keys.ADVANTAGE, sample_log_prob=keys.LOG_PROB, action=keys.ACTION)
    params = parts.adapter.trainable_parameters()
    grads = []
    for batch in (rollout.clone(), rollout.clone().reshape(-1)):
        out = loss(batch)
        grads.append(torch.autograd.grad(out["loss_objective"], params))
        assert out["loss_objective"].isfinite()
    assert any(g.abs().sum() > 0 for g in grads[0])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_grpo_loss_reads_a_whole_rollout_as_step_level_units():
    """GRPOLoss on the [N, K] rollout = GRPOLoss on its SDE steps as rows [S], each its own unit,
    which is the per-step surrogate mean over those steps: −A·ρ, with ρ = 1 before any update."""
    from genrl.loss import GRPOLoss

    parts = build.build(config.load(overrides=CHEAP + ["chunk_grpo.sde_window=[0, 2]"]))
    rollout = rollout_with_advantage(parts)
    objective = GRPOLoss(parts.policy, clip_range=0.2)
    whole = objective(rollout)
    n, k = rollout.batch_size
    sde = rollout.get(keys.SCALE) > 0
    assert sde.sum() == 2 * n  # the window's two steps per trajectory
    rows = rollout[sde]
    rows.set(keys.UNIT, torch.arange(len(rows)))
    flat = objective(rows)
    assert whole["num_units"] == flat["num_units"] == 2 * n
    torch.testing.assert_close(whole["loss_policy"], flat["loss_policy"])
    torch.testing.assert_close(whole["loss_policy"], -rollout.get(keys.ADVANTAGE)[sde].mean(), atol=1e-5, rtol=0)
    assert keys.UNIT not in rollout.keys()  # the caller's rollout is left as it was
    # A rollout that carries units trains exactly those: here one chunk of the window per trajectory.
    unit = torch.full((n, k), -1)
    unit[:, :2] = torch.arange(n)[:, None]
    rollout.set(keys.UNIT, unit)
    assert objective(rollout)["num_units"] == n
