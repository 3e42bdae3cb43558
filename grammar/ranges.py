"""Integer ranges as exact GBNF digit patterns (no leading zeros, no "-0").

``int_range(lo, hi)`` accepts exactly the decimal writings of the integers in
``[lo, hi]``; either bound may be None (unbounded). Unbounded sides are capped
at 16 digits, like the ``integer`` primitive.
"""

from __future__ import annotations

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
