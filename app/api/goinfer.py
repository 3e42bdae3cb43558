"""goinfer's routes: model state, load and unload, /infer with abort, and the /ws token feed.

- ``GET /model/state`` -> ``{"isModelLoaded", "loadedModel", "models", "ctx"}``; ``models``
  lists the ``.gguf`` files of ``--models-dir`` by name.
- ``POST /model/load`` ``{"model" | "name", "ctx", "embeddings", "gpuLayers"}`` -> 204. Names
  only: a name with a path separator, ``..`` or an absolute path is 400; an unknown name 404.
  Running requests end like an abort (marked ``"model_changed": true``), requests arriving
  during the load wait for it, ``/health`` answers 503 meanwhile.
- ``POST /model/unload`` (also ``GET``, goinfer's method) -> 204; afterwards requests get 503
  until a model is loaded. It needs ``--models-dir`` (501 without: nothing could be loaded
  again); while the model is still in use after 10 s (a long tokenization, say) it stays
  loaded and the answer is 409.
- ``POST /infer`` with goinfer's names (``prompt``, ``template`` with a ``{prompt}`` slot,
  ``tokens``, ``topK``, ``topP``, ``temp``, ``frequencyPenalty``, ``presencePenalty``, ``stop``,
  ``stream``, plus ``minP``, ``repeatPenalty``, ``seed``). ``threads`` must equal the server's
  thread count and ``tfs`` must be 1 (tail-free sampling is gone from llama.cpp): otherwise 400.
  The reply has ``text`` and the timings ``thinkingTime`` (to the first token),
  ``emitTime`` (generation), ``totalTime`` in seconds with ``...Format`` strings,
  ``tokensPerSecond`` and ``totalTokens``. Streamed, each token is
  ``data: {"msgType": "token", "content", "num"}`` and the stream ends with
  ``data: {"msgType": "system", "content": "result", "data": {...the reply...}}``.
- ``POST /infer/abort`` (also ``GET``) -> 204 when /infer requests were aborted, 202 when none ran.
- ``/ws``: a websocket carrying the tokens of running /infer requests as
  ``{"msg": "<piece>", "nToken": i}`` (with ``--no-ws`` its handshake is refused, 403). A
  subscriber that falls 256 messages behind is disconnected (close code 1008) rather than
  silently skipped; beyond ``--max-ws`` connections (default 64) the handshake is refused
  with close code 1013 (try again later).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncGenerator, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from quart import Response, current_app, websocket

from app import sse
from app.api.common import Family, json_response, read_valid, service, streamed, with_model
from app.api.drive import Wire, drive
from app.bound import Bound
from app.completion import CompletionRequest, Delta, Outcome
from app.errors import JSON, InvalidRequest, NotFound, NotSupported, ServerError
from app.requests import build, renamed, sampling_from, stops_from
from app.service import Service

goinfer = Family("goinfer", __name__)

WS_BACKLOG = 256


class TokenFeed:
    """Broadcasts /infer tokens to /ws subscribers through bounded channels."""

    def __init__(self) -> None:
        self._subscribers: set[trio.MemorySendChannel[str]] = set()

    def __len__(self) -> int:
        return len(self._subscribers)

    @contextmanager
    def subscribe(self) -> Iterator[trio.MemoryReceiveChannel[str]]:
        """A subscription for the block's duration: leaving it (a client gone) unsubscribes."""
        send, receive = trio.open_memory_channel[str](WS_BACKLOG)
        self._subscribers.add(send)
        try:
            with receive:
                yield receive
        finally:
            self._subscribers.discard(send)
            send.close()

    def publish(self, piece: str, n_token: int) -> None:
        message = json.dumps({"msg": piece, "nToken": n_token}, ensure_ascii=False)
        for channel in list(self._subscribers):
            try:
                channel.send_nowait(message)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.discard(channel)
                channel.close()  # the subscriber sees the end of its feed and disconnects


@dataclass(eq=False)
class GoinferState:
    """goinfer's own state: the /ws feed and the running /infer requests (for /infer/abort)."""

    feed: TokenFeed = field(default_factory=TokenFeed)
    infer_jobs: set[int] = field(default_factory=set)


