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

Deliberate narrowings (the grammar accepts a subset, never a superset). In the
generation shape (the default, see :func:`convert`): an object schema with
``properties`` and no ``additionalProperties`` allows no extra keys (as
llama.cpp's converter), properties come in declared order (``prop_order``
first), whitespace between tokens is none or one space, unbounded strings hold
at most :data:`DEFAULT_MAX_LENGTH` characters, an empty root schema is an object.
In both shapes: integers have at most 16 digits, exponents two (every number is a
finite double); whitespace between tokens is at most one newline and 20 spaces
or tabs; strings produced by a negated character class never contain quotes,
backslashes or control characters.
"""

from __future__ import annotations

import functools
import json
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import jsonschema
import jsonschema_rs

from grammar.containers import ContainerRules
from grammar.errors import InvalidSchemaError, SchemaError, UnsupportedSchemaError, escape_pointer
from grammar.gbnf import MAX_GBNF_BYTES
from grammar.gbnf_text import MAX_COUNT, literal, repeat
from grammar.keywords import (
    ALL_TYPES,
    ANNOTATIONS,
    CONSTRAINING,
    TYPE_KEYWORDS,
    VALIDATED_ONLY,
)
from grammar.merge import constraining, merge
from grammar.primitives import FORMATS, PRIMITIVE_DEPS, PRIMITIVES, SPACE_COMPACT
from grammar.ranges import int_range, number_range
from grammar.regex import pattern_to_gbnf
from grammar.validate import checked_formats, validator_class

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
        unchecked: formats neither the grammar nor validation can check (validation
            then reports the value as not validated).
    """

    gbnf: str
    enforced: tuple[str, ...]
    validated_only: tuple[str, ...]
    ignored: tuple[str, ...]
    unchecked: tuple[str, ...] = ()


#: Rule names keep the last parts of their schema path up to this length: names are most of
#: a large grammar's size (each is written where it is used), and llama.cpp's parse is linear
#: in the text.
MAX_RULE_NAME = 12


_RESERVED = frozenset(PRIMITIVES) | {"root"}


_NOT_IN_NAMES = re.compile(r"[^a-zA-Z0-9-]+")


@functools.lru_cache(maxsize=1 << 15)  # the second try of a large schema asks again
def _rule_name(text: str) -> str:
    tail = text[-4 * MAX_RULE_NAME:]
    plain = tail.replace("_", "-")
    if "__" not in tail and plain.isascii() and plain.replace("-", "").isalnum():
        name = plain.strip("-")  # what the pattern below makes of it, without a regex
    else:
        name = _NOT_IN_NAMES.sub("-", tail).strip("-")
    if len(name) > MAX_RULE_NAME:
        tail = name[-MAX_RULE_NAME:]
        if name[-MAX_RULE_NAME - 1] != "-" and "-" in tail:  # drop a cut-off part
            tail = tail.partition("-")[2]
        name = tail.strip("-")
    return name or "x"


#: The deepest JSON nesting of a schema document (objects and arrays) the converter takes.
#: Every schema level is two (``properties`` then the name); real schemas stay far below.
MAX_SCHEMA_DEPTH = 96


@dataclass(frozen=True, slots=True)
class Scan:
    anchors: dict[str, JSON]  # "#name" -> the subschema with that $anchor or plain-name id


def _anchor_keys(schema: JSON) -> tuple[str, ...]:
    """The keywords that name plain-name anchors in ``schema``'s draft, as its validator reads
    them: ``$anchor`` from 2019-09, ``$id: "#foo"`` in drafts 06/07, ``id: "#foo"`` in draft-04.
    The converter resolves only what validation resolves too (a ``$ref`` to an ``id`` anchor
    of a 2020-12 schema made the validation after generation raise)."""
    cls = validator_class(schema)
    if cls in (jsonschema.Draft4Validator, jsonschema.Draft3Validator):
        return ("id",)
    if cls in (jsonschema.Draft6Validator, jsonschema.Draft7Validator):
        return ("$id",)
    return ("$anchor",)


