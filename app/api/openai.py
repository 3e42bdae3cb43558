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
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

import trio
from quart import Response

from app import sse
from app.api.chatbody import (
    messages,
    openai_request,
    reasoning_from,
    rendering_from,
    tools_from,
)
from app.api.common import Family, json_response, run_all, streamed, submit_all, with_model
from app.api.drive import SseWire, drive
from app.api.report import call_checks, extras, progress_fields, timing_fields, verbose
from app.bound import Bound
from app.completion import (
    Delta,
    Outcome,
    PromptProgress,
    StopType,
    TokenLogprobs,
)
from app.errors import JSON, ServerError
from app.prepare import tokenize_prompt
from app.requests import (
    choices_wanted,
    prompt_list,
)
from app.running import Completion
from app.tools import (
    CallArguments,
    CallEnd,
    CallStart,
    Piece,
    ReasoningPiece,
    TextPiece,
    ToolCall,
)
from app.turns import Turn, chat_request

openai = Family("openai", __name__)


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
        variables=m.template_variables(body), rendering=rendering_from(body)))
    n = choices_wanted(body, 1, len(m.engine.slots), field="n")
    debug = bool(body.get("verbose", m.settings.verbose))
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
                last = {**choice({}, finish_reason(o, bool(splitter.reply.calls))),
                        **extras(o), **checks}
                if debug:  # llama.cpp puts it on the first chunk, known only at the end here
                    last["__verbose"] = verbose(o)
                return [*out, last]

            return ChoiceStream(choice({"role": "assistant", "content": None}), choice({}),
                                on_delta, finish)

        def usage_chunk(outcomes: list[Outcome]) -> JSON:
            return {**{k: v for k, v in head.items() if k != "system_fingerprint"},
                    "choices": [], "usage": _usage_of(outcomes),
                    "timings": timing_fields(outcomes[0].timings)}  # llama.cpp's, as there

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return streamed(_stream(m, several, [chat_choice(i) for i in range(n)],
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
            "usage": _usage_of(outcomes), **extras(outcomes[0]),
            **({"__verbose": verbose(outcomes[0])} if debug else {})},
            headers={"X-Request-Id": str(completions[0].id)})
    completion = await m.submit(turn.request)
    created = int(time.time())
    ident = f"chatcmpl-{completion.id}"
    outcome = await completion.result()
    out_choice, checks = await _chat_choice(outcome, turn, top if logprobs else None)
    return json_response({
        "id": ident, "object": "chat.completion", "created": created, "model": m.model_name,
        "system_fingerprint": "sluice-0.1.0", "choices": [out_choice], "usage": usage(outcome),
        **extras(outcome), **checks, **({"__verbose": verbose(outcome)} if debug else {})},
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


class OpenAIStream(SseWire):
    """An OpenAI stream (a :class:`~app.api.drive.StreamWire`): each choice's role chunk, delta
    chunks and finish chunks (by ``index``, as they come), usage, ``[DONE]``.

    llama.cpp's additions: ``prompt_progress`` on the role chunk (or an ``empty`` one) while
    the prompt is read (``return_progress``), ``timings`` on a delta's last chunk
    (``timings_per_token``). An engine failure after the first byte is one error event, and
    the stream ends.
    """

    def __init__(self, choices: list[ChoiceStream],
                 usage_chunk: Callable[[list[Outcome]], JSON] | None) -> None:
        self.choices = choices
        self.roles: list[JSON | None] = [c.role for c in choices]
        self.outcomes: dict[int, Outcome] = {}
        self.usage_chunk = usage_chunk

    def _role(self, index: int) -> list[bytes]:
        role, self.roles[index] = self.roles[index], None
        return [sse.event(role)] if role is not None else []

    def begin(self) -> list[bytes]:
        return [sse.PING]

    def progress(self, index: int, item: PromptProgress) -> list[bytes]:
        role, self.roles[index] = self.roles[index], None
        return [sse.event({**(role if role is not None else self.choices[index].empty),
                           "prompt_progress": progress_fields(item)})]

    def delta(self, index: int, item: Delta) -> list[bytes]:
        out = self._role(index)
        chunks = list(self.choices[index].delta(item))
        if item.timings is not None:
            if not chunks:
                chunks = [self.choices[index].empty]
            chunks[-1] = {**chunks[-1], "timings": timing_fields(item.timings)}
        return out + [sse.event(chunk) for chunk in chunks]

    async def final(self, index: int, outcome: Outcome) -> list[bytes]:
        out = self._role(index)
        out += [sse.event(chunk) for chunk in await self.choices[index].finish(outcome)]
        self.outcomes[index] = outcome
        return out

    def failure(self, index: int, message: str) -> list[bytes]:
        return [sse.event(ServerError(message).body())]

    def end(self) -> list[bytes]:
        out = []
        if self.usage_chunk is not None:
            out.append(sse.event(self.usage_chunk([self.outcomes[k]
                                                   for k in range(len(self.choices))])))
        return [*out, sse.DONE]


def _stream(m: Bound, completions: list[Completion], choices: list[ChoiceStream],
            usage_chunk: Callable[[list[Outcome]], JSON] | None) -> AsyncIterator[bytes]:
    return drive(m, completions, OpenAIStream(choices, usage_chunk),
                 m.settings.queue_ping_interval_s)


# --- text completions -------------------------------------------------------------------------
@openai.route("/v1/chat/completions/input_tokens", methods=["POST"])
@openai.route("/chat/completions/input_tokens", methods=["POST"])
@with_model("chat_completion", sse_stream=False)
async def chat_input_tokens(m: Bound, body: JSON) -> Response:
    """llama.cpp's ``POST /v1/chat/completions/input_tokens``: the prompt's token count, as the
    same body sent to ``/v1/chat/completions`` would be evaluated."""
    base = openai_request(body, m.defaults, prompt="", n_probs=0, extra_stops=m.chat.stops)
    turn = await trio.to_thread.run_sync(lambda: chat_request(
        m.chat, messages(body), tools_from(body), base, system_prompt=m.settings.system_prompt,
        reasoning=reasoning_from(body, m.settings.reasoning_format),
        variables=m.template_variables(body), rendering=rendering_from(body)))
    prompt = turn.request.prompt
    n = await m.with_model(lambda rt: len(tokenize_prompt(rt.model, prompt)))
    return json_response({"object": "response.input_tokens", "input_tokens": n})


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
    debug = bool(body.get("verbose", m.settings.verbose))
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
                return [{**choice("", finish_reason(o), None), **extras(o),
                         **({"__verbose": verbose(o)} if debug else {})}]

            return ChoiceStream(None, choice("", None, None), on_delta, finish)

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return streamed(_stream(m, several, [text_choice(i) for i in range(len(several))],
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
            "usage": _usage_of(outcomes), **extras(outcomes[0]),
            **({"__verbose": verbose(outcomes[0])} if debug else {})},
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
        "choices": [out_choice], "usage": usage(outcome), **extras(outcome),
        **({"__verbose": verbose(outcome)} if debug else {})},
        headers={"X-Request-Id": str(completion.id)})
