"""OpenAI's routes and wire shape: /v1/chat/completions, /v1/completions, /v1/models.

An OpenAI body is validated against its own schema and built into a
:class:`~app.completion.CompletionRequest` here (llama.cpp's extra sampling
fields such as ``top_k`` keep their names); replies are rendered from the typed
outcome.

Decisions where OpenAI's API has no counterpart here: ``n`` must be 1 and
``/v1/completions`` takes one prompt (400 otherwise); an aborted, timed-out,
shut-down or model-changed request ends with ``finish_reason: "stop"`` and a
top-level ``"aborted"`` / ``"timeout"`` / ``"shutdown"`` / ``"model_changed": true``;
``model`` picks the model (see :mod:`app.registry`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any

import trio
from quart import Blueprint, Response

from app import sse
from app.api.common import fan_in, json_response, run_all, streamed, submit_all, with_model
from app.api.native import progress_fields, timing_fields, timings
from app.chat import Message
from app.completion import (
    CompletionRequest,
    Constraint,
    Delta,
    Failure,
    Final,
    FunctionTool,
    Item,
    Outcome,
    Ping,
    PromptProgress,
    SchemaConstraint,
    StopType,
    TokenLogprobs,
)
from app.errors import JSON, InvalidRequest, ServerError
from app.requests import (
    Defaults,
    choices_wanted,
    constraint_from,
    logit_bias_from,
    native_options,
    prompt_list,
    sampling_from,
    stops_from,
)
from app.running import Completion
from app.service import Bound
from app.tools import (
    CallArguments,
    CallEnd,
    CallStart,
    Piece,
    ReasoningPiece,
    Reply,
    TextPiece,
    ToolCall,
)
from app.turns import Choice, ToolPolicy, Turn, chat_request, check_calls, parse_arguments, tool_policy

openai = Blueprint("openai", __name__)


# --- body -> typed request ---------------------------------------------------------------------
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
    return CompletionRequest(
        prompt=(prompt,) if isinstance(prompt, str) else tuple(prompt),
        sampling=replace(sampling, n_probs=n_probs),
        logit_bias=logit_bias_from(body.get("logit_bias")),
        n_predict=int(limit) if limit is not None else defaults.n_predict,
        stops=stops, constraint=_constraint(body) or defaults.constraint,
        **native_options(body, defaults))


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
                           tool_call_id=m.get("tool_call_id") or "", name=m.get("name") or ""))
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


# --- typed outcome -> OpenAI's shape -------------------------------------------------------------
def finish_reason(outcome: Outcome, calls: bool = False) -> str:
    if outcome.stop is StopType.LIMIT:
        return "length"
    return "tool_calls" if calls else "stop"


def _usage_of(outcomes: list[Outcome]) -> JSON:
    """Several choices: every prompt once, every choice's tokens."""
    prompt = sum(o.n_prompt for o in {o.reported.request.prompt: o for o in outcomes}.values())
    completion = sum(o.n_predicted for o in outcomes)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def usage(outcome: Outcome) -> JSON:
    prompt, completion = outcome.n_prompt, outcome.n_predicted
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def extras(outcome: Outcome) -> JSON:
    """Sluice's additions at the top level: timings, the interruption, the schema verdict."""
    out: JSON = {"timings": timings(outcome)}
    if outcome.interruption is not None:
        out[outcome.interruption.value] = True
    if outcome.schema is not None:
        out["schema_valid"] = outcome.schema.valid
        out["schema_errors"] = [e.as_dict() for e in outcome.schema.errors]
    return out


def _logprob_entries(logprobs: tuple[TokenLogprobs, ...], top: int) -> list[JSON]:
    return [{"token": lp.chosen.text, "logprob": lp.chosen.logprob, "bytes": list(lp.chosen.piece),
             "top_logprobs": [{"token": t.text, "logprob": t.logprob, "bytes": list(t.piece)}
                              for t in lp.top[:top]]}
            for lp in logprobs]


