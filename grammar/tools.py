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
from grammar.gbnf_text import char_class, literal, repeat

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
    #: how the arguments are written: a JSON object, or Qwen3-Coder's XML parameters
    #: (``<parameter=k>\nvalue\n</parameter>\n`` each, a string value as raw text)
    args: Literal["json", "xml"] = "json"

    @property
    def trigger(self) -> str:
        """The text that starts the calls: free text never holds it."""
        return self.marker or self.block_open or self.call_open


#: an XML parameter's opening and closing (Qwen3-Coder's format)
PARAM_OPEN = "<parameter="
PARAM_CLOSE = "\n</parameter>\n"


def raw_params(parameters: Any) -> frozenset[str]:
    """The properties an XML-arguments format writes as raw text, as Qwen3-Coder's template
    does: strings (a ``const`` or an ``enum`` of strings too). Every other value is JSON."""
    props = parameters.get("properties") if isinstance(parameters, dict) else None
    if not isinstance(props, dict):
        return frozenset()
    return frozenset(k for k, v in props.items() if _raw_string(v))


def _raw_string(schema: Any) -> bool:
    if not isinstance(schema, dict) or any(k in schema for k in ("$ref", "anyOf", "oneOf",
                                                                 "allOf", "not")):
        return False
    if "const" in schema:
        return isinstance(schema["const"], str)
    if "enum" in schema:
        return isinstance(schema["enum"], list) and bool(schema["enum"]) and all(
            isinstance(v, str) for v in schema["enum"])
    return schema.get("type") == "string"


#: a raw string with a ``maxLength`` up to this is forced to it, as text without ``<`` or a
#: newline (a longer or unbounded one is any text without the closing tag)
RAW_BOUNDED = 256


def _raw_value(schema: dict[str, Any], text_rule: str) -> str:
    """A raw string's grammar: its ``const`` or ``enum`` texts; with a small ``maxLength``
    that many characters but no ``<`` or newline; else any text without ``</parameter>``
    (``pattern`` and ``format`` are checked after generation)."""
    if "const" in schema:
        return literal(schema["const"])
    if "enum" in schema:
        return "( " + " | ".join(literal(v) for v in schema["enum"]) + " )"
    hi, lo = schema.get("maxLength"), schema.get("minLength", 0)
    if isinstance(hi, int) and isinstance(lo, int) and 0 <= lo <= hi <= RAW_BOUNDED:
        return repeat("[^<\\n]", lo, hi)
    return text_rule


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
    if syntax.args == "xml":
        exprs, rules, conversions = _xml_arguments(tools, spec)
    else:
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


THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def _xml_arguments(tools: Sequence[ToolSchema], spec: bool
                   ) -> tuple[list[str], dict[str, str], list[Conversion]]:
    """Per tool, its parameters as XML: each declared property in declared order, the
    required ones present, a plain string as raw text without the closing tag, any other
    value as the JSON its schema admits (converted with the tool's ``$defs``)."""
    values: list[Any] = []
    names: list[str] = []
    strict: list[bool] = []
    plans: list[list[tuple[str, int | None, bool]]] = []
    raws: dict[tuple[int, str], Any] = {}
    for i, t in enumerate(tools):
        params = t.parameters if isinstance(t.parameters, dict) else {}
        props = params.get("properties")
        props = props if isinstance(props, dict) else {}
        required = params.get("required")
        required = set(required) if isinstance(required, list) else set()
        raw = raw_params(params)
        plan: list[tuple[str, int | None, bool]] = []
        for key, schema in props.items():
            if key in raw:
                plan.append((key, None, key in required))
                raws[(i, key)] = schema
                continue
            if isinstance(schema, dict) and "$defs" in params:
                schema = {**schema, "$defs": params["$defs"]}
            values.append(schema)
            names.append(f"xml-{i}-{len(values)}")
            strict.append(t.strict)
            plan.append((key, len(values) - 1, key in required))
        plans.append(plan)
    exprs, rules, conversions = convert_many(values, names, strict=strict, spec=spec) \
        if values else ([], {}, [])
    start, text_rules = excluding(PARAM_CLOSE.strip(), "xml-raw")
    rules = {**rules, **text_rules}
    out = []
    for i, plan in enumerate(plans):
        items = []
        for key, index, needed in plan:
            value = _raw_value(raws[(i, key)], start) if index is None else exprs[index]
            item = f"{literal(PARAM_OPEN + key + '>' + chr(10))} {value} {literal(PARAM_CLOSE)}"
            items.append(item if needed else f"( {item} )?")
        out.append(" ".join(items) or '""')
    return out, rules, conversions


def after_thinking(gbnf: str, *, opened: bool) -> str:
    """``gbnf`` (a grammar of this package: its ``root`` rule is the first line and no other
    rule refers to it) preceded by a thinking block: free text up to ``</think>`` when the
    prompt ``opened`` one, else an optional ``<think>`` … ``</think>`` block. Whitespace
    after the block is bounded; the answer after it is constrained as before."""
    head, _, rest = gbnf.partition("\n")
    if not head.startswith("root ::= "):
        raise ValueError("the grammar does not start with its root rule")
    if "sluice-think" in gbnf:
        raise ValueError("the grammar already has thinking rules")
    start, rules = excluding(THINK_CLOSE, "sluice-think")
    block = f"{start} {literal(THINK_CLOSE)} [ \\n]{{0,4}}"
    if not opened:
        block = f"( {literal(THINK_OPEN)} {block} )?"
    lines = [f"root ::= {block} sluice-think-answer",
             "sluice-think-answer ::= " + head[len("root ::= "):]]
    lines += [f"{name} ::= {body}" for name, body in rules.items()]
    return "\n".join(lines) + "\n" + rest
