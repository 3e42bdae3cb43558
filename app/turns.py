"""A chat turn shared by the chat APIs (OpenAI chat, Anthropic Messages, OpenAI Responses).

Each API parses its body into :class:`Message` values and a :class:`ToolPolicy`;
:func:`chat_request` renders the prompt and builds the typed request;
:class:`~app.tools.ReplySplitter` splits the reply; :func:`check_calls`
validates each call's arguments against its tool's schema (the grammar already
enforced what a grammar can; this reports the rest, never silently).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from app.chat import DEFAULT_RENDERING, ChatTemplate, Message, Rendering
from app.completion import (
    SERVER_FIELDS,
    CompletionRequest,
    FunctionTool,
    SchemaConstraint,
    ToolsConstraint,
)
from app.errors import InvalidRequest
from app.toolprompt import short_call_id
from app.tools import Reply, ReplySplitter, ToolCall, new_call_id
from grammar import validate
from grammar.tools import HERMES, CallSyntax, raw_params

Choice = Literal["none", "auto", "required"]


@dataclass(frozen=True, slots=True)
class ToolPolicy:
    tools: tuple[FunctionTool, ...] = ()
    choice: Choice = "auto"
    named: str = ""  # a tool the reply must call (choice is then "required")
    parallel: bool = True

    @property
    def active(self) -> bool:
        return bool(self.tools) and self.choice != "none"

    def constraint(self, syntax: CallSyntax = HERMES) -> ToolsConstraint | None:
        if not self.active:
            return None
        chosen = tuple(t for t in self.tools if not self.named or t.name == self.named)
        return ToolsConstraint(chosen, required=self.choice == "required", parallel=self.parallel,
                               syntax=syntax)


def tool_policy(tools: Sequence[FunctionTool], choice: Choice, named: str, parallel: bool, *,
                choice_field: str) -> ToolPolicy:
    """A checked policy: names unique, a named tool declared, ``required`` with tools.

    Raises:
        InvalidRequest: naming the field.
    """
    seen: set[str] = set()
    for t in tools:
        if t.name in seen:
            raise InvalidRequest(f"two tools are named {t.name!r}", param="tools")
        seen.add(t.name)
    if named and named not in seen:
        raise InvalidRequest(f"'{choice_field}' names the tool {named!r}, which is not in 'tools'",
                             param=choice_field)
    if (choice == "required" or named) and not tools:
        raise InvalidRequest(f"'{choice_field}' requires a tool call but 'tools' is empty",
                             param=choice_field)
    return ToolPolicy(tuple(tools), "required" if named else choice, named, parallel)


def parse_arguments(text: str, *, field: str) -> None:
    """Refuse a history call whose arguments are not a JSON object."""
    try:
        value = json.loads(text)
    except ValueError:
        raise InvalidRequest(f"'{field}' is not JSON", param=field) from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"'{field}' must be a JSON object", param=field)


@dataclass(frozen=True, slots=True)
class Turn:
    request: CompletionRequest
    policy: ToolPolicy
    reasoning: bool
    thinking_open: bool
    syntax: CallSyntax = HERMES
    #: call ids must be nine letters and digits (Mistral's templates refuse others)
    short_ids: bool = False

    def splitter(self, *, new_id: Callable[[], str] = new_call_id) -> ReplySplitter:
        return ReplySplitter(tools=self.policy.active, reasoning=self.reasoning,
                             thinking_open=self.thinking_open, syntax=self.syntax,
                             required=self.policy.choice == "required",
                             raw={t.name: raw_params(t.parameters) for t in self.policy.tools},
                             new_id=short_call_id if self.short_ids else new_id)


def chat_request(template: ChatTemplate, messages: Sequence[Message], policy: ToolPolicy,
                 base: CompletionRequest, *, system_prompt: str | None,
                 reasoning: bool, variables: Mapping[str, Any] | None = None,
                 rendering: Rendering = DEFAULT_RENDERING) -> Turn:
    """Render the prompt and attach the tool grammar to ``base`` (built from the sampling fields).

    Raises:
        InvalidRequest: the template refused the messages; tools combined with another
            constraint.
    """
    tools = policy.tools if policy.active else ()
    if tools and not template.tools:
        raise InvalidRequest("tools param requires --jinja flag (this server runs with "
                             "--no-jinja)", param="tools")
    prompt = template.prompt(messages, system_prompt, tools=tools, variables=variables,
                             rendering=rendering)
    constraint = policy.constraint(template.format.syntax)
    # the server's default (--grammar / --json-schema) gives way to a tool call
    server_default = getattr(base.constraint, "field", None) in SERVER_FIELDS
    if constraint is not None and base.constraint is not None and not server_default:
        raise InvalidRequest("a tool call cannot be combined with 'response_format', 'grammar' or "
                             "'json_schema'; set 'tool_choice' to 'none' to use them",
                             param="tool_choice")
    chosen = constraint if constraint is not None else base.constraint
    opened = reasoning and template.thinking_open(prompt)
    # a thinking model thinks before a forced call or a schema-constrained answer: the
    # grammar lets the block come first (a grammar written by the client stays as written)
    thinking: Literal["", "open", "optional"] = ""
    if reasoning and isinstance(chosen, SchemaConstraint | ToolsConstraint):
        thinking = "open" if opened else "optional" if template.thinks else ""
    request = replace(base, prompt=(prompt,), constraint=chosen, thinking=thinking)
    return Turn(request, policy, reasoning, opened,
                template.format.syntax, template.format.short_ids)


@dataclass(frozen=True, slots=True)
class CallCheck:
    call: ToolCall
    valid: bool
    errors: tuple[str, ...]


def check_calls(reply: Reply, policy: ToolPolicy) -> list[CallCheck]:
    """Each call of ``reply``, validated against its tool's parameters."""
    by_name = {t.name: t for t in policy.tools}
    out = []
    for call, complete in zip(reply.calls, reply.complete, strict=True):
        result = validate(call.arguments, by_name[call.name].parameters)
        errors = tuple(f"{v.pointer or '/'}: {v.message}" for v in result.errors)
        if not complete:
            errors = ("the call was cut off", *errors)
        out.append(CallCheck(call, result.valid and complete, errors))
    return out
