"""Anthropic's Messages API: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``.

The body is checked by ``schemas/anthropic_messages.json`` and turned into the
shared chat turn of :mod:`app.turns`; replies and streams take Anthropic's
shapes (content blocks ``thinking``, ``text``, ``tool_use``; the event sequence
``message_start``, ``content_block_start``, ``ping``, ``content_block_delta``,
``content_block_stop``, ``message_delta``, ``message_stop``). Errors on these
routes have Anthropic's shape (``app.errors.anthropic_body``). ``x-api-key``
is one of the accepted key headers; ``anthropic-version`` and
``anthropic-beta`` are accepted and not checked.

Decisions: image and document blocks are a 400 (no model here has a projector);
``output_config.format`` (structured output) constrains the text by its JSON Schema, as
``response_format`` does on OpenAI's routes; ``thinking`` blocks in the history become the
assistant message's ``reasoning_content``, which templates that show past thinking (Qwen3's)
render; ``tool_choice: any`` is a required call; an empty ``messages`` is rendered as it is
(the template's generation prompt after the system text, as llama-server does); a stop on
one of ``stop_sequences`` is ``stop_reason: "stop_sequence"``, a stop on the template's own
turn marker ``end_turn``; the reply has no ``timings`` (llama-server leaves them out of this
shape, and its suite checks it). ``usage.cache_read_input_tokens``
counts the prompt tokens reused from the slot's cache.
"""

from __future__ import annotations

import json
from typing import Any

import trio
from quart import Response

from app import sse
from app.api.common import Family, json_response, streamed, with_model
from app.api.drive import SseWire, drive
from app.api.report import call_checks, extras
from app.bound import Bound
from app.chat import Message
from app.completion import (
    Delta,
    FunctionTool,
    Outcome,
    SchemaConstraint,
    StopType,
)
from app.errors import JSON, InvalidRequest, ServerError, anthropic_body
from app.prepare import tokenize_prompt
from app.requests import build, sampling_from, schema_mode_from, stops_from
from app.running import Completion
from app.tools import (
    CallArguments,
    CallEnd,
    CallStart,
    Piece,
    ReasoningPiece,
    Reply,
    ReplySplitter,
    TextPiece,
    ToolCall,
    new_call_id,
)
from app.turns import Choice, ToolPolicy, Turn, chat_request, tool_policy

anthropic = Family("anthropic", __name__, error_body=anthropic_body,
                   error_event=lambda exc: sse.named("error", anthropic_body(exc)))


# --- body -> typed values ------------------------------------------------------------------------
def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(b["text"] for b in content or () if b["type"] == "text")


def conversation(body: JSON) -> list[Message]:
    """``system`` and ``messages`` as messages; tool results become ``tool`` messages."""
    out: list[Message] = []
    system = body.get("system")
    if system:
        out.append(Message("system", _text_of(system)))
    names: dict[str, str] = {}
    for i, m in enumerate(body["messages"]):
        content = m["content"]
        if isinstance(content, str):
            out.append(Message(m["role"], content))
            continue
        texts: list[str] = []
        calls: list[ToolCall] = []
        thoughts: list[str] = []
        for j, block in enumerate(content):
            kind = block["type"]
            where = f"messages[{i}].content[{j}]"
            if kind in ("image", "document"):
                raise InvalidRequest(f"'{where}': {kind} input is not supported by this model "
                                     "(it has no multimodal projector)", param=where)
            if kind == "text":
                texts.append(block["text"])
            elif kind == "tool_use":
                if m["role"] != "assistant":
                    raise InvalidRequest(f"'{where}': only assistant messages carry 'tool_use' "
                                         "blocks", param=where)
                calls.append(ToolCall(block["id"], block["name"],
                                      json.dumps(block["input"], ensure_ascii=False)))
                names[block["id"]] = block["name"]
            elif kind == "tool_result":
                if m["role"] != "user":
                    raise InvalidRequest(f"'{where}': only user messages carry 'tool_result' "
                                         "blocks", param=where)
                result = _text_of(block.get("content", ""))
                if block.get("is_error"):
                    result = f"Error: {result}"
                out.append(Message("tool", result, tool_call_id=block["tool_use_id"],
                                   name=names.get(block["tool_use_id"], "")))
            elif kind == "thinking" and m["role"] == "assistant":
                thoughts.append(block.get("thinking") or "")
            # redacted thinking has nothing a template could show
        if texts or calls or thoughts:
            out.append(Message(m["role"], "".join(texts), tuple(calls),
                               reasoning="\n\n".join(t for t in thoughts if t)))
    return out