def scan(schema: JSON) -> Scan:
    """Check the document's nesting depth (iteratively) and index its plain-name anchors:
    ``$anchor``, or draft-04/06/07 ``id`` / ``$id`` values that are plain-name fragments
    (``"#foo"``), by the document's draft (:func:`_anchor_keys`).

    Raises:
        UnsupportedSchemaError: nested deeper than :data:`MAX_SCHEMA_DEPTH`.
    """
    keys = _anchor_keys(schema)
    anchors: dict[str, JSON] = {}
    level: list[JSON] = [schema] if isinstance(schema, dict | list) else []
    depth = 0
    while level:  # a level at a time, in document order (the first of equal anchors wins)
        if depth > MAX_SCHEMA_DEPTH:
            raise UnsupportedSchemaError(f"the schema is nested more than {MAX_SCHEMA_DEPTH} "
                                         "levels deep", pointer=_deep_pointer(schema))
        below: list[JSON] = []
        for node in level:
            if isinstance(node, dict):
                if "$anchor" in node or "$id" in node or "id" in node:
                    _index_anchors(node, anchors, keys)
                below.extend(v for v in node.values() if isinstance(v, dict | list))
            else:
                below.extend(v for v in node if isinstance(v, dict | list))
        level = below
        depth += 1
    return Scan(anchors)


def _index_anchors(node: dict[str, JSON], anchors: dict[str, JSON],
                   keys: tuple[str, ...]) -> None:
    anchor = node.get("$anchor")
    if isinstance(anchor, str) and "$anchor" in keys:
        anchors.setdefault(f"#{anchor}", node)
    for key in ("$id", "id"):
        if key not in keys:
            continue
        ident = node.get(key)
        if isinstance(ident, str) and ident.startswith("#") and len(ident) > 1 \
                and not ident.startswith("#/"):
            anchors.setdefault(ident, node)


def _deep_pointer(schema: JSON) -> str:
    """The JSON pointer of the first place nested deeper than the limit."""
    stack: list[tuple[JSON, int, str]] = [(schema, 0, "")]
    while stack:
        node, depth, pointer = stack.pop()
        if depth > MAX_SCHEMA_DEPTH:
            return pointer
        items = node.items() if isinstance(node, dict) else enumerate(node) \
            if isinstance(node, list) else ()
        stack.extend((v, depth + 1, f"{pointer}/{escape_pointer(str(k))}") for k, v in items)
    return ""


#: Meta-schemas jsonschema-rs knows without a download (it fetches any other ``$schema``).
_KNOWN_DRAFTS = frozenset(
    f"{scheme}://json-schema.org/{draft}/schema{hash_}"
    for scheme in ("http", "https") for hash_ in ("", "#")
    for draft in ("draft-04", "draft-06", "draft-07", "draft/2019-09", "draft/2020-12"))


def _fast_valid(schema: JSON) -> bool:
    """Whether jsonschema-rs finds the schema valid against its meta-schema (about 300 times
    faster than jsonschema on large schemas: 0.8 ms instead of 370 ms on a 26 KB one). Only
    a "valid" is taken from it; anything else goes to jsonschema for the error and pointer."""
    if isinstance(schema, dict) and "$schema" in schema and (
            not isinstance(schema["$schema"], str) or schema["$schema"] not in _KNOWN_DRAFTS):
        return False
    try:
        return bool(jsonschema_rs.meta.is_valid(schema))
    except Exception:  # any trouble there: the slow path decides
        return False


def check_schema(schema: JSON) -> None:
    """Raise :class:`InvalidSchemaError` unless ``schema`` is a valid JSON Schema.

    Duplicate ``enum`` members, which draft-04 to 07's meta-schemas forbid and
    validators treat differently, are accepted: a grammar does not care.
    """
    if not isinstance(schema, dict | bool):
        raise InvalidSchemaError("a schema must be an object or a boolean", pointer="")
    if isinstance(schema, dict) and not isinstance(schema.get("$schema", ""), str):
        raise InvalidSchemaError("'$schema' must be a string (a meta-schema URI)",
                                 pointer="/$schema")
    if _fast_valid(schema):
        return
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    errors = (e for e in cls(cls.META_SCHEMA).iter_errors(schema)
              if not (e.validator == "uniqueItems" and e.absolute_path
                      and e.absolute_path[-1] == "enum"))
    error = jsonschema.exceptions.best_match(errors)
    if error is not None:
        pointer = "".join(f"/{escape_pointer(str(p))}" for p in error.absolute_path)
        raise InvalidSchemaError(error.message, pointer=pointer)


