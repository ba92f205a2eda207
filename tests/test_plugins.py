"""A user's own module (algorithm, grouping strategy, model, reward) found by every command (genrl.plugins).

The module lives in a folder of its own on the path, as a user's would. Between commands the tests
"forget" it (out of sys.modules, its names out of the registries), as a new process would, so each
command has to import it again from what the run saved (`imports:` in config.yaml).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from genrl import cli, config, plugins
from genrl.algorithms.grouping import GROUPINGS
from genrl.models.base import MODELS
from genrl.rewards.base import REWARDS

PLUGIN = "my_late_grpo_plugin"
NAMES = {"algorithm": "late_grpo_for_test", "grouping": "head_tail_for_test", "model": "toy_from_plugin",
         "reward": "brightness_from_plugin"}
SOURCE = f'''
"""A user's module: an algorithm, a grouping strategy, a model and a reward, registered on import."""
from genrl import models, rewards
from genrl.algorithms import grouping, register
from genrl.algorithms.chunk_grpo import ChunkGRPO
from toy_adapter import ToyAdapter

@grouping.register("{NAMES['grouping']}")
def head_tail(ctx, combine="mean"):
    n = len(ctx.trainable_steps)
    return grouping.chunks_to_units(ctx, [1, n - 1], combine)

@register("{NAMES['algorithm']}")
class LateGRPO(ChunkGRPO):
    name = "{NAMES['algorithm']}"
    defaults = dict(ChunkGRPO.defaults, grouping="{NAMES['grouping']}", grouping_options={{}}, unit_fraction=1.0)

models.register("{NAMES['model']}")(type("PluginToy", (ToyAdapter,), {{}}))

@rewards.register("{NAMES['reward']}")
class Brightness:
    def __call__(self, images, prompts):
        return images.float().mean(dim=(1, 2, 3))
