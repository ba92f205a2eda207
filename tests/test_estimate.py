"""`genrl bench SUITE --estimate` (genrl.benchmarks.estimate, flop_count): a suite's cost counted without
weights or a device. The tiny model's counted FLOPs of an update equal FlopCounterMode around a real one;
a GPU suite's estimate runs here and its counts follow the suite's closed forms."""

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from genrl import cli
from genrl.benchmarks import estimate as est
from genrl.benchmarks.flop_count import PeakBytes, fused_attention


@pytest.fixture(scope="module")
def smoke():
    return est.estimate("smoke")


def test_tiny_update_flops_equal_a_real_updates_count(smoke):
    """Counted: recorded calls × one call's FLOPs on the meta device. Independent: FlopCounterMode around a real
    update of the shipped tiny model on the CPU (rollout, decode, reward, KL reference, backward passes)."""
    arm = next(a for a in smoke["arms"] if a.label == "flow_grpo")
    u = arm.update
    # smoke: 4 prompts × 4 images = 16 trajectories, one call of 16 rows per step; 10 steps, 4 trained + reference
    assert (u.forward, u.train, u.reference, u.images, u.micro_batch) == (10, 4, 4, 16, 16)
    assert u.nfe == 16 * (10 + 2 * 4)
    measured, _ = est.measured_update_flops(arm.cfg, updates=0)
    assert arm.update_flops == measured


def test_gpu_suite_estimate_prints_the_table(capsys):
    assert cli.main(["bench", "sd35m-geneval-like", "--estimate", "--mfu", "0.5", "--num-processes", "8"]) == 0
    out = capsys.readouterr().out
    # Flow-GRPO: 48 × 24 = 1152 trajectories in calls of 8 (× 2 with CFG); K = 10 rollout steps, 9 trained, each
    # with its KL reference call; 64,512 NFE an update (the suite's comment) spends 4,128,768 in 64 updates
    assert "| flow_grpo | 3 | 64,512 | 1,440, 1,296, 1,296 |" in out
    assert "| 64 | " in out.split("| flow_grpo |")[1].splitlines()[0]
    for gpu in ("H100", "H200", "A100"):
        assert f"| {gpu} |" in out
    assert "MFU 0.50" in out and "8 GPU(s) per run" in out


def test_projection_is_flops_over_rate(smoke):
    result = smoke
    rows = {r["gpu"]: r for r in est.gpu_table(result, mfu=0.25, gpus=4)}
    for name, (peak, _) in est.GPUS.items():
        assert math.isclose(rows[name]["gpu_hours"], result["flops"] / (peak * 0.25) / 3600, rel_tol=1e-12)
        assert math.isclose(rows[name]["wall_h"], rows[name]["gpu_hours"] / 4, rel_tol=1e-12)
    assert result["flops"] == sum(a.seeds * (a.updates * a.update_flops + a.evaluations * a.eval_flops)
                                  for a in result["arms"])
    for a in result["arms"]:  # the budget stops a run at the first update that reaches it
        assert (a.updates - 1) * a.update.nfe < a.cfg.train.nfe_budget <= a.updates * a.update.nfe


def test_fused_attention_counts_the_math_paths_flops_and_keeps_no_attention_matrix():
    q = torch.randn(2, 4, 256, 16, requires_grad=True)
    with FlopCounterMode(display=False) as math_path:
        torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().backward()
    with fused_attention(), FlopCounterMode(display=False) as fused:
        out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
        out.sum().backward()
    assert fused.get_total_flops() == math_path.get_total_flops()
    assert torch.allclose(out, torch.nn.functional.scaled_dot_product_attention(q, q, q), atol=1e-5)
    matrix = 2 * 4 * 256 * 256 * 4  # bytes of one fp32 attention matrix
    for fused_on in (False, True):
        q = torch.randn(2, 4, 256, 16, device="meta", requires_grad=True)
        with fused_attention() if fused_on else torch.enable_grad(), PeakBytes([q]) as memory:
            torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().backward()
        assert (memory.peak - memory.start >= matrix) is not fused_on


def test_peak_bytes_of_a_product_closed_form():
    a, b = torch.zeros(64, 32, device="meta"), torch.zeros(32, 16, device="meta")
    with PeakBytes([a, b]) as memory:
        c = a @ b
        del c
        d = (a @ b).sum()
    assert memory.start == (64 * 32 + 32 * 16) * 4
    assert memory.peak == memory.start + 64 * 16 * 4 + 4  # one product alive (the first was freed) and its sum
    assert d.shape == ()


def test_an_impossible_mfu_is_refused_in_one_line_before_counting(capsys, monkeypatch):
    monkeypatch.setattr(est, "estimate", lambda *a, **k: pytest.fail("counted before the options were checked"))
    assert cli.main(["bench", "sd35m-geneval-like", "--estimate", "--mfu", "1.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--mfu 1.5" in err
