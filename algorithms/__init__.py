"""Algorithms by name: `genrl.algorithms.get("chunk_grpo")`. Each is one short module.

The registry is `genrl.config.ALGORITHMS`, so that config can parse an algorithm's section
(its options class and defaults) without importing this package; `register` fills it, from
here for the built-in algorithms and from a user's own module for theirs.
"""

from __future__ import annotations

from genrl.config import ALGORITHMS


def get(name: str):
    """The Algorithm class registered as `name`."""
    return ALGORITHMS.get(name)


def names() -> list[str]:
    return ALGORITHMS.names()


# The built-in algorithms register themselves on import.
from genrl.algorithms import grouping  # noqa: E402
from genrl.algorithms.base import Algorithm, register  # noqa: E402
from genrl.algorithms.grpo import GRPO  # noqa: E402
from genrl.algorithms import chunk_grpo, dance_grpo, flow_grpo  # noqa: E402,F401
# The forward-process family (algorithms/forward_process.py) registers when its name is first asked for.
ALGORITHMS.provide({"diffusion_nft": "genrl.algorithms.diffusion_nft", "awm": "genrl.algorithms.awm"})
# The tree family (algorithms/tree_grpo.py, docs/trees.md) likewise.
ALGORITHMS.provide({"mix_grpo": "genrl.algorithms.mix_grpo", "branch_grpo": "genrl.algorithms.branch_grpo",
                    "tempflow_grpo": "genrl.algorithms.tempflow_grpo"})

__all__ = ["ALGORITHMS", "GRPO", "Algorithm", "get", "grouping", "names", "register"]
