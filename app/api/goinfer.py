"""goinfer's routes: model state, load and unload, /infer with abort, and the /ws token feed.

- ``GET /model/state`` -> ``{"isModelLoaded", "loadedModel", "models", "ctx"}``; ``models``
  lists the ``.gguf`` files of ``--models-dir`` by name.
- ``POST /model/load`` ``{"model" | "name", "ctx", "embeddings", "gpuLayers"}`` -> 204. Names
  only: a name with a path separator, ``..`` or an absolute path is 400; an unknown name 404.
  Running requests end like an abort (marked ``"model_changed": true``), requests arriving
  during the load wait for it, ``/health`` answers 503 meanwhile.
- ``GET /model/unload`` -> 204; afterwards requests get 503 until a model is loaded.
- ``POST /infer`` with goinfer's names (``prompt``, ``template`` with a ``{prompt}`` slot,
  ``tokens``, ``topK``, ``topP``, ``temp``, ``frequencyPenalty``, ``presencePenalty``, ``stop``,
  ``stream``, plus ``minP``, ``repeatPenalty``, ``seed``). ``threads`` must equal the server's
  thread count and ``tfs`` must be 1 (tail-free sampling is gone from llama.cpp): otherwise 400.
  The reply has ``text`` and the timings ``thinkingTime`` (to the first token),
  ``emitTime`` (generation), ``totalTime`` in seconds with ``...Format`` strings,
  ``tokensPerSecond`` and ``totalTokens``. Streamed, each token is
  ``data: {"msgType": "token", "content", "num"}`` and the stream ends with
  ``data: {"msgType": "system", "content": "result", "data": {...the reply...}}``.
- ``GET /infer/abort`` -> 204 when /infer requests were aborted, 202 when none ran.
- ``/ws``: a websocket carrying the tokens of running /infer requests as
  ``{"msg": "<piece>", "nToken": i}`` (with ``--no-ws`` its handshake is refused, 403). A
  subscriber that falls 256 messages behind is disconnected (close code 1008) rather than
  silently skipped.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

import trio
from quart import Blueprint, Response, websocket

from app import sse
from app.api.common import json_response, read_json, run_stream, service
from app.bridge import StopReason
from app.engine.model import ModelLoadError, check_model_file
from app.errors import JSON, InvalidRequest, NotFound, NotSupported, ServerError
from app.requests import completion_params
from app.service import Service
from app.validation import validate

goinfer = Blueprint("goinfer", __name__)

WS_BACKLOG = 256


class TokenFeed:
    """Broadcasts /infer tokens to /ws subscribers through bounded channels."""

    def __init__(self) -> None:
        self._subscribers: set[trio.MemorySendChannel[str]] = set()

    def subscribe(self) -> trio.MemoryReceiveChannel[str]:
        send, receive = trio.open_memory_channel[str](WS_BACKLOG)
        self._subscribers.add(send)
        return receive

    def publish(self, piece: str, n_token: int) -> None:
        message = json.dumps({"msg": piece, "nToken": n_token}, ensure_ascii=False)
        for channel in list(self._subscribers):
            try:
                channel.send_nowait(message)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                self._subscribers.discard(channel)
                channel.close()  # the subscriber sees the end of its feed and disconnects


def feed(svc: Service) -> TokenFeed:
    if svc.token_feed is None:
        svc.token_feed = TokenFeed()
    assert isinstance(svc.token_feed, TokenFeed)
    return svc.token_feed


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
    loaded = svc.runtime.model.info.path.name if svc.runtime is not None else ""
    return json_response({"isModelLoaded": svc.runtime is not None, "loadedModel": loaded,
                          "models": _model_names(directory) if directory else [],
                          "ctx": svc.settings.ctx_size})


@goinfer.route("/model/load", methods=["POST"])
async def model_load() -> Response:
    svc = service()
    body = validate("goinfer_load", await read_json())
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
    try:
        check_model_file(path)  # refuse a broken file before unloading the current model
    except ModelLoadError as exc:
        raise InvalidRequest(f"invalid value for '{field}': {exc}", param=field) from None
    overrides: JSON = {}
    if "ctx" in body:
        overrides["ctx_size"] = body["ctx"]
    if "embeddings" in body:
        overrides["embedding"] = body["embeddings"]
    if "gpuLayers" in body:
        overrides["n_gpu_layers"] = body["gpuLayers"]
    try:
        await svc.switch_model(path, **overrides)
    except ModelLoadError as exc:
        raise ServerError(f"could not load {name!r}: {exc}") from None
    return Response("", status=204)


@goinfer.route("/model/unload", methods=["GET"])
async def model_unload() -> Response:
    await service().switch_model(None)
    return Response("", status=204)


def _seconds(value: float) -> str:
    return f"{value:.3f}s"


def _reply(final: JSON, started: float, first_token: float | None, ended: float) -> JSON:
    first = first_token if first_token is not None else ended
    thinking, emitting, total = first - started, ended - first, ended - started
    n = final["tokens_predicted"]
    out: JSON = {"text": final["content"], "thinkingTime": thinking,
                 "thinkingTimeFormat": _seconds(thinking), "emitTime": emitting,
                 "emitTimeFormat": _seconds(emitting), "totalTime": total,
                 "totalTimeFormat": _seconds(total),
                 "tokensPerSecond": round(n / emitting, 2) if emitting > 0 else 0.0,
                 "totalTokens": n}
    for key in ("aborted", "timeout", "shutdown", "model_changed"):
        if key in final:
            out[key] = True
    return out


@goinfer.route("/infer", methods=["POST"])
async def infer() -> Response:
    svc = service()
    body = validate("goinfer_infer", await read_json())
    threads = svc.settings.threads or os.cpu_count()
    if "threads" in body and body["threads"] != threads:
        raise InvalidRequest(f"invalid value for 'threads': this server decodes with {threads} "
                             "threads for every request", param="threads")
    if body.get("tfs", 1.0) != 1.0:
        raise InvalidRequest("invalid value for 'tfs': tail-free sampling is not available; "
                             "use 1 (off)", param="tfs")
    prompt = body["prompt"]
    if "template" in body:
        prompt = body["template"].replace("{prompt}", prompt)
    names = {"tokens": "n_predict", "topK": "top_k", "topP": "top_p", "minP": "min_p",
             "temp": "temperature", "frequencyPenalty": "frequency_penalty",
             "presencePenalty": "presence_penalty", "repeatPenalty": "repeat_penalty",
             "stop": "stop", "seed": "seed"}
    native: JSON = {"prompt": prompt, **{names[k]: v for k, v in body.items() if k in names}}
    params = completion_params(validate("completion", native),
                               default_n_predict=svc.settings.n_predict,
                               default_seed=svc.settings.seed)
    prepared = await svc.prepare(params)
    job_id = svc.new_id()
    tokens = feed(svc)
    streaming = bool(body.get("stream"))

    async def events() -> AsyncIterator[bytes]:
        started, first = time.perf_counter(), None
        n = 0
        svc.infer_jobs.add(job_id)
        try:
            async with aclosing(run_stream(svc, prepared, job_id)) as steps:
                async for step in steps:
                    data = step.data
                    if step.kind == "token" and data is not None and data["content"]:
                        first = first or time.perf_counter()
                        tokens.publish(data["content"], n)
                        if streaming:
                            yield sse.event({"msgType": "token", "content": data["content"],
                                             "num": n})
                        n += 1
                    elif step.kind == "final" and data is not None:
                        reply = _reply(data, started, first, time.perf_counter())
                        yield (sse.event({"msgType": "system", "content": "result",
                                          "data": reply}) if streaming
                               else json.dumps(reply).encode())
                    elif step.kind == "error" and data is not None:
                        yield sse.event(data) if streaming else json.dumps(data).encode()
        finally:
            svc.infer_jobs.discard(job_id)

    if streaming:
        resp = Response(events(), status=200, headers={**sse.HEADERS,
                                                       "X-Request-Id": str(job_id)})
        resp.timeout = None
        return resp
    chunks = [chunk async for chunk in events()]
    out = json.loads(b"".join(chunks))
    if "error" in out:
        raise ServerError(out["error"]["message"])
    return json_response(out, headers={"X-Request-Id": str(job_id)})


@goinfer.route("/infer/abort", methods=["GET"])
async def infer_abort() -> Response:
    svc = service()
    aborted = False
    for job_id in list(svc.infer_jobs):
        gen = svc.running.get(job_id)
        if gen is not None:
            gen.request_stop(StopReason.ABORTED)
            aborted = True
    return Response("", status=204 if aborted else 202)


@goinfer.websocket("/ws")
async def ws() -> None:
    svc = service()
    if not svc.settings.websocket:
        await websocket.close(1008, "the token feed is disabled (--no-ws)")
        return
    await websocket.accept()
    async with feed(svc).subscribe() as messages:
        async for message in messages:
            await websocket.send(message)
    await websocket.close(1008, "too far behind the token feed")
