"""Follow-ups of the benchmark harness: suites read with config_io's duplicate-refusing loader, a bad tree arm
refused before a suite writes anything, an interrupted run restarted by the trainer's own rules (a user's file in
its folder never deleted), and the sampling structures' option ranges."""

import json
import math
import re

import pytest
import yaml

from genrl import rundir
from genrl.benchmarks import harness, suite
from genrl.envs import structures
from genrl.errors import ConfigError, RunDirError


pytestmark = pytest.mark.usefixtures("one_thread")


def _one_line_error(path) -> str:
    with pytest.raises(ConfigError) as err:
        suite.load_suite(path)
    assert "\n" not in str(err.value)
    return str(err.value)


# ------------------------------------------------------------------------------------- suite YAML


def test_a_suite_with_a_duplicate_key_or_arm_label_is_refused_in_one_line(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("algorithms:\n  flow_grpo: {}\n  chunk_grpo: {}\n  flow_grpo: {beta: 0.0}\nbudget_nfe: 1000\n")
    message = _one_line_error(path)
    assert "'flow_grpo' is given twice" in message and "lines 2 and 4" in message and str(path) in message
    path.write_text("budget_nfe: 1000\nalgorithms: {flow_grpo: {}}\nbudget_nfe: 2000\n")
    assert "'budget_nfe' is given twice" in _one_line_error(path)
    # two YAML keys that name one run directory: the integer 1 and the string "1"
    path.write_text('algorithms:\n  1: {algorithm: flow_grpo}\n  "1": {algorithm: chunk_grpo}\nbudget_nfe: 1000\n')
    assert "distinct labels" in _one_line_error(path)
    assert not hasattr(suite, "_UniqueKeyLoader")  # one loader for configs and suites: genrl.config_io's


def test_merge_keys_still_work_in_a_suite(tmp_path):
    path = tmp_path / "anchors.yaml"
    path.write_text("algorithms:\n  a: &arm {algorithm: flow_grpo, beta: 0.0}\n  b: {<<: *arm, clip_range: 0.001}\n"
                    "budget_nfe: 1000\n")
    assert suite.load_suite(path).algorithms["b"] == {"algorithm": "flow_grpo", "beta": 0.0, "clip_range": 0.001}


def test_a_bad_tree_arm_is_refused_before_the_suite_writes_anything(tmp_path):
    path = tmp_path / "trees.yaml"
    path.write_text(yaml.safe_dump({
        "name": "trees", "algorithms": {"step_level": {"algorithm": "chunk_grpo", "grouping": "per_step"},
                                        "branches": {"algorithm": "branch_grpo",
                                                     "structure_options": {"points": [0, 2, 4], "fork": 2}}},
        "budget_nfe": 100000, "overrides": ["train.group_size=4"]}))  # 8 leaves per tree, 4 per group
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"branches seed 0: .*8 leaves per prompt.*set train.group_size=8"):
        harness.run_suite(path, out)
    assert not out.exists()


# ------------------------------------------------------------------------------------- restarting a run


@pytest.fixture
def one_run_suite(tmp_path, toy_overrides):
    shared = [o for o in toy_overrides if not o.startswith(("run_dir=", "train.updates="))]
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump({"name": "one", "overrides": shared + ["log.sample_every=0"],
                                    "algorithms": {"flow_grpo": {}}, "seeds": [0], "budget_nfe": 200}))
    return path


def test_a_run_that_stopped_before_its_first_checkpoint_restarts(one_run_suite, tmp_path):
    out = tmp_path / "bench"
    run_dir = out / "runs" / "flow_grpo__0"
    # what an attempt killed before its first checkpoint leaves: its record, its config and a metrics line
    rundir.prepare(run_dir, rundir.Start("new"), "stale: config\n")
    (run_dir / "metrics.jsonl").write_text(json.dumps({"update": 1, "stale": True}) + "\n")
    results = harness.run_suite(one_run_suite, out, dry_run=True)
    assert results["runs"][0]["status"] == "finished"
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and "stale" not in rows[0]
    assert "stale" not in (run_dir / "config.yaml").read_text()


@pytest.mark.parametrize("recorded,jobs", [(False, 1), (True, 1), (True, 2)])
def test_a_users_file_in_a_run_folder_is_never_deleted(one_run_suite, tmp_path, recorded, jobs):
    """Refused in one line before the suite writes anything, one by one or side by side."""
    out = tmp_path / "bench"
    run_dir = out / "runs" / "flow_grpo__0"
    if recorded:  # a genrl attempt without a checkpoint, and a file of the user's beside it
        rundir.prepare(run_dir, rundir.Start("new"), "stale: config\n")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not a genrl run") as err:
        harness.run_suite(one_run_suite, out, dry_run=True, jobs=jobs)
    assert "\n" not in str(err.value) and str(run_dir) in str(err.value)
    assert (run_dir / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == [".genrl.lock", "runs"]  # no results.json, no table.md


# ------------------------------------------------------------------------------------- structure options


@pytest.mark.parametrize("name,options,leaves,message", [
    ("branches", {"fork": 0}, 8, "structure_options.fork=0 is not allowed: expected an integer >= 1"),
    ("branches", {"noise": math.nan}, 8,
     "structure_options.noise=nan is not allowed: expected a positive finite float"),
    ("branches", {"noise": 0.0}, 8, "structure_options.noise=0.0 is not allowed: expected a positive float"),
    ("branches", {"points": [-1, 2]}, 8, "structure_options.points=[-1, 2] is not allowed: every element must be an "
                                         "integer >= 0"),
    ("branches", {"points": [0, 2, 40]}, 8, "points=[0, 2, 40]: [40] are not steps of the 10-step grid"),
    ("branches", {"points": [0, 1.5, 4]}, 8, "[1.5] are not steps of the 10-step grid"),
    ("branches", {"keep": -1}, 8, "structure_options.keep=-1 is not allowed: expected an integer >= 0"),
    ("trunk_forks", {"fraction": 2}, 13, "structure_options.fraction=2 is not allowed: expected a float in (0, 1]"),
    ("trunk_forks", {"fraction": 0.0}, 13, "structure_options.fraction=0.0 is not allowed"),
    ("trunk_forks", {"children": 1}, 13, "structure_options.children=1 is not allowed: expected an integer >= 2"),
    ("shared_prefix", {"size": 0}, 8, "structure_options.size=0 is not allowed: expected an integer >= 1"),
    ("shared_prefix", {"every": math.inf}, 8, "structure_options.every=inf"),
    ("shared_prefix", {"start": 9}, 8, "start=9 is past step 8"),
])
def test_structure_options_out_of_range_are_one_line_errors_naming_the_key(name, options, leaves, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        structures.build(name, options, 10, leaves, 0, "tree_algo")
    text = str(err.value)
    assert "\n" not in text and text.startswith("tree_algo.structure_options")


def test_structure_options_at_the_ends_of_their_ranges_are_accepted():
    assert structures.build("branches", {"points": [0, 2, 8], "fork": 2}, 10, 8, 0, "k").forks == [0, 2, 8]
    assert structures.build("trunk_forks", {"children": 2, "fraction": 1.0}, 10, 19, 0, "k").leaves == 19
    assert structures.build("shared_prefix", {"start": 8, "size": 1}, 10, 4, 0, "k").forks == [8]
