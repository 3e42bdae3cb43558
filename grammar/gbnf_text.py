"""Small helpers that write GBNF text: literals, classes, bounded repetition."""

from __future__ import annotations

import re
from collections.abc import Callable

from grammar.gbnf import MAX_REPETITION


def _name_of(item: str) -> str:
    return re.sub(r"[^a-zA-Z0-9-]+", "-", item).strip("-") or "item"


def _escape_char(code: int, in_class: bool) -> str:
    ch = chr(code)
    specials = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    if ch in specials:
        return specials[ch]
    if in_class and ch in "[]-^":
        return "\\" + ch if ch != "^" else "\\x5E"
    if not in_class and ch == '"':
        return '\\"'
    if code < 0x20 or 0x7F <= code <= 0xA0:
        return f"\\x{code:02X}" if code <= 0xFF else f"\\u{code:04X}"
    if code > 0xFFFF:
        return f"\\U{code:08X}"
    if code > 0x7E and in_class:
        return f"\\u{code:04X}"
    return ch


_PRINTABLE = re.compile(r"[ -~]*")  # printable ASCII: only '"' and '\\' need escapes


def literal(text: str) -> str:
    """A GBNF string literal matching ``text`` exactly."""
    if _PRINTABLE.fullmatch(text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return '"' + "".join(_escape_char(ord(c), False) for c in text) + '"'


def char_class(ranges: list[tuple[int, int]], negated: bool = False) -> str:
    """A GBNF character class over inclusive code point ranges."""
    body = []
    for lo, hi in ranges:
        body.append(_escape_char(lo, True) if lo == hi else
                    f"{_escape_char(lo, True)}-{_escape_char(hi, True)}")
    return "[" + ("^" if negated else "") + "".join(body) + "]"


def repeat(item: str, lo: int, hi: int | None,
           add_rule: Callable[[str, str], str] | None = None) -> str:
    """``item`` repeated ``lo`` to ``hi`` times (None: unbounded), within llama.cpp's cap.

    ``item`` must be a single GBNF element (a rule name, literal, class or group).
    Counts above llama.cpp's limit of 2000 are split into an unambiguous
    alternation: ``x{lo,1999} | x{2000} <the rest>``, so the grammar stays valid
    and llama.cpp keeps only a few parse stacks alive. The split is declared as
    a rule through ``add_rule`` when given: llama.cpp counts the helper rules of a
    group against its limit when the group itself is repeated or optional.
    """
    cap = MAX_REPETITION
    if add_rule is not None and ((hi is not None and hi > cap) or lo > cap):
        return add_rule(f"{_name_of(item)}-rep", repeat(item, lo, hi))
    if lo > cap or (lo == cap and (hi is None or hi > cap)):
        return f"{item}{{{cap}}} " + repeat(item, lo - cap, None if hi is None else hi - cap)
    if hi is None:
        return {0: f"{item}*", 1: f"{item}+"}.get(lo, f"{item}{{{lo},}}")
    if hi <= cap:
        if hi == lo:
            return "" if lo == 0 else (item if lo == 1 else f"{item}{{{lo}}}")
        if (lo, hi) == (0, 1):
            return f"{item}?"
        return f"{item}{{{lo},{hi}}}"
    head = repeat(item, lo, cap - 1)
    rest = f"{item}{{{cap}}} " + repeat(item, 0, hi - cap)
    return f"( {head} | {rest} )"
