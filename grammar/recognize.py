"""Deciding whether a string is in a GBNF grammar's language, without a model.

The recognizer works like llama.cpp's grammar engine: a set of parse stacks
advanced one code point at a time, with right recursion turned into loops so
that nested optionals such as ``x{0,2000}`` keep the stacks shallow. Grammars
come from :func:`grammar.gbnf.parse_gbnf`, which has already refused left
recursion (the only construct that would make the expansion loop).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from grammar.errors import GrammarError
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
    TokenRef,
    parse_gbnf,
)

# An element is a character class to match, or a rule (by id) to expand.
_Elem = CharClass | int
# A stack is a linked list of frames (alternative index, position), top first.
_Stack = tuple[tuple[int, int], "_Stack"] | None

_ANY = CharClass(True, ())


@dataclass
class _Compiler:
    grammar: Grammar
    alts: list[tuple[_Elem, ...]]
    rule_alts: list[list[int]]
    names: dict[str, int]

    def rule_id(self, name: str) -> int:
        if name not in self.names:
            self.names[name] = len(self.rule_alts)
            self.rule_alts.append([])
        return self.names[name]

    def new_rule(self, options: list[list[_Elem]]) -> int:
        """A helper rule whose options are already compiled."""
        rid = len(self.rule_alts)
        self.rule_alts.append([])
        for option in options:
            self.rule_alts[rid].append(len(self.alts))
            self.alts.append(tuple(option))
        return rid

    def elems(self, node: Node) -> list[_Elem]:
        match node:
            case Literal(text=text):
                return [CharClass(False, ((ord(c), ord(c)),)) for c in text]
            case CharClass():
                return [node]
            case AnyChar():
                return [_ANY]
            case RuleRef(name=name):
                return [self.rule_id(name)]
            case TokenRef():
                raise GrammarError("token references (<...>) cannot be checked against text")
            case Sequence(items=items):
                return [e for item in items for e in self.elems(item)]
            case Alternatives(options=options):
                return [self.new_rule([self.elems(o) for o in options])]
            case Repeat(node=inner, min=lo, max=hi):
                body = self.elems(inner)
                out = body * lo
                if hi is None:
                    loop = self.new_rule([])  # loop ::= body loop | (empty)
                    self.rule_alts[loop].append(len(self.alts))
                    self.alts.append((*body, loop))
                    self.rule_alts[loop].append(len(self.alts))
                    self.alts.append(())
                    return [*out, loop]
                tail: list[_Elem] = []
                for _ in range(hi - lo):  # (body (body (body)?)?)?
                    tail = [self.new_rule([body + tail, []])]
                return out + tail
        raise AssertionError(node)


class Recognizer:
    """A compiled grammar; :meth:`accepts` tests one string."""

    def __init__(self, grammar: Grammar, *, cache_size: int = 1 << 16) -> None:
        comp = _Compiler(grammar, [], [], {})
        for name in grammar.rules:
            comp.rule_id(name)
        for name, alts in grammar.rules.items():
            rid = comp.names[name]
            for option in alts.options:
                elems = tuple(comp.elems(option))  # may add helper rules first
                comp.rule_alts[rid].append(len(comp.alts))
                comp.alts.append(elems)
        self._alts = comp.alts
        self._rule_alts = comp.rule_alts
        self._root = comp.names["root"]
        self._expand = functools.lru_cache(maxsize=cache_size)(self._expand_uncached)

    def _expand_uncached(self, stack: _Stack) -> frozenset[_Stack]:
        """The stacks reachable from ``stack`` whose top is a character (None: matched)."""
        if stack is None:
            return frozenset({None})
        (alt, pos), parent = stack
        elems = self._alts[alt]
        if pos == len(elems):
            return self._expand(parent)
        elem = elems[pos]
        if isinstance(elem, CharClass):
            return frozenset({stack})
        cont: _Stack = parent if pos + 1 == len(elems) else ((alt, pos + 1), parent)
        out: set[_Stack] = set()
        for a in self._rule_alts[elem]:
            out |= self._expand(((a, 0), cont))
        return frozenset(out)

    def _start(self) -> set[_Stack]:
        out: set[_Stack] = set()
        for a in self._rule_alts[self._root]:
            out |= self._expand(((a, 0), None))
        return out

    # --- incremental use (a sampler following the grammar token by token) ---------------------
    def initial(self) -> frozenset[_Stack]:
        """The state before any text: a set of parse stacks."""
        return frozenset(self._start())

    def advance(self, state: frozenset[_Stack], text: str) -> frozenset[_Stack]:
        """The state after ``text``; empty when the grammar refuses it."""
        stacks: frozenset[_Stack] | set[_Stack] = state
        for ch in text:
            code = ord(ch)
            nxt: set[_Stack] = set()
            for stack in stacks:
                if stack is None:
                    continue
                (alt, pos), parent = stack
                cls = self._alts[alt][pos]
                assert isinstance(cls, CharClass)
                if cls.matches(code):
                    nxt |= self._expand(((alt, pos + 1), parent))
            if not nxt:
                return frozenset()
            stacks = nxt
        return frozenset(stacks)

    def next_classes(self, state: frozenset[_Stack]) -> tuple[list[CharClass], bool]:
        """The character classes the next character must match (one per stack), and whether
        the text so far is a complete sentence."""
        classes: list[CharClass] = []
        complete = False
        for stack in state:
            if stack is None:
                complete = True
                continue
            (alt, pos), _parent = stack
            cls = self._alts[alt][pos]
            assert isinstance(cls, CharClass)
            classes.append(cls)
        return classes, complete

    def accepts(self, text: str) -> bool:
        return self.longest_prefix(text) == len(text) and self._final

    def longest_prefix(self, text: str) -> int:
        """How many leading characters of ``text`` some sentence of the grammar starts with."""
        stacks = self._start()
        for i, ch in enumerate(text):
            code = ord(ch)
            nxt: set[_Stack] = set()
            for stack in stacks:
                if stack is None:
                    continue
                (alt, pos), parent = stack
                cls = self._alts[alt][pos]
                assert isinstance(cls, CharClass)
                if cls.matches(code):
                    nxt |= self._expand(((alt, pos + 1), parent))
            if not nxt:
                self._final = False
                return i
            stacks = nxt
        self._final = None in stacks
        return len(text)


def accepts(gbnf: str | Grammar, text: str) -> bool:
    """Whether ``text`` is a complete sentence of the grammar (rule ``root``).

    Raises:
        GbnfSyntaxError: the grammar does not parse or fails its checks.
        GrammarError: the grammar uses token references, which only a model's
            vocabulary can resolve.
    """
    grammar = parse_gbnf(gbnf) if isinstance(gbnf, str) else gbnf
    return Recognizer(grammar).accepts(text)
