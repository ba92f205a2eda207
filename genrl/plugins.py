"""A user's own modules (algorithms, grouping strategies, models, rewards), imported before a config is read.

A module registers its names when imported (`@genrl.algorithms.register("late_grpo")`), and a
run's config can only be parsed once its algorithm is registered. Three ways bring such modules in:

    imports: [my_algos, my_rewards]     a config key, saved with the run in config.yaml, so that
                                        eval, sample, export, resume and bench find them again
    genrl train --import my_algos ...   the command line, on every command; train adds them to imports:
    [project.entry-points."genrl.plugins"]   an installed package's modules, loaded in every process
    my_algos = "my_package.algos"

`genrl.config.from_dict` calls `load` with the config's `imports` before anything else.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Iterable

from genrl.errors import ConfigError

ENTRY_POINT_GROUP = "genrl.plugins"
# How to make a name known, for every "not registered" error (registries, config sections).
HOW_TO_REGISTER = ("not registered: import the module that registers it (the config key `imports: [MODULE]`, "
                   "saved with the run, or `--import MODULE` on the command line)")

_entry_points_loaded = False


def merged(*lists: Iterable[str] | None) -> list[str]:
    """The modules of several lists, each once, in order of first appearance."""
    return list(dict.fromkeys(m for modules in lists for m in (modules or [])))


def keep_imports(cfg, modules: Iterable[str]):
    """`cfg` with `modules` (--import) added to its `imports:`: a run saves them in config.yaml, so every
    later command on it finds them without the flag."""
    cfg.imports = merged(cfg.imports, modules)
    return cfg


def import_flags(modules: Iterable[str]) -> list[str]:
    """`--import M` for each module: the command line of a relaunch's workers, which parse the config themselves."""
    return [flag for module in modules for flag in ("--import", module)]


def add_import_option(parser) -> None:
    """`--import MODULE` (repeatable) on an argparse command that reads a config or a run."""
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import MODULE first: it registers your own algorithm, grouping strategy, model or reward "
                             "(repeatable; a run saves it under `imports:`, so later commands on the run need no flag)")


def listed(value, key: str) -> list[str]:
    """The module names of a config value (`imports: [a, b]`; None: none), checked before any is imported."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(m, str) and m for m in value):
        raise ConfigError(f"{key}={value!r} has the wrong type: expected a list of module names, e.g. [my_package.algos]")
    return value


def load(modules: Iterable[str] = (), source: str = "imports") -> None:
    """Import the installed `genrl.plugins` entry points (once per process), then `modules`.

    `source` names where the modules came from (the config key or the command-line flag) in the
    one-line error that a module which cannot be imported raises.
    """
    load_entry_points()
    for module in modules:
        _import(module, f"{source}: module {module!r}")


def load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True  # first: a failing plugin is reported once, not on every config
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(entry.dist, "name", None)
        _import(entry.value.split(":")[0], f"entry point {entry.name!r} = {entry.value!r} of the "
                f"{ENTRY_POINT_GROUP} group{f' (package {dist})' if dist else ''}")


def _import(module: str, what: str) -> None:
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name and (module == err.name or module.startswith(err.name + ".")):  # itself, not one it imports
            raise ConfigError(f"{what} cannot be imported: no module named {err.name!r} (is its folder on "
                              "PYTHONPATH, or its package installed in this environment?)") from None
        raise ConfigError(f"{what} cannot be imported: {err}") from None
    except Exception as err:  # a plugin's own bug: name the module and keep the cause
        raise ConfigError(f"{what} failed while importing: {type(err).__name__}: {err}") from err
