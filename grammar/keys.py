"""Member names in a grammar: a name as its JSON literal, and a trie for "any string but
these names" (the key of an extra member, which must not repeat a declared one)."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from typing import Any

from grammar.gbnf_text import _escape_char, literal


def key_excluding(keys: list[str], name: str, *, primitive: Callable[[str], str],
                  add_rule: Callable[[str, str], str], tries: dict[tuple[str, ...], str]) -> str:
    """A JSON string that is none of ``keys`` (written without escapes, so no key can be
    spelled another way). A trie: each node offers a character no key continues with
    (then anything), each character some key continues with, and the end unless a key
    ends there. A node with one way on is written inside its parent (up to a depth),
    others are rules; one trie per key set (kept in ``tries``), shared by every object with
    it. ``primitive`` names (and declares) a primitive rule; only the ones used are."""
    string = primitive("string")
    # keys holding characters an unescaped name cannot hold need no excluding
    keys = sorted({k for k in keys if _UNESCAPED.fullmatch(k)})
    if not keys:
        return string
    memo = tries.get(tuple(keys))
    if memo is not None:
        return memo
    space = primitive("space")
    tail = primitive("key-tail")
    trie: dict[str, Any] = {}
    order: list[dict[str, Any]] = [trie]  # in the order made: parents before children
    for key in keys:
        node = trie
        for ch in key:
            nxt = node.get(ch)
            if nxt is None:
                nxt = node[ch] = {}
                order.append(nxt)
            node = nxt
        node[""] = {}
    refs: dict[int, tuple[str, int]] = {}  # node -> (how a parent writes it, its depth)
    for node in reversed(order):
        if len(node) == 1:
            (c, child), = node.items()
            if not c:  # a key ends here and none goes on
                refs[id(node)] = (f"{_PLAIN}+", 0)
                continue
            text, d = refs[id(child)]
            if d < _INLINE_DEPTH and node is not trie:  # one way on (most nodes)
                refs[id(node)] = (f'( {_one_way(c)}{text} | "" )', d + 1)
                continue
        chars = sorted(c for c in node if c)
        options = [f"{_others(''.join(chars))} {tail}"]
        depth = 0
        for c in chars:
            text, d = refs[id(node[c])]
            options.append(f"{literal(c)} {text}")
            depth = max(depth, d)
        if "" not in node:
            options.append('""')
        body = " | ".join(options)
        if len(chars) == 1 and "" not in node and depth < _INLINE_DEPTH and node is not trie:
            refs[id(node)] = (f"( {body} )", depth + 1)
        else:
            refs[id(node)] = (add_rule(f"{name}-key", body), 0)
    rule = f'"\\"" {refs[id(trie)][0]} "\\"" {space}'
    tries[tuple(keys)] = rule
    return rule


#: One plain character of a JSON string (no quote, backslash or control character).
_PLAIN = '[^"\\\\\\x00-\\x1F]'
_UNESCAPED = re.compile('[^"\\\\\\x00-\\x1F]*')


@functools.lru_cache(maxsize=4096)
def _one_way(c: str) -> str:
    """The start of a trie node whose only way on is ``c``: another character, or ``c``."""
    return f"{_others(c)} key-tail | {literal(c)} "
#: How many single-way trie nodes are written inside one another before a rule.
_INLINE_DEPTH = 6


def key_literal(key: str) -> str:
    """A member name as ``json.dumps`` writes it (non-ASCII raw), as a GBNF literal."""
    if len(key) <= 64:  # names recur (remembered, bounded in size)
        return _short_key_literal(key)
    return literal(json.dumps(key, ensure_ascii=False))


@functools.lru_cache(maxsize=1 << 14)
def _short_key_literal(key: str) -> str:
    return literal(json.dumps(key, ensure_ascii=False))


@functools.lru_cache(maxsize=4096)
def _others(chars: str) -> str:
    """A class of the plain JSON string characters other than ``chars``."""
    return _PLAIN[:-1] + "".join(_escape_char(ord(c), True) for c in sorted(set(chars))) + "]"
