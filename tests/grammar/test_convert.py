"""Converter behaviour beyond the case files: errors, reports, strict mode, limits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from grammar import (
    InvalidSchemaError,
    UnsupportedSchemaError,
    accepts,
    convert,
    parse_gbnf,
    validate,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("schema", "pointer"),
    [
        ({"type": 123}, "/type"),
        ({"type": "hiccup"}, "/type"),
        ({"properties": {"a": {"minLength": -1}}}, "/properties/a/minLength"),
        ({"required": "a"}, "/required"),
    ],
)
def test_invalid_schemas_name_the_pointer(schema: object, pointer: str) -> None:
    with pytest.raises(InvalidSchemaError) as info:
        convert(schema)
    assert info.value.pointer == pointer


@pytest.mark.parametrize(
    ("schema", "pointer", "needle"),
    [
        ({"type": "string", "pattern": "(?<=a)b"}, "/pattern", "look-around"),
        ({"properties": {"x": {"type": "string", "pattern": "(a)\\1"}}}, "/properties/x/pattern",
         "back-references"),
        ({"$ref": "https://example.com/schema.json"}, "/$ref", "remote $ref"),
        ({"type": "integer", "minimum": 5, "maximum": 4}, "", "no integer"),
        (False, "", "admits no value"),
    ],
)
def test_unsupported_schemas_name_the_pointer(schema: object, pointer: str, needle: str) -> None:
    with pytest.raises(UnsupportedSchemaError) as info:
        convert(schema)
    assert info.value.pointer == pointer
    assert needle in str(info.value)


def test_remote_ref_allowed_when_its_document_is_given() -> None:
    remote = {"$defs": {"id": {"type": "integer", "minimum": 1}}}
    result = convert({"$ref": "https://example.com/s.json#/$defs/id"},
                     remote_refs={"https://example.com/s.json": remote})
    assert accepts(result.gbnf, "7")
    assert not accepts(result.gbnf, "0")


def test_reports_what_the_grammar_cannot_enforce() -> None:
    schema = {"type": "object", "properties": {
        "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        "price": {"type": "number", "minimum": 0, "multipleOf": 0.01},
        "code": {"type": "string", "format": "ipv6"},
        "note": {"type": "string", "x-custom": 1},
        "link": {"type": "string", "format": "iri"},
    }, "not": {"required": ["tags"]}, "title": "an annotation"}
    result = convert(schema)
    assert set(result.validated_only) == {
        "/properties/tags/uniqueItems", "/properties/price/multipleOf",
        "/properties/code/format", "/not"}
    assert "/properties/price/minimum" in result.enforced
    assert "/properties/note/x-custom" in result.ignored
    assert result.unchecked == ("/properties/link/format",)
    assert "/properties/tags/items" in result.enforced
    with pytest.raises(UnsupportedSchemaError) as info:
        convert(schema, grammar_only=True)
    assert info.value.pointer in {"/not", "/properties/tags/uniqueItems"}


def test_validation_catches_what_the_grammar_leaves_open() -> None:
    schema = {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}
    gbnf = convert(schema).gbnf
    assert accepts(gbnf, "[1, 1]")
    result = validate("[1, 1]", schema)
    assert not result.valid
    assert result.errors[0].pointer == ""
    assert "non-unique" in result.errors[0].message


def test_validate_lists_each_violation_with_its_pointer() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"},
                                               "b": {"type": "array", "items": {"type": "string"}}}}
    result = validate('{"a": "x", "b": ["ok", 3]}', schema)
    assert [(e.pointer, e.message) for e in result.errors] == [
        ("/a", "'x' is not of type 'integer'"), ("/b/1", "3 is not of type 'string'")]
    assert not validate("{oops", schema).valid


def test_prop_order_puts_properties_first() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
              "required": ["a", "b"]}
    gbnf = convert(schema, prop_order=["b"]).gbnf
    assert accepts(gbnf, '{"b": 1, "a": 2}')
    assert not accepts(gbnf, '{"a": 2, "b": 1}')


@pytest.mark.parametrize("bound", [2000, 2001, 5000, 9997])
def test_bounds_beyond_llama_cpp_cap_still_parse(bound: int) -> None:
    for schema in ({"type": "string", "maxLength": bound},
                   {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": bound},
                   {"type": "string", "minLength": bound, "maxLength": bound + 3}):
        gbnf = convert(schema).gbnf
        parse_gbnf(gbnf)  # the same checks as llama.cpp's parser, repetition cap included
    assert accepts(convert({"type": "string", "maxLength": bound}).gbnf, '"' + "x" * bound + '"')
    assert not accepts(convert({"type": "string", "maxLength": bound}).gbnf,
                       '"' + "x" * (bound + 1) + '"')


def test_whitespace_between_tokens_is_bounded() -> None:
    compact = convert({"type": "array", "items": {"type": "integer"}}).gbnf
    assert accepts(compact, "[1, 2]")
    assert accepts(compact, "[1,2]")
    assert not accepts(compact, "[1,\n  2]")  # the generation shape: one space at most
    assert not accepts(compact, "[1,  2]")
    gbnf = convert({"type": "array", "items": {"type": "integer"}}, spec=True).gbnf
    assert accepts(gbnf, "[1,\n  2]")
    assert not accepts(gbnf, "[1,\n\n2]")
    assert not accepts(gbnf, "[1," + " " * 2 + "2]")
    assert not accepts(gbnf, "[1,\n" + " " * 21 + "2]")


def test_dotall_controls_dot() -> None:
    schema = {"type": "string", "pattern": "^a.b$"}
    assert not accepts(convert(schema).gbnf, '"a\\nb"')
    assert accepts(convert(schema, dotall=True).gbnf, '"a\\nb"')


def test_unanchored_pattern_matches_anywhere() -> None:
    gbnf = convert({"type": "string", "pattern": "[0-9]{3}"}).gbnf
    assert accepts(gbnf, '"abc 123 def"')
    assert not accepts(gbnf, '"abc 12 def"')


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "grammar", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_cli_convert_check_validate(tmp_path: Path) -> None:
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"n": {"type": "integer"}},
                                  "required": ["n"], "uniqueItems": True}))
    out = run_cli("convert", str(schema))
    assert out.returncode == 0
    assert out.stdout.startswith("root ::= ")
    gbnf = tmp_path / "g.gbnf"
    gbnf.write_text(out.stdout)
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text('{"n": 5}')
    bad.write_text('{"n": "5"}')
    assert run_cli("check", str(gbnf), str(good)).returncode == 0
    assert run_cli("check", str(gbnf), str(bad)).returncode == 1
    assert run_cli("validate", str(schema), str(good)).returncode == 0
    failed = run_cli("validate", str(schema), str(bad))
    assert failed.returncode == 1
    assert "/n: '5' is not of type 'integer'" in failed.stdout


def test_cli_errors_exit_2(tmp_path: Path) -> None:
    schema = tmp_path / "s.json"
    schema.write_text('{"type": "hiccup"}')
    out = run_cli("convert", str(schema))
    assert out.returncode == 2
    assert "/type" in out.stderr
    strict = tmp_path / "strict.json"
    strict.write_text('{"type": "array", "uniqueItems": true}')
    assert run_cli("convert", str(strict), "--grammar-only").returncode == 2
    assert run_cli("convert", str(strict)).returncode == 0
    grammar = tmp_path / "g.gbnf"
    grammar.write_text('root ::= "a" missing')
    text = tmp_path / "t.txt"
    text.write_text("a")
    out = run_cli("check", str(grammar), str(text))
    assert out.returncode == 2
    assert "line 1, column 14" in out.stderr


@pytest.mark.parametrize(("pattern", "good", "bad"), [
    (r"^(?:[A-Za-z0-9+/]{4})*$", ["", "QUJD", "QUJDRAxx"], ["QUJ", "QUJDR", "QU=D"]),
    (r"^(a{2}){3}$", ["aaaaaa"], ["aaaa", "aaaaaaaa"]),
    (r"^[a-z]{2}{3}$", ["abcdef"], ["abcde", "abcdefg"]),
])
def test_stacked_quantifiers_become_nested_rules_that_pass_the_gbnf_check(
        pattern: str, good: list[str], bad: list[str]) -> None:
    gbnf = convert({"type": "string", "pattern": pattern}).gbnf
    parse_gbnf(gbnf)  # every converter output passes the same check as a user's grammar
    for text in good:
        assert accepts(gbnf, json.dumps(text)), text
    for text in bad:
        assert not accepts(gbnf, json.dumps(text)), text


def _nested(depth: int) -> dict[str, object]:
    schema: dict[str, object] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


@pytest.mark.parametrize("schema", [
    _nested(400),
    {"const": json.loads("[" * 500 + "]" * 500)},
    {"$defs": {f"d{i}": {"type": "array", "items": {"$ref": f"#/$defs/d{i + 1}"}}
               for i in range(1500)} | {"d1500": {"type": "integer"}},
     "$ref": "#/$defs/d0"},
], ids=["nested-objects", "deep-const", "ref-chain"])
def test_deep_or_long_schemas_are_typed_refusals(schema: object) -> None:
    """Nothing but the package's errors leaves the converter (it once raised RecursionError)."""
    with pytest.raises(UnsupportedSchemaError) as info:
        convert(schema)
    assert "deep" in str(info.value) or "nest" in str(info.value)


