"""Pure grammar tools: JSON Schema to GBNF, a GBNF parser and recognizer, output validation.

Imports nothing from ``app``, trio, quart or llama_cpp.
"""

from grammar.convert import Conversion, convert, schema_to_gbnf
from grammar.errors import (
    GbnfSyntaxError,
    GrammarError,
    GrammarTooLarge,
    InvalidSchemaError,
    SchemaError,
    UnsupportedSchemaError,
)
from grammar.gbnf import Grammar, parse_gbnf
from grammar.recognize import Recognizer, accepts
from grammar.validate import Result, Violation, validate

__all__ = [
    "Conversion",
    "GbnfSyntaxError",
    "Grammar",
    "GrammarError",
    "GrammarTooLarge",
    "InvalidSchemaError",
    "Recognizer",
    "Result",
    "SchemaError",
    "UnsupportedSchemaError",
    "Violation",
    "accepts",
    "convert",
    "parse_gbnf",
    "schema_to_gbnf",
    "validate",
]
