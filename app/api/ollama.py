"""Ollama's generating routes and wire shapes, so Ollama clients work unchanged:
``POST /api/generate``, ``POST /api/chat`` (the listing routes, ``/api/tags``, ``/api/ps``,
``/api/show`` and ``/api/version``, are :mod:`app.api.ollama_models`).

Replies stream as NDJSON lines (``application/x-ndjson``) unless ``"stream": false``;
errors are Ollama's ``{"error": "..."}`` (mapped in the one error handler; after the
first line, one ``{"error": ...}`` line ends the stream). ``model`` is required, as in
Ollama, and routed by :mod:`app.registry`. ``keep_alive`` (seconds, or ``"5m"``, ``"1h"``,
``"300ms"``; 0: unload after this request; negative: keep loaded) sets the model's idle
limit from this request on; a request without it sets the server's (``--sleep-idle-seconds``),
as Ollama resets it to its default. An empty ``prompt`` (or no ``messages``) only loads the model,
or with ``keep_alive: 0`` unloads it (``done_reason`` ``load`` / ``unload``), as Ollama.

Decisions: ``options`` that steer sampling apply; Ollama's runtime options (``num_ctx``,
``num_thread``, ``num_gpu``...) are accepted and not applied (the model's server settings
hold: a per-request context size would mean reloading the model). ``images`` are refused
(no vision projector); ``template`` (a Go template) is refused; ``context`` must be empty
(this server keeps no context between requests: send the text again). Tool calls come
whole, one chunk per call, as Ollama sends them.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import trio
from quart import Response

from app.api.chatbody import messages, openai_request, tools_from
from app.api.common import Family, guarded, json_response, read_valid, service
from app.api.drive import Wire, drive
from app.api.ollama_models import now as _now
from app.chat import ChatTemplate, Message
from app.completion import CompletionRequest, Delta, Outcome, SchemaConstraint, StopType
from app.errors import JSON, InvalidRequest, NotSupported, ollama_body
from app.requests import Defaults, build, sampling_from, schema_mode_from, stops_from
from app.tools import CallEnd, Piece, ReasoningPiece, ReplySplitter, TextPiece
from app.turns import Turn, chat_request

ollama = Family("ollama", __name__, error_body=ollama_body,
                error_event=lambda exc: json.dumps(ollama_body(exc)).encode() + b"\n")

NDJSON = "application/x-ndjson"

#: Ollama option -> llama.cpp's name (sampling); the other options are accepted, not applied
_OPTIONS = {"num_predict": "n_predict", "temperature": "temperature", "top_k": "top_k",
            "top_p": "top_p", "min_p": "min_p", "typical_p": "typical_p",
            "repeat_penalty": "repeat_penalty", "repeat_last_n": "repeat_last_n",
            "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
            "seed": "seed", "stop": "stop", "mirostat": "mirostat",
            "mirostat_tau": "mirostat_tau", "mirostat_eta": "mirostat_eta"}
_DURATION = re.compile(r"(-?[0-9]{1,10}(?:\.[0-9]{1,9})?)(ms|s|m|h)?")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def keep_alive_of(body: JSON) -> tuple[bool, float | None]:
    """``(given, seconds)`` of the body's ``keep_alive``; negative seconds: keep loaded.

    Raises:
        InvalidRequest: not a number or a duration such as ``"5m"``.
    """
    raw = body.get("keep_alive")
    if raw is None or raw == "":
        return False, None
    if isinstance(raw, bool):
        raise InvalidRequest("invalid value for 'keep_alive': give seconds or a duration such "
                             "as \"5m\"", param="keep_alive")
    if isinstance(raw, int | float):
        seconds = float(raw)
    else:
        match = _DURATION.fullmatch(raw.strip())
        if match is None:
            raise InvalidRequest("invalid value for 'keep_alive': give seconds or a duration "
                                 "such as \"5m\", \"1h\", \"300ms\"", param="keep_alive")
        seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    if not math.isfinite(seconds):
        raise InvalidRequest("invalid value for 'keep_alive': must be finite", param="keep_alive")
    return True, -1.0 if seconds < 0 else seconds


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


# --- generating ----------------------------------------------------------------------------------
def _sampling(body: JSON) -> JSON:
    """Ollama's ``options`` under llama.cpp's names (and Sluice's ``schema_mode``)."""
    options = body.get("options") or {}
    out: JSON = {_OPTIONS[k]: v for k, v in options.items() if k in _OPTIONS}
    if body.get("schema_mode") is not None:  # Sluice's field, as on every route
        out["schema_mode"] = body["schema_mode"]
    if out.get("n_predict") == -2:
        out["n_predict"] = -1  # Ollama's "fill the context"
    return out


def _format_schema(body: JSON) -> JSON | None:
    fmt = body.get("format")
    if fmt in (None, ""):
        return None
    if fmt == "json":
        return {"type": "object"}
    return dict(fmt)


def _refuse_unsupported(body: JSON, *, images_in: str) -> None:
    if body.get("images"):
        raise InvalidRequest(f"'{images_in}': this model has no vision projector; images are "
                             "not supported", param=images_in)
    if body.get("template"):
        raise InvalidRequest("invalid value for 'template': Ollama's Go templates are not "
                             "supported; send 'raw': true with the prompt already formatted",
                             param="template")


async def _load_or_unload(body: JSON, given: bool, seconds: float | None) -> Response:
    """An empty prompt: load the model, or unload it with ``keep_alive: 0``."""
    svc = service()
    hosted = svc.registry.find(body["model"])
    if given and seconds == 0:
        await svc.registry.unload_when_idle(hosted)
        reason = "unload"
    else:
        async with svc.use(body["model"], keep_alive_s=seconds, set_keep_alive=True):
            pass
        reason = "load"
    line: JSON = {"model": hosted.name, "created_at": _now(), "done": True, "done_reason": reason}
    line["message" if "messages" in body else "response"] = (
        {"role": "assistant", "content": ""} if "messages" in body else "")
    return json_response(line)


def _final_fields(outcome: Outcome, started: float, load_s: float) -> JSON:
    t = outcome.timings
    reason = "length" if outcome.stop is StopType.LIMIT else "stop"
    return {"done": True, "done_reason": reason,
            "total_duration": _ns(time.perf_counter() - started), "load_duration": _ns(load_s),
            "prompt_eval_count": outcome.n_prompt,
            "prompt_eval_duration": _ns(t.prompt_ms / 1000.0),
            "eval_count": outcome.n_predicted, "eval_duration": _ns(t.predicted_ms / 1000.0)}


def _line(obj: JSON) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"


def _failure(message: str) -> bytes:
    """The ``{"error": …}`` line that ends a failed stream (not by ``_line``: the failure may
    be in it)."""
    return json.dumps({"error": message}).encode() + b"\n"


class _Lines(Wire):
    """Ollama's NDJSON stream (a :class:`~app.api.drive.StreamWire`): no first byte, no
    pings, one ``{"error": ...}`` line for a failure; the routes write the deltas and the
    final line."""

    def failure(self, index: int, message: str) -> list[bytes]:
        return [_line({"error": message})]


def _ndjson(body: AsyncIterator[bytes], job_id: int) -> Response:
    resp = Response(guarded(body, _failure), status=200,
                    headers={"Content-Type": NDJSON, "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no",
                                               "X-Request-Id": str(job_id)})
    resp.timeout = None
    return resp


@ollama.route("/api/generate", methods=["POST"])
async def generate() -> Response:
    body = await read_valid("ollama_generate")
    _refuse_unsupported(body, images_in="images")
    given, seconds = keep_alive_of(body)
    prompt, suffix = body.get("prompt", ""), body.get("suffix", "")
    if not prompt and not suffix:
        return await _load_or_unload(body, given, seconds)
    started = time.perf_counter()
    svc = service()
    async with svc.use(body["model"], keep_alive_s=seconds, set_keep_alive=True) as m:
        load_s = time.perf_counter() - started
        stops: tuple[str, ...] = ()
        if suffix:
            prompt_parts: tuple[str | int, ...] = tuple(
                await m.with_model(lambda rt: _fim(rt, prompt, suffix)))
        elif body.get("raw"):
            prompt_parts = (prompt,)
        else:
            template = m.chat
            system = body.get("system") or m.settings.system_prompt
            prompt_parts = (template.prompt([Message("user", prompt)], system),)
            stops = template.stops
        request = generate_request(body, m.defaults, prompt=prompt_parts, stops=stops)
        completion = await m.submit(request)
    name = m.name

    def head() -> JSON:
        return {"model": name, "created_at": _now()}

    if body.get("stream", True):
        class Lines(_Lines):
            def delta(self, index: int, item: Delta) -> list[bytes]:
                return [_line({**head(), "response": item.text, "done": False})] if item.text \
                    else []

            async def final(self, index: int, outcome: Outcome) -> list[bytes]:
                return [_line({**head(), "response": "",
                               **_final_fields(outcome, started, load_s)})]

        return _ndjson(drive(m, [completion], Lines(), None), completion.id)
    outcome = await completion.result()
    return json_response({**head(), "response": outcome.text,
                          **_final_fields(outcome, started, load_s)})


def generate_request(body: JSON, defaults: Defaults, *, prompt: tuple[str | int, ...],
                     stops: tuple[str, ...] = ()) -> CompletionRequest:
    """A body checked by ``schemas/ollama_generate.json``, its prompt rendered, as a typed
    request: ``options`` under llama.cpp's names, ``format`` as a schema constraint."""
    options = _sampling(body)
    n_predict = options.get("n_predict")
    schema = _format_schema(body)
    return build(defaults, prompt=prompt, sampling=sampling_from(options, defaults),
                 n_predict=int(n_predict) if n_predict is not None else None,
                 stops=tuple(dict.fromkeys([*stops, *stops_from(options.get("stop"))])),
                 constraint=None if schema is None else SchemaConstraint(schema, field="format"),
                 schema_mode=schema_mode_from(body))


def chat_wire(body: JSON) -> JSON:
    """A body checked by ``schemas/ollama_chat.json`` in the OpenAI chat body's shape: its
    messages and tools are OpenAI's with other names, and Ollama's schema has checked them as
    the chat schema would (the same tool definition, the same bounds), so the shared parser
    (:mod:`app.api.chatbody`) reads the result without checking it again. Refuses images
    (400) before any model is bound."""
    options = _sampling(body)
    wire: JSON = {"messages": _openai_messages(body),
                  **{k: v for k, v in options.items() if k != "n_predict"}}
    if "n_predict" in options:
        wire["max_tokens"] = options["n_predict"]
    if body.get("tools"):
        wire["tools"] = body["tools"]
    return wire


def chat_turn(body: JSON, wire: JSON, defaults: Defaults, template: ChatTemplate, *,
              system_prompt: str | None, reasoning: bool,
              variables: dict[str, Any] | None = None) -> Turn:
    """The chat turn of ``body`` (its :func:`chat_wire` is ``wire``) for ``template``."""
    base = openai_request(wire, defaults, prompt="", n_probs=0, extra_stops=template.stops)
    schema = _format_schema(body)
    if schema is not None:  # errors in the schema name Ollama's field
        base = replace(base, constraint=SchemaConstraint(schema, field="format"))
    return chat_request(template, messages(wire), tools_from(wire), base,
                        system_prompt=system_prompt, reasoning=reasoning, variables=variables)


def _fim(rt: Any, prefix: str, suffix: str) -> list[int]:
    fim = rt.model.fim_tokens()
    if fim is None:
        raise NotSupported("'suffix' needs a model with fill-in-the-middle tokens; this one has "
                           "none")
    pre, suf, mid = fim

    def tok(text: str) -> list[int]:
        return list(rt.model.tokenize(text, add_special=False, parse_special=False))

    return [pre, *tok(prefix), suf, *tok(suffix), mid]


def _openai_messages(body: JSON) -> list[JSON]:
    """Ollama's messages in OpenAI's shape (the chat path's parser checks them)."""
    out: list[JSON] = []
    last_calls: list[tuple[str, str]] = []  # (id, name) of the latest assistant calls
    for i, msg in enumerate(body.get("messages") or ()):
        if msg.get("images"):
            raise InvalidRequest(f"'messages[{i}].images': this model has no vision projector; "
                                 "images are not supported", param=f"messages[{i}].images")
        wire: JSON = {"role": msg["role"], "content": msg.get("content", "")}
        if msg.get("thinking") and msg["role"] == "assistant":
            wire["reasoning_content"] = msg["thinking"]
        if msg.get("tool_calls"):
            last_calls = []
            calls = []
            for j, call in enumerate(msg["tool_calls"]):
                ident = f"call_{i}_{j}"
                fn = call["function"]
                last_calls.append((ident, fn["name"]))
                calls.append({"id": ident, "type": "function",
                              "function": {"name": fn["name"],
                                           "arguments": json.dumps(fn.get("arguments") or {})}})
            wire["tool_calls"] = calls
        if msg["role"] == "tool":
            name = msg.get("tool_name", "")
            match = next((c for c in last_calls if c[1] == name), None) or (
                last_calls[0] if last_calls else (f"call_{i}", name))
            wire["tool_call_id"] = match[0]
            if name:
                wire["name"] = name
        out.append(wire)
    return out


@ollama.route("/api/chat", methods=["POST"])
async def chat() -> Response:
    body = await read_valid("ollama_chat")
    given, seconds = keep_alive_of(body)
    if not body.get("messages"):
        return await _load_or_unload({**body, "messages": []}, given, seconds)
    wire = chat_wire(body)
    started = time.perf_counter()
    svc = service()
    async with svc.use(body["model"], keep_alive_s=seconds, set_keep_alive=True) as m:
        load_s = time.perf_counter() - started
        reasoning = bool(body.get("think", m.settings.reasoning_format != "none"))
        variables = m.template_variables(thinking=False if body.get("think") is False else None)
        template, defaults, system = m.chat, m.defaults, m.settings.system_prompt
        turn = await trio.to_thread.run_sync(lambda: chat_turn(
            body, wire, defaults, template, system_prompt=system, reasoning=reasoning,
            variables=variables))
        completion = await m.submit(turn.request)
    name = m.name
    splitter = turn.splitter()

    def head() -> JSON:
        return {"model": name, "created_at": _now()}

    if body.get("stream", True):
        class Lines(_Lines):
            def delta(self, index: int, item: Delta) -> list[bytes]:
                return [_line({**head(), "message": msg, "done": False})
                        for msg in _chat_messages(splitter.feed(item.text), splitter)]

            async def final(self, index: int, outcome: Outcome) -> list[bytes]:
                return [*(_line({**head(), "message": msg, "done": False})
                          for msg in _chat_messages(splitter.close(), splitter)),
                        _line({**head(), "message": {"role": "assistant", "content": ""},
                               **_final_fields(outcome, started, load_s)})]

        return _ndjson(drive(m, [completion], Lines(), None), completion.id)
    outcome = await completion.result()
    splitter.feed(outcome.text)
    splitter.close()
    reply = splitter.reply
    message: JSON = {"role": "assistant", "content": reply.text}
    if reply.reasoning:
        message["thinking"] = reply.reasoning
    if reply.calls:
        message["tool_calls"] = [_wire_call(c.name, c.arguments, i)
                                 for i, c in enumerate(reply.calls)]
    return json_response({**head(), "message": message,
                          **_final_fields(outcome, started, load_s)})


def parse_call_arguments(arguments: str) -> Any:
    """A call's arguments as the object Ollama sends ({} when cut off by the token limit)."""
    try:
        return json.loads(arguments)
    except ValueError:
        return {}


def _wire_call(name: str, arguments: str, index: int) -> JSON:
    return {"function": {"index": index, "name": name,
                         "arguments": parse_call_arguments(arguments)}}


def _chat_messages(pieces: list[Piece], splitter: ReplySplitter) -> list[JSON]:
    out: list[JSON] = []
    for piece in pieces:
        match piece:
            case TextPiece(text=text) if text:
                out.append({"role": "assistant", "content": text})
            case ReasoningPiece(text=text) if text:
                out.append({"role": "assistant", "content": "", "thinking": text})
            case CallEnd(index=index):
                call = splitter.reply.calls[index]
                out.append({"role": "assistant", "content": "",
                            "tool_calls": [_wire_call(call.name, call.arguments, index)]})
    return out

