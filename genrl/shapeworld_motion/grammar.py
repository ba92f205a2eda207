"""The ShapeWorld-Motion prompt grammar: short clips of flat shapes that move.

Four categories, each with one template (ShapeWorld's colours and shapes, "an" before orange):

    single_motion    "a red circle moving left"
    two_motions      "a blue square moving up and a green triangle staying still"   two different objects
    counting_motion  "two yellow circles moving right"            every one of them moves that way
    relative_motion  "a red circle moving toward a blue square"   or "moving away from": the distance
                                                                  between the two shrinks or grows

Motions: "moving left", "moving right", "moving up", "moving down", "staying still". Image
coordinates: x grows to the right, y downwards. Words are lowercase and separated by whitespace;
nothing else is accepted (`PromptError` names the offending word).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from genrl.errors import PromptError
from genrl.shapeworld.grammar import COLORS, COUNT_WORDS, PLURALS, SHAPES, article

# direction per motion: (dx, dy) unit steps in image coordinates
MOTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}
RELATIVE: tuple[str, ...] = ("toward", "away from")
CATEGORIES: tuple[str, ...] = ("single_motion", "two_motions", "counting_motion", "relative_motion")

VOCABULARY: list[str] = sorted(
    {"a", "an", "and", "moving", "staying", "toward", "away", "from", *COLORS, *SHAPES, *PLURALS.values(), *COUNT_WORDS}
    | set(MOTIONS)
)


@dataclass(frozen=True)
class MovingObject:
    color: str
    shape: str
    motion: str  # a key of MOTIONS, or "relative" for the subject of a relative_motion prompt
    count: int = 1


@dataclass(frozen=True)
class MotionConstraints:
    category: str
    objects: tuple[MovingObject, ...]
    relative: str | None = None  # "toward" / "away from": objects[0] relative to objects[1]

    @property
    def scene(self) -> tuple:
        """The scene a prompt describes, whatever its wording (the split keeps each scene on one side)."""
        objects = tuple(sorted((o.color, o.shape, o.motion, o.count) for o in self.objects))
        return (self.category, objects if self.relative is None else tuple((o.color, o.shape) for o in self.objects),
                self.relative)


def _motion_phrase(motion: str) -> str:
    return "staying still" if motion == "still" else f"moving {motion}"


def format_prompt(c: MotionConstraints) -> str:
    def noun(o: MovingObject) -> str:
        return f"{article(o.color)} {o.color} {o.shape}"

    if c.category == "relative_motion":
        return f"{noun(c.objects[0])} moving {c.relative} {noun(c.objects[1])}"
    if c.category == "counting_motion":
        o = c.objects[0]
        word = {v: k for k, v in COUNT_WORDS.items()}[o.count]
        return f"{word} {o.color} {PLURALS[o.shape]} {_motion_phrase(o.motion)}"
    return " and ".join(f"{noun(o)} {_motion_phrase(o.motion)}" for o in c.objects)


class _Tokens:
    def __init__(self, prompt: str):
        self.prompt, self.words, self.i = prompt, prompt.split(), 0

    def error(self, message: str) -> PromptError:
        shown = self.prompt if len(self.prompt) <= 80 else self.prompt[:80] + f"... ({len(self.prompt)} chars)"
        return PromptError(f"cannot parse motion prompt {shown!r}: {message}")

    def peek(self) -> str | None:
        return self.words[self.i] if self.i < len(self.words) else None

    def take(self, options, what: str) -> str:
        word = self.peek()
        if word not in options:
            found = f"{word!r}" if word is not None else "the end of the prompt"
            raise self.error(f"expected {what}, found {found}")
        self.i += 1
        return word


def _noun(tokens: _Tokens) -> tuple[str, str]:
    art = tokens.take(("a", "an"), "'a' or 'an'")
    color = tokens.take(COLORS, f"a colour ({', '.join(COLORS)})")
    if art != article(color):
        raise tokens.error(f"wrong article {art!r} before {color!r}")
    return color, tokens.take(SHAPES, f"a shape ({', '.join(SHAPES)})")


def _motion(tokens: _Tokens) -> str:
    verb = tokens.take(("moving", "staying"), "'moving' or 'staying'")
    if verb == "staying":
        return tokens.take(("still",), "'still' after 'staying'")
    return tokens.take(("left", "right", "up", "down"), "a direction (left, right, up, down) after 'moving'")


def parse(prompt: str) -> MotionConstraints:
    """The constraints of a motion prompt, or a PromptError naming the first word that does not fit."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptError(f"cannot parse motion prompt {prompt!r}: it is empty")
    tokens = _Tokens(prompt)
    if tokens.peek() in COUNT_WORDS:
        count = COUNT_WORDS[tokens.take(COUNT_WORDS, "a count")]
        color = tokens.take(COLORS, "a colour")
        shape = {v: k for k, v in PLURALS.items()}[tokens.take(tuple(PLURALS.values()), "a plural shape")]
        result = MotionConstraints("counting_motion", (MovingObject(color, shape, _motion(tokens), count),))
    else:
        color, shape = _noun(tokens)
        if tokens.peek() == "moving" and tokens.words[tokens.i + 1:tokens.i + 2] and tokens.words[tokens.i + 1] in ("toward", "away"):
            tokens.take(("moving",), "'moving'")
            relative = "toward" if tokens.take(("toward", "away"), "'toward' or 'away'") == "toward" else "away from"
            if relative == "away from":
                tokens.take(("from",), "'from' after 'away'")
            other = _noun(tokens)
            if other == (color, shape):
                raise tokens.error("the two objects of a relative motion must differ")
            result = MotionConstraints("relative_motion", (MovingObject(color, shape, "relative"), MovingObject(*other, "still")),
                                       relative)
        else:
            first = MovingObject(color, shape, _motion(tokens))
            if tokens.peek() is None:
                result = MotionConstraints("single_motion", (first,))
            else:
                tokens.take(("and",), "'and' or the end of the prompt")
                second = MovingObject(*_noun(tokens), _motion(tokens))
                if (second.color, second.shape) == (first.color, first.shape):
                    raise tokens.error("the two objects must differ (the same object twice is counting)")
                result = MotionConstraints("two_motions", (first, second))
    if tokens.peek() is not None:
        raise tokens.error(f"unexpected word {tokens.peek()!r} after a complete prompt")
    return result


