"""Parity of the tree family with its references, re-derived here in their own algebraic form:

- BranchGRPO (Fredreic1849/BranchGRPO, fastvideo/train_branchgrpo_flux.py): node rewards from the
  leaves (mean, or the softmax over child-edge log-probs, compute_node_rewards_from_leaves), per-depth
  advantages of one tree (compute_hierarchical_advantages_by_depth), every edge with its child's; the
  split step's log-prob with the unscaled std (flux_step_with_split) as `split_logprob: reference`;
- MixGRPO (zqqqqz2000/MixGRPO, fastvideo/utils/grpo_states.py): the progressive window with overlap
  step 1 and roll-back;
- TempFlow-GRPO (Shredded-Pork/TempFlow-GRPO, scripts/train_flux_pr.py): the sibling advantage, the
  policy loss weighted by 1.73·s_k and the KL /(2 s_k²).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genrl import build, keys
from genrl.envs import structures
from genrl.training_batch import UpdateContext
from test_tree_rollout import toy_config

K = 6


def build_toy(algorithm: str, tmp_path, group_size: int, **section):
    return build.build(toy_config(algorithm, tmp_path, group_size, **{f"{algorithm}__{k}": v for k, v in section.items()}))


def rollout_and_batch(parts, rewards=None):
    with torch.no_grad():
        td = parts.env.rollout(policy=parts.policy)
    n = td.batch_size[0]
    if rewards is None:
        rewards = torch.randn(n, generator=torch.Generator().manual_seed(5))
    group = td.get(keys.GROUP_ID)[:, 0]
    parts.algorithm.advantages(rewards, group, 5.0)
    ctx = UpdateContext(0, torch.Generator().manual_seed(0), slice(0, n), n, in_keys=parts.objective.in_keys)
    batch = parts.algorithm.training_batch(td, ctx)
    return td, rewards, batch


# --- BranchGRPO ------------------------------------------------------------------------------------


class TreeNode:
    """The reference's TreeNode: children, depth, reward, the log-prob of the edge into it."""

    def __init__(self, node_id, parent=None):
        self.node_id, self.parent, self.children = node_id, parent, []
        self.depth = 0 if parent is None else parent.depth + 1
        self.reward, self.log_prob, self.advantage = None, None, None

    def is_leaf(self):
        return not self.children

    def get_all_leaf_descendants(self):
        if self.is_leaf():
            return [self]
        return [leaf for child in self.children for leaf in child.get_all_leaf_descendants()]


def reference_trees(td, rewards):
    """The reference's node objects, one tree per prompt, from the rollout's parent → child edges."""
    node, parent, log_prob = td.get(keys.TREE_NODE), td.get(keys.TREE_PARENT), td.get(keys.LOG_PROB)
    objects, roots = {}, []
    for leaf in range(node.shape[0]):
        root_id = int(parent[leaf, 0])
        if root_id not in objects:
            objects[root_id] = TreeNode(root_id)
            roots.append(objects[root_id])
        for k in range(K):
            child_id, parent_id = int(node[leaf, k]), int(parent[leaf, k])
            if child_id not in objects:
                child = TreeNode(child_id, objects[parent_id])
                child.log_prob = log_prob[leaf, k].double()
                objects[parent_id].children.append(child)
                objects[child_id] = child
        objects[int(node[leaf, -1])].reward = rewards[leaf].double()
    return roots, objects


def reference_node_rewards(root, use_prob_weighted):
    """compute_node_rewards_from_leaves (lines 545-652): bottom-up by depth."""
    nodes, stack = [], [root]
    while stack:
        nodes.append(stack.pop())
        stack.extend(nodes[-1].children)
    max_depth = max(n.depth for n in nodes)
    for depth in reversed(range(max_depth)):
        for n in [n for n in nodes if n.depth == depth and not n.is_leaf()]:
            if use_prob_weighted:
                if len(n.children) == 1:
                    n.reward = n.children[0].reward
                else:
                    weights = torch.softmax(1.0 * torch.stack([c.log_prob for c in n.children]), dim=0)
                    n.reward = torch.sum(weights * torch.stack([c.reward for c in n.children]))
            else:
                n.reward = torch.stack([leaf.reward for leaf in n.get_all_leaf_descendants()]).mean()
    return {d: [n for n in nodes if n.depth == d] for d in range(max_depth + 1)}