@dataclass
class _Converter(ContainerRules):
    root: JSON
    prop_order: Sequence[str]
    dotall: bool
    strict: bool  # objects without additionalProperties are closed
    spec: bool  # the spec-faithful shape (open objects, any order, unbounded strings)
    grammar_only: bool  # refuse keywords only validation can check
    remote_refs: Mapping[str, JSON]
    rules: dict[str, str] = field(default_factory=dict)
    enforced: list[str] = field(default_factory=list)
    validated_only: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    key_tries: dict[tuple[str, ...], str] = field(default_factory=dict)
    bodies: dict[str, str] = field(default_factory=dict)  # rule body -> its name
    patterns: dict[tuple[str, Any], tuple[str, bool, bool]] = field(default_factory=dict)
    suffixes: dict[str, int] = field(default_factory=dict)  # name -> its next free suffix
    compact: bool = False  # see ContainerRules.compact
    size: int = 0  # about how many bytes the rules so far take
    refs: dict[str, str] = field(default_factory=dict)
    # refs being expanded with nothing written since they started (a "{" or "[" resets it)
    open_refs: set[str] = field(default_factory=set)
    anchors: dict[str, JSON] = field(default_factory=dict)
    root_id: str = ""  # the document's own URI (``$id``/``id`` without its fragment)

    def set_root(self, schema: JSON, anchors: dict[str, JSON]) -> None:
        self.root, self.refs, self.anchors = schema, {}, anchors
        ident = schema.get("$id", schema.get("id")) if isinstance(schema, dict) else None
        self.root_id = ident.partition("#")[0] if isinstance(ident, str) else ""

    # --- bookkeeping -------------------------------------------------------
    def add_rule(self, name: str, body: str) -> str:
        """Declare a rule; a rule with the same body already declared is reused (same text,
        same language), so equal subschemas cost one rule."""
        if body and body in self.bodies:
            return self.bodies[body]
        name = self.fresh(name)
        self.size += len(name) + len(body) + 6  # "name ::= body\n"; the text is measured at the end
        if self.size > MAX_GBNF_BYTES:
            raise _OverBudget
        self.rules[name] = body
        if body:
            self.bodies[body] = name
        return name

    def fresh(self, name: str) -> str:
        """An unused rule name from ``name`` (``name``, then ``name-2``, ``name-3``, ...)."""
        base = _rule_name(name)
        n = self.suffixes.get(base, 1)
        candidate = base if n == 1 else f"{base}-{n}"
        while candidate in self.rules or candidate in _RESERVED:  # primitives keep their names
            n += 1
            candidate = f"{base}-{n}"
        self.suffixes[base] = n + 1
        return candidate

    def reserve(self, name: str) -> str:
        """A fresh rule name (never shared with another rule), its body set later."""
        candidate = self.fresh(name)
        self.rules[candidate] = ""
        return candidate

    def pattern_key(self, pattern: str, pointer: str, name: str) -> str:
        """The text between the quotes of a member name matching ``pattern``."""
        text, _bounded, widened = pattern_to_gbnf(
            pattern, pointer=pointer, add_rule=self.add_rule, name=name,
            any_char=self.primitive("char"), dotall=self.dotall)
        if widened:
            self.validate_only(pointer, "pattern", f" (a repetition maximum over {MAX_COUNT})")
        return text

    def primitive(self, name: str) -> str:
        if name not in self.rules:
            body = SPACE_COMPACT if name == "space" and not self.spec else PRIMITIVES[name]
            self.rules[name] = body
            self.bodies.setdefault(body, name)
            for dep in PRIMITIVE_DEPS.get(name, ()):
                self.primitive(dep)
        return name

    def enforce(self, pointer: str, keyword: str) -> None:
        self.enforced.append(f"{pointer}/{keyword}")

    def counts(self, schema: dict[str, JSON], pointer: str, lo_key: str,
               hi_key: str) -> tuple[int, int | None]:
        """``lo_key``..``hi_key`` of ``schema`` (a count of characters, items or members).
        An upper bound over :data:`MAX_COUNT` is left to validation (no model writes that
        much; llama.cpp would expand it into as many rules); a lower one is refused."""
        lo = int(schema.get(lo_key, 0))
        raw = schema.get(hi_key)
        hi = None if raw is None else int(raw)
        if lo > MAX_COUNT:
            raise UnsupportedSchemaError(
                f"{lo_key} {lo} is over {MAX_COUNT} (the grammar would spell out every one)",
                pointer=f"{pointer}/{lo_key}", keyword=lo_key)
        if hi is not None and hi > MAX_COUNT:
            self.validate_only(pointer, hi_key, f" above {MAX_COUNT}")
            hi = None
        return lo, hi

    def validate_only(self, pointer: str, keyword: str, why: str = "") -> None:
        where = f"{pointer}/{keyword}"
        if self.grammar_only:
            raise UnsupportedSchemaError(
                f"'{keyword}' cannot be enforced by a grammar{why} (grammar-only mode)",
                pointer=f"{pointer}/{keyword}", keyword=keyword)
        self.validated_only.append(where)

    # --- $ref ----------------------------------------------------------------
    def resolve(self, ref: str, pointer: str) -> JSON:
        base, _, fragment = ref.partition("#")
        if base and base != self.root_id:
            if base not in self.remote_refs:
                raise UnsupportedSchemaError(
                    f"remote $ref {ref!r} is refused (pass its document explicitly to allow it)",
                    pointer=f"{pointer}/$ref", keyword="$ref")
            doc = self.remote_refs[base]
        else:
            doc = self.root
        node = doc
        if fragment and not fragment.startswith("/"):
            anchors = self.anchors if doc is self.root else scan(doc).anchors
            if f"#{fragment}" not in anchors:
                raise InvalidSchemaError(f"$ref {ref!r}: no $anchor or id names {fragment!r}",
                                         pointer=f"{pointer}/$ref")
            return anchors[f"#{fragment}"]
        if fragment:
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
        if ref in self.refs:
            if ref in self.open_refs:  # {"$ref": "#"}, or through anyOf: left recursion
                raise UnsupportedSchemaError(
                    f"$ref {ref!r} refers to itself before any value is written (left "
                    "recursion: llama.cpp refuses it)", pointer=f"{pointer}/$ref", keyword="$ref")
            return self.refs[ref]
        name = _rule_name(ref.rpartition("/")[2] or "root-ref")
        target = self.resolve(ref, pointer)
        # Reserve the name first: recursive references then point at it.
        rule = self.reserve(f"ref-{name}")
        self.refs[ref] = rule
        self.open_refs.add(ref)
        try:
            body = self.visit(target, f"{pointer}/$ref", rule + "-body")
        finally:
            self.open_refs.discard(ref)
        self.rules[rule] = body
        self.enforce(pointer, "$ref")
        return rule

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
            values = schema["enum"]
            if 0 < len(values) <= 256 and all(type(v) is str and len(v) <= 64 for v in values):
                self.primitive("space")
                return self.add_rule(name, _string_enum(tuple(values)))  # the common case
            options = list(dict.fromkeys(self.json_literal(v) for v in values))
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
            elif key not in CONSTRAINING:
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
                return self.visit_number(schema, pointer, name)
            case "boolean":
                return self.primitive("boolean")
            case "null":
                return self.primitive("null")
            case "array" | "object":
                # members come after a "[" or "{": a $ref inside is no left recursion
                outer, self.open_refs = self.open_refs, set()
                try:
                    if t == "array":
                        return self.visit_array(schema, pointer, name)
                    return self.visit_object(schema, pointer, name)
                finally:
                    self.open_refs = outer
        raise InvalidSchemaError(f"unknown type {t!r}", pointer=f"{pointer}/type")

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
            return f"{_string_literal(value)} {space}"
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
            body = self.add_rule(f"{_rule_name(fmt)}-format", FORMATS[fmt])
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
        lo, lo_strict, hi, hi_strict = _bounds(schema, pointer)
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
        lo, lo_strict, hi, hi_strict = _bounds(schema, pointer)
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

    # --- arrays ----------------------------------------------------------------
