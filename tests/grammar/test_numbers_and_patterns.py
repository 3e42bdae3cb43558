"""Exactness against an oracle: decimal ranges against Python's Decimal comparisons, and
patterns (anchors inside, folded nested repetitions) against Python's ``re`` over every short
string of a small alphabet."""

from __future__ import annotations

import itertools
import json
import os
import re
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from grammar import Recognizer, convert, parse_gbnf
from grammar.ranges import number_range

EXAMPLES = int(os.environ.get("SLUICE_HYPOTHESIS_EXAMPLES", "150"))
BOUNDS = st.one_of(st.none(), st.decimals(min_value=-1000, max_value=1000, places=3,
                                          allow_nan=False, allow_infinity=False))
NUMBERS = st.decimals(min_value=-1200, max_value=1200, places=4, allow_nan=False,
                      allow_infinity=False)


@settings(max_examples=EXAMPLES, deadline=None)
@given(BOUNDS, st.booleans(), BOUNDS, st.booleans(), st.lists(NUMBERS, min_size=1, max_size=12))
def test_decimal_ranges_are_exact(lo: Decimal | None, lo_strict: bool, hi: Decimal | None,
                                  hi_strict: bool, values: list[Decimal]) -> None:
    body = number_range(lo, lo_strict, hi, hi_strict)
    inside = [v for v in values if (lo is None or (v > lo if lo_strict else v >= lo))
              and (hi is None or (v < hi if hi_strict else v <= hi))]
    if not body:
        assert not inside or (lo is not None and hi is not None and lo >= hi)
        return
    recognizer = Recognizer(parse_gbnf(f"root ::= {body}\n"))
    for v in values:
        text = format(v.normalize(), "f") if v != 0 else "0"
        want = v in inside
        assert recognizer.accepts(text) == want, (text, lo, lo_strict, hi, hi_strict)
        if "." not in text and want:
            assert recognizer.accepts(text + ".0")  # the same number, written otherwise


PATTERNS = [r"^$|(^[ab]+$)", r"^((a)+)+$", r"(a|b+)*c", r"^(ab?){2,3}$", r"^(a{1,2}){2,}$",
            r"^(a{2,3}){0,2}$", r"^(a*)*$", r"a$|^b", r"^(a|b)$|^c+$", r"(?:a+)?b", r"^(a?)+$",
            r"^(a{3,4}){1,3}$", r"^(?:a|b*)+c$", r"^(a+|ab)+$", r"^a|b$", r"^a+?b??$"]
STRINGS = [""] + ["".join(p) for n in range(1, 7) for p in itertools.product("abc", repeat=n)]


def test_patterns_match_what_python_matches() -> None:
    for pattern in PATTERNS:
        recognizer = Recognizer(parse_gbnf(convert({"type": "string", "pattern": pattern}).gbnf))
        for s in STRINGS:
            assert recognizer.accepts(json.dumps(s)) == (re.search(pattern, s) is not None), \
                (pattern, s)
