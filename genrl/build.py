"""From a Config to the objects of a run: model, reward, algorithm, env, policy, objective.

    from genrl import config, build
    parts = build.build(config.load(overrides=["algorithm=flow_grpo"]))
    rollout = parts.env.rollout(policy=parts.policy)      # TensorDict [N, K], the reward at the last step

The composition root: the one module that knows every layer below the trainer, including
where the tiny random-weight stand-ins of real models and rewards live (`genrl.testing`,
for `genrl bench --dry-run` and the tests).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch

from genrl import algorithms, models, rewards
from genrl.advantages import ADVANTAGES
from genrl.config import Config, ConfigError
from genrl.config_io import check_options
from genrl.envs import DenoisingEnv, PromptSampler
from genrl.envs.structures import chain_calls, check_budget
from genrl.models.base import ModelAdapter
from genrl.objective import Objective
from genrl.policy import ModelCalls
from genrl.prompts import check_prompts, numbered_prompts, prompt_checks
from genrl.rewards.video import check_reward_inputs
from genrl.sharding import Sharding, shard_denoiser

# Names registered by genrl.testing on import: real adapters and rewards on tiny random weights.
TESTING_PREFIX, TESTING_MODULE = "tiny-random-", "genrl.testing"


@dataclass
class Components:
    config: Config
    adapter: ModelAdapter
    reward: object
    algorithm: algorithms.Algorithm
    sigmas: torch.Tensor  # [K + 1]
    env: DenoisingEnv
    policy: torch.nn.Module  # ProbabilisticActor, the sampler of rollouts
    objective: Objective  # the algorithm's
    calls: ModelCalls  # every model evaluation of the policy and the objective: the run's NFEs
    train_prompts: list[str]
    eval_prompts: list[str]

    @property
    def loss(self) -> Objective:
        return self.objective


def build_algorithm(cfg: Config) -> algorithms.Algorithm:
    """The selected algorithm with its options; names in its options (grouping, advantage) checked."""
    options = cfg.algo
    if hasattr(options, "grouping"):  # the GRPO family's timestep grouping
        try:
            strategy = algorithms.grouping.get(options.grouping)
        except KeyError as err:
            raise ConfigError(f"{cfg.algorithm}.grouping={options.grouping!r}: {err.args[0]}") from None
        # the options it takes, of their types and in their ranges (genrl.config_io.check_options)
        check_options(strategy, options.grouping_options, f"{cfg.algorithm}.grouping_options", skip=1)
    if hasattr(options, "advantage") and options.advantage not in ADVANTAGES:
        raise ConfigError(f"{cfg.algorithm}.advantage={options.advantage!r} is not allowed: choose one of {', '.join(ADVANTAGES.names())}")
    return algorithms.get(cfg.algorithm)(options, cfg.sampling.num_steps)


def check_rollout_budget(cfg: Config, structure, nfe_per_velocity: int = 1) -> None:
    """train.nfe_budget must pay for one update's rollout: the budget is looked at after each update, so a
    smaller one still ran a whole update and overshot it. `structure`: the algorithm's rollout tree, None
    for chains; `nfe_per_velocity` 1 before the model is loaded gives a lower bound (CFG counts 2)."""
    t = cfg.train
    if structure is not None:
        check_budget(structure(0), t.prompts_per_update, nfe_per_velocity, t.nfe_budget)
        return
    rollout = chain_calls(cfg.sampling.num_steps, t.group_size) * t.prompts_per_update * nfe_per_velocity
    if t.nfe_budget is not None and t.nfe_budget < rollout:
        cfg_factor = f" × {nfe_per_velocity} (guidance)" if nfe_per_velocity > 1 else ""
        raise ConfigError(f"train.nfe_budget={t.nfe_budget} is not allowed: one update's rollout alone evaluates the "
                          f"model {rollout} times (train.prompts_per_update × train.group_size × sampling.num_steps "
                          f"= {t.prompts_per_update} × {t.group_size} × {cfg.sampling.num_steps}{cfg_factor}) and the "
                          f"budget is checked after each update: give at least {rollout}, or null for no budget")


def _import_testing_names(name: str) -> None:
    if name.startswith(TESTING_PREFIX):
        importlib.import_module(TESTING_MODULE)


def build_model(cfg: Config, announce: bool = True) -> ModelAdapter:
    """The model of `cfg.model`, on `cfg.device`, compiled with model.compile (`announce`: say so)."""
    # LoRA's initialisation draws from the global generator, whose start is random per process:
    # seeding here makes a run reproducible and gives every process of a multi-process run one replica.
    torch.manual_seed(cfg.seed)
    _import_testing_names(cfg.model.name)
    try:
        adapter = models.load(cfg.model.name, **cfg.model.options)
    except KeyError as err:
        raise ConfigError(f"model.name={cfg.model.name!r}: {err.args[0]}") from None
    except TypeError as err:
        raise ConfigError(f"model.options {cfg.model.options!r} rejected by {cfg.model.name!r}: {err}") from None
    return compile_if_asked(cfg, adapter.to(cfg.device), announce)


def compile_if_asked(cfg: Config, adapter: ModelAdapter, announce: bool = True) -> ModelAdapter:
    """With model.compile, every call of the adapter's transformers goes through torch.compile, compiled on
    first use (genrl.models.finetune.CompiledModules: after sharding, too, the modules are the ones compiled)."""
    if not cfg.model.compile or getattr(adapter, "_compiled_denoisers", None) is not None:
        return adapter
    if not hasattr(adapter, "compile_denoiser"):
        raise ConfigError(f"model.compile=true: model {cfg.model.name!r} ({type(adapter).__name__}) has no denoiser to "
                          "compile (adapters on genrl.models.finetune.FinetunedTransformer have one: tiny, tiny_video, "
                          "sd3, flux, wan); set model.compile=false")
    adapter.compile_denoiser()
    if announce:
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        print(f"genrl: model.compile is on: the denoiser is torch.compiled in its first calls (counted in the run's "
              f"time), inductor's cache {cache_dir()} reused across runs", flush=True)
    return adapter


def build_reward(cfg: Config):
    _import_testing_names(cfg.reward.name)
    try:
        return rewards.load(cfg.reward.name, **cfg.reward.options)
    except KeyError as err:
        raise ConfigError(f"reward.name={cfg.reward.name!r}: {err.args[0]}") from None
    except TypeError as err:
        raise ConfigError(f"reward.options {cfg.reward.options!r} rejected by {cfg.reward.name!r}: {err}") from None


def build(cfg: Config, adapter: ModelAdapter | None = None, reward=None, shard: tuple[int, int] = (0, 1),
          sharding: Sharding | None = None, env_reward: bool = True) -> Components:
    """Everything a run needs, built and checked before anything is written to disk.

    `shard` (rank, processes): this process's slice of every batch. `sharding`: the denoiser is
    sharded (genrl.sharding) before the policy and the objective are made, so that what they
    keep of its parameters (an "old" policy, say) is sharded like them.
    With `env_reward` the env decodes and scores its final latents (`("next", "reward")` at the last
    step, the reward's plain call: no per-group normalisation), so that torchrl collectors gather
    rewarded trajectories. The trainer builds without it: it decodes and scores the rollout itself
    (images for the grids, per-group normalisation of a `multi` reward), and would otherwise decode
    and score every batch twice.
    """
    algorithm = build_algorithm(cfg)
    train_numbered = numbered_prompts(cfg.prompts.train)
    eval_numbered = numbered_prompts(cfg.prompts.eval)
    adapter = compile_if_asked(cfg, adapter, shard[0] == 0) if adapter is not None else build_model(cfg, shard[0] == 0)
    reward = reward if reward is not None else build_reward(cfg)
    # images or clips [N, F, 3, H, W]: an image reward on a video model needs a reduction over frames
    check_reward_inputs(reward, adapter.latent_shape, cfg.model.name)
    # a prompt the model cannot encode or the reward cannot score fails here, not mid-run
    check_prompts(train_numbered, "prompts.train", prompt_checks(reward, adapter))
    check_prompts(eval_numbered, "prompts.eval", prompt_checks(reward, adapter))
    if cfg.train.prompts_per_update > len(train_numbered):  # a batch would hold a prompt twice
        raise ConfigError(f"train.prompts_per_update={cfg.train.prompts_per_update} is more than the "
                          f"{len(train_numbered)} prompts of prompts.train={cfg.prompts.train!r}: give at most "
                          f"{len(train_numbered)}, or more prompts")
    train_prompts = [prompt for _, prompt in train_numbered]
    eval_prompts = [prompt for _, prompt in eval_numbered]
    sigmas = algorithm.sigmas(cfg.shift_for(adapter))
    structure = algorithm.rollout_structure(cfg.train.group_size)  # None: chains; else trees (docs/trees.md)
    check_rollout_budget(cfg, structure, adapter.nfe_per_velocity)
    env = DenoisingEnv(
        adapter,
        PromptSampler(train_prompts, cfg.train.prompts_per_update, seed=cfg.seed),
        sigmas,
        group_size=cfg.train.group_size,
        shared_noise=algorithm.shared_noise,
        reward=reward if env_reward else None,
        seed=cfg.seed,
        device=cfg.device,
        shard=shard,
        structure=structure,
    )
    if sharding is not None:
        shard_denoiser(adapter, sharding)
    calls = ModelCalls()
    policy = algorithm.make_policy(adapter, sigmas.to(cfg.device), micro_batch=cfg.sampling.micro_batch, calls=calls)
    objective = algorithm.make_objective(policy, adapter)
    return Components(cfg, adapter, reward, algorithm, sigmas, env, policy, objective, calls, train_prompts, eval_prompts)
