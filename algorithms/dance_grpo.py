"""DanceGRPO: "DanceGRPO: Unleashing GRPO on Visual Generation", Xue et al., arXiv 2505.07818.

- Sampler: the flow SDE with a constant noise level g = η = 0.3 (eq. 6) on
  linspace(1, 0, K+1) shifted by 3.
- Sample grouping: the G samples of a prompt share their initial noise (so the
  advantage compares sampling paths, not starting points); per-prompt advantage
  with the Bessel-corrected std + 1e-8.
- Timestep grouping: each update trains a random ⌊0.6·T⌋ of the T trainable
  steps of each trajectory ("timestep fraction"), each step its own unit.
- Loss: PPO clip on per-step ratios, no KL (β = 0).

Where each default comes from (XueZeyue/DanceGRPO at 15cc71d; fastvideo/train_grpo_flux.py and
scripts/finetune/finetune_flux_grpo_8gpus.sh, "the script"):
- dynamics dance_sde, noise_level 0.3: flux_step, lines 148-153 (std_dev_t = η·√(−Δ), the score
  term −η²/2·score); the script's --eta 0.3.
- schedule linspace_shift, shift 3: sample_reference_model, lines 311-313 (sd3_time_shift(shift,
  linspace(1, 0, K+1))); the script's --shift 3.
- shared_noise True: sample_reference_model, line 334 (--init_same_noise).
- grouping random_subset, fraction 0.6: train_one_step, lines 553 and 570 (a random permutation of
  the steps, the first int(T·0.6) trained); the script's --timestep_fraction 0.6.
- advantage per_prompt, advantage_std unbiased, advantage_eps 1e-8: train_one_step, line 542
  (group_rewards.std() + 1e-8 with --use_group).
- clip_range 1e-4: line 601, the script's --clip_range 1e-4; train.adv_clip 5: --adv_clip_max 5.0;
  train.max_grad_norm: 0.01 in the script (1.0 in finetune_flux_grpo.sh), set by genrl/configs/flux.yaml.
- beta 0: the loss has no KL term.
"""

from genrl.algorithms.base import register
from genrl.algorithms.grpo import GRPO


@register("dance_grpo")
class DanceGRPO(GRPO):
    name = "dance_grpo"
    combine = "mean"  # a unit is one step: its log-ratio is the step's (any rule gives the same)
    defaults = dict(
        dynamics="dance_sde",
        noise_level=0.3,
        shift=3.0,
        schedule="linspace_shift",
        shared_noise=True,
        grouping="random_subset",
        grouping_options={"fraction": 0.6},
        advantage="per_prompt",
        advantage_std="unbiased",
        advantage_eps=1e-8,
        clip_range=1e-4,
        beta=0.0,
    )
