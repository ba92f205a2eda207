"""ShapeWorld: the embedded toy text-to-image world (docs/architecture.md, "ShapeWorld").

    grammar   parse prompts into constraints; enumerate every prompt; VOCABULARY
    prompts   the fixed train / eval split (shipped text files)
    rendering ground-truth 32×32 images for a (prompt, seed)
    scoring   GenEval-style programmatic scoring (strict and partial)
    quality   the image-quality guard: texture the scorer does not see (reward hacking)

>>> from genrl.shapeworld import render, score
>>> score(render("a red circle", seed=0)[None], ["a red circle"])["strict"]
tensor([1.])
"""

from genrl.shapeworld.grammar import (
    CATEGORIES,
    COLORS,
    RELATIONS,
    SHAPES,
    VOCABULARY,
    Constraints,
    PromptError,
    all_prompts,
    category,
    format_prompt,
    parse,
)
from genrl.shapeworld.prompts import eval_prompts, train_prompts
from genrl.shapeworld.rendering import PALETTE, render, render_batch
from genrl.shapeworld.scoring import evaluate, score

__all__ = [
    "CATEGORIES",
    "COLORS",
    "Constraints",
    "PALETTE",
    "PromptError",
    "RELATIONS",
    "SHAPES",
    "VOCABULARY",
    "all_prompts",
    "category",
    "eval_prompts",
    "evaluate",
    "format_prompt",
    "parse",
    "render",
    "render_batch",
    "score",
    "train_prompts",
]
