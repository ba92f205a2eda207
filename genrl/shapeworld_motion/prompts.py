"""The fixed train / held-out split of ShapeWorld-Motion, shipped as text files beside this module.

Per category the scenes of the grammar (a scene is what a prompt describes, whatever its wording:
"A moving up and B staying still" and "B staying still and A moving up" are one scene) are shuffled
by `random.Random(0)`; the first EVAL_SCENES are held out (one wording each), the next TRAIN_SCENES
are trained on (every wording). No held-out scene is trained on under any wording. The grammar has
thousands of scenes; a small fixed set keeps the world learnable by a tiny model on a CPU.

    python -m genrl.shapeworld_motion.prompts     # rewrite the files (they must not change silently)
"""

from __future__ import annotations

import random
from functools import cache
from pathlib import Path

from genrl.shapeworld_motion.grammar import CATEGORIES, all_prompts_by_category, parse

EVAL_SCENES, TRAIN_SCENES = 12, 60
HERE = Path(__file__).parent
FILES = {"train": HERE / "train_prompts.txt", "eval": HERE / "eval_prompts.txt"}


def make_split() -> dict[str, list[str]]:
    """{"train": [...], "eval": [...]}: the split, computed from the grammar."""
    split: dict[str, list[str]] = {"train": [], "eval": []}
    by_category = all_prompts_by_category()
    for name in CATEGORIES:
        wordings: dict[tuple, list[str]] = {}
        for prompt in by_category[name]:
            wordings.setdefault(parse(prompt).scene, []).append(prompt)
        scenes = sorted(wordings)
        random.Random(0).shuffle(scenes)
        split["eval"] += [wordings[s][0] for s in scenes[:EVAL_SCENES]]
        split["train"] += [p for s in scenes[EVAL_SCENES:EVAL_SCENES + TRAIN_SCENES] for p in wordings[s]]
    return split


@cache
def _read(which: str) -> tuple[str, ...]:
    return tuple(line for line in FILES[which].read_text().splitlines() if line)


def train_prompts() -> list[str]:
    return list(_read("train"))


def eval_prompts() -> list[str]:
    return list(_read("eval"))


if __name__ == "__main__":
    for which, prompts in make_split().items():
        FILES[which].write_text("\n".join(prompts) + "\n")
        print(f"wrote {len(prompts)} prompts to {FILES[which]}")
