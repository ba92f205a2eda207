"""Tree rollouts: one tree per prompt, each node computed once (docs/trees.md).

The env's reset gives the G leaves of each prompt (context, seeds, initial noise); a tree starts
from one root, the first leaf's initial noise. At each step every live node of every tree is
evaluated in one fixed-shape micro-batched call of the velocity (so a shared prefix costs one
model call per step, charged once); a forking node draws its b children's noise independently, each
child from the step seed of the first leaf it leads to, so a tree's draws do not depend on the
batch, and a fork of G at step 0 draws exactly what G chains with shared initial noise draw.

The result is the ordinary rollout [N, K] (every step kept, `stack_steps` with keep_tail): row l is
leaf l's path from the root; its shared prefix appears in every leaf under it, so the trainer,
rewards and grids read a tree like chains. Three more entries say where each row sits in its tree:
`tree_node` and `tree_parent` (the ids of x_{k+1} and x_k) and `edge_owner` (the one row per edge,
its subtree's first leaf, that a tree algorithm trains).
"""

from __future__ import annotations

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor

from genrl import dynamics, keys
from genrl.envs.layout import attach_latents
from genrl.envs.structures import PRUNING, Structure
from genrl.errors import ConfigError
from genrl.policy import StepGaussian, dynamics_head, sampler_module, velocity_module
from genrl.rewards import checked_call

_ONCE = (keys.CONTEXT, keys.GROUP_ID, keys.NOISE_SEED, keys.STEP_SEED, keys.PROMPT_INDEX)


class _Nodes:
    """Every node made so far (id = position): parent id, latent, and the edge that made it."""

    def __init__(self, latents: Tensor):
        m = len(latents)
        self.parent = [torch.full((m,), -1, dtype=torch.long)]
        self.latents = [latents]
        self.scale = [torch.zeros(m)]
        self.log_prob = [torch.zeros(m)]
        self.count = m

    def add(self, parent: Tensor, latents: Tensor, scale: Tensor, log_prob: Tensor) -> Tensor:
        ids = torch.arange(self.count, self.count + len(parent))
        self.count += len(parent)
        self.parent.append(parent.cpu())
        self.latents.append(latents)
        self.scale.append(scale.float().cpu())
        self.log_prob.append(log_prob.float().cpu())
        return ids


