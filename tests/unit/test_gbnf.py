"""The GBNF parser and its checks, against llama.cpp's rules."""

from __future__ import annotations

import pytest

from grammar import GbnfSyntaxError, parse_gbnf
from grammar.gbnf import CharClass, Literal, Repeat, RuleRef, TokenRef


def test_parses_rules_alternatives_groups_and_quantifiers() -> None:
    g = parse_gbnf(
        '# a comment\n'
        'root ::= "a" ( b |\n   "c" )* [a-z\\-]{1,3} # trailing\n'
        'b ::= "x\\n" <[12]> !<foo> . | "\\u00e9"\n'
    )
    assert list(g.rules) == ["root", "b"]
    first = g.rules["root"].options[0].items
    assert first[0] == Literal("a")
    assert isinstance(first[1], Repeat)
    assert first[1].min == 0
    assert first[1].max is None
    assert first[2] == Repeat(CharClass(False, ((ord("a"), ord("z")), (ord("-"), ord("-")))), 1, 3)
    b = g.rules["b"].options
    assert b[0].items[0] == Literal("x\n")
    assert b[0].items[1] == TokenRef(12, False)
    assert b[0].items[2] == TokenRef("<foo>", True)
    assert b[1].items[0] == Literal("é")


def test_empty_alternative_is_allowed() -> None:
    g = parse_gbnf('root ::= "a" | ')
    assert len(g.rules["root"].options) == 2


def test_newline_after_operator_continues_the_rule() -> None:
    g = parse_gbnf('root ::=\n  "a" |\n  "b"\n')
    assert len(g.rules["root"].options) == 2


@pytest.mark.parametrize(
    ("text", "message", "line", "column"),
    [
        ('root ::= "a" b', "undefined rule 'b'", 1, 14),
        ('root ::= "\\q"', "unknown escape \\q", 1, 11),
        ('root ::= "a"\n| "b"', "unexpected '|'", 2, 1),
        ('root ::= [z-a]', "empty range", 1, 10),
        ('root ::= "\\x4"', "expecting 2 hex digits", 1, 11),
        ('root ::= "a"{2001}', "exceeds llama.cpp's limit", 1, 13),
        ('root ::= "a"{3,2}', "below its minimum", 1, 13),
        ('root ::= "a"\nroot ::= "b"', "defined twice", 2, 1),
        ('root ::= "unterminated', "unexpected character", 1, 10),
        ('root ::= []', "empty character class", 1, 10),
        ('root := "a"', "unexpected character", 1, 6),
    ],
)
def test_errors_name_line_and_column(text: str, message: str, line: int, column: int) -> None:
    with pytest.raises(GbnfSyntaxError) as info:
        parse_gbnf(text)
    assert message in info.value.message
    assert (info.value.line, info.value.column) == (line, column)
    assert "^" in str(info.value)


def test_missing_root() -> None:
    with pytest.raises(GbnfSyntaxError, match="no 'root' rule"):
        parse_gbnf('start ::= "a"')


def test_empty_grammar() -> None:
    with pytest.raises(GbnfSyntaxError, match="no 'root' rule"):
        parse_gbnf("")


@pytest.mark.parametrize(
    "text",
    [
        'root ::= root "a"',
        'root ::= x\nx ::= "a"? root',
        'root ::= x "b"\nx ::= y\ny ::= x | "c"',
        'root ::= e* root',
        'root ::= e root\ne ::= "x"?',
    ],
)
def test_left_recursion_is_refused(text: str) -> None:
    with pytest.raises(GbnfSyntaxError, match="left recursion"):
        parse_gbnf(text + ("\ne ::= \"x\"" if "e" in text and "e ::=" not in text else ""))


def test_right_recursion_is_fine() -> None:
    parse_gbnf('root ::= "a" root | "b"')


def test_nested_repetition_over_the_cap_is_refused() -> None:
    with pytest.raises(GbnfSyntaxError, match=r"over llama\.cpp's limit"):
        parse_gbnf('root ::= ("a"{0,50}){50}')
    parse_gbnf('root ::= ("a"{50}){50}')  # no helper rules inside: llama.cpp accepts it


def test_rule_refs_keep_positions() -> None:
    g = parse_gbnf('root ::= a\na ::= "x"')
    ref = g.rules["root"].options[0].items[0]
    assert ref == RuleRef("a", 1, 10)
