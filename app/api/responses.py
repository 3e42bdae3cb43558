"""OpenAI's Responses API, stateless: ``POST /v1/responses``.

``input`` (a string, or message / ``function_call`` / ``function_call_output``
items), ``instructions``, ``max_output_tokens``, sampling, function ``tools``,
``tool_choice``, ``parallel_tool_calls`` and ``text.format`` (``json_schema``
structured output) become the shared chat turn of :mod:`app.turns`. Output
items: ``reasoning`` (split-off thinking), ``message`` with ``output_text``,
``function_call``. Streams carry the typed events (``response.created``,
``response.output_item.added``, ``response.output_text.delta``,
``response.function_call_arguments.delta``, ... ``response.completed``), each
with its ``sequence_number``.

Sluice stores nothing: ``previous_response_id``, ``conversation``,
``prompt`` (stored prompts), ``background`` and ``store: true`` are a 400 that
says so; a client resends the conversation as ``input`` items (with
``store: false``, as OpenAI's stateless mode does). Image and file inputs are
a 400 (no projector).
"""

from __future__ import annotations

import json
import time
from typing import Any

import trio
from quart import Response

from app import sse
from app.api.common import Family, json_response, streamed, with_model
from app.api.drive import SseWire, drive
from app.api.report import call_checks, extras, progress_fields, timing_fields
from app.bound import Bound
from app.chat import Message
from app.completion import (
    Delta,
    FunctionTool,
    Outcome,
    PromptProgress,
    SchemaConstraint,
    StopType,
)
from app.errors import JSON, InvalidRequest, ServerError
from app.prepare import tokenize_prompt
from app.requests import build, sampling_from, schema_mode_from
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
from app.turns import Choice, Turn, chat_request, parse_arguments, tool_policy

responses = Family("responses", __name__)

_STATEFUL = ("previous_response_id", "conversation", "prompt", "background")


# --- body -> typed values ------------------------------------------------------------------------
def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    out = []
    for k, part in enumerate(content):
        if part["type"] in ("input_image", "input_file", "input_audio"):
            raise InvalidRequest(f"'{where}[{k}]': {part['type']} is not supported by this model "
                                 "(it has no multimodal projector)", param=f"{where}[{k}]")
        out.append(part.get("text") or part.get("refusal") or "")
    return "".join(out)


def conversation(body: JSON) -> list[Message]:
    out: list[Message] = []
    if body.get("instructions"):
        out.append(Message("system", body["instructions"]))
    raw = body["input"]
    if isinstance(raw, str):
        return [*out, Message("user", raw)]
    names: dict[str, str] = {}
    thought = ""  # a reasoning item's text, for the assistant turn that follows it
    for i, item in enumerate(raw):
        kind = item.get("type", "message")
        where = f"input[{i}]"
        if kind == "reasoning":
            parts = item.get("content") or item.get("summary") or ()
            thought = "".join(p["text"] for p in parts)
        elif kind == "message":
            role = item["role"]
            out.append(Message(role, _text(item["content"], f"{where}.content"),
                               reasoning=thought if role == "assistant" else ""))
            thought = ""
        elif kind == "function_call":
            parse_arguments(item["arguments"], field=f"{where}.arguments")
            call_id = item["call_id"]
            names[call_id] = item["name"]
            call = ToolCall(call_id, item["name"], item["arguments"])
            if out and out[-1].role == "assistant" and not thought:  # one turn's calls
                last = out[-1]
                out[-1] = Message("assistant", last.content, (*last.tool_calls, call),
                                  reasoning=last.reasoning)
            else:
                out.append(Message("assistant", "", (call,), reasoning=thought))
            thought = ""
        elif kind == "function_call_output":
            out.append(Message("tool", _text(item["output"], f"{where}.output"),
                               tool_call_id=item["call_id"], name=names.get(item["call_id"], "")))
        elif kind == "item_reference":
            raise InvalidRequest(f"'{where}': item references need stored responses; this server "
                                 "is stateless: send the items themselves", param=where)
    if not any(m.role != "system" for m in out):
        raise InvalidRequest("'input' must hold at least one message", param="input")
    return out


