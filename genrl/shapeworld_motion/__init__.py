"""ShapeWorld-Motion: the embedded toy text-to-video world (docs/video.md).

    grammar    parse motion prompts into constraints; enumerate every prompt
    prompts    the fixed train / held-out split (shipped text files)
    rendering  ground-truth clips [F, 3, 32, 32] for a (prompt, seed)
    judging    the programmatic motion judge (strict and partial)

>>> from genrl.shapeworld_motion import render_clip, score_clips
>>> score_clips(render_clip("a red circle moving left", seed=0)[None], ["a red circle moving left"])["strict"]
tensor([1.])
"""

from genrl.shapeworld_motion.grammar import CATEGORIES, MOTIONS, VOCABULARY, MotionConstraints, category, parse
from genrl.shapeworld_motion.judging import evaluate_clips, score_clips
from genrl.shapeworld_motion.prompts import eval_prompts, train_prompts
from genrl.shapeworld_motion.rendering import FRAMES, SIZE, render_clip, render_clips

__all__ = ["CATEGORIES", "FRAMES", "MOTIONS", "MotionConstraints", "SIZE", "VOCABULARY", "category", "eval_prompts",
           "evaluate_clips", "parse", "render_clip", "render_clips", "score_clips", "train_prompts"]
