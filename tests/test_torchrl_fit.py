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
