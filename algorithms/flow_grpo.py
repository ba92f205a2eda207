"""Flow-GRPO: "Flow-GRPO: Training Flow Matching Models via Online RL", Liu et al., arXiv 2505.05470.

- Sampler: the ODE of a flow model turned into an SDE with the same marginals
  (eq. 9), noise g = a·√(σ/(1−σ)) with a = 0.7; K = 10 training steps
  ("denoising reduction"), evaluation with the ODE and more steps.
- Timestep grouping: every step is its own unit; the first ⌊0.99·K⌋ steps are
  trained, which for K ≤ 100 is every step but the deterministic last one.
- Sample grouping: group-relative advantage per prompt (eq. 4), clamped to ±5.
- Loss: PPO clip ε = 1e-4 on per-step ratios, KL to the base with β = 0.04.
- Option `sde_window: [start, size]` (Flow-GRPO-Fast / MixGRPO): SDE and
  training only on a window of 2–3 steps, ODE elsewhere.
"""

from genrl.algorithms.base import register
from genrl.algorithms.grpo import GRPO


@register("flow_grpo")
class FlowGRPO(GRPO):
    name = "flow_grpo"
    combine = "mean"  # a unit is one step: its log-ratio is the step's (any rule gives the same)
    defaults = dict(
        dynamics="flow_sde",
        noise_level=0.7,
        shared_noise=False,
        grouping="per_step",
        advantage="per_prompt",
        clip_range=1e-4,
        beta=0.04,
    )
