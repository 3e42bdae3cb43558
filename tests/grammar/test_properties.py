"""Property tests: the converter's grammars against the schemas' own validation.

1. Every instance generated for a schema, written as JSON (properties in schema
   order), is accepted by the schema's grammar. (hypothesis-jsonschema 0.23.1 does
   not run with current hypothesis, so instances come from ``instances`` below,
   which knows the schema family generated here.)
2. Every sentence sampled at random from a schema's grammar is valid JSON that
   validates against the schema: the grammar never accepts more than the schema.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grammar import Recognizer, convert, parse_gbnf, validate
from tests.grammar.sampler import SentenceSampler

EXAMPLES = int(os.environ.get("SLUICE_HYPOTHESIS_EXAMPLES", "60"))

scalars = st.one_of(
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.builds(lambda lo, span: {"type": "integer", "minimum": lo, "maximum": lo + span},
              st.integers(-10**6, 10**6), st.integers(0, 10**5)),
    st.builds(lambda lo: {"type": "integer", "exclusiveMinimum": lo}, st.integers(-1000, 1000)),
    st.builds(lambda lo, span: {"type": "string", "minLength": lo, "maxLength": lo + span},
              st.integers(0, 5), st.integers(0, 8)),
    st.just({"type": "string", "pattern": "^[a-c]{2,4}(-[0-9]+)?$"}),
    st.just({"type": "string", "format": "date"}),
    st.just({"type": "number"}),
    st.lists(st.one_of(st.text(max_size=5), st.integers(-50, 50), st.booleans()), min_size=1,
             max_size=4, unique_by=lambda v: json.dumps(v)).map(lambda vs: {"enum": vs}),
)
names = st.text(alphabet="abcdefgh_", min_size=1, max_size=6)


def objects(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    def build(props: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
        required = data.draw(st.lists(st.sampled_from(sorted(props)), unique=True)) if props else []
        return {"type": "object", "properties": props, "required": required,
                "additionalProperties": False}

    return st.builds(build, st.dictionaries(names, children, max_size=4), st.data())


def arrays(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(lambda item, lo, span: {"type": "array", "items": item, "minItems": lo,
                                             "maxItems": lo + span},
                     children, st.integers(0, 2), st.integers(0, 3))


schemas = st.recursive(scalars, lambda c: st.one_of(objects(c), arrays(c)), max_leaves=8)


def instances(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values valid for a schema of the family above."""
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    t = schema["type"]
    if t == "boolean":
        return st.booleans()
    if t == "null":
        return st.none()
    if t == "number":
        return st.one_of(st.integers(-10**6, 10**6),
                         st.floats(-1e6, 1e6, allow_nan=False).map(lambda f: round(f, 6)))
    if t == "integer":
        lo = schema.get("minimum", schema.get("exclusiveMinimum", -10**9) + 1)
        return st.integers(lo, schema.get("maximum", lo + 10**9))
    if t == "string":
        if "pattern" in schema:
            return st.from_regex(r"\A[a-c]{2,4}(-[0-9]+)?\Z")
        if "format" in schema:
            return st.dates().map(lambda d: d.isoformat())
        return st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]),
                       min_size=schema["minLength"], max_size=schema["maxLength"])
    if t == "array":
        return st.lists(instances(schema["items"]), min_size=schema["minItems"],
                        max_size=schema["maxItems"])
    props = schema["properties"]

    def build(present: dict[str, Any]) -> dict[str, Any]:
        return present

    optional = {k: instances(v) for k, v in props.items() if k not in schema["required"]}
    return st.fixed_dictionaries({k: instances(props[k]) for k in schema["required"]},
                                 optional=optional).map(build)


def dump(value: Any, schema: dict[str, Any]) -> str:
    """JSON text with object members in the schema's property order."""
    if isinstance(value, dict):
        order = list(schema.get("properties", {}))
        parts = [f"{json.dumps(k, ensure_ascii=False)}: {dump(value[k], schema['properties'][k])}"
                 for k in order if k in value]
        return "{" + ", ".join(parts) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(dump(v, schema.get("items", {})) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data(), schemas)
def test_generated_instances_are_accepted(data: st.DataObject, schema: dict[str, Any]) -> None:
    recognizer = Recognizer(parse_gbnf(convert(schema).gbnf))
    for _ in range(3):
        instance = data.draw(instances(schema))
        assert validate(json.dumps(instance), schema).valid
        text = dump(instance, schema)
        assert recognizer.accepts(text), (schema, text)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(schemas, st.integers(0, 2**32))
def test_sentences_of_the_grammar_validate(schema: dict[str, Any], seed: int) -> None:
    grammar = parse_gbnf(convert(schema).gbnf)
    sampler = SentenceSampler(grammar, random.Random(seed))
    for _ in range(5):
        text = sampler.sentence()
        result = validate(text, schema)
        assert result.valid, (schema, text, result.errors)
