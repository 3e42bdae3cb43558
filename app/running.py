"""A submitted completion as its handler holds it: engine events in, typed items out.

:meth:`app.service.Service.submit` returns a :class:`Completion` once every
fallible step is done; the handler then builds its response and the response
body reads :meth:`Completion.items` (or the handler awaits
:meth:`Completion.result`). The request reaches the engine only when its items
are first read, so a response that is never sent costs no slot; if the
completion is dropped unread, its sampler is freed when it is collected.

Waiting for the next event happens in a short cancel scope that never spans a
``yield``: an abort, a timeout or a shutdown cancels exactly that wait and the
stream ends with a :class:`~app.completion.Final` item marked with the
interruption. A client that leaves cancels the whole body as usual; leaving the
generator removes the request from the engine at its next step.
"""

from __future__ import annotations

import contextlib
import logging
import time
import weakref
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field

import trio

from app.completion import (
    PING,
    Delta,
    Failure,
    Final,
    Interruption,
    Item,
    Outcome,
    Ping,
    PromptProgress,
    Reported,
    SchemaVerdict,
    StopType,
    Timings,
    TokenLogprobs,
    TokenProb,
)
from app.engine.events import (
    CHANNEL_CAPACITY,
    Done,
    Event,
    Failed,
    Job,
    Progress,
    SamplerLike,
    Started,
    Token,
    TokenInfo,
)
from app.errors import ServerError
from app.prepare import Prepared
from app.runtime import ModelLike, RuntimeLike
from app.tools import answer_part
from grammar import validate

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Ticket:
    """The part of a completion its finalizer needs (it must not refer to the completion)."""

    sampler: SamplerLike
    on_end: Callable[[], None]
    handed: bool = False  # the engine owns the sampler now

    def release(self) -> None:
        if not self.handed:
            self.sampler.close()
        self.on_end()


