"""genrl/passes.py and the GRPO family's training batch: whole units packed into full model calls, the
rows of a pass copied out of the rollout (only what the objective reads), log-probs of the packed rows
bitwise equal to the rollout's, and the step's gradient that of the minibatch's mean over units."""

import pytest
import torch

from conftest import TOY_PROMPTS
from genrl import dynamics, keys
from genrl.algorithms import grouping
from genrl.algorithms.grpo import StepRows
from genrl.envs import DenoisingEnv
from genrl.loss import GRPOLoss
from genrl.passes import model_rows, pack_units, unit_passes
from genrl.policy import make_policy, stochastic_steps
from toy_adapter import ToyAdapter, TransformerToyAdapter


def padding(sizes, passes, micro_batch):
    rows = [sum(sizes[i] for i in members) for members in passes]
    return 1 - sum(sizes) / model_rows(rows, micro_batch)


def chunk_sizes(trajectories, trainable, sizes, fraction, seed=0):
    """Row counts of the units Chunk-GRPO draws, in unit order (trajectory-major), as the trainer sees them."""
    mask = torch.ones(trainable + 1, dtype=torch.bool)
    mask[-1] = False
    generator = torch.Generator().manual_seed(seed)
    ctx = grouping.GroupingContext(mask, torch.rand(trajectories, trainable + 1), 0, generator)
    units = grouping.draw_units(grouping.fixed_chunks(ctx, sizes), fraction, generator)
    return [int(c) for row in units.assignment for c in torch.bincount(row[row >= 0]) if c > 0]


def test_single_step_units_make_consecutive_passes_of_micro_batch_rows():
    assert pack_units([1] * 40, 16) == [list(range(16)), list(range(16, 32)), list(range(32, 40))]


def test_a_gap_is_closed_exactly_by_later_units_and_an_unclosable_one_stays_padded():
    # 7 leaves a gap of 1 in two calls of 4; 7 + 2 + 3 fills three calls exactly, 4 fills one
    assert pack_units([7, 4, 2, 3], 4) == [[0, 2, 3], [1]]
    assert pack_units([7, 7], 4) == [[0], [1]]  # no unit closes 7's gap within 3 calls: padded, never lost
    assert pack_units([], 4) == []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flux_chunks_waste_at_most_two_percent_of_the_model_rows(seed):
    """flux.yaml: 96 trajectories a minibatch, chunks [2, 3, 4, 7] of 16 steps, 2 drawn, micro-batch 4."""
    sizes = chunk_sizes(96, 16, [2, 3, 4, 7], 0.5, seed)
    passes = pack_units(sizes, 4)
    assert sorted(i for members in passes for i in members) == list(range(len(sizes)))  # every unit once, whole
    assert max(sum(sizes[i] for i in members) for members in passes) <= 3 * 4  # one call more than a 7 needs
    assert padding(sizes, passes, 4) <= 0.02
    # the previous rule closed a pass before the unit that would take it past 4 rows: here one chunk a pass
    assert padding(sizes, [[i] for i in range(len(sizes))], 4) > 0.1


def test_the_main_jobs_single_step_units_fill_every_call():
    sizes = chunk_sizes(32, 4, [2, 3, 4, 7], 1.0)  # 4 trained steps: the chunks scale to single steps
    assert sizes == [1] * 128 and padding(sizes, pack_units(sizes, 16), 16) == 0


def rollout_and_batch(adapter, micro_batch=4, k=8):
    sigmas = dynamics.flow_sigmas(k)
    env = DenoisingEnv(adapter, TOY_PROMPTS, sigmas, group_size=3, prompts_per_batch=2, seed=1)
    policy = make_policy(adapter, sigmas, stochastic_steps(k), "flow_sde", micro_batch=micro_batch, a=0.7)
    with torch.no_grad():
        rollout = env.rollout(policy=policy)
    n = rollout.batch_size[0]
    rollout.set(keys.ADVANTAGE, torch.linspace(-1, 1, n)[:, None].expand(rollout.batch_size))
    ctx = grouping.GroupingContext(stochastic_steps(k), rollout.get(keys.L1_REL)[:, 0], 0, torch.Generator().manual_seed(0))
    units = grouping.draw_units(grouping.fixed_chunks(ctx, [2, 2, 3]), 0.67, ctx.generator)  # 2 of 3 chunks each
    loss = GRPOLoss(policy, clip_range=0.2)
    return rollout, StepRows(rollout, units.assignment, in_keys=loss.in_keys), policy, loss


