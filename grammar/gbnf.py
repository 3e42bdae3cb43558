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
from dataclasses import dataclass
from importlib import resources

import lark
from lark.lexer import Token as LarkToken

from grammar.errors import GbnfSyntaxError

#: llama.cpp's MAX_REPETITION_THRESHOLD: a larger lower bound is refused, a larger
#: upper bound silently becomes unbounded, and nested repetitions whose product
#: passes it are refused.
MAX_REPETITION = 2000


@dataclass(frozen=True, slots=True)
class Literal:
    text: str


@dataclass(frozen=True, slots=True)
class CharClass:
    negated: bool
    ranges: tuple[tuple[int, int], ...]

    def matches(self, code: int) -> bool:
        inside = any(lo <= code <= hi for lo, hi in self.ranges)
        return inside != self.negated


@dataclass(frozen=True, slots=True)
class AnyChar:
    pass


@dataclass(frozen=True, slots=True)
class RuleRef:
    name: str
    line: int
    column: int


@dataclass(frozen=True, slots=True)
class TokenRef:
    """``<[id]>`` (``value`` is the id) or ``<piece>`` (``value`` is the text)."""

    value: int | str
    negated: bool


@dataclass(frozen=True, slots=True)
class Repeat:
    node: Node
    min: int
    max: int | None  # None: unbounded


@dataclass(frozen=True, slots=True)
class Sequence:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Alternatives:
    options: tuple[Sequence, ...]


Node = Literal | CharClass | AnyChar | RuleRef | TokenRef | Repeat | Sequence | Alternatives


@dataclass(frozen=True, slots=True)
class Grammar:
    """A parsed grammar: rule name to its alternatives, in source order."""

    rules: dict[str, Alternatives]
    text: str

    @property
    def uses_tokens(self) -> bool:
        return any(_contains_token(alt) for alt in self.rules.values())


def _contains_token(node: Node) -> bool:
    match node:
        case TokenRef():
            return True
        case Repeat(node=inner):
            return _contains_token(inner)
        case Sequence(items=items):
            return any(_contains_token(i) for i in items)
        case Alternatives(options=options):
            return any(_contains_token(o) for o in options)
        case _:
            return False


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
            elif tok.type == "_RPAR":
                depth = max(0, depth - 1)
            previous = tok.type
            yield tok


@functools.cache
def _parser() -> lark.Lark:
    text = resources.files("grammar").joinpath("gbnf.lark").read_text(encoding="utf-8")
    return lark.Lark(text, parser="lalr", postlex=_Postlex(), propagate_positions=True,
                     maybe_placeholders=False)


def _excerpt(text: str, line: int, column: int) -> str:
    lines = text.splitlines() or [""]
    if not 1 <= line <= len(lines):
        return ""
    src = lines[line - 1]
    start = max(0, column - 40)
    return f"  {src[start:start + 80]}\n  {' ' * (column - 1 - start)}^"


def _error_at(text: str, message: str, line: int, column: int) -> GbnfSyntaxError:
    return GbnfSyntaxError(message, line=line, column=column, context=_excerpt(text, line, column))


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
                raise _error_at(text, f"expecting {size} hex digits after \\{nxt}",
                                tok.line or 0, (tok.column or 0) + 1 + i)
            value = int(digits, 16)
            if value > 0x10FFFF:
                raise _error_at(text, f"code point {digits} is beyond Unicode",
                                tok.line or 0, (tok.column or 0) + 1 + i)
            out.append(value)
            i += 2 + size
        else:
            raise _error_at(text, f"unknown escape \\{nxt}", tok.line or 0, (tok.column or 0) + 1 + i)
    return out