def test_reasonably_deep_schemas_convert() -> None:
    gbnf = convert(_nested(30)).gbnf
    parse_gbnf(gbnf)
    assert accepts(gbnf, '{"a": ' * 30 + '"x"' + "}" * 30)


def test_strict_closes_objects_and_grammar_only_refuses_what_validation_checks() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    default = convert(schema)
    assert not accepts(default.gbnf, '{"a": 1, "b": [true]}')
    assert accepts(default.gbnf, '{"a": 1}')
    assert "/additionalProperties (absent: closed, the generation default)" in default.enforced
    open_ = convert(schema, spec=True)
    assert accepts(open_.gbnf, '{"a": 1, "b": [true]}')
    assert "/additionalProperties (absent: open)" in open_.enforced
    closed = convert(schema, spec=True, strict=True)
    assert not accepts(closed.gbnf, '{"a": 1, "b": [true]}')
    assert accepts(closed.gbnf, '{"a": 1}')
    assert "/additionalProperties (absent: closed, strict)" in closed.enforced
    # strict does not refuse keywords; grammar_only does
    unique = {**schema, "properties": {"a": {"type": "array", "uniqueItems": True}}}
    assert convert(unique, strict=True).validated_only == ("/properties/a/uniqueItems",)
    with pytest.raises(UnsupportedSchemaError):
        convert(unique, grammar_only=True)


