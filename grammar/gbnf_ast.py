"""The syntax tree of a parsed GBNF grammar."""

from __future__ import annotations

from collections.abc import Iterator
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
        return next(token_refs(self), None) is not None


def iter_nodes(node: Node) -> Iterator[Node]:
    """``node`` and every node below it, depth first."""
    yield node
    match node:
        case Repeat(node=inner):
            yield from iter_nodes(inner)
        case Sequence(items=items):
            for item in items:
                yield from iter_nodes(item)
        case Alternatives(options=options):
            for option in options:
                yield from iter_nodes(option)
        case _:
            return


def token_refs(grammar: Grammar) -> Iterator[TokenRef]:
    """Every token reference (``<[id]>``, ``<piece>``) in the grammar."""
    for alts in grammar.rules.values():
        for node in iter_nodes(alts):
            if isinstance(node, TokenRef):
                yield node
