"""The GBNF parser and its checks, against llama.cpp's rules."""

from __future__ import annotations

import os

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


def _lark_rules(text: str) -> object:
    from grammar.gbnf import _parser

    try:
        return _parser().parse(text)
    except Exception as exc:  # any refusal counts
        return type(exc)


def _corpus() -> list[str]:
    import json
    from pathlib import Path

    from grammar import convert
    from tests.grammar.test_real_world import REAL_WORLD

    cases = Path(__file__).resolve().parents[1] / "grammar" / "cases"
    texts = [p.read_text(encoding="utf-8") for p in sorted(cases.glob("*.gbnf"))]
    texts += [convert(schema).gbnf for _n, schema, _v, _i in REAL_WORLD]
    texts += [convert(json.loads(p.read_text(encoding="utf-8"))["schema"], strict=True).gbnf
              for p in sorted(cases.glob("*.json"))]
    texts += ['root ::= "a" | # comment\n  [b-d]+ (x)?\nx ::= <[12]> !<foo> . "\\u00e9"{2,3}\n',
              "root ::=\n  a\n\n\na ::= ( \"x\"\n | \"y\" )*\r\n", 'root ::= "\\x41" [\\-^\\]]']
    return texts


def test_the_fast_parser_builds_the_same_tree_as_lark() -> None:
    from grammar.gbnf import _BUILDER, MAX_NESTING
    from grammar.gbnf_fast import parse_fast

    for text in _corpus():
        fast = parse_fast(text, _BUILDER, MAX_NESTING)
        assert fast is not None, text[:200]
        assert fast == _lark_rules(text)


def test_the_fast_parser_never_accepts_what_lark_refuses() -> None:
    """Random cuts, insertions and swaps in valid grammars: where lark refuses the text, the
    fast parser leaves it to lark (None); where it accepts, both build the same tree."""
    import random

    from grammar.gbnf import _BUILDER, MAX_NESTING
    from grammar.gbnf_fast import parse_fast

    rng = random.Random(int(os.environ.get("SLUICE_FUZZ_SEED", "11")))
    pieces = [*'"[]()|*+?{}.,:=<>!#\\-^\n\t abx019', "::=", "\\x4", "\\u12", "{2,", "\r\n"]
    checked = refused = 0
    for text in _corpus():
        for _ in range(int(os.environ.get("SLUICE_FUZZ_ROUNDS", "60"))):
            chars = list(text[:600])
            for _ in range(rng.randint(1, 3)):
                at = rng.randrange(len(chars) + 1)
                op = rng.random()
                if op < 0.4 and chars:
                    del chars[min(at, len(chars) - 1)]
                elif op < 0.8:
                    chars.insert(at, rng.choice(pieces))
                elif chars:
                    chars[min(at, len(chars) - 1)] = rng.choice(pieces)
            mutated = "".join(chars)
            lark_result = _lark_rules(mutated)
            fast = parse_fast(mutated, _BUILDER, MAX_NESTING)
            checked += 1
            if isinstance(lark_result, type):
                refused += 1
                assert fast is None, mutated
            elif fast is not None:
                assert fast == lark_result, mutated
    assert refused > checked // 4  # the mutations do break grammars


def test_a_token_id_that_is_not_digits_is_a_syntax_error() -> None:
    """Found by the differential test: ``<[1(]>`` raised ValueError (a 500) from int()."""
    for text in ("root ::= <[1(]>", "root ::= !<[12x]>", "root ::= <[]>"):
        with pytest.raises(GbnfSyntaxError):
            parse_gbnf(text)
    assert parse_gbnf("root ::= <[12]> !<[7]>").uses_tokens