def test_cli_strict_closes_objects(tmp_path: Path) -> None:
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"a": {"type": "integer"}}}))
    extra = tmp_path / "extra.json"
    extra.write_text('{"a": 1, "b": 2}')
    for flags, code in ((("--spec",), 0), ((), 1), (("--spec", "--strict"), 1)):
        out = run_cli("convert", str(schema), *flags)
        gbnf = tmp_path / "g.gbnf"
        gbnf.write_text(out.stdout)
        assert run_cli("check", str(gbnf), str(extra)).returncode == code


def test_a_format_nobody_checks_is_reported_and_never_passes_validation() -> None:
    schema = {"type": "object", "properties": {"home": {"type": "string", "format": "iri"},
                                               "n": {"type": "integer", "format": "int32"}}}
    conversion = convert(schema)
    assert conversion.unchecked == ("/properties/home/format",)
    result = validate('{"home": "https://example.com/"}', schema)
    assert not result.valid
    assert result.errors[0].pointer == "/home"
    assert "cannot be checked" in result.errors[0].message
    assert validate('{"n": 5}', schema).valid  # OpenAPI's int32 is checked
    assert not validate('{"n": 5000000000}', schema).valid
    with pytest.raises(UnsupportedSchemaError):
        convert(schema, grammar_only=True)


def test_an_oversized_grammar_falls_back_to_declared_order_and_closed_objects() -> None:
    props = {f"property_number_{i}": {"type": "object", "properties": {
        f"inner_{i}_{j}": {"type": "string"} for j in range(5)}} for i in range(120)}
    schema = {"type": "object", "properties": props}
    conversion = convert(schema, spec=True)
    parse_gbnf(conversion.gbnf)  # within the limit, so it parses
    assert any("over the size limit" in e for e in conversion.enforced)
    sample = json.dumps({"property_number_3": {"inner_3_1": "x"}})
    assert accepts(conversion.gbnf, sample)
    assert validate(sample, schema).valid


def test_every_output_passes_the_gbnf_check() -> None:
    """Patterns the converter once copied into GBNF that its own check refused."""
    for pattern in ["^a+?b*?c??$", "^(?:[A-Za-z0-9+/]{4})*$", "^((a)+)+$", "^(a*)*b$",
                    "^(a|b+)*$", "^(x{1,3}){2,}$", "^$|(^[a-z]+$)", "(^a)|(b$)", "^(?:a?)+$"]:
        parse_gbnf(convert({"type": "string", "pattern": pattern}).gbnf)


def test_property_names_never_take_a_shared_rules_name() -> None:
    """Rule names keep the end of their schema path: a property named like a shared rule
    (string, null, number, ...) must not become that rule."""
    inner = {"type": "object", "properties": {
        "string": {"enum": ["x"]}, "null": {"const": 5}, "number": {"type": "string"},
        "space": {"type": "boolean"}, "value": {"type": "integer"}}}
    schema = {"type": "object", "properties": {"aaaaaaaaaaaaaaaa": inner, "z": {"type": "string"},
                                               "n": {"type": "null"}, "q": {"type": "number"}}}
    gbnf = convert(schema, spec=True).gbnf  # any order: z first
    parse_gbnf(gbnf)
    assert accepts(gbnf, json.dumps({"z": "hello", "n": None, "q": 1.5, "aaaaaaaaaaaaaaaa": {
        "string": "x", "null": 5, "number": "s", "space": True, "value": 3}}))
    assert not accepts(gbnf, json.dumps({"z": "x", "aaaaaaaaaaaaaaaa": {"string": "y"}}))


