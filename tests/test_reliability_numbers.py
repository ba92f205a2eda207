"""Numbers are checked before they poison a run, and a step that makes the weights non-finite is undone
(issue 28: item 5 and the weak messages about numbers and inputs)."""

import dataclasses
import inspect
import json
import math
import types
import typing

import pytest
import torch

import genrl.algorithms  # noqa: F401  (registers the algorithms whose sections config parses)
from genrl import checkpoint, cli, config, config_io, rewards
from genrl.algorithms import grouping
from genrl.config import ConfigError
from genrl.prompts import numbered_prompts
from genrl.step_guard import StepGuard
from genrl.trainer import Trainer, TrainingStopped


def fails_cleanly(capsys, argv, *needles):
    """Exit 2 with one error line (no traceback) holding every needle; returns that line."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("genrl: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


# -- every number has a range ---------------------------------------------------------------------------


def _numeric(tp) -> bool:
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    return any(a in (int, float) for a in args)


def _sections():
    """(prefix, options class, defaults) of every config section: the fixed ones and every algorithm's."""
    for f in dataclasses.fields(config.Config):
        tp = typing.get_type_hints(config.Config)[f.name]
        if dataclasses.is_dataclass(tp):
            yield f"{f.name}.", tp, {}
    yield "", config.Config, {}
    for name in config.ALGORITHMS.names():
        entry = config.ALGORITHMS.get(name)
        if entry.options_class.__module__.startswith("genrl."):  # not the toy algorithms other tests register
            yield f"{name}.", entry.options_class, entry.defaults


def test_every_numeric_option_declares_a_range_that_holds_its_defaults():
    checked = []
    for prefix, cls, defaults in _sections():
        hints, instance = typing.get_type_hints(cls), cls(**defaults)
        for f in dataclasses.fields(cls):
            if not _numeric(hints[f.name]):
                continue
            allowed = f.metadata.get("range")
            assert isinstance(allowed, config.Range), f"{prefix}{f.name} declares no range"
            value = getattr(instance, f.name)
            assert value is None or value in allowed, f"{prefix}{f.name}={value!r} outside {allowed.text}"
            checked.append(f"{prefix}{f.name}")
    assert {"train.lr", "sampling.shift", "chunk_grpo.noise_level", "awm.ghuber_power", "seed"} <= set(checked)


def test_every_numeric_grouping_option_declares_a_range():
    for name in grouping.GROUPINGS.names():
        strategy = grouping.get(name)
        if not strategy.__module__.startswith("genrl."):  # a strategy another test (or the README) registers
            continue
        hints = typing.get_type_hints(strategy, include_extras=True)
        for param in list(inspect.signature(strategy).parameters)[1:]:
            tp = hints[param]
            assert typing.get_origin(tp) is typing.Annotated, f"grouping {name}: option {param} declares no range"
            assert any(isinstance(extra, config.Range) for extra in typing.get_args(tp)[1:])


@pytest.mark.parametrize("text, inside, outside", [
    ("[1, inf)", [1, 2, 10**9], [0, -1, math.inf, math.nan]),
    ("(0, 1]", [1e-9, 0.5, 1.0], [0.0, 1.0000001, math.nan]),
    ("(0, inf]", [1e-9, math.inf], [0.0, -math.inf, math.nan]),
    ("[0, 2**63)", [0, 2**63 - 1], [-1, 2**63]),
])
def test_a_range_is_an_interval_and_nan_is_never_inside(text, inside, outside):
    allowed = config.Range(text)
    assert all(v in allowed for v in inside) and not any(v in allowed for v in outside)


@pytest.mark.parametrize("override, needle", [
    ("train.lr=inf", "train.lr=inf is not allowed: expected a float in (0, 1]"),
    ("chunk_grpo.clip_range=inf", "chunk_grpo.clip_range=inf is not allowed: expected a positive finite float"),
    ("train.lr=nan", "train.lr=nan is not allowed"),
    ("train.lr=1e39", "train.lr=1e+39 is not allowed: expected a float in (0, 1]"),
    ("sampling.shift=0", "sampling.shift=0.0 is not allowed: expected a positive float"),
    ("sampling.shift=-2", "sampling.shift=-2.0 is not allowed"),
    ("sampling.eval_shift=0", "sampling.eval_shift=0.0 is not allowed"),
    ("chunk_grpo.noise_level=nan", "chunk_grpo.noise_level=nan is not allowed"),
    ("chunk_grpo.noise_level=-0.1", "chunk_grpo.noise_level=-0.1 is not allowed: expected a positive float"),
    ("chunk_grpo.shift=inf", "chunk_grpo.shift=inf is not allowed"),
    ("train.max_grad_norm=nan", "train.max_grad_norm=nan is not allowed: expected a positive float, or inf"),
    ("train.max_grad_norm=0", "train.max_grad_norm=0.0 is not allowed"),
    ("train.adv_clip=inf", "train.adv_clip=inf is not allowed"),
    ("train.ema=nan", "train.ema=nan is not allowed: expected a float in [0, 1) (0: no average)"),
    ("sampling.eval_steps=0", "sampling.eval_steps=0 is not allowed: expected an integer >= 1"),
    ("train.nfe_budget=0", "train.nfe_budget=0 is not allowed: expected an integer >= 1"),
    ("train.nfe_budget=-5", "train.nfe_budget=-5 is not allowed"),
    ("log.warn_clip_frac=nan", "log.warn_clip_frac=nan is not allowed"),
])
def test_numbers_outside_their_range_are_refused_naming_key_value_and_range(override, needle):
    with pytest.raises(ConfigError) as err:
        config.load(overrides=[override])
    assert needle in str(err.value)