def category(prompt: str) -> str:
    return parse(prompt).category


def all_prompts_by_category() -> dict[str, list[str]]:
    """Every prompt of the grammar, per category (two_motions in both orders)."""
    singles = list(itertools.product(COLORS, SHAPES))
    out: dict[str, list[str]] = {name: [] for name in CATEGORIES}
    for (color, shape), motion in itertools.product(singles, MOTIONS):
        out["single_motion"].append(format_prompt(MotionConstraints("single_motion", (MovingObject(color, shape, motion),))))
        for count in COUNT_WORDS.values():
            obj = MovingObject(color, shape, motion, count)
            out["counting_motion"].append(format_prompt(MotionConstraints("counting_motion", (obj,))))
    for a, b in itertools.permutations(singles, 2):
        for ma, mb in itertools.product(MOTIONS, MOTIONS):
            objects = (MovingObject(*a, ma), MovingObject(*b, mb))
            out["two_motions"].append(format_prompt(MotionConstraints("two_motions", objects)))
        for relative in RELATIVE:
            objects = (MovingObject(*a, "relative"), MovingObject(*b, "still"))
            out["relative_motion"].append(format_prompt(MotionConstraints("relative_motion", objects, relative)))
    return out


__all__ = ["CATEGORIES", "MOTIONS", "RELATIVE", "VOCABULARY", "MotionConstraints", "MovingObject", "all_prompts_by_category",
           "category", "format_prompt", "parse"]
