"""Tree rollouts (genrl.envs.tree): a fork of G at step 0 is G chains with shared noise, a shared prefix
is computed once, the bookkeeping stores each edge once, bad structures are one-line ConfigErrors."""

from __future__ import annotations

import pytest
import torch

from conftest import TOY_PROMPTS
from genrl import build, config, keys
from genrl.envs import DenoisingEnv
from genrl.envs import structures
from genrl.errors import ConfigError
from genrl.policy import ModelCalls, make_policy, stochastic_steps
from genrl.tree_advantages import first_rows
from toy_adapter import ToyAdapter

K, G, P = 6, 4, 2


def _env_and_policy(structure=None, window=None, noise_multiplier=None):
    adapter = ToyAdapter()
    sigmas = torch.linspace(1, 0, K + 1)
    calls = ModelCalls()
    stochastic = stochastic_steps(K, window) if structure is None else stochastic_steps(K)
    policy = make_policy(adapter, sigmas, stochastic, "flow_sde", micro_batch=4, calls=calls,
                         noise_multiplier=noise_multiplier)
    env = DenoisingEnv(adapter, TOY_PROMPTS, sigmas, group_size=G, prompts_per_batch=P, shared_noise=True, seed=3,
                       structure=structure)
    return env, policy, calls


def _rollout(structure=None, window=None, **kw):
    env, policy, calls = _env_and_policy(structure, window, **kw)
    with torch.no_grad():
        td = env.rollout(policy=policy, keep_tail=True)
    return td, calls.take()


def test_a_fork_of_g_at_step_0_is_g_chains_with_shared_noise():
    fork_at_0 = lambda update: structures.shared_prefix(K, G, update, size=K - 1, start=0)  # noqa: E731
    tree, tree_calls = _rollout(fork_at_0)
    chains, chain_calls = _rollout()
    for key in (keys.LATENTS, keys.ACTION, keys.LOG_PROB, keys.SCALE, keys.STEP, keys.SIGMA, keys.L1_REL):
        assert torch.equal(tree.get(key), chains.get(key)), key
    assert tree_calls == P * (1 + G * (K - 1)) < chain_calls == P * G * K  # the shared x_0 is evaluated once


def test_a_shared_prefix_gives_the_chains_at_fewer_model_calls():
    c, size = 2, 2
    prefix = lambda update: structures.shared_prefix(K, G, update, size=size, start=c)  # noqa: E731
    tree, tree_calls = _rollout(prefix)
    chains, chain_calls = _rollout(window=[c, size])
    for key in (keys.ACTION, keys.LOG_PROB, keys.SCALE):
        assert torch.equal(tree.get(key), chains.get(key)), key
    assert tree_calls == P * (c + 1 + G * (K - c - 1)) and chain_calls == P * G * K  # x_0 … x_c once
    # each prefix edge is stored once: owned by the first leaf of each tree only
    owner = tree.get(keys.EDGE_OWNER)
    assert owner[:, :c].sum() == P * c and owner[::G, :c].all() and owner[:, c:].all()


def test_branches_bookkeeping_stores_each_edge_once():
    s = structures.branches(K, G, 0, points=[0, 2], fork=2, noise=1.0)
    td, calls = _rollout(lambda update: s)
    node, parent, owner = td.get(keys.TREE_NODE), td.get(keys.TREE_PARENT), td.get(keys.EDGE_OWNER)
    assert calls == P * s.velocities() == P * (1 + 2 + 2 + 4 + 4 + 4)
    assert int(owner.sum()) == P * s.edges() == len(torch.unique(node))
    assert torch.equal(owner, first_rows(node))
    assert torch.equal(parent[:, 1:], node[:, :-1])  # a path: each edge leaves from the previous edge's child
    # leaves 0, 1 share x_1 and x_2, leaves 0 and 2 only x_0
    x = td.get(keys.ACTION)
    assert torch.equal(x[0, :2], x[1, :2]) and not torch.equal(x[0, 0], x[2, 0])
    assert torch.equal(td.get(keys.LATENTS)[0, 0], td.get(keys.LATENTS)[2, 0])
    assert not torch.equal(x[0, 2], x[1, 2])  # the fork at step 2


