"""Fault injection: an exception raised at any stage of one request's life ends that request as
a ``Failure`` (or an error before its 200) and nothing else: the service's long-lived nursery,
the other requests and the slots carry on.

Each stage is made to raise on purpose (monkeypatched), with one request alone and with
several fanned in (``n > 1``, as a streamed ``n_cmpl: 2`` runs), under fakes and virtual time.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from app import running as running_mod
from app import service as service_mod
from app.completion import CompletionRequest, Failure, Final, Item, SchemaConstraint
from app.engine import scheduler as scheduler_mod
from app.running import Completion, FanIn
from tests.fakes import FakeRuntime, FakeSampler, text_script
from tests.unit.test_core import collect, running


def schema_request() -> CompletionRequest:
    return CompletionRequest(prompt=("hi",), constraint=SchemaConstraint({"type": "string"}))


def boom(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("injected")


async def fan_in(svc: Any, completions: list[Completion]) -> list[tuple[int, Item]]:
    fan = FanIn(completions, None)
    svc.registry.spawn(fan.run)
    out = []
    try:
        async for pair in fan.receive:
            out.append(pair)
    finally:
        fan.close()
    return out


async def still_serves(svc: Any, rt: FakeRuntime) -> None:
    """A plain request afterwards gets its whole reply, and every slot is free again."""
    items = await collect(await svc.submit(CompletionRequest(prompt=("hi",))))
    last = items[-1]
    assert isinstance(last, Final)
    assert last.outcome.text == "hello world"
    await trio.sleep(1)
    assert all(slot.job is None for slot in rt.engine.slots)


STAGES = {
    # the validation after generation (a validator that raises instead of giving a verdict)
    "validation": (running_mod, "validate"),
    # turning an engine event into a delta
    "delta": (running_mod._Builder, "delta"),
    # building the outcome (timings, report)
    "outcome": (running_mod, "Outcome"),
    # the engine's own step (a sampler that raises inside the scheduler)
    "engine": None,
    # the scheduler's bookkeeping after a decode, before it records what was decoded (the
    # sequence then holds positions the slot does not know: the next decode of that slot
    # failed, "inconsistent sequence positions", until the sequence was cleared)
    "step": (scheduler_mod.Engine, "_advance"),
}


def _inject(monkeypatch: pytest.MonkeyPatch, stage: str, rt: FakeRuntime) -> None:
    where = STAGES[stage]
    if where is None:
        class Raising(FakeSampler):
            def sample(self, ctx: Any, row: int) -> Any:
                if self.n >= 2:
                    raise RuntimeError("injected")
                return super().sample(ctx, row)
        rt.sampler_factory = lambda p, g: Raising(text_script("hello world"))
        return
    monkeypatch.setattr(where[0], where[1], boom)


@pytest.mark.parametrize("stage", list(STAGES))
@pytest.mark.parametrize("n", [1, 2])
async def test_a_stage_that_raises_fails_only_its_request(
        stage: str, n: int, monkeypatch: pytest.MonkeyPatch,
        autojump_clock: trio.testing.MockClock) -> None:
    rt = FakeRuntime()
    async with running(rt) as (svc, rt):
        with monkeypatch.context() as patch:
            _inject(patch, stage, rt)
            completions = [await svc.submit(schema_request()) for _ in range(n)]
            if n == 1:
                items = await collect(completions[0])
                assert isinstance(items[-1], Failure)
            else:
                pairs = await fan_in(svc, completions)
                ends = {i: item for i, item in pairs if isinstance(item, Failure | Final)}
                assert set(ends) == {0, 1}
                assert all(isinstance(item, Failure) for item in ends.values())
        rt.sampler_factory = lambda p, g: FakeSampler(text_script("hello world"))
        await still_serves(svc, rt)


async def test_a_failing_preparation_is_an_error_of_that_request_only(
        monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock) -> None:
    async with running() as (svc, rt):
        with monkeypatch.context() as patch:
            patch.setattr(service_mod, "prepare", boom)
            with pytest.raises(RuntimeError, match="injected"):  # the route's 500, before any 200
                await svc.submit(schema_request())
        await still_serves(svc, rt)


async def test_a_fan_in_whose_reader_left_ends_quietly(
        autojump_clock: trio.testing.MockClock) -> None:
    rt = FakeRuntime(sampler_factory=lambda p, g: FakeSampler(length=100_000), slot_ctx=100_000)
    async with running(rt) as (svc, rt):
        completions = [await svc.submit(CompletionRequest(prompt=("hi",))) for _ in range(2)]
        fan = FanIn(completions, None)
        svc.registry.spawn(fan.run)
        await fan.receive.receive()
        await fan.receive.aclose()  # the consumer is gone without closing the fan-in
        await trio.sleep(5)
        fan.close()
        await trio.sleep(1)
        rt.sampler_factory = lambda p, g: FakeSampler(text_script("hello world"))
        await still_serves(svc, rt)


async def test_a_spawned_task_that_raises_does_not_end_the_service(
        autojump_clock: trio.testing.MockClock) -> None:
    async with running() as (svc, rt):
        async def failing() -> None:
            raise ValueError("injected")
        svc.registry.spawn(failing)
        await trio.sleep(1)
        await still_serves(svc, rt)