class _Builder(lark.Transformer[LarkToken, object]):
    def __init__(self, text: str) -> None:
        super().__init__()
        self._text = text

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
                    raise _error_at(self._text, f"empty range {chr(lo)!r}-{chr(hi)!r} in class",
                                    tok.line or 0, tok.column or 0)
                ranges.append((lo, hi))
                i += 3
            else:
                ranges.append((codes[i], codes[i]))
                i += 1
        if not ranges:
            raise _error_at(self._text, "empty character class", tok.line or 0, tok.column or 0)
        return CharClass(negated, tuple(ranges))

    def token(self, children: list[LarkToken]) -> TokenRef:
        raw = str(children[0])
        negated = raw.startswith("!")
        inner = raw[2:-1] if negated else raw[1:-1]
        if inner.startswith("[") and inner.endswith("]"):
            return TokenRef(int(inner[1:-1]), negated)
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
            raise _error_at(self._text, f"repetition minimum {lo} exceeds llama.cpp's limit of "
                            f"{MAX_REPETITION}", tok.line or 0, tok.column or 0)
        if hi is not None and hi < lo:
            raise _error_at(self._text, f"repetition maximum {hi} is below its minimum {lo}",
                            tok.line or 0, tok.column or 0)
        if hi is not None and hi > MAX_REPETITION:
            raise _error_at(self._text, f"repetition maximum {hi} exceeds llama.cpp's limit of "
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
                raise _error_at(self._text, f"rule '{name}' is defined twice",
                                name_tok.line or 0, name_tok.column or 0)
            rules[name] = alts
        return rules


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
    """
    try:
        tree = _parser().parse(text)
    except lark.exceptions.UnexpectedCharacters as exc:
        raise _error_at(text, f"unexpected character {text[exc.pos_in_stream or 0]!r}",
                        exc.line, exc.column) from None
    except lark.exceptions.UnexpectedToken as exc:
        tok = exc.token
        if tok.type == "$END":
            raise GbnfSyntaxError("unexpected end of grammar", line=exc.line or 0,
                                  column=exc.column or 0) from None
        what = "newline" if tok.type == "_NL" else repr(str(tok))
        raise _error_at(text, f"unexpected {what}", exc.line, exc.column) from None
    except lark.exceptions.UnexpectedEOF:
        raise GbnfSyntaxError("unexpected end of grammar") from None
    try:
        rules = _Builder(text).transform(tree)
    except lark.exceptions.VisitError as exc:
        if isinstance(exc.orig_exc, GbnfSyntaxError):
            raise exc.orig_exc from None
        raise
    assert isinstance(rules, dict)
    grammar = Grammar(rules=rules, text=text)
    _check(grammar)
    return grammar


def _refs(node: Node) -> Iterator[RuleRef]:
    match node:
        case RuleRef():
            yield node
        case Repeat(node=inner):
            yield from _refs(inner)
        case Sequence(items=items):
            for item in items:
                yield from _refs(item)
        case Alternatives(options=options):
            for option in options:
                yield from _refs(option)
        case _:
            return


def _check(grammar: Grammar) -> None:
    if "root" not in grammar.rules:
        raise GbnfSyntaxError("grammar has no 'root' rule")
    for alts in grammar.rules.values():
        for ref in _refs(alts):
            if ref.name not in grammar.rules:
                raise _error_at(grammar.text, f"undefined rule '{ref.name}'", ref.line, ref.column)
    for alts in grammar.rules.values():
        for option in alts.options:
            _check_repetition_product(grammar.text, option)
    _check_left_recursion(grammar)


def _synthesized(node: Node) -> int:
    """How many helper rules llama.cpp synthesizes for ``node``."""
    match node:
        case Alternatives(options=options):
            return 1 + sum(_synthesized(i) for o in options for i in o.items)
        case Repeat(node=inner, min=lo, max=hi):
            return _synthesized(inner) + (1 if hi is None else max(hi - lo, 0))
        case _:
            return 0


def _check_repetition_product(text: str, seq: Sequence) -> None:
    # llama.cpp multiplies, per repeated element, the rule count of the element by
    # the repetition count and refuses products above MAX_REPETITION.
    for item in seq.items:
        if isinstance(item, Alternatives):
            for option in item.options:
                _check_repetition_product(text, option)
        if not isinstance(item, Repeat):
            continue
        factor = 1
        node: Node = item
        while isinstance(node, Repeat):
            count = node.max if node.max is not None and node.max > 0 else node.min
            factor *= max(count, 1)
            node = node.node
        base = max(1, _synthesized(node)) if isinstance(node, Alternatives) else 1
        if base * factor > MAX_REPETITION:
            raise GbnfSyntaxError(
                f"repetition generates {base * factor} rules, over llama.cpp's limit of "
                f"{MAX_REPETITION}; reduce the repetition count or the repeated group")
        if isinstance(node, Alternatives):
            for option in node.options:
                _check_repetition_product(text, option)


def _nullable_rules(grammar: Grammar) -> set[str]:
    nullable: set[str] = set()

    def can_be_empty(node: Node) -> bool:
        match node:
            case Literal(text=t):
                return t == ""
            case RuleRef(name=n):
                return n in nullable
            case Repeat(node=inner, min=lo):
                return lo == 0 or can_be_empty(inner)
            case Sequence(items=items):
                return all(can_be_empty(i) for i in items)
            case Alternatives(options=options):
                return any(can_be_empty(o) for o in options)
            case _:
                return False

    changed = True
    while changed:
        changed = False
        for name, alts in grammar.rules.items():
            if name not in nullable and can_be_empty(alts):
                nullable.add(name)
                changed = True
    return nullable


def _check_left_recursion(grammar: Grammar) -> None:
    nullable = _nullable_rules(grammar)

    def leftmost(node: Node) -> tuple[set[str], bool]:
        """Rules that can start ``node``, and whether ``node`` can match empty."""
        match node:
            case Literal(text=t):
                return set(), t == ""
            case RuleRef(name=n):
                return {n}, n in nullable
            case Repeat(node=inner, min=lo):
                refs, empty = leftmost(inner)
                return refs, empty or lo == 0
            case Sequence(items=items):
                out: set[str] = set()
                for item in items:
                    refs, empty = leftmost(item)
                    out |= refs
                    if not empty:
                        return out, False
                return out, True
            case Alternatives(options=options):
                out = set()
                any_empty = False
                for option in options:
                    refs, empty = leftmost(option)
                    out |= refs
                    any_empty = any_empty or empty
                return out, any_empty
            case _:
                return set(), False

    edges = {name: leftmost(alts)[0] for name, alts in grammar.rules.items()}
    state: dict[str, int] = {}  # 1 in progress, 2 done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for nxt in sorted(edges[name]):
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt):], nxt] if nxt in path else [name, nxt]
                raise GbnfSyntaxError("left recursion (llama.cpp refuses it): "
                                      + " -> ".join(cycle))
            if state.get(nxt) is None:
                visit(nxt, [*path, nxt])
        state[name] = 2

    for name in grammar.rules:
        if name not in state:
            visit(name, [name])
