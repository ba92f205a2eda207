"""The fixed train / eval split of ShapeWorld prompts, shipped as two text files.

`generate_split()` makes it, per category of `all_prompts_by_category()`:
1. shuffle the category's prompts with `random.Random(f"shapeworld-split-{seed}-{category}")`;
2. eval takes the first prompts of distinct compositions until it has
   min(10, len(category) // 3) of them;
3. train takes the next prompts, up to 60, skipping any whose composition is in eval.
A composition is what a scene shows regardless of wording: the objects of an "and"
prompt in any order, and a position prompt with "right of" / "below" rewritten as
"left of" / "above" ("a B to the right of a A" is the same scene as "a A to the left
of a B"). So no eval scene is ever used in RL training, under any phrasing.

Sizes: eval 6 single_object (of 18) and 10 in every other category (46 in all); train
12 single_object, 60 two_objects, 26 counting, 60 position, 35 color_attr (193 in all).
Regenerate the files after a grammar change with `python -m genrl.shapeworld`;
tests check that the shipped files equal `generate_split()`.
"""

from __future__ import annotations

import random
from functools import lru_cache
from pathlib import Path

from genrl.shapeworld.grammar import Constraints, all_prompts_by_category, parse

SPLIT_SEED = 0
MAX_EVAL_PER_CATEGORY = 10
MAX_TRAIN_PER_CATEGORY = 60
SPLIT_DIR = Path(__file__).parent
TRAIN_FILE, EVAL_FILE = SPLIT_DIR / "train_prompts.txt", SPLIT_DIR / "eval_prompts.txt"

_MIRRORED = {"to the right of": "to the left of", "below": "above"}


def composition_key(constraints: Constraints) -> tuple:
    """What the scene shows, independent of how the prompt words it."""
    rel = constraints.relation
    if rel is None:
        return (constraints.category, tuple(sorted((o.color, o.shape, o.count) for o in constraints.objects)))
    subject, obj = constraints.objects[rel.subject], constraints.objects[rel.object]
    if rel.relation in _MIRRORED:
        return (constraints.category, obj, _MIRRORED[rel.relation], subject)
    return (constraints.category, subject, rel.relation, obj)


def eval_size(category_size: int) -> int:
    return min(MAX_EVAL_PER_CATEGORY, category_size // 3)


def _split_category(prompts: list[str], rng: random.Random) -> tuple[list[str], list[str]]:
    shuffled = list(prompts)
    rng.shuffle(shuffled)
    eval_prompts: list[str] = []
    eval_keys: set[tuple] = set()
    rest = iter(shuffled)
    for prompt in rest:
        key = composition_key(parse(prompt))
        if key not in eval_keys:
            eval_prompts.append(prompt)
            eval_keys.add(key)
        if len(eval_prompts) == eval_size(len(prompts)):
            break
    unseen = [p for p in rest if composition_key(parse(p)) not in eval_keys]
    return unseen[:MAX_TRAIN_PER_CATEGORY], eval_prompts


def generate_split(seed: int = SPLIT_SEED) -> tuple[list[str], list[str]]:
    """(train, eval) prompts, grouped by category in CATEGORIES order (see the module docstring)."""
    train: list[str] = []
    evaluation: list[str] = []
    for name, prompts in all_prompts_by_category().items():
        category_train, category_eval = _split_category(prompts, random.Random(f"shapeworld-split-{seed}-{name}"))
        train += category_train
        evaluation += category_eval
    return train, evaluation


@lru_cache(maxsize=None)
def _read_prompts(path: Path) -> tuple[str, ...]:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; regenerate it with `python -m genrl.shapeworld`")
    return tuple(line for line in path.read_text().splitlines() if line.strip())


def train_prompts() -> list[str]:
    """The prompts RL trains on (read from the shipped train_prompts.txt)."""
    return list(_read_prompts(TRAIN_FILE))


def eval_prompts() -> list[str]:
    """Held-out prompts whose compositions never appear in train_prompts()."""
    return list(_read_prompts(EVAL_FILE))


def write_split_files(seed: int = SPLIT_SEED) -> None:
    train, evaluation = generate_split(seed)
    TRAIN_FILE.write_text("\n".join(train) + "\n")
    EVAL_FILE.write_text("\n".join(evaluation) + "\n")
