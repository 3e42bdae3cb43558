"""A fast path for :func:`grammar.parse_gbnf`: a hand-written tokenizer and recursive-descent
parser for the same syntax as ``gbnf.lark`` (with the post-lexer's newline rules), building
the same tree with the same node constructors.

It only ever answers for well-formed grammars: on anything it does not accept (a syntax error,
an escape llama.cpp refuses, a repetition over the cap, a rule defined twice, nesting over the
limit) it returns None and the lark parser decides, with its error message and position. Lark
costs ~20 us per token here; this parser is several times faster on large converted grammars.
A differential test (``tests/unit/test_gbnf.py``) compares the two on valid and broken texts.
"""

from __future__ import annotations

import re
from typing import Any

from lark.lexer import Token as LarkToken

from grammar.errors import GbnfSyntaxError
from grammar.gbnf_ast import Alternatives, Node, Sequence

_TOKENS = re.compile(r"""
 (?P<WS>[ \t]+)
|(?P<COMMENT>\#[^\r\n]*)
|(?P<NL>\r\n?|\n)
|(?P<DEF>::=)
|(?P<OR>\|)
|(?P<LPAR>\()
|(?P<RPAR>\))
|(?P<DOT>\.)
|(?P<STAR>\*)
|(?P<PLUS>\+)
|(?P<QMARK>\?)
|(?P<BRACES>\{[ \t]*[0-9]+[ \t]*(?:,[ \t]*(?:[0-9]+[ \t]*)?)?\})
|(?P<STRING>"(?:\\[^\r\n]|[^"\\])*")
|(?P<CHARCLASS>\[(?:\\[^\r\n]|[^\]\\])*\])
|(?P<TOKEN>!?<(?:\[[0-9]+\]|[^>\s]+)>)
|(?P<NAME>[a-zA-Z0-9-]+)
""", re.VERBOSE | re.DOTALL)
_ATOMS = frozenset({"STRING", "CHARCLASS", "TOKEN", "NAME", "DOT", "LPAR"})
_QUANTIFIERS = frozenset({"STAR", "PLUS", "QMARK", "BRACES"})


class _Fail(Exception):
    pass


def _tokens(text: str) -> list[LarkToken]:
    """The token stream lark's lexer and post-lexer give (comments, blanks and the newlines
    llama.cpp skips dropped), or :class:`_Fail`."""
    out: list[LarkToken] = []
    pos, line, line_start, depth = 0, 1, 0, 0
    previous = ""
    n = len(text)
    match = _TOKENS.match
    while pos < n:
        m = match(text, pos)
        if m is None:
            raise _Fail
        kind = m.lastgroup or ""
        value = m.group()
        if kind == "NL":
            if depth == 0 and previous not in ("DEF", "OR", "NL", ""):
                out.append(LarkToken("NL", value, line=line, column=pos - line_start + 1))
                previous = "NL"
            line += 1
            line_start = m.end()
        elif kind not in ("WS", "COMMENT"):
            if kind == "LPAR":
                depth += 1
            elif kind == "RPAR":
                depth = max(0, depth - 1)
            if kind in ("STRING", "CHARCLASS") and ("\n" in value or "\r" in value):
                raise _Fail  # positions after a newline inside a token: let lark count
            out.append(LarkToken(kind, value, line=line, column=pos - line_start + 1))
            previous = kind
        pos = m.end()
    return out


class _Parser:
    def __init__(self, tokens: list[LarkToken], builder: Any, max_nesting: int) -> None:
        self.toks = tokens
        self.i = 0
        self.b = builder
        self.max_nesting = max_nesting

    def kind(self) -> str:
        return self.toks[self.i].type if self.i < len(self.toks) else ""

    def rules(self) -> dict[str, Alternatives]:
        rules: dict[str, Alternatives] = {}
        while self.i < len(self.toks):
            if self.kind() == "NL":
                self.i += 1
                continue
            if self.kind() != "NAME" or self.i + 1 >= len(self.toks) or \
                    self.toks[self.i + 1].type != "DEF":
                raise _Fail
            name = str(self.toks[self.i])
            self.i += 2
            alts = self.alternates(0)
            if self.kind() not in ("NL", "") or name in rules:
                raise _Fail
            rules[name] = alts
        return rules

    def alternates(self, depth: int) -> Alternatives:
        seqs = [self.sequence(depth)]
        while self.kind() == "OR":
            self.i += 1
            seqs.append(self.sequence(depth))
        return Alternatives(tuple(seqs))

    def sequence(self, depth: int) -> Sequence:
        items: list[Node] = []
        b = self.b
        while self.kind() in _ATOMS:
            tok = self.toks[self.i]
            self.i += 1
            kind = tok.type
            atom: Any
            if kind == "STRING":
                atom = b.literal([tok])
            elif kind == "CHARCLASS":
                atom = b.charclass([tok])
            elif kind == "NAME":
                atom = b.ref([tok])
            elif kind == "TOKEN":
                atom = b.token([tok])
            elif kind == "DOT":
                atom = b.any_char([])
            else:
                if depth + 1 > self.max_nesting:
                    raise _Fail
                atom = self.alternates(depth + 1)
                if self.kind() != "RPAR":
                    raise _Fail
                self.i += 1
            if self.kind() in _QUANTIFIERS:
                quant = b.quantifier([self.toks[self.i]])
                self.i += 1
                atom = b.item([atom, quant])
            items.append(atom)
        return Sequence(tuple(items))


def parse_fast(text: str, builder: Any, max_nesting: int) -> dict[str, Alternatives] | None:
    """The rules of ``text``, or None where lark must decide (anything not well-formed)."""
    try:
        return _Parser(_tokens(text), builder, max_nesting).rules()
    except (_Fail, GbnfSyntaxError):
        return None
