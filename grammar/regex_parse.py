"""The parse of a JSON Schema ``pattern`` (ECMA-262 syntax, the subset
:mod:`grammar.regex` describes) into a small tree: character classes as code point ranges,
sequences, alternations, bounded repetitions and the ``^``/``$`` anchors."""

from __future__ import annotations

from dataclasses import dataclass

from grammar.errors import UnsupportedSchemaError
from grammar.gbnf_text import MAX_COUNT

DIGIT = [(0x30, 0x39)]
WORD = [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]
SPACE = [(0x09, 0x0D), (0x20, 0x20), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A),
          (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000), (0xFEFF, 0xFEFF)]
MAX_CODE_POINT = 0x10FFFF
JSON_ESCAPES = {0x22: '\\"', 0x5C: "\\\\", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t",
                 0x08: "\\b", 0x0C: "\\f"}


def invert(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out, nxt = [], 0
    for lo, hi in sorted(ranges):
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = max(nxt, hi + 1)
    if nxt <= MAX_CODE_POINT:
        out.append((nxt, MAX_CODE_POINT))
    return out


def normalize(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


@dataclass(frozen=True)
class Class:
    ranges: tuple[tuple[int, int], ...]  # normalized, what the decoded string may hold


@dataclass(frozen=True)
class Seq:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Alt:
    options: tuple[Node, ...]


@dataclass(frozen=True)
class Rep:
    node: Node
    lo: int
    hi: int | None


@dataclass(frozen=True)
class Anchor:
    end: bool  # False: '^', True: '$'


Node = Class | Seq | Alt | Rep | Anchor
_START, _END = Anchor(False), Anchor(True)


class Parser:
    def __init__(self, pattern: str, pointer: str, dotall: bool) -> None:
        self.p = pattern
        self.i = 0
        self.pointer = pointer
        self.dotall = dotall
        self.widened = False  # a repetition's maximum over MAX_COUNT was dropped

    def fail(self, what: str) -> UnsupportedSchemaError:
        return UnsupportedSchemaError(f"pattern {self.p!r}: {what} (at character {self.i})",
                                      pointer=self.pointer, keyword="pattern")

    def peek(self) -> str:
        return self.p[self.i] if self.i < len(self.p) else ""

    def parse(self) -> list[tuple[Seq, bool, bool]]:
        """The pattern as alternatives ``(node, anchored at start, anchored at end)``.

        Anchors may open or close any top-level alternative, also inside groups
        that make up a whole alternative (``^$|(^[a-z]+$)``); elsewhere they are refused.
        """
        node = self.alternation()
        if self.i < len(self.p):
            raise self.fail(f"unexpected {self.peek()!r}")
        out = []
        for items in _branches(node):
            start = end = False
            while items and items[0] is _START:
                start, items = True, items[1:]
            while items and items[-1] is _END:
                end, items = True, items[:-1]
            while items and items[0] is _END and all(i is _END for i in items):
                items = items[1:]
            branch = Seq(tuple(items))
            if _has_anchor(branch):
                raise self.fail("'^' or '$' inside the pattern (not at the start or the end of "
                                "an alternative) is not supported")
            out.append((branch, start, end))
        return out

    def alternation(self) -> Node:
        options = [self.sequence()]
        while self.peek() == "|":
            self.i += 1
            options.append(self.sequence())
        return options[0] if len(options) == 1 else Alt(tuple(options))

    def sequence(self) -> Node:
        items: list[Node] = []
        while self.i < len(self.p) and self.peek() not in "|)":
            if self.peek() in "^$":
                items.append(_START if self.peek() == "^" else _END)
                self.i += 1
                if self.peek() in ("*", "+", "?", "{"):
                    raise self.fail("a quantifier after an anchor")
                continue
            atom = self.atom()
            items.append(self.quantified(atom))
        return Seq(tuple(items))

    def quantified(self, atom: Node) -> Node:
        while True:
            c = self.peek()
            if c == "?":
                lo, hi = 0, 1
            elif c == "*":
                lo, hi = 0, None
            elif c == "+":
                lo, hi = 1, None
            elif c == "{" and self._is_count():
                lo, hi = self._count()
                atom = _rep(atom, lo, hi)
                if self.peek() == "?":
                    self.i += 1
                continue
            else:
                return atom
            self.i += 1
            if self.peek() == "?":  # lazy: same language
                self.i += 1
            atom = _rep(atom, lo, hi)

    def _is_count(self) -> bool:
        j = self.p.find("}", self.i)
        body = self.p[self.i + 1 : j] if j > 0 else ""
        parts = body.split(",")
        return j > 0 and 1 <= len(parts) <= 2 and parts[0].isdigit() and all(
            p.isdigit() or p == "" for p in parts[1:])

    def _count(self) -> tuple[int, int | None]:
        j = self.p.index("}", self.i)
        body = self.p[self.i + 1 : j]
        lo_text, _, hi_text = body.partition(",") if "," in body else (body, "", body)
        if len(lo_text) > 6 or int(lo_text) > MAX_COUNT:
            raise self.fail(f"a repetition count over {MAX_COUNT}")
        self.i = j + 1
        if hi_text and (len(hi_text) > 6 or int(hi_text) > MAX_COUNT):
            # no model writes that much: the grammar leaves the maximum to validation
            self.widened = True
            hi_text = ""
        if hi_text and int(hi_text) < int(lo_text):
            raise self.fail("quantifier maximum below its minimum")
        return int(lo_text), int(hi_text) if hi_text else None

    def atom(self) -> Node:
        c = self.peek()
        if c == "(":
            self.i += 1
            if self.p.startswith("?:", self.i):
                self.i += 2
            elif self.p.startswith("?<", self.i) and self.p[self.i + 2 : self.i + 3] not in ("=", "!"):
                self.i = self.p.index(">", self.i) + 1
            elif self.peek() == "?":
                raise self.fail("look-around assertions cannot be expressed by a grammar")
            node = self.alternation()
            if self.peek() != ")":
                raise self.fail("missing ')'")
            self.i += 1
            return node
        if c == "[":
            return self.char_class()
        if c == ".":
            self.i += 1
            return Class(tuple(invert([(0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029)])
                                if not self.dotall else [(0, MAX_CODE_POINT)]))
        if c == "\\":
            return Class(tuple(self.escape(in_class=False)))
        if c in "*+?":
            raise self.fail(f"nothing to repeat before {c!r}")
        if c == "{" and self._is_count():
            raise self.fail("nothing to repeat before '{'")
        self.i += 1
        return Class(((ord(c), ord(c)),))

    def escape(self, *, in_class: bool) -> list[tuple[int, int]]:
        self.i += 1
        c = self.peek()
        self.i += 1
        simple = {"n": 0x0A, "r": 0x0D, "t": 0x09, "f": 0x0C, "v": 0x0B, "0": 0x00}
        classes = {"d": DIGIT, "w": WORD, "s": SPACE}
        if c in classes:
            return list(classes[c])
        if c.lower() in classes:
            return invert(classes[c.lower()])
        if c in simple:
            return [(simple[c], simple[c])]
        if c == "b" and in_class:
            return [(0x08, 0x08)]
        if c in "xu":
            size = 2 if c == "x" else 4
            if c == "u" and self.peek() == "{":
                j = self.p.index("}", self.i)
                digits = self.p[self.i + 1 : j]
                self.i = j + 1
            else:
                digits = self.p[self.i : self.i + size]
                self.i += size
            try:
                code = int(digits, 16)
            except ValueError:
                raise self.fail(f"bad \\{c} escape") from None
            return [(code, code)]
        if c.isdigit() or c in "bBk":
            raise self.fail(f"\\{c} (back-references and word boundaries) cannot be expressed")
        if c == "":
            raise self.fail("dangling backslash")
        if c == "p" or c == "P":
            raise self.fail("Unicode property classes are not supported")
        return [(ord(c), ord(c))]

    def char_class(self) -> Class:
        self.i += 1
        negated = self.peek() == "^"
        if negated:
            self.i += 1
        ranges: list[tuple[int, int]] = []
        first = True
        while True:
            c = self.peek()
            if c == "":
                raise self.fail("missing ']'")
            if c == "]" and not first:
                self.i += 1
                break
            first = False
            lo_r = self.escape(in_class=True) if c == "\\" else self._one()
            if (len(lo_r) == 1 and lo_r[0][0] == lo_r[0][1] and self.peek() == "-"
                    and self.p[self.i + 1 : self.i + 2] not in ("]", "")):
                self.i += 1
                hi_r = self.escape(in_class=True) if self.peek() == "\\" else self._one()
                if len(hi_r) != 1 or hi_r[0][0] != hi_r[0][1] or hi_r[0][0] < lo_r[0][0]:
                    raise self.fail("bad range in character class")
                ranges.append((lo_r[0][0], hi_r[0][0]))
            else:
                ranges.extend(lo_r)
        ranges = normalize(ranges)
        return Class(tuple(invert(ranges) if negated else ranges))

    def _one(self) -> list[tuple[int, int]]:
        c = self.peek()
        self.i += 1
        return [(ord(c), ord(c))]


def _branches(node: Node) -> list[tuple[Node, ...]]:
    """Top-level alternatives as item lists, opening groups that make up a whole one."""
    if isinstance(node, Alt):
        return [b for option in node.options for b in _branches(option)]
    if isinstance(node, Seq):
        if len(node.items) == 1 and isinstance(node.items[0], Alt | Seq):
            return _branches(node.items[0])
        return [node.items]
    return [(node,)]


def _has_anchor(node: Node) -> bool:
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, Anchor):
            return True
        if isinstance(n, Seq):
            stack.extend(n.items)
        elif isinstance(n, Alt):
            stack.extend(n.options)
        elif isinstance(n, Rep):
            stack.append(n.node)
    return False


def _rep(node: Node, lo: int, hi: int | None) -> Node:
    """``node{lo,hi}``, with a repeated variable-length repetition folded into one where that
    is the same language (``(a+)+`` is ``a+``): llama.cpp's matcher keeps a stack for every
    way to split text between two nested repetitions, and the GBNF check refuses them."""
    inner = node
    while isinstance(inner, Seq) and len(inner.items) == 1:
        inner = inner.items[0]
    if isinstance(inner, Rep) and (inner.hi is None or inner.hi > inner.lo) and (
            hi is None or hi > 1):
        a, b = inner.lo, inner.hi
        k0 = max(lo, 1)
        # counts: 0 when lo == 0, and k*a..k*b for each k from k0, which touch when
        # (k+1)*a <= k*b + 1 (then for every larger k too)
        if b is None or (k0 + 1) * a <= k0 * b + 1:
            top = None if b is None or hi is None else hi * b
            if lo > 0:
                return Rep(inner.node, lo * a, top)
            if a <= 1:
                return Rep(inner.node, 0, top)
            return Rep(Rep(inner.node, a, top), 0, 1)
    if isinstance(inner, Alt) and hi is None:
        # (x+|y)* is (x|y)*, and (x*|y)+ is (x|y)*
        options = []
        for option in inner.options:
            o = option
            while isinstance(o, Seq) and len(o.items) == 1:
                o = o.items[0]
            if isinstance(o, Rep) and o.hi is None and o.lo <= 1:
                lo = 0 if o.lo == 0 else lo
                options.append(o.node)
            else:
                options.append(option)
        return Rep(Alt(tuple(options)), lo, None)
    return Rep(node, lo, hi)
