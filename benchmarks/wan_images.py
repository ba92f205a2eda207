"""Is the tiny Wan denoiser a slow learner, or is video hard? Pretrain it on ShapeWorld *images*.

    python -m genrl.benchmarks.wan_images --out /tmp/wan_images --minutes 12

The tiny video model's class (a diffusers WanTransformer3DModel: 3-D rotary positions only, text
through cross-attention, one shared timestep modulation) differs from the image model's SD3 MMDiT
(absolute positions, joint attention, pooled text in every block's modulation). This trains the video
model's sizes (width 128 = 4 heads × 32, FFN 4×, 4 blocks) on ShapeWorld scenes as one-frame clips
with the image model's own recipe and schedule (genrl.shapeworld.pretrain: batch 64, lr 1e-3,
10,000-step schedule) and scores checkpoints with ShapeWorld's judge, so its loss and strict score at a
given step compare directly with the shipped image model's history (genrl/assets/tiny/config.json),
which this prints beside its own at the end (docs/video.md, "Not yet").
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

import torch

from genrl import flow_pretraining
from genrl.flow_pretraining import PromptSampler, Recipe, parser, train
from genrl.models.tiny import DEFAULT_WEIGHTS as IMAGE_WEIGHTS
from genrl.models.tiny_video import TinyVideoConfig, TinyVideoModel
from genrl.shapeworld import VOCABULARY, render_batch
from genrl.shapeworld.pretrain import evaluate_base, prompts_by_category

RECIPE = Recipe(
    script="genrl.benchmarks.wan_images",
    render=lambda prompts, seeds: render_batch(prompts, seeds)[:, None],  # images as one-frame clips
    condition=lambda model, captions: model.condition(model.tokenizer.encode(captions)),
    evaluate=evaluate_base,  # a one-frame clip is judged as the image it is
    save=lambda directory, model, extra: model.save_weights(directory, **extra),
)


def history(directory) -> list[dict]:
    return json.loads((directory / "config.json").read_text())["training"]["history"]


def main(argv: Sequence[str] | None = None) -> None:
    p = parser(__doc__, out="wan_images", steps=10_000, batch=64, lr=1e-3, warmup=200, minutes=12,
               model_options=lambda p: None)
    args = flow_pretraining.parse_args(p, argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = TinyVideoConfig(vocabulary=list(VOCABULARY), num_layers=4, num_attention_heads=4, attention_head_dim=32,
                          ffn_ratio=4, frames=1, temporal_patch=1)
    model = TinyVideoModel(pretrained=False, finetune="none", seed=args.seed, **vars(cfg))
    train(args, model, PromptSampler(prompts_by_category(), args.seed), RECIPE)
    print("| model | step | loss | strict (K = 10, 1 seed) |\n|---|---|---|---|")
    last = max(e["step"] for e in history(Path(args.out)))
    for name, directory in (("Wan (this run)", Path(args.out)), ("SD3 MMDiT (shipped tiny)", IMAGE_WEIGHTS)):
        for h in history(directory):
            if h["step"] <= last:
                print(f"| {name} | {h['step']} | {h['loss']:.4f} | {h['strict_k10']} |")


if __name__ == "__main__":
    main(sys.argv[1:])
