"""Pure grammar tools: GBNF parsing and checks (and, later, JSON Schema conversion).

Imports nothing from ``app``, trio, quart or llama_cpp.
"""

from grammar.errors import (
    GbnfSyntaxError,
    GrammarError,
    InvalidSchemaError,
    SchemaError,
    UnsupportedSchemaError,
)
from grammar.gbnf import Grammar, parse_gbnf

__all__ = [
    "GbnfSyntaxError",
    "Grammar",
    "GrammarError",
    "InvalidSchemaError",
    "SchemaError",
    "UnsupportedSchemaError",
    "parse_gbnf",
]
