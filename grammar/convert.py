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
at most :data:`~grammar.scalars.DEFAULT_MAX_LENGTH` characters, an empty root schema is an object.
In both shapes: integers have at most 16 digits, exponents two (every number is a
finite double); whitespace between tokens is at most one newline and 20 spaces
or tabs; strings produced by a negated character class never contain quotes,
backslashes or control characters.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from grammar.converter import Converter, OverBudget
from grammar.errors import SchemaError, UnsupportedSchemaError
from grammar.gbnf import MAX_GBNF_BYTES
from grammar.schema_check import Scan, check_schema, scan

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
    ``format`` or ``pattern`` holds at most :data:`~grammar.scalars.DEFAULT_MAX_LENGTH` characters; an empty
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
        conv = Converter(root=None, prop_order=list(prop_order or ()), dotall=dotall,
                          strict=strict, spec=spec, grammar_only=grammar_only,
                          remote_refs=dict(remote_refs or {}), compact=compact)
        try:
            root = _convert_one(conv, _root_default(schema, spec, conv.enforced), "root-value",
                                found)
        except OverBudget:  # stopped as soon as the rules passed the limit: each try is bounded
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


def _convert_one(conv: Converter, schema: JSON, name: str, found: Scan | None = None) -> str:
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
        except OverBudget:
            continue
    raise UnsupportedSchemaError(f"the grammar of these schemas would be over "
                                 f"{MAX_GBNF_BYTES // 1024} KiB", pointer="")


def _convert_many(schemas: Sequence[JSON], names: Sequence[str], flags: list[bool],
                  spec: bool, grammar_only: bool, compact: bool
                  ) -> tuple[list[str], dict[str, str], list[Conversion]]:
    conv = Converter(root=None, prop_order=[], dotall=False, strict=False, spec=spec,
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
