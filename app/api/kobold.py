"""The KoboldAI API as KoboldCpp serves it (SillyTavern, Kobold Lite, LangChain's
``KoboldApiLLM`` and other Kobold clients).

- ``POST /api/v1/generate`` (and ``/api/latest/generate``) with KoboldCpp's body ->
  ``{"results": [{"text", "finish_reason", "prompt_tokens", "completion_tokens"}]}``;
  ``finish_reason`` is ``stop`` (end of text or a stop sequence) or ``length`` (anything
  else: the token limit, an abort, the request timeout).
- ``POST /api/extra/generate/stream``: the same body, Server-Sent Events
  ``event: message`` / ``data: {"token", "finish_reason"}``, one per piece of text, the last
  with an empty ``token`` and the finish reason (``"null"`` before it, as KoboldCpp sends).
- ``POST /api/extra/abort`` ``{"genkey"}``: ends the running Kobold generations with that
  key (all of them without one) -> ``{"success": "true"|"false", "done": "true"}``.
- ``GET|POST /api/extra/generate/check`` ``{"genkey"}``: the text generated so far by the
  running generation with that key; without a key, empty (KoboldCpp gives a lone client's
  text to a keyless check; here a reply is only read by whoever holds its key).
- ``POST /api/extra/tokencount`` ``{"prompt", "special"}`` -> ``{"value", "ids"}``.
- ``GET /api/v1/model`` -> ``{"result": "koboldcpp/<model>"}``; ``/api/v1/info/version``;
  ``/api/extra/version`` -> ``{"result": "KoboldCpp", "version": "1.76", ...}``: clients
  switch on streaming, token counting and abort by that answer, and this module serves all
  three (the version is the KoboldCpp API level implemented here, not a claim about its
  code); ``/api/v1/config/max_context_length`` and ``/api/extra/true_max_context_length``
  (a slot's context), ``/api/v1/config/max_length`` (``-n`` when set, else the context).

Fields map to llama.cpp's (``max_length`` -> ``n_predict``, ``rep_pen`` ->
``repeat_penalty``, ``rep_pen_range`` -> ``repeat_last_n``, ``typical`` -> ``typical_p``,
``sampler_seed`` -> ``seed``, ``stop_sequence`` -> stops, ``ban_eos_token``/``bypass_eos``
-> ``ignore_eos``, ``nsigma`` -> ``top_n_sigma``, ``grammar``, ``logit_bias``, ``memory``
(put before the prompt), DRY, XTC, mirostat, dynamic temperature). KoboldCpp keeps a stop
sequence in the text unless ``trim_stop`` (its default since 1.60); so here. A field that
would change sampling in a way llama.cpp cannot (``tfs`` other than 1, ``top_a`` or
``smoothing_factor`` other than 0, ``banned_tokens``, ``images``) is a 400 naming it;
``sampler_order``, ``rep_pen_slope`` and the KoboldAI GUI's formatting and story flags are
accepted and have no effect (llama.cpp's sampler order is fixed and its penalty flat).
Without ``max_length`` the server's ``-n`` applies, as on every family. Errors have
KoboldAI's shape, ``{"detail": {"msg", "type"}}``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from quart import Response, current_app, request

from app import sse
from app.api.common import (
    Family,
    json_response,
    query_model,
    read_valid,
    service,
    streamed,
    with_model,
)
from app.api.drive import SseWire, drive
from app.bound import Bound
from app.completion import CompletionRequest, Delta, GrammarConstraint, Outcome, StopType
from app.errors import JSON, ApiError, InvalidRequest, ServerError
from app.requests import Defaults, build, logit_bias_from, renamed, sampling_from, stops_from


def error_body(exc: ApiError) -> JSON:
    """KoboldAI's error shape."""
    return {"detail": {"msg": exc.message, "type": exc.type}}


kobold = Family("kobold", __name__, error_body=error_body,
                error_event=lambda exc: _event({"detail": error_body(exc)["detail"]}))

#: the KoboldCpp API level this module implements (its /api/extra/version)
VERSION = "1.76"

