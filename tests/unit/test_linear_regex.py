"""User patterns run on RE2: no pattern can stall the process, unsupported ones are refused."""

from __future__ import annotations

import time

import pytest

from grammar import validate
from grammar.linear_regex import UnsupportedPattern, check_schema_patterns, compile_linear


def test_catastrophic_backtracking_patterns_run_in_linear_time() -> None:
    start = time.perf_counter()
    # each of these takes Python's re longer than the age of the universe on this input
    for pattern in (r"(a+)+$", r"^(a|a)*$", r"(x+x+)+y"):
        assert compile_linear(pattern).search("a" * 100_000 + "!") is None
    assert time.perf_counter() - start < 1.0


def test_post_generation_validation_of_a_hostile_pattern_is_fast() -> None:
    schema = {"type": "string", "not": {"pattern": "^(a|a)*$"}}  # validated after generation only
    start = time.perf_counter()
    result = validate('"' + "a" * 20_000 + 'b"', schema)
    assert result.valid
    assert not validate('"aaaa"', schema).valid
    props = {"type": "object", "patternProperties": {"^(a+)+$": {"type": "integer"}},
             "additionalProperties": False}
    assert not validate('{"' + "a" * 20_000 + '!": 1}', props).valid
    assert validate('{"aaa": 1}', props).valid
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("pattern", [r"(?=a)b", r"(a)\1", "x" * 5000])
def test_patterns_re2_cannot_run_are_refused(pattern: str) -> None:
    with pytest.raises(UnsupportedPattern):
        compile_linear(pattern)


def test_schema_patterns_are_checked_with_their_pointer() -> None:
    schema = {"type": "object", "properties": {
        "pattern": {"type": "string"},  # a property called "pattern" is not a pattern
        "b": {"type": "array", "items": {"type": "string", "pattern": "(?!x)y"}}}}
    with pytest.raises(UnsupportedPattern) as info:
        check_schema_patterns(schema)
    assert info.value.pointer == "/properties/b/items/pattern"
    check_schema_patterns({"properties": {"pattern": {"type": "string", "pattern": "^[a-z]+$"}}})
