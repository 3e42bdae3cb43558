"""The grammar package's error hierarchy.

Every error names the place it is about: a JSON pointer into a schema, or a
line and column in a GBNF text.
"""

from __future__ import annotations


class GrammarError(Exception):
    """Base class of every error raised by :mod:`grammar`."""


class GbnfSyntaxError(GrammarError):
    """A GBNF text that llama.cpp would refuse (or crash on).

    Attributes:
        line: 1-based line of the offending character (0 when the error is about the
            grammar as a whole, such as a missing ``root`` rule).
        column: 1-based column.
        context: an excerpt of the text around the place, with a caret under it.
    """

    def __init__(self, message: str, *, line: int = 0, column: int = 0, context: str = "") -> None:
        self.message = message
        self.line = line
        self.column = column
        self.context = context
        where = f" at line {line}, column {column}" if line else ""
        text = f"{message}{where}"
        if context:
            text = f"{text}\n{context}"
        super().__init__(text)


class GrammarTooLarge(GbnfSyntaxError):
    """A grammar over :data:`grammar.gbnf.MAX_GBNF_BYTES`, refused before it is parsed."""


class SchemaError(GrammarError):
    """Base class of the errors about a JSON Schema; ``pointer`` locates the problem."""

    def __init__(self, message: str, *, pointer: str = "") -> None:
        self.message = message
        self.pointer = pointer
        self.index: int | None = None  # which schema, when several were converted together
        super().__init__(f"{message} (at {pointer or '/'})" if pointer is not None else message)


class InvalidSchemaError(SchemaError):
    """The schema is not a valid JSON Schema."""


class UnsupportedSchemaError(SchemaError):
    """The schema is valid but uses a feature no grammar can enforce."""

    def __init__(self, message: str, *, pointer: str = "", keyword: str = "") -> None:
        self.keyword = keyword
        super().__init__(message, pointer=pointer)


def excerpt(text: str, line: int, column: int) -> str:
    if not text:
        return ""
    lines = text.splitlines() or [""]
    if not 1 <= line <= len(lines):
        return ""
    src = lines[line - 1]
    start = max(0, column - 40)
    return f"  {src[start:start + 80]}\n  {' ' * (column - 1 - start)}^"


def error_at(text: str, message: str, line: int, column: int) -> GbnfSyntaxError:
    return GbnfSyntaxError(message, line=line, column=column, context=excerpt(text, line, column))


def escape_pointer(part: str) -> str:
    """One JSON-pointer reference token (RFC 6901)."""
    return part.replace("~", "~0").replace("/", "~1")
