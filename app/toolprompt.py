"""What a model is shown of tools: the instructions for a template that does not describe
them, and past calls written in the model's own format (:mod:`app.toolformat`)."""

from __future__ import annotations

import hashlib
import json
import secrets
import string
from collections.abc import Sequence

from app.completion import FunctionTool
from app.tools import ToolCall
from grammar.tools import HERMES, ID_SLOT, PARAM_CLOSE, PARAM_OPEN, CallSyntax

_ALNUM = string.ascii_letters + string.digits


def short_call_id(length: int = 9) -> str:
    """An id of letters and digits only (Mistral's templates refuse any other)."""
    return "".join(secrets.choice(_ALNUM) for _ in range(length))


def short_id(ident: str) -> str:
    """A nine-letter id for ``ident`` (itself when it is one): Mistral's templates need them."""
    if len(ident) == 9 and ident.isascii() and ident.isalnum():
        return ident
    return hashlib.sha256(ident.encode()).hexdigest()[:9]


def tools_prompt(tools: Sequence[FunctionTool], syntax: CallSyntax = HERMES) -> str:
    """The instructions for a template that does not render ``tools`` itself."""
    lines = [json.dumps({"name": t.name, "description": t.description,
                         "parameters": t.parameters}, ensure_ascii=False) for t in tools]
    example = render_calls([ToolCall("abcdefghi", "<function-name>", "{}")], syntax).replace(
        '"<function-name>"', "<function-name>").replace("{}", "<args-json-object>")
    return ("You can call functions. Their signatures, as JSON Schema, are inside <tools></tools>:\n"
            "<tools>\n" + "\n".join(lines) + "\n</tools>\n"
            + (HERMES_HOW if syntax == HERMES else "To call a function, reply with its name "
               "and arguments in this format:\n") + example)


HERMES_HOW = ("To call a function, reply with a JSON object with its name and arguments inside "
              "<tool_call></tool_call> tags:\n")


def render_calls(calls: Sequence[ToolCall], syntax: CallSyntax = HERMES) -> str:
    """Calls from the history, as the model would have written them."""
    parts = []
    for call in calls:
        try:
            args = json.dumps(json.loads(call.arguments), ensure_ascii=False)
        except ValueError:
            args = call.arguments
        name = json.dumps(call.name, ensure_ascii=False) if syntax.quoted else call.name
        if syntax.args == "xml":
            try:
                values = json.loads(call.arguments)
            except ValueError:
                values = {}
            args = "".join(f"{PARAM_OPEN}{k}>\n"
                           f"{v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}"
                           f"{PARAM_CLOSE}" for k, v in (values.items() if isinstance(
                               values, dict) else ()))
        parts.append(syntax.call_open + name + syntax.name_to_args + args +
                     syntax.call_close.replace(ID_SLOT, short_id(call.id)))
    if not syntax.parallel:
        parts = parts[:1]
    return syntax.block_open + syntax.separator.join(parts) + syntax.block_close
