"""Strings, numbers and JSON literals for the converter: formats, patterns, length and
digit bounds, ``const``/``enum`` values written as every JSON text that spells them.

A mixin of :class:`grammar.converter.Converter`, as :mod:`grammar.containers` is; the
abstract methods below are the converter's.
"""

from __future__ import annotations

import functools
import json
import math
from decimal import Decimal
from typing import Any

from grammar.errors import InvalidSchemaError, UnsupportedSchemaError
from grammar.gbnf_text import MAX_COUNT, literal, repeat, rule_name
from grammar.primitives import FORMATS
from grammar.ranges import int_range, number_range
from grammar.regex import pattern_to_gbnf
from grammar.rulebase import RuleWriter
from grammar.validate import checked_formats

JSON = Any

#: The generation default's bound on a string whose schema gives no ``maxLength``, format or
#: pattern: a string that never closes is a way to run to the token limit, and no extraction
#: plausibly wants a longer single value (a caller who does says ``maxLength``).
DEFAULT_MAX_LENGTH = 4096


class ScalarRules(RuleWriter):
    root: JSON
    dotall: bool
    grammar_only: bool
    unchecked: list[str]
    patterns: dict[tuple[str, Any], tuple[str, bool, bool]]

    def json_literal(self, value: JSON) -> str:
        """A ``const``/``enum`` value as JSON text: free whitespace between tokens, non-ASCII
        characters raw or ``\\u``-escaped, integral numbers with or without ``.0``."""
        space = self.primitive("space")
        if isinstance(value, dict):
            if not value:
                return f'"{{" {space} "}}" {space}'
            members = f' "," {space} '.join(
                f"{self.json_literal(str(k))} \":\" {space} {self.json_literal(v)}"
                for k, v in value.items())
            return f'"{{" {space} {members} "}}" {space}'
        if isinstance(value, list):
            if not value:
                return f'"[" {space} "]" {space}'
            items = f' "," {space} '.join(self.json_literal(v) for v in value)
            return f'"[" {space} {items} "]" {space}'
        if isinstance(value, str):
            return f"{string_literal(value)} {space}"
        if isinstance(value, bool) or value is None:
            return f"{literal(json.dumps(value))} {space}"
        if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
            return f'{literal(str(int(value)))} ".0"? {space}'
        if isinstance(value, int) and abs(value) < 10**16:
            return f'{literal(str(value))} ".0"? {space}'
        return f"{literal(json.dumps(value))} {space}"

    # --- strings -------------------------------------------------------------
    def visit_string(self, schema: dict[str, JSON], pointer: str, name: str) -> str:
        lo, hi = self.counts(schema, pointer, "minLength", "maxLength")
        if "maxLength" in schema and hi is None:  # over MAX_COUNT: left to validation
            schema = {k: v for k, v in schema.items() if k != "maxLength"}
        fmt = schema.get("format")
        pattern = schema.get("pattern")
        space = self.primitive("space")
        if fmt is not None and fmt in FORMATS:
            self.enforce(pointer, "format")
            for key in ("minLength", "maxLength", "pattern"):
                if key in schema:
                    self.validate_only(pointer, key, " together with a format")
            body = self.add_rule(f"{rule_name(fmt)}-format", FORMATS[fmt])
            return self.add_rule(name, f'"\\"" {body} "\\"" {space}')
        if fmt is not None:
            if fmt in checked_formats(self.root):
                self.validate_only(pointer, "format", f" ('{fmt}' has no grammar)")
            elif self.grammar_only:
                raise UnsupportedSchemaError(f"format {fmt!r} is neither enforced nor checked",
                                             pointer=f"{pointer}/format", keyword="format")
            else:
                self.unchecked.append(f"{pointer}/format")
        if pattern is not None:
            self.enforce(pointer, "pattern")
            lengths = (lo, hi) if "minLength" in schema or "maxLength" in schema else None
            memo = (pattern, lengths)
            if memo not in self.patterns:  # the same pattern again costs nothing
                self.patterns[memo] = pattern_to_gbnf(
                    pattern, pointer=f"{pointer}/pattern", add_rule=self.add_rule,
                    name=f"{name}-pattern", any_char=self.primitive("char"), dotall=self.dotall,
                    lengths=lengths)
            inner, bounded, widened = self.patterns[memo]
            if widened:
                self.validate_only(pointer, "pattern", f" (a repetition maximum over {MAX_COUNT})")
            for key in ("minLength", "maxLength"):
                if key in schema:
                    if bounded:
                        self.enforce(pointer, key)
                    else:
                        self.validate_only(pointer, key, " together with this pattern")
            return self.add_rule(name, f'"\\"" {inner} "\\"" {space}')
        if lo == 0 and hi is None and self.spec:
            return self.primitive("string")
        for key in ("minLength", "maxLength"):
            if key in schema:
                self.enforce(pointer, key)
        if hi is None and not self.spec:  # the generation default: no endless string
            hi = max(lo, DEFAULT_MAX_LENGTH)
            self.enforced.append(f"{pointer}/maxLength (absent: {hi}, the generation default)")
        char = self.primitive("char")
        return self.add_rule(name, f'"\\"" {repeat(char, lo, hi, self.add_rule)} "\\"" {space}')

    # --- numbers ---------------------------------------------------------------
    def visit_integer(self, schema: dict[str, JSON], pointer: str, name: str) -> str:
        lo, lo_strict, hi, hi_strict = bounds(schema, pointer)
        if lo is None and hi is None:
            return self.primitive("integer")
        self._enforce_bounds(schema, pointer)
        ilo = None if lo is None else (math.floor(lo) + 1 if lo_strict else math.ceil(lo))
        ihi = None if hi is None else (math.ceil(hi) - 1 if hi_strict else math.floor(hi))
        if ilo is not None and ihi is not None and ilo > ihi:
            raise UnsupportedSchemaError(f"no integer lies between {lo} and {hi}", pointer=pointer)
        return self.add_rule(name, f"( {int_range(ilo, ihi)} ) {self.primitive('space')}")

    def visit_number(self, schema: dict[str, JSON], pointer: str, name: str) -> str:
        """Bounded numbers are written without an exponent (a subset of the schema's numbers)."""
        lo, lo_strict, hi, hi_strict = bounds(schema, pointer)
        if lo is None and hi is None:
            return self.primitive("number")
        self._enforce_bounds(schema, pointer)
        body = number_range(lo, lo_strict, hi, hi_strict)
        if not body:
            raise UnsupportedSchemaError(f"no number lies between {lo} and {hi}", pointer=pointer)
        return self.add_rule(name, f"( {body} ) {self.primitive('space')}")

    def _enforce_bounds(self, schema: dict[str, JSON], pointer: str) -> None:
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if key in schema:
                self.enforce(pointer, key)


