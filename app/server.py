"""The Quart-Trio application and its life on Hypercorn's trio worker."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve
from quart import Response, has_request_context, request, websocket
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from app import auth, cors
from app.api.anthropic import anthropic
from app.api.common import error_body
from app.api.compat import compat
from app.api.extras import extras
from app.api.goinfer import goinfer
from app.api.kobold import kobold
from app.api.metrics import metrics
from app.api.models import models
from app.api.native import native
from app.api.ollama import ollama
from app.api.ollama_models import ollama_models
from app.api.openai import openai
from app.api.openapi import openapi
from app.api.responses import responses
from app.api.web import web
from app.chat import ChatTemplate
from app.discovery import ModelSpec, directory_specs
from app.engine.model import Model
from app.errors import (
    ApiError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServerError,
)
from app.hosted import Hosted
from app.registry import Registry
from app.runtime import Runtime, RuntimeLike, load_runtime, return_memory
from app.service import Service
from app.settings import Settings

log = logging.getLogger("sluice")

_HTTP_ERRORS: dict[int, type[ApiError]] = {
    400: InvalidRequest, 404: NotFound, 405: MethodNotAllowed, 413: PayloadTooLarge,
}


def _error_response(exc: ApiError) -> Response:
    """The one place errors become responses, in the shape of the family whose route raised
    (each family's blueprint owns it: ``app.api.common.Family``)."""
    resp = Response(json.dumps(error_body(exc)), status=exc.status, content_type="application/json")
    for key, value in exc.headers.items():
        resp.headers[key] = value
    return resp


SERVER_HEADER = "llama.cpp"


def create_app(settings: Settings, service: Service) -> QuartTrio:
    """The application for one running :class:`Service`."""
    app = QuartTrio("sluice")
    app.config["SLUICE_SERVICE"] = service
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["RESPONSE_TIMEOUT"] = None  # streams end when generation ends
    app.config["BODY_TIMEOUT"] = 60
    app.register_blueprint(native)
    app.register_blueprint(metrics)
    app.register_blueprint(openai)
    app.register_blueprint(models)
    app.register_blueprint(ollama)
    app.register_blueprint(ollama_models)
    app.register_blueprint(anthropic)
    app.register_blueprint(responses)
    app.register_blueprint(extras)
    app.register_blueprint(compat)
    app.register_blueprint(goinfer)
    app.register_blueprint(kobold)
    app.register_blueprint(web)
    app.register_blueprint(openapi)

    @app.after_request
    async def add_headers(response: Response) -> Response:
        # llama.cpp's own Server header: tools that look for a llama.cpp server find one
        # (what it is lives in /props build_info and /api/version)
        response.headers["Server"] = SERVER_HEADER
        preflight = (request.method == "OPTIONS"
                     and "Access-Control-Request-Method" in request.headers)
        for key, value in cors.headers(request.headers.get("Origin"), settings.origins,
                                       preflight=preflight, methods=settings.cors_methods,
                                       allow_headers=settings.cors_headers,
                                       credentials=settings.cors_credentials).items():
            response.headers[key] = value
        return response

    @app.before_request
    async def require_key() -> None:
        try:
            auth.check(request.path, request.method, settings.api_keys,
                       request.headers.get("Authorization"), request.headers.get("X-Api-Key"))
        except ApiError:
            # Read the unread body first: answering early would leave it on a keep-alive
            # connection, where it stalls the client's next request.
            with contextlib.suppress(HTTPException):
                await request.get_data(cache=False)
            raise

    @app.before_websocket
    async def guard_websocket() -> str | None:
        """The key and an Origin allow-list for websockets, which before_request hooks never
        see: a refusal is a close with code 1008 and the reason."""
        reason = None
        if not cors.websocket_origin_ok(websocket.headers.get("Origin"),
                                        websocket.headers.get("Host"), settings.origins):
            reason = "origin not allowed (--cors-origins)"
        else:
            try:
                auth.check(websocket.path, "GET", settings.api_keys,
                           websocket.headers.get("Authorization"),
                           websocket.headers.get("X-Api-Key"), websocket.args.get("api_key"))
            except ApiError as exc:
                reason = exc.message
        if reason is None:
            return None
        await websocket.accept()
        await websocket.close(1008, reason)
        return ""  # the handler does not run

    @app.errorhandler(ApiError)
    async def api_error(exc: ApiError) -> Response:
        if has_request_context():
            # A route may refuse before reading the body (503 with no model, 501, ...): read it
            # now, or its bytes stay on the keep-alive connection and stall the next request.
            with contextlib.suppress(HTTPException):
                await request.get_data(cache=False)
        return _error_response(exc)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        cls = _HTTP_ERRORS.get(code, ServerError)
        if code == 404:
            return _error_response(NotFound("no such route"))
        if code == 413:
            resp = _error_response(PayloadTooLarge(
                f"request body over the limit of {settings.max_body_bytes} bytes"))
            resp.headers["Connection"] = "close"  # the rest of the body is never read
            return resp
        return _error_response(cls(exc.description or exc.name))

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return _error_response(ServerError(f"internal error: {type(exc).__name__}"))

    return app


def canonical_case(app: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """Response header names in their usual case (``Access-Control-Allow-Origin``) on
    HTTP/1.1. ASGI frameworks lower-case them (Quart does), which HTTP allows, but clients
    that keep headers in a plain dict (llama.cpp's own test suite does) look them up by the
    usual name. HTTP/2 lower-cases them again, as it must (its ``h2`` normalises them)."""

    async def cased(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def send_cased(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [
                    (_title(name), value)
                    for name, value in message.get("headers", ())]}
            await send(message)

        await app(scope, receive, send_cased)

    return cased


def _title(name: bytes) -> bytes:
    return b"-".join(part[:1].upper() + part[1:] for part in bytes(name).split(b"-"))


def under_prefix(app: QuartTrio, prefix: str) -> Callable[..., Awaitable[None]]:
    """``app`` served under ``prefix`` (``--api-prefix``): ``/llama/v1/models`` reaches
    ``/v1/models``; any path outside it is a 404 in the error shape (a websocket outside it
    is refused)."""
    raw_prefix = prefix.encode()

    async def prefixed(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            path: str = scope["path"]
            if path != prefix and not path.startswith(prefix + "/"):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                body = json.dumps(NotFound(f"no such route (the server is under {prefix})"
                                           ).body()).encode()
                await send({"type": "http.response.start", "status": 404, "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
            raw: bytes = scope.get("raw_path") or path.encode()
            scope = {**scope, "path": path[len(prefix):] or "/",
                     "raw_path": (raw[len(raw_prefix):] if raw.startswith(raw_prefix) else raw)
                     or b"/"}
        await app(scope, receive, send)  # type: ignore[arg-type]

    return prefixed


def hypercorn_config(settings: Settings) -> Config:
    config = Config()
    config.bind = list(settings.binds)
    config.include_server_header = False  # the app sends llama.cpp's (see create_app)
    config.worker_class = "trio"
    config.graceful_timeout = settings.shutdown_grace_s + 2.0
    config.keep_alive_timeout = 30
    config.accesslog = logging.getLogger("hypercorn.access") if settings.verbose else None
    config.errorlog = logging.getLogger("hypercorn.error")
    if settings.ssl_cert_file is not None and settings.ssl_key_file is not None:
        config.certfile = str(settings.ssl_cert_file)
        config.keyfile = str(settings.ssl_key_file)
    return config


def build_registry(settings: Settings, specs: list[ModelSpec], default: str | None,
                   router: bool) -> Registry:
    """The registry for the real server: loads in worker threads, memory back to the OS after
    an unload, the models directory rescanned for new files."""
    async def load(hosted: Hosted) -> RuntimeLike:
        model_settings = hosted.spec.settings(settings)
        token = trio.lowlevel.current_trio_token()
        return await trio.to_thread.run_sync(
            lambda: load_runtime(model_settings, token, lambda: hosted.cancel_load))

    async def close(runtime: RuntimeLike) -> None:
        await trio.to_thread.run_sync(runtime.close)
        return_memory()

    directory = settings.models_dir
    return Registry(specs, load=load, close=close, default=default, router=router,
                    max_loaded=settings.models_max, max_waiting=settings.max_queue,
                    wait_s=settings.models_wait_s, idle_s=settings.sleep_idle_s,
                    rescan=(lambda: directory_specs(directory)) if directory else None)


async def serve(settings: Settings, registry: Registry,
                preloaded: tuple[Model, ChatTemplate] | None = None) -> None:
    """Serve the registry's models until SIGINT/SIGTERM, then shut down gracefully.

    ``preloaded`` is the default model, loaded before the server started (so that a bad
    file is a one-line start-up error). On a signal the listener closes, new requests get
    503, running requests get ``shutdown_grace_s`` to finish; then their streams end with a
    final event marked ``"shutdown": true``.
    """
    if settings.threads_http is not None:
        trio.to_thread.current_default_thread_limiter().total_tokens = settings.threads_http
    default = registry.default_hosted
    if preloaded is not None and default is not None:
        model, template = preloaded
        registry.adopt(default, Runtime.start(default.spec.settings(settings), model, template))
    service = Service(settings, registry)
    # what start-up made lives as long as the server: out of the collector's full scans, which
    # otherwise walk it all, holding the GIL, whenever a large request allocates much
    gc.collect()
    gc.freeze()
    app = create_app(settings, service)
    stop = trio.Event()

    async def watch_signals() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        service.begin_shutdown()
        stop.set()
        await trio.sleep(settings.shutdown_grace_s)
        service.stop_all()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_signals)
            await nursery.start(service.run)
            asgi: Any = under_prefix(app, settings.api_prefix) if settings.api_prefix else app
            asgi = canonical_case(asgi)
            await hypercorn_serve(asgi, hypercorn_config(settings), shutdown_trigger=stop.wait)
            nursery.cancel_scope.cancel(reason="server stopped")
    finally:
        registry.close_all_now()
