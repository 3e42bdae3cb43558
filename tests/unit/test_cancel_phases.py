"""Issue 28's regression guard: a client that leaves is noticed in every phase its request can
be in, and the engine is told, and frees the slot, within one decode step.

The real service and scheduler on the fakes, under a virtual clock: the scheduler is stepped
by a Trio task that counts its steps, ``Engine.cancel`` is wrapped to note the step it is
called in, and the client is a task reading ``Completion.items()`` inside a cancel scope
that the test cancels at the phase it wants. Per phase the test asserts, in steps counted
from the moment the client's scope is cancelled: the engine is told within 1, the slot is
free (or the queued job dropped) within 1 of that, and nothing of the request is decoded
after the step that freed it.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.testing

from app.completion import CompletionRequest, Delta, PromptProgress
from app.engine.sampling import Sampled
from app.service import Service
from app.settings import Settings
from tests.fakes import OFFSET, FakeRuntime, FakeSampler


@dataclass(eq=False)
class Steps:
    """Counts the scheduler's steps and notes the step each ``cancel`` came in."""

    runtime: FakeRuntime
    count: int = 0
    told: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        engine = self.runtime.engine
        cancel = engine.cancel

        def noted(job_id: int) -> None:
            self.told.setdefault(job_id, self.count)
            cancel(job_id)

        engine.cancel = noted  # type: ignore[method-assign]
        self.runtime.outbox.on_gone = noted

    async def drive(self) -> None:
        while True:
            self.runtime.engine.run_once()
            self.count += 1
            await trio.sleep(0.01)

    async def until(self, predicate: Callable[[], bool], limit: int = 500) -> int:
        """Wait for ``predicate``; the number of steps it took."""
        start = self.count
        while not predicate():
            assert self.count - start < limit, "condition not reached"
            await trio.sleep(0.001)
        return self.count - start


async def inline(work: Callable[[], Any]) -> Any:
    return work()


@asynccontextmanager
async def serving(runtime: FakeRuntime, *, threads: bool = False
                  ) -> AsyncIterator[tuple[Service, Steps]]:
    svc = (Service(Settings(), runtime) if threads
           else Service(Settings(), runtime, offload=inline))
    steps = Steps(runtime)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(steps.drive)
        await nursery.start(svc.registry.run)
        yield svc, steps
        nursery.cancel_scope.cancel(reason="test over")


def endless(**kwargs: Any) -> FakeRuntime:
    return FakeRuntime(sampler_factory=lambda p, g: FakeSampler(length=100_000),
                       slot_ctx=4096, **kwargs)


def rows_of(runtime: FakeRuntime, seq: int) -> int:
    """Rows decoded for sequence (slot) ``seq`` so far."""
    return sum(1 for batch in runtime.context.batches for row in batch if row[2] == seq)


@dataclass(eq=False)
class Client:
    """A task reading a completion's items until its scope is cancelled (the client leaves)."""

    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    deltas: int = 0
    progress: int = 0
    left: bool = False
    id: int = -1  # the completion's id, once submitted

    async def read(self, svc: Service, request: CompletionRequest, ping_s: float | None = None
                   ) -> None:
        with self.scope:
            completion = await svc.submit(request)
            self.id = completion.id
            async for item in completion.items(ping_s):
                if isinstance(item, Delta):
                    self.deltas += 1
                elif isinstance(item, PromptProgress):
                    self.progress += 1
        self.left = True


async def leave_and_measure(steps: Steps, client: Client, freed: Callable[[], bool]
                            ) -> tuple[int, int]:
    """Cancel the client's scope; (steps until the engine is told, steps from then to free)."""
    job_id = client.id
    assert job_id >= 0
    at = steps.count
    client.scope.cancel()
    await steps.until(lambda: job_id in steps.told)
    told = steps.told[job_id] - at
    free = await steps.until(freed)
    return told, free


def slot_free(runtime: FakeRuntime) -> Callable[[], bool]:
    return lambda: not any(s.is_processing for s in runtime.engine.slot_infos())


async def test_decoding_streamed(autojump_clock: trio.testing.MockClock) -> None:
    rt = endless(n_slots=1)
    async with serving(rt) as (svc, steps):
        client = Client()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.read, svc, CompletionRequest(prompt=("hi",)))
            await steps.until(lambda: client.deltas >= 5)
            told, free = await leave_and_measure(steps, client, slot_free(rt))
        decoded = rows_of(rt, 0)
        for _ in range(5):
            await trio.sleep(0.01)
    assert told <= 1, "steps from the client leaving to the engine being told"
    assert free <= 1, "steps from the engine being told to the slot being free"
    assert rows_of(rt, 0) == decoded  # nothing more of it after the step that freed it
    assert client.left
    assert rt.samplers[0].closed