'''
REGISTRIES = {"algorithm": config.ALGORITHMS, "grouping": GROUPINGS, "model": MODELS, "reward": REWARDS}


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    folder = tmp_path / "user_code"
    folder.mkdir()
    (folder / f"{PLUGIN}.py").write_text(SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    forget()
    yield folder
    forget()


def forget():
    """What a fresh process knows: not the plugin module, nor the names it registered."""
    sys.modules.pop(PLUGIN, None)
    for kind, registry in REGISTRIES.items():
        registry._entries.pop(NAMES[kind], None)


@pytest.fixture
def plugin_overrides(toy_overrides):
    replaced = {"model.name": NAMES["model"], "reward.name": NAMES["reward"]}
    return [o for o in toy_overrides if o.split("=")[0] not in replaced] + [f"{k}={v}" for k, v in replaced.items()] + [
        f"algorithm={NAMES['algorithm']}", f"{NAMES['algorithm']}.sde_window=null"]


def test_a_run_trained_with_import_is_evaluated_sampled_exported_and_resumed_without_the_flag(
        plugin_dir, plugin_overrides, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--import", PLUGIN, *plugin_overrides]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["imports"] == [PLUGIN] and saved["algorithm"] == NAMES["algorithm"]
    assert saved[NAMES["algorithm"]]["grouping"] == NAMES["grouping"]

    forget()
    assert cli.main(["eval", str(run), "--out", str(tmp_path / "eval.json")]) == 0
    assert (tmp_path / "eval.json").is_file()
    forget()
    assert cli.main(["sample", str(run), "--prompt", "a red circle", "--seeds", "1", "--steps", "2",
                     "--out", str(tmp_path / "samples.png")]) == 0
    assert (tmp_path / "samples.png").is_file()
    forget()
    capsys.readouterr()
    assert cli.main(["export", str(run), "--out", str(tmp_path / "exported")]) == 2
    # The toy model has no export format, found once the run was opened: its config parsed, its model built.
    assert f"model {NAMES['model']!r} of run {str(run)!r} has no export format" in capsys.readouterr().err
    forget()
    assert cli.main(["train", "--resume", str(run), "train.updates=3"]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3


def test_an_older_run_without_imports_names_the_key_and_the_flag_and_works_with_the_flag(
        plugin_dir, plugin_overrides, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--import", PLUGIN, *plugin_overrides, "train.updates=1"]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    del saved["imports"]  # as written before `imports:` existed
    (run / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    forget()
    capsys.readouterr()
    assert cli.main(["eval", str(run), "--out", str(tmp_path / "eval.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"unknown config key {NAMES['algorithm']!r}" in err
    assert "not registered: import the module that registers it" in err and "imports: [MODULE]" in err
    assert "--import MODULE" in err
    assert cli.main(["eval", str(run), "--import", PLUGIN, "--out", str(tmp_path / "eval.json")]) == 0


def test_an_unregistered_grouping_strategy_or_algorithm_says_how_to_register_it(toy_overrides, capsys):
    assert cli.main(["train", *toy_overrides, f"chunk_grpo.grouping={NAMES['grouping']}"]) == 2
    err = capsys.readouterr().err
    assert f"unknown grouping strategy {NAMES['grouping']!r}: not registered: import the module that registers it" in err
    assert "imports: [MODULE]" in err
    with pytest.raises(config.ConfigError, match=r"algorithm='late_grpo_for_test' is not allowed.*not registered: "
                                                 r"import the module that registers it \(the config key `imports"):
        config.load(overrides=[f"algorithm={NAMES['algorithm']}"])


def test_imports_in_a_config_file_register_before_the_sections_are_read(plugin_dir, tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(f"{NAMES['algorithm']}:\n  clip_range: 0.001\nimports: [{PLUGIN}]\nalgorithm: {NAMES['algorithm']}\n")
    cfg = config.load(path)
    assert cfg.imports == [PLUGIN] and cfg.algo.clip_range == 0.001 and cfg.algo.grouping == NAMES["grouping"]
    assert cfg.to_dict()["imports"] == [PLUGIN]
    assert "imports" not in config.load().to_dict()  # a run without plugins saves what it always did


@pytest.mark.parametrize("source, expected", [
    (None, "--import: module 'no_such_module_for_test' cannot be imported: no module named 'no_such_module_for_test' "
           "(is its folder on PYTHONPATH"),
    ("import no_such_dependency_for_test\n", "--import: module 'broken_plugin_for_test' cannot be imported: "
                                             "No module named 'no_such_dependency_for_test'"),
    ("raise RuntimeError('boom')\n", "--import: module 'broken_plugin_for_test' failed while importing: RuntimeError: boom"),
])
def test_a_module_that_cannot_be_imported_is_one_line_naming_it(source, expected, tmp_path, monkeypatch, capsys):
    name = "no_such_module_for_test"
    if source is not None:
        name = "broken_plugin_for_test"
        (tmp_path / f"{name}.py").write_text(source)
        monkeypatch.syspath_prepend(str(tmp_path))
    assert cli.main(["eval", "--import", name]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err
    with pytest.raises(config.ConfigError, match="imports=.*expected a list of module names"):
        config.from_dict({"imports": name})


def test_an_installed_package_registers_through_the_entry_point_group(plugin_dir, tmp_path, monkeypatch):
    """A distribution on the path whose entry_points.txt names the module in the genrl.plugins group."""
    dist = plugin_dir / "my_late_grpo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-late-grpo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{plugins.ENTRY_POINT_GROUP}]\nlate = {PLUGIN}\n")
    monkeypatch.setattr(plugins, "_entry_points_loaded", False)
    cfg = config.load(overrides=[f"algorithm={NAMES['algorithm']}"])  # no imports: key, no flag
    assert cfg.algo.grouping == NAMES["grouping"] and PLUGIN in sys.modules


def test_a_fresh_process_evaluates_the_run_from_its_config_alone(plugin_dir, plugin_overrides, tmp_path):
    """`genrl eval RUN_DIR` in a new interpreter, with the user's folder on PYTHONPATH and no --import."""
    run = tmp_path / "run"
    assert cli.main(["train", "--import", PLUGIN, *plugin_overrides, "train.updates=1",
                     "log.eval_at_start=false", "log.eval_at_end=false"]) == 0
    tests = Path(__file__).parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(plugin_dir), str(tests), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "genrl", "eval", str(run), "--steps", "2", "--out", str(tmp_path / "e.json")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "e.json").is_file() and "score" in done.stdout


def test_bench_adds_its_import_flags_to_every_run_of_the_suite(plugin_dir):
    from genrl.benchmarks.suite import load_suite, plan_runs

    plans = plan_runs(load_suite("smoke"), dry_run=True, imports=[PLUGIN])
    assert plans and all(plan.cfg.imports == [PLUGIN] for plan in plans)
    assert all(plan.cfg.imports == [] for plan in plan_runs(load_suite("smoke"), dry_run=True))
