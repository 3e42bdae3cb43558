"""Checking generated text against its JSON Schema (jsonschema)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import jsonschema

from grammar.linear_regex import UnsupportedPattern, install_for_jsonschema

install_for_jsonschema()  # patterns from schemas are matched by RE2, never by backtracking


@dataclass(frozen=True, slots=True)
class Violation:
    pointer: str  # JSON pointer into the instance ("" for the whole document)
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"pointer": self.pointer, "message": self.message}


@dataclass(frozen=True, slots=True)
class Result:
    valid: bool
    errors: tuple[Violation, ...]
    value: Any = None  # the parsed JSON when it parsed


def _pointer(path: Any) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def validate(text: str, schema: Any) -> Result:
    """Parse ``text`` as JSON and validate it against ``schema``.

    The draft comes from ``$schema`` (default 2020-12); ``format`` is checked
    with jsonschema's format checker. Every violation is listed with its JSON
    pointer, in document order.
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return Result(False, (Violation("", f"not valid JSON: {exc}"),))
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    try:
        errors = sorted(validator.iter_errors(value),
                        key=lambda e: [str(p) for p in e.absolute_path])
    except UnsupportedPattern as exc:  # refused before generation; kept fail-closed here
        return Result(False, (Violation("", f"cannot be checked: {exc}"),), value)
    return Result(not errors, tuple(Violation(_pointer(e.absolute_path), e.message) for e in errors),
                  value)
