"""Model adapters by name: `genrl.models.load("tiny")`, `load("sd3", path=...)`.

The built-in adapters are imported when first asked for by name (they pull in diffusers);
a user's own registers with `@register("name")`.
"""

from __future__ import annotations

from genrl.models.base import MODELS, ModelAdapter, register

MODELS.provide({"tiny": "genrl.models.tiny", "tiny_video": "genrl.models.tiny_video", "sd3": "genrl.models.sd3", "flux": "genrl.models.flux",
                 "wan": "genrl.models.wan"})


def load(name: str, **options) -> ModelAdapter:
    """Build the adapter registered as `name` with its options (e.g. path=..., lora_rank=...)."""
    return MODELS.get(name)(**options)


__all__ = ["MODELS", "ModelAdapter", "load", "register"]