def turn_of(svc: Bound, body: JSON) -> Turn:
    for name in _STATEFUL:
        if body.get(name):
            raise InvalidRequest(f"'{name}' needs stored responses; this server is stateless: "
                                 "resend the conversation as 'input' items", param=name)
    if body.get("store"):
        raise InvalidRequest("'store': true is not supported: this server is stateless (send "
                             "'store': false and the whole conversation as 'input')", param="store")
    tools = tuple(FunctionTool(t["name"], t.get("description") or "",
                               t.get("parameters") or {"type": "object", "properties": {}},
                               field=f"tools[{i}].parameters",
                               strict=t.get("strict") is not False)  # OpenAI's default: strict
                  for i, t in enumerate(body.get("tools") or ()))
    wire = body.get("tool_choice")
    choice: Choice = "auto" if tools else "none"
    named = ""
    if isinstance(wire, dict):
        choice, named = "required", wire["name"]
    elif wire is not None:
        choice = wire
    parallel = body.get("parallel_tool_calls")
    policy = tool_policy(tools, choice, named, True if parallel is None else parallel,
                         choice_field="tool_choice")
    fmt = (body.get("text") or {}).get("format") or {"type": "text"}
    constraint = None
    if fmt["type"] == "json_schema":
        constraint = SchemaConstraint(fmt["schema"], field="text.format.schema",
                                      strict=fmt.get("strict") is True)
    elif fmt["type"] == "json_object":
        constraint = SchemaConstraint({"type": "object"}, field="text.format")
    template = svc.chat
    limit = body.get("max_output_tokens")
    base = build(svc.defaults, prompt=("",), sampling=sampling_from(body, svc.defaults),
                 n_predict=int(limit) if limit is not None else None,
                 stops=template.stops, constraint=constraint, schema_mode=schema_mode_from(body),
                 timings_per_token=bool(body.get("timings_per_token")),
                 return_progress=bool(body.get("return_progress")))
    return chat_request(template, conversation(body), policy, base,
                        system_prompt=svc.settings.system_prompt,
                        reasoning=svc.settings.reasoning_format != "none",
                        variables=svc.template_variables())


# --- typed outcome -> the Responses shape --------------------------------------------------------
def _message_item(ident: str, text: str, status: str) -> JSON:
    return {"type": "message", "id": ident, "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
            if status == "completed" else []}


def _reasoning_item(ident: str, text: str) -> JSON:
    return {"type": "reasoning", "id": ident, "summary": [],
            "content": [{"type": "reasoning_text", "text": text}]}


def _call_item(ident: str, call_id: str, name: str, arguments: str, status: str) -> JSON:
    return {"type": "function_call", "id": ident, "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}


def output_items(reply: Reply, ids: _Ids) -> list[JSON]:
    items: list[JSON] = []
    if reply.reasoning:
        items.append(_reasoning_item(ids.reasoning, reply.reasoning))
    if reply.text or not reply.calls:
        items.append(_message_item(ids.message, reply.text, "completed"))
    items += [_call_item(ids.call_item(c.id), c.id, c.name, c.arguments, "completed")
              for c in reply.calls]
    return items


class _Ids:
    def __init__(self, base: str) -> None:
        self.message = f"msg_{base}"
        self.reasoning = f"rs_{base}"
        self._calls: dict[str, str] = {}

    def call_item(self, call_id: str) -> str:
        return self._calls.setdefault(call_id, new_call_id("fc_"))


def response_object(body: JSON, ident: str, created: int, model: str, *, status: str,
                    output: list[JSON], outcome: Outcome | None) -> JSON:
    incomplete = None
    if outcome is not None and outcome.stop is StopType.LIMIT:
        status, incomplete = "incomplete", {"reason": "max_output_tokens"}
    usage = None
    if outcome is not None:
        usage = {"input_tokens": outcome.n_prompt,
                 "input_tokens_details": {"cached_tokens": outcome.tokens_cached},
                 "output_tokens": outcome.n_predicted,
                 "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": outcome.n_prompt + outcome.n_predicted}
    fmt = (body.get("text") or {}).get("format") or {"type": "text"}
    return {
        "id": ident, "object": "response", "created_at": created, "status": status,
        "error": None, "incomplete_details": incomplete, "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"), "model": model, "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True) is not False,
        "previous_response_id": None, "reasoning": {"effort": None, "summary": None},
        "store": False, "temperature": body.get("temperature"), "text": {"format": fmt},
        "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [],
        "top_p": body.get("top_p"), "truncation": "disabled", "usage": usage,
        "metadata": body.get("metadata") or {},
    }


