"""The one stream driver (``app.api.drive``), under fakes and virtual time: what each family's
wire is asked to write, in what order, for one completion, several, and a failure."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from app.api.drive import drive
from app.completion import CompletionRequest, Delta, Outcome, PromptProgress
from app.running import Completion
from tests.fakes import FakeRuntime, FakeSampler, text_script
from tests.unit.test_core import running


class Recorder:
    """A wire that writes what it was asked, as text lines; ``stop_after`` deltas, it asks
    for the end."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.finished = False
        self.stop_after = stop_after
        self.deltas = 0

    def begin(self) -> Sequence[bytes]:
        return [b"begin"]

    def ping(self) -> Sequence[bytes]:
        return [b"ping"]

    def delta(self, index: int, item: Delta) -> Sequence[bytes]:
        self.deltas += 1
        self.finished = self.stop_after is not None and self.deltas >= self.stop_after
        return [f"delta {index} {item.text}".encode()]

    def progress(self, index: int, item: PromptProgress) -> Sequence[bytes]:
        return [f"progress {index}".encode()]

    async def final(self, index: int, outcome: Outcome) -> Sequence[bytes]:
        await trio.lowlevel.checkpoint()  # a family may check tool calls in a worker here
        return [f"final {index} {outcome.text}".encode()]

    def failure(self, index: int, message: str) -> Sequence[bytes]:
        return [f"failure {index}".encode()]

    def end(self) -> Sequence[bytes]:
        return [b"end"]


async def written(svc: Any, completions: list[Completion], ping_s: float | None = None
                  ) -> list[str]:
    bound: Any = SimpleNamespace(service=svc)
    return [chunk.decode() async for chunk in drive(bound, completions, Recorder(), ping_s)]


async def test_one_completion_begins_streams_finishes_and_ends(
        autojump_clock: trio.testing.MockClock) -> None:
    async with running() as (svc, _rt):
        completion = await svc.submit(CompletionRequest(prompt=("hi",)))
        lines = await written(svc, [completion])
    assert lines[0] == "begin"
    assert lines[-2:] == ["final 0 hello world", "end"]
    assert "".join(line.removeprefix("delta 0 ") for line in lines[1:-2]) == "hello world"


async def test_several_completions_end_after_the_last_final(
        autojump_clock: trio.testing.MockClock) -> None:
    async with running() as (svc, _rt):
        completions = [await svc.submit(CompletionRequest(prompt=("hi",))) for _ in range(2)]
        lines = await written(svc, completions)
    finals = [line for line in lines if line.startswith("final")]
    assert sorted(finals) == ["final 0 hello world", "final 1 hello world"]
    assert lines[-1] == "end"
    assert lines.index("end") > max(lines.index(f) for f in finals)


async def test_a_failure_is_the_last_thing_written(
        autojump_clock: trio.testing.MockClock) -> None:
    class Raising(FakeSampler):
        def sample(self, ctx: Any, row: int) -> Any:
            if self.n >= 2:
                raise RuntimeError("injected")
            return super().sample(ctx, row)

    rt = FakeRuntime(sampler_factory=lambda p, g: Raising(text_script("hello world")))
    async with running(rt) as (svc, _rt):
        completion = await svc.submit(CompletionRequest(prompt=("hi",)))
        lines = await written(svc, [completion])
    assert lines[-1] == "failure 0"
    assert "end" not in lines
    assert not any(line.startswith("final") for line in lines)


@pytest.mark.parametrize("many", [False, True])
async def test_pings_while_quiet(many: bool, autojump_clock: trio.testing.MockClock) -> None:
    """A completion that produces nothing for a while (a long queue) is pinged every
    interval; several fanned in are pinged once per interval, not once per completion."""
    built = []

    def sampler(p: Any, g: Any) -> FakeSampler:  # the blockers' run long, ours short
        built.append(p)
        return FakeSampler(length=100_000 if len(built) <= len(rt.engine.slots) else 3)

    rt = FakeRuntime(sampler_factory=sampler, slot_ctx=200_000)
    async with running(rt) as (svc, _rt):
        # every slot busy for a long while, so ours wait in the queue
        blockers = [await svc.submit(CompletionRequest(prompt=("x",), n_predict=-1))
                    for _ in rt.engine.slots]
        for b in blockers:
            svc.registry.spawn(b.result)
        await trio.sleep(1)  # they reach the engine first (a completion does when it is read)
        mine = [await svc.submit(CompletionRequest(prompt=("hi",), n_predict=3))
                for _ in range(2 if many else 1)]
        lines: list[str] = []
        bound: Any = SimpleNamespace(service=svc)
        with trio.move_on_after(10.5):
            async for chunk in drive(bound, mine, Recorder(), 1.0):
                lines.append(chunk.decode())
        for b in blockers:
            b.abandon()
    pings = lines.count("ping")
    assert 9 <= pings <= 11, lines


async def test_a_wire_that_is_finished_ends_the_stream_and_the_request(
        autojump_clock: trio.testing.MockClock) -> None:
    rt = FakeRuntime(sampler_factory=lambda p, g: FakeSampler(length=100_000),
                     slot_ctx=200_000)
    async with running(rt) as (svc, rt):
        completion = await svc.submit(CompletionRequest(prompt=("hi",)))
        bound: Any = SimpleNamespace(service=svc)
        lines = [c.decode() async for c in drive(bound, [completion], Recorder(stop_after=3),
                                                  None)]
        assert lines[0] == "begin"
        assert [line.split()[0] for line in lines[1:]] == ["delta", "delta", "delta", "end"]
        await trio.sleep(1)
        assert all(slot.job is None for slot in rt.engine.slots)  # the generation ended too
