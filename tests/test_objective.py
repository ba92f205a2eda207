"""The GRPO family's objective on its own: the KL path, advantages scattered to units, declared keys,
the unit rule fixed at construction, and units_per_trajectory under a unit draw.

Expected values are recomputed here from the policy's distribution with plain tensor operations:
L = mean_u max(−A_u·ρ_u, −A_u·clip(ρ_u)) + β·mean_u mean_{k∈u} mean((μ_θ − μ_ref)² / 2s²).
"""

import pytest
import torch

from conftest import TOY_PROMPTS
from genrl import config, dynamics, keys
from genrl.algorithms import grouping
from genrl.build import build_algorithm
from genrl.envs import DenoisingEnv
from genrl.loss import GRPOLoss
from genrl.policy import ModelCalls, make_policy, mean_module, stochastic_steps
from toy_adapter import ToyAdapter

K = 5
# (trajectory, step, unit id): unit ids need not be contiguous; unit 7 has two steps, unit 12 three.
ROWS = [(0, 0, 7), (0, 1, 7), (0, 2, 3), (1, 0, 12), (1, 1, 12), (1, 3, 12)]
ADVANTAGE = torch.tensor([0.5, -1.5, 0.0, 2.0, 1.0, -1.0])  # per trajectory


def rows_and_policy(seed: int = 0):
    """Rows [S] of a toy rollout whose policy has since moved away from the one that sampled (and the reference)."""
    adapter = ToyAdapter(seed=seed)
    sigmas = dynamics.flow_sigmas(K)
    env = DenoisingEnv(adapter, TOY_PROMPTS, sigmas, group_size=3, prompts_per_batch=2, seed=1)
    calls = ModelCalls()
    policy = make_policy(adapter, sigmas, stochastic_steps(K), "flow_sde", micro_batch=4, calls=calls, a=0.7)
    with torch.no_grad():
        rollout = env.rollout(policy=policy)
        for p in adapter.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed + 1)))
    rollout.set(keys.ADVANTAGE, ADVANTAGE[:, None].expand(rollout.batch_size))
    traj, step, unit = (torch.tensor(c) for c in zip(*ROWS))
    rows = rollout[traj, step]
    rows.set(keys.UNIT, unit)
    calls.take()
    return rows, policy, adapter, calls


def by_hand(rows, policy, adapter, clip_range: float, combine: str = "mean"):
    """(policy loss, per-unit KL mean) recomputed with plain tensor operations."""
    with torch.no_grad():
        td = mean_module(policy)(rows.clone())
        with adapter.reference():
            ref = mean_module(policy)(rows.clone())
    loc, scale, action = td[keys.LOC], td[keys.SCALE], rows[keys.ACTION]
    log_prob = (-((action - loc) ** 2) / (2 * scale.reshape(-1, 1, 1, 1) ** 2) - torch.log(scale).reshape(-1, 1, 1, 1)
                - 0.5 * torch.log(torch.tensor(2 * torch.pi))).mean((1, 2, 3))
    step_log_ratio = log_prob - rows[keys.LOG_PROB]
    step_kl = ((loc - ref[keys.LOC]) ** 2 / (2 * scale.reshape(-1, 1, 1, 1) ** 2)).mean((1, 2, 3))
    losses, kls = [], []
    for u in sorted(set(rows[keys.UNIT].tolist())):
        mask = rows[keys.UNIT] == u
        log_ratio = step_log_ratio[mask].mean() if combine == "mean" else step_log_ratio[mask].sum()
        advantage = rows[keys.ADVANTAGE][mask][0]  # every step of a unit carries its trajectory's advantage
        ratio = torch.exp(log_ratio)
        losses.append(torch.maximum(-advantage * ratio, -advantage * ratio.clamp(1 - clip_range, 1 + clip_range)))
        kls.append(step_kl[mask].mean())
    return torch.stack(losses).mean(), torch.stack(kls).mean()


