"""A GRPO-family run says which chunks it trains: printed after the first update, logged every update."""

import json

import torch

from genrl import cli, config
from genrl.algorithms import grouping
from genrl.build import build_algorithm


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_spans_are_each_unit_s_first_and_last_step():
    assignment = torch.tensor([[0, 0, 1, 2, 2, 2, -1], [0, 1, 1, 1, 2, -1, -1], [-1, -1, -1, -1, -1, -1, -1]])
    assert grouping.spans(assignment) == [[[0, 1], [2, 2], [3, 5]], [[0, 0], [1, 3], [4, 4]], []]


def test_a_run_prints_and_logs_its_chunks(toy_overrides, tmp_path, capsys):
    overrides = [*toy_overrides, "chunk_grpo.sde_window=null", "chunk_grpo.grouping=fixed_chunks",
                 "chunk_grpo.grouping_options={sizes: [1, 1, 3]}", "chunk_grpo.unit_fraction=1.0"]
    assert cli.main(["train", *overrides]) == 0
    out = capsys.readouterr().out
    line = "chunk_grpo: 3 chunks of steps 0 | 1 | 2-4 (fixed_chunks {'sizes': [1, 1, 3]}, the same for every trajectory)"
    assert out.count(line) == 1  # once, after the first update
    metrics = read_metrics(tmp_path / "run")
    assert len(metrics) == 2 and all(m["chunks"] == [[0, 0], [1, 1], [2, 4]] and m["chunks_shared"] for m in metrics)


def test_the_line_says_when_chunks_differ_per_trajectory_and_only_a_fraction_is_trained():
    algorithm = build_algorithm(config.load(overrides=["chunk_grpo.grouping=dynamic_chunks", "chunk_grpo.grouping_options={}",
                                                       "chunk_grpo.unit_fraction=0.5", "chunk_grpo.sde_window=[0, 8]"]))
    stats = {"chunks": [[0, 1], [2, 4], [5, 7]], "chunks_shared": False}
    assert algorithm.describe(stats) == ("chunk_grpo: 3 chunks of steps 0-1 | 2-4 | 5-7 (dynamic_chunks, per trajectory; "
                                         "the first one's); 0.5 of them (uniform draw) trained per trajectory and update")
    one = algorithm.describe({"chunks": [[0, 7]], "chunks_shared": True})
    assert one.startswith("chunk_grpo: 1 chunk of steps 0-7 (")  # sequence level: one chunk, said in the singular


def test_the_logged_chunks_are_the_partition_the_update_drew_from():
    """`training_batch` draws from the partition it logs, consuming the run's generator exactly as
    `units` does, so logging the chunks changes nothing that is trained."""
    algorithm = build_algorithm(config.load(overrides=["chunk_grpo.sde_window=[0, 8]", "chunk_grpo.unit_fraction=0.5",
                                                       "chunk_grpo.grouping=fixed_chunks",
                                                       "chunk_grpo.grouping_options={sizes: [2, 3, 4, 7]}"]))
    l1_rel = torch.linspace(0.8, 0.2, 10) + 0.01 * torch.rand(6, 10, generator=torch.Generator().manual_seed(0))
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    partition = algorithm.partition(l1_rel, 0, a)
    drawn = grouping.draw_units(partition, 0.5, a, l1_rel, "uniform")
    assert torch.equal(drawn.assignment, algorithm.units(l1_rel, 0, b).assignment)
    assert grouping.spans(partition.assignment)[0] == [[0, 0], [1, 1], [2, 3], [4, 7]]  # [2, 3, 4, 7] scaled to 8 steps
    trained = grouping.spans(drawn.assignment)
    assert all(len(row) == 2 and all(span in grouping.spans(partition.assignment)[0] for span in row) for row in trained)


def test_the_main_job_trains_two_chunks_of_two_steps():
    """`genrl train`'s default: Chunk-GRPO on the 4-step window in chunks 0-1 | 2-3 (dynamic_chunks on
    ShapeWorld's L1rel profile, about 0.80, 0.80, 0.58, 0.51 on the trained steps), every chunk trained."""
    cfg = config.load()
    assert cfg.algorithm == "chunk_grpo" and cfg.algo.grouping == "dynamic_chunks"
    algorithm = build_algorithm(cfg)
    n, k = cfg.train.prompts_per_update * cfg.train.group_size, cfg.sampling.num_steps
    profile = torch.tensor([0.81, 0.79, 0.58, 0.51, 0.45, 0.40, 0.36, 0.33, 0.31, 0.30])
    l1_rel = profile + 0.005 * torch.rand(n, k, generator=torch.Generator().manual_seed(0))
    units = algorithm.units(l1_rel, 0, torch.Generator().manual_seed(1))
    assert grouping.spans(units.assignment) == [[[0, 1], [2, 3]]] * n