class Completion:
    """One prepared, registered completion. Read its items once."""

    def __init__(self, *, id: int, prepared: Prepared, model_name: str, deadline: float,
                 current: Callable[[], RuntimeLike | None], on_end: Callable[[int], None]) -> None:
        self.id = id
        self.prepared = prepared
        self.model_name = model_name
        self.deadline = deadline
        self.stop_reason: Interruption | None = None
        self._current = current
        self._wait: trio.CancelScope | None = None
        self._used = False
        self._handed_out_at: float | None = None  # an item is with the consumer since then
        self.abandoned = False
        self._ticket = _Ticket(prepared.sampler, lambda: on_end(id))
        self._release = weakref.finalize(self, self._ticket.release)

    @property
    def n_prompt(self) -> int:
        """Prompt tokens, after tokenization."""
        return len(self.prepared.generation.prompt)

    def request_stop(self, reason: Interruption) -> None:
        """End this completion from outside (abort, shutdown, model change). Idempotent."""
        if self.stop_reason is None:
            self.stop_reason = reason
        if self._wait is not None:
            self._wait.cancel(reason=reason.value)

    def stalled(self, now: float, send_timeout_s: float) -> bool:
        """Whether the consumer has held an item (a send to the client) for too long: over
        the send timeout, or past the request's deadline (``--timeout`` holds even while a
        send is blocked)."""
        since = self._handed_out_at
        return (not self.abandoned and since is not None
                and (now - since > send_timeout_s or now >= self.deadline))

    def abandon(self) -> None:
        """Give up on a consumer that stopped reading: free the slot and the model now.

        The generator, if it ever resumes, ends at once without touching the model.
        """
        self.abandoned = True
        self.prepared.runtime.engine.cancel(self.id)
        self._release()

    async def result(self) -> Outcome:
        """Run to the end (or the interruption) and return the outcome.

        Raises:
            ServerError: the engine failed the request.
        """
        async with aclosing(self.items()) as items:
            async for item in items:
                match item:
                    case Final(outcome=outcome):
                        return outcome
                    case Failure(message=message):
                        raise ServerError(message)
        raise ServerError("the completion ended without a result")  # pragma: no cover

    async def items(self, ping_interval_s: float | None = None) -> AsyncGenerator[Item]:
        """The stream: :data:`~app.completion.PING` while quiet, deltas, then one Final or Failure.

        Leaving the generator early (client gone, renderer done) ends the request. Nothing
        raises out of it but cancellation: an exception anywhere in the request's own work
        (the engine's events, the outcome, validation) ends it as a :class:`Failure`.
        """
        async with aclosing(self._items(ping_interval_s)) as inner:
            try:
                async for item in inner:
                    yield item
            except Exception as exc:  # one request's failure, never the server's
                log.exception("request %d failed", self.id)
                yield Failure(f"internal error: {type(exc).__name__}")

    async def _items(self, ping_interval_s: float | None) -> AsyncGenerator[Item]:
        if self._used:
            raise RuntimeError("the items of a completion can be read once")
        self._used = True
        runtime = self.prepared.runtime
        builder = _Builder(self, runtime.model)
        submitted = False
        try:
            if self.stop_reason is None and self._current() is not runtime:
                self.stop_reason = Interruption.MODEL_CHANGED
            if self.stop_reason is not None:
                yield Final(await builder.outcome(self.stop_reason))
                return
            await trio.lowlevel.checkpoint_if_cancelled()  # a client gone already: no job
            send, receive = trio.open_memory_channel[Event](CHANNEL_CAPACITY)
            job = Job(id=self.id, request=self.prepared.generation, sampler=self.prepared.sampler,
                      sink=send)
            self._ticket.handed = True
            runtime.engine.submit(job)
            submitted = True
            if not runtime.engine.alive:  # it died since submit() looked
                yield Failure("the engine is not running")
                return
            with send, receive:
                while not self.abandoned:
                    event = await self._next(receive, job, ping_interval_s)
                    item: Item | None = None
                    last = True
                    match event:
                        case None:
                            item = Final(await builder.outcome(self.stop_reason))
                        case Ping():
                            item, last = PING, False
                        case Started():
                            builder.id_slot, builder.tokens_cached = event.id_slot, event.tokens_cached
                            builder.t_started = time.perf_counter()
                            last = False
                        case Progress():
                            item = PromptProgress(event.total, event.cache, event.processed,
                                                  event.time_ms)
                            last = False
                        case Token():
                            item, last = builder.delta(event), False
                        case Done():
                            builder.done = event
                            item = Final(await builder.outcome(None))
                        case Failed(message=message):
                            item = Failure(message)
                    if item is not None:
                        self._handed_out_at = trio.current_time()
                        yield item
                        self._handed_out_at = None
                    if last:
                        return
        finally:
            if submitted:
                runtime.engine.cancel(self.id)
            self._release()

    async def _next(self, receive: trio.MemoryReceiveChannel[Event], job: Job,
                    ping_interval_s: float | None) -> Event | Ping | None:
        """The next event, PING after a quiet interval, or None once stopped or timed out."""
        if self.stop_reason is not None:
            return None
        wait_until = self.deadline
        if ping_interval_s is not None:
            wait_until = min(wait_until, trio.current_time() + ping_interval_s)
        with trio.CancelScope(deadline=wait_until) as scope:
            self._wait = scope
            try:
                event = await receive.receive()
            finally:
                self._wait = None
            job.consumed += 1
            return event
        if self.stop_reason is not None:
            return None
        if trio.current_time() >= self.deadline:
            self.stop_reason = Interruption.TIMEOUT
            return None
        return PING


