"""A schema document checked before conversion: valid against its meta-schema, nested no
deeper than the converter takes, and its plain-name anchors indexed (by its draft)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jsonschema
import jsonschema_rs

from grammar.errors import InvalidSchemaError, UnsupportedSchemaError, escape_pointer
from grammar.validate import validator_class

JSON = Any


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
