"""Random sentences of a GBNF grammar, for property tests of the converter."""

from __future__ import annotations

import random

from grammar.gbnf import (
    Alternatives,
    AnyChar,
    CharClass,
    Grammar,
    Literal,
    Node,
    Repeat,
    RuleRef,
    Sequence,
)


def _min_depth(grammar: Grammar) -> dict[str, int]:
    """Rule name -> the smallest nesting depth a sentence of it needs."""
    inf = 10**9
    depth = dict.fromkeys(grammar.rules, inf)

    def node_depth(node: Node) -> int:
        match node:
            case RuleRef(name=n):
                return depth[n] + 1
            case Repeat(node=inner, min=lo):
                return node_depth(inner) if lo else 0
            case Sequence(items=items):
                return max((node_depth(i) for i in items), default=0)
            case Alternatives(options=options):
                return min(node_depth(o) for o in options)
            case _:
                return 0

    changed = True
    while changed:
        changed = False
        for name, alts in grammar.rules.items():
            d = node_depth(alts)
            if d < depth[name]:
                depth[name] = d
                changed = True
    return depth


class SentenceSampler:
    def __init__(self, grammar: Grammar, rng: random.Random, max_depth: int = 12) -> None:
        self.g = grammar
        self.rng = rng
        self.max_depth = max_depth
        self.depth = _min_depth(grammar)

    def sentence(self) -> str:
        out: list[str] = []
        self._gen(self.g.rules["root"], 0, out)
        return "".join(out)

    def _cost(self, node: Node) -> int:
        match node:
            case RuleRef(name=n):
                return self.depth[n] + 1
            case Repeat(node=inner, min=lo):
                return self._cost(inner) if lo else 0
            case Sequence(items=items):
                return max((self._cost(i) for i in items), default=0)
            case Alternatives(options=options):
                return min(self._cost(o) for o in options)
            case _:
                return 0

    def _char(self, cls: CharClass) -> str:
        if cls.negated:
            while True:
                code = self.rng.choice([self.rng.randint(0x20, 0x7E), self.rng.randint(0xA0, 0x2FF)])
                if cls.matches(code):
                    return chr(code)
        lo, hi = self.rng.choice(cls.ranges)
        hi = min(hi, max(lo, 0x2FF))
        return chr(self.rng.randint(lo, hi))

    def _gen(self, node: Node, depth: int, out: list[str]) -> None:
        match node:
            case Literal(text=t):
                out.append(t)
            case CharClass():
                out.append(self._char(node))
            case AnyChar():
                out.append(self._char(CharClass(True, ())))
            case RuleRef(name=n):
                self._gen(self.g.rules[n], depth + 1, out)
            case Sequence(items=items):
                for item in items:
                    self._gen(item, depth, out)
            case Alternatives(options=options):
                room = self.max_depth - depth
                fitting = [o for o in options if self._cost(o) <= room] or [
                    min(options, key=self._cost)]
                self._gen(self.rng.choice(fitting), depth, out)
            case Repeat(node=inner, min=lo, max=hi):
                deep = depth >= self.max_depth - 2
                top = lo if deep else (hi if hi is not None else lo + 3)
                count = self.rng.randint(lo, max(lo, min(top, lo + 4)))
                if hi is not None and self.rng.random() < 0.2:
                    count = hi  # reach the upper bound now and then
                for _ in range(count):
                    self._gen(inner, depth, out)
