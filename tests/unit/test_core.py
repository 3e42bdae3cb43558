"""The completion core and the service in process: the real scheduler on fakes, virtual time.

No model, no sockets: :mod:`tests.fakes` steps the scheduler from a Trio task,
so these run under ``autojump_clock``.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from app.completion import (
    CompletionRequest,
    Delta,
    Failure,
    Final,
    GrammarConstraint,
    Interruption,
    Item,
    Outcome,
    Ping,
    StopType,
)
from app.engine.sampling import SamplerInitError
from app.errors import Conflict, ContextOverflow, InvalidRequest, Overloaded, Unavailable
from app.running import Completion
from app.service import Service
from app.settings import Settings
from tests.fakes import OFFSET, FakeRuntime, FakeSampler, drive, text_script


async def inline(work: Callable[[], Any]) -> Any:
    """Prepare on the Trio thread: a worker thread would let virtual time jump meanwhile."""
    return work()


@asynccontextmanager
async def running(runtime: FakeRuntime | None = None, *, threads: bool = False, **settings: Any
                  ) -> AsyncIterator[tuple[Service, FakeRuntime]]:
    runtime = runtime or FakeRuntime()
    svc = (Service(Settings(**settings), runtime) if threads
           else Service(Settings(**settings), runtime, offload=inline))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(drive, runtime.engine)
        await nursery.start(svc.registry.run)  # loads and unloads; tests reap stalled ones
        yield svc, runtime
        nursery.cancel_scope.cancel(reason="test over")


async def collect(completion: Completion, ping_s: float | None = None) -> list[Item]:
    return [item async for item in completion.items(ping_s)]


def request(prompt: str = "hi", **kwargs: Any) -> CompletionRequest:
    return CompletionRequest(prompt=(prompt,), **kwargs)


def final(items: list[Item]) -> Outcome:
    last = items[-1]
    assert isinstance(last, Final)
    return last.outcome


# --- ordering ------------------------------------------------------------------------------------
async def test_items_are_deltas_in_order_then_one_final(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as (svc, _rt):
        completion = await svc.submit(request("abc"))
        items = await collect(completion)
    deltas = [i for i in items if isinstance(i, Delta)]
    assert "".join(d.text for d in deltas) == "hello world"
    assert [d.n_predicted for d in deltas] == list(range(1, len(deltas) + 1))
    assert all(not isinstance(i, Final) for i in items[:-1])
    outcome = final(items)
    assert outcome.text == "hello world"
    assert outcome.stop is StopType.EOS
    assert outcome.interruption is None
    assert outcome.n_prompt == 4  # BOS + 3 characters
    assert outcome.token_ids[:len("hello world")] == tuple(text_script("hello world"))
    assert outcome.reported.request.sampling.seed >= 0  # resolved before the engine


async def test_stop_string_and_limit_are_typed(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as (svc, _rt):
        word = final(await collect(await svc.submit(request(stops=(" wor",)))))
        limit = final(await collect(await svc.submit(request(n_predict=3))))
    assert (word.text, word.stop, word.stopping_word) == ("hello", StopType.WORD, " wor")
    assert (limit.text, limit.stop) == ("hel", StopType.LIMIT)


async def test_quiet_stream_pings(autojump_clock: trio.testing.MockClock) -> None:
    rt = FakeRuntime(n_slots=1, sampler_factory=lambda p, g: FakeSampler(length=10_000))
    async with running(rt) as (svc, _rt):
        blocker = await svc.submit(request())
        waiting = await svc.submit(request())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, blocker)
            await trio.sleep(0.1)
            items: list[Item] = []
            async for item in waiting.items(ping_interval_s=1.0):
                items.append(item)
                if len(items) == 2:
                    break
            assert all(isinstance(i, Ping) for i in items)  # queued behind the blocker
            svc.stop_all()


# --- abnormal endings ----------------------------------------------------------------------------
async def test_abort_timeout_and_shutdown_end_with_a_marked_final(
        autojump_clock: trio.testing.MockClock) -> None:
    rt = FakeRuntime(sampler_factory=lambda p, g: FakeSampler(length=100_000), slot_ctx=4096)
    async with running(rt, request_timeout_s=2.0) as (svc, _rt):
        aborted = await svc.submit(request())
        timed_out = await svc.submit(request())
        async with trio.open_nursery() as nursery:
            results: dict[str, list[Item]] = {}

            async def read(name: str, completion: Completion) -> None:
                results[name] = await collect(completion)

            nursery.start_soon(read, "aborted", aborted)
            nursery.start_soon(read, "timeout", timed_out)
            await trio.sleep(1.0)
            assert svc.abort(aborted.id)
        shut = await svc.submit(request())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read, "shutdown", shut)
            await trio.sleep(0.5)
            svc.stop_all()
    assert final(results["aborted"]).interruption is Interruption.ABORTED
    assert final(results["timeout"]).interruption is Interruption.TIMEOUT
    assert final(results["shutdown"]).interruption is Interruption.SHUTDOWN
    for outcome in (final(results[k]) for k in results):
        assert outcome.stop is StopType.NONE
        assert 0 < outcome.n_predicted < 100_000
    assert not svc.abort(aborted.id)  # finished ids are gone


async def test_model_switch_ends_running_requests_marked(autojump_clock: trio.testing.MockClock) -> None:
    rt = FakeRuntime(sampler_factory=lambda p, g: FakeSampler(length=100_000))
    async with running(rt) as (svc, _rt):
        completion = await svc.submit(request())
        unread = await svc.submit(request())  # submitted, its response not sent yet
        async with trio.open_nursery() as nursery:
            out: list[Item] = []

            async def read() -> None:
                out.extend(await collect(completion))

            nursery.start_soon(read)
            await trio.sleep(0.5)
            nursery.start_soon(svc.unload)
            await trio.sleep(0.5)
            assert not rt.closed  # the unread completion still holds the model
            # read now, it ends at once, marked too, and lets the unload go on
            assert final(await collect(unread)).interruption is Interruption.MODEL_CHANGED
        assert final(out).interruption is Interruption.MODEL_CHANGED
        assert rt.closed
        with pytest.raises(Unavailable):
            await svc.submit(request())


async def test_unload_refuses_while_the_model_is_in_use(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as (svc, rt):
        svc.drain_s = 0.2
        with svc.lease():  # a long tokenization, say
            with pytest.raises(Conflict, match="still in use"):
                await svc.unload()
            assert svc.runtime is rt
            assert not rt.closed
            # the model still serves
            assert final(await collect(await svc.submit(request()))).text == "hello world"
        await svc.unload()
        assert rt.closed


async def test_admission_limit_is_a_503_with_retry_after(autojump_clock: trio.testing.MockClock) -> None:
    async with running(FakeRuntime(n_slots=1), max_queue=2) as (svc, _rt):
        held = [await svc.submit(request()) for _ in range(3)]  # 1 slot + 2 waiting
        with pytest.raises(Overloaded) as refused:
            await svc.submit(request())
        assert refused.value.status == 503
        assert refused.value.headers == {"Retry-After": "1"}
        del held
        gc.collect()
        await svc.submit(request())  # room again


# --- cancellation -------------------------------------------------------------------------------
async def test_cancelled_queued_request_never_reaches_a_slot(
        autojump_clock: trio.testing.MockClock) -> None:
    rt = FakeRuntime(n_slots=1, sampler_factory=lambda p, g: FakeSampler(length=100_000))
    async with running(rt) as (svc, _rt):
        blocker = await svc.submit(request("a"))
        queued = await svc.submit(request("Q"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, blocker)
            await trio.sleep(0.1)  # the blocker holds the only slot
            with trio.move_on_after(1.0):  # the client of `queued` leaves while it waits
                await collect(queued, ping_s=0.2)
            await trio.sleep(0.5)
            counters = rt.engine.counters
            assert counters.requests_dropped_queued_total == 1
            assert counters.requests_started_total == 1
            svc.stop_all()
    q_token = ord("Q") + OFFSET
    assert all(row[0] != q_token for batch in rt.context.batches for row in batch)
    assert rt.samplers[1].closed


async def test_a_completion_dropped_unread_frees_its_sampler_and_registration(
        autojump_clock: trio.testing.MockClock) -> None:
    async with running() as (svc, rt):
        completion = await svc.submit(request())
        job_id = completion.id
        assert svc.running(job_id) is completion
        del completion
        gc.collect()
        assert svc.running(job_id) is None
        assert rt.samplers[0].closed
        assert rt.engine.counters.requests_total == 0  # it never reached the engine
        await svc.unload()  # nothing left to wait for


# --- errors before the first token --------------------------------------------------------------
def _refuse(params: Any, grammar: str | None) -> Any:
    raise SamplerInitError("llama.cpp refused the grammar")


async def test_errors_knowable_before_the_first_token_come_from_submit(
        autojump_clock: trio.testing.MockClock) -> None:
    async with running(FakeRuntime(sampler_factory=_refuse, slot_ctx=16)) as (svc, rt):
        with pytest.raises(InvalidRequest) as refused:
            await svc.submit(request(constraint=GrammarConstraint('root ::= "a"')))
        assert refused.value.param == "grammar"
        with pytest.raises(InvalidRequest) as bad_grammar:
            await svc.submit(request(constraint=GrammarConstraint("root ::= ")))
        assert bad_grammar.value.param == "grammar"
        with pytest.raises(ContextOverflow):
            await svc.submit(request("x" * 40))
        with pytest.raises(InvalidRequest, match="id_slot"):
            await svc.submit(request(id_slot=5))
        with pytest.raises(InvalidRequest, match="logit_bias"):
            await svc.submit(request(logit_bias=((-3, 1.0),)))
        assert rt.engine.counters.requests_total == 0
        svc.begin_shutdown()
        with pytest.raises(Unavailable, match="shutting down"):
            await svc.submit(request())


async def test_a_switch_during_preparation_is_a_503_not_a_stream(
        autojump_clock: trio.testing.MockClock) -> None:
    started = trio.Event()
    release = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def slow(params: Any, grammar: str | None) -> Any:
        trio.from_thread.run_sync(started.set, trio_token=token)
        trio.from_thread.run(release.wait, trio_token=token)
        return FakeSampler()

    rt = FakeRuntime(sampler_factory=slow)
    async with running(rt, threads=True) as (svc, _rt):
        async with trio.open_nursery() as nursery:
            errors: list[BaseException] = []

            async def submit() -> None:
                try:
                    await svc.submit(request())
                except Unavailable as exc:
                    errors.append(exc)

            nursery.start_soon(submit)
            await started.wait()
            nursery.start_soon(svc.unload)
            await trio.sleep(0.1)
            assert not rt.closed  # the unload waits for the preparation
            release.set()
        assert len(errors) == 1
        assert "model changed" in str(errors[0])
        assert rt.closed
        assert rt.samplers[0].closed


async def test_no_model_is_a_503(autojump_clock: trio.testing.MockClock) -> None:
    svc = Service(Settings(), None)
    with pytest.raises(Unavailable, match="no model"):
        await svc.submit(request())


async def test_engine_failure_after_start_is_a_failure_item(
        autojump_clock: trio.testing.MockClock) -> None:
    rt = FakeRuntime(sampler_factory=lambda p, g: FakeSampler(length=100_000))
    async with running(rt) as (svc, _rt):
        completion = await svc.submit(request())
        decode: Callable[[], int] = rt.context.decode
        calls = 0

        def failing() -> int:
            nonlocal calls
            calls += 1
            return 1 if calls > 3 else decode()

        rt.context.decode = failing  # type: ignore[method-assign]
        items = await collect(completion)
    assert isinstance(items[-1], Failure)
    assert "KV cache" in items[-1].message


async def test_a_client_that_stops_reading_is_abandoned_after_the_send_timeout(
        autojump_clock: trio.testing.MockClock) -> None:
    rt = FakeRuntime(n_slots=1, sampler_factory=lambda p, g: FakeSampler(length=100_000),
                     slot_ctx=100_000)
    async with running(rt, send_timeout_s=5.0) as (svc, _rt):
        completion = await svc.submit(request())
        items = completion.items()
        first = await items.__anext__()  # the consumer takes one item, then stops reading
        assert isinstance(first, Delta)
        await trio.sleep(2.0)
        assert svc.reap_stalled() == 0
        assert rt.engine.slot_infos()[0].is_processing  # paused on its full channel
        await trio.sleep(4.0)
        assert svc.reap_stalled() == 1
        await trio.sleep(0.1)
        assert not rt.engine.slot_infos()[0].is_processing  # the slot is free
        assert svc.running(completion.id) is None
        await svc.unload()  # and the model is no longer held
        assert rt.closed
        with pytest.raises(StopAsyncIteration):  # resuming ends at once
            await items.__anext__()
        await items.aclose()


async def test_the_deadline_holds_while_a_send_is_blocked(autojump_clock: trio.testing.MockClock) -> None:
    rt = FakeRuntime(n_slots=1, sampler_factory=lambda p, g: FakeSampler(length=100_000),
                     slot_ctx=100_000)
    async with running(rt, send_timeout_s=60.0, request_timeout_s=3.0) as (svc, _rt):
        completion = await svc.submit(request())
        items = completion.items()
        await items.__anext__()  # then the send blocks
        await trio.sleep(2.0)
        assert svc.reap_stalled() == 0
        await trio.sleep(1.5)
        assert svc.reap_stalled() == 1  # past --timeout, long before --send-timeout
        await items.aclose()


async def test_a_dead_engine_refuses_new_requests(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as (svc, rt):
        rt.engine.alive = False  # type: ignore[misc]
        with pytest.raises(Unavailable, match="engine is not running"):
            await svc.submit(request())
