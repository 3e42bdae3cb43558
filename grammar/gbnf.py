"""A parser and checker for llama.cpp's GBNF grammar format.

llama.cpp parses GBNF in C++ and, on some inputs, refuses it only after it was
handed over, or aborts the whole process. The server therefore parses every
grammar here first: :func:`parse_gbnf` returns a typed syntax tree or raises
:class:`~grammar.errors.GbnfSyntaxError` with the line, the column and an
excerpt of the text.

The accepted syntax follows ``src/llama-grammar.cpp`` of the llama.cpp vendored
by llama-cpp-python 0.3.36: rule names are ``[a-zA-Z0-9-]+``; a rule ends at a
newline unless the newline follows ``::=`` or ``|`` or sits inside parentheses;
literals and character classes know the escapes ``\\x.. \\u.... \\U........
\\t \\r \\n \\\\ \\" \\[ \\] \\-``; quantifiers are ``* + ? {m} {m,} {m,n}``;
``<[id]>``, ``<piece>`` and their ``!`` negations name tokens.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from importlib import resources

import lark
from lark.lexer import Token as LarkToken

from grammar.errors import GbnfSyntaxError, GrammarTooLarge, error_at
from grammar.gbnf_ast import (
    MAX_REPETITION,
    Alternatives,
    AnyChar,
    CharClass,
    Grammar,
    Literal,
    Node,
    Repeat,
    RuleRef,
    Sequence,
    TokenRef,
)
from grammar.gbnf_checks import check
from grammar.gbnf_fast import parse_fast

__all__ = [
    "MAX_REPETITION", "Alternatives", "AnyChar", "CharClass", "Grammar", "Literal", "Node",
    "Repeat", "RuleRef", "Sequence", "TokenRef", "parse_gbnf",
]

#: The deepest parenthesis nesting accepted: llama.cpp's parser recurses once per level, in
#: C++, and so does the tree builder here (about 130 levels fit in Python's default limit).
MAX_NESTING = 100

_SIMPLE_ESCAPES = {"t": "\t", "r": "\r", "n": "\n", "\\": "\\", '"': '"', "[": "[", "]": "]", "-": "-"}
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}


class _Postlex(lark.lark.PostLex):
    """Drops the newlines llama.cpp skips: inside parentheses and after ``::=`` / ``|``."""

    always_accept = ("_NL",)

    def process(self, stream: Iterator[LarkToken]) -> Iterator[LarkToken]:
        depth = 0
        previous = ""
        for tok in stream:
            if tok.type == "_NL" and (depth > 0 or previous in ("_DEF", "_OR", "_NL", "")):
                continue
            if tok.type == "_LPAR":
                depth += 1
                if depth > MAX_NESTING:
                    raise GbnfSyntaxError(f"parentheses nested too deeply (over {MAX_NESTING})",
                                          line=tok.line or 0, column=tok.column or 0)
            elif tok.type == "_RPAR":
                depth = max(0, depth - 1)
            previous = tok.type
            yield tok


@functools.cache
def _parser() -> lark.Lark:
    text = resources.files("grammar").joinpath("gbnf.lark").read_text(encoding="utf-8")
    return lark.Lark(text, parser="lalr", postlex=_Postlex(), propagate_positions=False,
                     maybe_placeholders=False, transformer=_BUILDER)


def _decode_chars(raw: str, tok: LarkToken, text: str) -> list[int]:
    """Decode the body of a literal or class into code points, as llama.cpp's parse_char."""
    out: list[int] = []
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch != "\\":
            out.append(ord(ch))
            i += 1
            continue
        nxt = raw[i + 1] if i + 1 < len(raw) else ""
        if nxt in _SIMPLE_ESCAPES:
            out.append(ord(_SIMPLE_ESCAPES[nxt]))
            i += 2
        elif nxt in _HEX_ESCAPES:
            size = _HEX_ESCAPES[nxt]
            digits = raw[i + 2 : i + 2 + size]
            if len(digits) != size or any(c not in "0123456789abcdefABCDEF" for c in digits):
                raise error_at(text, f"expecting {size} hex digits after \\{nxt}",
                                tok.line or 0, (tok.column or 0) + 1 + i)
            value = int(digits, 16)
            if value > 0x10FFFF:
                raise error_at(text, f"code point {digits} is beyond Unicode",
                                tok.line or 0, (tok.column or 0) + 1 + i)
            out.append(value)
            i += 2 + size
        else:
            raise error_at(text, f"unknown escape \\{nxt}", tok.line or 0, (tok.column or 0) + 1 + i)
    return out


