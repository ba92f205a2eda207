"""MixGRPO: "MixGRPO: Unlocking Flow-based GRPO Efficiency with Mixed ODE-SDE Sampling", Li et al.,
arXiv 2507.21802 (code: zqqqqz2000/MixGRPO).

- Sampler: the ODE outside a window [c, c + 4) of the K steps, the DanceGRPO SDE (η = 0.7) inside;
  the G samples of a prompt share their initial noise, so they are identical up to step c. genrl
  samples that prefix once per prompt (structure `shared_prefix`: a fork of G at c), which gives
  exactly the G chains with shared noise at fewer model calls (at c = 10 of 25, 37% of them).
- The window starts at step 0, moves one step every 25 updates and rolls back to 0 at the end
  (progressive strategy, prog_overlap, roll_back); only its steps are trained, each its own unit.
- Sample grouping: per-prompt mean and Bessel-corrected std + 1e-8, clamped to ±5; every trained edge
  gets its leaf's (chain's) advantage. PPO clip 1e-4, no KL.

Where each default comes from (zqqqqz2000/MixGRPO at 2684bb9; scripts/finetune/finetune_flux_grpo_MixGRPO.sh,
"the script"; fastvideo/train_grpo_flux.py, "train"; fastvideo/utils/grpo_states.py, "states"):
- dynamics dance_sde, noise_level 0.7: the script's eta=0.7 (line 55) without --flow_grpo_sampling, so
  train's grpo_one_step takes dance_grpo_step (line 159).
- schedule linspace_shift, shift 3: train, sample_reference_model, lines 201-202; the script's --shift 3.
- shared_noise: --init_same_noise; train line 223 (one input latent for the batch).
- structure shared_prefix size 4, every 25, stride 1: the script's group_size=4, iters_per_group=25
  (lines 57-58), --prog_overlap --prog_overlap_step 1 --roll_back; states, update_iteration and
  get_current_timesteps (lines 85-148); train line 807 (max_timesteps = sampling_steps − 2).
- window steps SDE, others ODE ("part"): train lines 251-254 (determistic[i] = False on the window).
- advantage per_prompt, unbiased, eps 1e-8: train line 487 (--use_group: the group's .std() + 1e-8).
- clip_range 1e-4, train.adv_clip 5, beta 0: the script's --clip_range 1e-4 --adv_clip_max 5.0, kl_coeff=0.
Differences: docs/parity.md ("MixGRPO").
"""

from __future__ import annotations

from tensordict import TensorDictBase
from torch import Tensor

from genrl.algorithms.base import register
from genrl.algorithms.tree_grpo import TreeGRPO
from genrl.training_batch import UpdateContext


@register("mix_grpo")
class MixGRPO(TreeGRPO):
    name = "mix_grpo"
    defaults = dict(
        dynamics="dance_sde",
        noise_level=0.7,
        schedule="linspace_shift",
        shift=3.0,
        structure="shared_prefix",
        structure_options={"size": 4, "every": 25, "stride": 1},
        advantage="per_prompt",
        advantage_std="unbiased",
        advantage_eps=1e-8,
        clip_range=1e-4,
        beta=0.0,
    )

    def edge_advantages(self, rollout: TensorDictBase, rewards: Tensor, ctx: UpdateContext) -> Tensor:
        """Every edge gets its leaf's group advantage (the options' estimator on the global batch), as
        each step of a chain does."""
        return self._leaf_advantages[ctx.rows].to(rollout.device)[:, None].expand(rollout.batch_size)
