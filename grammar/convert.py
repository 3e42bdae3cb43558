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

from grammar.errors import InvalidSchemaError, UnsupportedSchemaError
from grammar.gbnf_text import literal, repeat
from grammar.ranges import int_range
from grammar.regex import pattern_to_gbnf

JSON = Any

SPACE = 'space ::= | " " | "\\n" [ \\t]{0,20}'
PRIMITIVES: dict[str, str] = {
    "space": '| " " | "\\n" [ \\t]{0,20}',
    "boolean": '("true" | "false") space',
    "null": '"null" space',
    # \u escapes of surrogates are left out: a pair would count as two characters
    # here and as one in JSON Schema's length; such characters are written as UTF-8.
    "char": ('[^"\\\\\\x00-\\x1F] | "\\\\" (["\\\\/bfnrt] | "u" ( [0-9a-cA-C] [0-9a-fA-F]{3} | '
             '[dD] [0-7] [0-9a-fA-F]{2} | [eEfF] [0-9a-fA-F]{3} ))'),
    "string": '"\\"" char* "\\"" space',
    "integral-part": '[0] | [1-9] [0-9]{0,15}',
    "decimal-part": "[0-9]{1,16}",
    "number": '("-"? integral-part) ("." decimal-part)? ([eE] [-+]? [0-9]{1,4})? space',
    "integer": '("-"? integral-part) space',
    "value": "object | array | string | number | boolean | null",
    "object": '"{" space ( string ":" space value ("," space string ":" space value)* )? "}" space',
    "array": '"[" space ( value ("," space value)* )? "]" space',
}
_PRIMITIVE_DEPS = {
    "boolean": ["space"], "null": ["space"], "string": ["char", "space"],
    "number": ["integral-part", "decimal-part", "space"], "integer": ["integral-part", "space"],
    "value": ["object", "array", "string", "number", "boolean", "null"],
    "object": ["string", "value", "space"], "array": ["value", "space"],
}

# Calendar-exact dates: days per month, 29 February only in leap years, no year 0000
# (which Python's date, and so validation, refuses).
_YEAR = '( [0-9]{3} [1-9] | [0-9]{2} [1-9] "0" | [0-9] [1-9] "00" | [1-9] "000" )'
_LEAP_YEAR = ('( [0-9]{2} ( "0" [48] | [2468] [048] | [13579] [26] ) | '
              '( "0" [48] | [2468] [048] | [13579] [26] ) "00" )')
_DATE = (f'( {_YEAR} "-" ( ( "0" [13578] | "1" [02] ) "-" ( "0" [1-9] | [12] [0-9] | "3" [01] ) | '
         '( "0" [469] | "11" ) "-" ( "0" [1-9] | [12] [0-9] | "30" ) | '
         '"02-" ( "0" [1-9] | "1" [0-9] | "2" [0-8] ) ) | '
         f'{_LEAP_YEAR} "-02-29" )')
_TIME = ('( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{1,9} )? '
         '( [Zz] | [+-] ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )')
_OCTET = '( "25" [0-5] | "2" [0-4] [0-9] | "1" [0-9] [0-9] | [1-9]? [0-9] )'
FORMATS: dict[str, str] = {
    "date": _DATE,
    "time": _TIME,
    "date-time": f"{_DATE} [Tt] {_TIME}",
    "uuid": ('[0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" '
             "[0-9a-fA-F]{12}"),
    "ipv4": f'{_OCTET} "." {_OCTET} "." {_OCTET} "." {_OCTET}',
    "email": '[A-Za-z0-9._%+-]{1,64} "@" [A-Za-z0-9-]{1,63} ( "." [A-Za-z0-9-]{1,63} ){1,8}',
}

# Keywords that only annotate: they never constrain an instance.
ANNOTATIONS = frozenset({
    "$schema", "$id", "$anchor", "$dynamicAnchor", "$comment", "$defs", "definitions",
    "$vocabulary", "title", "description", "default", "examples", "readOnly", "writeOnly",
    "deprecated", "contentEncoding", "contentMediaType", "contentSchema",
})
# Keywords checked only by validation after generation.
VALIDATED_ONLY = frozenset({
    "uniqueItems", "multipleOf", "not", "minProperties", "maxProperties", "contains",
    "minContains", "maxContains", "patternProperties", "propertyNames", "dependentRequired",
    "dependentSchemas", "dependencies", "if", "then", "else", "unevaluatedItems",
    "unevaluatedProperties",
})
_TYPE_KEYWORDS = {
    "string": {"minLength", "maxLength", "pattern", "format"},
    "boolean": set(),
    "null": set(),
    "number": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"},
    "integer": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"},
    "array": {"items", "prefixItems", "minItems", "maxItems", "uniqueItems", "contains",
              "minContains", "maxContains", "unevaluatedItems"},
    "object": {"properties", "required", "additionalProperties", "minProperties",
               "maxProperties", "patternProperties", "propertyNames", "dependentRequired",
               "dependentSchemas", "unevaluatedProperties"},
}
_ALL_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
_STRUCTURAL = {"type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref"}


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


