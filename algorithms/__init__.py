"""Algorithms by name: `genrl.algorithms.get("chunk_grpo")`. Each is one short module."""

from __future__ import annotations

from genrl.registry import Registry

ALGORITHMS: Registry = Registry("algorithm")
register = ALGORITHMS.register


def get(name: str):
    """The Algorithm class registered as `name`."""
    return ALGORITHMS.get(name)


def names() -> list[str]:
    return ALGORITHMS.names()


# Import order matters: the modules register themselves.
from genrl.algorithms import grouping  # noqa: E402
from genrl.algorithms import chunk_grpo, dance_grpo, flow_grpo  # noqa: E402,F401
from genrl.algorithms.base import Algorithm  # noqa: E402

__all__ = ["ALGORITHMS", "Algorithm", "get", "grouping", "names", "register"]
