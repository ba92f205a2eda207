"""DiffusionNFT: "DiffusionNFT: Online Diffusion Reinforcement with Forward Process", Zheng et al., arXiv 2509.16117.

- Sampler: any solver, CFG-free; here the probability-flow ODE, run with the "old" policy: the
  sampling policy is a soft-updated copy of the trained one (algorithms/forward_process.py).
- Reward → optimality probability: r = Â/2 + 1/2 ∈ [0, 1], Â the advantage clipped to ±c and divided
  by c (group mean, batch-wide std).
- Implicit policies: v⁺ = m·v_θ + (1 − m)·v_old (positive), v⁻ = (1 + m)·v_old − m·v_θ (negative), with
  the mixing coefficient m (`mix`, the paper's β; not the KL weight `beta`).
- Loss on the final samples x₀ re-noised at t (x_t = (1 − t)·x₀ + t·ε), in x₀-space, x̂₀(v) = x_t − t·v:
  [r·‖x̂₀(v⁺) − x₀‖²/w⁺ + (1 − r)·‖x̂₀(v⁻) − x₀‖²/w⁻] / m, the adaptive weight w = sg(mean |x̂₀ − x₀|);
  high-reward samples pull v⁺ toward them, low-reward ones push v⁻, and so v_θ away. With m → 0 the
  gradient is that of (2r − 1)·t²‖v − (ε − x₀)‖²/w at v_old: advantage-weighted flow matching.
- Soft update of the sampling policy after each update: old ← d·old + (1 − d)·θ, d = min(0.001·steps, 0.5).
- Optional KL to the base: beta·mean((v_θ − v_ref)²).

Where each default comes from (NVlabs/DiffusionNFT at 24af555; config/nft.py `_get_config` (GenEval,
PickScore), config/base.py, scripts/train_nft_sd3.py "the script"):
- mix 1.0: config/nft.py line 61 (config.beta; 0.1 for OCR and multi-reward, lines 77 and 137).
- beta 1e-4: config/nft.py line 24 (config.train.beta); the script's KL, lines 966-970. The script
  evaluates the base at every row even when its weight is 0; here it is evaluated only when beta > 0.
- timestep_fraction 0.99: config/base.py line 87; the script trains int(K·0.99) of the K steps of the
  sampler's grid, a random permutation per sample (lines 569, 810-816, t = timestep/1000 at line 864).
- old_decay_rate 0.001, old_decay_max 0.5: return_decay, decay_type 1 (lines 169-189; config/nft.py
  line 60), applied once per epoch after its optimizer steps (lines 1034-1039), counting optimizer
  steps (line 1021); the old copy starts as the trained weights (lines 576-579) and samples (lines 640-659).
- advantage global_std, population std + 1e-4: config/base.py line 57; flow_grpo/stat_tracking.py
  lines 27-28. r: the script's lines 910-929 (adv_mode "all", config/nft.py line 62).
- the implicit policies and the adaptive weighting: lines 934-957 (w in float64, floored at 1e-5).
- loss: lines 959-960, which also multiply the policy term by adv_clip_max (5). That constant is left
  out, as in the paper: AdamW's step does not depend on a constant scale of the loss; what it changes
  is the KL weight relative to the policy term (the script's 1e-4 beside 5× the policy term is 2e-5
  beside ours; the default keeps the script's number) and where train.max_grad_norm starts clipping.
- schedule diffusers, shared_noise False: the SD3 pipeline's scheduler grid, one noise per image
  (flow_grpo/diffusers_patch/pipeline_with_logprob.py, retrieve_timesteps); the script samples with a
  second-order solver ("dpm2", config/nft.py line 66), this rollout with Euler's.
- CFG off: config/nft.py line 64 (guidance_scale 1.0). CFG is the model's option here
  (model.options.guidance_scale), used alike by the rollout, the objective and the evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor

from genrl.algorithms.base import register
from genrl.algorithms.forward_process import ForwardProcess, ForwardProcessOptions, ReNoisedObjective, check, option
from genrl.config import Range


def adaptive_x0_loss(x0_hat: Tensor, x0: Tensor) -> Tensor:
    """‖x̂₀ − x₀‖² / sg(mean |x̂₀ − x₀|) per sample [S]: the x₀ error in units of its own mean size."""
    dims = tuple(range(1, x0.dim()))
    weight = (x0_hat.detach().double() - x0.double()).abs().mean(dims).clamp(min=1e-5)
    return ((x0_hat - x0) ** 2).mean(dims) / weight.to(x0_hat.dtype)


def nft_loss(x0: Tensor, x_t: Tensor, t: Tensor, v: Tensor, v_old: Tensor, r: Tensor, mix: float) -> Tensor:
    """DiffusionNFT's loss per row [S]: x₀ [S, C, H, W] re-noised to x_t at t [S]; v = v_θ(x_t), v_old
    the old policy's; r [S] in [0, 1] the optimality probability; mix the paper's β in (0, 1]."""
    t = t.reshape(-1, *[1] * (x0.dim() - 1))
    positive = mix * v + (1 - mix) * v_old
    negative = (1 + mix) * v_old - mix * v
    return (r * adaptive_x0_loss(x_t - t * positive, x0) + (1 - r) * adaptive_x0_loss(x_t - t * negative, x0)) / mix


class NFTLoss(ReNoisedObjective):
    def __init__(self, velocity, old, reference, mix: float, beta: float):
        super().__init__(velocity, old, reference, beta)
        self.mix = mix

    def forward(self, rows: TensorDictBase) -> TensorDict:
        x0, _, t, x_t, context = self.re_noised(rows)
        v_old = self.under(self.old.applied, x_t, t, context)
        v_ref = self.under(self.reference, x_t, t, context) if self.beta > 0 else None
        v = self.velocity(x_t, t, context)
        r = (rows.get(self.tensor_keys.advantage).float() / 2 + 0.5).clamp(0, 1)  # optimality probability
        return TensorDict({
            "loss_policy": nft_loss(x0, x_t, t, v, v_old, r, self.mix).mean(),
            "old_deviation": ((v - v_old) ** 2).mean().detach(), "r_mean": r.mean(), **self.kl_terms(v, v_ref),
        }, batch_size=[])


@dataclass
class NFTOptions(ForwardProcessOptions):
    mix: float = option(1.0, "m in v⁺ = m·v_θ + (1 − m)·v_old, v⁻ = (1 + m)·v_old − m·v_θ",
                        range=Range("(0, 1]", "the paper's β; the KL weight is `beta`"))
    timestep_fraction: float = option(0.99, "train int(K · this) of the K steps' σ per sample, a random subset",
                                      range="(0, 1]")

    def validate(self, key: str, num_steps: int) -> None:
        super().validate(key, num_steps)
        check(0 < self.timestep_fraction <= 1 and int(num_steps * self.timestep_fraction) >= 1,
              f"{key}.timestep_fraction", self.timestep_fraction,
              f"a float in (0, 1] training at least one of the {num_steps} steps (sampling.num_steps)")


@register("diffusion_nft")
class DiffusionNFT(ForwardProcess):
    name = "diffusion_nft"
    options_class = NFTOptions
    sample_with_old = True
    defaults = dict(mix=1.0, beta=1e-4, timestep_fraction=0.99, old_decay_rate=0.001, old_decay_max=0.5,
                    advantage="global_std", advantage_std="population", advantage_eps=1e-4,
                    schedule="diffusers", shared_noise=False)

    def draw_steps(self, num_trajectories: int, generator: torch.Generator) -> Tensor:
        m = int(self.num_steps * self.options.timestep_fraction)
        return torch.rand(num_trajectories, self.num_steps, generator=generator).argsort(dim=1)[:, :m]

    def objective(self, velocity, adapter) -> NFTLoss:
        return NFTLoss(velocity, self.old, adapter.reference, self.options.mix, self.options.beta)
