"""Regular expressions from users, matched in linear time (RE2), never by backtracking.

Python's ``re`` backtracks: a pattern such as ``(a+)+$`` against a long string
runs for minutes holding the GIL, which freezes every thread of the server,
the event loop included, even when the match runs in a worker. Every pattern a
client supplies (``pattern`` and ``patternProperties`` in a JSON Schema that is
validated after generation, llm-api's ``stopRegex``) goes through here.
RE2 has no look-around and no back-references; such a pattern is refused with
:class:`UnsupportedPattern` before any work starts.

:func:`install_for_jsonschema` makes jsonschema's keyword implementations
(``pattern``, ``patternProperties``, ``additionalProperties``,
``unevaluatedProperties`` and their legacy-draft forms, which all call
``re.search``) match with RE2 as well.
"""

from __future__ import annotations

import functools
from typing import Any

import re2

from grammar.errors import GrammarError

__all__ = ["UnsupportedPattern", "check_schema_patterns", "compile_linear", "install_for_jsonschema",
           "search"]

#: the longest pattern accepted
MAX_PATTERN_CHARS = 4096

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # an invalid pattern is the client's error, reported to it
_OPTIONS.max_mem = 8 << 20  # RE2's own bound on the compiled program


class UnsupportedPattern(GrammarError):
    """A pattern RE2 cannot run (look-around, back-references, too long or invalid)."""

    def __init__(self, pattern: str, reason: str) -> None:
        self.pattern = pattern
        self.reason = reason
        self.pointer = ""  # where in a schema, when found by check_schema_patterns
        super().__init__(f"pattern {pattern[:80]!r} cannot be matched in linear time: {reason}")


@functools.lru_cache(maxsize=1024)
def compile_linear(pattern: str) -> Any:
    """The RE2 program for ``pattern`` (Python/ECMA syntax without look-around or back-references).

    Raises:
        UnsupportedPattern: RE2 refuses it, or it is over :data:`MAX_PATTERN_CHARS`.
    """
    if len(pattern) > MAX_PATTERN_CHARS:
        raise UnsupportedPattern(pattern, f"longer than {MAX_PATTERN_CHARS} characters")
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        message = exc.args[0] if exc.args else "invalid pattern"
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        raise UnsupportedPattern(pattern, str(message)) from None


def search(pattern: str, string: str, flags: int = 0) -> Any:
    """``re.search`` with RE2 (``flags`` must be 0)."""
    if flags:
        raise ValueError("flags are not supported")
    return compile_linear(pattern).search(string)


class _LinearRe:
    """Stands in for the ``re`` module inside jsonschema's keyword modules (only ``search``)."""

    search = staticmethod(search)
    error = re2.error


@functools.cache
def install_for_jsonschema() -> None:
    """Route jsonschema's ``re.search`` calls through RE2 (idempotent).

    jsonschema < 5 calls ``re.search`` in these three modules and uses nothing
    else of ``re`` there; the pin in pyproject.toml keeps it so.
    """
    from jsonschema import _keywords, _legacy_keywords, _utils

    for module in (_keywords, _legacy_keywords, _utils):
        module.re = _LinearRe  # type: ignore[attr-defined]


def check_schema_patterns(schema: Any) -> None:
    """Refuse a schema with a ``pattern`` or ``patternProperties`` key RE2 cannot run.

    Walks iteratively (a schema can be deep). A ``pattern`` property *name* under
    ``properties`` is not a pattern and is left alone.

    Raises:
        UnsupportedPattern: with ``pointer`` set to where the pattern is.
    """
    from grammar.errors import escape_pointer

    stack: list[tuple[Any, str, str]] = [(schema, "", "")]
    while stack:
        node, pointer, parent_key = stack.pop()
        if isinstance(node, list):
            stack.extend((v, f"{pointer}/{i}", "") for i, v in enumerate(node))
            continue
        if not isinstance(node, dict):
            continue
        naming = parent_key in ("properties", "patternProperties", "$defs", "definitions",
                                "dependentSchemas")
        for key, value in node.items():
            where = f"{pointer}/{escape_pointer(str(key))}"
            try:
                if not naming and key == "pattern" and isinstance(value, str):
                    compile_linear(value)
                if not naming and key == "patternProperties" and isinstance(value, dict):
                    for name in value:
                        compile_linear(name)
            except UnsupportedPattern as exc:
                exc.pointer = where
                raise
            stack.append((value, where, str(key) if not naming else ""))
