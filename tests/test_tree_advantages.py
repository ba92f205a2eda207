"""Values and advantages on a hand-built tree (genrl.tree_advantages) against their closed forms.

One prompt, K = 3, four leaves: the root forks in two at step 0 (A: leaves 0, 1; B: leaves 2, 3),
A and B take one step each (A', B'), and fork in two again at step 2 (the leaves).
"""

from __future__ import annotations

import math

import torch

from genrl import tree_advantages as ta

NODE = torch.tensor([[1, 3, 5], [1, 3, 6], [2, 4, 7], [2, 4, 8]])  # x_{k+1} of row (l, k)
PARENT = torch.tensor([[0, 1, 3], [0, 1, 3], [0, 2, 4], [0, 2, 4]])  # x_k of row (l, k)
REWARDS = torch.tensor([1.0, 3.0, 2.0, 6.0])
GROUP = torch.zeros(4, dtype=torch.long)


def test_first_rows_pick_one_row_per_node():
    expected = torch.tensor([[1, 1, 1], [0, 0, 1], [1, 1, 1], [0, 0, 1]], dtype=torch.bool)
    assert torch.equal(ta.first_rows(NODE), expected)


def test_mean_values_are_the_means_of_the_leaves_under_each_node():
    values = ta.mean_values(REWARDS, NODE)
    expected = torch.tensor([[2.0, 2.0, 1.0], [2.0, 2.0, 3.0], [4.0, 4.0, 2.0], [4.0, 4.0, 6.0]])
    torch.testing.assert_close(values, expected)


def test_softmax_values_weigh_children_by_their_edge_log_probs():
    log_prob = torch.tensor([[0.0, -1.0, 0.3], [0.0, -1.0, -0.2], [0.0, -2.0, 1.0], [0.0, -2.0, 1.0]])
    values = ta.softmax_values(REWARDS, NODE, PARENT, log_prob)
    w0 = math.exp(0.3) / (math.exp(0.3) + math.exp(-0.2))
    a = w0 * 1.0 + (1 - w0) * 3.0  # A' and, through its one child, A
    b = 0.5 * 2.0 + 0.5 * 6.0  # equal log-probs: the mean
    expected = torch.tensor([[a, a, 1.0], [a, a, 3.0], [b, b, 2.0], [b, b, 6.0]])
    torch.testing.assert_close(values, expected)


def test_depth_scope_z_scores_each_depth_over_its_nodes_once():
    values = ta.mean_values(REWARDS, NODE)
    adv = ta.normalise(values, ta.depth_scope(GROUP, 3), ta.first_rows(NODE), "unbiased", 0.0)
    half = 1 / math.sqrt(2)  # nodes {2, 4}: mean 3, unbiased std √2 (each node once, not each leaf)
    leaves = (REWARDS - 3.0) / math.sqrt(14 / 3)  # {1, 3, 2, 6}: mean 3, unbiased std √(14/3)
    expected = torch.stack([torch.tensor([-half, -half, half, half])] * 2 + [leaves], dim=1)
    torch.testing.assert_close(adv, expected)


def test_sibling_scope_z_scores_the_children_of_each_fork():
    values = ta.mean_values(REWARDS, NODE)
    adv = ta.normalise(values, ta.sibling_scope(PARENT), ta.first_rows(NODE), "population", 0.0)
    # every fork has two children: ±1 with the population std; the one-child step 1 gets 0
    expected = torch.tensor([[-1.0, 0.0, -1.0], [-1.0, 0.0, 1.0], [1.0, 0.0, -1.0], [1.0, 0.0, 1.0]])
    torch.testing.assert_close(adv, expected)


def test_a_scope_whose_std_is_below_1e_6_gets_0():
    rewards = torch.tensor([2.0, 2.0 + 1e-7, 5.0, 5.0])
    adv = ta.normalise(ta.mean_values(rewards, NODE), ta.sibling_scope(PARENT), ta.first_rows(NODE), "unbiased", 1e-8)
    assert adv[0, 2] == 0 and adv[1, 2] == 0 and adv[2, 2] == 0  # nearly equal, and equal, siblings
    assert adv[0, 0] < 0 < adv[2, 0]  # the root's fork still tells A from B


def test_leaf_advantages_are_grpos_group_advantage():
    group = torch.tensor([0, 0, 1, 1])
    adv = ta.leaf_advantages(REWARDS, group, "population", 0.0)
    torch.testing.assert_close(adv, torch.tensor([-1.0, 1.0, -1.0, 1.0]))


def test_the_step_weight_is_sqrt3_times_the_noise_std():
    scale = torch.tensor([[0.5, 0.0], [0.2, 0.1]])
    torch.testing.assert_close(ta.step_weight(scale), scale * 3 ** 0.5)
