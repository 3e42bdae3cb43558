"""Integer ranges as exact GBNF digit patterns (no leading zeros, no "-0").

``int_range(lo, hi)`` accepts exactly the decimal writings of the integers in
``[lo, hi]``; either bound may be None (unbounded). Unbounded sides are capped
at 16 digits, like the ``integer`` primitive. ``number_range`` does the same for
decimals written without an exponent (at most 16 digits after the point), with
inclusive or exclusive bounds.
"""

from __future__ import annotations

import functools
from decimal import Decimal
from typing import Any

MAX_DIGITS = 16


def _group(alternatives: list[str]) -> str:
    return alternatives[0] if len(alternatives) == 1 and " " not in alternatives[0] else (
        "( " + " | ".join(alternatives) + " )")


def _same_length(lo: str, hi: str) -> list[str]:
    """Alternatives for digit strings of equal length between ``lo`` and ``hi``."""
    if lo == hi:
        return [f'"{lo}"']
    if len(lo) == 1:
        return [f"[{lo}-{hi}]"]
    if lo[0] == hi[0]:
        return [f'"{lo[0]}" {_group(_same_length(lo[1:], hi[1:]))}']
    n = len(lo) - 1
    out: list[str] = []
    low_first, high_first = int(lo[0]), int(hi[0])
    if lo[1:] == "0" * n:
        start = low_first
    else:
        out.append(f'"{lo[0]}" {_group(_same_length(lo[1:], "9" * n))}')
        start = low_first + 1
    end = high_first if hi[1:] == "9" * n else high_first - 1
    if start <= end:
        digit = f"[{start}-{end}]" if start != end else f'"{start}"'
        out.append(f"{digit} [0-9]" + (f"{{{n}}}" if n > 1 else ""))
    if end < high_first:
        out.append(f'"{hi[0]}" {_group(_same_length("0" * n, hi[1:]))}')
    return out


def _non_negative(lo: int, hi: int | None) -> list[str]:
    """Alternatives for integers in [lo, hi] with lo >= 0 (hi None: up to MAX_DIGITS digits)."""
    out: list[str] = []
    if lo == 0:
        out.append('"0"')
        lo = 1
    if hi is not None and lo > hi:
        return out
    lo_len = len(str(lo))
    hi_len = len(str(hi)) if hi is not None else MAX_DIGITS
    for length in range(lo_len, hi_len + 1):
        a = max(lo, 10 ** (length - 1))
        b = min(hi, 10**length - 1) if hi is not None else 10**length - 1
        if a > b:
            continue
        if a == 10 ** (length - 1) and b == 10**length - 1 and length > 1:
            out.append("[1-9] [0-9]" + (f"{{{length - 1}}}" if length > 2 else ""))
        else:
            out.extend(_same_length(str(a), str(b)))
    return out


@functools.lru_cache(maxsize=1024)
def int_range(lo: int | None, hi: int | None) -> str:
    """GBNF for the integers in [lo, hi] (None: unbounded on that side)."""
    parts: list[str] = []
    if lo is None or lo < 0:
        # negative part: -x for x in [max(1, -hi), -lo]
        neg_hi = None if lo is None else -lo
        neg_lo = 1 if hi is None or hi >= 0 else -hi
        if neg_hi is None or neg_lo <= neg_hi:
            alts = _non_negative(neg_lo, neg_hi)
            parts.append(f'"-" ( {" | ".join(alts)} )')
    if hi is None or hi >= 0:
        alts = _non_negative(max(lo, 0) if lo is not None else 0, hi)
        parts.extend(alts)
    return " | ".join(parts)


# --- decimal numbers -----------------------------------------------------------------------

_Bound = tuple[str, bool] | None  # (fraction digits still to compare, strict); None: satisfied
_IMPOSSIBLE = ("", "impossible")


def _split(v: Decimal) -> tuple[int, str]:
    """A non-negative decimal as its integer part and its fraction digits (no trailing zeros)."""
    whole = int(v)
    text = format(v - whole, "f")
    return whole, text.partition(".")[2].rstrip("0")


def _empty_ok(lower: _Bound, upper: _Bound) -> bool:
    """Whether no more digits (the rest of the fraction is 0) meets both bounds."""
    low = lower is None or (lower[0] == "" and not lower[1])
    high = upper is None or upper[0] != "" or not upper[1]
    return low and high


