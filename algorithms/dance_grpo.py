"""DanceGRPO: "DanceGRPO: Unleashing GRPO on Visual Generation", Xue et al., arXiv 2505.07818.

- Sampler: the flow SDE with a constant noise level g = η = 0.3 (eq. 6) on a
  schedule shifted by 3.
- Sample grouping: the G samples of a prompt share their initial noise (so the
  advantage compares sampling paths, not starting points); per-prompt advantage.
- Timestep grouping: each update trains a random subset of 60% of the steps of
  each trajectory ("timestep fraction"), each step its own unit.
- Loss: PPO clip on per-step ratios, no KL (β = 0); gradient-norm clip 1
  (`train.max_grad_norm`).
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
        shared_noise=True,
        grouping="random_subset",
        grouping_options={"fraction": 0.6},
        advantage="per_prompt",
        clip_range=1e-4,
        beta=0.0,
    )
