"""The syntax tree of a parsed GBNF grammar."""

from __future__ import annotations

from dataclasses import dataclass

#: llama.cpp's MAX_REPETITION_THRESHOLD: a larger lower bound is refused, a larger
#: upper bound silently becomes unbounded, and nested repetitions whose product
#: passes it are refused.
MAX_REPETITION = 2000


@dataclass(frozen=True, slots=True)
class Literal:
    text: str


@dataclass(frozen=True, slots=True)
class CharClass:
    negated: bool
    ranges: tuple[tuple[int, int], ...]

    def matches(self, code: int) -> bool:
        inside = any(lo <= code <= hi for lo, hi in self.ranges)
        return inside != self.negated


@dataclass(frozen=True, slots=True)
class AnyChar:
    pass


@dataclass(frozen=True, slots=True)
class RuleRef:
    name: str
    line: int
    column: int


@dataclass(frozen=True, slots=True)
class TokenRef:
    """``<[id]>`` (``value`` is the id) or ``<piece>`` (``value`` is the text)."""

    value: int | str
    negated: bool


@dataclass(frozen=True, slots=True)
class Repeat:
    node: Node
    min: int
    max: int | None  # None: unbounded


@dataclass(frozen=True, slots=True)
class Sequence:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Alternatives:
    options: tuple[Sequence, ...]


Node = Literal | CharClass | AnyChar | RuleRef | TokenRef | Repeat | Sequence | Alternatives


@dataclass(frozen=True, slots=True)
class Grammar:
    """A parsed grammar: rule name to its alternatives, in source order."""

    rules: dict[str, Alternatives]
    text: str

    @property
    def uses_tokens(self) -> bool:
        return any(_contains_token(alt) for alt in self.rules.values())


def _contains_token(node: Node) -> bool:
    match node:
        case TokenRef():
            return True
        case Repeat(node=inner):
            return _contains_token(inner)
        case Sequence(items=items):
            return any(_contains_token(i) for i in items)
        case Alternatives(options=options):
            return any(_contains_token(o) for o in options)
        case _:
            return False
