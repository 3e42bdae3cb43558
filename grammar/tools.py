"""Grammars for tool calls: every call parses, names a declared tool, and its
arguments match that tool's JSON Schema.

How a model writes its calls is a :class:`CallSyntax`: the text that opens the block of
calls, each call's head, its name (a JSON string or bare), the text between the name and the
arguments (a JSON object), the call's tail, the separator between calls and the text that
closes the block. Hermes' ``<tool_call>`` lines are::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

:func:`tool_calls_gbnf` builds the grammar for one of two modes:

* ``required``: the output is one call (or, with ``parallel``, up to
  ``max_calls`` calls) and nothing else;
* ``auto``: free text that never contains the syntax's trigger (the block's
  opening, or the call's head where a format has no block), then optionally the
  calls. The text part is an automaton over the trigger (the Knuth-Morris-Pratt
  failure function), so the only way to write the trigger is to start a call.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from grammar.convert import Conversion, convert_many
from grammar.gbnf_text import char_class, literal

MAX_CALLS = 8
#: the placeholder of a model-written call id in :attr:`CallSyntax.call_close` (Mistral's
#: nine letters and digits)
ID_SLOT = "{id}"
ID_LENGTH = 9


@dataclass(frozen=True, slots=True)
class CallSyntax:
    """The text of a block of calls: ``block_open``, then per call ``call_open`` + name +
    ``name_to_args`` + arguments (a JSON object) + ``call_close``, ``separator`` between
    calls, ``block_close`` after the last. ``quoted``: the name is a JSON string (else bare,
    as DeepSeek writes it). ``call_close`` may hold :data:`ID_SLOT` once."""

    block_open: str
    call_open: str
    name_to_args: str
    call_close: str
    separator: str = ""
    block_close: str = ""
    quoted: bool = True
    parallel: bool = True  # the format can hold more than one call
    #: the text that only a call may write (a prefix of the block's or the first call's
    #: opening; that opening where empty)
    marker: str = ""

    @property
    def trigger(self) -> str:
        """The text that starts the calls: free text never holds it."""
        return self.marker or self.block_open or self.call_open


HERMES = CallSyntax(block_open="", call_open='<tool_call>\n{"name": ',
                    name_to_args=', "arguments": ', call_close="}\n</tool_call>",
                    separator="\n", marker="<tool_call>")


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


def _close_rule(close: str) -> str:
    head, slot, tail = close.partition(ID_SLOT)
    parts = [literal(head)] if head else []
    if slot:
        parts.append(f"[a-zA-Z0-9]{{{ID_LENGTH}}}")
        if tail:
            parts.append(literal(tail))
    return " ".join(parts) or '""'


def tool_calls_gbnf(tools: Sequence[ToolSchema], *, mode: Literal["auto", "required"],
                    parallel: bool, syntax: CallSyntax = HERMES,
                    max_calls: int = MAX_CALLS, spec: bool = False) -> ToolGrammar:
    """The grammar of a reply that may (``auto``) or must (``required``) call ``tools``,
    written in ``syntax``.

    ``spec`` gives the arguments the spec-faithful shape (see :func:`grammar.convert`).
    ``parallel`` allows up to ``max_calls`` calls where the syntax can hold several.

    Raises:
        SchemaError: a tool's parameters are not a valid or supported schema;
            the error's ``index`` says which tool, its ``pointer`` where.
    """
    if not tools:
        raise ValueError("no tools")
    exprs, rules, conversions = convert_many([t.parameters for t in tools],
                                             [f"tool-{i}" for i in range(len(tools))],
                                             strict=[t.strict for t in tools], spec=spec)
    alts = [f"{literal((json.dumps(t.name) if syntax.quoted else t.name) + syntax.name_to_args)}"
            f" {e}" for t, e in zip(tools, exprs, strict=True)]
    lines = [
        f"call ::= {literal(syntax.call_open)} ( {' | '.join(alts)} ) "
        f"{_close_rule(syntax.call_close)}",
    ]
    calls = "call"
    if parallel and syntax.parallel and max_calls > 1:
        sep = f"{literal(syntax.separator)} " if syntax.separator else ""
        calls = f"call ( {sep}call ){{0,{max_calls - 1}}}"
    block = " ".join(
        [*([literal(syntax.block_open)] if syntax.block_open else []), calls,
         *([literal(syntax.block_close)] if syntax.block_close else [])])
    if mode == "required":
        lines.insert(0, f"root ::= {block}")
    else:
        start, text_rules = excluding(syntax.trigger, "text")
        lines.insert(0, f"root ::= {start} ( {block} )?")
        lines += [f"{name} ::= {body}" for name, body in text_rules.items()]
    lines += [f"{name} ::= {body}" for name, body in rules.items()]
    return ToolGrammar(gbnf="\n".join(lines) + "\n", conversions=tuple(conversions))
