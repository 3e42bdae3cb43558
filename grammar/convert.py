"""JSON Schema to GBNF.

:func:`convert` turns a schema into a grammar that accepts JSON text the
schema allows, and reports for every constraining keyword whether the grammar
enforces it or whether only validation after generation checks it. It never
returns a grammar that silently accepts more than the schema allows:

* enforced by the grammar: ``type``, ``enum``, ``const``, ``anyOf``, ``oneOf``
  (as ``anyOf``), ``allOf`` (merged), ``properties``, ``required``,
  ``additionalProperties``, ``items``, ``prefixItems``, ``minItems``,
  ``maxItems``, ``minLength``, ``maxLength``, integer ``minimum`` /
  ``maximum`` / ``exclusiveMinimum`` / ``exclusiveMaximum`` (exact digit
  ranges), ``pattern``, ``format`` (date, time, date-time, uuid, ipv4, email),
  local ``$ref`` (recursion allowed);
* checked only after generation (reported in ``validated_only``; refused with
  ``strict=True``): ``uniqueItems``, ``multipleOf``, ``not``, number bounds,
  ``oneOf`` exclusivity, ``minProperties`` / ``maxProperties``, ``contains``,
  ``patternProperties``, ``propertyNames``, ``dependentRequired``,
  ``dependentSchemas``, ``if`` / ``then`` / ``else``, ``unevaluated*``, other
  formats, length bounds together with a ``pattern`` or ``format``;
* refused: remote ``$ref`` (unless its document is passed in ``remote_refs``),
  ``false`` schemas, regex features no grammar can express.

Deliberate narrowings (the grammar accepts a subset, never a superset): an
object schema with ``properties`` and no ``additionalProperties`` allows no
extra keys (as llama.cpp's converter); properties come in declared order
(``prop_order`` first); integers have at most 16 digits; whitespace between
tokens is at most one newline and 20 spaces or tabs; strings produced by a
negated character class never contain quotes, backslashes or control characters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from grammar.containers import ContainerRules
from grammar.errors import InvalidSchemaError, SchemaError, UnsupportedSchemaError, escape_pointer
from grammar.gbnf_text import literal, repeat
from grammar.keywords import ALL_TYPES, ANNOTATIONS, STRUCTURAL, TYPE_KEYWORDS, VALIDATED_ONLY
from grammar.merge import constraining, merge
from grammar.primitives import FORMATS, PRIMITIVE_DEPS, PRIMITIVES
from grammar.ranges import int_range
from grammar.regex import pattern_to_gbnf

JSON = Any

@dataclass(frozen=True, slots=True)
class Conversion:
    """A converted schema.

    Attributes:
        gbnf: the grammar (rule ``root``).
        enforced: ``pointer`` + keyword of each keyword the grammar enforces.
        validated_only: keywords the grammar cannot enforce; validation after
            generation checks them.
        ignored: annotation and unknown keywords, which constrain nothing.
    """

    gbnf: str
    enforced: tuple[str, ...]
    validated_only: tuple[str, ...]
    ignored: tuple[str, ...]


def _rule_name(text: str) -> str:
    name = re.sub(r"[^a-zA-Z0-9-]+", "-", text).strip("-")
    return name or "x"


def check_schema(schema: JSON) -> None:
    """Raise :class:`InvalidSchemaError` unless ``schema`` is a valid JSON Schema."""
    if not isinstance(schema, dict | bool):
        raise InvalidSchemaError("a schema must be an object or a boolean", pointer="")
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    error = jsonschema.exceptions.best_match(cls(cls.META_SCHEMA).iter_errors(schema))
    if error is not None:
        pointer = "".join(f"/{escape_pointer(str(p))}" for p in error.absolute_path)
        raise InvalidSchemaError(error.message, pointer=pointer)


@dataclass
class _Converter(ContainerRules):
    root: JSON
    prop_order: Sequence[str]
    dotall: bool
    strict: bool
    remote_refs: Mapping[str, JSON]
    rules: dict[str, str] = field(default_factory=dict)
    enforced: list[str] = field(default_factory=list)
    validated_only: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    refs: dict[str, str] = field(default_factory=dict)

    # --- bookkeeping -------------------------------------------------------
    def add_rule(self, name: str, body: str) -> str:
        name = _rule_name(name)
        candidate, n = name, 1
        while candidate in self.rules and self.rules[candidate] != body:
            n += 1
            candidate = f"{name}-{n}"
        self.rules[candidate] = body
        return candidate

    def primitive(self, name: str) -> str:
        if name not in self.rules:
            self.rules[name] = PRIMITIVES[name]
            for dep in PRIMITIVE_DEPS.get(name, ()):
                self.primitive(dep)
        return name

    def enforce(self, pointer: str, keyword: str) -> None:
        self.enforced.append(f"{pointer}/{keyword}")

    def validate_only(self, pointer: str, keyword: str, why: str = "") -> None:
        where = f"{pointer}/{keyword}"
        if self.strict:
            raise UnsupportedSchemaError(
                f"'{keyword}' cannot be enforced by a grammar{why} (strict mode)",
                pointer=f"{pointer}/{keyword}", keyword=keyword)
        self.validated_only.append(where)

    # --- $ref ----------------------------------------------------------------
    def resolve(self, ref: str, pointer: str) -> JSON:
        base, _, fragment = ref.partition("#")
        if base:
            if base not in self.remote_refs:
                raise UnsupportedSchemaError(
                    f"remote $ref {ref!r} is refused (pass its document explicitly to allow it)",
                    pointer=f"{pointer}/$ref", keyword="$ref")
            doc = self.remote_refs[base]
        else:
            doc = self.root
        node = doc
        if fragment:
            if not fragment.startswith("/"):
                raise UnsupportedSchemaError(f"$ref {ref!r}: only JSON-pointer fragments are "
                                             "supported", pointer=f"{pointer}/$ref", keyword="$ref")
            for raw in fragment[1:].split("/"):
                part = raw.replace("~1", "/").replace("~0", "~")
                if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                    node = node[int(part)]
                elif isinstance(node, dict) and part in node:
                    node = node[part]
                else:
                    raise InvalidSchemaError(f"$ref {ref!r} points nowhere",
                                             pointer=f"{pointer}/$ref")
        return node

    def visit_ref(self, ref: str, pointer: str) -> str:
        if ref not in self.refs:
            name = _rule_name(ref.rpartition("/")[2] or "root-ref")
            target = self.resolve(ref, pointer)
            # Reserve the name first: recursive references then point at it.
            rule = self.add_rule(f"ref-{name}", "")
            self.refs[ref] = rule
            body = self.visit(target, f"{pointer}/$ref", rule + "-body")
            self.rules[rule] = body
            self.enforce(pointer, "$ref")
        return self.refs[ref]

    # --- schemas ------------------------------------------------------------
    def visit(self, schema: JSON, pointer: str, name: str) -> str:
        """A GBNF expression for one JSON value matching ``schema`` (trailing space included)."""
        if schema is True or schema == {}:
            return self.primitive("value")
        if schema is False:
            raise UnsupportedSchemaError("the schema 'false' admits no value", pointer=pointer)
        assert isinstance(schema, dict)
        self._classify_keywords(schema, pointer)
        if "$ref" in schema:
            siblings = {k for k in schema if k not in ANNOTATIONS and k != "$ref"}
            if siblings:
                merged = {"allOf": [{"$ref": schema["$ref"]},
                                    {k: v for k, v in schema.items() if k != "$ref"}]}
                return self.visit_all_of(merged, pointer, name)
            return self.visit_ref(schema["$ref"], pointer)
        if "allOf" in schema:
            return self.visit_all_of(schema, pointer, name)
        if "const" in schema:
            self.enforce(pointer, "const")
            return self.json_literal(schema["const"])
        if "enum" in schema:
            self.enforce(pointer, "enum")
            options = [self.json_literal(v) for v in schema["enum"]]
            return self.add_rule(name, " | ".join(options)) if options else '[^\\x00-\\U0010FFFF]'
        for key in ("anyOf", "oneOf"):
            if key in schema:
                rest = {k: v for k, v in schema.items() if k != key}
                options = []
                for i, sub in enumerate(schema[key]):
                    branch = merge(rest, sub, f"{pointer}/{key}/{i}") if constraining(rest) else sub
                    options.append(self.visit(branch, f"{pointer}/{key}/{i}", f"{name}-{i}"))
                self.enforce(pointer, key)
                if key == "oneOf" and len(options) > 1:
                    self.validate_only(pointer, "oneOf", " beyond anyOf (exactly one branch)")
                return self.add_rule(name, " | ".join(options))
        types = schema.get("type")
        if types is None:
            types = self.infer_types(schema)
            if types is None:
                return self.primitive("value")
        if isinstance(types, list):
            self.enforce(pointer, "type")
            options = [self.visit_type(t, schema, pointer, f"{name}-{t}") for t in types]
            return options[0] if len(options) == 1 else self.add_rule(name, " | ".join(options))
        if "type" in schema:
            self.enforce(pointer, "type")
        return self.visit_type(types, schema, pointer, name)

    def visit_all_of(self, schema: dict[str, JSON], pointer: str, name: str) -> str:
        merged: dict[str, JSON] = {k: v for k, v in schema.items() if k != "allOf"}
        for i, sub in enumerate(schema["allOf"]):
            where = f"{pointer}/allOf/{i}"
            while isinstance(sub, dict) and "$ref" in sub:
                target = self.resolve(sub["$ref"], where)
                if isinstance(target, dict) and "$ref" in target and target["$ref"] == sub["$ref"]:
                    raise UnsupportedSchemaError("allOf: self-referencing $ref", pointer=where)
                rest = {k: v for k, v in sub.items() if k != "$ref"}
                sub = merge(target, rest, where) if isinstance(target, dict) else target
            if isinstance(sub, dict) and "allOf" in sub:
                inner = {k: v for k, v in sub.items() if k != "allOf"}
                for j, s in enumerate(sub["allOf"]):
                    inner = merge(inner, s, f"{where}/allOf/{j}")
                sub = inner
            merged = merge(merged, sub, where)
        self.enforce(pointer, "allOf")
        return self.visit(merged, pointer, name)

    def _classify_keywords(self, schema: dict[str, JSON], pointer: str) -> None:
        for key in schema:
            if key in ANNOTATIONS:
                continue
            if key in VALIDATED_ONLY:
                self.validate_only(pointer, key)
            elif key not in STRUCTURAL and not any(key in kws for kws in TYPE_KEYWORDS.values()):
                self.ignored.append(f"{pointer}/{key}")

    @staticmethod
    def infer_types(schema: dict[str, JSON]) -> str | list[str] | None:
        """Types a schema without ``type`` constrains by its keywords (None: any value).

        Keywords of other types do not restrict a value of a type they do not
        apply to; the grammar keeps to the constrained types, a subset.
        """
        present = [t for t in ALL_TYPES if t != "integer" and TYPE_KEYWORDS[t] & schema.keys()]
        if not present:
            return None
        return present if len(present) > 1 else present[0]

    def visit_type(self, t: str, schema: dict[str, JSON], pointer: str, name: str) -> str:
        match t:
            case "string":
                return self.visit_string(schema, pointer, name)
            case "integer":
                return self.visit_integer(schema, pointer, name)
            case "number":
                for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
                    if key in schema:
                        self.validate_only(pointer, key, " for non-integer numbers")
                return self.primitive("number")
            case "boolean":
                return self.primitive("boolean")
            case "null":
                return self.primitive("null")
            case "array":
                return self.visit_array(schema, pointer, name)
            case "object":
                return self.visit_object(schema, pointer, name)
        raise InvalidSchemaError(f"unknown type {t!r}", pointer=f"{pointer}/type")

    def json_literal(self, value: JSON) -> str:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        return f"{literal(text)} {self.primitive('space')}"

    # --- strings -------------------------------------------------------------
    def visit_string(self, schema: dict[str, JSON], pointer: str, name: str) -> str:
        lo = int(schema.get("minLength", 0))
        hi = schema.get("maxLength")
        hi = None if hi is None else int(hi)
        fmt = schema.get("format")
        pattern = schema.get("pattern")
        space = self.primitive("space")
        if fmt is not None and fmt in FORMATS:
            self.enforce(pointer, "format")
            for key in ("minLength", "maxLength", "pattern"):
                if key in schema:
                    self.validate_only(pointer, key, " together with a format")
            body = self.add_rule(f"{_rule_name(fmt)}-format", FORMATS[fmt])
            return self.add_rule(name, f'"\\"" {body} "\\"" {space}')
        if fmt is not None:
            if fmt in jsonschema.Draft202012Validator.FORMAT_CHECKER.checkers:
                self.validate_only(pointer, "format", f" ('{fmt}' has no grammar)")
            elif self.strict:
                raise UnsupportedSchemaError(f"format {fmt!r} is neither enforced nor checked",
                                             pointer=f"{pointer}/format", keyword="format")
            else:
                self.ignored.append(f"{pointer}/format")
        if pattern is not None:
            self.enforce(pointer, "pattern")
            for key in ("minLength", "maxLength"):
                if key in schema:
                    self.validate_only(pointer, key, " together with a pattern")
            inner = pattern_to_gbnf(pattern, pointer=f"{pointer}/pattern", add_rule=self.add_rule,
                                    name=f"{name}-pattern", any_char=self.primitive("char"),
                                    dotall=self.dotall)
            return self.add_rule(name, f'"\\"" {inner} "\\"" {space}')
        if lo == 0 and hi is None:
            return self.primitive("string")
        for key in ("minLength", "maxLength"):
            if key in schema:
                self.enforce(pointer, key)
        char = self.primitive("char")
        return self.add_rule(name, f'"\\"" {repeat(char, lo, hi, self.add_rule)} "\\"" {space}')

    # --- numbers ---------------------------------------------------------------
    def visit_integer(self, schema: dict[str, JSON], pointer: str, name: str) -> str:
        lo: int | None = None
        hi: int | None = None
        if "minimum" in schema:
            lo = _ceil(schema["minimum"])
        if "exclusiveMinimum" in schema:
            v = schema["exclusiveMinimum"]
            lo = max(lo, _floor(v) + 1) if lo is not None else _floor(v) + 1
        if "maximum" in schema:
            hi = _floor(schema["maximum"])
        if "exclusiveMaximum" in schema:
            v = schema["exclusiveMaximum"]
            hi = min(hi, _ceil(v) - 1) if hi is not None else _ceil(v) - 1
        if lo is None and hi is None:
            return self.primitive("integer")
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            if key in schema:
                self.enforce(pointer, key)
        if lo is not None and hi is not None and lo > hi:
            raise UnsupportedSchemaError(f"no integer lies between {lo} and {hi}", pointer=pointer)
        return self.add_rule(name, f"( {int_range(lo, hi)} ) {self.primitive('space')}")

    # --- arrays ----------------------------------------------------------------
def _ceil(v: JSON) -> int:
    i = int(v)
    return i if i == v or v < 0 else i + 1


def _floor(v: JSON) -> int:
    i = int(v)
    return i if i == v or v > 0 else i - 1


def convert(schema: JSON, *, prop_order: Sequence[str] | None = None, dotall: bool = False,
            strict: bool = False, remote_refs: Mapping[str, JSON] | None = None) -> Conversion:
    """Convert a JSON Schema to GBNF.

    Args:
        schema: the schema (draft from ``$schema``, default 2020-12).
        prop_order: property names to place first, in this order.
        dotall: whether ``.`` in patterns also matches line terminators.
        strict: refuse keywords the grammar cannot enforce instead of leaving
            them to validation.
        remote_refs: documents for remote ``$ref`` URIs (never fetched).

    Raises:
        InvalidSchemaError: the schema is not a valid JSON Schema.
        UnsupportedSchemaError: a keyword no grammar can enforce (in strict
            mode, also those validation could check), with its JSON pointer.
    """
    check_schema(schema)
    conv = _Converter(root=schema, prop_order=list(prop_order or ()), dotall=dotall, strict=strict,
                      remote_refs=dict(remote_refs or {}))
    root = conv.visit(schema, "", "root-value")
    rules = dict(conv.rules)
    lines = [f"root ::= {root}"]
    lines += [f"{name} ::= {body}" for name, body in rules.items() if name != "root"]
    return Conversion(gbnf="\n".join(lines) + "\n", enforced=tuple(dict.fromkeys(conv.enforced)),
                      validated_only=tuple(dict.fromkeys(conv.validated_only)),
                      ignored=tuple(dict.fromkeys(conv.ignored)))


def convert_many(schemas: Sequence[JSON], names: Sequence[str], *, strict: bool = False
                 ) -> tuple[list[str], dict[str, str], list[Conversion]]:
    """Convert several schemas into one rule set (to embed in a larger grammar).

    Each schema is its own document for ``$ref``; rules that two schemas share
    (primitives) are written once, rules that only share a name are renamed.

    Returns:
        one GBNF expression per schema, the rules they use (no ``root``), and
        one :class:`Conversion` per schema (its ``gbnf`` holds only its own
        expression) with what it enforces and leaves to validation.

    Raises:
        SchemaError: as :func:`convert`; ``index`` on the error says which schema.
    """
    conv = _Converter(root=None, prop_order=[], dotall=False, strict=strict, remote_refs={})
    exprs: list[str] = []
    reports: list[Conversion] = []
    for index, (schema, name) in enumerate(zip(schemas, names, strict=True)):
        try:
            check_schema(schema)
            conv.root, conv.refs = schema, {}
            conv.enforced, conv.validated_only, conv.ignored = [], [], []
            expr = conv.visit(schema, "", f"{name}-value")
        except SchemaError as exc:
            exc.index = index
            raise
        exprs.append(expr)
        reports.append(Conversion(gbnf=expr, enforced=tuple(dict.fromkeys(conv.enforced)),
                                  validated_only=tuple(dict.fromkeys(conv.validated_only)),
                                  ignored=tuple(dict.fromkeys(conv.ignored))))
    return exprs, dict(conv.rules), reports


def schema_to_gbnf(schema: JSON, *, prop_order: Sequence[str] | None = None,
                   dotall: bool = False, strict: bool = False) -> str:
    """The GBNF of :func:`convert` alone."""
    return convert(schema, prop_order=prop_order, dotall=dotall, strict=strict).gbnf
