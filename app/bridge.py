"""The Trio side of the engine: delivery into bounded channels, and stopping.

The engine thread posts each step's events with :class:`TrioOutbox`, which
schedules their delivery on the Trio loop without waiting for it. Each request's
memory channel holds ``CHANNEL_CAPACITY`` events and the engine never has more
than that in flight for one request (it pauses the request's slot instead), so
a delivery never blocks; a receiver that is gone is reported to the engine,
which frees the slot.

:class:`Generation` is what a request handler holds while its request runs. It
waits for the next event in short cancel scopes that never span a ``yield`` of
a streaming body, so an abort, a timeout or a shutdown cancels exactly the wait
and the handler ends the response with a final event.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import trio

from app.engine.events import CHANNEL_CAPACITY, Event, Job

__all__ = ["CHANNEL_CAPACITY", "PING", "Generation", "StopReason", "TrioOutbox"]

log = logging.getLogger(__name__)


class TrioOutbox:
    """Implements :class:`app.engine.scheduler.Outbox` for a Trio event loop."""

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token
        self.on_gone: Callable[[int], None] = lambda job_id: None

    def post(self, items: Sequence[tuple[Job, Event]]) -> None:
        try:
            self._token.run_sync_soon(self._deliver, items)
        except trio.RunFinishedError:
            for job_id in {job.id for job, _ in items}:
                self.on_gone(job_id)

    def _deliver(self, items: Sequence[tuple[Job, Event]]) -> None:
        gone: set[int] = set()
        for job, event in items:
            if job.id in gone:
                continue
            channel: trio.MemorySendChannel[Event] = job.sink  # type: ignore[assignment]
            try:
                channel.send_nowait(event)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                gone.add(job.id)
                self.on_gone(job.id)
            except trio.WouldBlock:  # the engine's in-flight bound makes this unreachable
                log.error("channel of request %d overflowed; ending it", job.id)
                gone.add(job.id)
                self.on_gone(job.id)


class StopReason(enum.Enum):
    ABORTED = "aborted"
    TIMEOUT = "timeout"
    SHUTDOWN = "shutdown"
    MODEL_CHANGED = "model_changed"


class Ping:
    """Nothing happened for a ping interval: streams send a keep-alive comment."""


PING = Ping()


@dataclass(eq=False)
class Generation:
    """A running request as seen by its handler."""

    id: int
    events: trio.MemoryReceiveChannel[Event]
    job: Job | None = None  # counts what was consumed, for the engine's flow control
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
                event = await self.events.receive()
            finally:
                self._wait = None
            if self.job is not None:
                self.job.consumed += 1
            return event
        if self.stop_reason is not None:
            return None
        if trio.current_time() >= self.deadline:
            self.stop_reason = StopReason.TIMEOUT
            return None
        return PING
