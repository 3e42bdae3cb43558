"""Checking generated text against its JSON Schema (jsonschema)."""

from __future__ import annotations

import base64
import binascii
import functools
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


def _int_between(lo: int, hi: int) -> Any:
    def check(instance: object) -> bool:
        return not isinstance(instance, int) or isinstance(instance, bool) or lo <= instance <= hi
    return check


def _base64(instance: object) -> bool:
    if not isinstance(instance, str):
        return True
    try:
        base64.b64decode(instance, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


#: OpenAPI's formats (common in tool schemas), checked as OpenAPI 3 defines them.
OPENAPI_FORMATS: dict[str, Any] = {
    "int32": _int_between(-(2**31), 2**31 - 1), "int64": _int_between(-(2**63), 2**63 - 1),
    "float": lambda _: True, "double": lambda _: True, "byte": _base64,
    "binary": lambda _: True, "password": lambda _: True,
}


class _Formats(jsonschema.FormatChecker):
    """jsonschema's checkers, OpenAPI's, and a failure for any other format: a value whose
    format this server cannot check is reported, never passed as valid."""

    def check(self, instance: object, format: str) -> None:
        if format not in self.checkers:
            raise jsonschema.exceptions.FormatError(
                f"format {format!r} cannot be checked by this server (no checker installed): "
                f"{instance!r} was not validated")
        super().check(instance, format)


@functools.cache
def format_checker(cls: Any) -> jsonschema.FormatChecker:
    """The format checker validation uses for a draft's validator class."""
    checker = _Formats()
    checker.checkers = dict(cls.FORMAT_CHECKER.checkers)
    for name, func in OPENAPI_FORMATS.items():
        checker.checkers.setdefault(name, (func, ()))
    return checker


def validator_class(schema: Any) -> Any:
    """The validator class of ``schema``'s draft (``$schema``; 2020-12 when absent or unknown)."""
    if isinstance(schema, dict) and not isinstance(schema.get("$schema", ""), str):
        return jsonschema.Draft202012Validator
    return jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)


def checked_formats(schema: Any) -> frozenset[str]:
    """The formats validation checks for ``schema``'s draft."""
    return frozenset(format_checker(validator_class(schema)).checkers)


def _pointer(path: Any) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def validate(text: str, schema: Any) -> Result:
    """Parse ``text`` as JSON and validate it against ``schema``.

    The draft comes from ``$schema`` (default 2020-12); ``format`` is checked
    with jsonschema's format checkers and OpenAPI's; a format neither knows is a
    violation ("cannot be checked"), never passed as valid. Every violation is listed with
    its JSON pointer, in document order.
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return Result(False, (Violation("", f"not valid JSON: {exc}"),))
    except RecursionError:
        return Result(False, (Violation("", "not checked: the JSON nests too deeply"),))
    cls = validator_class(schema)
    validator = cls(schema, format_checker=format_checker(cls))
    try:
        errors = sorted(validator.iter_errors(value),
                        key=lambda e: [str(p) for p in e.absolute_path])
    except UnsupportedPattern as exc:  # refused before generation; kept fail-closed here
        return Result(False, (Violation("", f"cannot be checked: {exc}"),), value)
    except RecursionError:
        return Result(False, (Violation("", "not checked: the value nests too deeply"),), value)
    except Exception as exc:  # a verdict, never an exception (fail closed)
        # e.g. OverflowError from multipleOf on a number json.loads read as inf, or a $ref
        # the validator cannot resolve: the reply is reported as not validated
        return Result(False, (Violation("", f"could not be checked: {type(exc).__name__}: "
                                            f"{exc}"[:500]),), value)
    return Result(not errors, tuple(Violation(_pointer(e.absolute_path), e.message) for e in errors),
                  value)