class _Builder(lark.Transformer[LarkToken, object]):
    """Builds the syntax tree while LALR parses (no parse tree in between). Stateless, so one
    instance serves every thread; its errors carry line and column, and the excerpt is added
    by :func:`parse_gbnf`."""

    _text = ""

    def literal(self, children: list[LarkToken]) -> Literal:
        tok = children[0]
        codes = _decode_chars(str(tok)[1:-1], tok, self._text)
        return Literal("".join(chr(c) for c in codes))

    def charclass(self, children: list[LarkToken]) -> CharClass:
        tok = children[0]
        body = str(tok)[1:-1]
        negated = body.startswith("^")
        if negated:
            body = body[1:]
        codes = _decode_chars(body, tok, self._text)
        # A raw '-' between two characters makes a range; an escaped '\-' never does.
        raw_dash = _raw_dash_positions(body)
        ranges: list[tuple[int, int]] = []
        i = 0
        while i < len(codes):
            if i + 2 < len(codes) + 0 and raw_dash[i + 1] and i + 2 <= len(codes) - 1:
                lo, hi = codes[i], codes[i + 2]
                if hi < lo:
                    raise error_at(self._text, f"empty range {chr(lo)!r}-{chr(hi)!r} in class",
                                    tok.line or 0, tok.column or 0)
                ranges.append((lo, hi))
                i += 3
            else:
                ranges.append((codes[i], codes[i]))
                i += 1
        if not ranges:
            raise error_at(self._text, "empty character class", tok.line or 0, tok.column or 0)
        return CharClass(negated, tuple(ranges))

    def token(self, children: list[LarkToken]) -> TokenRef:
        raw = str(children[0])
        negated = raw.startswith("!")
        inner = raw[2:-1] if negated else raw[1:-1]
        if inner.startswith("["):
            digits = inner[1:-1]
            if not inner.endswith("]") or not digits.isascii() or not digits.isdigit():
                tok = children[0]
                raise error_at(self._text, "a token id is written <[digits]>", tok.line or 0,
                               tok.column or 0)
            return TokenRef(int(digits), negated)
        return TokenRef(f"<{inner}>", negated)

    def ref(self, children: list[LarkToken]) -> RuleRef:
        tok = children[0]
        return RuleRef(str(tok), tok.line or 0, tok.column or 0)

    def any_char(self, children: list[object]) -> AnyChar:
        return AnyChar()

    def group(self, children: list[Alternatives]) -> Alternatives:
        return children[0]

    def quantifier(self, children: list[LarkToken]) -> tuple[int, int | None, LarkToken]:
        tok = children[0]
        raw = str(tok)
        if raw == "*":
            return (0, None, tok)
        if raw == "+":
            return (1, None, tok)
        if raw == "?":
            return (0, 1, tok)
        body = raw[1:-1].replace(" ", "").replace("\t", "")
        if "," not in body:
            n = int(body)
            return (n, n, tok)
        lo, hi = body.split(",", 1)
        return (int(lo), int(hi) if hi else None, tok)

    def item(self, children: list[object]) -> object:
        if len(children) == 1:
            return children[0]
        node = children[0]
        quant = children[1]
        assert isinstance(quant, tuple)
        lo: int = quant[0]
        hi: int | None = quant[1]
        tok: LarkToken = quant[2]
        if lo > MAX_REPETITION:
            raise error_at(self._text, f"repetition minimum {lo} exceeds llama.cpp's limit of "
                            f"{MAX_REPETITION}", tok.line or 0, tok.column or 0)
        if hi is not None and hi < lo:
            raise error_at(self._text, f"repetition maximum {hi} is below its minimum {lo}",
                            tok.line or 0, tok.column or 0)
        if hi is not None and hi > MAX_REPETITION:
            raise error_at(self._text, f"repetition maximum {hi} exceeds llama.cpp's limit of "
                            f"{MAX_REPETITION} (llama.cpp would make it unbounded)",
                            tok.line or 0, tok.column or 0)
        return Repeat(node, lo, hi)  # type: ignore[arg-type]  # node: a Node built below

    def sequence(self, children: list[Node]) -> Sequence:
        return Sequence(tuple(children))

    def alternates(self, children: list[Sequence]) -> Alternatives:
        return Alternatives(tuple(children))

    def rule(self, children: list[object]) -> tuple[LarkToken, Alternatives]:
        return (children[0], children[1])  # type: ignore[return-value]

    def start(self, children: list[tuple[LarkToken, Alternatives]]) -> dict[str, Alternatives]:
        rules: dict[str, Alternatives] = {}
        for name_tok, alts in children:
            name = str(name_tok)
            if name in rules:
                raise error_at(self._text, f"rule '{name}' is defined twice",
                                name_tok.line or 0, name_tok.column or 0)
            rules[name] = alts
        return rules


