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

from grammar.errors import UnsupportedSchemaError
from grammar.gbnf_text import MAX_COUNT, CountTooLarge, char_class, literal, repeat
from grammar.regex_parse import JSON_ESCAPES, Alt, Class, Node, Parser, Rep, Seq, normalize


def _json_class(cls: Class) -> str:
    """GBNF for one decoded character from ``cls``, written as JSON string text."""
    raw: list[tuple[int, int]] = []
    escaped: list[str] = []
    for lo, hi in cls.ranges:
        for code, text in JSON_ESCAPES.items():
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
        raw = normalize(raw)
        if len(raw) == 1 and raw[0][0] == raw[0][1]:
            parts.append(literal(chr(raw[0][0])))
        else:
            parts.append(char_class(raw))
    parts.extend(sorted(set(escaped)))
    if not parts:
        return '[^\\x00-\\U0010FFFF]'  # matches nothing
    return parts[0] if len(parts) == 1 else "( " + " | ".join(parts) + " )"


def _plain_char(node: Node) -> str | None:
    """The character of a one-character class that JSON writes as itself, else None."""
    if isinstance(node, Class) and len(node.ranges) == 1 and node.ranges[0][0] == node.ranges[0][1]:
        code = node.ranges[0][0]
        if code >= 0x20 and code not in (0x22, 0x5C):
            return chr(code)
    return None


class _Emitter:
    def __init__(self, add_rule: Callable[[str, str], str], name: str) -> None:
        self.add_rule = add_rule
        self.name = name
        self.n = 0

    def emit(self, node: Node) -> str:
        match node:
            case Class():
                return _json_class(node)
            case Seq(items=items):
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
            case Alt(options=options):
                return "( " + " | ".join(self.emit(o) or '""' for o in options) + " )"
            case Rep(node=inner, lo=lo, hi=hi):
                body = self.emit(inner) or '""'
                # a repeated repetition (``(?:x{4})*``) needs a rule of its own: GBNF has no
                # stacked quantifiers (``x{4}*`` is a syntax error there)
                stacked = body.endswith(("*", "+", "?", "}"))
                if stacked or not (body.startswith("[") or body.startswith('"')) or " " in body:
                    self.n += 1
                    body = self.add_rule(f"{self.name}-{self.n}", body)
                return repeat(body, lo, hi, self.add_rule)
        raise AssertionError(node)


def _clamp(branch: Seq, lo: int, hi: int | None) -> Seq | bool | None:
    """``branch`` (anchored at both ends) with its length held to ``lo``..``hi``, where one
    variable repetition of a class carries all the variation (``^[a-z][a-z0-9-]*$``).

    Returns the new branch, None when no string of the branch has such a length, or False when
    the branch is not of that shape."""
    if len(branch.items) == 1 and isinstance(branch.items[0], Alt):  # ^(a|b)$
        options = [o if isinstance(o, Seq) else Seq((o,)) for o in branch.items[0].options]
        clamped = [_clamp(o, lo, hi) for o in options]
        if any(c is False for c in clamped):
            return False
        kept = tuple(c for c in clamped if isinstance(c, Seq))
        return Seq((Alt(kept),)) if kept else None
    sizes: list[tuple[int, int | None]] = []
    for item in branch.items:
        if isinstance(item, Class):
            sizes.append((1, 1))
        elif isinstance(item, Rep) and isinstance(item.node, Class):
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
    assert isinstance(rep, Rep)
    new_lo = max(rep.lo, lo - fixed)
    new_hi = rep.hi if hi is None else (hi - fixed if rep.hi is None else min(rep.hi, hi - fixed))
    if new_hi is not None and new_lo > new_hi:
        return None
    items = list(branch.items)
    items[i] = Rep(rep.node, new_lo, new_hi)
    return Seq(tuple(items))


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
    parser = Parser(pattern, pointer, dotall)
    branches = parser.parse()
    bounded = False
    if lengths is not None and all(start and end for _n, start, end in branches):
        clamped = [_clamp(node, *lengths) for node, _s, _e in branches]
        if all(c is not False for c in clamped):
            branches = [(c, True, True) for c in clamped if isinstance(c, Seq)]
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
