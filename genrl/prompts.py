"""Prompt sets: `shapeworld:train|eval|all` or a text file with one prompt per line."""

from __future__ import annotations

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
    prompts = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not prompts:
        raise PromptSetError(f"prompt file {source!r} holds no prompts (one per line expected)")
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