@goinfer.record_once
def _setup(state: Any) -> None:
    state.app.extensions["sluice.goinfer"] = GoinferState()


def _state() -> GoinferState:
    return current_app.extensions["sluice.goinfer"]  # type: ignore[no-any-return]


def _models_dir(svc: Service) -> Path:
    if svc.settings.models_dir is None:
        raise NotSupported("no models directory; start the server with --models-dir")
    return svc.settings.models_dir


def _model_names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.suffix == ".gguf" and p.is_file())


@goinfer.route("/model/state", methods=["GET"])
async def model_state() -> Response:
    svc = service()
    directory = svc.settings.models_dir
    loaded = svc.registry.loaded()
    default = svc.registry.default_hosted
    current = default if default in loaded else (loaded[0] if loaded else default)
    settings = current.spec.settings(svc.settings) if current is not None else svc.settings
    return json_response({"isModelLoaded": bool(loaded),
                          "loadedModel": current.spec.path.name if current and loaded else "",
                          "models": _model_names(directory) if directory else [],
                          "ctx": settings.ctx_size})


@goinfer.route("/model/load", methods=["POST"])
async def model_load() -> Response:
    svc = service()
    body = await read_valid("goinfer_load")
    field = "model" if "model" in body else "name"
    name: str = body[field]
    directory = _models_dir(svc)
    if os.path.isabs(name) or "/" in name or "\\" in name or name in (".", ".."):
        raise InvalidRequest(f"invalid value for '{field}': give a model name from "
                             "/model/state, not a path", param=field)
    path = directory / name
    if not path.is_file() and (directory / f"{name}.gguf").is_file():
        path = directory / f"{name}.gguf"
    if path.name not in _model_names(directory):
        raise NotFound(f"no model named {name!r} in the models directory")
    overrides: JSON = {}
    if "ctx" in body:
        overrides["ctx_size"] = body["ctx"]
    if "embeddings" in body:
        overrides["embedding"] = body["embeddings"]
    if "gpuLayers" in body:
        overrides["n_gpu_layers"] = body["gpuLayers"]
    await svc.load_model(path, field=field, **overrides)
    return Response("", status=204)


@goinfer.route("/model/unload", methods=["POST", "GET"])  # GET: goinfer's own method
async def model_unload() -> Response:
    """Unload every loaded model (goinfer holds one). Only with a models directory, as
    goinfer; the next request loads its model again on demand."""
    svc = service()
    _models_dir(svc)
    await svc.unload()
    return Response("", status=204)


def _seconds(value: float) -> str:
    return f"{value:.3f}s"


def _reply(outcome: Outcome, started: float, first_token: float | None, ended: float) -> JSON:
    first = first_token if first_token is not None else ended
    thinking, emitting, total = first - started, ended - first, ended - started
    n = outcome.n_predicted
    out: JSON = {"text": outcome.text, "thinkingTime": thinking,
                 "thinkingTimeFormat": _seconds(thinking), "emitTime": emitting,
                 "emitTimeFormat": _seconds(emitting), "totalTime": total,
                 "totalTimeFormat": _seconds(total),
                 "tokensPerSecond": round(n / emitting, 2) if emitting > 0 else 0.0,
                 "totalTokens": n}
    if outcome.interruption is not None:
        out[outcome.interruption.value] = True
    return out


_NAMES = {"prompt": "prompt", "tokens": "n_predict", "topK": "top_k", "topP": "top_p",
          "minP": "min_p", "temp": "temperature", "frequencyPenalty": "frequency_penalty",
          "presencePenalty": "presence_penalty", "repeatPenalty": "repeat_penalty", "seed": "seed"}


