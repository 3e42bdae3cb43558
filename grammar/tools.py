"""Grammars for tool calls: every call parses, names a declared tool, and its
arguments match that tool's JSON Schema.

A call is written as ``open_tag`` + ``{"name": "<tool>", "arguments": <json>}``
+ ``close_tag`` (the caller picks the tags; Sluice uses Hermes' ``<tool_call>``
lines). :func:`tool_calls_gbnf` builds the grammar for one of two modes:

* ``required``: the output is one call (or, with ``parallel``, up to
  ``max_calls`` calls separated by a newline) and nothing else;
* ``auto``: free text that never contains ``open_tag``, then optionally the
  calls. The text part is an automaton over the tag (the Knuth-Morris-Pratt
  failure function), so the only way to write the tag is to start a call.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from grammar.convert import Conversion, convert_many
from grammar.gbnf_text import char_class, literal

MAX_CALLS = 8


@dataclass(frozen=True, slots=True)
class ToolSchema:
    name: str
    parameters: Any  # a JSON Schema for the arguments object
    strict: bool = False  # objects without additionalProperties are closed


@dataclass(frozen=True, slots=True)
class ToolGrammar:
    gbnf: str
    conversions: tuple[Conversion, ...]  # one per tool, in order


def excluding(literal_text: str, prefix: str) -> tuple[str, dict[str, str]]:
    """Rules for any text that does not contain ``literal_text`` (may be empty).

    Returns the start rule's name and the rules.
    """
    n = len(literal_text)
    if n == 0:
        raise ValueError("cannot exclude the empty string")
    chars = sorted(set(literal_text))

    def step(state: int, ch: str) -> int:
        matched = literal_text[:state] + ch
        for k in range(min(len(matched), n), 0, -1):
            if matched.endswith(literal_text[:k]):
                return k
        return 0

    rules: dict[str, str] = {}
    for state in range(n):
        # characters that move off the start state (or complete the literal, which is refused)
        special = {ch: step(state, ch) for ch in chars if step(state, ch) != 0}
        others = char_class([(ord(c), ord(c)) for c in sorted(special)], negated=True)
        alts = [f"{others} {prefix}-0"]
        alts += [f"{literal(ch)} {prefix}-{nxt}" for ch, nxt in special.items() if nxt < n]
        rules[f"{prefix}-{state}"] = "( " + " | ".join(alts) + " )?"
    return f"{prefix}-0", rules


def tool_calls_gbnf(tools: Sequence[ToolSchema], *, mode: Literal["auto", "required"],
                    parallel: bool, open_tag: str, close_tag: str,
                    max_calls: int = MAX_CALLS, spec: bool = False) -> ToolGrammar:
    """The grammar of a reply that may (``auto``) or must (``required``) call ``tools``.

    ``spec`` gives the arguments the spec-faithful shape (see :func:`grammar.convert`).

    Raises:
        SchemaError: a tool's parameters are not a valid or supported schema;
            the error's ``index`` says which tool, its ``pointer`` where.
    """
    if not tools:
        raise ValueError("no tools")
    exprs, rules, conversions = convert_many([t.parameters for t in tools],
                                             [f"tool-{i}" for i in range(len(tools))],
                                             strict=[t.strict for t in tools], spec=spec)
    alts = [f"{literal(json.dumps(t.name) + ', ' + chr(34) + 'arguments' + chr(34) + ': ')} {e}"
            for t, e in zip(tools, exprs, strict=True)]
    lines = [
        f"call ::= {literal(open_tag + '{' + chr(34) + 'name' + chr(34) + ': ')} "
        f"( {' | '.join(alts)} ) {literal('}' + close_tag)}",
    ]
    calls = "call"
    if parallel and max_calls > 1:
        calls = f"call ( {literal(chr(10))} call ){{0,{max_calls - 1}}}"
    if mode == "required":
        lines.insert(0, f"root ::= {calls}")
    else:
        start, text_rules = excluding(open_tag, "text")
        lines.insert(0, f"root ::= {start} ( {calls} )?")
        lines += [f"{name} ::= {body}" for name, body in text_rules.items()]
    lines += [f"{name} ::= {body}" for name, body in rules.items()]
    return ToolGrammar(gbnf="\n".join(lines) + "\n", conversions=tuple(conversions))
