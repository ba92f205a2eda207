"""The clipped-ratio objective of the GRPO family, over optimisation units (docs/architecture.md, "Objectives").

A unit u is a set of steps of one trajectory; its log-ratio ℓ_u combines the
per-step log-ratios (mean: geometric-mean ratio, Chunk-GRPO eq. 7; sum), and

    L = E_u[ max(−A·ρ_u, −A·clip(ρ_u, 1−ε, 1+ε_high)) ] + β·KL,   ρ_u = exp(ℓ_u),

ε_high = ε unless set (Chunk-GRPO's code clips with separate left / right ranges);
KL = mean over latent elements of (μ_θ − μ_ref)² / (2·s_KL²), averaged per unit like
the ratio, with s_KL the step's std ("exact") or Flow-GRPO's noise level ("reference",
see `dynamics.kl_std`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor

from genrl import dynamics, keys
from genrl.objective import Objective
from genrl.policy import dynamics_head, mean_module


def unit_reduce(values: Tensor, unit: Tensor, num_units: int, combine: str = "mean") -> Tensor:
    """Combine per-step values [S] into per-unit values [U] (unit [S] in 0..U−1)."""
    total = torch.zeros(num_units, dtype=values.dtype, device=values.device).index_add(0, unit, values)
    if combine == "sum":
        return total
    if combine != "mean":
        raise ValueError(f"combine must be 'mean' or 'sum', got {combine!r}")
    count = torch.zeros(num_units, dtype=values.dtype, device=values.device).index_add(0, unit, torch.ones_like(values))
    return total / count


def clipped_surrogate(
    log_ratio: Tensor, advantage: Tensor, clip_range: float, clip_range_high: float | None = None
) -> tuple[Tensor, Tensor]:
    """Per-unit PPO loss max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε_high)) and whether the clip was active."""
    high = clip_range if clip_range_high is None else clip_range_high
    ratio = torch.exp(log_ratio)
    unclipped = -advantage * ratio
    clipped = -advantage * torch.clamp(ratio, 1 - clip_range, 1 + high)
    return torch.maximum(unclipped, clipped), (clipped > unclipped)


class GRPOLoss(Objective):
    """Clipped GRPO loss of a flat batch of steps [S] that carry their unit index and advantage.

    It also takes a whole rollout [N, K] (`env.rollout`, a torchrl collector's batch) with an
    advantage per step ([N, K], or [N, K, 1] as torchrl's losses want it): its trained rows are
    those with a unit ≥ 0 when it carries `unit`, else every SDE step (s > 0), each its own unit
    (Flow-GRPO's step-level ratios).

    Reads the stored action and old log-prob, re-runs the actor for the new
    log-prob (and the reference for KL when β > 0), returns a TensorDict whose
    `loss_*` entries are summed by the caller and whose other entries are
    detached diagnostics. The loss is a mean over the units of the batch (the
    caller weights batches by their number of units). Every option is fixed at
    construction; `set_keys(advantage=...)` renames what it reads and rejects a
    name that is not one of `_AcceptedKeys`.
    """

    @dataclass
    class _AcceptedKeys:
        action: str = keys.ACTION
        log_prob: str = keys.LOG_PROB
        advantage: str = keys.ADVANTAGE
        unit: str = keys.UNIT
        loc: str = keys.LOC
        scale: str = keys.SCALE
        step: str = keys.STEP

    def __init__(
        self, actor, clip_range: float = 1e-4, beta: float = 0.0, combine: str = "mean", reference=None,
        clip_range_high: float | None = None, kl: str = "exact",
    ):
        super().__init__()
        if combine not in ("mean", "sum"):
            raise ValueError(f"combine must be 'mean' or 'sum', got {combine!r}")
        if kl not in dynamics.KL_FORMS:
            raise ValueError(f"kl must be one of {dynamics.KL_FORMS}, got {kl!r}")
        self.actor = actor
        self.clip_range = clip_range
        self.clip_range_high = clip_range_high
        self.beta = beta
        self.kl = kl
        self.combine = combine  # how a unit's per-step log-ratios make its log-ratio
        self.reference = reference  # context manager factory giving the frozen base policy

    def trained_rows(self, rollout: TensorDictBase) -> TensorDictBase:
        """The rows [S] of a rollout [N, K] that this objective trains (see the class docstring)."""
        k = self.tensor_keys
        if k.unit in rollout.keys():
            return rollout[rollout.get(k.unit) >= 0]
        rollout = rollout.clone(False)  # the caller's rollout is not written into
        rollout.set(k.unit, torch.arange(rollout.numel(), device=rollout.device).reshape(rollout.batch_size))
        return rollout[rollout.get(k.scale) > 0]

    @property
    def in_keys(self) -> list:
        """What it reads from its rows: the actor's inputs, the stored action and old log-prob, the
        advantage and the unit (a training batch copies no more than these)."""
        k = self.tensor_keys
        return list(dict.fromkeys([*self.actor.in_keys, k.action, k.log_prob, k.advantage, k.unit, k.step]))

    def forward(self, td: TensorDictBase) -> TensorDict:
        k = self.tensor_keys
        if td.batch_dims > 1:
            td = self.trained_rows(td)
        dist = self.actor.get_dist(td)
        new_log_prob = dist.log_prob(td.get(k.action))  # [S]
        step_log_ratio = new_log_prob - td.get(k.log_prob)
        unit = td.get(k.unit)
        units, unit = torch.unique(unit, return_inverse=True)
        num_units = len(units)
        unit_log_ratio = unit_reduce(step_log_ratio, unit, num_units, self.combine)  # [U]
        # every step of a unit carries its trajectory's advantage
        step_advantage = td.get(k.advantage).float().reshape(len(unit))
        advantage = torch.zeros(num_units, device=unit.device).scatter(0, unit, step_advantage)
        policy_loss, clipped = clipped_surrogate(unit_log_ratio, advantage, self.clip_range, self.clip_range_high)
        out = {"loss_policy": policy_loss.mean()}
        if self.beta > 0:
            chain = mean_module(self.actor)
            with torch.no_grad(), self.reference():
                ref_td = chain(td.select(*chain.in_keys).clone(False))
            head = dynamics_head(self.actor)
            sigma, sigma_next = head.step_sigmas(td.get(k.step))
            kl_std = dynamics.kl_std(self.kl, head.kind, dist.scale, sigma, sigma_next)
            step_kl = dynamics.kl_to_reference(dist.loc, ref_td.get(k.loc), kl_std)
            kl = unit_reduce(step_kl, unit, num_units, "mean")
            out["loss_kl"] = self.beta * kl.mean()
            out["kl"] = kl.mean().detach()
        ratio = torch.exp(unit_log_ratio.detach())
        out.update(
            ratio_mean=ratio.mean(),
            ratio_min=ratio.min(),
            ratio_max=ratio.max(),
            clip_frac=clipped.float().mean(),
            # k3 estimator of KL(π_old ‖ π_θ) per unit: (ρ − 1) − log ρ ≥ 0
            approx_kl=((ratio - 1) - unit_log_ratio.detach()).mean(),
            num_units=torch.tensor(float(num_units)),
        )
        return TensorDict(out, batch_size=[])