@dataclass(eq=False)
class _Builder:
    """Accumulates one completion's events into deltas and its outcome."""

    completion: Completion
    model: ModelLike
    id_slot: int = -1
    tokens_cached: int = 0
    text: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    done: Done | None = None
    t_started: float = 0.0  # when the slot was taken, and the first token came (perf_counter)
    t_first: float = 0.0

    def _prob(self, token: int, logprob: float) -> TokenProb:
        return TokenProb(token, self.model.piece(token), logprob)

    def _logprobs(self, info: TokenInfo) -> TokenLogprobs:
        chosen = self._prob(info.token, info.logprob if info.logprob is not None else 0.0)
        return TokenLogprobs(chosen, tuple(self._prob(p.token, p.logprob) for p in info.top))

    def delta(self, event: Token) -> Delta:
        self.text.append(event.text)
        ids = tuple(t.token for t in event.tokens)
        self.ids.extend(ids)
        probs: tuple[TokenLogprobs, ...] = ()
        if self.completion.prepared.request.sampling.n_probs > 0:
            probs = tuple(self._logprobs(t) for t in event.tokens)
            self.logprobs.extend(probs)
        timings = None
        request = self.completion.prepared.request
        if request.timings_per_token:  # measured here, as the engine's events arrive
            now = time.perf_counter()
            self.t_first = self.t_first or now
            timings = Timings(
                prompt_n=len(self.completion.prepared.generation.prompt) - self.tokens_cached,
                prompt_ms=(self.t_first - self.t_started) * 1000.0, predicted_n=len(self.ids),
                predicted_ms=(now - self.t_first) * 1000.0, cache_n=self.tokens_cached)
        return Delta(event.text, ids, probs, self.id_slot, len(self.ids), timings)

    async def outcome(self, interruption: Interruption | None) -> Outcome:
        prepared = self.completion.prepared
        done = self.done
        text = "".join(self.text)
        verdict = None
        if prepared.schema is not None:
            # user-written patterns run in jsonschema: keep them off the event loop
            answer = answer_part(text, opened=prepared.request.thinking == "open") \
                if prepared.request.thinking else text
            result = await trio.to_thread.run_sync(validate, answer, prepared.schema)
            verdict = SchemaVerdict(result.valid, result.errors)
        return Outcome(
            id=self.completion.id, text=text, token_ids=tuple(self.ids),
            logprobs=tuple(self.logprobs),
            stop=done.stop_type if done is not None else StopType.NONE,
            stopping_word=done.stopping_word if done is not None else "",
            interruption=interruption,
            truncated=bool(done and done.truncated), id_slot=self.id_slot,
            tokens_cached=self.tokens_cached,
            timings=Timings(prompt_n=done.prompt_n if done else 0,
                            prompt_ms=done.prompt_ms if done else 0.0,
                            predicted_n=len(self.ids),
                            predicted_ms=done.predicted_ms if done else 0.0,
                            cache_n=self.tokens_cached),
            reported=Reported(request=prepared.request, grammar=prepared.grammar,
                              n_prompt=len(prepared.generation.prompt),
                              model=self.completion.model_name),
            schema=verdict,
            grammar_stats=((done.grammar_rejections, done.grammar_full_passes,
                            done.grammar_narrowed_passes)
                           if done is not None and prepared.grammar is not None else None))


class FanIn:
    """Several completions' items as one stream of ``(index, item)``, in arrival order.

    The completions are read by tasks of a long-lived nursery (:meth:`run`, spawned by the
    service), never inside the consumer's generator: a stream body that yields has no nursery
    or cancel scope of its own to leak (PEP 789). :meth:`close` ends them all; a consumer that
    stops reading stalls them like a slow client stalls one stream (the send timeout applies).
    """

    def __init__(self, completions: list[Completion], ping_interval_s: float | None) -> None:
        self.completions = completions
        self._ping_s = ping_interval_s
        self._send, self.receive = trio.open_memory_channel[tuple[int, Item]](len(completions))
        self._scope = trio.CancelScope()

    async def run(self) -> None:
        with self._scope:
            async with self._send, trio.open_nursery() as nursery:
                for i, completion in enumerate(self.completions):
                    nursery.start_soon(self._pump, i, completion, self._send.clone())
        for completion in self.completions:  # ended early: what never ran is freed now
            completion.abandon()

    async def _pump(self, i: int, completion: Completion,
                    send: trio.MemorySendChannel[tuple[int, Item]]) -> None:
        # items() turns a failure into a Failure item; a consumer that left (its end of the
        # channel closed) ends this pump, never the nursery it runs in
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            async with send, aclosing(completion.items(self._ping_s)) as items:
                async for item in items:
                    await send.send((i, item))

    def close(self) -> None:
        self._scope.cancel(reason="the stream ended")