def test_counts_past_llama_cpps_repetition_cap_are_exact_and_never_nest() -> None:
    """Counts over 2000 are blocks of 2000 and a chain of rules: exact at every boundary, and
    never one group inside another (``maxItems: 202002`` used to nest 101 groups deep, past
    the GBNF check; a hypothesis run found it)."""
    gbnf = convert({"type": "string", "minLength": 1999, "maxLength": 4001}).gbnf
    parse_gbnf(gbnf)
    for n, ok in [(1998, False), (1999, True), (2000, True), (2001, True), (3999, True),
                  (4000, True), (4001, True), (4002, False)]:
        assert accepts(gbnf, json.dumps("a" * n)) is ok, n
    gbnf = convert({"type": "array", "items": {"type": "null"}, "minItems": 2001,
                    "maxItems": 2003}).gbnf
    for n, ok in [(2000, False), (2001, True), (2003, True), (2004, False)]:
        assert accepts(gbnf, json.dumps([None] * n)) is ok, n
    for schema in [{"type": "array", "maxItems": 10000}, {"type": "string", "maxLength": 9999},
                   {"type": "string", "pattern": "^a{0,9999}$"}]:
        conversion = convert(schema)
        assert not conversion.validated_only
        parse_gbnf(conversion.gbnf)
    parse_gbnf(convert({"type": "array", "maxItems": 202002}).gbnf)


def test_counts_no_model_output_reaches_are_validated_or_refused() -> None:
    """An upper bound over 10,000 (``maxLength: 2147483647`` is common) is left to
    validation; a lower one, or such a count in a pattern, is a typed refusal, never a
    RecursionError or a grammar llama.cpp would expand into millions of rules."""
    for key, extra in [("maxLength", {"type": "string"}), ("maxItems", {"type": "array"}),
                       ("maxProperties", {"type": "object"})]:
        conversion = convert({**extra, key: 2**31 - 1})
        assert conversion.validated_only == (f"/{key}",)
        parse_gbnf(conversion.gbnf)
    assert accepts(convert({"type": "string", "maxLength": 10**20}).gbnf, '"abc"')
    assert not validate(json.dumps("a" * 11), {"type": "string", "maxLength": 10}).valid
    conversion = convert({"type": "string", "pattern": "^[a-z]{1,65535}$"})
    assert conversion.validated_only == ("/pattern",)
    assert accepts(conversion.gbnf, '"abc"')
    assert not accepts(conversion.gbnf, '"ABC"')
    assert not validate(json.dumps("a" * 65536), {"pattern": "^[a-z]{1,65535}$"}).valid
    parse_gbnf(convert({"type": "string", "pattern": "^a{0," + "9" * 5000 + "}$"}).gbnf)
    for schema, pointer in [({"type": "string", "minLength": 10**7}, "/minLength"),
                            ({"type": "array", "minItems": 10**6}, "/minItems"),
                            ({"type": "string", "pattern": "^a{20000}$"}, "/pattern"),
                            ({"type": "string", "pattern": "^a{" + "9" * 5000 + ",}$"},
                             "/pattern"),
                            ({"type": "string", "pattern": "^(a{2,5000}){2,5000}$"},
                             "/pattern")]:
        with pytest.raises(UnsupportedSchemaError) as info:
            convert(schema)
        assert info.value.pointer == pointer


@pytest.mark.parametrize("schema", [
    {"$ref": "#"},
    {"anyOf": [{"$ref": "#"}, {"type": "null"}]},
    {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
])
def test_a_ref_cycle_before_any_value_is_refused_not_left_recursive(schema: dict) -> None:
    """Found by the hypothesis test: ``{"$ref": "#"}`` became ``ref ::= ref``, which the GBNF
    check (and llama.cpp) refuses; now a typed refusal naming the $ref."""
    with pytest.raises(UnsupportedSchemaError, match="refers to itself"):
        convert(schema)


def test_a_ref_cycle_through_a_container_is_recursion_not_an_error() -> None:
    schema = {"anyOf": [{"type": "array", "items": {"$ref": "#"}}, {"type": "null"}]}
    gbnf = convert(schema).gbnf
    parse_gbnf(gbnf)
    assert accepts(gbnf, "[[null], [], null]")
    assert not accepts(gbnf, "[1]")


def test_an_enum_of_del_takes_it_raw_or_escaped() -> None:
    """json.dumps escapes DEL (U+007F) as \\u007f; JSON allows it raw, as json.dumps with
    ensure_ascii=False writes it (found by the property test)."""
    gbnf = convert({"enum": ["\x7f", "a\x7fb"]}).gbnf
    for text in ['"\x7f"', '"\\u007f"', '"\\u007F"', '"a\x7fb"', '"a\\u007fb"']:
        assert accepts(gbnf, text), text
    assert not accepts(gbnf, '"\\u007e"')
