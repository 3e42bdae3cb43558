"""What every API family shares: the service, JSON bodies and streamed responses."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio
from quart import Blueprint, Response, current_app, has_request_context, request, stream_with_context

from app import sse
from app.errors import JSON, ApiError, ContextOverflow
from app.hosted import ModelStatus
from app.service import ModelChanged
from app.validation import parse_json_body, validate

if TYPE_CHECKING:
    from app.bound import Bound
    from app.completion import CompletionRequest, Item, Outcome
    from app.running import Completion
    from app.service import Service

Handler = Callable[..., Awaitable[Response]]
#: a family's error body for an error (llama.cpp's and OpenAI's ``{"error": {...}}`` by default)
ErrorBody = Callable[[ApiError], JSON]


def _default_body(exc: ApiError) -> JSON:
    return exc.body()


def _default_event(exc: ApiError) -> bytes:
    return sse.event(exc.body())


class Family(Blueprint):
    """The blueprint of one API family, owning its error shape: ``error_body`` for an HTTP
    error of its routes, ``error_event`` for one sent as the last event of a stream whose 200
    has gone out (a model that failed to load under a streamed request)."""

    def __init__(self, name: str, import_name: str, *, error_body: ErrorBody = _default_body,
                 error_event: Callable[[ApiError], bytes] = _default_event) -> None:
        super().__init__(name, import_name)
        self.error_body = error_body
        self.error_event = error_event


def family() -> Family | None:
    """The family of the request being handled: its route's blueprint or, for a path no route
    took with this method (404, 405), the blueprint of a route with that exact path."""
    if not has_request_context():
        return None
    name = request.blueprint
    if name is None:
        path = request.path
        name = next((rule.endpoint.partition(".")[0] for rule in current_app.url_map.iter_rules()
                     if rule.rule == path), None)
    found = current_app.blueprints.get(name or "")
    return found if isinstance(found, Family) else None


def error_body(exc: ApiError) -> JSON:
    """``exc`` in the shape of the family whose route it came from."""
    owner = family()
    return owner.error_body(exc) if owner is not None else exc.body()
#: the last event of a stream that failed after its 200, given the message
FailureFrame = Callable[[str], bytes]

log = logging.getLogger("sluice")


def service() -> Service:
    return current_app.config["SLUICE_SERVICE"]  # type: ignore[no-any-return]


def json_response(body: JSON | list[Any], status: int = 200,
                  headers: dict[str, str] | None = None) -> Response:
    resp = Response(json.dumps(body, ensure_ascii=False), status=status,
                    content_type="application/json")
    for key, value in (headers or {}).items():
        resp.headers[key] = value
    return resp


#: bodies up to this size are decoded and checked on the Trio thread (well under a
#: millisecond); larger ones in a worker, so a big body never stalls other requests
INLINE_BODY_BYTES = 16 * 1024


async def _body() -> bytes:
    raw = await request.get_data(cache=False, as_text=False)
    return raw if isinstance(raw, bytes) else raw.encode()


async def read_json() -> JSON:
    data = await _body()
    if len(data) <= INLINE_BODY_BYTES:
        return parse_json_body(data)
    return await trio.to_thread.run_sync(parse_json_body, data)


async def read_valid(schema: str) -> JSON:
    """The body, decoded and checked against ``schemas/<schema>.json`` (in a worker when it
    is large: schema validation is linear in the body and slow in Python). A prompt of token
    ids longer than the whole context is refused first, without the validation's seconds."""
    data = await _body()
    cells = service().max_ctx_size

    def check() -> JSON:
        body = parse_json_body(data)
        _bound_prompt(body.get("prompt"), cells)
        return validate(schema, body)

    if len(data) <= INLINE_BODY_BYTES:
        return check()
    return await trio.to_thread.run_sync(check)


