"""Tiny random-config diffusers / transformers components for tests: a re-export of
`genrl.models.random_tiny`, where the builders live so that `genrl bench --dry-run`
can use them too (model names tiny-random-sd3 / tiny-random-flux, rewards tiny-random-*)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from genrl.models.random_tiny import *  # noqa: E402,F401,F403
