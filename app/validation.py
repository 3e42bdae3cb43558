"""Request bodies checked against the JSON Schemas in ``schemas/``.

Every error names the field: ``temperature``, ``stop[2]``, ``logit_bias[0][1]``.
"""

from __future__ import annotations

import functools
import json
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


def parse_json_body(raw: bytes) -> JSON:
    """Decode a JSON request body; it must be an object."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"malformed JSON body: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
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