def _bound_prompt(prompt: Any, cells: int) -> None:
    """A token-id prompt (or one of a list of them) longer than the KV cells of the whole
    server cannot be evaluated: refused before the body's schema check."""
    if not isinstance(prompt, list):
        return
    for part in [prompt, *prompt]:
        if isinstance(part, list) and len(part) > cells:
            raise ContextOverflow(len(part), cells)


def streamed(body: AsyncIterator[bytes], job_id: int, *, text: bool = False,
             headers: dict[str, str] | None = None,
             failure: FailureFrame | None = None) -> Response:
    """A 200 whose body is ``body``: Server-Sent Events, or plain text with ``text``.

    Only call this once the request was submitted: the status is final. Should ``body``
    raise, the stream ends with ``failure(message)`` (default: an SSE ``error`` object, as
    OpenAI's and llama.cpp's streams end); a plain-text stream has no such event and is cut
    instead, so that its client sees an incomplete body rather than a short answer.
    """
    base = ({"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-cache",
             "X-Accel-Buffering": "no"} if text else dict(sse.HEADERS))
    frame = failure if failure is not None else (None if text else sse_failure)
    resp = Response(guarded(body, frame), status=200,
                    headers={**base, "X-Request-Id": str(job_id), **(headers or {})})
    resp.timeout = None
    return resp


def sse_failure(message: str) -> bytes:
    """``data: {"error": …}``, framed by hand: the failure may be in the usual encoder."""
    return b"data: " + json.dumps({"error": {"code": 500, "message": message,
                                             "type": "server_error"}}).encode() + b"\n\n"


async def guarded(body: AsyncIterator[bytes], failure: FailureFrame | None
                  ) -> AsyncIterator[bytes]:
    """``body``, but an exception it raises (a bug, after the 200) ends the stream with
    ``failure``'s frame instead of leaving the server's log with a traceback and the client
    with a cut connection. Cancellation passes through; ``body`` is closed either way."""
    try:
        async for chunk in body:
            yield chunk
    except Exception as exc:
        log.exception("a stream failed after its first byte")
        if failure is None:
            raise
        yield failure(f"internal error: {type(exc).__name__}")
    finally:
        close = getattr(body, "aclose", None)
        if close is not None:
            await close()


def model_name_in(body: JSON, field: str = "model") -> str | None:
    name = body.get(field)
    return name if isinstance(name, str) and name else None


def query_model(handler: Handler) -> Handler:
    """Route decorator for routes without a JSON body: bind the model named by ``?model=``
    (or the default) and call ``handler(bound, ...)`` (llama.cpp's router takes it so)."""
    @functools.wraps(handler)
    async def route(*args: Any, **kwargs: Any) -> Response:
        async with service().use(request.args.get("model") or None) as bound:
            return await handler(bound, *args, **kwargs)
    return route


def with_model(schema: str, *, field: str = "model", sse_stream: bool = True,
               keep_alive: Callable[[JSON], tuple[bool, float | None]] | None = None
               ) -> Callable[[Handler], Handler]:
    """Route decorator: read and check the body against ``schemas/<schema>.json``, bind the
    model it names in ``field`` (loading it if needed) and call ``handler(bound, body)``.

    The model is leased while the handler runs; a completion it submits holds its own
    lease for as long as its stream. A streamed request (``"stream": true`` and
    ``sse_stream``) whose model is not loaded gets its 200 at once and ``: ping``
    comments while the model loads (a load can take minutes); an error found after that
    is sent as one ``error`` event with the body the HTTP error would have had.
    ``keep_alive(body)`` gives ``(given, seconds)`` for Ollama's field.
    """
    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def route(*args: Any, **kwargs: Any) -> Response:
            svc = service()
            body = await read_valid(schema)
            name = model_name_in(body, field)
            given, seconds = keep_alive(body) if keep_alive is not None else (False, None)
            options = {"field": field, "keep_alive_s": seconds, "set_keep_alive": given}
            if sse_stream and body.get("stream") and \
                    svc.peek(name, field=field).status is not ModelStatus.LOADED:
                return streamed(stream_with_context(_after_load)(
                    svc, handler, body, name, options, args, kwargs), 0)
            try:
                async with svc.use(name, **options) as bound:
                    return await handler(bound, body, *args, **kwargs)
            except ModelChanged:  # unloaded under the preparation (a switch): bind again, once
                async with svc.use(name, **options) as bound:
                    return await handler(bound, body, *args, **kwargs)
        return route
    return decorate