def _step(bound: _Bound, digit: int, *, lower: bool) -> _Bound | tuple[str, str]:
    if bound is None:
        return None
    g = int(bound[0][0]) if bound[0] else 0
    if digit == g:
        return (bound[0][1:], bound[1])
    return None if (digit > g) == lower else _IMPOSSIBLE


def _digit_class(digits: list[int]) -> str:
    if len(digits) == 1:
        return f'"{digits[0]}"'
    return f"[{digits[0]}-{digits[-1]}]" if digits == list(range(digits[0], digits[-1] + 1)) \
        else "[" + "".join(str(d) for d in digits) + "]"


def _fraction(lower: _Bound, upper: _Bound, pos: int, allow_empty: bool) -> str | None:
    """GBNF for fraction digits from position ``pos`` (at most MAX_DIGITS in all) meeting the
    bounds; ``None`` when none does."""
    room = MAX_DIGITS - pos
    if lower == ("", False):
        lower = None  # >= 0 holds for any digits
    empty = allow_empty and _empty_ok(lower, upper)
    if lower is None and upper == ("", False):  # only zeros may follow
        least = 0 if allow_empty else 1
        return None if room < least else ('""' if room == 0 else f'"0"{{{least},{room}}}')
    if lower is None and upper is None:
        if room == 0:
            return '""' if allow_empty else None
        return f"[0-9]{{{0 if allow_empty else 1},{room}}}"
    options: list[str] = []
    if room > 0:
        groups: dict[tuple[Any, Any], list[int]] = {}
        for d in range(10):
            nl, nu = _step(lower, d, lower=True), _step(upper, d, lower=False)
            if nl is _IMPOSSIBLE or nu is _IMPOSSIBLE:
                continue
            groups.setdefault((nl, nu), []).append(d)
        for (nl, nu), digits in groups.items():
            rest = _fraction(nl, nu, pos + 1, True)
            if rest is None:
                continue
            cls = _digit_class(digits)
            options.append(cls if rest == '""' else f"{cls} {rest}")
    if not options:
        return '""' if empty else None
    body = " | ".join(options)
    if empty:
        return f"( {body} )?"
    return f"( {body} )" if len(options) > 1 else body


def _unsigned(a: Decimal, a_strict: bool, b: Decimal | None, b_strict: bool) -> list[str]:
    """Alternatives for unsigned decimals (``int ("." digits)?``) within [a, b] (a >= 0)."""
    if b is not None and (a > b or (a == b and (a_strict or b_strict))):
        return []
    ai, af = _split(a)
    if b is not None and len(str(int(b))) > MAX_DIGITS:
        b = None  # beyond what the grammar writes anyway
    if len(str(ai)) > MAX_DIGITS:
        return []
    bi, bf = _split(b) if b is not None else (0, "")
    out: list[str] = []

    def at(whole: int, lower: _Bound, upper: _Bound) -> None:
        frac = _fraction(lower, upper, 0, False)
        bare = _empty_ok(lower, upper)
        if frac is None:
            if bare:
                out.append(f'"{whole}"')
            return
        out.append(f'"{whole}" ( "." {frac} )' + ("?" if bare else ""))

    if b is not None and bi == ai:
        at(ai, (af, a_strict), (bf, b_strict))
        return out
    at(ai, (af, a_strict), None)
    top = None if b is None else bi - 1
    if top is None or ai + 1 <= top:
        out.append(f'( {" | ".join(_non_negative(ai + 1, top))} ) ( "." [0-9]{{1,{MAX_DIGITS}}} )?')
    if b is not None:
        at(bi, None, (bf, b_strict))
    return out


@functools.lru_cache(maxsize=1024)
def number_range(lo: Decimal | None, lo_strict: bool, hi: Decimal | None, hi_strict: bool) -> str:
    """GBNF for decimal numbers (no exponent) in the interval; either bound may be None.

    Returns "" when no number lies in it.
    """
    parts: list[str] = []
    if hi is None or hi > 0 or (hi == 0 and not hi_strict):
        a, a_strict = (lo, lo_strict) if lo is not None and lo >= 0 else (Decimal(0), False)
        parts += _unsigned(a, a_strict, hi, hi_strict)
    if lo is None or lo < 0:
        if hi is not None and hi <= 0:
            a, a_strict = -hi, hi_strict
        else:
            a, a_strict = Decimal(0), False
        neg = _unsigned(a, a_strict, None if lo is None else -lo, lo_strict)
        if neg:
            parts.append(f'"-" ( {" | ".join(neg)} )')
    return " | ".join(parts)