def _failure(message: str) -> bytes:
    """The Responses stream's ``error`` event, framed by hand (the failure may be in the
    encoder)."""
    return b"event: error\ndata: " + json.dumps({"type": "error", "code": "server_error",
                                                 "message": message, "param": None}).encode() + b"\n\n"


@responses.route("/v1/responses", methods=["POST"])
@responses.route("/responses", methods=["POST"])
@with_model("responses")
async def create(m: Bound, body: JSON) -> Response:
    turn = await trio.to_thread.run_sync(turn_of, m, body)  # templates: proportional work
    completion = await m.submit(turn.request)
    base = f"{completion.id:08d}{new_call_id('')[:16]}"
    ident, ids, created = f"resp_{base}", _Ids(base), int(time.time())
    splitter = turn.splitter()
    if body.get("stream"):
        wire = ResponseStream(splitter, turn, body, ident, ids, created, m.model_name)
        return streamed(drive(m, [completion], wire, m.settings.queue_ping_interval_s),
                        completion.id, failure=_failure)
    outcome = await completion.result()
    splitter.feed(outcome.text)
    splitter.close()
    out = response_object(body, ident, created, m.model_name, status="completed",
                          output=output_items(splitter.reply, ids), outcome=outcome)
    return json_response({**out, **extras(outcome), **await call_checks(splitter.reply, turn)},
                         headers={"X-Request-Id": str(completion.id)})


class _Stream:
    """Output items opened and closed as pieces arrive, each event numbered."""

    def __init__(self, ids: _Ids) -> None:
        self.ids = ids
        self.seq = -1
        self.index = -1
        self.kind = ""
        self.text = ""
        self.call: JSON = {}
        self.extra: JSON = {}  # llama.cpp's timings, on the delta events of one engine delta

    def ev(self, kind: str, **fields: Any) -> bytes:
        self.seq += 1
        return sse.named(kind, {"type": kind, "sequence_number": self.seq, **fields,
                                **(self.extra if kind.endswith(".delta") else {})})

    def close(self) -> list[bytes]:
        out: list[bytes] = []
        i = self.index
        if self.kind == "message":
            part = {"type": "output_text", "text": self.text, "annotations": [], "logprobs": []}
            out += [self.ev("response.output_text.done", item_id=self.ids.message, output_index=i,
                            content_index=0, text=self.text, logprobs=[]),
                    self.ev("response.content_part.done", item_id=self.ids.message,
                            output_index=i, content_index=0, part=part),
                    self.ev("response.output_item.done", output_index=i,
                            item=_message_item(self.ids.message, self.text, "completed"))]
        elif self.kind == "reasoning":
            out += [self.ev("response.reasoning_text.done", item_id=self.ids.reasoning,
                            output_index=i, content_index=0, text=self.text),
                    self.ev("response.output_item.done", output_index=i,
                            item=_reasoning_item(self.ids.reasoning, self.text))]
        elif self.kind == "call":
            c = self.call
            out += [self.ev("response.function_call_arguments.done", item_id=c["id"],
                            output_index=i, name=c["name"], arguments=self.text),
                    self.ev("response.output_item.done", output_index=i,
                            item=_call_item(c["id"], c["call_id"], c["name"], self.text,
                                            "completed"))]
        self.kind, self.text = "", ""
        return out

    def open(self, kind: str, item: JSON) -> list[bytes]:
        out = self.close()
        self.index += 1
        self.kind = kind
        out.append(self.ev("response.output_item.added", output_index=self.index, item=item))
        if kind == "message":
            out.append(self.ev("response.content_part.added", item_id=self.ids.message,
                               output_index=self.index, content_index=0,
                               part={"type": "output_text", "text": "", "annotations": []}))
        return out

    def pieces(self, pieces: list[Piece]) -> list[bytes]:
        out: list[bytes] = []
        for piece in pieces:
            match piece:
                case ReasoningPiece(text=text):
                    if self.kind != "reasoning":
                        out += self.open("reasoning", {"type": "reasoning", "id": self.ids.reasoning,
                                                       "summary": [], "content": []})
                    self.text += text
                    out.append(self.ev("response.reasoning_text.delta", item_id=self.ids.reasoning,
                                       output_index=self.index, content_index=0, delta=text))
                case TextPiece(text=text):
                    if self.kind != "message":
                        out += self.open("message", _message_item(self.ids.message, "",
                                                                  "in_progress"))
                    self.text += text
                    out.append(self.ev("response.output_text.delta", item_id=self.ids.message,
                                       output_index=self.index, content_index=0, delta=text,
                                       logprobs=[]))
                case CallStart(id=call_id, name=name):
                    item = _call_item(self.ids.call_item(call_id), call_id, name, "", "in_progress")
                    out += self.open("call", item)
                    self.call = item
                case CallArguments(text=text):
                    self.text += text
                    out.append(self.ev("response.function_call_arguments.delta",
                                       item_id=self.call["id"], output_index=self.index,
                                       delta=text))
                case CallEnd():
                    out += self.close()
        return out


