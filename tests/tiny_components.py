"""Tiny random-config diffusers / transformers components for tests: a re-export of
`genrl.testing.builders`, where the builders live so that `genrl bench --dry-run`
can use them too (model names tiny-random-sd3 / tiny-random-flux, rewards tiny-random-*)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import genrl.testing  # noqa: E402,F401  (registers the tiny-random-* names)
from genrl.testing.builders import *  # noqa: E402,F401,F403
