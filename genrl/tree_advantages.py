"""Values and advantages on trees, as pure tensor functions a tree algorithm composes (docs/trees.md).

A tree rollout of L leaves and K steps is described row by row (genrl.envs.tree): `node` [L, K] is
the id of the node x_{k+1} that row (l, k)'s edge leads to, `parent` [L, K] the id of x_k, and the
edge's value and advantage are its child node's. A node appears in every row of the leaves under
it; `first_rows` picks one row per node, so statistics count each node once.

- node values from the leaves' rewards: `mean_values` (the mean of the node's leaves) or
  `softmax_values` (BranchGRPO's: a node's value is the softmax over its children's edge log-probs
  of their values, bottom-up);
- normalisation `normalise(values, scope, unique)` within a scope: the nodes at one depth of a tree
  (`depth_scope`), the siblings of one fork (`sibling_scope`), or the prompt's leaves
  (`leaf_advantages`); 0 where the scope's std is below 1e-6 or it holds one node;
- an optional per-step weight, TempFlow-GRPO's √3·s_k (`step_weight`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

TINY_STD = 1e-6  # a scope whose std is below this gets advantage 0 (BranchGRPO's rule)


def first_rows(ids: Tensor) -> Tensor:
    """[L, K] bool: the first row (lowest leaf) of each id in its column, i.e. one row per node."""
    l, k = ids.shape
    rows = torch.arange(l, device=ids.device)[:, None].expand(l, k)
    lowest = torch.full((int(ids.max()) + 1,), l, dtype=torch.long, device=ids.device)
    lowest = lowest.scatter_reduce(0, ids.flatten(), rows.flatten(), "amin")
    return lowest[ids] == rows


def _scatter_mean(values: Tensor, ids: Tensor) -> Tensor:
    """The mean of `values` over rows sharing an id, at every row."""
    size = int(ids.max()) + 1
    total = torch.zeros(size, dtype=values.dtype, device=values.device).index_add(0, ids.flatten(), values.flatten())
    count = torch.zeros(size, dtype=values.dtype, device=values.device).index_add(
        0, ids.flatten(), torch.ones_like(values.flatten()))
    return (total / count.clamp(min=1))[ids]


def mean_values(rewards: Tensor, node: Tensor) -> Tensor:
    """[L, K]: the value of row (l, k)'s child node, the mean reward of the leaves under it."""
    return _scatter_mean(rewards.float()[:, None].expand(node.shape), node)


def softmax_values(rewards: Tensor, node: Tensor, parent: Tensor, log_prob: Tensor, alpha: float = 1.0) -> Tensor:
    """[L, K]: BranchGRPO's weighted node values. A leaf's value is its reward; going up, a node with
    children c has value Σ_c softmax_c(α·log π(c | node))·value(c) (one child: its value)."""
    values = torch.empty(node.shape, dtype=torch.float32, device=node.device)
    values[:, -1] = rewards.float()
    for k in range(node.shape[1] - 2, -1, -1):
        one = first_rows(node[:, k + 1 : k + 2])[:, 0]  # one row per child node at depth k + 2
        child_parent = parent[one, k + 1]  # = node[one, k]
        logits = alpha * log_prob[one, k + 1].float()
        size = int(node[:, k].max()) + 1
        top = torch.full((size,), -math.inf, device=node.device).scatter_reduce(0, child_parent, logits, "amax")
        weight = torch.exp(logits - top[child_parent])
        norm = torch.zeros(size, device=node.device).index_add(0, child_parent, weight)
        total = torch.zeros(size, device=node.device).index_add(0, child_parent, weight * values[one, k + 1])
        values[:, k] = (total / norm.clamp(min=1e-30))[node[:, k]]
    return values


def depth_scope(group: Tensor, num_steps: int) -> Tensor:
    """[L, K] scope ids: the nodes at one depth of one tree (group = the tree's prompt group)."""
    steps = torch.arange(num_steps, device=group.device)
    return group.long()[:, None] * num_steps + steps


def sibling_scope(parent: Tensor) -> Tensor:
    """[L, K] scope ids: the children of one node (the siblings of a fork)."""
    return parent


def normalise(values: Tensor, scope: Tensor, unique: Tensor, std: str = "unbiased", eps: float = 1e-8) -> Tensor:
    """(v − mean) / (std + eps) within each scope, each node counted once (`unique` [L, K]: one row per
    node); 0 in a scope whose std is below 1e-6 or that holds one node. std: "unbiased" | "population"."""
    flat_scope, flat_values = scope[unique], values[unique].double()
    zeros = torch.zeros(int(scope.max()) + 1, dtype=torch.float64, device=values.device)  # scope ids are >= 0
    count = zeros.index_add(0, flat_scope, torch.ones_like(flat_values))
    mean = zeros.index_add(0, flat_scope, flat_values) / count.clamp(min=1)
    squares = zeros.index_add(0, flat_scope, (flat_values - mean[flat_scope]) ** 2)
    var = squares / (count - 1).clamp(min=1) if std == "unbiased" else squares / count.clamp(min=1)
    sd = var.sqrt()
    adv = (values.double() - mean[scope]) / (sd[scope] + eps)
    flat = (sd[scope] < TINY_STD) | (count[scope] < 2)
    return torch.where(flat, torch.zeros_like(adv), adv).float()


def leaf_advantages(rewards: Tensor, group: Tensor, std: str = "unbiased", eps: float = 1e-8) -> Tensor:
    """[L] the prompt's leaves z-scored (GRPO's group advantage): what every edge of a chain gets."""
    scope, unique = group.long()[:, None], torch.ones(len(group), 1, dtype=torch.bool, device=group.device)
    return normalise(rewards.float()[:, None], scope, unique, std, eps)[:, 0]


def step_weight(scale: Tensor) -> Tensor:
    """TempFlow-GRPO's per-step weight of the policy loss, √3·s_k (s_k the step's noise std)."""
    return math.sqrt(3.0) * scale


__all__ = ["TINY_STD", "depth_scope", "first_rows", "leaf_advantages", "mean_values", "normalise",
           "sibling_scope", "softmax_values", "step_weight"]