def policy(body: JSON) -> ToolPolicy:
    tools = tuple(FunctionTool(t["name"], t.get("description") or "", t["input_schema"],
                               field=f"tools[{i}].input_schema", strict=t.get("strict") is True)
                  for i, t in enumerate(body.get("tools") or ()))
    wire = body.get("tool_choice") or {"type": "auto"}
    kind = wire["type"]
    if kind == "tool" and not wire.get("name"):
        raise InvalidRequest("'tool_choice' of type 'tool' needs 'name'", param="tool_choice.name")
    choices: dict[str, Choice] = {"auto": "auto", "any": "required", "tool": "required",
                                  "none": "none"}
    choice = choices[kind]
    return tool_policy(tools, choice if tools or kind != "auto" else "none",
                       wire.get("name", "") if kind == "tool" else "",
                       not wire.get("disable_parallel_tool_use", False), choice_field="tool_choice")


def turn_of(svc: Bound, body: JSON) -> Turn:
    template = svc.chat
    stops = stops_from(body.get("stop_sequences"), field="stop_sequences")
    fmt = (body.get("output_config") or {}).get("format")
    base = build(svc.defaults, prompt=("",), sampling=sampling_from(body, svc.defaults),
                 n_predict=int(body["max_tokens"]),
                 stops=tuple(dict.fromkeys([*template.stops, *stops])),
                 constraint=SchemaConstraint(fmt["schema"], field="output_config.format")
                 if fmt else None, schema_mode=schema_mode_from(body))
    thinking = (body.get("thinking") or {}).get("type", "enabled") != "disabled"
    return chat_request(template, conversation(body), policy(body), base,
                        system_prompt=svc.settings.system_prompt,
                        reasoning=thinking and svc.settings.reasoning_format != "none",
                        variables=svc.template_variables(thinking=False if not thinking
                                                         else None))


# --- typed outcome -> Anthropic's shape ----------------------------------------------------------
def stop_reason(outcome: Outcome, reply: Reply, user_stops: tuple[str, ...]) -> tuple[str, str | None]:
    if outcome.stop is StopType.LIMIT:
        return "max_tokens", None
    if reply.calls:
        return "tool_use", None
    if outcome.stop is StopType.WORD and outcome.stopping_word in user_stops:
        return "stop_sequence", outcome.stopping_word
    return "end_turn", None


def _usage(outcome: Outcome) -> JSON:
    return {"input_tokens": outcome.n_prompt, "output_tokens": outcome.n_predicted,
            "cache_read_input_tokens": outcome.tokens_cached, "cache_creation_input_tokens": 0}


def _input(call: ToolCall) -> Any:
    try:
        value = json.loads(call.arguments)
    except ValueError:
        return {}  # cut off by max_tokens: stop_reason says so
    return value


def content_blocks(reply: Reply) -> list[JSON]:
    blocks: list[JSON] = []
    if reply.reasoning:
        blocks.append({"type": "thinking", "thinking": reply.reasoning, "signature": ""})
    if reply.text or not reply.calls:
        blocks.append({"type": "text", "text": reply.text})
    blocks += [{"type": "tool_use", "id": c.id, "name": c.name, "input": _input(c)}
               for c in reply.calls]
    return blocks


def _failure(message: str) -> bytes:
    """Anthropic's ``error`` event, framed by hand (the failure may be in the encoder)."""
    return b"event: error\ndata: " + json.dumps({"type": "error", "error": {
        "type": "api_error", "message": message}}).encode() + b"\n\n"


@anthropic.route("/v1/messages", methods=["POST"])
@with_model("anthropic_messages")
async def messages(m: Bound, body: JSON) -> Response:
    turn = await trio.to_thread.run_sync(turn_of, m, body)  # templates: proportional work
    user_stops = tuple(body.get("stop_sequences") or ())
    completion = await m.submit(turn.request)
    ident = f"msg_{completion.id:08d}{new_call_id('')[:16]}"
    splitter = turn.splitter(new_id=lambda: new_call_id("toolu_"))
    head: JSON = {"id": ident, "type": "message", "role": "assistant", "model": m.model_name}
    if body.get("stream"):
        wire = MessageStream(completion, splitter, turn, head, user_stops)
        return streamed(drive(m, [completion], wire, m.settings.queue_ping_interval_s),
                        completion.id, failure=_failure)
    outcome = await completion.result()
    splitter.feed(outcome.text)
    splitter.close()
    reason, sequence = stop_reason(outcome, splitter.reply, user_stops)
    return json_response({**head, "content": content_blocks(splitter.reply), "stop_reason": reason,
                          "stop_sequence": sequence, "usage": _usage(outcome),
                          **extras(outcome, with_timings=False),
                          **await call_checks(splitter.reply, turn)},
                         headers={"X-Request-Id": str(completion.id)})


