"""TempFlow-GRPO: "TempFlow-GRPO: When Timing Matters for GRPO in Flow Models", arXiv 2508.04324
(code: Shredded-Pork/TempFlow-GRPO).

- Sampler: one ODE trunk per prompt; at each of the first int(0.99·K) steps the trunk's velocity is
  reused to draw k = 6 SDE children (the Flow-GRPO SDE, a = 0.7), each finished by the ODE
  (structure `trunk_forks`). K + 6·Σ(K − 1 − k) model calls give 6·int(0.99·K) trained images.
- Advantages: per step, a fork's children are z-scored among their 6 siblings, (R − mean)/(std + 1e-4)
  (population std); only the fork edges are trained, each its own unit.
- Loss: the PPO term of an edge weighted by √3·s_k (s_k the step's noise std, σ-dependent: the
  noise-aware weighting), clip 1e-4; KL β·mean((μ_θ − μ_ref)²)/(2 s_k²) (`kl: exact`), β = 0.04.

Where each default comes from (Shredded-Pork/TempFlow-GRPO at 28a9b9b; scripts/train_flux_pr.py, "train";
flow_grpo/diffusers_patch/sd3_sde_with_logprob.py, "the step"):
- children 6: train, the sampling loop, `exploration_k = 6`.
- dynamics flow_sde, noise_level 0.7: the step, std_dev_t = √(σ/(1−σ))·0.7, its mean and noise.
- s_k = std_dev_t·√(−dt): the step's last line, `return ..., std_dev_t * torch.sqrt(-1*dt)`.
- weight √3·s_k: train, the training loop, `unclipped_loss = -1.73 * std_dev_t * advantages * ratio`
  (1.73 there, √3 = 1.7320508 here: docs/parity.md).
- KL /(2 s_k²): train, `kl_loss = ((prev_sample_mean - prev_sample_mean_ref) ** 2).mean(...) / (2 * std_dev_t ** 2)`.
- int(0.99·K) trained steps: train, num_train_timesteps = int(num_steps · timestep_fraction), Flow-GRPO's 0.99.
- advantage eps 1e-4, population std: flow_grpo/stat_tracking.py (np.std + 1e-4), as in Flow-GRPO.
- clip_range 1e-4, beta 0.04, schedule diffusers: Flow-GRPO's (config/base.py, config/grpo.py); the
  TempFlow config files were not checked.
"""

from __future__ import annotations

from tensordict import TensorDictBase
from torch import Tensor

from genrl import keys, tree_advantages
from genrl.algorithms.base import register
from genrl.algorithms.tree_grpo import TreeGRPO
from genrl.training_batch import UpdateContext


@register("tempflow_grpo")
class TempFlowGRPO(TreeGRPO):
    name = "tempflow_grpo"
    defaults = dict(
        dynamics="flow_sde",
        noise_level=0.7,
        schedule="diffusers",
        structure="trunk_forks",
        structure_options={"children": 6, "fraction": 0.99},
        advantage="per_prompt",
        advantage_std="population",
        advantage_eps=1e-4,
        clip_range=1e-4,
        beta=0.04,
        kl="exact",
    )

    def edge_advantages(self, rollout: TensorDictBase, rewards: Tensor, ctx: UpdateContext) -> Tensor:
        """A fork edge's child z-scored among its siblings by the leaves' rewards under it (one each)."""
        node, parent = rollout.get(keys.TREE_NODE), rollout.get(keys.TREE_PARENT)
        values = tree_advantages.mean_values(rewards, node)
        drawn = tree_advantages.first_rows(node) & (rollout.get(keys.SCALE) > 0)  # not the trunk's own ODE step
        o = self.options
        return tree_advantages.normalise(values, tree_advantages.sibling_scope(parent), drawn, o.advantage_std,
                                         o.advantage_eps)

    def step_weights(self, rollout: TensorDictBase) -> Tensor | None:
        return tree_advantages.step_weight(rollout.get(keys.SCALE))