def test_a_pass_copies_only_what_the_objective_reads_and_the_context_by_trajectory():
    rollout, batch, policy, loss = rollout_and_batch(ToyAdapter())
    rows = batch.rows(torch.arange(rollout.batch_size[0]))
    assert set(rows.keys()) == {keys.TRAJECTORY, keys.STEP, keys.UNIT}  # a minibatch is an index
    td = batch.gather(rows)
    assert set(td.keys()) == set(loss.in_keys) and keys.LOC not in td.keys()
    traj, step = rows[keys.TRAJECTORY], rows[keys.STEP]
    expected = rollout[traj, step]  # what the rows were before: every entry, copied
    for key in loss.in_keys:
        if key != keys.UNIT:
            assert (td.get(key) == expected.get(key)).all(), key
    assert td[keys.CONTEXT, "prompt_embeds"].stride(0) != 0  # a real batch for the model, not a view of the rollout


def test_packed_rows_of_several_trajectories_re_evaluate_to_the_rollouts_log_probs_bit_for_bit():
    """Units of different trajectories share model calls and a unit spans calls: with unchanged weights
    every row's log-prob is the rollout's exactly, whatever its neighbours (fixed-shape calls)."""
    rollout, batch, policy, _ = rollout_and_batch(TransformerToyAdapter(), micro_batch=4)
    rows = batch.rows(torch.arange(rollout.batch_size[0]))
    passes = unit_passes(rows, 4)
    assert any(p.size > 4 and len(set(p.rows()[keys.TRAJECTORY].tolist())) > 1 for p in passes)
    with torch.no_grad():
        for p in passes:
            td = batch.gather(p.rows())
            new = policy.get_dist(td).log_prob(td[keys.ACTION])
            assert torch.equal(new, td[keys.LOG_PROB])
        everything = batch.gather(rows[torch.randperm(rows.batch_size[0])])  # other neighbours, one batch
        assert torch.equal(policy.get_dist(everything).log_prob(everything[keys.ACTION]), everything[keys.LOG_PROB])


def test_packed_passes_give_the_gradient_of_the_mean_over_the_minibatchs_units():
    adapter = ToyAdapter()
    rollout, batch, policy, loss = rollout_and_batch(adapter)
    with torch.no_grad():  # move the policy so that ratios differ from 1
        for p in adapter.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    rows = batch.rows(torch.arange(rollout.batch_size[0]))
    params = list(adapter.trainable_parameters())

    def gradient(passes):
        for p in params:
            p.grad = None
        total = sum(p.units for p in passes)
        for p in passes:
            (loss(batch.gather(p.rows()))["loss_policy"] * p.units / total).backward()
        return [p.grad.clone() for p in params]

    packed = unit_passes(rows, 4)
    assert len(packed) > 2
    one_pass = unit_passes(rows, 10_000)
    assert len(one_pass) == 1
    for a, b in zip(gradient(packed), gradient(one_pass)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


def test_a_balanced_draw_gives_every_process_as_many_groups_of_each_minibatch():
    from genrl.training_batch import minibatch_groups

    groups, minibatches, processes = 48, 2, 8  # sd35m.yaml: 48 prompts, 2 minibatches, on 8 GPUs
    drawn = minibatch_groups(groups, minibatches, "balanced", torch.Generator().manual_seed(0))
    assert sorted(torch.cat(drawn).tolist()) == list(range(groups))  # every group once
    for minibatch in drawn:
        held = torch.bincount(minibatch // (groups // processes), minlength=processes)  # process p: consecutive groups
        assert held.tolist() == [groups // processes // minibatches] * processes
        assert sorted((minibatch // minibatches).tolist()) == list(range(groups // minibatches))  # one per block
    # still random: which group of a block goes to which minibatch changes with the draw
    other = minibatch_groups(groups, minibatches, "balanced", torch.Generator().manual_seed(1))
    assert any(not torch.equal(a, b) for a, b in zip(drawn, other))
    # a random draw is what the trainer drew before the option existed: the same generator, the same minibatches
    old = torch.randperm(groups, generator=torch.Generator().manual_seed(0)).chunk(minibatches)
    new = minibatch_groups(groups, minibatches, "random", torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(old, new))
    held = [torch.bincount(m // (groups // processes), minlength=processes) for m in new]
    assert any(h.max() > groups // processes // minibatches for h in held)  # what lockstep fillers wait on
