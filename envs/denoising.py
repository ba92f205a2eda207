"""Text-to-image denoising as a torchrl environment whose steps are timesteps (docs/architecture.md, "The rollout").

State x_k (latent), step k, prompt condition c; action x_{k+1}; the transition
is x ← action; the reward is 0 until the last step, where the final latent is
decoded and scored (when the env has a reward; a trainer may score outside).

`rollout` returns the shared contract: a TensorDict [N, R] whose per-step
entries are dense, whose latents are one tensor [N, R + 1, ...] (each latent
stored once) and whose per-trajectory context (prompt embeddings, group id,
noise seed) is stored once per trajectory, a stride-0 view along R. The
deterministic tail after the last stochastic step is one row (R = K without an
SDE window): see `stack_steps`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor
from torchrl.data import Bounded, Composite, Unbounded
from torchrl.envs import EnvBase
from torchrl.envs.utils import step_mdp

from genrl import dynamics, keys
from genrl.errors import ConfigError, PromptError
from genrl.models.base import ModelAdapter
from genrl.noise import initial_noise
from genrl.envs.layout import attach_latents
from genrl.envs.tree import tree_rollout
from genrl.rewards import checked_call

_TRAJECTORY_IDS = (keys.GROUP_ID, keys.NOISE_SEED, keys.STEP_SEED, keys.PROMPT_INDEX)


class PromptSampler:
    """Draws `per_batch` prompts per reset without replacement, epoch after epoch, from a seeded generator."""

    def __init__(self, prompts: Sequence[str], per_batch: int, seed: int = 0):
        if not prompts:
            raise PromptError("the prompt set is empty: give at least one prompt")
        self.prompts = list(prompts)
        self.per_batch = per_batch
        self.generator = torch.Generator().manual_seed(seed)
        self._order: list[int] = []

    def next_batch(self) -> list[int]:
        picked = []
        while len(picked) < self.per_batch:
            if not self._order:
                self._order = torch.randperm(len(self.prompts), generator=self.generator).tolist()
            picked.append(self._order.pop())
        return picked

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": list(self._order)}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self._order = list(state["order"])


class DenoisingEnv(EnvBase):
    """Batch of N = prompts_per_batch × group_size denoising trajectories of `num_steps` steps."""

    batch_locked = True

    def __init__(
        self,
        adapter: ModelAdapter,
        prompts: Sequence[str] | PromptSampler,
        sigmas: torch.Tensor,
        *,
        group_size: int = 4,
        prompts_per_batch: int = 2,
        shared_noise: bool = False,
        reward: Callable | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        shard: tuple[int, int] = (0, 1),
        structure: Callable[[int], object] | None = None,
    ):
        """`structure`: rollout index -> a sampling structure (genrl.envs.structures) or None for the
        usual independent chains; None (the default) always samples chains."""
        sampler = prompts if isinstance(prompts, PromptSampler) else PromptSampler(prompts, prompts_per_batch, seed)
        rank, world = shard
        if sampler.per_batch % world:
            raise ConfigError(
                f"{sampler.per_batch} prompts per batch cannot be split whole over {world} processes: "
                "make train.prompts_per_update a multiple of the number of processes"
            )
        self.shard = (rank, world)
        n = sampler.per_batch * group_size // world  # this process's trajectories
        super().__init__(device=device, batch_size=torch.Size([n]))
        self.adapter = adapter
        self.sampler = sampler
        self.sigmas = sigmas.float().to(device)  # [K + 1]
        self.num_steps = len(sigmas) - 1
        self.group_size = group_size
        self.shared_noise = shared_noise
        self.reward_fn = reward
        self.batch_prompts: list[str] = []
        self.structure, self.rollouts = structure, 0  # rollouts: the index a moving structure reads
        self._make_spec(n)
        self._set_seed(seed)

    # -- specs ---------------------------------------------------------------------
    def _make_spec(self, n: int) -> None:
        latent_shape = tuple(self.adapter.latent_shape)
        probe = self.adapter.encode([self.sampler.prompts[0]])
        context = Composite(
            {k: Unbounded(shape=(n, *v.shape[1:]), dtype=v.dtype) for k, v in probe.items(include_nested=True, leaves_only=True)},
            shape=(n,),
        )
        ids = {k: Unbounded(shape=(n,), dtype=torch.int64) for k in _TRAJECTORY_IDS}
        self.observation_spec = Composite(
            {
                keys.LATENTS: Unbounded(shape=(n, *latent_shape), dtype=torch.float32),
                keys.STEP: Bounded(low=0, high=self.num_steps, shape=(n,), dtype=torch.int64),
                keys.SIGMA: Bounded(low=0.0, high=1.0, shape=(n,), dtype=torch.float32),
                keys.CONTEXT: context,
                keys.L1_REL: Unbounded(shape=(n, self.num_steps), dtype=torch.float32),
                **ids,
            },
            shape=(n,),
        )
        self.action_spec = Unbounded(shape=(n, *latent_shape), dtype=torch.float32)
        self.reward_spec = Unbounded(shape=(n, 1), dtype=torch.float32)
        self.done_spec = Composite(
            {
                keys.DONE: Bounded(0, 1, shape=(n, 1), dtype=torch.bool),
                keys.TERMINATED: Bounded(0, 1, shape=(n, 1), dtype=torch.bool),
            },
            shape=(n,),
        )

    def _set_seed(self, seed: int | None) -> None:
        self.rng = torch.Generator().manual_seed(0 if seed is None else seed)

    # -- what a resumed run needs ----------------------------------------------------------
    def state_dict(self, *args, **kwargs) -> dict:
        """The env's random state: the generator of noise seeds and the prompt sampler's position.

        (Not nn.Module's state_dict: the env holds no trainable state, and the adapter it
        samples with is checkpointed on its own.)
        """
        state = {"rng": self.rng.get_state(), "prompt_sampler": self.sampler.state_dict()}
        return state if self.structure is None else state | {"rollouts": self.rollouts}

    def load_state_dict(self, state: dict, *args, **kwargs) -> None:
        self.rng.set_state(state["rng"])
        self.sampler.load_state_dict(state["prompt_sampler"])
        self.rollouts = state.get("rollouts", 0)

    # -- MDP -------------------------------------------------------------------------
    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        # Every process draws the whole global batch from identical generators and keeps its
        # slice of whole groups: the sampled trajectories do not depend on the process layout.
        g = self.group_size
        rank, world = self.shard
        num_prompts = self.sampler.per_batch
        n_global = num_prompts * g
        prompt_idx = torch.tensor(self.sampler.next_batch(), dtype=torch.int64)  # [P]
        seeds = torch.randint(0, 2**62, (num_prompts if self.shared_noise else n_global,), generator=self.rng)
        if self.shared_noise:
            seeds = seeds.repeat_interleave(g)
        # The step noise of a trajectory comes from its own seed, so it does not depend on
        # the batch or process a trajectory is sampled in.
        step_seeds = torch.randint(0, 2**62, (n_global,), generator=self.rng)
        n = n_global // world
        rows = slice(rank * n, (rank + 1) * n)
        local_prompts = prompt_idx[rank * num_prompts // world : (rank + 1) * num_prompts // world]
        self.batch_prompts = [self.sampler.prompts[i] for i in local_prompts.repeat_interleave(g).tolist()]
        with torch.no_grad():
            cond = self.adapter.encode([self.sampler.prompts[i] for i in local_prompts.tolist()])  # once per prompt
        cond = cond.to(self.device)[torch.arange(len(local_prompts)).repeat_interleave(g)]  # once per trajectory
        latents = initial_noise(seeds[rows], self.adapter.latent_shape).to(self.device)
        return TensorDict(
            {
                keys.LATENTS: latents,
                keys.STEP: torch.zeros(n, dtype=torch.int64, device=self.device),
                keys.SIGMA: self.sigmas[0].expand(n).clone(),
                keys.CONTEXT: cond,
                keys.L1_REL: torch.zeros(n, self.num_steps, device=self.device),
                keys.GROUP_ID: torch.arange(num_prompts).repeat_interleave(g)[rows].to(self.device),
                keys.NOISE_SEED: seeds[rows].to(self.device),
                keys.STEP_SEED: step_seeds[rows].to(self.device),
                keys.PROMPT_INDEX: prompt_idx.repeat_interleave(g)[rows].to(self.device),
                keys.DONE: torch.zeros(n, 1, dtype=torch.bool, device=self.device),
                keys.TERMINATED: torch.zeros(n, 1, dtype=torch.bool, device=self.device),
            },
            batch_size=self.batch_size,
            device=self.device,
        )

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get(keys.ACTION)
        # L1rel of every step so far: the rollout keeps the whole profile even where it keeps no latents
        l1_rel = tensordict.get(keys.L1_REL, None)
        l1_rel = torch.zeros(action.shape[0], self.num_steps, device=self.device) if l1_rel is None else l1_rel.clone()
        k = tensordict.get(keys.STEP).reshape(-1, 1)
        l1_rel.scatter_(1, k, dynamics.relative_l1(tensordict.get(keys.LATENTS), action).unsqueeze(1))
        step = tensordict.get(keys.STEP) + 1
        done = (step >= self.num_steps).unsqueeze(-1)
        reward = torch.zeros(step.shape[0], 1, device=self.device)
        if self.reward_fn is not None and bool(done.all()):
            with torch.no_grad():
                images = self.adapter.decode(action)
            reward = checked_call(self.reward_fn, images, self.batch_prompts).unsqueeze(-1).to(self.device)
        out = {
            keys.LATENTS: action,
            keys.STEP: step,
            keys.SIGMA: self.sigmas[step.clamp(max=self.num_steps)],
            keys.CONTEXT: tensordict.get(keys.CONTEXT),
            keys.L1_REL: l1_rel,
            keys.REWARD: reward,
            keys.DONE: done,
            keys.TERMINATED: done.clone(),
        }
        out.update({k: tensordict.get(k) for k in _TRAJECTORY_IDS})
        return TensorDict(out, batch_size=tensordict.batch_size, device=self.device)

    # -- the rollout contract ------------------------------------------------------------
    def rollout(
        self,
        max_steps: int | None = None,
        policy=None,
        callback=None,
        *,
        auto_reset: bool = True,
        tensordict: TensorDictBase | None = None,
        keep_tail: bool = False,
        **ignored,
    ) -> TensorDictBase:
        """A rollout [N, R] (see `stack_steps`): each latent stored once, per-trajectory entries once
        (stride 0 along R), the deterministic tail after the last stochastic step as one row from its
        first latent to the final sample, unless `keep_tail`.

        torchrl's own rollout stacks every entry of every step densely, which would copy the prompt
        embeddings K times and each latent three times (state, action, next state); this loop keeps
        the latents and the per-step scalars, and lets go of what a step computed on the way (the
        velocity, the mean μ_θ).
        """
        if self.structure is not None:  # trees (genrl.envs.tree) where the rollout's structure forks
            structure, self.rollouts = self.structure(self.rollouts), self.rollouts + 1
            if structure is not None:
                return tree_rollout(self, policy, structure)
        max_steps = self.num_steps if max_steps is None else max_steps
        td = self.reset() if auto_reset or tensordict is None else tensordict
        once = td.select(*_ONCE_PER_TRAJECTORY, strict=False)
        samples, records = [td.get(keys.LATENTS)], []
        for _ in range(max_steps):
            td = policy(td) if policy is not None else self.rand_action(td)
            td = self.step(td)
            samples.append(td.get((keys.NEXT, keys.LATENTS)))
            records.append(td.exclude(*_NOT_PER_STEP))
            once.set(keys.L1_REL, td.get((keys.NEXT, keys.L1_REL)))  # of every step so far
            if callback is not None:
                callback(self, td)
            if bool(td.get((keys.NEXT, keys.DONE)).any()):
                break
            td = step_mdp(td, keep_other=True, exclude_action=False)
            td = td.exclude(keys.ACTION, keys.LOC, keys.SCALE, keys.LOG_PROB, keys.VELOCITY)
        return stack_steps(once, records, samples, keep_tail)

    @property
    def prompts(self) -> list[str]:
        return list(self.batch_prompts)


_ONCE_PER_TRAJECTORY = (keys.CONTEXT, keys.L1_REL, *_TRAJECTORY_IDS)
# Not kept per step: the latents (kept once, in `samples`), what the policy computed on the way
# (μ_θ and v_θ are never read from a rollout: an objective re-evaluates them), per-trajectory entries.
_NOT_PER_STEP = (keys.LATENTS, keys.ACTION, keys.LOC, keys.VELOCITY, *_ONCE_PER_TRAJECTORY,
                 (keys.NEXT, keys.LATENTS), *[(keys.NEXT, key) for key in _ONCE_PER_TRAJECTORY])


def tail_start(records: list[TensorDictBase]) -> int:
    """The first step of the deterministic tail: the steps from it to the last have scale 0 in every
    trajectory (the ODE after an SDE window), or the last step if it is stochastic or has no scale."""
    start = len(records)
    while start > 0 and _deterministic(records[start - 1]):
        start -= 1
    return min(start, len(records) - 1)


def _deterministic(record: TensorDictBase) -> bool:
    scale = record.get(keys.SCALE, None)
    return scale is not None and not bool(scale.any())


def stack_steps(once: TensorDictBase, records: list[TensorDictBase], samples: list[Tensor],
                keep_tail: bool = False) -> TensorDictBase:
    """The rollout [N, R] from the per-trajectory entries `once` [N], the steps' scalars `records`
    (K TensorDicts [N]) and the latents `samples` (x_0 … x_K, K + 1 tensors [N, ...]).

    Rows 0 … T−1 are steps 0 … T−1, with T the first step of the deterministic tail (`tail_start`);
    row T is the tail, steps T … K−1, as one row: its first step's entries (step T, σ_T, scale 0,
    log-prob 0) and its last step's `next` (σ_K, the reward, done). Without an SDE window the
    tail is the last step alone and R = K. The latents are one tensor x [N, R + 1, ...] holding
    x_0 … x_T and x_K: `latents` is x[:, :-1], `action` and ("next", "latents") x[:, 1:]. The
    tail's intermediate latents are never trained on, and are not kept.

    Per-trajectory entries, L1rel [N, K] of every step among them, are stored once and seen along
    R as stride-0 views.
    """
    last = len(records) - 1
    tail = last if keep_tail else tail_start(records)
    rows = records[:tail] + [_one_row(records[tail:])]
    out = torch.stack(rows, dim=1)  # [N, R]
    x = torch.stack(samples[: tail + 1] + [samples[-1]], dim=1)  # [N, R + 1, ...]
    return attach_latents(out, once, x)


def _one_row(steps: list[TensorDictBase]) -> TensorDictBase:
    """Consecutive deterministic steps as one row: the first step's entries, the last step's `next`."""
    if len(steps) == 1:
        return steps[0]
    row = steps[0].clone(recurse=False)
    row.set(keys.NEXT, steps[-1].get(keys.NEXT))
    return row