@pytest.mark.parametrize("combine", ["mean", "sum"])
def test_the_kl_path_is_beta_times_the_per_unit_mean_kl_to_the_reference(combine):
    rows, policy, adapter, calls = rows_and_policy()
    beta = 0.04
    out = GRPOLoss(policy, clip_range=0.2, beta=beta, combine=combine, reference=adapter.reference)(rows.clone())
    assert calls.take() == 2 * len(ROWS)  # the policy and the reference, each on every row
    policy_loss, kl = by_hand(rows, policy, adapter, clip_range=0.2, combine=combine)
    assert kl > 0  # the policy moved away from the reference
    torch.testing.assert_close(out["loss_policy"], policy_loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out["loss_kl"], beta * kl, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(out["kl"], kl, rtol=1e-5, atol=1e-9)
    assert not out["kl"].requires_grad and out["loss_kl"].requires_grad
    assert out["num_units"] == 3


def test_without_beta_there_is_no_kl_term_and_no_reference_call():
    rows, policy, adapter, calls = rows_and_policy()
    out = GRPOLoss(policy, clip_range=0.2, beta=0.0, reference=adapter.reference)(rows.clone())
    assert "loss_kl" not in out.keys() and "kl" not in out.keys()
    assert calls.take() == len(ROWS)


def test_advantages_are_scattered_to_units_whatever_the_row_order():
    rows, policy, adapter, _ = rows_and_policy()
    loss = GRPOLoss(policy, clip_range=1e6, reference=adapter.reference)  # no clipping: L = −mean_u A_u·ρ_u
    out = loss(rows.clone())
    policy_loss, _ = by_hand(rows, policy, adapter, clip_range=1e6)
    torch.testing.assert_close(out["loss_policy"], policy_loss, rtol=1e-5, atol=1e-7)
    shuffled = loss(rows[torch.tensor([5, 2, 0, 3, 1, 4])].clone())
    torch.testing.assert_close(shuffled["loss_policy"], out["loss_policy"], rtol=1e-6, atol=1e-8)
    # the units of trajectory 0 (A = 0.5) pull their ratios up, the unit of trajectory 1 (A = −1.5) down
    rows_with_grad = rows.clone()
    out = loss(rows_with_grad)
    out["loss_policy"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in adapter.trainable_parameters())


def test_keys_are_renamed_through_set_keys_and_an_unknown_name_is_rejected():
    rows, policy, adapter, _ = rows_and_policy()
    expected = GRPOLoss(policy, clip_range=0.2, reference=adapter.reference)(rows.clone())
    renamed = rows.clone().rename_key_(keys.ADVANTAGE, "adv").rename_key_(keys.UNIT, "chunk")
    loss = GRPOLoss(policy, clip_range=0.2, reference=adapter.reference).set_keys(advantage="adv", unit="chunk")
    assert (loss.tensor_keys.advantage, loss.tensor_keys.unit) == ("adv", "chunk")
    assert keys.ADVANTAGE not in renamed.keys() and keys.UNIT not in renamed.keys()  # only the new names are there
    torch.testing.assert_close(loss(renamed)["loss_policy"], expected["loss_policy"])
    with pytest.raises(ValueError, match="GRPOLoss reads no key named advantages; accepted: action, advantage, loc"):
        loss.set_keys(advantages="adv")


def test_the_unit_rule_is_fixed_when_the_objective_is_built(toy_overrides):
    with pytest.raises(ValueError, match="combine must be 'mean' or 'sum'"):
        GRPOLoss(None, combine="max")
    chunk = build_algorithm(config.load(overrides=toy_overrides))
    assert chunk.unit_combine == "mean"  # chunk_grpo.py: the chunk log-ratio is the mean of its steps'

    @grouping.register("summed_pairs_for_test")
    def pairs(ctx, combine="sum"):
        return grouping.chunks_to_units(ctx, [2, 2, 1], combine)

    summed = build_algorithm(config.load(overrides=toy_overrides + ["chunk_grpo.grouping=summed_pairs_for_test"]))
    assert summed.unit_combine == "sum"  # a strategy that takes `combine` states its own rule
    cfg = config.load(overrides=toy_overrides + ["chunk_grpo.grouping=summed_pairs_for_test",
                                                 "chunk_grpo.grouping_options={combine: mean}"])
    assert build_algorithm(cfg).unit_combine == "mean"


def test_units_per_trajectory_is_the_mean_number_trained_under_a_draw():
    trainable = torch.ones(9, dtype=torch.bool)
    trainable[-1] = False
    ctx = grouping.GroupingContext(trainable, torch.rand(4, 9), 0, torch.Generator().manual_seed(0))
    every_step = grouping.per_step(ctx)
    assert every_step.num_slots == 8 and every_step.units_per_trajectory == 8.0
    drawn = grouping.draw_units(every_step, 0.25, torch.Generator().manual_seed(0))
    assert drawn.num_slots > 2  # the largest index drawn: what the metric used to report
    assert drawn.units_per_trajectory == 2.0
    chunks = grouping.fixed_chunks(ctx, sizes=[2, 3, 3])
    two_of_three = grouping.draw_units(chunks, 0.67, torch.Generator().manual_seed(0))  # ⌊2.01⌋ = 2 of 3 chunks
    assert two_of_three.units_per_trajectory == 2.0 and two_of_three.num_slots == 3
    uneven = grouping.Units(torch.tensor([[0, 0, 1, -1], [2, -1, -1, -1]]))
    assert uneven.units_per_trajectory == 1.5  # (2 + 1) / 2
