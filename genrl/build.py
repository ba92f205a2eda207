"""From a Config to the objects of a run: model, reward, algorithm, env, policy, loss.

    from genrl import config, build
    parts = build.build(config.load(overrides=["algorithm=flow_grpo"]))
    rollout = parts.env.rollout(policy=parts.policy)      # TensorDict [N, K], the reward at the last step
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from genrl import algorithms, dynamics, models, rewards
from genrl.config import Config, ConfigError
from genrl.envs import DenoisingEnv, PromptSampler
from genrl.loss import GRPOLoss
from genrl.models.base import ModelAdapter
from genrl.policy import make_policy
from genrl.prompts import check_prompts, numbered_prompts, prompt_checks


@dataclass
class Components:
    config: Config
    adapter: ModelAdapter
    reward: object
    algorithm: algorithms.Algorithm
    sigmas: torch.Tensor  # [K + 1]
    env: DenoisingEnv
    policy: torch.nn.Module  # ProbabilisticActor
    loss: GRPOLoss
    train_prompts: list[str]
    eval_prompts: list[str]


def _check_options(fn, options: dict, key: str, skip: int = 0) -> None:
    """Reject options a constructor/strategy does not take, naming the config key."""
    params = list(inspect.signature(fn).parameters.values())[skip:]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    allowed = {p.name for p in params}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(f"{key} has unknown option(s) {unknown}; allowed: {sorted(allowed) or 'none'}")


def build_algorithm(cfg: Config) -> algorithms.Algorithm:
    options = cfg.algo
    try:
        strategy = algorithms.grouping.get(options.grouping)
    except KeyError as err:
        raise ConfigError(f"{cfg.algorithm}.grouping={options.grouping!r}: {err.args[0]}") from None
    _check_options(strategy, options.grouping_options, f"{cfg.algorithm}.grouping_options", skip=1)
    from genrl.advantages import ADVANTAGES

    if options.advantage not in ADVANTAGES:
        raise ConfigError(f"{cfg.algorithm}.advantage={options.advantage!r} is not allowed: choose one of {', '.join(ADVANTAGES.names())}")
    if options.advantage_eps < 0:
        raise ConfigError(f"{cfg.algorithm}.advantage_eps={options.advantage_eps!r} is not allowed: expected a float >= 0")
    if options.clip_range_high is not None and options.clip_range_high <= 0:
        raise ConfigError(f"{cfg.algorithm}.clip_range_high={options.clip_range_high!r} is not allowed: "
                          "expected a positive float, or null for clip_range")
    return algorithms.get(cfg.algorithm)(options, cfg.sampling.num_steps)


def build_model(cfg: Config) -> ModelAdapter:
    # LoRA's initialisation draws from the global generator, whose start is random per process:
    # seeding here makes a run reproducible and gives every process of a multi-process run one replica.
    torch.manual_seed(cfg.seed)
    try:
        adapter = models.load(cfg.model.name, **cfg.model.options)
    except KeyError as err:
        raise ConfigError(f"model.name={cfg.model.name!r}: {err.args[0]}") from None
    except TypeError as err:
        raise ConfigError(f"model.options {cfg.model.options!r} rejected by {cfg.model.name!r}: {err}") from None
    return adapter.to(cfg.device)


def build_reward(cfg: Config):
    try:
        return rewards.load(cfg.reward.name, **cfg.reward.options)
    except KeyError as err:
        raise ConfigError(f"reward.name={cfg.reward.name!r}: {err.args[0]}") from None
    except TypeError as err:
        raise ConfigError(f"reward.options {cfg.reward.options!r} rejected by {cfg.reward.name!r}: {err}") from None


def build(cfg: Config, adapter: ModelAdapter | None = None, reward=None, shard: tuple[int, int] = (0, 1),
          env_reward: bool = True) -> Components:
    """Everything a run needs, built and checked before anything is written to disk.

    With `env_reward` the env decodes and scores its final latents (`("next", "reward")` at the last
    step, the reward's plain call: no per-group normalisation), so that torchrl collectors gather
    rewarded trajectories. The trainer builds without it: it decodes and scores the rollout itself
    (images for the grids, per-group normalisation of a `multi` reward), and would otherwise decode
    and score every batch twice.
    """
    algorithm = build_algorithm(cfg)
    train_numbered = numbered_prompts(cfg.prompts.train)
    eval_numbered = numbered_prompts(cfg.prompts.eval)
    adapter = adapter if adapter is not None else build_model(cfg)
    reward = reward if reward is not None else build_reward(cfg)
    # a prompt the model cannot encode or the reward cannot score fails here, not mid-run
    check_prompts(train_numbered, "prompts.train", prompt_checks(reward, adapter))
    check_prompts(eval_numbered, "prompts.eval", prompt_checks(reward, adapter))
    train_prompts = [prompt for _, prompt in train_numbered]
    eval_prompts = [prompt for _, prompt in eval_numbered]
    o = cfg.algo
    sigmas = dynamics.sigma_schedule(o.schedule, cfg.sampling.num_steps, cfg.shift_for(adapter))
    env = DenoisingEnv(
        adapter,
        PromptSampler(train_prompts, cfg.train.prompts_per_update, seed=cfg.seed),
        sigmas,
        group_size=cfg.train.group_size,
        shared_noise=o.shared_noise,
        reward=reward if env_reward else None,
        seed=cfg.seed,
        device=cfg.device,
        shard=shard,
    )
    policy = make_policy(
        adapter,
        sigmas.to(cfg.device),
        algorithm.stochastic_steps(),
        o.dynamics,
        micro_batch=cfg.sampling.micro_batch,
        logprob_reduce=o.logprob_reduce,
        log_prob_form=algorithm.log_prob_form,
        **algorithm.dynamics_params,
    )
    combine = "mean"  # strategies may ask for "sum"; the loss reads it per update
    loss = GRPOLoss(policy, clip_range=o.clip_range, clip_range_high=o.clip_range_high, beta=o.beta, kl=o.kl,
                    combine=combine, reference=adapter.reference)
    return Components(cfg, adapter, reward, algorithm, sigmas, env, policy, loss, train_prompts, eval_prompts)