@pytest.mark.parametrize("consistent", [True, False])
def test_fork_noise_multiplier_in_the_density_or_not(consistent):
    s = structures.branches(K, G, 0, points=[0, 2], fork=2, noise=4.0)
    multiplier = torch.tensor([p.noise for p in s.steps]) if consistent else None
    env, policy, _ = _env_and_policy(lambda update: s, noise_multiplier=multiplier)
    with torch.no_grad():
        td = env.rollout(policy=policy)
        rows = td[:, :-1].reshape(-1)
        again = policy.get_dist(rows.clone()).log_prob(rows.get(keys.ACTION))
    assert torch.allclose(again, rows.get(keys.LOG_PROB), atol=1e-6)  # re-evaluated as the objective does
    scale = td.get(keys.SCALE)
    base = env.sigmas  # noqa: F841 - the std ratio between a fork step and the next one
    ratio = scale[:, 0] / scale[:, 1]
    _, plain_policy, _ = _env_and_policy(lambda update: s)
    plain = plain_policy.module[0][1].module.loc_scale(
        td.get(keys.LATENTS)[:, :2].reshape(-1, 3, 8, 8), torch.zeros(2 * P * G, 3, 8, 8),
        torch.tensor([0, 1] * P * G), torch.ones(2 * P * G, dtype=torch.bool))[1].reshape(-1, 2)
    expected = 4.0 * plain[:, 0] / plain[:, 1] if consistent else plain[:, 0] / plain[:, 1]
    assert torch.allclose(ratio, expected)


def test_pruning_keeps_the_counted_nodes():
    s = structures.branches(K, G, 0, points=[0, 1, 3], fork=2, noise=1.0, prune="farthest", prune_at=1, keep=2)
    assert s.leaves == G and s.live_nodes() == [1, 2, 2, 2, 4, 4, 4]
    td, calls = _rollout(lambda update: s)
    assert calls == P * s.velocities()
    assert len(torch.unique(td.get(keys.TREE_NODE)[:, 1])) == P * 2


def toy_config(algorithm: str, tmp_path, group_size: int = G, **extra):
    """A toy-model config of K steps, 2 prompts of `group_size`; extra `section__key=value` entries."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(TOY_PROMPTS) + "\n")
    data = {"algorithm": algorithm, "model": {"name": "toy", "options": {}},
            "reward": {"name": "toy_brightness", "options": {}},
            "prompts": {"train": str(prompts), "eval": str(prompts)},
            "sampling": {"num_steps": K, "micro_batch": 8}, "train": {"prompts_per_update": 2, "group_size": group_size}}
    for key, value in extra.items():
        section, _, name = key.partition("__")
        data.setdefault(section, {})[name] = value
    return config.from_dict(data)


@pytest.mark.parametrize("extra,message", [
    ({"branch_grpo__structure_options": {"points": [0], "fork": 0}}, "fork=0 is not allowed: expected an integer >= 1"),
    ({"branch_grpo__structure_options": {"points": [0, 5], "fork": 2}}, "after the last SDE step"),
    ({"branch_grpo__structure_options": {"points": [0, 2, 3], "fork": 2}}, "set train.group_size=8"),
    ({"branch_grpo__structure": "chains", "branch_grpo__structure_options": {}}, "has no forks"),
    ({"branch_grpo__structure_options": {"points": [0, 2], "prune": "farthest", "prune_at": 1, "keep": 0}},
     "removes every node"),
])
def test_bad_structures_are_one_line_config_errors(tmp_path, extra, message):
    extra = {"branch_grpo__structure_options": {"points": [0, 2]}} | extra
    with pytest.raises(ConfigError, match=message) as err:
        build.build(toy_config("branch_grpo", tmp_path, **extra))
    assert "\n" not in str(err.value)


def test_a_registered_structure_with_a_fork_factor_below_1():
    plans = (structures.StepPlan(sde=True, fork=0),) + (structures.StepPlan(sde=True),) * (K - 1)
    with pytest.raises(ConfigError, match="the fork factor at step 0 is 0; a fork factor is an integer >= 1"):
        structures.Structure("mine", plans).validate(G, "branch_grpo.structure='mine'")


def test_a_structure_over_the_nfe_budget_of_one_update():
    """config refuses a budget below one update of chains; a tree costs fewer calls, so this check stands
    for structures that cost more (e.g. a registered one that expands then prunes)."""
    s = structures.branches(K, G, 0, points=[0, 2], fork=2, noise=1.0)
    structures.check_budget(s, P, 2, P * s.velocities() * 2)  # exactly one update's rollout: accepted
    with pytest.raises(ConfigError, match="more than train.nfe_budget=67"):
        structures.check_budget(s, P, 2, P * s.velocities() * 2 - 1)


def test_a_rule_that_prunes_every_node_at_run_time(tmp_path):
    @structures.PRUNING.register("none_kept_for_test")
    def none_kept(latents, tree, step, keep):
        return torch.zeros(len(tree), dtype=torch.bool)

    s = structures.branches(K, G, 0, points=[0, 1, 3], fork=2, noise=1.0, prune="none_kept_for_test", prune_at=1,
                            keep=2)
    env, policy, _ = _env_and_policy(lambda update: s)
    with pytest.raises(ConfigError, match="removes every node"):
        env.rollout(policy=policy)