def _text_logprobs(logprobs: tuple[TokenLogprobs, ...], top: int, offset: int) -> JSON:
    offsets = []
    for lp in logprobs:
        offsets.append(offset)
        offset += len(lp.chosen.text)
    return {"tokens": [lp.chosen.text for lp in logprobs],
            "token_logprobs": [lp.chosen.logprob for lp in logprobs],
            "top_logprobs": [{t.text: t.logprob for t in lp.top[:top]} for lp in logprobs],
            "text_offset": offsets}


# --- chat --------------------------------------------------------------------------------------
def _wire_call(call: ToolCall) -> JSON:
    return {"id": call.id, "type": "function",
            "function": {"name": call.name, "arguments": call.arguments}}


async def call_checks(reply: Reply, turn: Turn) -> JSON:
    """Sluice's report on the calls' arguments (``tool_calls_valid``, ``tool_call_errors``)."""
    if not reply.calls:
        return {}
    checks = await trio.to_thread.run_sync(check_calls, reply, turn.policy)
    out: JSON = {"tool_calls_valid": all(c.valid for c in checks)}
    errors = {c.call.id: list(c.errors) for c in checks if c.errors}
    if errors:
        out["tool_call_errors"] = errors
    return out


@openai.route("/v1/chat/completions", methods=["POST"])
@openai.route("/chat/completions", methods=["POST"])
@with_model("chat_completion")
async def chat_completions(m: Bound, body: JSON) -> Response:
    template = m.chat
    top = body.get("top_logprobs") or 0
    logprobs = bool(body.get("logprobs"))
    base = openai_request(body, m.defaults, prompt="", n_probs=max(top, 1) if logprobs else 0,
                          extra_stops=template.stops)
    turn = await trio.to_thread.run_sync(lambda: chat_request(  # proportional work: a worker
        template, messages(body), tools_from(body), base, system_prompt=m.settings.system_prompt,
        reasoning=reasoning_from(body, m.settings.reasoning_format),
        variables=m.template_variables(body)))
    n = choices_wanted(body, 1, len(m.engine.slots), field="n")
    if body.get("stream"):
        several = await submit_all(m, [turn.request] * n)
        head: JSON = {"id": f"chatcmpl-{several[0].id}", "object": "chat.completion.chunk",
                      "created": int(time.time()), "model": m.model_name,
                      "system_fingerprint": "sluice-0.1.0"}

        def chat_choice(i: int) -> ChoiceStream:
            splitter = turn.splitter()

            def choice(delta: JSON, finish: str | None = None, lp: JSON | None = None) -> JSON:
                return {**head, "choices": [{"index": i, "delta": delta,
                                             "finish_reason": finish, "logprobs": lp}]}

            def chunks(pieces: list[Piece], lp: JSON | None = None) -> list[JSON]:
                out = []
                for piece in pieces:
                    if not isinstance(piece, CallEnd):
                        out.append(choice(_chat_delta(piece), lp=lp))
                        lp = None
                if lp is not None:
                    out.append(choice({}, lp=lp))
                return out

            def on_delta(d: Delta) -> list[JSON]:
                lp = ({"content": _logprob_entries(d.logprobs, top)}
                      if logprobs and d.logprobs else None)
                return chunks(splitter.feed(d.text), lp)

            async def finish(o: Outcome) -> list[JSON]:
                out = chunks(splitter.close())
                checks = await call_checks(splitter.reply, turn)
                return [*out, {**choice({}, finish_reason(o, bool(splitter.reply.calls))),
                               **extras(o), **checks}]

            return ChoiceStream(choice({"role": "assistant", "content": None}), choice({}),
                                on_delta, finish)

        def usage_chunk(outcomes: list[Outcome]) -> JSON:
            return {**{k: v for k, v in head.items() if k != "system_fingerprint"},
                    "choices": [], "usage": _usage_of(outcomes)}

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return streamed(_stream(_items(m, several), [chat_choice(i) for i in range(n)],
                                usage_chunk if include_usage else None), several[0].id)
    if n > 1:
        completions, outcomes = await run_all(m, [turn.request] * n)
        choices = []
        for i, o in enumerate(outcomes):
            one, checks = await _chat_choice(o, turn, top if logprobs else None)
            choices.append({**one, "index": i, **checks})
        return json_response({
            "id": f"chatcmpl-{completions[0].id}", "object": "chat.completion",
            "created": int(time.time()), "model": m.model_name,
            "system_fingerprint": "sluice-0.1.0", "choices": choices,
            "usage": _usage_of(outcomes), **extras(outcomes[0])},
            headers={"X-Request-Id": str(completions[0].id)})
    completion = await m.submit(turn.request)
    created = int(time.time())
    ident = f"chatcmpl-{completion.id}"
    outcome = await completion.result()
    out_choice, checks = await _chat_choice(outcome, turn, top if logprobs else None)
    return json_response({
        "id": ident, "object": "chat.completion", "created": created, "model": m.model_name,
        "system_fingerprint": "sluice-0.1.0", "choices": [out_choice], "usage": usage(outcome),
        **extras(outcome), **checks},
        headers={"X-Request-Id": str(completion.id)})


