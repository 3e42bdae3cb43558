"""Arbitrary schema-shaped input (valid or not, keywords with values of any type, deep
nesting, odd patterns): the converter either returns a grammar that passes ``parse_gbnf``, or
raises one of the package's typed errors. Nothing else ever leaves it."""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grammar import SchemaError, convert, parse_gbnf

EXAMPLES = int(os.environ.get("SLUICE_HYPOTHESIS_EXAMPLES", "300"))

KEYWORDS = ["type", "properties", "required", "additionalProperties", "patternProperties",
            "items", "prefixItems", "additionalItems", "minItems", "maxItems", "minLength",
            "maxLength", "pattern", "format", "minimum", "maximum", "exclusiveMinimum",
            "exclusiveMaximum", "enum", "const", "anyOf", "oneOf", "allOf", "not", "$ref",
            "$defs", "definitions", "$anchor", "id", "$id", "minProperties", "maxProperties",
            "uniqueItems", "multipleOf", "dependencies", "title", "x-extra", "$schema"]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**20), 10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["string", "integer", "number", "object", "array", "boolean", "null",
                     "^[a-z]+$", "(a+)+", "^$|(^x$)", "a{2}{3}", "[", "#/$defs/a", "#a", "#",
                     "date-time", "uri", "hostname", "iri", "http://json-schema.org/draft-04/schema#",
                     "http://json-schema.org/draft-07/schema#", "a", ""]),
    st.text(max_size=6))


def _schemas(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    values = st.one_of(SCALARS, children, st.lists(st.one_of(SCALARS, children), max_size=3),
                       st.dictionaries(st.sampled_from(["a", "b", "c", "^x", "[a-z]+"]),
                                       st.one_of(children, SCALARS), max_size=3))
    return st.dictionaries(st.sampled_from(KEYWORDS), values, max_size=5)


SCHEMAS = st.recursive(st.one_of(st.booleans(), st.just({})), _schemas, max_leaves=25)


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(SCHEMAS, st.booleans())
def test_the_converter_returns_a_checked_grammar_or_a_typed_error(schema: Any,
                                                                  strict: bool) -> None:
    try:
        result = convert(schema, strict=strict)
    except SchemaError:
        return
    parse_gbnf(result.gbnf)
