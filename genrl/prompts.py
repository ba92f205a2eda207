"""Prompt sets: `shapeworld:train|eval|all` (and `shapeworld_motion:...`, the video world's), a text file with one prompt per line, or a
JSON-lines file whose objects carry a "prompt" field (Flow-GRPO's dataset/geneval/*_metadata.jsonl)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from genrl.errors import PromptError

_SHAPEWORLD_SPLITS = ("train", "eval", "all")


class PromptSetError(PromptError):
    """A prompt source that cannot be used (missing, empty, unknown split)."""


SHOWN_CHARS = 80  # a prompt quoted in an error message is cut to this length


def shorten(prompt: str, limit: int = SHOWN_CHARS) -> str:
    """repr(prompt), cut to about `limit` characters with its full length said (a prompt may be 100 KB)."""
    if len(prompt) <= limit:
        return repr(prompt)
    return f"{prompt[:limit]!r}... ({len(prompt):,} characters)"


def _shapeworld(split: str) -> list[str]:
    from genrl import shapeworld

    return {"train": shapeworld.train_prompts, "eval": shapeworld.eval_prompts, "all": shapeworld.all_prompts}[split]()


def _shapeworld_motion(split: str) -> list[str]:
    from genrl import shapeworld_motion as motion

    return {"train": motion.train_prompts, "eval": motion.eval_prompts,
            "all": lambda: motion.train_prompts() + motion.eval_prompts()}[split]()


# the embedded worlds' fixed splits, named `WORLD:train|eval|all`
_WORLDS: dict[str, Callable[[str], list[str]]] = {"shapeworld": _shapeworld, "shapeworld_motion": _shapeworld_motion}
_WORLD_NAMES = {"shapeworld": "ShapeWorld", "shapeworld_motion": "ShapeWorld-Motion"}


def load_prompts(source: str) -> list[str]:
    return [prompt for _, prompt in numbered_prompts(source)]


def numbered_prompts(source: str) -> list[tuple[str, str]]:
    """(where, prompt) pairs, `where` naming the file and line (or the ShapeWorld split and index)."""
    world = source.split(":", 1)[0]
    if ":" in source and world in _WORLDS:
        split = source.split(":", 1)[1]
        if split not in _SHAPEWORLD_SPLITS:
            raise PromptSetError(f"unknown {_WORLD_NAMES[world]} split {split!r} in {source!r}; choose one of {', '.join(_SHAPEWORLD_SPLITS)}")
        prompts = _WORLDS[world](split)
        return [(f"{source} #{i}", p) for i, p in enumerate(prompts, 1)]
    path = Path(source)
    if path.is_dir():
        raise PromptSetError(f"prompt file {source!r} is a directory: give a text file, one prompt per line")
    if not path.is_file():
        raise PromptSetError(f"prompt file {source!r} not found (or use shapeworld:train / shapeworld:eval)")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors write one) is dropped
    except UnicodeDecodeError as err:
        raise PromptSetError(f"prompt file {source!r} is not UTF-8 text (byte 0x{err.object[err.start]:02x} "
                             f"at offset {err.start}); save it as UTF-8") from None
    lines = [(f"{source!r} line {number}", line.strip()) for number, line in enumerate(text.splitlines(), 1)
             if line.strip() and not line.startswith("#")]
    prompts = _jsonl_prompts(lines) if path.suffix == ".jsonl" else lines
    if not prompts:
        raise PromptSetError(f"prompt file {source!r} holds no prompts (one per line expected)")
    return prompts


def _jsonl_prompts(lines: list[tuple[str, str]]) -> list[tuple[str, str]]:
    prompts = []
    for where, line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise PromptSetError(f"{where} is not JSON ({err.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or not record["prompt"].strip():
            raise PromptSetError(f"{where} has no \"prompt\" string field")
        prompts.append((where, record["prompt"].strip()))
    return prompts


def check_prompts(numbered: list[tuple[str, str]], key: str, checks: list[Callable[[str], None]]) -> None:
    """Run each check (a reward's or a model's `check_prompt`, which raises ValueError for a prompt it
    cannot take) on every prompt; the first failure names the config key, the file and line, and
    the prompt, shortened."""
    for check in checks:
        for where, prompt in numbered:
            try:
                check(prompt)
            except ValueError as err:
                reason = str(err).replace(repr(prompt), shorten(prompt))
                if len(reason) > 4 * SHOWN_CHARS:
                    reason = reason[: 4 * SHOWN_CHARS] + "..."
                raise PromptSetError(f"{key}: {where}: {reason}") from None


def prompt_checks(reward=None, adapter=None) -> list[Callable[[str], None]]:
    """The `check_prompt` methods of a reward and a model adapter, where they have one."""
    return [check for check in (getattr(reward, "check_prompt", None), getattr(adapter, "check_prompt", None)) if check]


def _all_parse(prompts: list[str], parse: Callable[[str], object]) -> bool:
    try:
        for p in prompts:
            parse(p)
    except ValueError:
        return False
    return True


def is_shapeworld_motion(prompts: list[str]) -> bool:
    """True when every prompt belongs to the ShapeWorld-Motion grammar (then the motion judge evaluates)."""
    from genrl import shapeworld_motion

    return _all_parse(prompts, shapeworld_motion.parse)


def is_shapeworld(prompts: list[str]) -> bool:
    """True when every prompt belongs to the ShapeWorld grammar (then the shapeeval evaluator applies)."""
    from genrl import shapeworld

    return _all_parse(prompts, shapeworld.parse)

