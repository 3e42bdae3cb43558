"""Checks llama.cpp applies to a grammar after parsing it (or dies on): undefined rules, a
missing ``root``, left recursion, and repetitions whose helper rules pass its limit."""

from __future__ import annotations

from collections.abc import Iterator

from grammar.errors import GbnfSyntaxError, error_at
from grammar.gbnf_ast import (
    MAX_REPETITION,
    Alternatives,
    Grammar,
    Literal,
    Node,
    Repeat,
    RuleRef,
    Sequence,
    iter_nodes,
)


def _refs(node: Node) -> Iterator[RuleRef]:
    return (n for n in iter_nodes(node) if isinstance(n, RuleRef))


def check(grammar: Grammar) -> None:
    if "root" not in grammar.rules:
        raise GbnfSyntaxError("grammar has no 'root' rule")
    for alts in grammar.rules.values():
        for ref in _refs(alts):
            if ref.name not in grammar.rules:
                raise error_at(grammar.text, f"undefined rule '{ref.name}'", ref.line, ref.column)
    for alts in grammar.rules.values():
        for option in alts.options:
            _check_repetition_product(grammar.text, option)
    _check_left_recursion(grammar)
    _check_nested_repetition(grammar)


#: The most a variable-length repetition may be repeated by an enclosing one (product of the
#: upper bounds). Such a grammar is ambiguous: the same text splits between the inner and the
#: outer repetition in combinatorially many ways, and llama.cpp's matcher keeps a stack for
#: each. Measured with llama-cpp-python 0.3.36 on the default model, per generated token
#: (check + accept) after ~40 tokens of ``(("a"|"b"){0,n}){0,n}``: n=10 0.4 ms, n=20 15 ms,
#: n=30 100 ms, n=40 350 ms, and a full pass over the vocabulary multiplies that by ~10^5.
MAX_NESTED_REPETITION = 100
_UNBOUNDED = 1 << 30


def _variable_span(grammar: Grammar, node: Node, seen: frozenset[str]) -> int:
    """The upper bound of a variable-length repetition that makes up all of ``node`` (0: none)."""
    match node:
        case Repeat(node=inner, min=lo, max=hi):
            if hi is None:
                return _UNBOUNDED
            if hi > lo:
                return hi
            return lo * _variable_span(grammar, inner, seen)  # x{3} of a variable x
        case Sequence(items=items) if len(items) == 1:
            return _variable_span(grammar, items[0], seen)
        case Alternatives(options=options):
            return max((_variable_span(grammar, o, seen) for o in options), default=0)
        case RuleRef(name=name) if name not in seen and name in grammar.rules:
            return _variable_span(grammar, grammar.rules[name], seen | {name})
        case _:
            return 0


def _check_nested_repetition(grammar: Grammar) -> None:
    for alts in grammar.rules.values():
        for node in iter_nodes(alts):
            if not isinstance(node, Repeat) or (node.max is not None and node.max <= 1):
                continue
            inner = _variable_span(grammar, node.node, frozenset())
            if not inner:
                continue
            outer = node.max if node.max is not None else _UNBOUNDED
            if outer * inner > MAX_NESTED_REPETITION:
                def shown(n: int) -> str:
                    return "unbounded" if n >= _UNBOUNDED else str(n)

                raise GbnfSyntaxError(
                    f"a variable-length repetition (up to {shown(inner)}) repeated again (up to "
                    f"{shown(outer)}) is ambiguous and can make llama.cpp's matcher take seconds "
                    f"per token; the product of the bounds may be at most "
                    f"{MAX_NESTED_REPETITION}: give the inner repetition a fixed length or a "
                    "separator")


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