def string_literal(value: str) -> str:
    """A JSON string of exactly ``value``: characters beyond ASCII raw or as ``\\u`` escapes
    (as ``json.dumps`` writes them by default), the rest as ``json.dumps`` does."""
    if len(value) <= 64:  # enum values recur (bounded in size)
        return _short_string_literal(value)
    return _any_string_literal(value)


def _any_string_literal(value: str) -> str:
    if value.isascii() and "\x7f" not in value:  # DEL: json.dumps escapes it, JSON need not
        return literal(json.dumps(value))
    parts: list[str] = []
    run = '"'
    for ch in value:
        if ord(ch) < 0x7F:
            run += json.dumps(ch)[1:-1]
            continue
        if run:
            parts.append(literal(run))
            run = ""
        escaped = json.dumps(ch)[1:-1]  # \uXXXX, or a surrogate pair
        forms = dict.fromkeys([literal(ch), literal(escaped), literal(escaped.upper()
                                                                      .replace("\\U", "\\u"))])
        parts.append("( " + " | ".join(forms) + " )")
    parts.append(literal(run + '"'))
    return " ".join(parts)


_short_string_literal = functools.lru_cache(maxsize=1 << 14)(_any_string_literal)


@functools.lru_cache(maxsize=512)
def string_enum(values: tuple[str, ...]) -> str:
    """The body of an ``enum`` of short strings (as ``json_literal`` writes them)."""
    return " | ".join(dict.fromkeys(f"{string_literal(v)} space" for v in values))


def _decimal(v: JSON, pointer: str) -> Decimal:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise InvalidSchemaError(f"a bound must be a finite number, not {v!r}", pointer=pointer)
    return Decimal(v) if isinstance(v, int) else Decimal(repr(v))


def bounds(schema: dict[str, JSON], pointer: str
            ) -> tuple[Decimal | None, bool, Decimal | None, bool]:
    """``(lower, exclusive, upper, exclusive)`` from the bound keywords: numbers in 2019-09 and
    later (and draft-06/07), booleans that make ``minimum``/``maximum`` exclusive in draft-04."""
    lo: Decimal | None = None
    hi: Decimal | None = None
    lo_strict = hi_strict = False
    if "minimum" in schema:
        lo = _decimal(schema["minimum"], f"{pointer}/minimum")
        lo_strict = schema.get("exclusiveMinimum") is True
    if "maximum" in schema:
        hi = _decimal(schema["maximum"], f"{pointer}/maximum")
        hi_strict = schema.get("exclusiveMaximum") is True
    ex_lo, ex_hi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if ex_lo is not None and not isinstance(ex_lo, bool):
        v = _decimal(ex_lo, f"{pointer}/exclusiveMinimum")
        if lo is None or v >= lo:
            lo, lo_strict = v, True
    if ex_hi is not None and not isinstance(ex_hi, bool):
        v = _decimal(ex_hi, f"{pointer}/exclusiveMaximum")
        if hi is None or v <= hi:
            hi, hi_strict = v, True
    return lo, lo_strict, hi, hi_strict