def reference_depth_advantages(nodes_by_depth):
    """compute_hierarchical_advantages_by_depth (lines 655-688)."""
    for nodes in nodes_by_depth.values():
        if len(nodes) <= 1:
            for n in nodes:
                n.advantage = torch.tensor(0.0, dtype=torch.float64)
            continue
        rewards = torch.stack([n.reward for n in nodes])
        std = rewards.std()
        advantages = torch.zeros_like(rewards) if std < 1e-6 else (rewards - rewards.mean()) / (std + 1e-8)
        for n, a in zip(nodes, advantages):
            n.advantage = a


@pytest.mark.parametrize("node_value", ["mean", "softmax"])
def test_branch_grpo_edges_get_the_references_depth_advantage(tmp_path, node_value):
    parts = build_toy("branch_grpo", tmp_path, 8, node_value=node_value,
                      structure_options={"points": [0, 1, 3], "fork": 2, "noise": 4.0})
    td, rewards, batch = rollout_and_batch(parts)
    roots, objects = reference_trees(td, rewards)
    for root in roots:
        reference_depth_advantages(reference_node_rewards(root, node_value == "softmax"))
    node, owner = td.get(keys.TREE_NODE), td.get(keys.EDGE_OWNER)
    advantage = td.get(keys.ADVANTAGE)  # set by training_batch: each row's edge's
    expected = torch.tensor([[float(objects[int(i)].advantage) for i in row] for row in node])
    torch.testing.assert_close(advantage[owner].double(), expected[owner].double().clamp(-5, 5), rtol=1e-5, atol=1e-5)
    rows = batch.rows(torch.arange(td.batch_size[0]))  # every SDE edge once: all edges but the last step's
    assert len(rows) == 2 * sum(structures.branches(K, 8, 0, points=[0, 1, 3]).live_nodes()[1:-1])


@pytest.mark.parametrize("form", ["reference", "consistent"])
def test_branch_grpo_split_log_prob_forms(tmp_path, form):
    parts = build_toy("branch_grpo", tmp_path, 4, split_logprob=form,
                      structure_options={"points": [0, 2], "fork": 2, "noise": 4.0})
    td, _, _ = rollout_and_batch(parts)
    eta, sigmas = parts.config.algo.noise_level, parts.sigmas.double()
    for k in (0, 2):  # the split steps
        x, x_next = td.get(keys.LATENTS)[:, k].double(), td.get(keys.ACTION)[:, k].double()
        with torch.no_grad():
            rows = td[:, k].clone()
            rows.update(parts.policy.module[0](rows.clone()).select(keys.VELOCITY))
        v = rows.get(keys.VELOCITY).double()
        sigma, dsigma = sigmas[k], sigmas[k + 1] - sigmas[k]
        # flux_step_with_split (lines 246-260): the DanceGRPO step, std_dev_t = η·√Δt
        mean = x + dsigma * v
        pred_original = x - sigma * v
        score = -(x - pred_original * (1 - sigma)) / sigma**2
        mean = mean + (-0.5 * eta**2 * score) * dsigma
        std = eta * math.sqrt(float(sigma - sigmas[k + 1]))
        noise = (x_next - mean) / std
        assert abs(float(noise.std()) - 4.0) < 0.8  # drawn with 4x the step's std in both forms
        scored = std if form == "reference" else 4.0 * std  # lines 276-280: the unscaled std
        log_prob = (-((x_next - mean) ** 2) / (2 * scored**2) - math.log(scored) - 0.5 * math.log(2 * math.pi))
        torch.testing.assert_close(td.get(keys.LOG_PROB)[:, k].double(), log_prob.flatten(1).mean(1),
                                   rtol=1e-4, atol=1e-4)


