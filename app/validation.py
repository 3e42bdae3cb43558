"""Request bodies checked against the JSON Schemas in ``schemas/``.

Every error names the field: ``temperature``, ``stop[2]``, ``logit_bias[0][1]``.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import best_match

from app.errors import JSON, InvalidRequest

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"


@functools.cache
def _validator(name: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMA_DIR / f"{name}.json").read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def field_name(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


#: deepest nesting of arrays and objects a body may have (JSON Schemas in real use stay far below)
MAX_DEPTH = 64
#: most items one array of a body may hold: more than any context holds tokens (a prompt of
#: token ids, messages, stops), and more than a vocabulary has entries (a logit_bias list).
#: Checked in the cheap walk after decoding, before schema validation (which takes ~40 us an
#: item: a 4 MB body of 2 million ids took 83 s to be refused).
MAX_ARRAY_ITEMS = 1 << 19


class _NotJson(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not JSON")


def _finite(text: str) -> float | int:
    """A JSON number with a fraction or exponent. An integral one (``5.0``) becomes an int:
    JSON Schema counts it as an integer, and token ids and counts must reach llama.cpp as
    ints (a float token id killed the engine thread; found by the fuzzer)."""
    value = float(text)
    if not math.isfinite(value):
        raise _NotJson(f"the number {text[:40]} is out of range")
    return int(value) if value.is_integer() else value


def _check_depth(data: Any) -> None:
    """Iteratively, so a deep body cannot exhaust the stack of whatever reads it next; also
    bounds the length of every array (:data:`MAX_ARRAY_ITEMS`), naming the field."""
    stack: list[tuple[Any, int, tuple[Any, ...]]] = [(data, 1, ())]
    while stack:
        value, depth, path = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidRequest(f"the request body is nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            stack.extend((v, depth + 1, (*path, k)) for k, v in value.items()
                         if isinstance(v, dict | list))
        elif isinstance(value, list):
            if len(value) > MAX_ARRAY_ITEMS:
                field = field_name(path) or "body"
                raise InvalidRequest(f"invalid value for '{field}': {len(value)} items, over the "
                                     f"limit of {MAX_ARRAY_ITEMS}", param=field)
            stack.extend((v, depth + 1, (*path, i)) for i, v in enumerate(value)
                         if isinstance(v, dict | list))


def parse_json_body(raw: bytes) -> JSON:
    """Decode a JSON request body; it must be an object.

    NaN, Infinity and numbers beyond a float's range are refused (they are not JSON,
    and echoing them back would not be either), as are bodies nested deeper than
    :data:`MAX_DEPTH`.
    """
    data = _decode(raw)
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return data


def parse_json_list(raw: bytes, name: str) -> list[Any]:
    """A JSON array body (llama.cpp's ``POST /lora-adapters``), checked by
    ``schemas/<name>.json`` as :func:`parse_json_body` and :func:`validate` check objects."""
    data = _decode(raw)
    if not isinstance(data, list):
        raise InvalidRequest("the request body must be a JSON array")
    error = best_match(_validator(name).iter_errors(data))
    if error is not None:
        field = field_name(error.absolute_path) or "body"
        raise InvalidRequest(f"invalid value for '{field}': {_describe(error)}", param=field)
    return data


def _decode(raw: bytes) -> Any:
    try:
        data = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite)
    except RecursionError:
        raise InvalidRequest(f"the request body is nested deeper than {MAX_DEPTH} levels"
                             ) from None
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise InvalidRequest(f"malformed JSON body: {exc}") from None
    _check_depth(data)
    return data


def validate(name: str, body: JSON) -> JSON:
    """Check ``body`` against ``schemas/<name>.json``.

    Raises:
        InvalidRequest: naming the first unknown field, or the field of the most
            relevant schema violation.
    """
    validator = _validator(name)
    schema = validator.schema
    assert isinstance(schema, dict)
    known = schema.get("properties", {})
    if schema.get("additionalProperties") is False:
        for key in body:
            if key not in known:
                raise InvalidRequest(f"unknown field '{key}'", param=key)
    error = best_match(validator.iter_errors(body))
    if error is None:
        return body
    field = field_name(error.absolute_path) or "body"
    raise InvalidRequest(f"invalid value for '{field}': {_describe(error)}", param=field)


def _describe(error: jsonschema.ValidationError) -> str:
    if error.validator in ("anyOf", "oneOf"):
        return f"{json.dumps(error.instance)[:80]} does not have an accepted type or shape"
    return str(error.message)