async def _chat_choice(outcome: Outcome, turn: Turn, top: int | None) -> tuple[JSON, JSON]:
    """One chat choice (index 0) of a whole reply, and the check of its tool calls."""
    splitter = turn.splitter()
    splitter.feed(outcome.text)
    splitter.close()
    reply = splitter.reply
    message: JSON = {"role": "assistant", "content": reply.text or (None if reply.calls else "")}
    if reply.reasoning:
        message["reasoning_content"] = reply.reasoning
    if reply.calls:
        message["tool_calls"] = [_wire_call(c) for c in reply.calls]
    out: JSON = {"index": 0, "message": message,
                 "finish_reason": finish_reason(outcome, bool(reply.calls)), "logprobs": None}
    if top is not None:
        out["logprobs"] = {"content": _logprob_entries(outcome.logprobs, top)}
    return out, await call_checks(reply, turn)


def _chat_delta(piece: Piece) -> JSON:
    match piece:
        case TextPiece(text=text):
            return {"content": text}
        case ReasoningPiece(text=text):
            return {"reasoning_content": text}
        case CallStart(index=index, id=ident, name=name):
            return {"tool_calls": [{"index": index, "id": ident, "type": "function",
                                    "function": {"name": name, "arguments": ""}}]}
        case CallArguments(index=index, text=text):
            return {"tool_calls": [{"index": index, "function": {"arguments": text}}]}
    raise AssertionError(piece)


@dataclass(frozen=True, slots=True)
class ChoiceStream:
    """How one choice of an OpenAI stream is written: its role chunk (chat), an empty chunk,
    the chunks of a delta and the finish chunks."""

    role: JSON | None
    empty: JSON
    delta: Callable[[Delta], Sequence[JSON]]
    finish: Callable[[Outcome], Awaitable[Sequence[JSON]]]


async def _items(m: Bound, completions: list[Completion]) -> AsyncGenerator[tuple[int, Item]]:
    """The items of one completion (read here), or of several (read side by side)."""
    ping_s = m.settings.queue_ping_interval_s
    if len(completions) > 1:
        async for pair in fan_in(m, completions, ping_s):
            yield pair
        return
    async with aclosing(completions[0].items(ping_s)) as items:
        async for item in items:
            yield 0, item


async def _stream(source: AsyncGenerator[tuple[int, Item]], choices: list[ChoiceStream],
                  usage_chunk: Callable[[list[Outcome]], JSON] | None) -> AsyncIterator[bytes]:
    """An OpenAI stream: pings, each choice's role chunk, delta chunks and finish chunks (by
    ``index``, as they come), usage, [DONE].

    llama.cpp's additions: ``prompt_progress`` on the role chunk (or an ``empty`` one) while
    the prompt is read (``return_progress``), ``timings`` on a delta's last chunk
    (``timings_per_token``). An engine failure after the first byte is one error event, and
    the stream ends.
    """
    yield sse.PING
    roles: list[JSON | None] = [c.role for c in choices]
    outcomes: dict[int, Outcome] = {}
    quiet_since = trio.current_time()
    async with aclosing(source) as items:
        async for i, item in items:
            out = choices[i]
            if isinstance(item, Ping):
                if len(choices) == 1 or trio.current_time() - quiet_since >= 1.0:
                    quiet_since = trio.current_time()
                    yield sse.PING
                continue
            quiet_since = trio.current_time()
            if isinstance(item, Failure):
                yield sse.event(ServerError(item.message).body())
                return
            if isinstance(item, PromptProgress):
                role = roles[i]
                yield sse.event({**(role if role is not None else out.empty),
                                 "prompt_progress": progress_fields(item)})
                roles[i] = None
                continue
            role = roles[i]
            if role is not None:
                yield sse.event(role)
                roles[i] = None
            if isinstance(item, Delta):
                chunks = list(out.delta(item))
                if item.timings is not None:
                    if not chunks:
                        chunks = [out.empty]
                    chunks[-1] = {**chunks[-1], "timings": timing_fields(item.timings)}
                for chunk in chunks:
                    yield sse.event(chunk)
            elif isinstance(item, Final):
                for chunk in await out.finish(item.outcome):
                    yield sse.event(chunk)
                outcomes[i] = item.outcome
                if len(outcomes) == len(choices):
                    if usage_chunk is not None:
                        yield sse.event(usage_chunk([outcomes[k] for k in range(len(choices))]))
                    yield sse.DONE
                    return


