"""The one loop over a request's items: a family says how each item is written, this module
runs the stream.

A family's stream format is a :class:`StreamWire`, sans-I/O: typed items in, bytes out. The
driver owns what every stream must get right the same way: the opening bytes before any item,
one completion or several fanned in (``n`` > 1), pings (passed on for one completion,
throttled to one per interval across several), the end after the last completion's final item
or at the first failure, and closing its source whatever ends the stream (a client that
leaves, a cancelled scope).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import TYPE_CHECKING, Protocol

import trio

from app import sse
from app.api.common import fan_in
from app.completion import Delta, Failure, Final, Item, Outcome, Ping, PromptProgress

if TYPE_CHECKING:
    from app.bound import Bound
    from app.running import Completion


class StreamWire(Protocol):
    """How one family writes a stream. Each method returns the chunks to send, maybe none.
    ``finished`` set by a method ends the stream after its chunks (llm-api's stop regex): the
    completion is then ended as a client that left would be."""

    finished: bool

    def begin(self) -> Sequence[bytes]:
        """Before any item (a first byte, so headers leave while the request queues)."""
        ...

    def ping(self) -> Sequence[bytes]:
        """A keep-alive while nothing else is sent (an SSE comment; nothing for NDJSON)."""
        ...

    def delta(self, index: int, item: Delta) -> Sequence[bytes]: ...

    def progress(self, index: int, item: PromptProgress) -> Sequence[bytes]: ...

    async def final(self, index: int, outcome: Outcome) -> Sequence[bytes]:
        """Completion ``index`` is done (async: a family may check tool calls in a worker)."""
        ...

    def failure(self, index: int, message: str) -> Sequence[bytes]:
        """Completion ``index`` failed: the stream's last chunks."""
        ...

    def end(self) -> Sequence[bytes]:
        """After every completion's final chunks (OpenAI's ``[DONE]``)."""
        ...


class Wire:
    """A :class:`StreamWire` that writes nothing: families override what their format has."""

    finished = False

    def begin(self) -> Sequence[bytes]:
        return ()

    def ping(self) -> Sequence[bytes]:
        return ()

    def delta(self, index: int, item: Delta) -> Sequence[bytes]:
        return ()

    def progress(self, index: int, item: PromptProgress) -> Sequence[bytes]:
        return ()

    async def final(self, index: int, outcome: Outcome) -> Sequence[bytes]:
        return ()

    def failure(self, index: int, message: str) -> Sequence[bytes]:
        return ()

    def end(self) -> Sequence[bytes]:
        return ()


class SseWire(Wire):
    """A Server-Sent Events stream: a ``: ping`` comment keeps it alive while quiet."""

    def ping(self) -> Sequence[bytes]:
        return [sse.PING]


async def _single(completion: Completion, ping_s: float | None
                  ) -> AsyncGenerator[tuple[int, Item]]:
    async with aclosing(completion.items(ping_s)) as items:
        async for item in items:
            yield 0, item


async def drive(m: Bound, completions: Sequence[Completion], wire: StreamWire,
                ping_s: float | None) -> AsyncGenerator[bytes]:
    """The bytes of one stream over ``completions`` (one, or several fanned in)."""
    for chunk in wire.begin():
        yield chunk
    many = len(completions) > 1
    source = fan_in(m, list(completions), ping_s) if many else _single(completions[0], ping_s)
    quiet_since = trio.current_time()
    finished = 0
    async with aclosing(source) as items:
        async for i, item in items:
            chunks: Sequence[bytes]
            match item:
                case Ping():
                    if many and ping_s is not None and \
                            trio.current_time() - quiet_since < ping_s:
                        continue
                    chunks = wire.ping()
                case Delta():
                    chunks = wire.delta(i, item)
                case PromptProgress():
                    chunks = wire.progress(i, item)
                case Final(outcome=outcome):
                    chunks = await wire.final(i, outcome)
                    finished += 1
                case Failure(message=message):
                    for chunk in wire.failure(i, message):
                        yield chunk
                    return
                case _:  # pragma: no cover - every item kind is matched above
                    chunks = ()
            for chunk in chunks:
                yield chunk
            quiet_since = trio.current_time()
            if finished == len(completions) or wire.finished:
                break
    for chunk in wire.end():
        yield chunk