def test_inf_only_where_a_field_allows_it():
    assert config.load(overrides=["train.max_grad_norm=inf"]).train.max_grad_norm == math.inf  # no clipping


def test_a_users_options_class_without_ranges_still_refuses_nan_and_inf():
    @dataclasses.dataclass
    class Mine:
        temperature: float = 1.0
        steps: list = dataclasses.field(default_factory=lambda: [1, 2])

    for data, needle in (({"temperature": float("nan")}, "mine.temperature=nan"),
                         ({"temperature": "-inf"}, "mine.temperature=-inf"),
                         ({"steps": [1, float("inf")]}, "every element must be a finite number")):
        with pytest.raises(ConfigError, match=needle):
            config_io.fill(Mine, data, "mine.")


def test_an_nfe_budget_below_one_updates_rollout_is_refused_and_one_rollout_is_enough(toy_overrides, tmp_path, capsys):
    # the toy run: 2 prompts × 4 samples × 6 steps = 48 model evaluations per rollout
    fails_cleanly(capsys, ["train", *toy_overrides, "train.nfe_budget=47"],
                  "train.nfe_budget=47 is not allowed: one update's rollout alone evaluates the model 48 times")
    assert not (tmp_path / "run").exists()
    assert cli.main(["train", *toy_overrides, "train.nfe_budget=48", "log.eval_at_start=false"]) == 0
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and metrics[0]["nfe"] >= 48  # one update spends the budget


def test_bad_numbers_exit_2_before_anything_is_written(toy_overrides, tmp_path, capsys):
    for override in ("train.lr=inf", "sampling.eval_steps=0", "chunk_grpo.noise_level=nan", "train.nfe_budget=1"):
        fails_cleanly(capsys, ["train", *toy_overrides, override], override.split("=")[0])
        assert not (tmp_path / "run").exists()


# -- grouping options -----------------------------------------------------------------------------------


@pytest.mark.parametrize("grouping, options, needle", [
    ("uniform_chunks", "{size: 0}", "chunk_grpo.grouping_options.size=0 is not allowed: expected an integer >= 1"),
    ("fixed_chunks", "{sizes: [2, 0]}", "chunk_grpo.grouping_options.sizes=[2, 0] is not allowed: every element"),
    ("random_subset", "{fraction: 0}", "chunk_grpo.grouping_options.fraction=0 is not allowed: expected a float in (0, 1]"),
    ("sliding_window", "{size: 2, every: -1}", "chunk_grpo.grouping_options.every=-1 is not allowed"),
    ("dynamic_chunks", "{max_size: two}", "chunk_grpo.grouping_options.max_size='two' has the wrong type"),
    ("uniform_chunks", "{width: 2}", "unknown option(s) ['width']"),
])
def test_grouping_options_are_checked_before_anything_is_written(toy_overrides, tmp_path, capsys, grouping, options, needle):
    fails_cleanly(capsys, ["train", *toy_overrides, f"chunk_grpo.grouping={grouping}",
                           f"chunk_grpo.grouping_options={options}"], needle)
    assert not (tmp_path / "run").exists()


def test_a_flow_mapping_without_the_space_after_its_colons_reads_as_yaml_would_with_it():
    cfg = config.load(overrides=["chunk_grpo.grouping=uniform_chunks", "chunk_grpo.grouping_options={size:2}"])
    assert cfg.algo.grouping_options == {"size": 2}
    assert config_io.parse_override("x={sizes:[1,2], inner:{a:1}}")[1] == {"sizes": [1, 2], "inner": {"a": 1}}
    assert config_io.parse_override("model.options={path: http://host/a:b}")[1] == {"path": "http://host/a:b"}


# -- the step guard -------------------------------------------------------------------------------------


def _poison_every_step(monkeypatch):
    """AdamW steps that leave one weight inf, from a finite loss and gradient (an overflowing update)."""
    original = torch.optim.AdamW.step

    def overflowing(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][0].view(-1)[0] = float("inf")
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", overflowing)


