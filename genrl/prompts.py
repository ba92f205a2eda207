"""Prompt sets: `shapeworld:train|eval|all`, a text file with one prompt per line, or a
JSON-lines file whose objects carry a "prompt" field (Flow-GRPO's dataset/geneval/*_metadata.jsonl)."""

from __future__ import annotations

import json
from pathlib import Path

_SHAPEWORLD_SPLITS = ("train", "eval", "all")


class PromptSetError(ValueError):
    """A prompt source that cannot be used (missing, empty, unknown split)."""


def load_prompts(source: str) -> list[str]:
    if source.startswith("shapeworld:"):
        split = source.split(":", 1)[1]
        if split not in _SHAPEWORLD_SPLITS:
            raise PromptSetError(f"unknown ShapeWorld split {split!r} in {source!r}; choose one of {', '.join(_SHAPEWORLD_SPLITS)}")
        from genrl import shapeworld

        return {"train": shapeworld.train_prompts, "eval": shapeworld.eval_prompts, "all": shapeworld.all_prompts}[split]()
    path = Path(source)
    if not path.is_file():
        raise PromptSetError(f"prompt file {source!r} not found (or use shapeworld:train / shapeworld:eval)")
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    prompts = _jsonl_prompts(lines, source) if path.suffix == ".jsonl" else lines
    if not prompts:
        raise PromptSetError(f"prompt file {source!r} holds no prompts (one per line expected)")
    return prompts


def _jsonl_prompts(lines: list[str], source: str) -> list[str]:
    prompts = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise PromptSetError(f"{source!r} line {number} is not JSON ({err.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or not record["prompt"].strip():
            raise PromptSetError(f"{source!r} line {number} has no \"prompt\" string field")
        prompts.append(record["prompt"].strip())
    return prompts


def is_shapeworld(prompts: list[str]) -> bool:
    """True when every prompt belongs to the ShapeWorld grammar (then the shapeeval evaluator applies)."""
    from genrl import shapeworld

    try:
        for p in prompts:
            shapeworld.parse(p)
    except ValueError:
        return False
    return True


def check_drawable(adapter, prompts: list[str]) -> None:
    """Reject, before anything is sampled, prompts the model cannot draw: the tiny ShapeWorld model
    draws only prompts of the ShapeWorld grammar (the error quotes the prompt and names the bad word)."""
    from genrl.models.tiny import TinyShapeModel, default_vocabulary

    if isinstance(adapter, TinyShapeModel) and adapter.config.vocabulary == default_vocabulary():
        from genrl import shapeworld

        for prompt in prompts:
            shapeworld.parse(prompt)