async def test_reading_a_long_prompt_in_chunks(autojump_clock: trio.testing.MockClock) -> None:
    rt = endless(n_slots=1)  # the fake context's batch holds 8 rows
    assert rt.context.n_batch == 8
    async with serving(rt) as (svc, steps):
        client = Client()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.read, svc,
                               CompletionRequest(prompt=("x" * 400,), return_progress=True))
            await steps.until(lambda: rows_of(rt, 0) >= 24)  # three chunks of 8 read
            told, free = await leave_and_measure(steps, client, slot_free(rt))
        read = rows_of(rt, 0)
        for _ in range(5):
            await trio.sleep(0.01)
    assert told <= 1, "steps from the client leaving to the engine being told"
    assert free <= 1, "steps from the engine being told to the slot being free"
    assert read < 8 * 6  # stopped within a chunk or two of the notice, not after 50 chunks
    assert rows_of(rt, 0) == read
    assert client.deltas == 0


async def test_queued_behind_a_busy_slot(autojump_clock: trio.testing.MockClock) -> None:
    rt = endless(n_slots=1)
    async with serving(rt) as (svc, steps):
        blocker, queued = Client(), Client()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(blocker.read, svc, CompletionRequest(prompt=("a",)))
            await steps.until(lambda: blocker.deltas >= 2)
            nursery.start_soon(queued.read, svc, CompletionRequest(prompt=("Q",)), 0.05)
            await trio.sleep(0.3)  # waiting, pinged
            counters = rt.engine.counters
            told, free = await leave_and_measure(
                steps, queued, lambda: counters.requests_dropped_queued_total == 1)
            assert rt.engine.slot_infos()[0].is_processing  # the blocker goes on
            blocker.scope.cancel()
    assert told <= 1, "steps from the client leaving to the engine being told"
    assert free <= 1, "steps from the engine being told to the slot being free"
    q_token = ord("Q") + OFFSET
    assert all(row[0] != q_token for batch in rt.context.batches for row in batch)
    assert counters.requests_started_total == 1


class BlockedGrammar(FakeSampler):
    """Its 3rd step goes to a grammar worker, where :meth:`resolve` waits for ``release``."""

    def __init__(self) -> None:
        super().__init__(length=100_000)
        self.resolving = threading.Event()
        self.release = threading.Event()
        self.used_after_close = False

    def sample(self, ctx: Any, row: int) -> Sampled | None:
        if self.n == 2:
            self.n += 1
            return None
        return super().sample(ctx, row)

    def resolve(self) -> Sampled:
        self.resolving.set()
        assert self.release.wait(10)
        self.used_after_close = self.closed
        return Sampled(token=500)


async def test_waiting_for_a_grammar_worker(autojump_clock: trio.testing.MockClock) -> None:
    slow = BlockedGrammar()
    rt = FakeRuntime(n_slots=1, slot_ctx=4096, sampler_factory=lambda p, g: slow)
    async with serving(rt) as (svc, steps):
        client = Client()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.read, svc, CompletionRequest(prompt=("hi",)))
            await steps.until(slow.resolving.is_set)
            told, free = await leave_and_measure(steps, client, slot_free(rt))
        assert not slow.closed  # the worker still holds it: freed only when it is done
        slow.release.set()
        await steps.until(lambda: slow.closed)
    assert told <= 1, "steps from the client leaving to the engine being told"
    assert free <= 1, "steps from the engine being told to the slot being free"
    assert not slow.used_after_close


async def test_preparing_on_a_worker(autojump_clock: trio.testing.MockClock) -> None:
    """A client that leaves while its grammar is built on a worker costs the rest of that
    preparation (the sampler it builds is C memory: freed only once the worker is done with
    it, never abandoned to a thread still writing it), and nothing after: the request never
    reaches the engine, and the sampler is freed when the worker returns."""
    started, release = threading.Event(), threading.Event()

    def slow(params: Any, grammar: str | None) -> FakeSampler:
        started.set()
        assert release.wait(10)
        return FakeSampler()

    rt = FakeRuntime(n_slots=1, sampler_factory=slow)
    async with serving(rt, threads=True) as (svc, steps):
        client = Client()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.read, svc, CompletionRequest(prompt=("hi",)))
            await steps.until(started.is_set)
            client.scope.cancel()
            await trio.sleep(0.5)
            release.set()
            await steps.until(lambda: client.left)
        await steps.until(lambda: bool(rt.samplers) and rt.samplers[0].closed)
    assert rt.engine.counters.requests_total == 0
    assert client.id < 0  # submit never returned: nothing was handed to the engine