class _Blocks:
    """Content blocks opened and closed as pieces arrive."""

    def __init__(self) -> None:
        self.index = -1
        self.kind = ""  # the open block's type, "" when none is open

    def close(self) -> list[bytes]:
        if not self.kind:
            return []
        self.kind = ""
        return [sse.named("content_block_stop", {"type": "content_block_stop", "index": self.index})]

    def open(self, block: JSON) -> list[bytes]:
        out = self.close()
        self.index += 1
        self.kind = block["type"]
        out.append(sse.named("content_block_start", {"type": "content_block_start",
                                                     "index": self.index, "content_block": block}))
        if self.index == 0:
            out.append(sse.named("ping", {"type": "ping"}))
        return out

    def delta(self, delta: JSON) -> bytes:
        return sse.named("content_block_delta", {"type": "content_block_delta", "index": self.index,
                                                 "delta": delta})

    def pieces(self, pieces: list[Piece]) -> list[bytes]:
        out: list[bytes] = []
        for piece in pieces:
            match piece:
                case ReasoningPiece(text=text):
                    if self.kind != "thinking":
                        out += self.open({"type": "thinking", "thinking": "", "signature": ""})
                    out.append(self.delta({"type": "thinking_delta", "thinking": text}))
                case TextPiece(text=text):
                    if self.kind != "text":
                        out += self.open({"type": "text", "text": ""})
                    out.append(self.delta({"type": "text_delta", "text": text}))
                case CallStart(id=ident, name=name):
                    out += self.open({"type": "tool_use", "id": ident, "name": name, "input": {}})
                case CallArguments(text=text):
                    out.append(self.delta({"type": "input_json_delta", "partial_json": text}))
                case CallEnd():
                    out += self.close()
        return out


class MessageStream(SseWire):
    """Anthropic's message stream (a :class:`~app.api.drive.StreamWire`): ``message_start``,
    content blocks as the reply splits into thinking, text and tool uses, ``message_delta``
    with the stop reason, ``message_stop``; a failure is an ``error`` event."""

    def __init__(self, completion: Completion, splitter: ReplySplitter, turn: Turn,
                 head: JSON, user_stops: tuple[str, ...]) -> None:
        self.completion, self.splitter, self.turn = completion, splitter, turn
        self.head, self.user_stops = head, user_stops
        self.blocks = _Blocks()

    def begin(self) -> list[bytes]:
        return [sse.named("message_start", {"type": "message_start", "message": {
            **self.head, "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": self.completion.n_prompt, "output_tokens": 0}}})]

    def delta(self, index: int, item: Delta) -> list[bytes]:
        return self.blocks.pieces(self.splitter.feed(item.text))

    async def final(self, index: int, outcome: Outcome) -> list[bytes]:
        blocks, splitter = self.blocks, self.splitter
        out = blocks.pieces(splitter.close())
        if blocks.index < 0:
            out += blocks.open({"type": "text", "text": ""})
        out += blocks.close()
        reason, sequence = stop_reason(outcome, splitter.reply, self.user_stops)
        out.append(sse.named("message_delta", {
            "type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
            "usage": {"output_tokens": outcome.n_predicted}, **extras(outcome, with_timings=False),
            **await call_checks(splitter.reply, self.turn)}))
        out.append(sse.named("message_stop", {"type": "message_stop"}))
        return out

    def failure(self, index: int, message: str) -> list[bytes]:
        return [sse.named("error", anthropic_body(ServerError(message)))]


@anthropic.route("/v1/messages/count_tokens", methods=["POST"])
@with_model("anthropic_count_tokens", sse_stream=False)
async def count_tokens(svc: Bound, body: JSON) -> Response:
    """The templated prompt's token count, as the request would be evaluated."""
    turn = await trio.to_thread.run_sync(turn_of, svc, {**body, "max_tokens": 1})
    prompt = turn.request.prompt
    n = await svc.with_model(lambda rt: len(tokenize_prompt(rt.model, prompt)))
    return json_response({"input_tokens": n})
