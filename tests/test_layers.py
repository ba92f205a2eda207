"""The layers of docs/architecture.md, checked on the source: which module may import which.

Every import counts, at module level or inside a function (lazy), and so does a module named
by a string (a lazy-loading table, importlib.import_module, an entry point): a back edge that
only runs late is still a back edge.
"""

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Source folders and the package each installs as (pyproject.toml's package-dir).
ROOTS = {"genrl": "genrl", "algorithms": "genrl.algorithms", "envs": "genrl.envs", "benchmarks": "genrl.benchmarks"}
MODULE_STRING = re.compile(r"^genrl(\.[A-Za-z_]\w*)+(:\w+)?$")


def source_modules() -> dict[str, Path]:
    modules = {}
    for folder, package in ROOTS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if folder == "genrl" and parts[0] in ROOTS:  # not a source folder of genrl/ (none today)
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


MODULES = source_modules()


def imports_of(module: str, path: Path) -> set[str]:
    """The genrl modules `module` imports or names by string (a `from P import name` counts as P.name when
    that is a module, else as P; parent packages Python imports implicitly are not counted)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_STRING.match(node.value):
            found.add(node.value.split(":")[0])
    return {_owner(name) for name in found if name == "genrl" or name.startswith("genrl.")} - {None, module}


def _owner(name: str) -> str | None:
    """The source module a dotted name refers to (a module, or the module defining the attribute)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


GRAPH = {module: imports_of(module, path) for module, path in MODULES.items()}


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_source_tree_is_found():
    assert {"genrl.trainer", "genrl.algorithms.chunk_grpo", "genrl.envs.denoising", "genrl.benchmarks.harness",
            "genrl.testing.components", "genrl.shapeworld.pretrain"} <= set(MODULES)
    assert "genrl.config" in GRAPH["genrl.trainer"] and "genrl.algorithms.grouping" in GRAPH["genrl.algorithms.grpo"]


# The layers of docs/architecture.md, bottom to top: a module imports its own layer or lower ones only.
LAYERS = [
    ["genrl.config", "genrl.config_io", "genrl.errors", "genrl.registry", "genrl.keys", "genrl.dynamics", "genrl.advantages",
     "genrl.tree_advantages",
     "genrl.noise", "genrl.checkpoint", "genrl.sharding", "genrl.distributed", "genrl.grids", "genrl.stopping",
     "genrl.rundir", "genrl.dirlock", "genrl.plot", "genrl.plugins", "genrl.threads"],  # a run directory's files: written by the trainer, read by evaluations and plots
    ["genrl.shapeworld", "genrl.shapeworld_motion"],
    ["genrl.prompts"],
    ["genrl.models"],
    ["genrl.rewards", "genrl.testing"],  # the fixtures: real adapters and rewards on random weights
    ["genrl.policy"],
    ["genrl.loss", "genrl.objective", "genrl.training_batch", "genrl.ema", "genrl.envs", "genrl.evaluation",
     "genrl.eval_cache", "genrl.shapeworld.pretrain", "genrl.shapeworld_motion.pretrain", "genrl.flow_pretraining"],  # ema: train.ema's average, and an algorithm's "old" policy
    ["genrl.algorithms"],
    ["genrl.build"],
    ["genrl.passes", "genrl.step_guard", "genrl.train_state", "genrl.metrics", "genrl.resume", "genrl.launch",
     "genrl.tracking", "genrl.runs", "genrl.export",
     "genrl.reward_outage", "genrl.reward_server"],  # a reward server down stops the run; `genrl serve-reward`
    ["genrl.trainer"],
    ["genrl.benchmarks"],
    ["genrl", "genrl.cli", "genrl.commands", "genrl.__main__"],  # the package's own namespace: genrl.load_run
]


def layer_of(module: str) -> int:
    """The layer of the longest package prefix that names one (genrl.shapeworld.pretrain before genrl.shapeworld)."""
    matches = [(len(name), i) for i, layer in enumerate(LAYERS) for name in layer
               if module == name or (name != "genrl" and module.startswith(name + "."))]
    return max(matches)[1] if matches else 0


def test_every_module_imports_only_its_layer_or_lower_ones():
    upward = {m: sorted(i for i in GRAPH[m] if layer_of(i) > layer_of(m)) for m in MODULES}
    assert not {m: v for m, v in upward.items() if v}


def test_core_never_imports_the_benchmarks():
    core = [m for m in MODULES if not in_package(m, "genrl.benchmarks") and m not in ("genrl.cli", "genrl.commands")]  # the CLI runs them
    leaks = {m: sorted(i for i in GRAPH[m] if in_package(i, "genrl.benchmarks")) for m in core}
    assert not {m: v for m, v in leaks.items() if v}


@pytest.mark.parametrize("forbidden", ["genrl.rewards", "genrl.evaluation", "genrl.testing", "genrl.shapeworld.pretrain"])
def test_models_import_neither_rewards_nor_evaluation_nor_fixtures(forbidden):
    models = [m for m in MODULES if in_package(m, "genrl.models")]
    leaks = {m: sorted(i for i in GRAPH[m] if in_package(i, forbidden)) for m in models}
    assert not {m: v for m, v in leaks.items() if v}


def test_production_code_never_imports_the_test_fixtures():
    """genrl.testing is imported only by build (when a config names a tiny-random-* component) and the benchmarks."""
    allowed = {"genrl.build"} | {m for m in MODULES if in_package(m, "genrl.benchmarks") or in_package(m, "genrl.testing")}
    leaks = {m: sorted(i for i in GRAPH[m] if in_package(i, "genrl.testing")) for m in MODULES if m not in allowed}
    assert not {m: v for m, v in leaks.items() if v}


def test_config_knows_no_algorithm():
    assert not [i for i in GRAPH["genrl.config"] if in_package(i, "genrl.algorithms")]


def test_there_is_no_import_cycle():
    """Depth-first search for a back edge; the cycle found is named, module by module."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for target in sorted(GRAPH.get(module, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target, path + [target])):
                return cycle
        state[module] = 2
        return None

    for module in sorted(GRAPH):
        if module not in state:
            cycle = visit(module, [module])
            assert cycle is None, " -> ".join(cycle)


def test_the_checker_sees_lazy_and_string_imports(tmp_path):
    """A function-level import and a module named in a string are edges (the rules would miss them otherwise)."""
    probe = tmp_path / "probe.py"
    probe.write_text('def f():\n    from genrl import evaluation\n\nTABLE = {"x": "genrl.rewards.simple"}\n'
                     'ENTRY = "genrl.envs.gym:DenoiseGymEnv"\n')
    assert imports_of("genrl.models.probe", probe) == {"genrl.evaluation", "genrl.rewards.simple", "genrl.envs.gym"}