_NAMES = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p",
          "typical": "typical_p", "rep_pen": "repeat_penalty", "rep_pen_range": "repeat_last_n",
          "presence_penalty": "presence_penalty", "mirostat": "mirostat",
          "mirostat_tau": "mirostat_tau", "mirostat_eta": "mirostat_eta",
          "dry_multiplier": "dry_multiplier", "dry_base": "dry_base",
          "dry_allowed_length": "dry_allowed_length", "dry_penalty_last_n": "dry_penalty_last_n",
          "dry_sequence_breakers": "dry_sequence_breakers", "xtc_threshold": "xtc_threshold",
          "xtc_probability": "xtc_probability", "dynatemp_range": "dynatemp_range",
          "dynatemp_exponent": "dynatemp_exponent", "sampler_seed": "seed"}

#: fields whose other values llama.cpp's samplers cannot give: (value that is a no-op, why)
_UNAVAILABLE = {"tfs": (1.0, "tail-free sampling is not available; use 1 (off)"),
                "top_a": (0.0, "top-a sampling is not available; use 0 (off)"),
                "smoothing_factor": (0.0, "quadratic smoothing is not available; use 0 (off)")}


def generate_request(body: JSON, defaults: Defaults) -> tuple[CompletionRequest, bool]:
    """A body checked by ``schemas/kobold_generate.json`` as a typed request, and whether the
    stop sequence is trimmed from the text."""
    for name, (off, why) in _UNAVAILABLE.items():
        if name in body and body[name] != off:
            raise InvalidRequest(f"invalid value for '{name}': {why}", param=name)
    for name in ("banned_tokens", "banned_strings", "images"):
        if body.get(name):
            raise InvalidRequest(f"invalid value for '{name}': not supported by this server",
                                 param=name)
    values = renamed(body, _NAMES)
    nsigma = body.get("nsigma")
    if nsigma is not None:
        values["top_n_sigma"] = nsigma if nsigma > 0 else -1.0
    if body.get("ban_eos_token") or body.get("bypass_eos"):
        values["ignore_eos"] = True
    grammar = body.get("grammar")
    n_predict = body.get("max_length")
    request = build(defaults, prompt=(body.get("memory", "") + body["prompt"],),
                    sampling=sampling_from(values, defaults),
                    n_predict=int(n_predict) if n_predict is not None else None,
                    stops=stops_from(body.get("stop_sequence"), field="stop_sequence"),
                    constraint=GrammarConstraint(grammar, field="grammar") if grammar else None,
                    logit_bias=logit_bias_from(body.get("logit_bias")))
    return request, bool(body.get("trim_stop", True))


def finish_reason(outcome: Outcome) -> str:
    if outcome.interruption is None and outcome.stop in (StopType.EOS, StopType.WORD):
        return "stop"
    return "length"


def reply_text(outcome: Outcome, trim_stop: bool) -> str:
    word = outcome.stopping_word if outcome.stop is StopType.WORD else None
    return outcome.text + (word or "") * (not trim_stop)


@dataclass(eq=False)
class Running:
    """One running Kobold generation: its key and the text so far (for generate/check)."""

    job_id: int
    genkey: str
    text: list[str] = field(default_factory=list)


@dataclass(eq=False)
class KoboldState:
    running: dict[int, Running] = field(default_factory=dict)


@kobold.record_once
def _setup(state: Any) -> None:
    state.app.extensions["sluice.kobold"] = KoboldState()


def _state() -> KoboldState:
    return current_app.extensions["sluice.kobold"]  # type: ignore[no-any-return]


def _event(obj: JSON) -> bytes:
    return b"event: message\n" + sse.event(obj)


class GenerateWire(SseWire):
    """Both generate routes: the stream's events, and the reply of the non-streamed one."""

    def __init__(self, run: Running, trim_stop: bool) -> None:
        self.run, self.trim_stop = run, trim_stop
        self.reply: JSON | None = None
        self.failed: str | None = None

    def delta(self, index: int, item: Delta) -> list[bytes]:
        if not item.text:
            return []
        self.run.text.append(item.text)
        return [_event({"token": item.text, "finish_reason": "null"})]

    async def final(self, index: int, outcome: Outcome) -> list[bytes]:
        reason = finish_reason(outcome)
        text = reply_text(outcome, self.trim_stop)
        self.reply = {"results": [{"text": text, "finish_reason": reason,
                                   "prompt_tokens": outcome.n_prompt,
                                   "completion_tokens": outcome.n_predicted}]}
        tail = text[len(outcome.text):]  # the stop sequence, when it is kept
        return [_event({"token": tail, "finish_reason": reason})]

    def failure(self, index: int, message: str) -> list[bytes]:
        self.failed = message
        return [_event(error_body(ServerError(message)))]


