"""The walk of a schema that writes its grammar's rules: a rule per subschema, ``$ref``
resolution (recursion allowed), ``allOf`` merged, types and keywords dispatched to the
scalar (:mod:`grammar.scalars`) and container (:mod:`grammar.containers`) rules, and for
every constraining keyword a record of whether the grammar enforces it.

:func:`grammar.convert.convert` drives it; nothing here is public.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from grammar.containers import ContainerRules
from grammar.errors import InvalidSchemaError, UnsupportedSchemaError
from grammar.gbnf import MAX_GBNF_BYTES
from grammar.gbnf_text import MAX_COUNT, rule_name
from grammar.keywords import (
    ALL_TYPES,
    ANNOTATIONS,
    CONSTRAINING,
    TYPE_KEYWORDS,
    VALIDATED_ONLY,
)
from grammar.merge import constraining, merge
from grammar.primitives import PRIMITIVE_DEPS, PRIMITIVES, SPACE_COMPACT
from grammar.regex import pattern_to_gbnf
from grammar.scalars import ScalarRules, string_enum
from grammar.schema_check import scan

JSON = Any


class OverBudget(Exception):
    """The rules written so far are over the size limit (caught by :func:`convert`)."""


_RESERVED = frozenset(PRIMITIVES) | {"root"}


@dataclass
class Converter(ContainerRules, ScalarRules):
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
            raise OverBudget
        self.rules[name] = body
        if body:
            self.bodies[body] = name
        return name

    def fresh(self, name: str) -> str:
        """An unused rule name from ``name`` (``name``, then ``name-2``, ``name-3``, ...)."""
        base = rule_name(name)
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
        name = rule_name(ref.rpartition("/")[2] or "root-ref")
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
                return self.add_rule(name, string_enum(tuple(values)))  # the common case
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