# --- text completions -------------------------------------------------------------------------
@openai.route("/v1/completions", methods=["POST"])
@with_model("openai_completion")
async def completions(m: Bound, body: JSON) -> Response:
    prompts = prompt_list(body["prompt"])
    n = choices_wanted(body, len(prompts), len(m.engine.slots), field="n")
    top = body.get("logprobs") or 0
    defaults = m.defaults if "max_tokens" in body else replace(m.defaults, n_predict=16)
    # OpenAI's order: each prompt's n choices in turn, "index" counting them
    requests = [openai_request(body, defaults, prompt=list(p), n_probs=top)
                for p in prompts for _ in range(n)]
    if body.get("stream"):
        several = await submit_all(m, requests)
        head: JSON = {"id": f"cmpl-{several[0].id}", "object": "text_completion",
                      "created": int(time.time()), "model": m.model_name}

        def text_choice(i: int) -> ChoiceStream:
            offset = 0

            def choice(text: str, finish: str | None, lp: JSON | None) -> JSON:
                return {**head, "choices": [{"index": i, "text": text, "finish_reason": finish,
                                             "logprobs": lp}]}

            def on_delta(d: Delta) -> list[JSON]:
                nonlocal offset
                lp = _text_logprobs(d.logprobs, top, offset) if top and d.logprobs else None
                offset += len(d.text)
                return [choice(d.text, None, lp)] if d.text or lp else []

            async def finish(o: Outcome) -> list[JSON]:
                return [{**choice("", finish_reason(o), None), **extras(o)}]

            return ChoiceStream(None, choice("", None, None), on_delta, finish)

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return streamed(_stream(_items(m, several), [text_choice(i) for i in range(len(several))],
                                (lambda o: {**head, "choices": [], "usage": _usage_of(o)})
                                if include_usage else None), several[0].id)
    if len(requests) > 1:
        completions, outcomes = await run_all(m, requests)
        choices = []
        for i, o in enumerate(outcomes):
            c: JSON = {"index": i, "text": o.text, "finish_reason": finish_reason(o),
                       "logprobs": _text_logprobs(o.logprobs, top, 0) if top else None}
            choices.append(c)
        return json_response({
            "id": f"cmpl-{completions[0].id}", "object": "text_completion",
            "created": int(time.time()), "model": m.model_name, "choices": choices,
            "usage": _usage_of(outcomes), **extras(outcomes[0])},
            headers={"X-Request-Id": str(completions[0].id)})
    completion = await m.submit(requests[0])
    created = int(time.time())
    ident = f"cmpl-{completion.id}"
    outcome = await completion.result()
    out_choice: JSON = {"index": 0, "text": outcome.text, "finish_reason": finish_reason(outcome),
                        "logprobs": None}
    if top:
        out_choice["logprobs"] = _text_logprobs(outcome.logprobs, top, 0)
    return json_response({
        "id": ident, "object": "text_completion", "created": created, "model": m.model_name,
        "choices": [out_choice], "usage": usage(outcome), **extras(outcome)},
        headers={"X-Request-Id": str(completion.id)})
