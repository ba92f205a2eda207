"""The ShapeWorld prompt grammar: parse a prompt into the constraints a scene must meet.

Five GenEval-like categories, each with one template:

    single_object   "a red circle"
    two_objects     "a red circle and a blue square"      two objects of different shapes
    counting        "two green triangles", "three yellow squares"
    position        "a red circle to the left of a blue square"   two different objects
    color_attr      "a red circle and a blue circle"      same shape, two different colours

"and" joins two distinct objects: same shape with different colours is `color_attr`
(it tests which colour goes on which object); everything else, including the same
colour on two different shapes ("a red circle and a red square"), is `two_objects`.
The same object twice ("a red circle and a red circle") is an error: that is counting.
The article is "an" before "orange" and "a" otherwise. Words are lowercase and
separated by whitespace; nothing else is accepted (`PromptError` names the offending word).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

from genrl.errors import PromptError  # a prompt outside the grammar is a user error

COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
PLURALS: dict[str, str] = {shape: shape + "s" for shape in SHAPES}
COUNT_WORDS: dict[str, int] = {"two": 2, "three": 3}
# Image coordinates: x grows to the right, y grows downwards.
RELATIONS: tuple[str, ...] = ("to the left of", "to the right of", "above", "below")
CATEGORIES: tuple[str, ...] = ("single_object", "two_objects", "counting", "position", "color_attr")

VOCABULARY: list[str] = sorted(
    {"a", "an", "and", *COLORS, *SHAPES, *PLURALS.values(), *COUNT_WORDS}
    | {word for relation in RELATIONS for word in relation.split()}
)


@dataclass(frozen=True)
class ObjectSpec:
    color: str
    shape: str
    count: int = 1


@dataclass(frozen=True)
class RelationSpec:
    subject: int  # index into Constraints.objects
    relation: str  # one of RELATIONS
    object: int


@dataclass(frozen=True)
class Constraints:
    category: str
    objects: tuple[ObjectSpec, ...]
    relation: RelationSpec | None = None


def article(color: str) -> str:
    return "an" if color[0] in "aeiou" else "a"


def _noun_phrase(obj: ObjectSpec) -> str:
    if obj.count == 1:
        return f"{article(obj.color)} {obj.color} {obj.shape}"
    count_word = next(word for word, n in COUNT_WORDS.items() if n == obj.count)
    return f"{count_word} {obj.color} {PLURALS[obj.shape]}"


def format_prompt(constraints: Constraints) -> str:
    """The prompt text for `constraints`; `parse(format_prompt(c)) == c`."""
    phrases = [_noun_phrase(obj) for obj in constraints.objects]
    if constraints.relation is not None:
        rel = constraints.relation
        return f"{phrases[rel.subject]} {rel.relation} {phrases[rel.object]}"
    return " and ".join(phrases)


class _Tokens:
    """A cursor over the words of one prompt that raises errors quoting the prompt."""

    def __init__(self, prompt: str):
        self.prompt = prompt
        self.words = prompt.split()
        self.pos = 0

    def error(self, message: str) -> PromptError:
        return PromptError(f"cannot parse prompt {self.prompt!r}: {message}")

    def next(self, expected: str) -> str:
        if self.pos >= len(self.words):
            raise self.error(f"it ends where {expected} was expected")
        word = self.words[self.pos]
        self.pos += 1
        return word

    def peek(self) -> str | None:
        return self.words[self.pos] if self.pos < len(self.words) else None


def _expect_one_of(tokens: _Tokens, options: Sequence[str], what: str) -> str:
    word = tokens.next(what)
    if word not in options:
        raise tokens.error(f"unknown word {word!r} where {what} was expected (one of: {', '.join(options)})")
    return word


def _parse_noun_phrase(tokens: _Tokens) -> ObjectSpec:
    determiner = _expect_one_of(tokens, ["a", "an", *COUNT_WORDS], "an article or a count")
    color = _expect_one_of(tokens, COLORS, "a colour")
    if determiner in ("a", "an"):
        if determiner != article(color):
            raise tokens.error(f"wrong article {determiner!r} before {color!r}: write '{article(color)} {color}'")
        if tokens.peek() in PLURALS.values():
            raise tokens.error(f"plural {tokens.peek()!r} after {determiner!r}: use 'two' or 'three' with plurals")
        shape = _expect_one_of(tokens, SHAPES, "a singular shape")
        return ObjectSpec(color, shape, 1)
    plural = _expect_one_of(tokens, list(PLURALS.values()), f"a plural shape after {determiner!r}")
    shape = next(s for s, p in PLURALS.items() if p == plural)
    return ObjectSpec(color, shape, COUNT_WORDS[determiner])


def _parse_relation(tokens: _Tokens) -> str:
    first = tokens.next("'and' or a relation")
    candidates = [r for r in RELATIONS if r.split()[0] == first]
    if not candidates:
        expected = ", ".join(("and", *RELATIONS))
        raise tokens.error(f"unknown word {first!r} after the first object (expected one of: {expected})")
    words = [first]
    while " ".join(words) not in candidates:
        words.append(tokens.next(f"the rest of the relation {' or '.join(map(repr, candidates))}"))
        candidates = [r for r in candidates if r.split()[: len(words)] == words]
        if not candidates:
            raise tokens.error(f"unknown relation {' '.join(words)!r} (expected one of: {', '.join(RELATIONS)})")
    return " ".join(words)


def _categorize(tokens: _Tokens, first: ObjectSpec, joiner: str | None, second: ObjectSpec | None) -> Constraints:
    if second is None:
        return Constraints("single_object" if first.count == 1 else "counting", (first,))
    if first.count != 1 or second.count != 1:
        raise tokens.error(f"counts ('two', 'three') only stand alone; '{joiner}' joins two single objects ('a'/'an')")
    if (first.color, first.shape) == (second.color, second.shape):
        both = f"{first.color} {first.shape}"
        raise tokens.error(f"both objects are '{both}'; write 'two {first.color} {PLURALS[first.shape]}'")
    if joiner != "and":
        return Constraints("position", (first, second), RelationSpec(0, joiner, 1))
    category = "color_attr" if first.shape == second.shape else "two_objects"
    return Constraints(category, (first, second))


def parse(prompt: str) -> Constraints:
    """Parse a ShapeWorld prompt; raises `PromptError` (a ValueError) naming the offending word."""
    if not isinstance(prompt, str):
        raise PromptError(f"a prompt must be a str, got {type(prompt).__name__}: {prompt!r}")
    tokens = _Tokens(prompt)
    if not tokens.words:
        raise tokens.error("it is empty; expected e.g. 'a red circle'")
    first = _parse_noun_phrase(tokens)
    joiner = second = None
    if tokens.peek() == "and":
        joiner = tokens.next("'and'")
    elif tokens.peek() is not None:
        joiner = _parse_relation(tokens)
    if joiner is not None:
        second = _parse_noun_phrase(tokens)
    if tokens.peek() is not None:
        raise tokens.error(f"unexpected word {tokens.peek()!r} after a complete prompt")
    return _categorize(tokens, first, joiner, second)


def category(prompt: str) -> str:
    return parse(prompt).category


def _singles() -> list[ObjectSpec]:
    return [ObjectSpec(color, shape) for shape in SHAPES for color in COLORS]


def all_prompts_by_category() -> dict[str, list[str]]:
    """Every prompt of the grammar, once per composition, in a fixed order.

    "and" prompts are listed in one canonical order (shapes, then colours, in the
    order of SHAPES and COLORS); `parse` also accepts the other order. Position
    prompts are listed with every relation and both objects as subject.
    """
    singles = _singles()  # ordered by shape, then colour
    pairs = list(itertools.combinations(singles, 2))
    by_category = {
        "single_object": [Constraints("single_object", (obj,)) for obj in singles],
        "two_objects": [Constraints("two_objects", (a, b)) for a, b in pairs if a.shape != b.shape],
        "counting": [
            Constraints("counting", (ObjectSpec(obj.color, obj.shape, n),))
            for n in COUNT_WORDS.values()
            for obj in singles
        ],
        "position": [
            Constraints("position", (a, b), RelationSpec(0, relation, 1))
            for a, b in itertools.permutations(singles, 2)
            for relation in RELATIONS
        ],
        "color_attr": [Constraints("color_attr", (a, b)) for a, b in pairs if a.shape == b.shape],
    }
    return {name: [format_prompt(c) for c in constraints] for name, constraints in by_category.items()}


def all_prompts() -> list[str]:
    return [prompt for prompts in all_prompts_by_category().values() for prompt in prompts]


def relation_holds(
    subject_xy: tuple[float, float], object_xy: tuple[float, float], relation: str, margin: float
) -> bool:
    """Whether `subject <relation> object` holds between two centroids, along the dominant axis.

    The displacement along the relation's axis must point the right way by more than
    `margin` and exceed the displacement along the other axis by `margin`, so a layout
    that is "above" is never also "to the left of".
    """
    dx = object_xy[0] - subject_xy[0]  # > 0 when the subject is left of the object
    dy = object_xy[1] - subject_xy[1]  # > 0 when the subject is above the object (y grows down)
    along, across = {
        "to the left of": (dx, dy),
        "to the right of": (-dx, dy),
        "above": (dy, dx),
        "below": (-dy, dx),
    }[relation]
    return along > margin and along > abs(across) + margin
