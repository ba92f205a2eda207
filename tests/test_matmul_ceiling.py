"""genrl.benchmarks.matmul_ceiling: the matrix products of a call are caught with their shapes (checked against a
hand-counted model and FlopCounterMode), and the script runs end to end (--quick)."""

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from genrl.benchmarks import matmul_ceiling


def test_the_products_of_a_forward_and_backward_are_caught_with_their_shapes():
    model = nn.Sequential(nn.Linear(8, 32), nn.Linear(32, 4, bias=False))
    x = torch.randn(5, 8)
    with FlopCounterMode(display=False) as counter, matmul_ceiling.ProductShapes() as seen:
        model(x).square().sum().backward()
    forward = {(1, 5, 8, 32, "float32"): 1, (1, 5, 32, 4, "float32"): 1}  # addmm, then mm
    # backward: each layer's weight gradient (out×batch @ batch×in); the input gradient of the second only
    backward = {(1, 4, 5, 32, "float32"): 1, (1, 32, 5, 8, "float32"): 1, (1, 5, 4, 32, "float32"): 1}
    assert dict(seen.shapes) == forward | backward
    flops = sum(count * 2 * b * m * k * n for (b, m, k, n, _), count in seen.shapes.items())
    assert flops == counter.get_total_flops()  # a model of products only: every FLOP is in a product


def test_batched_products_and_autocast_dtypes_are_recorded():
    a, b = torch.randn(3, 4, 6), torch.randn(3, 6, 2)
    with matmul_ceiling.ProductShapes() as seen, torch.autocast("cpu", dtype=torch.bfloat16):
        torch.bmm(a, b)
    assert dict(seen.shapes) == {(3, 4, 6, 2, "bfloat16"): 1}


def test_the_quick_run_prints_the_table(capsys, tmp_path):
    matmul_ceiling.main(["--quick", "--json", str(tmp_path / "rows.json")])
    out = capsys.readouterr().out
    assert "shape ceiling" in out and out.count("| rollout |") == 2 and out.count("| training |") == 2
    assert (tmp_path / "rows.json").read_text().count("ceiling_fraction") == 4
