"""Small helpers that write GBNF text: literals, classes, bounded repetition."""

from __future__ import annotations

import functools
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
    if len(text) <= 64:  # names, keys and enum values recur: remembered (bounded in size)
        return _short_literal(text)
    return _literal(text)


def _literal(text: str) -> str:
    if _PRINTABLE.fullmatch(text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return '"' + "".join(_escape_char(ord(c), False) for c in text) + '"'


_short_literal = functools.lru_cache(maxsize=1 << 14)(_literal)


def char_class(ranges: list[tuple[int, int]], negated: bool = False) -> str:
    """A GBNF character class over inclusive code point ranges."""
    body = []
    for lo, hi in ranges:
        body.append(_escape_char(lo, True) if lo == hi else
                    f"{_escape_char(lo, True)}-{_escape_char(hi, True)}")
    return "[" + ("^" if negated else "") + "".join(body) + "]"


#: The largest repetition count written exactly (``maxLength``, ``maxItems``, pattern counts):
#: llama.cpp expands a count into that many elements and rules (measured: building a grammar
#: with 20,000 optional characters takes 17 ms, 100,000 take 100 ms and 12 MiB), so larger
#: maxima are left to validation and larger minima refused. Callers check their counts.
MAX_COUNT = 10_000


class CountTooLarge(ValueError):
    """A repetition count over :data:`MAX_COUNT`."""


def repeat(item: str, lo: int, hi: int | None,
           add_rule: Callable[[str, str], str] | None = None) -> str:
    """``item`` repeated ``lo`` to ``hi`` times (None: unbounded), within llama.cpp's cap.

    ``item`` must be a single GBNF element (a rule name, literal, class or group).
    Counts above llama.cpp's limit of 2000 (``add_rule`` is then required) are a rule: the
    required copies in blocks of 2000, then a chain of rules for the optional ones,
    ``opt(k) ::= x{0,1999} | x{2000} opt(k-1)``: unambiguous, never nested deeper than one
    group, and within the cap. llama.cpp counts the helper rules of a group against its limit
    when the group itself is repeated or optional, hence named rules.

    Raises:
        CountTooLarge: ``lo`` or ``hi`` is over :data:`MAX_COUNT`.
    """
    cap = MAX_REPETITION
    if lo > MAX_COUNT or (hi is not None and hi > MAX_COUNT):
        raise CountTooLarge(f"a repetition count over {MAX_COUNT}")
    if lo <= cap and (hi is None or hi <= cap) and not (lo == cap and hi is None):
        return _repeat_small(item, lo, hi)
    if add_rule is None:
        raise ValueError("counts over MAX_REPETITION need add_rule")
    blocks, rest = divmod(lo, cap)
    parts = [f"{item}{{{cap}}}"] * blocks + ([_repeat_small(item, rest, rest)] if rest else [])
    if hi is None:
        parts.append(f"{item}*")
    elif hi > lo:
        links, left = divmod(hi - lo, cap)
        chain = _repeat_small(item, 0, left)
        for _ in range(links):  # each link: fewer than 2000 more, or 2000 and the next link
            chain = add_rule(f"{_name_of(item)}-opt",
                             f"{item}{{0,{cap - 1}}} | {item}{{{cap}}} {chain}".rstrip())
        parts.append(chain)
    if len(parts) == 1 and parts[0] != f"{item}*":
        return parts[0]  # already a rule
    return add_rule(f"{_name_of(item)}-rep", " ".join(p for p in parts if p))


def _repeat_small(item: str, lo: int, hi: int | None) -> str:
    if hi is None:
        return {0: f"{item}*", 1: f"{item}+"}.get(lo, f"{item}{{{lo},}}")
    if hi == lo:
        return "" if lo == 0 else (item if lo == 1 else f"{item}{{{lo}}}")
    if (lo, hi) == (0, 1):
        return f"{item}?"
    return f"{item}{{{lo},{hi}}}"


#: Rule names keep the last parts of their schema path up to this length: names are most of
#: a large grammar's size (each is written where it is used), and llama.cpp's parse is linear
#: in the text.
MAX_RULE_NAME = 12

_NOT_IN_NAMES = re.compile(r"[^a-zA-Z0-9-]+")


@functools.lru_cache(maxsize=1 << 15)  # the second try of a large schema asks again
def rule_name(text: str) -> str:
    tail = text[-4 * MAX_RULE_NAME:]
    plain = tail.replace("_", "-")
    if "__" not in tail and plain.isascii() and plain.replace("-", "").isalnum():
        name = plain.strip("-")  # what the pattern below makes of it, without a regex
    else:
        name = _NOT_IN_NAMES.sub("-", tail).strip("-")
    if len(name) > MAX_RULE_NAME:
        tail = name[-MAX_RULE_NAME:]
        if name[-MAX_RULE_NAME - 1] != "-" and "-" in tail:  # drop a cut-off part
            tail = tail.partition("-")[2]
        name = tail.strip("-")
    return name or "x"
