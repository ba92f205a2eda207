"""Trees are whole on a process: a 2-process tree run follows the 1-process one (gloo on CPU)."""

import json

import pytest
from test_distributed import assert_same_runs, overrides, train

TREE = ["algorithm=branch_grpo", "branch_grpo.structure_options={points: [0, 1], fork: 2}", "train.group_size=4"]


@pytest.mark.slow
def test_two_processes_train_a_tree_as_one_process(tmp_path):
    train(*overrides(tmp_path, "one"), *TREE)
    train("--num-processes", "2", *overrides(tmp_path, "two"), *TREE)
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["processes"] == 2
    assert_same_runs(tmp_path / "one", tmp_path / "two")
