"""Schemas in the shapes real ones take (SchemaStore, Kubernetes, OpenAPI, MCP tools, draft-04
to 2020-12), each with valid instances the grammar must admit and invalid ones it must stop,
written as ``json.dumps`` writes them (a space after ``,`` and ``:``, non-ASCII escaped).

One case per class of the real-world failures the converter had: open objects, property
order, ``patternProperties``, whitespace inside ``const``/``enum``, ``allOf`` annotations,
lazy and stacked quantifiers, anchors inside patterns, plain-name ``$ref``, duplicate enum
members, number bounds, formats, ``minProperties``/``maxProperties``, and the draft-04/06/07
forms (``definitions``, ``id``, tuple ``items``, ``additionalItems``, boolean exclusive bounds,
``dependencies``)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from grammar import Recognizer, convert, parse_gbnf, validate

D4 = "http://json-schema.org/draft-04/schema#"
D6 = "http://json-schema.org/draft-06/schema#"
D7 = "http://json-schema.org/draft-07/schema#"

# (name, schema, valid instances, invalid instances the grammar itself stops)
REAL_WORLD: list[tuple[str, Any, list[Any], list[Any]]] = [
    ("open-object", {"type": "object", "properties": {"name": {"type": "string"}},
                     "required": ["name"]},
     [{"name": "a"}, {"name": "a", "extra": [1, {"x": None}]}, {"z": 1, "name": "b"}],
     [{"extra": 1}, {"name": 3}]),
    ("any-order", {"type": "object", "properties": {
        "a": {"type": "integer"}, "b": {"type": "string"}, "c": {"type": "boolean"}},
        "required": ["a", "c"], "additionalProperties": False},
     [{"c": True, "a": 1}, {"b": "x", "c": False, "a": 2}, {"a": 1, "b": "", "c": True}],
     [{"a": 1}, {"a": 1, "c": True, "d": 1}, {"c": True, "a": "1"}]),
    ("declared-order-many", {"type": "object", "properties": {
        f"p{i}": {"type": "integer"} for i in range(9)}, "required": ["p1", "p7"]},
     [{"p1": 1, "p7": 2}, {"x": 0, "p1": 1, "y": [], "p3": 4, "p7": 2, "p8": 9}],
     [{"p1": 1}, {"p1": 1, "p7": "2"}]),
    ("pattern-properties", {"type": "object", "patternProperties": {
        "^x-": {}, "^[a-z]+$": {"type": "object", "properties": {"url": {
            "type": "string", "format": "uri"}}, "required": ["url"]}},
        "additionalProperties": False},
     [{}, {"x-info": 3, "home": {"url": "https://example.com/"}}],
     [{"Home": {"url": "https://example.com"}}, {"home": {"url": 3}}, {"home": {}}]),
    ("const-object-whitespace", {"type": "object", "properties": {
        "kind": {"const": {"api": "v1", "tags": ["a", "b"]}},
        "mode": {"enum": [{"x": 1}, [1, 2], "caf\u00e9"]}}, "required": ["kind"]},
     [{"kind": {"api": "v1", "tags": ["a", "b"]}}, {"kind": {"api": "v1", "tags": ["a", "b"]},
                                                   "mode": "caf\u00e9"},
      {"kind": {"api": "v1", "tags": ["a", "b"]}, "mode": [1, 2]}],
     [{"kind": {"api": "v2", "tags": ["a", "b"]}}, {"kind": {"api": "v1", "tags": ["a"]}},
      {"kind": {"api": "v1", "tags": ["a", "b"]}, "mode": "cafe"}]),
    ("allof-annotations", {"allOf": [
        {"type": "object", "title": "A", "description": "first", "x-order": 1,
         "properties": {"a": {"type": "string"}}},
        {"title": "B", "description": "second", "x-order": 2, "examples": [{}],
         "properties": {"b": {"type": "integer"}}, "required": ["b"]}]},
     [{"b": 1}, {"a": "x", "b": 2}], [{"a": "x"}, {"b": "2"}]),
    ("allof-required-by-pattern", {"allOf": [
        {"type": "object", "properties": {"a": {"type": "string"}},
         "patternProperties": {"^x-": {"type": "integer"}}, "additionalProperties": False},
        {"required": ["x-id"]}]},
     [{"x-id": 1}, {"a": "s", "x-id": 2, "x-more": 3}], [{"a": "s"}, {"x-id": "1"}]),
    ("lazy-and-stacked-quantifiers", {"type": "object", "properties": {
        "data": {"type": "string", "pattern": "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==)?$"},
        "tag": {"type": "string", "pattern": "^<.+?>$"},
        "word": {"type": "string", "pattern": "^((a|b)+)+$"}}},
     [{"data": "QUJD", "tag": "<b>", "word": "abba"}, {"data": "QUJDRA=="}],
     [{"data": "QUJ"}, {"tag": "<>"}, {"word": "abc"}]),
    ("anchors-inside", {"type": "object", "properties": {
        "v": {"type": "string", "pattern": "^$|(^[0-9]+\\.[0-9]+$)"},
        "w": {"type": "string", "pattern": "^a|b$"}}},
     [{"v": ""}, {"v": "1.25"}, {"w": "ax"}, {"w": "xb"}],
     [{"v": "1."}, {"v": " 1.2"}, {"w": "xa"}]),
    ("pattern-with-lengths", {"type": "object", "properties": {
        "slug": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$", "minLength": 2,
                 "maxLength": 8},
        "code": {"type": "string", "pattern": "^(N/A|[0-9]{2,})$", "maxLength": 4}}},
     [{"slug": "ab_1", "code": "N/A"}, {"slug": "abcdefgh", "code": "1234"}],
     [{"slug": "a"}, {"slug": "abcdefghi"}, {"slug": "1ab"}, {"code": "12345"}, {"code": "1"}]),
    ("anchor-ref-2020", {"$defs": {"port": {"$anchor": "port", "type": "integer",
                                            "minimum": 1, "maximum": 65535}},
                         "type": "array", "items": {"$ref": "#port"}},
     [[80, 443], []], [[0], [70000], ["80"]]),
    ("id-ref-draft04", {"$schema": D4, "id": "http://example.com/root.json",
                        "definitions": {"size": {"id": "#size", "type": "number",
                                                 "minimum": 0, "exclusiveMinimum": True}},
                        "type": "object", "properties": {
                            "w": {"$ref": "#size"},
                            "h": {"$ref": "http://example.com/root.json#/definitions/size"}}},
     [{"w": 1.5, "h": 2}, {}], [{"w": 0}, {"h": -1}]),
    ("duplicate-enum", {"$schema": D7, "enum": ["red", "green", "red"]},
     ["red", "green"], ["blue"]),
    ("number-bounds", {"type": "object", "properties": {
        "ratio": {"type": "number", "minimum": 0, "maximum": 1},
        "temp": {"type": "number", "exclusiveMinimum": -273.15},
        "price": {"type": "number", "exclusiveMinimum": 0, "maximum": 999.99}}},
     [{"ratio": 0.25, "temp": -273.1, "price": 999.99}, {"ratio": 1, "temp": 20},
      {"price": 0.01}],
     [{"ratio": 1.5}, {"ratio": -0.1}, {"temp": -273.15}, {"temp": -300}, {"price": 0},
      {"price": 1000}]),
    ("formats", {"type": "object", "properties": {
        "host": {"type": "string", "format": "hostname"},
        "url": {"type": "string", "format": "uri"},
        "ref": {"type": "string", "format": "uri-reference"}}},
     [{"host": "api.example.com", "url": "https://example.com/a?b=c#d", "ref": "../x/y"},
      {"host": "localhost", "url": "urn:isbn:0451450523", "ref": "#top"}],
     [{"host": "-bad.example"}, {"host": "a..b"}, {"url": "not a uri"}, {"url": "/relative"},
      {"ref": "a b"}]),
    ("min-max-properties", {"type": "object", "additionalProperties": {"type": "string"},
                            "minProperties": 1, "maxProperties": 2},
     [{"a": "x"}, {"a": "x", "b": "y"}], [{}, {"a": "x", "b": "y", "c": "z"}, {"a": 1}]),
    ("min-properties-declared", {"type": "object", "properties": {
        "a": {"type": "integer"}, "b": {"type": "integer"}}, "additionalProperties": False,
        "minProperties": 1},
     [{"a": 1}, {"b": 2, "a": 1}], [{}]),
    ("tuple-items-draft07", {"$schema": D7, "type": "array",
                             "items": [{"type": "string"}, {"type": "integer"}],
                             "additionalItems": False},
     [["a", 1], ["a"], []], [["a", 1, 2], [1]]),
    ("additional-items-draft06", {"$schema": D6, "type": "array",
                                  "items": [{"const": "op"}], "additionalItems": {"type": "number"}},
     [["op", 1, 2.5]], [["op", "x"], ["no"]]),
    ("dependencies-draft04", {"$schema": D4, "type": "object", "properties": {
        "card": {"type": "string"}, "billing": {"type": "string"}},
        "dependencies": {"card": ["billing"]}},
     [{"card": "1", "billing": "x"}, {}], [{"card": 1}]),
    ("kubernetes-like", {"type": "object", "properties": {
        "apiVersion": {"type": "string"}, "kind": {"type": "string", "enum": ["Pod"]},
        "metadata": {"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 63},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}}}},
        "spec": {"type": "object", "properties": {"containers": {"type": "array", "items": {
            "type": "object", "properties": {
                "name": {"type": "string"}, "image": {"type": "string"},
                "ports": {"type": "array", "items": {"type": "object", "properties": {
                    "containerPort": {"type": "integer", "format": "int32"}}}}},
            "required": ["name"]}}}}},
        "required": ["kind"]},
     [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "labels": {"app": "w"}},
       "spec": {"containers": [{"name": "c", "image": "nginx",
                                "ports": [{"containerPort": 80}]}]}},
      {"kind": "Pod", "status": {"phase": "Running"}}],
     [{"kind": "Service"}, {"kind": "Pod", "spec": {"containers": [{"image": "x"}]}}]),
]


@pytest.mark.parametrize(("name", "schema", "valid", "invalid"), REAL_WORLD,
                         ids=[c[0] for c in REAL_WORLD])
def test_real_world_shapes(name: str, schema: Any, valid: list[Any], invalid: list[Any]) -> None:
    """The spec-faithful shape admits every valid instance; both shapes stop the invalid."""
    recognizer = Recognizer(parse_gbnf(convert(schema, spec=True).gbnf))
    generation = Recognizer(parse_gbnf(convert(schema).gbnf))
    for value in valid:
        text = json.dumps(value)
        assert validate(text, schema).valid, f"the case's own instance is invalid: {text}"
        assert recognizer.accepts(text), f"should admit: {text}"
        assert recognizer.accepts(json.dumps(value, ensure_ascii=False, separators=(",", ":")))
    for value in invalid:
        text = json.dumps(value)
        assert not validate(text, schema).valid, f"the case's own instance is valid: {text}"
        assert not recognizer.accepts(text), f"should stop: {text}"
        assert not generation.accepts(text), f"the generation shape should stop: {text}"


def test_what_the_grammar_leaves_to_validation_is_caught_there() -> None:
    schema = {"$schema": D4, "type": "object", "properties": {
        "card": {"type": "string"}, "billing": {"type": "string"}},
        "dependencies": {"card": ["billing"]}}
    conversion = convert(schema)
    assert conversion.validated_only == ("/dependencies",)
    text = json.dumps({"card": "1"})
    assert Recognizer(parse_gbnf(conversion.gbnf)).accepts(text)
    assert not validate(text, schema).valid