def _string_literal(value: str) -> str:
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
def _string_enum(values: tuple[str, ...]) -> str:
    """The body of an ``enum`` of short strings (as ``json_literal`` writes them)."""
    return " | ".join(dict.fromkeys(f"{_string_literal(v)} space" for v in values))


def _decimal(v: JSON, pointer: str) -> Decimal:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise InvalidSchemaError(f"a bound must be a finite number, not {v!r}", pointer=pointer)
    return Decimal(v) if isinstance(v, int) else Decimal(repr(v))


def _bounds(schema: dict[str, JSON], pointer: str
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


#: The generation default's bound on a string whose schema gives no ``maxLength``, format or
#: pattern: a string that never closes is a way to run to the token limit, and no extraction
#: plausibly wants a longer single value (a caller who does says ``maxLength``).
DEFAULT_MAX_LENGTH = 4096

#: Conversions of recent schemas (requests often repeat theirs), least recently used first.
_CACHE: OrderedDict[tuple[Any, ...], Conversion] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 64


def convert(schema: JSON, *, prop_order: Sequence[str] | None = None, dotall: bool = False,
            strict: bool = False, spec: bool = False, grammar_only: bool = False,
            remote_refs: Mapping[str, JSON] | None = None) -> Conversion:
    """Convert a JSON Schema to GBNF.

    By default the grammar has the *generation* shape, which leads a model to the object
    the schema describes: an object that does not say ``additionalProperties`` admits
    only its declared (and ``patternProperties``) members, in declared order (``prop_order``
    names first), optional ones skippable, none twice; a string without ``maxLength``,
    ``format`` or ``pattern`` holds at most :data:`DEFAULT_MAX_LENGTH` characters; an empty
    root schema (``{}``, ``true``) is a JSON object. Every text it admits is valid (a subset
    of the schema's language); ``enforced`` lists each such choice.

    Args:
        schema: the schema (draft from ``$schema``, default 2020-12).
        prop_order: property names to place first, in this order.
        dotall: whether ``.`` in patterns also matches line terminators.
        strict: close objects that do not say ``additionalProperties`` in either shape
            (OpenAI's strict mode).
        spec: the *spec-faithful* shape instead: objects without
            ``additionalProperties`` are open (extra members anywhere, as JSON Schema
            says for validation), small objects take their properties in any order,
            strings are unbounded, an empty schema is any value.
        grammar_only: refuse keywords the grammar cannot enforce instead of
            leaving them to validation.
        remote_refs: documents for remote ``$ref`` URIs (never fetched).

    Raises:
        InvalidSchemaError: the schema is not a valid JSON Schema.
        UnsupportedSchemaError: a keyword no grammar can enforce (in grammar-only
            mode, also those validation could check), with its JSON pointer.
    """
    key: tuple[Any, ...] | None = None
    if not remote_refs:
        try:
            key = (json.dumps(schema, ensure_ascii=False, separators=(",", ":")),
                   tuple(prop_order or ()), dotall, strict, spec, grammar_only)
        except (TypeError, ValueError):
            key = None
        if key is not None:
            with _CACHE_LOCK:
                hit = _CACHE.get(key)
                if hit is not None:
                    _CACHE.move_to_end(key)
                    return hit
    found = scan(schema)  # once: the depth bound and the anchors
    check_schema(schema)
    for compact in (False, True):
        # over the size limit, properties go in declared order and objects close: a smaller
        # grammar that still admits only what the schema allows (reported in ``enforced``)
        conv = _Converter(root=None, prop_order=list(prop_order or ()), dotall=dotall,
                          strict=strict, spec=spec, grammar_only=grammar_only,
                          remote_refs=dict(remote_refs or {}), compact=compact)
        try:
            root = _convert_one(conv, _root_default(schema, spec, conv.enforced), "root-value",
                                found)
        except _OverBudget:  # stopped as soon as the rules passed the limit: each try is bounded
            continue
        lines = [f"root ::= {root}"]
        lines += [f"{name} ::= {body}" for name, body in conv.rules.items() if name != "root"]
        gbnf = "\n".join(lines) + "\n"
        if len(gbnf.encode()) <= MAX_GBNF_BYTES:
            break
    else:
        raise UnsupportedSchemaError(
            f"the grammar of this schema would be over {MAX_GBNF_BYTES // 1024} KiB "
            "(llama.cpp's matcher slows with a grammar's size)", pointer="")
    if conv.compact:
        conv.enforced.append("/ (over the size limit: properties in declared order, objects "
                             "without additionalProperties closed)")
    if not spec:
        conv.enforced.append(_COMPACT_NOTE)
    result = Conversion(gbnf=gbnf,
                        enforced=tuple(dict.fromkeys(conv.enforced)),
                        validated_only=tuple(dict.fromkeys(conv.validated_only)),
                        ignored=tuple(dict.fromkeys(conv.ignored)),
                        unchecked=tuple(dict.fromkeys(conv.unchecked)))
    if key is not None:
        with _CACHE_LOCK:
            _CACHE[key] = result
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
    return result


_COMPACT_NOTE = "/ (whitespace between tokens: none or one space, the generation default)"


def _root_default(schema: JSON, spec: bool, enforced: list[str]) -> JSON:
    """The generation default reads an empty root schema as a JSON object (llama.cpp's
    converter does the same): a caller who asks for JSON output means an object."""
    if spec or not (schema is True or schema == {}):
        return schema
    enforced.append("/ (empty schema: a JSON object, the generation default)")
    return {"type": "object"}


class _OverBudget(Exception):
    """The rules written so far are over the size limit (caught by :func:`convert`)."""


def _convert_one(conv: _Converter, schema: JSON, name: str, found: Scan | None = None) -> str:
    if found is None:
        found = scan(schema)  # bounds the depth before anything recursive looks at the schema
        check_schema(schema)
    try:
        conv.set_root(schema, found.anchors)
        return conv.visit(schema, "", name)
    except RecursionError:
        raise UnsupportedSchemaError("the schema nests too deeply to convert (through $ref "
                                     "chains or nesting)", pointer="") from None


def convert_many(schemas: Sequence[JSON], names: Sequence[str], *,
                 strict: bool | Sequence[bool] = False, spec: bool = False,
                 grammar_only: bool = False,
                 ) -> tuple[list[str], dict[str, str], list[Conversion]]:
    """Convert several schemas into one rule set (to embed in a larger grammar).

    ``strict`` may be given per schema; ``spec`` (the shape, see :func:`convert`) applies to
    all. Each schema is its own document for ``$ref``;
    rules that two schemas share (primitives) are written once, rules that only share a
    name are renamed.

    Returns:
        one GBNF expression per schema, the rules they use (no ``root``), and
        one :class:`Conversion` per schema (its ``gbnf`` holds only its own
        expression) with what it enforces and leaves to validation.

    Raises:
        SchemaError: as :func:`convert`; ``index`` on the error says which schema.
    """
    flags = [strict] * len(schemas) if isinstance(strict, bool) else list(strict)
    for compact in (False, True):  # as convert(): declared order, closed objects when too big
        try:
            return _convert_many(schemas, names, flags, spec, grammar_only, compact)
        except _OverBudget:
            continue
    raise UnsupportedSchemaError(f"the grammar of these schemas would be over "
                                 f"{MAX_GBNF_BYTES // 1024} KiB", pointer="")


def _convert_many(schemas: Sequence[JSON], names: Sequence[str], flags: list[bool],
                  spec: bool, grammar_only: bool, compact: bool
                  ) -> tuple[list[str], dict[str, str], list[Conversion]]:
    conv = _Converter(root=None, prop_order=[], dotall=False, strict=False, spec=spec,
                      grammar_only=grammar_only, remote_refs={}, compact=compact)
    exprs: list[str] = []
    reports: list[Conversion] = []
    for index, (schema, name) in enumerate(zip(schemas, names, strict=True)):
        try:
            conv.enforced, conv.validated_only, conv.ignored = [], [], []
            conv.unchecked = []
            conv.strict = flags[index]
            expr = _convert_one(conv, schema, f"{name}-value")
        except SchemaError as exc:
            exc.index = index
            raise
        exprs.append(expr)
        if not spec:
            conv.enforced.append(_COMPACT_NOTE)
        reports.append(Conversion(gbnf=expr, enforced=tuple(dict.fromkeys(conv.enforced)),
                                  validated_only=tuple(dict.fromkeys(conv.validated_only)),
                                  ignored=tuple(dict.fromkeys(conv.ignored)),
                                  unchecked=tuple(dict.fromkeys(conv.unchecked))))
    return exprs, dict(conv.rules), reports


def schema_to_gbnf(schema: JSON, *, prop_order: Sequence[str] | None = None,
                   dotall: bool = False, strict: bool = False, spec: bool = False,
                   grammar_only: bool = False) -> str:
    """The GBNF of :func:`convert` alone."""
    return convert(schema, prop_order=prop_order, dotall=dotall, strict=strict, spec=spec,
                   grammar_only=grammar_only).gbnf
