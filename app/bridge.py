"""The Trio side of the engine: delivery into bounded channels, and stopping.

The engine thread hands each step's events to :class:`TrioOutbox`, which puts
them into each request's bounded memory channel without ever blocking: a full
channel pauses that request's slot, a closed one drops the request.

:class:`Generation` is what a request handler holds while its request runs. It
waits for the next event in short cancel scopes that never span a ``yield`` of
a streaming body, so an abort, a timeout or a shutdown cancels exactly the wait
and the handler ends the response with a final event.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from app.engine.events import Delivery, Event, Job

#: events buffered per request before its slot pauses
CHANNEL_CAPACITY = 64


class TrioOutbox:
    """Implements :class:`app.engine.scheduler.Outbox` for a Trio event loop."""

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token

    def deliver(self, items: Sequence[tuple[Job, Event]]) -> list[Delivery]:
        try:
            return trio.from_thread.run_sync(_deliver_now, items, trio_token=self._token)
        except trio.RunFinishedError:
            return [Delivery.GONE] * len(items)


def _deliver_now(items: Sequence[tuple[Job, Event]]) -> list[Delivery]:
    full: set[int] = set()
    out: list[Delivery] = []
    for job, event in items:
        if job.id in full:
            out.append(Delivery.FULL)
            continue
        channel: trio.MemorySendChannel[Event] = job.sink  # type: ignore[assignment]
        try:
            channel.send_nowait(event)
        except trio.WouldBlock:
            full.add(job.id)
            out.append(Delivery.FULL)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            out.append(Delivery.GONE)
        else:
            out.append(Delivery.SENT)
    return out


class StopReason(enum.Enum):
    ABORTED = "aborted"
    TIMEOUT = "timeout"
    SHUTDOWN = "shutdown"


class Ping:
    """Nothing happened for a ping interval: streams send a keep-alive comment."""


PING = Ping()


@dataclass(eq=False)
class Generation:
    """A running request as seen by its handler."""

    id: int
    events: trio.MemoryReceiveChannel[Event]
    deadline: float = float("inf")
    stop_reason: StopReason | None = None
    _wait: trio.CancelScope | None = field(default=None, repr=False)

    def request_stop(self, reason: StopReason) -> None:
        """Ask the handler to end this request (abort, shutdown). Idempotent."""
        if self.stop_reason is None:
            self.stop_reason = reason
        if self._wait is not None:
            self._wait.cancel(reason=reason.value)

    async def next(self, ping_interval_s: float | None = None) -> Event | Ping | None:
        """The next event, :data:`PING` after a quiet interval, or None once stopped.

        Cancellation from outside (client gone) propagates as usual.
        """
        if self.stop_reason is not None:
            return None
        now = trio.current_time()
        wait_until = self.deadline
        if ping_interval_s is not None:
            wait_until = min(wait_until, now + ping_interval_s)
        with trio.CancelScope(deadline=wait_until) as scope:
            self._wait = scope
            try:
                return await self.events.receive()
            finally:
                self._wait = None
        if self.stop_reason is not None:
            return None
        if trio.current_time() >= self.deadline:
            self.stop_reason = StopReason.TIMEOUT
            return None
        return PING