_BUILDER = _Builder()


def _raw_dash_positions(body: str) -> list[bool]:
    """For each decoded character of a class body, whether it is an unescaped '-'."""
    flags: list[bool] = []
    i = 0
    while i < len(body):
        if body[i] == "\\":
            nxt = body[i + 1] if i + 1 < len(body) else ""
            i += 2 + _HEX_ESCAPES.get(nxt, 0)
            flags.append(False)
        else:
            flags.append(body[i] == "-")
            i += 1
    return flags


#: Grammars are refused above this size, before parsing. Measured (bench/bench_loop.py's
#: machine): parsing 128 KiB of GBNF takes ~0.7 s and its garbage collections pause other
#: threads for up to ~50 ms; 800 KiB (60,000 alternatives) took 4.7 s with pauses of
#: 400 ms, and llama.cpp then needs seconds to build it and ~95 s per full grammar pass.
MAX_GBNF_BYTES = 128 * 1024


def parse_gbnf(text: str) -> Grammar:
    """Parse and check a GBNF grammar.

    Args:
        text: the grammar, in llama.cpp's GBNF syntax.

    Returns:
        The parsed :class:`Grammar`.

    Raises:
        GbnfSyntaxError: a syntax error, an unknown escape, an undefined rule, a
            missing ``root`` rule, left recursion, or a repetition beyond
            llama.cpp's limit; with line and column where they apply.
        GrammarTooLarge: the text is over :data:`MAX_GBNF_BYTES` (a subclass of
            ``GbnfSyntaxError``).
    """
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_GBNF_BYTES:
        raise GrammarTooLarge(f"the grammar is {size} bytes, over the limit of "
                              f"{MAX_GBNF_BYTES} bytes")
    try:
        return _parse_cached(text) if size <= _CACHED_BYTES else _parse_checked(text)
    except RecursionError:
        raise GbnfSyntaxError("the grammar is nested too deeply") from None


#: Parses of grammars up to this size are kept (16 of them): requests often send the same
#: schema or grammar again. Larger trees are not kept: hundreds of thousands of live objects
#: would lengthen every full garbage collection, which pauses every thread.
_CACHED_BYTES = 32 * 1024


@functools.lru_cache(maxsize=16)
def _parse_cached(text: str) -> Grammar:
    """A kept parse (its tree is never changed by a user; errors are not kept)."""
    return _parse_checked(text)


def _parse_checked(text: str) -> Grammar:
    fast = parse_fast(text, _BUILDER, MAX_NESTING)
    if fast is not None:
        grammar = Grammar(rules=fast, text=text)
        check(grammar)
        return grammar
    try:
        rules = _parser().parse(text)
    except GbnfSyntaxError as exc:  # from the post-lexer or the builder, without an excerpt
        if exc.context or not exc.line:
            raise
        raise error_at(text, exc.message, exc.line, exc.column) from None
    except lark.exceptions.UnexpectedCharacters as exc:
        raise error_at(text, f"unexpected character {text[exc.pos_in_stream or 0]!r}",
                        exc.line, exc.column) from None
    except lark.exceptions.UnexpectedToken as exc:
        tok = exc.token
        if tok.type == "$END":
            raise GbnfSyntaxError("unexpected end of grammar", line=exc.line or 0,
                                  column=exc.column or 0) from None
        what = "newline" if tok.type == "_NL" else repr(str(tok))
        raise error_at(text, f"unexpected {what}", exc.line, exc.column) from None
    except lark.exceptions.UnexpectedEOF:
        raise GbnfSyntaxError("unexpected end of grammar") from None
    except lark.exceptions.VisitError as exc:
        if isinstance(exc.orig_exc, GbnfSyntaxError):
            e = exc.orig_exc
            raise error_at(text, e.message, e.line, e.column) if e.line and not e.context \
                else e from None
        if isinstance(exc.orig_exc, RecursionError):
            raise GbnfSyntaxError("the grammar is nested too deeply") from None
        raise
    assert isinstance(rules, dict)
    grammar = Grammar(rules=rules, text=text)
    check(grammar)
    return grammar
