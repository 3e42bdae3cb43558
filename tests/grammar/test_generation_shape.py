"""The generation shape, the converter's default: a plain schema leads the model to the object
it describes. Objects without ``additionalProperties`` are closed and take their members in
declared order; strings without ``maxLength`` are bounded; numbers stay finite.

The first table is the accept/reject data of llama.cpp's own converter tests
(``tests/test-grammar-integration.cpp``, ``test_json_schema``): they encode the same
generation shape, and the grammar here must agree with every one of them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from grammar import Recognizer, convert, parse_gbnf, validate
from grammar.scalars import DEFAULT_MAX_LENGTH

_STREET = {"number": {"type": "number"}, "street_name": {"type": "string"},
           "street_type": {"enum": ["Street", "Avenue", "Boulevard"]}}
_PRODUCT = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "productId": {"type": "integer"}, "productName": {"type": "string"},
        "price": {"type": "number", "exclusiveMinimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                 "uniqueItems": True},
        "dimensions": {"type": "object", "properties": {
            "length": {"type": "number"}, "width": {"type": "number"},
            "height": {"type": "number"}}, "required": ["length", "width", "height"]}},
    "required": ["productId", "productName", "price"]}

# (name, schema, texts the grammar admits, texts it refuses)
LLAMA_CPP_CASES: list[tuple[str, Any, list[str], list[str]]] = [
    ("empty schema (object)", {}, ['{}', '{"foo": "bar"}'], ['', '[]', 'null', '""', 'true']),
    ("object properties", {"type": "object", "properties": _STREET},
     ['{ "number": 1600, "street_name": "Pennsylvania", "street_type":"Avenue"}',
      '{ "street_name": "Pennsylvania" }', '{ "number": 1600, "street_name": "Pennsylvania" }',
      '{}', '{ "number": 1600, "street_name": "Pennsylvania", "street_type": "Avenue" }'],
     ['{ "number": "1600", "street_name": "Pennsylvania", "street_type":"Avenue"}',
      '{ "street_name": "Pennsylvania", "number": 1600 }',
      '{ "number": 1600, "street_name": "Pennsylvania", "street_type":"Avenue", '
      '"direction":"NW"}']),
    ("additional properties can't override other properties",
     {"properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
      "additionalProperties": True},
     ['{"a": 42}', '{"c": ""}', '{"a": 42, "c": ""}', '{"a_": ""}'],
     ['', '{"a": ""}', '{"a": "", "b": ""}']),
    ("object properties, additionalProperties: true",
     {"type": "object", "properties": _STREET, "additionalProperties": True},
     ['{}', '{"number":1600,"street_name":"Pennsylvania","street_type":"Avenue"}',
      '{ "street_name": "Pennsylvania" }', '{ "number": 1600, "street_name": "Pennsylvania" }',
      '{ "number": 1600, "street_name": "Pennsylvania", "street_type":"Avenue", '
      '"direction":"NW"}',
      '{ "number": 1600, "street_name": "Pennsylvania", "street_type": "Avenue" }'],
     ['{ "number": "1600", "street_name": "Pennsylvania", "street_type":"Avenue"}',
      '{ "street_name": "Pennsylvania", "number": 1600, "street_type":"Avenue"}']),
    ("additionalProperties: false",
     {"type": "object", "properties": _STREET, "additionalProperties": False},
     ['{ "street_name": "Pennsylvania" }', '{ "number": 1600, "street_type":"Avenue"}',
      '{ "number": 1600, "street_name": "Pennsylvania" }',
      '{ "number": 1600, "street_name": "Pennsylvania", "street_type":"Avenue"}',
      '{ "number": 1600, "street_name": "Pennsylvania", "street_type": "Avenue" }'],
     ['{ "street_type": "Avenue", "number": 1600 }',
      '{ "number": 1600, "street_name": "Pennsylvania", "street_type": "Avenue", '
      '"direction": "NW" }']),
    ("required + optional props each in original order",
     {"properties": {"b": {"type": "string"}, "a": {"type": "string"},
                     "d": {"type": "string"}, "c": {"type": "string"}},
      "required": ["a", "b"], "additionalProperties": False},
     ['{"b": "foo", "a": "bar"}', '{"b":"foo","a":"bar","d":"qux"}',
      '{"b":"foo", "a":"bar", "d":"qux", "c":"baz"}'],
     ['{"a": "foo", "b": "bar"}', '{"b": "bar"}', '{"a": "foo", "c": "baz"}',
      '{"a":"foo", "b":"bar", "c":"baz", "d":"qux"}']),
    ("required props", _PRODUCT,
     ['{"productId": 1, "productName": "A green door", "price": 12.50}',
      '{"productId": 1, "productName": "A green door", "price": 12.50, '
      '"tags": ["home", "green"]}',
      '{"productId": 1, "productName": "A green door", "price": 12.50, '
      '"tags": ["home", "green"], "dimensions": {"length": 785, "width": 250.5, '
      '"height": -0.359}}'],
     ['{}', '{"productName": "A green door", "price": 12.50, "productId": 1}',
      '{"productId": 1, "productName": "A green door"}',
      '{"productName": "A green door", "price": 12.50}',
      '{"productId": 1, "productName": "A green door", "price": 12.50, "tags": []}',
      '{"productId": 1, "productName": "A green door", "price": 12.50, "dimensions": '
      '{"length": 785, "width": 250.5, "height": -0.359}, "tags": ["home", "green"]}']),
]


@pytest.mark.parametrize(("name", "schema", "good", "bad"), LLAMA_CPP_CASES,
                         ids=[c[0] for c in LLAMA_CPP_CASES])
def test_llama_cpp_generation_cases(name: str, schema: Any, good: list[str],
                                    bad: list[str]) -> None:
    recognizer = Recognizer(parse_gbnf(convert(schema).gbnf))
    for text in good:
        assert recognizer.accepts(text), f"should admit: {text}"
        assert validate(text, schema).valid
    for text in bad:
        assert not recognizer.accepts(text), f"should refuse: {text}"


PERSON = {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer"}, "city": {"type": "string"},
    "email": {"type": "string"}}, "required": ["name", "age"]}


def test_a_plain_schema_admits_only_declared_members_in_declared_order_once() -> None:
    conv = convert(PERSON)
    r = Recognizer(parse_gbnf(conv.gbnf))
    assert r.accepts('{"name": "Jane Doe", "age": 42, "city": "Lyon", "email": "j@x.org"}')
    assert r.accepts('{"name": "Jane Doe", "age": 42, "email": "j@x.org"}')  # city skipped
    assert not r.accepts('{"name": "Jane", "age": 42, "email_address": "j@x.org"}')
    assert not r.accepts('{"age": 42, "name": "Jane"}')
    assert not r.accepts('{"name": "Jane", "name": "Jo", "age": 42}')
    assert not r.accepts('{"name": "Jane", "age": 42, "age": 43}')
    assert "/additionalProperties (absent: closed, the generation default)" in conv.enforced
    # the prefix a model is in after {"name": "Jane", "age": 42 can only go on with a
    # declared member or close: no invented key can start
    assert r.longest_prefix('{"name": "J", "age": 4, "phone": "1"}') == len('{"name": "J", "age": 4, "')


def test_the_spec_shape_is_explicit_and_reported() -> None:
    conv = convert(PERSON, spec=True)
    r = Recognizer(parse_gbnf(conv.gbnf))
    assert r.accepts('{"age": 42, "phone": "1", "name": "Jane"}')
    assert "/additionalProperties (absent: open)" in conv.enforced
    assert not any("generation default" in e for e in conv.enforced)


def test_asked_for_extras_are_kept_and_never_repeat_a_declared_name() -> None:
    schema = {**PERSON, "additionalProperties": {"type": "integer"}}
    r = Recognizer(parse_gbnf(convert(schema).gbnf))
    assert r.accepts('{"name": "a", "age": 1, "score": 3}')
    assert not r.accepts('{"name": "a", "age": 1, "name": 3}')
    assert not r.accepts('{"name": "a", "age": 1, "score": "x"}')


def test_prop_order_comes_first_and_required_members_keep_their_place() -> None:
    r = Recognizer(parse_gbnf(convert(PERSON, prop_order=["email"]).gbnf))
    assert r.accepts('{"email": "e", "name": "a", "age": 1}')
    assert r.accepts('{"name": "a", "age": 1}')
    assert not r.accepts('{"name": "a", "age": 1, "email": "e"}')


def test_member_counts_are_enforced_in_declared_order() -> None:
    schema = {"type": "object", "properties": {k: {"type": "integer"} for k in "abcd"},
              "minProperties": 2, "maxProperties": 3}
    conv = convert(schema)
    assert "/minProperties" in conv.enforced
    assert "/maxProperties" in conv.enforced
    r = Recognizer(parse_gbnf(conv.gbnf))
    for value in ({"a": 1, "c": 2}, {"b": 1, "c": 2, "d": 3}, {"a": 1, "d": 1}):
        assert r.accepts(json.dumps(value))
    for value in ({}, {"b": 1}, {"a": 1, "b": 2, "c": 3, "d": 4}):
        assert not r.accepts(json.dumps(value))
    required = {**schema, "required": ["c"], "minProperties": 3}
    r = Recognizer(parse_gbnf(convert(required).gbnf))
    assert r.accepts('{"a": 1, "b": 2, "c": 3}')
    assert r.accepts('{"b": 1, "c": 2, "d": 3}')
    assert not r.accepts('{"a": 1, "b": 2, "d": 3}')
    assert not r.accepts('{"c": 1, "d": 2}')


def test_strings_without_max_length_are_bounded_and_reported() -> None:
    conv = convert({"type": "object", "properties": {"bio": {"type": "string"}}})
    assert f"/properties/bio/maxLength (absent: {DEFAULT_MAX_LENGTH}, the generation default)" \
        in conv.enforced
    r = Recognizer(parse_gbnf(conv.gbnf))
    assert r.accepts(json.dumps({"bio": "x" * DEFAULT_MAX_LENGTH}))
    assert not r.accepts(json.dumps({"bio": "x" * (DEFAULT_MAX_LENGTH + 1)}))
    spec = Recognizer(parse_gbnf(convert({"type": "string"}, spec=True).gbnf))
    assert spec.accepts(json.dumps("x" * (DEFAULT_MAX_LENGTH + 1)))
    # a caller's own bound wins, either way
    long = Recognizer(parse_gbnf(convert({"type": "string", "maxLength": 9000}).gbnf))
    assert long.accepts(json.dumps("x" * 9000))


def test_numbers_the_grammar_admits_are_finite() -> None:
    r = Recognizer(parse_gbnf(convert({"type": "number", "multipleOf": 0.5}, spec=True).gbnf))
    assert r.accepts("1.5e99")
    assert r.accepts("-2E-12")
    assert not r.accepts("9e9999")
    assert not r.accepts("1e309")


def test_nested_objects_and_arrays_close_too() -> None:
    schema = {"type": "array", "items": {"type": "object", "properties": {
        "name": {"type": "string"}, "city": {"type": "string"}, "age": {"type": "integer"}}}}
    r = Recognizer(parse_gbnf(convert(schema).gbnf))
    assert r.accepts('[{"name": "a", "city": "b", "age": 1}, {"name": "c"}]')
    assert not r.accepts('[{"name": "a", "city": "b", "city_fax_1": "x"}]')


def test_validation_gives_a_verdict_where_it_cannot_check() -> None:
    """9e9999 is JSON that json.loads reads as inf; multipleOf then raised OverflowError out of
    the validation (after the compute, or out of a fan-in task: the process ended)."""
    result = validate("9e9999", {"type": "number", "multipleOf": 0.5})
    assert not result.valid
    assert "could not be checked" in result.errors[0].message


def test_plain_name_anchors_resolve_only_as_the_schemas_draft_names_them() -> None:
    from grammar import InvalidSchemaError

    with pytest.raises(InvalidSchemaError, match="#n"):  # 2020-12 knows no id anchors
        convert({"$ref": "#n", "$defs": {"n": {"id": "#n", "const": 1}}})
    for schema in ({"$ref": "#n", "$defs": {"n": {"$anchor": "n", "const": 1}}},
                   {"$schema": "http://json-schema.org/draft-07/schema#", "$ref": "#/definitions/m",
                    "definitions": {"m": {"$ref": "#n"}, "n": {"$id": "#n", "const": 1}}},
                   {"$schema": "http://json-schema.org/draft-04/schema#", "allOf": [{"$ref": "#n"}],
                    "definitions": {"n": {"id": "#n", "enum": [1]}}}):
        r = Recognizer(parse_gbnf(convert(schema).gbnf))
        assert r.accepts("1")
        assert validate("1", schema).valid
        assert not validate("2", schema).valid
