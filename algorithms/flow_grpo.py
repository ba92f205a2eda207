"""Flow-GRPO: "Flow-GRPO: Training Flow Matching Models via Online RL", Liu et al., arXiv 2505.05470.

- Sampler: the ODE of a flow model turned into an SDE with the same marginals
  (eq. 9), noise g = a·√(σ/(1−σ)) with a = 0.7, on the pipeline's own σ grid;
  K = 10 training steps ("denoising reduction"), evaluation with the ODE.
- Timestep grouping: every step is its own unit; the first ⌊0.99·K⌋ steps are
  trained, which for K ≤ 100 is every step but the deterministic last one.
- Sample grouping: per-prompt mean, one std over the whole batch (the released
  configs' `global_std`), clamped to ±5.
- Loss: PPO clip ε = 1e-4 on per-step ratios, KL to the base with β = 0.04 in
  the paper's own form (see `kl`).
- Option `sde_window: [start, size]` (Flow-GRPO-Fast / MixGRPO): SDE and
  training only on a window of 2–3 steps, ODE elsewhere.

Where each default comes from (yifan123/flow_grpo at ac4c86e; CPS at 54809b5):
- dynamics flow_sde, noise_level 0.7: flow_grpo/diffusers_patch/sd3_sde_with_logprob.py,
  sde_step_with_logprob, lines 47-50 (std_dev_t, prev_sample_mean); config/base.py:54.
- schedule diffusers: flow_grpo/diffusers_patch/sd3_pipeline_with_logprob.py, retrieve_timesteps on
  the pipeline's FlowMatchEulerDiscreteScheduler (SD3.5: shift 3, the model's own, see sampling.shift).
- grouping per_step over ⌊0.99·K⌋ steps: config/grpo.py:90 (timestep_fraction 0.99);
  scripts/train_sd3.py:345 (num_train_timesteps) and the loop over range(num_train_timesteps).
- shared_noise False: the pipeline draws one latent per image.
- advantage global_std, advantage_std population, advantage_eps 1e-4: config/base.py:52 and
  config/grpo.py:92 (global_std True); flow_grpo/stat_tracking.py:27 (np.std(...) + 1e-4).
- clip_range 1e-4: config/base.py:86; train.adv_clip 5: config/base.py:84;
  train.max_grad_norm 1.0: config/base.py:76.
- beta 0.04: config/grpo.py:91 (geneval_sd3); kl reference: scripts/train_sd3.py:895
  (mean((μθ − μref)²) / (2·std_dev_t²), std_dev_t without √(−Δ)).
- cps_logprob reference: sd3_sde_with_logprob.py, sde_type == "cps" (−(x − μ)², "remove all constants").
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
        schedule="diffusers",
        shared_noise=False,
        grouping="per_step",
        advantage="global_std",
        advantage_std="population",
        advantage_eps=1e-4,
        clip_range=1e-4,
        beta=0.04,
        kl="reference",
        cps_logprob="reference",
    )