def _children(structure: Structure, k: int, first: Tensor, size: Tensor, trunk: Tensor):
    """The children of the live nodes at step k: (parent row, first leaf, leaves, stochastic, trunk)."""
    plan = structure.steps[k]
    rows, firsts, sizes, sde, trunks = [], [], [], [], []
    for i in range(len(first)):
        f, s, t = int(first[i]), int(size[i]), bool(trunk[i])
        if structure.trunk:
            if t and plan.fork > 1:  # the trunk goes on with the ODE; its b children take one leaf each
                kids = [(f, s - plan.fork, False, True)] + [(f + s - plan.fork + j, 1, True, False) for j in range(plan.fork)]
            else:
                kids = [(f, s, plan.sde and not t, t)]
        else:
            b = plan.fork
            kids = [(f + j * (s // b), s // b, plan.sde or b > 1, False) for j in range(b)]
        for kf, ks, kd, kt in kids:
            rows.append(i), firsts.append(kf), sizes.append(ks), sde.append(kd), trunks.append(kt)
    as_long = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
    return as_long(rows), as_long(firsts), as_long(sizes), torch.tensor(sde), torch.tensor(trunks)


def _prune(structure: Structure, k: int, latents: Tensor, first: Tensor, group_size: int) -> Tensor:
    """The kept children (bool) of step k's pruning rule, `keep` per tree, else ConfigError."""
    keep = structure.steps[k].keep
    tree = first // group_size
    kept = PRUNING.get(structure.prune)(latents, tree, k, keep).bool().cpu()
    per_tree = torch.zeros(int(tree.max()) + 1, dtype=torch.long).index_add(0, tree, kept.long())
    if (per_tree != keep).any():
        removed = " It removes every node of a tree." if (per_tree == 0).any() else ""
        raise ConfigError(f"pruning rule {structure.prune!r} kept {per_tree.tolist()} nodes per tree after step {k}, "
                          f"not keep={keep}.{removed}")
    return kept


def tree_rollout(env, policy, structure: Structure) -> TensorDictBase:
    """A rollout [N, K] sampled on `structure`'s trees (see the module docstring)."""
    td = env.reset()
    n, g, num_steps = td.batch_size[0], env.group_size, env.num_steps
    velocity, head, sampler = velocity_module(policy), dynamics_head(policy), sampler_module(policy)
    form = sampler.distribution_kwargs
    context, seeds = td.get(keys.CONTEXT), td.get(keys.STEP_SEED)
    first = torch.arange(0, n, g)  # live nodes: their first leaf and leaf count; one root per tree
    size = torch.full_like(first, g)
    trunk = torch.ones(len(first), dtype=torch.bool)
    latents = td.get(keys.LATENTS)[first]
    nodes = _Nodes(latents)
    ids = torch.arange(len(first))
    for k in range(num_steps):
        sigma = env.sigmas[k].expand(len(first))
        v = velocity(latents, sigma, context[first])  # one velocity per live node, charged once
        rows, first, size, sde, trunk = _children(structure, k, first, size, trunk)
        step = torch.full((len(rows),), k, dtype=torch.long, device=env.device)
        loc, scale = head.loc_scale(latents[rows], v[rows], step, sde.to(env.device))
        # the structure's multiplier beyond what the density (the head) already has: 1 unless a quirk
        in_head = 1.0 if head.noise_multiplier is None else float(head.noise_multiplier[k])
        extra = structure.steps[k].noise / in_head
        drawn = sampler(TensorDict({keys.LOC: loc, keys.SCALE: scale * extra, keys.STEP_SEED: seeds[first],
                                    keys.STEP: step}, batch_size=[len(rows)]))
        action, log_prob = drawn.get(keys.ACTION), drawn.get(keys.LOG_PROB)
        if extra != 1.0:  # drawn with the wider std, scored with the head's (BranchGRPO's reference form)
            log_prob = StepGaussian(loc, scale, **form).log_prob(action)
        if structure.steps[k].keep:
            kept = _prune(structure, k, action, first, g)
            rows, first, size, trunk = rows[kept], first[kept], size[kept], trunk[kept]
            action, scale, log_prob = action[kept], scale[kept], log_prob[kept]
            tree, rank = first // g, _rank_in_tree(first // g)
            size = torch.full_like(first, g // structure.steps[k].keep)
            first = tree * g + rank * size
        ids = nodes.add(ids[rows], action, scale, log_prob)
        latents = action
    return _leaf_paths(env, td, nodes, ids, first, structure)


def _rank_in_tree(tree: Tensor) -> Tensor:
    """0, 1, … within each run of equal tree ids (the nodes are ordered by tree)."""
    start = torch.searchsorted(tree, tree)
    return torch.arange(len(tree)) - start


def _leaf_paths(env, td: TensorDictBase, nodes: _Nodes, leaf_ids: Tensor, first: Tensor, structure) -> TensorDictBase:
    n, num_steps = td.batch_size[0], env.num_steps
    if len(leaf_ids) != n or not torch.equal(first.sort().values, torch.arange(n)):
        raise ConfigError(f"structure {structure.name!r} ended with {len(leaf_ids)} leaves for {n} trajectories")
    parent = torch.cat(nodes.parent)
    path = torch.empty(n, num_steps + 1, dtype=torch.long)
    path[first, -1] = leaf_ids
    for k in range(num_steps, 0, -1):
        path[:, k - 1] = parent[path[:, k]]
    all_latents = torch.cat(nodes.latents)
    x = all_latents[path.to(all_latents.device)]  # [N, K + 1, ...] leaf by leaf
    child, edge_parent = path[:, 1:], path[:, :-1]
    lowest = torch.full((nodes.count,), n, dtype=torch.long)
    lowest = lowest.scatter_reduce(0, child.flatten(), torch.arange(n).repeat_interleave(num_steps), "amin")
    owner = lowest[child] == torch.arange(n)[:, None]
    device = env.device
    steps = torch.arange(num_steps, device=device).expand(n, -1)
    done = (steps == num_steps - 1).unsqueeze(-1)
    reward = torch.zeros(n, num_steps, 1, device=device)
    if env.reward_fn is not None:
        with torch.no_grad():
            images = env.adapter.decode(x[:, -1])
        reward[:, -1, 0] = checked_call(env.reward_fn, images, env.batch_prompts).to(device)
    out = TensorDict({
        keys.STEP: steps, keys.SIGMA: env.sigmas[steps],
        keys.SCALE: torch.cat(nodes.scale)[child].to(device), keys.LOG_PROB: torch.cat(nodes.log_prob)[child].to(device),
        keys.DONE: torch.zeros_like(done), keys.TERMINATED: torch.zeros_like(done),
        keys.TREE_NODE: child.to(device), keys.TREE_PARENT: edge_parent.to(device), keys.EDGE_OWNER: owner.to(device),
        keys.NEXT: {keys.STEP: steps + 1, keys.SIGMA: env.sigmas[steps + 1], keys.REWARD: reward,
                    keys.DONE: done, keys.TERMINATED: done.clone()},
    }, batch_size=[n, num_steps], device=device)
    once = td.select(*_ONCE)
    once.set(keys.L1_REL, dynamics.relative_l1(x[:, :-1], x[:, 1:], batch_dims=2))
    return attach_latents(out, once, x)
