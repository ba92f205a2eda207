"""Model adapters by name: `genrl.models.load("tiny")`, `load("sd3", path=...)`."""

from __future__ import annotations

import importlib

from genrl.models.base import ModelAdapter
from genrl.registry import Registry

MODELS: Registry = Registry("model")
register = MODELS.register

# Built-in adapters register themselves on import; heavy ones are imported lazily.
_BUILTIN_MODULES = {
    "tiny": "genrl.models.tiny",
    "sd3": "genrl.models.sd3",
    "flux": "genrl.models.flux",
    "tiny-random-sd3": "genrl.models.random_tiny",
    "tiny-random-flux": "genrl.models.random_tiny",
}


def load(name: str, **options) -> ModelAdapter:
    """Build the adapter registered as `name` with its options (e.g. path=..., lora_rank=...)."""
    if name not in MODELS and name in _BUILTIN_MODULES:
        importlib.import_module(_BUILTIN_MODULES[name])
    return MODELS.get(name)(**options)


__all__ = ["MODELS", "ModelAdapter", "load", "register"]