async def _generate(m: Bound, body: JSON, stream: bool) -> Response:
    request, trim_stop = generate_request(body, m.defaults)
    completion = await m.submit(request)
    state = _state()
    run = Running(completion.id, body.get("genkey", ""))
    wire = GenerateWire(run, trim_stop)

    async def events() -> AsyncGenerator[bytes]:
        state.running[completion.id] = run
        try:
            async with aclosing(drive(m, [completion], wire, None)) as chunks:
                async for chunk in chunks:
                    yield chunk
        finally:
            state.running.pop(completion.id, None)

    if stream:
        return streamed(events(), completion.id,
                        failure=lambda message: _event(error_body(ServerError(message))))
    async with aclosing(events()) as chunks:
        async for _chunk in chunks:
            pass
    if wire.reply is None:
        raise ServerError(wire.failed or "the generation ended without a result")
    return json_response(wire.reply, headers={"X-Request-Id": str(completion.id)})


@kobold.route("/api/v1/generate", methods=["POST"])
@kobold.route("/api/latest/generate", methods=["POST"])
@with_model("kobold_generate", sse_stream=False)
async def generate(m: Bound, body: JSON) -> Response:
    return await _generate(m, body, stream=False)


@kobold.route("/api/extra/generate/stream", methods=["POST"])
@with_model("kobold_generate", sse_stream=False)
async def generate_stream(m: Bound, body: JSON) -> Response:
    return await _generate(m, body, stream=True)


async def _genkey() -> str:
    body = await read_valid("kobold_genkey")
    return str(body.get("genkey", ""))


@kobold.route("/api/extra/abort", methods=["POST"])
async def abort() -> Response:
    key = await _genkey()
    svc = service()
    aborted = False
    for run in list(_state().running.values()):
        if not key or run.genkey == key:
            aborted = svc.abort(run.job_id) or aborted
    return json_response({"success": "true" if aborted else "false", "done": "true"})


@kobold.route("/api/extra/generate/check", methods=["GET", "POST"])
async def check() -> Response:
    key = await _genkey() if request.method == "POST" and request.content_length else ""
    # only a caller that knows a generation's key reads its text: without one, nothing (one
    # client could otherwise read another's reply)
    text = next(("".join(r.text) for r in list(_state().running.values())
                 if key and r.genkey == key), "")
    return json_response({"results": [{"text": text}]})


@kobold.route("/api/extra/tokencount", methods=["POST"])
@with_model("kobold_tokencount", sse_stream=False)
async def tokencount(m: Bound, body: JSON) -> Response:
    special = bool(body.get("special", True))
    ids = await m.with_model(lambda rt: rt.model.tokenize(body["prompt"], add_special=special,
                                                          parse_special=special))
    return json_response({"value": len(ids), "ids": list(ids)})


def _context(m: Bound) -> int:
    slots = m.slot_infos()
    return slots[0].n_ctx if slots else m.settings.ctx_size


@kobold.route("/api/v1/model", methods=["GET"])
@kobold.route("/api/latest/model", methods=["GET"])
@query_model
async def model(m: Bound) -> Response:
    return json_response({"result": f"koboldcpp/{m.name}"})


@kobold.route("/api/v1/info/version", methods=["GET"])
@kobold.route("/api/latest/info/version", methods=["GET"])
async def info_version() -> Response:
    return json_response({"result": "1.2.5"})  # the KoboldAI API version KoboldCpp reports


@kobold.route("/api/extra/version", methods=["GET"])
async def extra_version() -> Response:
    return json_response({"result": "KoboldCpp", "version": VERSION,
                          "protected": bool(service().settings.api_keys), "txt2img": False,
                          "vision": False, "transcribe": False})


@kobold.route("/api/v1/config/max_context_length", methods=["GET"])
@kobold.route("/api/latest/config/max_context_length", methods=["GET"])
@kobold.route("/api/extra/true_max_context_length", methods=["GET"])
@query_model
async def max_context_length(m: Bound) -> Response:
    return json_response({"value": _context(m)})


@kobold.route("/api/v1/config/max_length", methods=["GET"])
@kobold.route("/api/latest/config/max_length", methods=["GET"])
@query_model
async def max_length(m: Bound) -> Response:
    n = m.defaults.n_predict
    return json_response({"value": n if n > 0 else _context(m)})