def infer_request(body: JSON, svc: Bound) -> CompletionRequest:
    """goinfer's /infer body (checked by its schema) as a typed request."""
    threads = svc.settings.threads or os.cpu_count()
    if "threads" in body and body["threads"] != threads:
        raise InvalidRequest(f"invalid value for 'threads': this server decodes with {threads} "
                             "threads for every request", param="threads")
    if body.get("tfs", 1.0) != 1.0:
        raise InvalidRequest("invalid value for 'tfs': tail-free sampling is not available; "
                             "use 1 (off)", param="tfs")
    values = renamed(body, _NAMES)
    prompt = body["prompt"]
    if "template" in body:
        template = body["template"]
        # the size is known before the expansion: a template repeating {prompt} would
        # otherwise multiply a large prompt first and be refused (by the context) only later
        size = len(template) + template.count("{prompt}") * (len(prompt) - len("{prompt}"))
        if size > svc.service.settings.max_body_bytes:
            raise InvalidRequest(f"invalid value for 'template': the expanded prompt would be "
                                 f"{size} characters, over the body limit of "
                                 f"{svc.service.settings.max_body_bytes}", param="template")
        prompt = template.replace("{prompt}", prompt)
    defaults = svc.defaults
    n_predict = values.get("n_predict")
    return build(defaults, prompt=(prompt,), sampling=sampling_from(values, defaults),
                 n_predict=int(n_predict) if n_predict is not None else None,
                 stops=stops_from(body.get("stop")))


class InferStream(Wire):
    """goinfer's ``/infer`` (a :class:`~app.api.drive.StreamWire`): a ``token`` event per
    token, each also published to the ``/ws`` feed, then the ``system`` ``result`` event with
    goinfer's reply; a failure is one error event. The non-streamed route runs the same wire
    and answers with :attr:`reply` (the feed gets the tokens either way)."""

    def __init__(self, state: GoinferState) -> None:
        self.state = state
        self.started, self.first = time.perf_counter(), 0.0
        self.n = 0
        self.reply: JSON | None = None
        self.failed: str | None = None

    def delta(self, index: int, item: Delta) -> list[bytes]:
        if not item.text:
            return []
        self.first = self.first or time.perf_counter()
        self.state.feed.publish(item.text, self.n)
        self.n += 1
        return [sse.event({"msgType": "token", "content": item.text, "num": self.n - 1})]

    async def final(self, index: int, outcome: Outcome) -> list[bytes]:
        self.reply = _reply(outcome, self.started, self.first or None, time.perf_counter())
        return [sse.event({"msgType": "system", "content": "result", "data": self.reply})]

    def failure(self, index: int, message: str) -> list[bytes]:
        self.failed = message  # after the 200: one error event, then the end
        return [sse.event(ServerError(message).body())]


@goinfer.route("/infer", methods=["POST"])
@with_model("goinfer_infer")
async def infer(m: Bound, body: JSON) -> Response:
    completion = await m.submit(infer_request(body, m))
    state = _state()
    wire = InferStream(state)

    async def events() -> AsyncGenerator[bytes]:
        state.infer_jobs.add(completion.id)  # what /infer/abort ends
        try:
            async with aclosing(drive(m, [completion], wire, None)) as chunks:
                async for chunk in chunks:
                    yield chunk
        finally:
            state.infer_jobs.discard(completion.id)

    if body.get("stream"):
        return streamed(events(), completion.id)
    async with aclosing(events()) as chunks:
        async for _chunk in chunks:
            pass
    if wire.reply is None:
        raise ServerError(wire.failed or "the completion ended without a result")
    return json_response(wire.reply, headers={"X-Request-Id": str(completion.id)})


@goinfer.route("/infer/abort", methods=["POST", "GET"])  # GET: goinfer's own method
async def infer_abort() -> Response:
    svc = service()
    aborted = False
    for job_id in list(_state().infer_jobs):
        aborted = svc.abort(job_id) or aborted
    return Response("", status=204 if aborted else 202)


@goinfer.websocket("/ws")
async def ws() -> None:
    svc = service()
    if not svc.settings.websocket:
        await websocket.close(1008, "the token feed is disabled (--no-ws)")
        return
    feed = _state().feed
    if len(feed) >= svc.settings.max_ws:
        await websocket.close(1013, f"too many /ws connections (--max-ws {svc.settings.max_ws})")
        return
    await websocket.accept()
    with feed.subscribe() as messages:
        async for message in messages:
            await websocket.send(message)
    await websocket.close(1008, "too far behind the token feed")
