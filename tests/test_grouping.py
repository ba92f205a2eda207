"""Timestep grouping strategies (docs/architecture.md, "The GRPO family"; Chunk-GRPO, arXiv 2510.21583)."""

import pytest
import torch

from genrl.algorithms import grouping
from genrl.algorithms.grouping import GroupingContext, scale_chunk_sizes


def ctx(num_steps=17, n=3, l1=None, update=0, seed=0):
    trainable = torch.ones(num_steps, dtype=torch.bool)
    trainable[-1] = False
    l1 = l1 if l1 is not None else torch.rand(n, num_steps, generator=torch.Generator().manual_seed(seed))
    return GroupingContext(trainable, l1, update, torch.Generator().manual_seed(seed))


def sizes_of(row):
    return [int((row == u).sum()) for u in range(int(row.max()) + 1)]


def test_scale_chunk_sizes():
    assert scale_chunk_sizes([2, 3, 4, 7], 16) == [2, 3, 4, 7]
    for total in range(4, 40):
        s = scale_chunk_sizes([2, 3, 4, 7], total)
        assert sum(s) == total and min(s) >= 1 and s == sorted(s), (total, s)
    assert scale_chunk_sizes([2, 3, 4, 7], 9) == [1, 2, 2, 4]
    assert scale_chunk_sizes([2, 3, 4, 7], 3) == [1, 1, 1]


def test_fixed_chunks_match_the_paper_for_17_steps():
    units = grouping.fixed_chunks(ctx(17))
    assert units.combine is None  # how a chunk's log-ratios combine is the algorithm's rule (chunk_grpo.py: mean)
    for row in units.assignment:
        assert sizes_of(row) == [2, 3, 4, 7]
        assert row[-1] == -1  # the last transition is dropped
        assert torch.all(row[:-1].diff() >= 0)  # consecutive, from the high-noise end


def test_per_step_and_uniform_chunks():
    assert sizes_of(grouping.per_step(ctx(10)).assignment[0]) == [1] * 9
    assert sizes_of(grouping.uniform_chunks(ctx(10), size=4).assignment[0]) == [4, 4, 1]
    assert sizes_of(grouping.uniform_chunks(ctx(17), size=16).assignment[0]) == [16]


def test_random_subset_trains_a_fraction_of_each_trajectory():
    units = grouping.random_subset(ctx(11, n=5), fraction=0.6)
    trained = (units.assignment >= 0).sum(1)
    assert torch.all(trained == 6)
    assert len({tuple(r.tolist()) for r in units.assignment}) > 1  # drawn per trajectory


def test_sliding_window_moves_with_the_update():
    first = grouping.sliding_window(ctx(10, update=0), size=3)
    later = grouping.sliding_window(ctx(10, update=2), size=3)
    assert (first.assignment[0] >= 0).nonzero().flatten().tolist() == [0, 1, 2]
    assert (later.assignment[0] >= 0).nonzero().flatten().tolist() == [2, 3, 4]


def test_dynamic_chunks_follow_sign_changes_of_the_l1_profile():
    # Rising then falling profile over 8 trainable steps: two monotone runs.
    profile = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.35, 0.3, 0.2, 0.1, 0.0])
    units = grouping.dynamic_chunks(ctx(9, n=1, l1=profile.unsqueeze(0)), max_size=8)
    assert sizes_of(units.assignment[0]) == [4, 4]


def test_dynamic_chunks_split_long_monotone_runs_until_small_enough():
    profile = torch.linspace(1.0, 0.0, 17)  # no sign change at first order
    row = grouping.dynamic_chunks(ctx(17, n=1, l1=profile.unsqueeze(0)), max_size=4).assignment[0]
    sizes = sizes_of(row)
    assert sum(sizes) == 16 and max(sizes) <= 4
    assert torch.all(row[:-1].diff() >= 0)


def test_dynamic_chunks_default_max_size_and_per_trajectory():
    units = grouping.dynamic_chunks(ctx(17, n=4))
    for row in units.assignment:
        sizes = sizes_of(row)
        assert sum(sizes) == 16 and max(sizes) <= 7


@pytest.mark.parametrize("weighting", ["uniform", "l1", "softmax"])
def test_draw_units_keeps_a_fraction_of_whole_units(weighting):
    c = ctx(17, n=64)
    units = grouping.fixed_chunks(c)
    drawn = grouping.draw_units(units, 0.5, c.generator, c.l1_rel, weighting)
    for before, after in zip(units.assignment, drawn.assignment):
        kept = set(after[after >= 0].tolist())
        assert len(kept) == 2
        for u in kept:  # whole chunks only
            assert torch.equal(after == u, before == u)


def test_l1_weighting_favours_high_dynamics_chunks():
    n = 2000
    l1 = torch.zeros(n, 17)
    l1[:, :2] = 1.0  # the first chunk moves a lot
    l1[:, 2:16] = 0.01
    c = ctx(17, n=n, l1=l1)
    drawn = grouping.draw_units(grouping.fixed_chunks(c), 0.25, c.generator, l1, "l1")
    assert (drawn.assignment[:, 0] == 0).float().mean() > 0.9
    uniform = grouping.draw_units(grouping.fixed_chunks(c), 0.25, c.generator, l1, "uniform")
    assert abs((uniform.assignment[:, 0] == 0).float().mean() - 0.25) < 0.05


def test_unknown_strategy_names_the_registered_ones():
    with pytest.raises(KeyError, match="fixed_chunks"):
        grouping.get("nope")
