"""Advantage Weighted Matching: "Advantage Weighted Matching: Aligning RL with Pretraining in Diffusion
Models", Xue et al., arXiv 2509.25050.

- Sampler: any solver, CFG-free, on-policy (the current weights); here the probability-flow ODE.
- The loss is pretraining's flow-matching loss with each sample weighted by its advantage: the final
  samples x₀ are re-noised at t drawn from the sampler's own grid, x_t = (1 − t)·x₀ + t·ε, and
  L = mean over rows of Â·ρ_t(e), e = mean (v_θ(x_t) − (ε − x₀))², Â the advantage clipped to ±c and
  divided by c. Policy-gradient methods on the reverse process estimate the same gradient with more
  variance; this one has the variance of pretraining's objective.
- ρ_t(e) = ((e + 10⁻¹⁰)^p − 10⁻¹⁰^p)·t/p ("ghuber", p = 0.25): a robust, t-weighted error; p = 1 is t·e.
- Timesteps: `timesteps` strata of the steps [1, int(K·timestep_fraction)] of the rollout's grid, one
  step drawn uniformly in each per sample (σ_0 = 1 left out: "discrete_wo_init").
- Regularisers: beta·mean((v_θ − v_ref)²) to the frozen base and old_beta·mean((v_θ − v_old)²) to the
  "old" policy, a soft-updated copy: old ← d·old + (1 − d)·θ after each update, d = min(0.001·steps, 0.3).

Where each default comes from (scxue/advantage_weighted_matching at be51372, in advantage_weighted_matching/;
config/dgx_awm.py `geneval_sd3_no_cfg_1node` "the config", scripts/train_sd3_awm.py "the script"):
- ghuber_power 0.25: the config's lines 63-64; the script's compute_log_prob_awm, lines 236-251.
- the loss: the script writes it as −Â·exp(ℓ − sg ℓ), ℓ = −ρ_t(e), clipped at 1 ± 1 (lines 1301-1327,
  clip_range 1 at the config's line 86); on-policy its old ℓ is the detached current one (lines 1282-1284),
  so the ratio is exactly 1 and never clipped, and the gradient is Â·∇ρ_t(e): the loss here, whose value
  is Â·ρ_t(e) instead of −Â. Â: lines 1293-1299 (adv_clip_max 5, advantage_max 1 at the config's line 58).
- timesteps 6, timestep_fraction 0.9, timestep_sampling discrete_wo_init: the config's lines 56, 60, 88;
  the script's lines 1197-1205 (one draw per training micro-batch of 3 samples there, per sample here;
  the PickScore config, line 367, uses "discrete", strata from step 0).
- beta 1e-3: the config's line 55 (kl_weight Uniform, line 57); the script's lines 1330-1340.
- old_beta 1.0: ema_beta and kl_ema_weight Uniform, the config's lines 65-67; the script's lines 1341-1350.
- old_decay_rate 0.001, old_decay_max 0.3: kl_ema_decay_type linear, kl_ema_decay 0.3 (the config's lines
  66 and 68); the script's lines 1409-1419, once per epoch, counting optimizer steps (line 1389); the
  copy starts as the trained weights (lines 650-658). Rollouts use θ: off_policy False (line 69).
- advantage global_std, population std + 1e-4: the config's line 72; flow_grpo/stat_tracking.py 27-28.
- schedule diffusers, shared_noise False: the SD3 pipeline's scheduler grid, one noise per image; the
  script samples with SA-Solver, stochastic for 0.3 ≤ t ≤ 0.9 (noise 0.4, the config's lines 48 and 71),
  this rollout with the Euler ODE. CFG off: guidance_scale 1.0 (line 39), train.cfg False; CFG is the
  model's option here (model.options.guidance_scale).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor

from genrl.algorithms.base import register
from genrl.algorithms.forward_process import ForwardProcess, ForwardProcessOptions, ReNoisedObjective, check, option

TINY = 1e-10  # keeps the power's gradient finite at e = 0


def awm_loss(v: Tensor, target: Tensor, t: Tensor, advantage: Tensor, power: float) -> Tensor:
    """Â·ρ_t(e) per row [S]: e the mean squared error of v [S, C, H, W] to the target ε − x₀, t [S]."""
    error = ((v.double() - target.double()) ** 2).mean(tuple(range(1, v.dim())))
    robust = ((error + TINY) ** power - TINY**power) * t.double() / power
    return (advantage.double() * robust).to(v.dtype)


class AWMLoss(ReNoisedObjective):
    def __init__(self, velocity, old, reference, beta: float, old_beta: float, power: float):
        super().__init__(velocity, old, reference, beta)
        self.old_beta, self.power = old_beta, power

    def forward(self, rows: TensorDictBase) -> TensorDict:
        x0, eps, t, x_t, context = self.re_noised(rows)
        v_old = self.under(self.old.applied, x_t, t, context) if self.old_beta > 0 else None
        v_ref = self.under(self.reference, x_t, t, context) if self.beta > 0 else None
        v = self.velocity(x_t, t, context)
        advantage = rows.get(self.tensor_keys.advantage).float()
        out = {"loss_policy": awm_loss(v, eps - x0, t, advantage, self.power).mean(),
               "flow_error": ((v - (eps - x0)) ** 2).mean().detach(), **self.kl_terms(v, v_ref)}
        if v_old is not None:
            old_kl = ((v - v_old) ** 2).mean()
            out |= {"loss_old_kl": self.old_beta * old_kl, "old_kl": old_kl.detach()}
        return TensorDict(out, batch_size=[])


@dataclass
class AWMOptions(ForwardProcessOptions):
    timesteps: int = option(6, "re-noisings per sample and update: one per stratum of the trained steps",
                            range="[1, inf)")
    timestep_fraction: float = option(0.9, "the strata cover the steps [first, int(K · this)] of the rollout's grid",
                                      range="(0, 1]")
    timestep_sampling: str = option("discrete_wo_init", "discrete_wo_init: strata from step 1 (σ = 1 never "
                                    "trained); discrete: from step 0", choices=("discrete_wo_init", "discrete"))
    ghuber_power: float = option(0.25, "p of the weighting ((e + 1e-10)^p − 1e-10^p)·t/p of the squared error e",
                                 range="(0, 1]")
    old_beta: float = option(1.0, "weight of mean((v_θ − v_old)²), the KL to the soft-updated old policy",
                             range="[0, inf)")

    def validate(self, key: str, num_steps: int) -> None:
        super().validate(key, num_steps)
        first = int(self.timestep_sampling == "discrete_wo_init")
        check(0 < self.timestep_fraction <= 1 and int(num_steps * self.timestep_fraction) >= first,
              f"{key}.timestep_fraction", self.timestep_fraction,
              f"a float in (0, 1] with int({num_steps} × it) >= {first} (sampling.num_steps={num_steps})")


@register("awm")
class AWM(ForwardProcess):
    name = "awm"
    options_class = AWMOptions
    sample_with_old = False
    defaults = dict(timesteps=6, timestep_fraction=0.9, timestep_sampling="discrete_wo_init", ghuber_power=0.25,
                    beta=1e-3, old_beta=1.0, old_decay_rate=0.001, old_decay_max=0.3,
                    advantage="global_std", advantage_std="population", advantage_eps=1e-4,
                    schedule="diffusers", shared_noise=False)

    def draw_steps(self, num_trajectories: int, generator: torch.Generator) -> Tensor:
        o = self.options
        first = int(o.timestep_sampling == "discrete_wo_init")
        bounds = torch.linspace(first, int(self.num_steps * o.timestep_fraction), o.timesteps + 1).long()
        low, high = bounds[:-1], bounds[1:]
        u = torch.rand(num_trajectories, o.timesteps, generator=generator)
        return low + (u * (high - low)).long()  # [N, timesteps], one step per stratum

    def objective(self, velocity, adapter) -> AWMLoss:
        o = self.options
        return AWMLoss(velocity, self.old, adapter.reference, o.beta, o.old_beta, o.ghuber_power)
