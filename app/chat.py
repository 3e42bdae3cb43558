"""Chat templates: messages to a prompt.

The template is, in order of precedence: ``--chat-template-file``, a built-in
named by ``--chat-template``, the GGUF's ``tokenizer.chat_template``, or the
built-in for the model's architecture (the default Gemma 3 model ships none:
it gets ``gemma``). Templates are Jinja, rendered in a sandbox
(``ImmutableSandboxedEnvironment``): a template cannot reach Python objects or
change its inputs. A template that raises (``raise_exception``) for the given
messages is a 400.

A trailing assistant message is a prefill: the history before it is rendered
with the generation prompt, and the assistant text is appended unclosed, so
the model continues it.

Tools: a template that reads ``tools`` and teaches one of the call formats of
:mod:`app.toolformat` (Hermes' ``<tool_call>``, Llama 3's, Mistral's, Granite's,
DeepSeek's, FireFunction's) gets them, and the messages, as Hugging Face's
``apply_chat_template`` passes them (``tools`` as OpenAI function objects,
assistant ``tool_calls`` with ``arguments`` parsed into objects, tool results as
``role: "tool"`` with ``tool_call_id``); a template that does not render
``tool_calls`` itself (Granite 3's) gets each call written into the assistant
text in its format. Mistral's templates accept only nine-letter call ids: other
ids are mapped to such ones, the same id to the same one. Any other template
(or a format forced by ``--tool-call-format`` that it does not teach) gets the
tool instructions of :func:`app.toolprompt.tools_prompt` in its system message, the
calls written into the assistant text, and each result as a user turn inside
``<tool_response>`` tags.

``tojson`` is Hugging Face's (and llama.cpp's): keys in their order, no HTML
escaping (Jinja's own sorts keys and writes ``<`` as ``\\u003c``, which no model
was trained on).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from app.builtin_templates import ALIASES, BUILTINS, BY_ARCHITECTURE
from app.completion import FunctionTool
from app.errors import InvalidRequest
from app.toolformat import BY_NAME, FALLBACK, ToolFormat, detect
from app.toolprompt import render_calls, short_id, tools_prompt
from app.tools import ToolCall
from grammar.tools import THINK_OPEN, CallSyntax

ROLES = ("system", "developer", "user", "assistant", "tool")


@dataclass(frozen=True, slots=True)
class Message:
    role: str  # one of ROLES ("developer" is treated as "system")
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant's calls
    tool_call_id: str = ""  # a tool result: the call it answers
    name: str = ""  # a tool result: the function's name, where known
    reasoning: str = ""  # an assistant's thinking (``reasoning_content``), for templates that show it


@dataclass(frozen=True, slots=True)
class Rendering:
    """How a conversation's end is rendered (the chat body's ``add_generation_prompt`` and
    vLLM's ``continue_final_message``; None: not given). By default a trailing assistant
    message is continued in place (llama.cpp's assistant prefill) and any other conversation
    ends with the generation prompt."""

    add_generation_prompt: bool | None = None
    continue_final: bool | None = None


DEFAULT_RENDERING = Rendering()


def _raise(message: str) -> None:
    raise jinja2.TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


class ChatTemplate:
    """A compiled chat template."""

    def __init__(self, name: str, source: str, *, stops: tuple[str, ...] = (),
                 bos_token: str = "", eos_token: str = "", tools: bool = True,
                 tool_format: str = "auto") -> None:
        # as Hugging Face's apply_chat_template: real templates test ``message.tool_calls``
        # on messages without it, which a strict Undefined would refuse
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = _strftime_now
        env.filters["tojson"] = _tojson
        try:
            self._template = env.from_string(source)
            names = jinja2.meta.find_undeclared_variables(env.parse(source))
        except jinja2.TemplateSyntaxError as exc:
            raise ValueError(f"chat template {name!r} does not compile: {exc}") from None
        # a template renders tools itself only if it teaches a format the grammar can force
        # (and --tool-call-format, if given, names that one); any other gets the
        # instructions of the format used, so the prompt and the grammar agree
        taught = detect(source)
        chosen = taught if tool_format == "auto" else BY_NAME[tool_format]
        self.format: ToolFormat = chosen or FALLBACK
        #: the template knows the format in use: it gets the messages as Hugging Face passes
        #: them (else roles and text, with the calls written in)
        self.knows_format = taught is not None and taught == self.format
        #: it describes ``tools`` itself (else the instructions go into its system message)
        self.renders_tools = self.knows_format and "tools" in names
        #: FireFunction's template adds ``functions`` (a text) to its system prompt: it gets
        #: an empty one, as llama.cpp's renderer gives an unset name, since the tools are
        #: described in the fallback format's instructions (the format the grammar forces)
        self._blank = {"functions": ""} if "functions" in names else {}
        #: it writes an assistant's calls itself (else they go into the assistant's text)
        self.renders_calls = self.knows_format and "tool_calls" in source
        #: the generation prompt opens a thinking block (the model starts inside it)
        self.opens_thinking = False
        #: the template knows thinking blocks (its model may write one)
        self.thinks = THINK_OPEN in source
        self.name = name
        self.source = source
        #: tools may be used (False under --no-jinja, as llama.cpp's built-in templates)
        self.tools = tools
        self.stops = stops
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render(self, messages: Sequence[Message], *, tools: Sequence[FunctionTool] = (),
               add_generation_prompt: bool = True,
               variables: Mapping[str, Any] | None = None) -> str:
        """The prompt for ``messages``; ``variables`` are more names for the template
        (``chat_template_kwargs``, such as ``enable_thinking``; checked by :func:`template_variables`).

        Raises:
            InvalidRequest: the template refused the messages.
        """
        # llama.cpp gives every template today's date (Llama 3.x's read date_string, and
        # firefunction's datetime); the request's own variables win
        now = datetime.datetime.now()
        extra: dict[str, Any] = {"date_string": now.strftime("%d %b %Y"),
                                 "datetime": now.strftime("%b %d %Y"), **self._blank,
                                 **(variables or {})}
        if self.knows_format:
            wire = [_hf_message(m, self.format, calls=self.renders_calls) for m in messages]
            if tools and not self.renders_tools:
                _instruct(wire, tools_prompt(tools, self.format.syntax))
            elif tools:
                extra["tools"] = [{"type": "function", "function": {
                    "name": t.name, "description": t.description, "parameters": t.parameters}}
                    for t in tools]
        else:
            wire = _plain_messages(messages, tools, self.format.syntax)
        try:
            return self._template.render(messages=wire, add_generation_prompt=add_generation_prompt,
                                         bos_token=self.bos_token, eos_token=self.eos_token,
                                         **extra)
        except jinja2.TemplateError as exc:
            raise InvalidRequest(f"the chat template refused the messages: {exc}",
                                 param="messages") from None
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
            raise InvalidRequest(f"the chat template failed on the messages: {exc}",
                                 param="messages") from None

    def prompt(self, messages: Sequence[Message], system_prompt: str | None = None, *,
               tools: Sequence[FunctionTool] = (),
               variables: Mapping[str, Any] | None = None,
               rendering: Rendering = DEFAULT_RENDERING) -> str:
        """Render a conversation; a trailing assistant message is continued (prefill) unless
        ``rendering`` says otherwise (see :class:`Rendering`).

        Raises:
            InvalidRequest: the template refused the messages, or ``rendering`` does not fit
                them (two assistant messages at the end to continue, a continued message
                with tool calls, both switches true), as llama.cpp refuses them.
        """
        if system_prompt and not any(m.role in ("system", "developer") for m in messages):
            messages = [Message("system", system_prompt), *messages]
        last = messages[-1] if messages else None
        trailing = last is not None and last.role == "assistant"
        go_on, generation = rendering.continue_final, rendering.add_generation_prompt
        if go_on is None:  # llama.cpp's assistant prefill
            go_on = trailing and last is not None and not last.tool_calls
            if go_on and len(messages) >= 2 and messages[-2].role == "assistant":
                raise InvalidRequest("'messages': cannot have 2 or more assistant messages at "
                                     "the end of the list", param="messages")
        elif go_on:
            if generation:
                raise InvalidRequest("'add_generation_prompt' and 'continue_final_message' "
                                     "cannot both be true", param="continue_final_message")
            if not trailing or last is None or last.tool_calls:
                raise InvalidRequest("'continue_final_message' needs a last assistant message "
                                     "without tool calls", param="continue_final_message")
        if go_on and last is not None:
            return self.render(messages[:-1], tools=tools, variables=variables) + last.content
        return self.render(messages, tools=tools, variables=variables,
                           add_generation_prompt=generation is not False)

    def thinking_open(self, prompt: str) -> bool:
        """Whether ``prompt`` (rendered by this template) leaves the model inside ``<think>``."""
        return prompt.rstrip().endswith(THINK_OPEN)


def _hf_message(m: Message, fmt: ToolFormat, *, calls: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role,
                           "content": m.content}
    if m.reasoning and m.role == "assistant":
        out["reasoning_content"] = m.reasoning
    ident = short_id if fmt.short_ids else str
    if m.tool_calls and calls:
        out["tool_calls"] = [{"id": ident(c.id), "type": "function", "function": {
            "name": c.name, "arguments": _arguments(c)}} for c in m.tool_calls]
    elif m.tool_calls:
        for c in m.tool_calls:
            _arguments(c)
        out["content"] = (m.content + render_calls(m.tool_calls, fmt.syntax)).lstrip("\n")
    if m.role == "tool":
        out["tool_call_id"] = ident(m.tool_call_id)
        if m.name:
            out["name"] = m.name
    return out


def _arguments(call: ToolCall) -> Any:
    try:
        return json.loads(call.arguments)
    except ValueError:
        raise InvalidRequest(f"the arguments of tool call {call.id!r} are not JSON",
                             param="messages") from None


def _plain_messages(messages: Sequence[Message], tools: Sequence[FunctionTool],
                    syntax: CallSyntax) -> list[dict[str, str]]:
    """Messages for a template that knows only roles and text."""
    out: list[dict[str, str]] = []
    for m in messages:
        role = "system" if m.role == "developer" else m.role
        content = m.content
        if m.tool_calls:
            content = "\n".join([content, render_calls(m.tool_calls, syntax)]).lstrip("\n")
        if role == "tool":
            role, content = "user", f"<tool_response>\n{content}\n</tool_response>"
        out.append({"role": role, "content": content})
    if tools:
        _instruct(out, tools_prompt(tools, syntax))
    return out


def _instruct(messages: list[Any], block: str) -> None:
    """Put the tool instructions into the system message (a new one if there is none)."""
    if messages and messages[0]["role"] == "system":
        messages[0] = {**messages[0], "content": messages[0]["content"] + "\n\n" + block}
    else:
        messages.insert(0, {"role": "system", "content": block})


def builtin_names() -> list[str]:
    return sorted(BUILTINS)


def detect_builtin(source: str) -> str | None:
    """The built-in a model's template is, by its markers (llama.cpp's detection for
    ``--no-jinja``, reduced to the built-ins here); None when none matches."""
    if "<|im_start|>" in source:
        return "chatml"
    if "<start_of_turn>" in source:
        return "gemma"
    if "<|start_header_id|>" in source:
        return "llama-3"
    if "[INST]" in source:
        return "llama-2" if "<<SYS>>" in source else "mistral"
    if "<|assistant|>" in source and "<|end|>" in source:
        return "phi-3"
    if "<|user|>" in source and "</s>" in source:
        return "zephyr"
    if "USER:" in source and "ASSISTANT:" in source:
        return "vicuna_v1.1"
    return None


def select(*, file: Path | None, name: str | None, gguf_template: str | None, architecture: str,
           bos_token: str, eos_token: str, jinja: bool = True,
           tool_format: str = "auto") -> ChatTemplate:
    """Pick the chat template by the precedence in the module docstring.

    ``jinja=False`` is llama.cpp's ``--no-jinja``: no template file or model template is run;
    the built-in they look like (:func:`detect_builtin`) is used instead, else the one for the
    architecture, and tools are refused (as llama.cpp refuses them without ``--jinja``).

    Raises:
        ValueError: an unknown built-in name, or a template that does not compile.
    """
    if not jinja:
        key = ALIASES.get(name, name) if name is not None else None
        if key is None:
            seen = file.read_text(encoding="utf-8") if file is not None else gguf_template or ""
            key = detect_builtin(seen) or BY_ARCHITECTURE.get(architecture, "chatml")
        if key not in BUILTINS:
            raise ValueError(f"unknown chat template {name!r}; built-ins: "
                             f"{', '.join(builtin_names())}")
        b = BUILTINS[key]
        return ChatTemplate(key, b.source, stops=b.stops, bos_token=bos_token,
                            eos_token=eos_token, tools=False)
    if file is not None:
        return ChatTemplate(f"file:{file.name}", file.read_text(encoding="utf-8"),
                            bos_token=bos_token, eos_token=eos_token, tool_format=tool_format)
    if name is not None:
        key = ALIASES.get(name, name)
        if key not in BUILTINS:
            raise ValueError(f"unknown chat template {name!r}; built-ins: "
                             f"{', '.join(builtin_names())}")
        b = BUILTINS[key]
        return ChatTemplate(key, b.source, stops=b.stops, bos_token=bos_token, eos_token=eos_token,
                            tool_format=tool_format)
    if gguf_template:
        return ChatTemplate("gguf", gguf_template, bos_token=bos_token, eos_token=eos_token,
                            tool_format=tool_format)
    key = BY_ARCHITECTURE.get(architecture, "chatml")
    b = BUILTINS[key]
    return ChatTemplate(key, b.source, stops=b.stops, bos_token=bos_token, eos_token=eos_token,
                        tool_format=tool_format)


#: names the renderer sets itself: ``chat_template_kwargs`` may not replace them
RESERVED_VARIABLES = frozenset({"messages", "tools", "add_generation_prompt", "bos_token",
                                "eos_token"})


def template_variables(server: Mapping[str, Any], request: Mapping[str, Any] | None, *,
                       field: str = "chat_template_kwargs") -> dict[str, Any]:
    """The server's ``--chat-template-kwargs`` with a request's own over them.

    Raises:
        InvalidRequest: a request's key the renderer sets itself, naming it.
    """
    out = dict(server)
    for key, value in (request or {}).items():
        if key in RESERVED_VARIABLES:
            raise InvalidRequest(f"invalid value for '{field}.{key}': the template gets "
                                 f"'{key}' from the request itself", param=f"{field}.{key}")
        out[key] = value
    return out
