"""What every API family shares: the service, JSON bodies, and running a completion.

:func:`run_whole` and :func:`run_stream` drive one prepared completion through
the engine and accumulate it in a :class:`CompletionState`; each API family
only decides the wire shape of what they produce.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Literal

from quart import Response, current_app, request

from app.api.completion_state import CompletionState
from app.bridge import PING, StopReason
from app.engine.events import Done, Failed, Started, Token
from app.errors import JSON, ServerError
from app.service import Prepared, Service
from app.validation import parse_json_body


def service() -> Service:
    return current_app.config["SLUICE_SERVICE"]  # type: ignore[no-any-return]


def json_response(body: JSON | list[Any], status: int = 200,
                  headers: dict[str, str] | None = None) -> Response:
    resp = Response(json.dumps(body, ensure_ascii=False), status=status,
                    content_type="application/json")
    for key, value in (headers or {}).items():
        resp.headers[key] = value
    return resp


async def read_json() -> JSON:
    raw = await request.get_data(cache=False, as_text=False)
    return parse_json_body(raw if isinstance(raw, bytes) else raw.encode())


def new_state(svc: Service, prepared: Prepared, job_id: int) -> CompletionState:
    prompt = prepared.params.prompt
    text = prompt[0] if len(prompt) == 1 and isinstance(prompt[0], str) else ""
    return CompletionState(job_id=job_id, prepared=prepared, model=svc.model,
                           model_name=svc.model_name, prompt_text=text)


@dataclass(frozen=True, slots=True)
class Whole:
    state: CompletionState
    final: JSON  # llama.cpp's final object
    stop_reason: StopReason | None


async def run_whole(svc: Service, prepared: Prepared) -> Whole:
    """Run a completion to its end (or its abort, timeout or shutdown).

    Raises:
        ServerError: the engine failed the request.
    """
    async with svc.generate(prepared) as gen:
        state = new_state(svc, prepared, gen.id)
        while True:
            event = await gen.next()
            if event is None or event is PING:
                break
            state.on_event(event)  # type: ignore[arg-type]
            if isinstance(event, Failed):
                raise ServerError(event.message)
            if isinstance(event, Done):
                break
        return Whole(state, state.final(gen.stop_reason), gen.stop_reason)


@dataclass(frozen=True, slots=True)
class Step:
    """One thing a stream has to say."""

    kind: Literal["ping", "token", "final", "error"]
    data: JSON | None = None  # the native partial / final object, or an error body
    token: Token | None = None
    state: CompletionState | None = None


async def run_stream(svc: Service, prepared: Prepared, job_id: int) -> AsyncGenerator[Step]:
    """The steps of a streamed completion: a ping first (so headers leave at once),
    pings while waiting, one step per token event, then a final or an error step.

    The caller's body generator iterates this; when the client leaves, the
    cancellation ends the generation through :meth:`Service.generate`.
    """
    async with svc.generate(prepared, job_id) as gen:
        state = new_state(svc, prepared, gen.id)
        yield Step("ping")
        ping_s = svc.settings.queue_ping_interval_s
        while True:
            event = await gen.next(ping_s)
            if event is None:
                yield Step("final", state.final(gen.stop_reason), state=state)
                return
            match event:
                case Started():
                    state.on_started(event)
                case Token():
                    yield Step("token", state.on_token(event), token=event, state=state)
                case Done():
                    state.done = event
                    yield Step("final", state.final(), state=state)
                    return
                case Failed(message=message):
                    yield Step("error", ServerError(message).body(), state=state)
                    return
                case _:
                    yield Step("ping")