async def _after_load(svc: Service, handler: Handler, body: JSON, name: str | None,
                      options: dict[str, Any], args: tuple[Any, ...],
                      kwargs: dict[str, Any]) -> AsyncIterator[bytes]:
    """A stream's body while its model loads: pings, then the handler's own stream."""
    yield sse.PING
    result: list[Bound | BaseException] = []
    done = trio.Event()
    scope = trio.CancelScope()

    async def bind() -> None:
        with scope:
            try:
                result.append(await svc.bind(name, **options))
            except (ApiError, trio.Cancelled) as exc:
                result.append(exc)
                if isinstance(exc, trio.Cancelled):
                    raise
        done.set()

    svc.registry.spawn(bind)
    bound: Bound | None = None
    try:
        while not done.is_set():
            with trio.move_on_after(svc.settings.queue_ping_interval_s):
                await done.wait()
            if not done.is_set():
                yield sse.PING
        first = result[0]
        if isinstance(first, BaseException):
            yield _error_event(first)
            return
        bound = first
        try:
            response = await handler(bound, body, *args, **kwargs)
        except ApiError as exc:
            yield _error_event(exc)
            return
        bound.release()  # the completion holds its own lease
        async with response.response as chunks:
            async for chunk in chunks:
                yield chunk if isinstance(chunk, bytes) else chunk.encode()
    finally:
        scope.cancel()
        if bound is not None:
            bound.release()
        elif result and not isinstance(result[0], BaseException):
            result[0].release()


def _error_event(exc: BaseException) -> bytes:
    if not isinstance(exc, ApiError):
        return b""
    owner = family()
    return owner.error_event(exc) if owner is not None else sse.event(exc.body())


async def submit_all(m: Bound, requests: list[CompletionRequest]) -> list[Completion]:
    """Submit every request: all of them or, when one is refused, none."""
    completions: list[Completion] = []
    try:
        for req in requests:
            completions.append(await m.submit(req))
    except BaseException:
        for c in completions:
            c.abandon()
        raise
    return completions


async def fan_in(m: Bound, completions: list[Completion], ping_s: float | None
                 ) -> AsyncGenerator[tuple[int, Item]]:
    """Several completions' items as they come, ``(index, item)``: read by tasks of the
    service's nursery (:class:`app.running.FanIn`), ended when this generator ends."""
    from app.running import FanIn

    fan = FanIn(completions, ping_s)
    m.service.registry.spawn(fan.run)
    try:
        async for pair in fan.receive:
            yield pair
    finally:
        fan.close()


async def run_all(m: Bound, requests: list[CompletionRequest]) -> tuple[list[Completion],
                                                                         list[Outcome]]:
    """Submit every request (see :func:`submit_all`), run them together (they decode side by
    side in the slots) and return the outcomes in order. The first failure ends the others
    and is raised."""
    completions = await submit_all(m, requests)
    outcomes: list[Outcome | None] = [None] * len(completions)
    failure: list[ApiError] = []

    async with trio.open_nursery() as nursery:
        async def run(i: int, completion: Completion) -> None:
            try:
                outcomes[i] = await completion.result()
            except ApiError as exc:
                failure.append(exc)
                nursery.cancel_scope.cancel()

        for i, completion in enumerate(completions):
            nursery.start_soon(run, i, completion)
    if failure:
        raise failure[0]
    done = [o for o in outcomes if o is not None]
    if len(done) != len(completions):  # pragma: no cover - every run stores or fails
        raise RuntimeError("a completion ended without an outcome")
    return completions, done
