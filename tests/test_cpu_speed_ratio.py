"""The ratio-to-the-limit benchmark (genrl.benchmarks.cpu_ratio), run tiny: its grid and that every rate is
the counted FLOPs over the measured time, and every fraction that rate over the same run's matmul rate."""

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from genrl import models
from genrl.benchmarks import cpu_ratio


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_quick_grid_has_every_setting_and_consistent_fractions():
    rows = cpu_ratio.measure(micro_batches=(2,), threads=(1,), calls=1, repeats=1, matmul_n=64)
    assert {(r.dtype, r.mode) for r in rows} == {(d, m) for d in ("fp32", "bf16") for m in ("rollout", "training")}
    assert all(r.layout == "1 process × 1 thread(s)" and r.micro_batch == 2 and r.compiled == "eager" for r in rows)
    for r in rows:
        assert r.flops > 0 and r.seconds > 0
        assert math.isclose(r.achieved, r.flops / r.seconds, rel_tol=1e-12)
        assert math.isclose(r.fraction, r.achieved / r.matmul, rel_tol=1e-12)
    by = {(r.dtype, r.mode): r for r in rows}
    # one matmul rate per dtype and layout, shared by the rows of that dtype
    assert by["fp32", "rollout"].matmul == by["fp32", "training"].matmul
    assert by["bf16", "rollout"].matmul == by["bf16", "training"].matmul
    # autocast changes the arithmetic's precision, not its count; a training pass adds the backward
    assert by["fp32", "rollout"].flops == by["bf16", "rollout"].flops
    assert by["fp32", "training"].flops > 2 * by["fp32", "rollout"].flops


def test_counted_flops_are_the_denoisers_own():
    """The benchmark's count of a rollout call equals FlopCounterMode on the adapter's velocity, and it
    scales with the micro-batch (every product is per row or per token)."""
    rows = {r.micro_batch: r for r in cpu_ratio.measure((2, 4), (1,), calls=1, repeats=1, matmul_n=64)
            if r.dtype == "fp32" and r.mode == "rollout"}
    adapter = models.load("tiny", finetune="full")
    cond = adapter.encode(["a red circle", "a blue square"])
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        adapter.velocity(torch.zeros(2, *adapter.latent_shape), torch.full((2,), 0.5), cond)
    assert rows[2].flops == counter.get_total_flops()
    assert rows[4].flops == 2 * rows[2].flops


def test_matmul_rate_counts_two_n_cubed():
    calls = []
    rate = cpu_ratio.matmul_rate("fp32", n=32, calls=2, repeats=1)
    assert rate > 0
    seconds = cpu_ratio.best_seconds(lambda: calls.append(1), calls=3, repeats=2)
    assert len(calls) == 1 + 3 * 2 and seconds >= 0  # one warm-up, then repeats × calls
