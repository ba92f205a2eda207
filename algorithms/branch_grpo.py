"""BranchGRPO: "BranchGRPO: Stable and Efficient GRPO with Structured Branching in Diffusion Models",
arXiv 2509.06040 (code: Fredreic1849/BranchGRPO).

- Sampler: the DanceGRPO SDE (η = 0.3) on every step; one tree per prompt with binary forks at
  steps 0, 3, 6 and 9 of 20 (16 leaves); the children of a fork are drawn with 4x the step's std
  (structure `branches`). 203 model calls per prompt against 320 for 16 chains.
- Values: a leaf's is its reward; an internal node's is the mean of its leaves' rewards
  (`node_value: softmax`: the softmax over its children's edge log-probs of their values).
- Advantages: z-scored over the nodes at each depth of the tree (Bessel-corrected std + 1e-8), 0
  where that std < 1e-6 or the depth holds one node; every edge is trained once with its child's
  advantage, clamped to ±5; PPO clip 1e-3, no KL.
- The reference draws a fork's children with 4x the noise but scores them with the log-density of
  the unscaled std. genrl's default scores them with the std they were drawn with (`split_logprob:
  consistent`); `split_logprob: reference` keeps the reference's form (docs/parity.md, "BranchGRPO").
- Depth and width pruning of the trained edges (off in the reference's script) are not implemented;
  a pruning rule during sampling is the structure's (`structure_options: {prune: farthest, ...}`).

Where each default comes from (Fredreic1849/BranchGRPO at 19fbb9f; fastvideo/train_branchgrpo_flux.py,
"train"; scripts/finetune/finetune_flux_branchgrpo_8gpus.sh, "the script"):
- dynamics dance_sde, noise_level 0.3: train, flux_step_with_split, lines 229-260 (std_dev_t = η·√Δt,
  the sde_solver mean); the script's --eta 0.3.
- schedule linspace_shift, shift 3, 20 steps: the script's --shift 3 --sampling_steps 20.
- structure branches, points [0, 3, 6, 9], fork 2, noise 4: the script's TREE_SPLIT_POINTS="0,3,6,9",
  TREE_SPLIT_NOISE_SCALE="4.0" (lines 28-29); train lines 404-405 (two children at a split point), 271
  (noise · split_noise_scale), 276-280 (its log-prob with the unscaled std_dev_t).
- node_value mean / softmax: train, compute_node_rewards_from_leaves, lines 649 and 617-637 (α = 1).
- advantage per depth, unbiased, eps 1e-8, 0 below 1e-6: compute_hierarchical_advantages_by_depth,
  lines 672-680, per tree (lines 1170-1179).
- every edge trained with its child's advantage: collect_all_transitions, lines 1199-1225.
- clip_range 1e-3, train.adv_clip 5: the script's --clip_range 1e-3 --adv_clip_max 5.0; train lines 1547-1558.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDictBase
from torch import Tensor

from genrl import keys, tree_advantages
from genrl.algorithms.base import register
from genrl.algorithms.tree_grpo import TreeGRPO, TreeOptions
from genrl.config import option
from genrl.training_batch import UpdateContext


@dataclass
class BranchOptions(TreeOptions):
    node_value: str = option("mean", "an internal node's value: mean (of its leaves' rewards) or softmax "
                             "(over its children's edge log-probs, BranchGRPO's --tree_prob_weighted)",
                             choices=("mean", "softmax"))
    split_logprob: str = option("consistent", "log-density of a fork's children: consistent (the std they "
                                "are drawn with) or reference (the unscaled std, BranchGRPO's script)",
                                choices=("consistent", "reference"))


@register("branch_grpo")
class BranchGRPO(TreeGRPO):
    name = "branch_grpo"
    options_class = BranchOptions
    defaults = dict(
        dynamics="dance_sde",
        noise_level=0.3,
        schedule="linspace_shift",
        shift=3.0,
        structure="branches",
        structure_options={"points": [0, 3, 6, 9], "fork": 2, "noise": 4.0},
        advantage="per_prompt",
        advantage_std="unbiased",
        advantage_eps=1e-8,
        clip_range=1e-3,
        beta=0.0,
    )

    def noise_multiplier(self) -> Tensor | None:
        """The structure's multipliers in the density (consistent), or none (the reference's form)."""
        if self.options.split_logprob == "reference":
            return None
        return torch.tensor([plan.noise for plan in self.structure(0).steps])

    def edge_advantages(self, rollout: TensorDictBase, rewards: Tensor, ctx: UpdateContext) -> Tensor:
        node, parent = rollout.get(keys.TREE_NODE), rollout.get(keys.TREE_PARENT)
        if self.options.node_value == "softmax":
            values = tree_advantages.softmax_values(rewards, node, parent, rollout.get(keys.LOG_PROB))
        else:
            values = tree_advantages.mean_values(rewards, node)
        scope = tree_advantages.depth_scope(rollout.get(keys.GROUP_ID)[:, 0], self.num_steps)
        o = self.options
        return tree_advantages.normalise(values, scope, tree_advantages.first_rows(node), o.advantage_std,
                                         o.advantage_eps)