def _escape_pointer(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


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
        pointer = "".join(f"/{_escape_pointer(str(p))}" for p in error.absolute_path)
        raise InvalidSchemaError(error.message, pointer=pointer)


@dataclass
class _Converter:
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
            for dep in _PRIMITIVE_DEPS.get(name, ()):
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
                    branch = _merge(rest, sub, f"{pointer}/{key}/{i}") if _constraining(rest) else sub
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
                sub = _merge(target, rest, where) if isinstance(target, dict) else target
            if isinstance(sub, dict) and "allOf" in sub:
                inner = {k: v for k, v in sub.items() if k != "allOf"}
                for j, s in enumerate(sub["allOf"]):
                    inner = _merge(inner, s, f"{where}/allOf/{j}")
                sub = inner
            merged = _merge(merged, sub, where)
        self.enforce(pointer, "allOf")
        return self.visit(merged, pointer, name)

    def _classify_keywords(self, schema: dict[str, JSON], pointer: str) -> None:
        for key in schema:
            if key in ANNOTATIONS:
                continue
            if key in VALIDATED_ONLY:
                self.validate_only(pointer, key)
            elif key not in _STRUCTURAL and not any(key in kws for kws in _TYPE_KEYWORDS.values()):
                self.ignored.append(f"{pointer}/{key}")

    @staticmethod
    def infer_types(schema: dict[str, JSON]) -> str | list[str] | None:
        """Types a schema without ``type`` constrains by its keywords (None: any value).

        Keywords of other types do not restrict a value of a type they do not
        apply to; the grammar keeps to the constrained types, a subset.
        """
        present = [t for t in _ALL_TYPES if t != "integer" and _TYPE_KEYWORDS[t] & schema.keys()]
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
    def visit_array(self, schema: dict[str, JSON], pointer: str, name: str) -> str:
        space = self.primitive("space")
        prefix = schema.get("prefixItems", [])
        items = schema.get("items", True)
        lo = int(schema.get("minItems", 0))
        hi = schema.get("maxItems")
        hi = None if hi is None else int(hi)
        for key in ("prefixItems", "items", "minItems", "maxItems"):
            if key in schema:
                self.enforce(pointer, key)
        elems = [self.visit(s, f"{pointer}/prefixItems/{i}", f"{name}-{i}")
                 for i, s in enumerate(prefix)]
        if items is False:
            hi = min(hi, len(elems)) if hi is not None else len(elems)
            item = None
        else:
            item = self.visit(items, f"{pointer}/items", f"{name}-item")
        if hi is not None and lo > hi:
            raise UnsupportedSchemaError(f"minItems {lo} exceeds maxItems {hi}", pointer=pointer)
        # Prefix elements come first (each required while below minItems), then items.
        sep = f'"," {space}'
        n_prefix = len(elems) if hi is None else min(len(elems), hi)
        if n_prefix == 0:
            inner = self._array_items(item, lo, hi, sep, name) if item is not None else ""
        else:
            rest = self._array_tail(item, lo - n_prefix, None if hi is None else hi - n_prefix, sep)
            for i in range(n_prefix - 1, -1, -1):
                body = self._join(elems[i] if i == 0 else f"{sep} {elems[i]}", rest)
                if i >= lo:
                    body = f"( {body} )?"
                rest = self.add_rule(f"{name}-from-{i}", body) if i > 0 else body
            inner = rest
        return self.add_rule(name, self._join(f'"[" {space}', self._join(inner, f'"]" {space}')))

    def _array_tail(self, item: str | None, lo: int, hi: int | None, sep: str) -> str:
        """Items after the prefix: each preceded by a separator."""
        if item is None or (hi is not None and hi <= 0):
            return ""
        lo = max(lo, 0)
        return repeat(self.add_rule(f"{item}-next", f"{sep} {item}"), lo, hi, self.add_rule)

    def _array_items(self, item: str, lo: int, hi: int | None, sep: str, name: str) -> str:
        if hi == 0:
            return ""
        more = repeat(self.add_rule(f"{name}-next", f"{sep} {item}"),
                      max(lo - 1, 0), None if hi is None else hi - 1, self.add_rule)
        body = f"{item} {more}".strip()
        return body if lo >= 1 else f"( {body} )?"

    # --- objects ---------------------------------------------------------------
    def visit_object(self, schema: dict[str, JSON], pointer: str, name: str) -> str:
        space = self.primitive("space")
        props: dict[str, JSON] = schema.get("properties", {})
        required = set(schema.get("required", []))
        forbidden = {k for k, v in props.items() if v is False}
        if forbidden & required:
            raise UnsupportedSchemaError(
                f"property {sorted(forbidden & required)[0]!r} is both required and forbidden",
                pointer=pointer)
        props = {k: v for k, v in props.items() if v is not False}
        additional = schema.get("additionalProperties")
        if "properties" not in schema and additional is None:
            additional = True  # a bare object schema allows any keys
        for key in ("properties", "required", "additionalProperties"):
            if key in schema:
                self.enforce(pointer, key)
        for key in sorted(required - props.keys()):
            if additional is False:
                raise UnsupportedSchemaError(
                    f"required property {key!r} is not allowed by the schema", pointer=pointer)
            props = {**props, key: additional if isinstance(additional, dict) else True}
        order = [k for k in self.prop_order if k in props] + [k for k in props
                                                                if k not in self.prop_order]
        kvs: list[tuple[str, str, bool]] = []
        for key in order:
            value = self.visit(props[key], f"{pointer}/properties/{_escape_pointer(key)}",
                               f"{name}-{key}")
            kv = self.add_rule(f"{name}-{key}-kv",
                               f'{literal(json.dumps(key, ensure_ascii=False))} {space} ":" {space} {value}')
            kvs.append((key, kv, key in required))
        extra: str | None = None
        if additional not in (None, False):
            value = self.visit(additional, f"{pointer}/additionalProperties", f"{name}-additional")
            key_rule = self._key_excluding(list(props), name)
            extra = self.add_rule(f"{name}-additional-kv", f'{key_rule} ":" {space} {value}')
        body = self._object_body(kvs, extra, f'"," {space}', name)
        return self.add_rule(name, f'"{{" {space} {body} "}}" {space}'.replace("  ", " "))

    def _object_body(self, kvs: list[tuple[str, str, bool]], extra: str | None, sep: str,
                     name: str) -> str:
        """Members in declared order, required ones always, optional ones at most once, then extras.

        ``tail(i)`` follows a written member and covers members i.. (each with its
        separator in front); ``head(i)`` is where nothing was written yet.
        """
        n = len(kvs)
        tail = [""] * (n + 1)
        tail[n] = f"( {sep} {extra} )*" if extra else ""
        for i in range(n - 1, -1, -1):
            _key, kv, req = kvs[i]
            item = f"{sep} {kv}" if req else f"( {sep} {kv} )?"
            tail[i] = self._join(item, tail[i + 1])
            if i > 0 and tail[i]:
                tail[i] = self.add_rule(f"{name}-tail-{i}", tail[i])
        head = f"( {extra} {tail[n]} )?" if extra else ""
        first_required = next((i for i, kv in enumerate(kvs) if kv[2]), n - 1)
        for i in range(first_required, -1, -1):
            _key, kv, req = kvs[i]
            first = self._join(kv, tail[i + 1])
            if req:
                head = first
            else:
                head = f"( {first} )?" if not head else f"{first} | {head}"
                if head.count("|") and i > 0:
                    head = self.add_rule(f"{name}-head-{i}", head)
                elif "|" in head:
                    head = f"( {head} )"
        return head

    @staticmethod
    def _join(a: str, b: str) -> str:
        return f"{a} {b}" if a and b else (a or b)

    def _key_excluding(self, keys: list[str], name: str) -> str:
        """A JSON string that is none of ``keys`` (written without escapes)."""
        string = self.primitive("string")
        if not keys:
            return string
        space = self.primitive("space")
        plain = '[^"\\\\\\x00-\\x1F]'
        trie: dict[str, Any] = {}
        for key in keys:
            node = trie
            for ch in key:
                node = node.setdefault(ch, {})
            node[""] = {}

        def build(node: dict[str, Any], depth: int) -> str:
            chars = sorted(c for c in node if c)
            options = []
            if chars:
                from grammar.gbnf_text import char_class

                others = char_class(_ranges_excluding(chars), negated=False)
                options.append(f"{others} {plain}*")
                for c in chars:
                    options.append(f"{literal(c)} {build(node[c], depth + 1)}")
            else:
                options.append(f"{plain}+")
            if "" not in node:
                options.append('""')
            return self.add_rule(f"{name}-key-{depth}-{len(self.rules)}", " | ".join(options))

        return f'"\\"" {build(trie, 0)} "\\"" {space}'


def _ranges_excluding(chars: list[str]) -> list[tuple[int, int]]:
    """Code point ranges of plain JSON string characters other than ``chars``."""
    banned = sorted({ord(c) for c in chars} | {0x22, 0x5C} | set(range(0x20)))
    out, nxt = [], 0
    for b in banned:
        if b > nxt:
            out.append((nxt, b - 1))
        nxt = max(nxt, b + 1)
    out.append((nxt, 0x10FFFF))
    return out


def _close_over(mine: dict[str, JSON], other: dict[str, JSON], pointer: str) -> dict[str, JSON]:
    """Apply ``mine``'s additionalProperties to the properties only ``other`` declares.

    In JSON Schema, additionalProperties only knows its own schema's
    ``properties``: merged with another branch, it forbids (or constrains) the
    other branch's extra properties.
    """
    extra_rule = mine.get("additionalProperties", True)
    if extra_rule is True:
        return mine
    own = set(mine.get("properties", {}))
    foreign = [p for p in other.get("properties", {}) if p not in own]
    foreign += [p for p in other.get("required", []) if p not in own and p not in foreign]
    if not foreign:
        return mine
    if extra_rule is False:
        required = set(mine.get("required", [])) | set(other.get("required", []))
        for prop in foreign:
            if prop in required:
                raise UnsupportedSchemaError(
                    f"allOf: property {prop!r} is required but forbidden by additionalProperties "
                    "of another branch; no object satisfies the schema", pointer=pointer)
        # the property may not appear at all
        props = dict(mine.get("properties", {}))
        props.update({p: False for p in foreign})
        return {**mine, "properties": props}
    props = dict(mine.get("properties", {}))
    props.update({p: extra_rule for p in foreign})
    return {**mine, "properties": props}


def _ceil(v: JSON) -> int:
    i = int(v)
    return i if i == v or v < 0 else i + 1


def _floor(v: JSON) -> int:
    i = int(v)
    return i if i == v or v > 0 else i - 1


def _constraining(schema: dict[str, JSON]) -> bool:
    return any(k not in ANNOTATIONS for k in schema)


def _merge(a: dict[str, JSON], b: JSON, pointer: str) -> dict[str, JSON]:
    """The conjunction of two schemas as one schema, where that can be written exactly."""
    if b is True:
        return dict(a)
    if not isinstance(b, dict):
        raise UnsupportedSchemaError("allOf with a 'false' schema admits no value", pointer=pointer)
    a = _close_over(a, b, pointer)
    b = _close_over(b, a, pointer)
    out = dict(a)
    for key, value in b.items():
        if key not in out or out[key] == value or key in ANNOTATIONS:
            out.setdefault(key, value)
            continue
        mine = out[key]
        if key == "properties":
            props = dict(mine)
            for name, sub in value.items():
                if name not in props:
                    props[name] = sub
                elif props[name] is False or sub is False:
                    props[name] = False
                else:
                    props[name] = {"allOf": [props[name], sub]}
            out[key] = props
        elif key == "required":
            out[key] = list(dict.fromkeys([*mine, *value]))
        elif key == "type":
            ta = {mine} if isinstance(mine, str) else set(mine)
            tb = {value} if isinstance(value, str) else set(value)
            if "number" in ta and "integer" in tb:
                ta.add("integer")
            if "number" in tb and "integer" in ta:
                tb.add("integer")
            both = sorted(ta & tb)
            if not both:
                raise UnsupportedSchemaError("allOf branches share no type", pointer=pointer)
            out[key] = both[0] if len(both) == 1 else both
        elif key in ("minimum", "exclusiveMinimum", "minLength", "minItems"):
            out[key] = max(mine, value)
        elif key in ("maximum", "exclusiveMaximum", "maxLength", "maxItems"):
            out[key] = min(mine, value)
        elif key == "enum":
            out[key] = [v for v in mine if v in value]
        elif key in ("items", "additionalProperties") and isinstance(mine, dict | bool):
            out[key] = {"allOf": [mine, value]}
        else:
            raise UnsupportedSchemaError(f"allOf: cannot combine two different '{key}' values",
                                         pointer=pointer)
    return out





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


def schema_to_gbnf(schema: JSON, *, prop_order: Sequence[str] | None = None,
                   dotall: bool = False, strict: bool = False) -> str:
    """The GBNF of :func:`convert` alone."""
    return convert(schema, prop_order=prop_order, dotall=dotall, strict=strict).gbnf
