"""Pretrain the tiny ShapeWorld model (genrl.models.tiny) with rectified flow; evaluate it.

    python -m genrl.shapeworld.pretrain --out genrl/assets/tiny --steps 10000 --seed 0
    python -m genrl.shapeworld.pretrain --eval genrl/assets/tiny --sample-steps 10 20 --guidance 1 2

The recipe (loss, σ sampling, prompt sampling, caption dropout, schedule, EMA, exact resume) is
genrl.flow_pretraining's, shared with the ShapeWorld-Motion video model. Here: the text encoder
and the MMDiT are trained jointly from scratch on rendered ShapeWorld scenes; prompts come from
ALL prompts of the grammar, eval ones included (RL later holds out the eval split, the base model
need not), uniformly over the five categories (position prompts outnumber single objects 70 to 1).
The linear decay at the end matters: measured on the first shipped weights, 800 annealing steps
alone took strict 0.18 → 0.26.

On a machine shared with other jobs, launch with OMP_WAIT_POLICY=PASSIVE:
OpenMP's spinning threads otherwise burn 2–5× the CPU per step when the
cores are oversubscribed (measured: 0.9 s/step instead of 4–9 s/step).
"""

from __future__ import annotations

import argparse
from typing import Sequence

import torch
from tensordict import TensorDict

from genrl import flow_pretraining
from genrl.evaluation import evaluate
from genrl.flow_pretraining import PromptSampler, Recipe, learning_rate, parser, train
from genrl.models.base import ModelAdapter
from genrl.models.tiny import POOLED_EMBEDS, PROMPT_EMBEDS, TinyConfig, TinyShapeModel, save_weights
from genrl.shapeworld import VOCABULARY, all_prompts, eval_prompts, render_batch
from genrl.shapeworld.grammar import category


def evaluate_base(adapter: ModelAdapter, steps: int = 20, seeds: int = 4, shift: float = 1.0) -> dict:
    """Strict and partial ShapeWorld scores on the eval prompts × `seeds` images, with the trainer's
    evaluation (`genrl.evaluation`: the same fixed per-prompt seeds, the same ODE sampler)."""
    result, _, _ = evaluate(adapter, eval_prompts(), seeds, steps, shift, micro_batch=64)
    return {"score": result["score"], "partial": result["partial"], "per_category": result["per_category"]}


def prompts_by_category() -> dict[str, list[str]]:
    by_category: dict[str, list[str]] = {}
    for p in all_prompts():
        by_category.setdefault(category(p), []).append(p)
    return by_category


def _condition(model: TinyShapeModel, captions: list[str]) -> TensorDict:
    embeds, pooled = model.text_encoder(model.tokenizer.encode(captions))
    return TensorDict({PROMPT_EMBEDS: embeds, POOLED_EMBEDS: pooled}, batch_size=[len(captions)])


RECIPE = Recipe(
    script="genrl.shapeworld.pretrain",
    render=render_batch,
    condition=_condition,
    evaluate=evaluate_base,
    save=lambda directory, m, extra: save_weights(directory, m.config, m.text_encoder, m.transformer, **extra),
)


def train_tiny(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = TinyConfig(vocabulary=list(VOCABULARY), max_length=args.max_length, num_layers=args.num_layers)
    longest = max(len(p.split()) for p in all_prompts())
    if longest > cfg.max_length:
        raise ValueError(f"--max-length {cfg.max_length} is shorter than the longest prompt ({longest} words)")
    model = TinyShapeModel(pretrained=False, finetune="none", seed=args.seed, **vars(cfg))
    train(args, model, PromptSampler(prompts_by_category(), args.seed), RECIPE)


def main(argv: Sequence[str] | None = None) -> None:
    def model_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--num-layers", type=int, default=4, help="MMDiT blocks")

    p = parser(__doc__, out="genrl/assets/tiny", steps=10_000, batch=64, lr=1e-3, warmup=200, model_options=model_options)
    flow_pretraining.main(p, argv, TinyShapeModel, evaluate_base, train_tiny)


__all__ = ["evaluate_base", "learning_rate", "main", "prompts_by_category"]


if __name__ == "__main__":
    main()