class ResponseStream(SseWire):
    """The Responses stream (a :class:`~app.api.drive.StreamWire`): ``response.created`` and
    ``in_progress``, output items opened and closed as the reply splits into reasoning,
    message and function calls, then ``response.completed`` (or ``incomplete``); a failure is
    an ``error`` event. Every event is numbered."""

    def __init__(self, splitter: ReplySplitter, turn: Turn, body: JSON, ident: str, ids: _Ids,
                 created: int, model: str) -> None:
        self.splitter, self.turn, self.body = splitter, turn, body
        self.ident, self.ids, self.created, self.model = ident, ids, created, model
        self.stream = _Stream(ids)

    def begin(self) -> list[bytes]:
        start = response_object(self.body, self.ident, self.created, self.model,
                                status="in_progress", output=[], outcome=None)
        return [self.stream.ev("response.created", response=start),
                self.stream.ev("response.in_progress", response=start)]

    def delta(self, index: int, item: Delta) -> list[bytes]:
        if item.timings is not None:
            self.stream.extra = {"timings": timing_fields(item.timings)}
        try:
            return self.stream.pieces(self.splitter.feed(item.text))
        finally:
            self.stream.extra = {}

    def progress(self, index: int, item: PromptProgress) -> list[bytes]:
        """llama.cpp's ``return_progress``: the prompt read so far, on ``response.in_progress``."""
        now = response_object(self.body, self.ident, self.created, self.model,
                              status="in_progress", output=[], outcome=None)
        return [self.stream.ev("response.in_progress", response=now,
                               prompt_progress=progress_fields(item))]

    async def final(self, index: int, outcome: Outcome) -> list[bytes]:
        stream, splitter, ids = self.stream, self.splitter, self.ids
        out = stream.pieces(splitter.close())
        if stream.index < 0:
            out += stream.open("message", _message_item(ids.message, "", "in_progress"))
        out += stream.close()
        final = response_object(self.body, self.ident, self.created, self.model,
                                status="completed", output=output_items(splitter.reply, ids),
                                outcome=outcome)
        kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        out.append(stream.ev(kind, response={**final, **extras(outcome),
                                             **await call_checks(splitter.reply, self.turn)},
                             timings=timing_fields(outcome.timings)))  # llama.cpp's, here too
        return out

    def failure(self, index: int, message: str) -> list[bytes]:
        err = ServerError(message)
        return [self.stream.ev("error", code=err.type, message=err.message, param=None)]


@responses.route("/v1/responses/input_tokens", methods=["POST"])
@responses.route("/responses/input_tokens", methods=["POST"])
@with_model("responses", sse_stream=False)
async def input_tokens(m: Bound, body: JSON) -> Response:
    """OpenAI's ``POST /v1/responses/input_tokens``: the prompt's token count, as the same body
    sent to ``/v1/responses`` would be evaluated (template, instructions and tools included)."""
    turn = await trio.to_thread.run_sync(turn_of, m, body)
    prompt = turn.request.prompt
    n = await m.with_model(lambda rt: len(tokenize_prompt(rt.model, prompt)))
    return json_response({"object": "response.input_tokens", "input_tokens": n})