# --- MixGRPO -------------------------------------------------------------------------------------


def reference_windows(iterations: int, sampling_steps: int, group_size=4, iters_per_group=25):
    """GRPOTrainingStates, progressive, prog_overlap step 1, roll_back (lines 85-148), max_timesteps
    sampling_steps − 2 (train line 807): the timesteps trained at each iteration."""
    cur, in_group, max_timesteps, out = 0, 0, sampling_steps - 2, []
    for _ in range(iterations):
        out.append(list(range(cur, min(cur + group_size, max_timesteps))))
        in_group += 1
        if in_group >= iters_per_group:
            in_group, cur = 0, cur + 1
        if cur > max_timesteps:
            cur, in_group = 0, 0
    return out


def test_mix_grpo_window_moves_and_rolls_back_as_the_references():
    for u, reference in enumerate(reference_windows(1500, 25)):
        s = structures.shared_prefix(25, 12, u)  # mix_grpo's default options
        window = [k for k, plan in enumerate(s.steps) if plan.sde]
        assert s.forks == [window[0]] and window[: len(reference)] == reference
        assert set(window) - set(reference) <= {23}  # genrl also trains step K − 2 (docs/parity.md)


# --- TempFlow-GRPO ------------------------------------------------------------------------------


def test_tempflow_grpo_loss_is_the_references(tmp_path):
    parts = build_toy("tempflow_grpo", tmp_path, 7, structure_options={"children": 3, "fraction": 0.4})
    td, rewards, batch = rollout_and_batch(parts)
    with torch.no_grad():  # move the weights, so that ratios and the KL are not trivial
        for p in parts.adapter.trainable_parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    rows = batch.gather(batch.rows(torch.arange(td.batch_size[0])))
    out = parts.objective(rows)
    # the reference: per fork, the children's rewards normalised among the siblings (np.std + 1e-4)
    node, parent, scale = td.get(keys.TREE_NODE), td.get(keys.TREE_PARENT), td.get(keys.SCALE)
    traj, step = batch.rows(torch.arange(td.batch_size[0])).get(keys.TRAJECTORY), rows.get(keys.STEP)
    adv = []
    for leaf, k in zip(traj.tolist(), step.tolist()):
        siblings = [i for i in range(td.batch_size[0]) if parent[i, k] == parent[leaf, k] and scale[i, k] > 0]
        r = rewards[siblings].double().numpy()
        adv.append((float(rewards[leaf]) - r.mean()) / (np.std(r) + 1e-4))
    adv = torch.tensor(adv).clamp(-5, 5)
    with torch.no_grad():
        dist = parts.policy.get_dist(rows.clone())
        ratio = torch.exp(dist.log_prob(rows.get(keys.ACTION)) - rows.get(keys.LOG_PROB)).double()
        with parts.adapter.reference():
            ref_loc = parts.policy.module[0](rows.clone()).get(keys.LOC)
    s, eps = rows.get(keys.SCALE).double(), parts.config.algo.clip_range
    weight = math.sqrt(3)  # the reference writes 1.73 (docs/parity.md)
    unclipped = -weight * s * adv * ratio
    clipped = -weight * s * adv * ratio.clamp(1 - eps, 1 + eps)
    torch.testing.assert_close(out["loss_policy"].double(), torch.maximum(unclipped, clipped).mean(), rtol=1e-4, atol=1e-7)
    kl = ((dist.loc.double() - ref_loc.double()) ** 2).flatten(1).mean(1) / (2 * s**2)
    torch.testing.assert_close(out["loss_kl"].double(), 0.04 * kl.mean(), rtol=1e-4, atol=1e-8)
    assert len(rows) == 2 * 3 * 2  # the fork edges only: 3 children at steps 0 and 1, 2 prompts
