"""The OpenAI-shaped chat body as a typed request: ``messages`` (tool calls and results
included), ``tools`` and ``tool_choice``, ``response_format``, the sampling fields and limits.

OpenAI's routes read their bodies with it; Ollama's ``/api/chat`` translates its body into
this shape first (its messages and tools are OpenAI's with other names). It lives apart
from both so that neither family imports the other.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from app.chat import Message, Rendering
from app.completion import CompletionRequest, Constraint, FunctionTool, SchemaConstraint
from app.errors import JSON, InvalidRequest
from app.requests import (
    Defaults,
    build,
    constraint_from,
    logit_bias_from,
    native_options,
    sampling_from,
    stops_from,
)
from app.tools import ToolCall
from app.turns import Choice, ToolPolicy, parse_arguments, tool_policy


def _constraint(body: JSON) -> Constraint | None:
    native = constraint_from(body)
    fmt = body.get("response_format")
    if fmt is None or fmt["type"] == "text":
        return native
    if native is not None:
        raise InvalidRequest("'response_format' cannot be combined with 'json_schema' or "
                             "'grammar'", param="response_format")
    if fmt["type"] == "json_object":
        return SchemaConstraint(fmt.get("schema", {"type": "object"}), field="response_format")
    return SchemaConstraint(fmt["json_schema"]["schema"], field="response_format",
                            strict=fmt["json_schema"].get("strict") is True)


def openai_request(body: JSON, defaults: Defaults, *, prompt: str | list[str | int],
                   n_probs: int, extra_stops: tuple[str, ...] = ()) -> CompletionRequest:
    """A chat or text completion body checked by its schema, as a typed request."""
    limit = body.get("max_completion_tokens")
    if limit is None:
        limit = body.get("max_tokens")
    if limit is None:  # llama.cpp's own name, which its OpenAI routes take too
        limit = body.get("n_predict")
    stops = tuple(dict.fromkeys([*extra_stops, *stops_from(body.get("stop"))]))
    sampling = sampling_from(body, defaults)
    return build(
        defaults, prompt=(prompt,) if isinstance(prompt, str) else tuple(prompt),
        sampling=replace(sampling, n_probs=n_probs),
        logit_bias=logit_bias_from(body.get("logit_bias")),
        n_predict=int(limit) if limit is not None else None,
        stops=stops, constraint=_constraint(body), **native_options(body, defaults))


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, list):
        return "".join(part["text"] for part in content)
    return str(content)


#: llama.cpp's words for a media part the model has no projector for
_MEDIA = {"image_url": "image", "input_audio": "audio", "input_video": "video",
          "video_url": "video"}


def messages(body: JSON) -> list[Message]:
    """The conversation, tool calls and tool results included (checked; 400 naming the field)."""
    out = []
    for i, m in enumerate(body["messages"]):
        role = m["role"]
        for j, part in enumerate(m.get("content") if isinstance(m.get("content"), list) else ()):
            if part["type"] in _MEDIA:  # no model here has a multimodal projector (mmproj)
                where = f"messages[{i}].content[{j}]"
                raise InvalidRequest(
                    f"{_MEDIA[part['type']]} input is not supported - hint: if this is "
                    f"unexpected, you may need to provide the mmproj ('{where}')", param=where)
        calls = []
        for j, c in enumerate(m.get("tool_calls") or ()):
            if role != "assistant":
                raise InvalidRequest(f"'messages[{i}].tool_calls': only assistant messages carry "
                                     "tool calls", param=f"messages[{i}].tool_calls")
            parse_arguments(c["function"]["arguments"],
                            field=f"messages[{i}].tool_calls[{j}].function.arguments")
            calls.append(ToolCall(c["id"], c["function"]["name"], c["function"]["arguments"]))
        if role == "tool" and not m.get("tool_call_id"):
            raise InvalidRequest(f"'messages[{i}].tool_call_id' is required in a tool message",
                                 param=f"messages[{i}].tool_call_id")
        if m.get("content") is None and not calls:
            raise InvalidRequest(f"'messages[{i}].content' is required unless the message has "
                                 "'tool_calls'", param=f"messages[{i}].content")
        out.append(Message(role, _text(m.get("content")), tuple(calls),
                           tool_call_id=m.get("tool_call_id") or "", name=m.get("name") or "",
                           reasoning=m.get("reasoning_content") or ""))
    return out


def tools_from(body: JSON) -> ToolPolicy:
    tools = tuple(
        FunctionTool(t["function"]["name"], t["function"].get("description") or "",
                     t["function"].get("parameters", {"type": "object", "properties": {}}),
                     field=f"tools[{i}].function.parameters",
                     strict=t["function"].get("strict") is True)
        for i, t in enumerate(body.get("tools") or ()))
    wire = body.get("tool_choice")
    named = ""
    choice: Choice = "auto" if tools else "none"
    if isinstance(wire, dict):
        named, choice = wire["function"]["name"], "required"
    elif wire is not None:
        choice = wire
    parallel = body.get("parallel_tool_calls")
    return tool_policy(tools, choice, named, True if parallel is None else parallel,
                       choice_field="tool_choice")


def reasoning_from(body: JSON, default: str) -> bool:
    fmt = body.get("reasoning_format") or default
    return fmt != "none"


def rendering_from(body: JSON) -> Rendering:
    """``add_generation_prompt`` and ``continue_final_message`` (vLLM's, which llama.cpp takes)."""
    return Rendering(body.get("add_generation_prompt"), body.get("continue_final_message"))