def test_a_step_that_makes_weights_non_finite_is_undone_weights_and_optimizer_state():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    guard = StepGuard(optimizer, type("OneProcess", (), {"max": staticmethod(lambda v: v)})())

    def backward():
        optimizer.zero_grad()
        model(torch.ones(2, 4)).square().sum().backward()

    backward()
    assert guard.step()  # a normal step is kept
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    state = {k: v.clone() for k, v in optimizer.state[model.weight].items()}
    backward()
    original = optimizer.step
    optimizer.step = lambda: (original(), model.bias.data.fill_(float("nan")))
    assert not guard.step()
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(state[k], v) for k, v in optimizer.state[model.weight].items())  # step count, moments

    layer = torch.nn.Linear(2, 2)
    fresh = torch.optim.AdamW(layer.parameters())
    layer.weight.grad, layer.bias.grad = torch.ones(2, 2), torch.ones(2)
    first = fresh.step
    fresh.step = lambda: (first(), layer.weight.data.fill_(float("inf")))
    assert not StepGuard(fresh, guard.dist).step()
    assert not fresh.state and torch.isfinite(layer.weight).all()  # the first step's new state is dropped again


def test_a_run_whose_steps_make_weights_non_finite_skips_them_and_never_saves_them(toy_overrides, tmp_path, monkeypatch):
    cfg = config.load(overrides=toy_overrides + ["train.updates=10", "train.max_bad_updates=2", "log.eval_at_start=false"])
    trainer = Trainer(cfg)
    before = {k: v.clone() for k, v in trainer.parts.adapter.trainable_state_dict().items()}
    _poison_every_step(monkeypatch)
    with pytest.raises(TrainingStopped, match="or a step that made the weights non-finite"):
        trainer.run()
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["skipped"] for m in metrics] == [2.0, 2.0]  # both minibatches of both updates undone
    after = trainer.parts.adapter.trainable_state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    saved = checkpoint.latest(tmp_path / "run")
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(saved / "trainable.safetensors").values())


# -- weak messages made one clear line ------------------------------------------------------------------


@pytest.mark.parametrize("n", ["0", "-1"])
def test_num_processes_below_one_is_refused(toy_overrides, tmp_path, capsys, monkeypatch, n):
    monkeypatch.setattr(cli, "run_launcher", lambda command: pytest.fail("workers were launched"))
    fails_cleanly(capsys, ["train", "--num-processes", n, *toy_overrides], f"--num-processes {n} is not allowed")
    assert not (tmp_path / "run").exists()


def test_grouping_options_and_the_budget_are_checked_before_workers_start(toy_overrides, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "run_launcher", lambda command: pytest.fail("workers were launched"))
    fails_cleanly(capsys, ["train", "--num-processes", "2", *toy_overrides, "chunk_grpo.grouping=uniform_chunks",
                           "chunk_grpo.grouping_options={size: 0}"], "chunk_grpo.grouping_options.size=0")
    fails_cleanly(capsys, ["train", "--num-processes", "2", *toy_overrides, "train.nfe_budget=47"], "train.nfe_budget=47")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("weights", [[1.0, -1.0], [0.0, 0.0]])
def test_multi_reward_weights_summing_to_zero_are_refused(weights):
    parts = [{"name": "toy_brightness", "weight": w} for w in weights]
    with pytest.raises(ConfigError, match=r"sum to 0"):
        rewards.load("multi", rewards=parts)
    with pytest.raises(ConfigError, match=r"rewards\[1\].weight=nan"):
        rewards.load("multi", rewards=[{"name": "toy_brightness"}, {"name": "toy_brightness", "weight": float("nan")}])


def test_more_prompts_per_update_than_the_file_holds_is_refused(toy_overrides, prompt_file, tmp_path, capsys):
    fails_cleanly(capsys, ["train", *toy_overrides, "train.prompts_per_update=6"],
                  "train.prompts_per_update=6 is more than the 4 prompts of prompts.train", str(prompt_file))
    assert not (tmp_path / "run").exists()


def test_a_byte_order_mark_is_dropped_and_a_folder_is_named(tmp_path):
    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeffa red circle\na blue square\n".encode("utf-8"))
    assert [p for _, p in numbered_prompts(str(bom))] == ["a red circle", "a blue square"]
    with pytest.raises(Exception, match="is a directory"):
        numbered_prompts(str(tmp_path))


def test_a_prompt_file_with_a_byte_order_mark_trains(tmp_path):
    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeffa red circle\na blue square\n".encode("utf-8"))
    from genrl.build import build_reward
    from genrl.prompts import check_prompts, prompt_checks

    check_prompts(numbered_prompts(str(bom)), "prompts.train", prompt_checks(build_reward(config.load())))


def test_a_key_given_twice_in_yaml_is_refused_naming_it_and_its_lines(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1.0e-4\n  updates: 3\n  lr: 2.0e-4\n")
    with pytest.raises(ConfigError, match=r"key 'lr' is given twice in one mapping \(lines 2 and 4\)"):
        config.load(path)
    path.write_text("seed: 1\ntrain: {updates: 3}\nseed: 2\n")
    fails_cleanly(capsys, ["train", str(path), f"run_dir={tmp_path / 'run'}"], "key 'seed' is given twice", "lines 1 and 3")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="key 'size' is given twice"):
        config.load(overrides=["chunk_grpo.grouping_options={size: 2, size: 3}"])
