"""Benchmark suites: a YAML file → one resolved Config per (algorithm, seed).

A suite fixes everything but the algorithm and the seed, so the runs differ only
in what is being compared (cleanrl's benchmark idea, with the budget counted in
model evaluations rather than updates, because an update of DanceGRPO trains
60% of the steps and one of Flow-GRPO 99%):

    name: smoke
    description: one line
    base: shapeworld            # bundled config name or YAML path (relative to this file, then the cwd)
    overrides: [train.group_size=4, ...]   # or a nested mapping {train: {group_size: 4}}
    algorithms:                 # label -> that algorithm's options section (+ optional keys below)
      flow_grpo: {}
      chunk_grpo: {grouping: dynamic_chunks}
      chunk_ws:                 # a variant: any label, with `algorithm:` naming the registered one
        algorithm: chunk_grpo
        unit_fraction: 0.5
        overrides: [sampling.num_steps=12]   # config-level overrides for this label only
    seeds: [0, 1]               # or a count: 2 -> [0, 1]
    budget_nfe: 20000           # per run: rollout + training forwards, CFG counts 2
    eval_every: 5               # held-out evaluation every N updates (plus before and after)
    target_score: 0.3           # optional: NFEs / wall-clock to first reach it
    reference: chunk_grpo       # optional label: NFEs each algorithm needs to reach its final mean score
    dry_run_overrides: [...]    # `--dry-run` only: e.g. swap in tiny random components

The harness owns the keys that make runs comparable (seed, run_dir,
train.nfe_budget, train.updates, log.eval_every, log.eval_at_start, log.eval_at_end); overriding
them elsewhere is an error rather than a silently unequal benchmark.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

import genrl.algorithms  # noqa: F401  (registers the algorithms whose sections config parses)
from genrl import config, config_io, plugins
from genrl.config import ConfigError

SUITES_DIR = Path(__file__).parent / "suites"
SUITE_KEYS = ("name", "description", "base", "overrides", "algorithms", "seeds", "budget_nfe", "eval_every",
              "target_score", "reference", "dry_run_overrides")
HARNESS_KEYS = ("seed", "run_dir", "train.nfe_budget", "train.updates", "log.eval_every", "log.eval_at_start",
                "log.eval_at_end")
# --dry-run: one update per run, the smallest evaluation, no sample grids; the suite adds its own on top.
DRY_RUN_OVERRIDES = ["train.updates=1", "log.eval_seeds=1", "log.eval_every=0", "log.sample_every=0",
                     "log.checkpoint_every=1"]
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Suite:
    name: str
    path: Path
    base: str
    overrides: list | dict
    algorithms: dict[str, dict]
    seeds: list[int]
    budget_nfe: int
    eval_every: int
    target_score: float | None = None
    reference: str | None = None
    description: str = ""
    dry_run_overrides: list | dict = field(default_factory=list)

    def settings(self) -> dict:
        """The suite as recorded in results.json."""
        return {k: getattr(self, k) for k in ("name", "description", "base", "overrides", "algorithms", "seeds",
                                              "budget_nfe", "eval_every", "target_score", "reference",
                                              "dry_run_overrides")} | {
            "path": str(self.path)}


@dataclass
class RunPlan:
    label: str  # the suite's name for this algorithm entry; the run directory is {label}__{seed}
    algorithm: str
    seed: int
    cfg: config.Config


def find_suite(suite: str | Path) -> Path:
    path = Path(suite)
    if path.is_file():
        return path
    bundled = SUITES_DIR / f"{suite}.yaml"
    if bundled.is_file():
        return bundled
    names = ", ".join(sorted(p.stem for p in SUITES_DIR.glob("*.yaml")))
    raise ConfigError(f"suite {str(suite)!r} not found: give a YAML path or a bundled suite ({names})")


def load_suite(suite: str | Path) -> Suite:
    """Read and check a suite YAML; errors name the key, the value and what is allowed."""
    path = find_suite(suite)
    try:  # a key given twice (two arms with one label) is refused: YAML would silently keep the last
        data = config_io.safe_load(path.read_text(), f"suite {str(path)!r}") or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"suite {str(path)!r} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"suite {str(path)!r} must hold a mapping at top level")
    unknown = sorted(set(data) - set(SUITE_KEYS))
    if unknown:
        raise ConfigError(f"unknown suite key(s) {unknown} in {path}; allowed: {', '.join(SUITE_KEYS)}")

    def need(ok: bool, key: str, allowed: str) -> None:
        if not ok:
            raise ConfigError(f"suite {path.name}: {key}={data.get(key)!r} is not allowed: expected {allowed}")

    need(_LABEL.match(str(data.get("name", path.stem))) is not None, "name",
         "one folder name of letters, digits, _ . - (the suite writes bench_out/NAME)")
    need(isinstance(data.get("algorithms"), dict) and data["algorithms"], "algorithms",
         "a non-empty mapping label -> options section, e.g. {flow_grpo: {}, chunk_grpo: {}}")
    for label, section in data["algorithms"].items():
        ok = _LABEL.match(str(label)) and isinstance(section or {}, dict)
        need(bool(ok), "algorithms", f"labels of letters, digits, _ . - (got {label!r}) each with a mapping")
    labels = [str(label) for label in data["algorithms"]]  # `1:` and `"1":` are two YAML keys but one run directory
    need(len(set(labels)) == len(labels), "algorithms", "distinct labels (each names its runs' directories)")
    seeds = data.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = list(range(seeds))
    need(isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds) and len(set(seeds)) == len(seeds),
         "seeds", "a list of distinct integers or a count")
    budget = data.get("budget_nfe")
    need(isinstance(budget, int) and not isinstance(budget, bool) and budget > 0, "budget_nfe",
         "a positive integer (model evaluations per run)")
    eval_every = data.get("eval_every", 0)
    need(isinstance(eval_every, int) and eval_every >= 0, "eval_every", "an integer >= 0 (0: only before and after)")
    target = data.get("target_score")
    need(target is None or isinstance(target, (int, float)), "target_score", "a number or null")
    reference = data.get("reference")
    need(reference is None or str(reference) in {str(k) for k in data["algorithms"]}, "reference",
         f"one of the suite's algorithm labels ({', '.join(map(str, data['algorithms']))}) or null")
    for key in ("overrides", "dry_run_overrides"):
        need(isinstance(data.get(key, []), (list, dict)), key, "a list of dotted key=value strings or a nested mapping")
    return Suite(
        name=str(data.get("name", path.stem)), path=path, base=str(data.get("base", "shapeworld")),
        overrides=data.get("overrides") or [], algorithms={str(k): dict(v or {}) for k, v in data["algorithms"].items()},
        seeds=seeds, budget_nfe=budget, eval_every=eval_every, target_score=None if target is None else float(target),
        reference=None if reference is None else str(reference),
        description=str(data.get("description", "")), dry_run_overrides=data.get("dry_run_overrides") or [],
    )


def _merge(data: dict, patch: dict) -> dict:
    """Nested mappings merge key by key, the way dotted overrides do."""
    out = dict(data)
    for key, value in patch.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else copy.deepcopy(value)
    return out


def _apply(data: dict, overrides: list | dict) -> dict:
    return _merge(data, overrides) if isinstance(overrides, dict) else config.apply_overrides(data, [str(o) for o in overrides])


def _touched_keys(overrides: list | dict, prefix: str = "") -> list[str]:
    if isinstance(overrides, dict):
        keys = []
        for k, v in overrides.items():
            keys += _touched_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
        return keys
    return [str(o).split("=", 1)[0] for o in overrides]


def _refuse_harness_keys(overrides: list | dict, where: str) -> None:
    for key in _touched_keys(overrides):
        if key in HARNESS_KEYS or any(key.startswith(f"{k}.") or k.startswith(f"{key}.") for k in HARNESS_KEYS):
            raise ConfigError(f"{where} sets {key!r}, which the benchmark controls so that every run is comparable; "
                              "change seeds, budget_nfe or eval_every in the suite YAML instead")


def _base_config(suite: Suite) -> dict:
    beside = suite.path.parent / suite.base
    return config.load_yaml(beside if beside.is_file() else suite.base)


def plan_runs(suite: Suite, dry_run: bool = False, overrides: list[str] | tuple = (), out: Path | None = None,
              imports: list[str] | tuple = ()) -> list[RunPlan]:
    """One validated Config per (label, seed), in the order they will run (seed-major, so a suite cut short
    still has every algorithm on its first seeds)."""
    _refuse_harness_keys(suite.overrides, f"suite {suite.name}: overrides")
    _refuse_harness_keys(list(overrides), "a command-line override")
    common = _apply(_base_config(suite), suite.overrides)
    _check_algorithms(suite, plugins.merged(plugins.listed(_apply(common, list(overrides)).get("imports"), "imports"),
                                            imports))
    plans = []
    for seed in suite.seeds:
        for label, entry in suite.algorithms.items():
            entry = dict(entry)
            algorithm = str(entry.pop("algorithm", label))
            own = entry.pop("overrides", [])
            _refuse_harness_keys(own, f"suite {suite.name}: algorithms.{label}.overrides")
            data = _apply(common, {"algorithm": algorithm, algorithm: entry})
            data = _apply(_apply(data, own), list(overrides))
            run_dir = (out or Path(".")) / "runs" / f"{label}__{seed}"
            data = _merge(data, {"seed": seed, "run_dir": str(run_dir),
                                 "train": {"nfe_budget": suite.budget_nfe, "updates": 1},
                                 "log": {"eval_every": suite.eval_every, "eval_at_start": True, "eval_at_end": True}})
            if dry_run:
                data = _apply(_apply(data, DRY_RUN_OVERRIDES), suite.dry_run_overrides)
            if imports:  # `genrl bench --import M`: kept in each run's config.yaml, as `genrl train --import` does
                data["imports"] = plugins.merged(plugins.listed(data.get("imports"), "imports"), imports)
            try:
                cfg = config.from_dict(data)
                trees = _check_before_running(cfg)
            except ConfigError as err:
                raise ConfigError(f"suite {suite.name}, {label} seed {seed}: {err}") from None
            if not dry_run:
                cfg.train.updates = update_cap(cfg, trees)
            plans.append(RunPlan(label, algorithm, seed, cfg))
    return plans


def _check_before_running(cfg: config.Config) -> bool:
    """What a run would refuse only when it starts, refused before the suite writes anything (as `genrl train`
    does before it launches): the algorithm's own options (grouping_options; a tree algorithm's structure and
    structure_options, against train.group_size) and one update's rollout against the budget (a lower bound:
    no model is loaded, so guidance is not counted). True when the algorithm samples trees."""
    from genrl.build import build_algorithm, check_rollout_budget

    algorithm = build_algorithm(cfg)
    structure = algorithm.rollout_structure(cfg.train.group_size)
    check_rollout_budget(cfg, structure)
    return structure is not None


def _check_algorithms(suite: Suite, imports: list[str]) -> None:
    """Each label's algorithm must be registered (after importing `imports`), named in one line rather than
    as the config's "unknown key" for the section the label would add."""
    plugins.load(imports)
    known = config.ALGORITHMS.names()
    for label, entry in suite.algorithms.items():
        algorithm = str(entry.get("algorithm", label))
        if algorithm not in known:
            named = f"names the algorithm {algorithm!r}" if "algorithm" in entry else "is not an algorithm's name"
            raise ConfigError(f"suite {suite.name}: algorithms label {label!r} {named}; registered algorithms: "
                              f"{', '.join(known)} (a variant label names its algorithm with `algorithm: NAME`; "
                              f"if it is your own algorithm, it is {plugins.HOW_TO_REGISTER})")


def update_cap(cfg: config.Config, trees: bool = False) -> int:
    """train.updates is only a safety cap above what the budget allows: every update spends at least
    N·K forwards on its rollout, so the NFE budget always stops a run first. A tree (`trees`) shares its
    prefixes, so it may cost far fewer than its G leaves' K steps (MixGRPO's late windows, TempFlow's 49
    leaves from 274 calls): its lower bound is one path of K steps per prompt."""
    per_prompt = cfg.sampling.num_steps * (1 if trees else cfg.train.group_size)
    rollout_nfe = cfg.train.prompts_per_update * per_prompt
    return math.ceil(cfg.train.nfe_budget / rollout_nfe) + 1
