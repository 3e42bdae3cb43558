"""JSON Schema ``pattern`` (ECMA-262 regular expressions) to GBNF.

The supported subset: literals and escapes, ``.``, character classes with
ranges, negation and ``\\d \\w \\s \\D \\W \\S``, groups (capturing, ``(?:...)``,
named), alternation, ``? * + {m} {m,} {m,n}`` (lazy forms match the same
language), and ``^``/``$`` at the ends. Look-around and back-references cannot
be expressed by a context-free grammar: they raise
:class:`~grammar.errors.UnsupportedSchemaError`.

A pattern constrains the *decoded* string while the grammar writes the JSON
text, so characters that JSON must escape are emitted in their escaped form
(``"`` as ``\\"``, ``\\`` as ``\\\\``, control characters as ``\\n`` or
``\\u00XX``). A negated class or ``.`` never produces ``"``, ``\\`` or control
characters: the grammar then accepts less than the pattern, never more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from grammar.errors import UnsupportedSchemaError
from grammar.gbnf_text import MAX_COUNT, CountTooLarge, char_class, literal, repeat

_DIGIT = [(0x30, 0x39)]
_WORD = [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]
_SPACE = [(0x09, 0x0D), (0x20, 0x20), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A),
          (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000), (0xFEFF, 0xFEFF)]
_MAX = 0x10FFFF
_JSON_ESCAPES = {0x22: '\\"', 0x5C: "\\\\", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t",
                 0x08: "\\b", 0x0C: "\\f"}


def _invert(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out, nxt = [], 0
    for lo, hi in sorted(ranges):
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = max(nxt, hi + 1)
    if nxt <= _MAX:
        out.append((nxt, _MAX))
    return out


def _normalize(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


@dataclass(frozen=True)
class _Class:
    ranges: tuple[tuple[int, int], ...]  # normalized, what the decoded string may hold


@dataclass(frozen=True)
class _Seq:
    items: tuple[_Node, ...]


@dataclass(frozen=True)
class _Alt:
    options: tuple[_Node, ...]


@dataclass(frozen=True)
class _Rep:
    node: _Node
    lo: int
    hi: int | None


@dataclass(frozen=True)
class _Anchor:
    end: bool  # False: '^', True: '$'


_Node = _Class | _Seq | _Alt | _Rep | _Anchor
_START, _END = _Anchor(False), _Anchor(True)


class _Parser:
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

    def parse(self) -> list[tuple[_Seq, bool, bool]]:
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
            branch = _Seq(tuple(items))
            if _has_anchor(branch):
                raise self.fail("'^' or '$' inside the pattern (not at the start or the end of "
                                "an alternative) is not supported")
            out.append((branch, start, end))
        return out

    def alternation(self) -> _Node:
        options = [self.sequence()]
        while self.peek() == "|":
            self.i += 1
            options.append(self.sequence())
        return options[0] if len(options) == 1 else _Alt(tuple(options))

    def sequence(self) -> _Node:
        items: list[_Node] = []
        while self.i < len(self.p) and self.peek() not in "|)":
            if self.peek() in "^$":
                items.append(_START if self.peek() == "^" else _END)
                self.i += 1
                if self.peek() in ("*", "+", "?", "{"):
                    raise self.fail("a quantifier after an anchor")
                continue
            atom = self.atom()
            items.append(self.quantified(atom))
        return _Seq(tuple(items))

    def quantified(self, atom: _Node) -> _Node:
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

    def atom(self) -> _Node:
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
            return _Class(tuple(_invert([(0x0A, 0x0A), (0x0D, 0x0D), (0x2028, 0x2029)])
                                if not self.dotall else [(0, _MAX)]))
        if c == "\\":
            return _Class(tuple(self.escape(in_class=False)))
        if c in "*+?":
            raise self.fail(f"nothing to repeat before {c!r}")
        if c == "{" and self._is_count():
            raise self.fail("nothing to repeat before '{'")
        self.i += 1
        return _Class(((ord(c), ord(c)),))

    def escape(self, *, in_class: bool) -> list[tuple[int, int]]:
        self.i += 1
        c = self.peek()
        self.i += 1
        simple = {"n": 0x0A, "r": 0x0D, "t": 0x09, "f": 0x0C, "v": 0x0B, "0": 0x00}
        classes = {"d": _DIGIT, "w": _WORD, "s": _SPACE}
        if c in classes:
            return list(classes[c])
        if c.lower() in classes:
            return _invert(classes[c.lower()])
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

    def char_class(self) -> _Class:
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
        ranges = _normalize(ranges)
        return _Class(tuple(_invert(ranges) if negated else ranges))

    def _one(self) -> list[tuple[int, int]]:
        c = self.peek()
        self.i += 1
        return [(ord(c), ord(c))]


def _branches(node: _Node) -> list[tuple[_Node, ...]]:
    """Top-level alternatives as item lists, opening groups that make up a whole one."""
    if isinstance(node, _Alt):
        return [b for option in node.options for b in _branches(option)]
    if isinstance(node, _Seq):
        if len(node.items) == 1 and isinstance(node.items[0], _Alt | _Seq):
            return _branches(node.items[0])
        return [node.items]
    return [(node,)]


def _has_anchor(node: _Node) -> bool:
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, _Anchor):
            return True
        if isinstance(n, _Seq):
            stack.extend(n.items)
        elif isinstance(n, _Alt):
            stack.extend(n.options)
        elif isinstance(n, _Rep):
            stack.append(n.node)
    return False


def _rep(node: _Node, lo: int, hi: int | None) -> _Node:
    """``node{lo,hi}``, with a repeated variable-length repetition folded into one where that
    is the same language (``(a+)+`` is ``a+``): llama.cpp's matcher keeps a stack for every
    way to split text between two nested repetitions, and the GBNF check refuses them."""
    inner = node
    while isinstance(inner, _Seq) and len(inner.items) == 1:
        inner = inner.items[0]
    if isinstance(inner, _Rep) and (inner.hi is None or inner.hi > inner.lo) and (
            hi is None or hi > 1):
        a, b = inner.lo, inner.hi
        k0 = max(lo, 1)
        # counts: 0 when lo == 0, and k*a..k*b for each k from k0, which touch when
        # (k+1)*a <= k*b + 1 (then for every larger k too)
        if b is None or (k0 + 1) * a <= k0 * b + 1:
            top = None if b is None or hi is None else hi * b
            if lo > 0:
                return _Rep(inner.node, lo * a, top)
            if a <= 1:
                return _Rep(inner.node, 0, top)
            return _Rep(_Rep(inner.node, a, top), 0, 1)
    if isinstance(inner, _Alt) and hi is None:
        # (x+|y)* is (x|y)*, and (x*|y)+ is (x|y)*
        options = []
        for option in inner.options:
            o = option
            while isinstance(o, _Seq) and len(o.items) == 1:
                o = o.items[0]
            if isinstance(o, _Rep) and o.hi is None and o.lo <= 1:
                lo = 0 if o.lo == 0 else lo
                options.append(o.node)
            else:
                options.append(option)
        return _Rep(_Alt(tuple(options)), lo, None)
    return _Rep(node, lo, hi)


def _json_class(cls: _Class) -> str:
    """GBNF for one decoded character from ``cls``, written as JSON string text."""
    raw: list[tuple[int, int]] = []
    escaped: list[str] = []
    for lo, hi in cls.ranges:
        for code, text in _JSON_ESCAPES.items():
            if lo <= code <= hi:
                escaped.append(literal(text))
        # raw characters may be anything but '"', '\\' and controls
        for a, b in ((lo, hi),):
            pieces = [(a, b)]
            for cut_lo, cut_hi in ((0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C)):
                nxt = []
                for x, y in pieces:
                    if y < cut_lo or x > cut_hi:
                        nxt.append((x, y))
                        continue
                    if x < cut_lo:
                        nxt.append((x, cut_lo - 1))
                    if y > cut_hi:
                        nxt.append((cut_hi + 1, y))
                pieces = nxt
            raw.extend(pieces)
    parts = []
    if raw:
        raw = _normalize(raw)
        if len(raw) == 1 and raw[0][0] == raw[0][1]:
            parts.append(literal(chr(raw[0][0])))
        else:
            parts.append(char_class(raw))
    parts.extend(sorted(set(escaped)))
    if not parts:
        return '[^\\x00-\\U0010FFFF]'  # matches nothing
    return parts[0] if len(parts) == 1 else "( " + " | ".join(parts) + " )"


def _plain_char(node: _Node) -> str | None:
    """The character of a one-character class that JSON writes as itself, else None."""
    if isinstance(node, _Class) and len(node.ranges) == 1 and node.ranges[0][0] == node.ranges[0][1]:
        code = node.ranges[0][0]
        if code >= 0x20 and code not in (0x22, 0x5C):
            return chr(code)
    return None


class _Emitter:
    def __init__(self, add_rule: Callable[[str, str], str], name: str) -> None:
        self.add_rule = add_rule
        self.name = name
        self.n = 0

    def emit(self, node: _Node) -> str:
        match node:
            case _Class():
                return _json_class(node)
            case _Seq(items=items):
                parts: list[str] = []
                run = ""
                for item in items:
                    plain = _plain_char(item)
                    if plain is not None:
                        run += plain
                        continue
                    if run:
                        parts.append(literal(run))
                        run = ""
                    parts.append(self.emit(item))
                if run:
                    parts.append(literal(run))
                text = " ".join(p for p in parts if p)
                return f"( {text} )" if len(parts) > 1 else text
            case _Alt(options=options):
                return "( " + " | ".join(self.emit(o) or '""' for o in options) + " )"
            case _Rep(node=inner, lo=lo, hi=hi):
                body = self.emit(inner) or '""'
                # a repeated repetition (``(?:x{4})*``) needs a rule of its own: GBNF has no
                # stacked quantifiers (``x{4}*`` is a syntax error there)
                stacked = body.endswith(("*", "+", "?", "}"))
                if stacked or not (body.startswith("[") or body.startswith('"')) or " " in body:
                    self.n += 1
                    body = self.add_rule(f"{self.name}-{self.n}", body)
                return repeat(body, lo, hi, self.add_rule)
        raise AssertionError(node)


def _clamp(branch: _Seq, lo: int, hi: int | None) -> _Seq | bool | None:
    """``branch`` (anchored at both ends) with its length held to ``lo``..``hi``, where one
    variable repetition of a class carries all the variation (``^[a-z][a-z0-9-]*$``).

    Returns the new branch, None when no string of the branch has such a length, or False when
    the branch is not of that shape."""
    if len(branch.items) == 1 and isinstance(branch.items[0], _Alt):  # ^(a|b)$
        options = [o if isinstance(o, _Seq) else _Seq((o,)) for o in branch.items[0].options]
        clamped = [_clamp(o, lo, hi) for o in options]
        if any(c is False for c in clamped):
            return False
        kept = tuple(c for c in clamped if isinstance(c, _Seq))
        return _Seq((_Alt(kept),)) if kept else None
    sizes: list[tuple[int, int | None]] = []
    for item in branch.items:
        if isinstance(item, _Class):
            sizes.append((1, 1))
        elif isinstance(item, _Rep) and isinstance(item.node, _Class):
            sizes.append((item.lo, item.hi))
        else:
            return False
    variable = [i for i, (a, b) in enumerate(sizes) if a != b]
    if len(variable) > 1:
        return False
    fixed = sum(a for i, (a, _b) in enumerate(sizes) if i not in variable)
    if not variable:
        return branch if fixed >= lo and (hi is None or fixed <= hi) else None
    i = variable[0]
    rep = branch.items[i]
    assert isinstance(rep, _Rep)
    new_lo = max(rep.lo, lo - fixed)
    new_hi = rep.hi if hi is None else (hi - fixed if rep.hi is None else min(rep.hi, hi - fixed))
    if new_hi is not None and new_lo > new_hi:
        return None
    items = list(branch.items)
    items[i] = _Rep(rep.node, new_lo, new_hi)
    return _Seq(tuple(items))


def pattern_to_gbnf(pattern: str, *, pointer: str, add_rule: Callable[[str, str], str],
                    name: str, any_char: str, dotall: bool = False,
                    lengths: tuple[int, int | None] | None = None) -> tuple[str, bool, bool]:
    """GBNF for the *contents* of a JSON string (between the quotes) matching ``pattern``.

    Args:
        pattern: the regular expression.
        pointer: JSON pointer of the ``pattern`` keyword, for errors.
        add_rule: declares a helper rule ``(name, body)`` and returns its name.
        name: base name for helper rules.
        any_char: the rule name for one arbitrary JSON string character, used
            around unanchored patterns (JSON Schema patterns are not anchored).
        dotall: whether ``.`` also matches line terminators.
        lengths: ``minLength``/``maxLength`` to hold the strings to, where the pattern's
            shape allows (every alternative anchored at both ends, one variable repetition
            of a character class in each).

    Returns:
        The GBNF, whether it also holds ``lengths``, and whether it admits more than the
        pattern (a repetition maximum over :data:`MAX_COUNT` dropped: validation checks).

    Raises:
        UnsupportedSchemaError: a feature no grammar can express, or lengths no string
            of the pattern has.
    """
    emitter = _Emitter(add_rule, name)
    options = []
    parser = _Parser(pattern, pointer, dotall)
    branches = parser.parse()
    bounded = False
    if lengths is not None and all(start and end for _n, start, end in branches):
        clamped = [_clamp(node, *lengths) for node, _s, _e in branches]
        if all(c is not False for c in clamped):
            branches = [(c, True, True) for c in clamped if isinstance(c, _Seq)]
            bounded = True
            if not branches:
                raise UnsupportedSchemaError(
                    f"no string matching {pattern!r} has a length within minLength/maxLength",
                    pointer=pointer, keyword="pattern")
    for node, start, end in branches:
        if not start and not end and not node.items:
            return f"{any_char}*", bounded, parser.widened  # unanchored and empty: anything
        try:
            body = emitter.emit(node) or ""
        except CountTooLarge:  # nested counts multiplied: (a{1000}){1000}
            raise UnsupportedSchemaError(f"pattern {pattern!r}: a repetition count over "
                                         f"{MAX_COUNT}", pointer=pointer, keyword="pattern"
                                         ) from None
        prefix = "" if start else f"{any_char}*"
        suffix = "" if end else f"{any_char}*"
        options.append(" ".join(p for p in (prefix, body, suffix) if p) or '""')
    if len(options) == 1:
        return options[0], bounded, parser.widened
    return "( " + " | ".join(options) + " )", bounded, parser.widened
