"""The model registry's lifecycle on fake runtimes under virtual time: load on demand, LRU
eviction that never takes a busy model, the bounded wait, idle unload, keep_alive, failed
loads, cancelled loads, and routing by name."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from app.completion import CompletionRequest, Final
from app.discovery import ModelSpec, specs_from_settings
from app.engine.model import LoadCancelled, ModelLoadError
from app.errors import InvalidRequest, NotFound, Overloaded, ServerError
from app.hosted import Hosted, ModelStatus
from app.registry import Registry
from app.service import Service
from app.settings import ModelConfig, Settings
from tests.fakes import FakeRuntime, drive

LOAD_S = 2.0


class Loads:
    """A fake loader: each load takes LOAD_S of virtual time, checks ``cancel_load`` as
    llama.cpp's progress callback does, and runs the fake engine in the test's nursery."""

    def __init__(self, nursery: trio.Nursery, failing: frozenset[str] = frozenset()) -> None:
        self.nursery = nursery
        self.failing = failing
        self.started: list[str] = []
        self.closed: list[str] = []
        self.runtimes: dict[str, FakeRuntime] = {}

    async def load(self, hosted: Hosted) -> FakeRuntime:
        self.started.append(hosted.name)
        for _ in range(20):
            await trio.sleep(LOAD_S / 20)
            if hosted.cancel_load:
                raise LoadCancelled(f"the load of {hosted.name} was cancelled")
        if hosted.name in self.failing:
            raise ModelLoadError(f"llama.cpp could not load model {hosted.spec.path}")
        runtime = FakeRuntime()
        self.nursery.start_soon(drive, runtime.engine)
        self.runtimes[hosted.name] = runtime
        return runtime

    async def close(self, runtime: Any) -> None:
        runtime.close()
        self.closed.extend(n for n, r in self.runtimes.items() if r is runtime)


def specs(*names: str) -> list[ModelSpec]:
    return [ModelSpec(n, Path(f"/models/{n}.gguf"), (f"{n}.gguf",)) for n in names]


@asynccontextmanager
async def registry(*names: str, failing: frozenset[str] = frozenset(), **options: Any
                   ) -> AsyncIterator[tuple[Registry, Loads]]:
    async with trio.open_nursery() as nursery:
        loads = Loads(nursery, failing)
        reg = Registry(specs(*names), load=loads.load, close=loads.close,
                       **{"router": True, "wait_s": 30.0, **options})
        await nursery.start(reg.run)
        yield reg, loads
        nursery.cancel_scope.cancel(reason="test over")


async def use(reg: Registry, name: str, **kwargs: Any) -> None:
    hosted = reg.find(name)
    runtime = await reg.acquire(hosted, **kwargs)
    reg.release(hosted, runtime)


def status(reg: Registry, name: str) -> ModelStatus:
    return reg.find(name).status


async def settled(reg: Registry, name: str) -> ModelStatus:
    """The status once a load or unload in progress (a worker thread) has ended."""
    while status(reg, name) in (ModelStatus.LOADING, ModelStatus.UNLOADING):  # noqa: ASYNC110
        await trio.sleep(0.05)
    return status(reg, name)


async def test_a_model_loads_on_demand_and_stays(autojump_clock: trio.testing.MockClock) -> None:
    async with registry("a", "b") as (reg, loads):
        assert status(reg, "a") is ModelStatus.UNLOADED
        start = trio.current_time()
        await use(reg, "a.gguf")  # an alias
        assert trio.current_time() - start == pytest.approx(LOAD_S)
        assert status(reg, "a") is ModelStatus.LOADED
        await use(reg, "a")  # warm: no second load
        assert loads.started == ["a"]


async def test_loading_one_more_evicts_the_least_recently_used(
        autojump_clock: trio.testing.MockClock) -> None:
    async with registry("a", "b", "c", max_loaded=2) as (reg, loads):
        await use(reg, "a")
        await use(reg, "b")
        await trio.sleep(1)
        await use(reg, "a")  # b is now the least recently used
        await use(reg, "c")
        assert loads.closed == ["b"]
        assert [h.name for h in reg.loaded()] == ["a", "c"]


async def test_a_busy_model_is_never_evicted_and_the_request_waits(
        autojump_clock: trio.testing.MockClock) -> None:
    async with registry("a", "b") as (reg, loads):
        a = reg.find("a")
        held = await reg.acquire(a)  # a running request
        got_b = trio.Event()

        async def want_b() -> None:
            await use(reg, "b")
            got_b.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(want_b)
            await trio.sleep(20)
            assert not got_b.is_set()
            assert status(reg, "a") is ModelStatus.LOADED
            assert not loads.closed
            reg.release(a, held)  # the request ends: now a can go
        assert got_b.is_set()
        assert loads.closed == ["a"]
        assert status(reg, "b") is ModelStatus.LOADED


async def test_when_every_model_stays_busy_the_wait_ends_in_a_503(
        autojump_clock: trio.testing.MockClock) -> None:
    async with registry("a", "b", wait_s=5.0) as (reg, _loads):
        a = reg.find("a")
        held = await reg.acquire(a)
        start = trio.current_time()
        with pytest.raises(Overloaded, match="could not be loaded within 5 s") as info:
            await use(reg, "b")
        assert trio.current_time() - start == pytest.approx(5.0)
        assert info.value.headers["Retry-After"] == "5"
        assert status(reg, "b") is ModelStatus.UNLOADED
        reg.release(a, held)


async def test_the_queue_of_waiting_requests_is_bounded(
        autojump_clock: trio.testing.MockClock) -> None:
    async with registry("a", "b", max_waiting=2) as (reg, _loads):
        a = reg.find("a")
        held = await reg.acquire(a)
        errors: list[Exception] = []

        async def want_b() -> None:
            try:
                await use(reg, "b")
            except Overloaded as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(want_b)
            await trio.sleep(1)
            assert len(errors) == 1
            assert "already wait" in str(errors[0])
            reg.release(a, held)
        assert len(errors) == 1  # the two in the queue were served


async def test_an_idle_model_is_unloaded_and_loads_again(
        autojump_clock: trio.testing.MockClock) -> None:
    async with registry("a", idle_s=10.0) as (reg, loads):
        await use(reg, "a")
        await trio.sleep(9)
        assert status(reg, "a") is ModelStatus.LOADED
        await trio.sleep(2)
        assert await settled(reg, "a") is ModelStatus.UNLOADED
        assert loads.closed == ["a"]
        await use(reg, "a")
        assert loads.started == ["a", "a"]


async def test_keep_alive_zero_unloads_after_the_request(
        autojump_clock: trio.testing.MockClock) -> None:
    async with registry("a", "b", max_loaded=2) as (reg, loads):
        await use(reg, "b")
        await use(reg, "a", keep_alive_s=0.0, set_keep_alive=True)
        await trio.sleep(0.5)
        assert await settled(reg, "a") is ModelStatus.UNLOADED
        assert status(reg, "b") is ModelStatus.LOADED
        assert loads.closed == ["a"]


async def test_keep_alive_zero_on_a_busy_model_never_stalls_its_queue(
        autojump_clock: trio.testing.MockClock) -> None:
    """Ollama's unload (empty prompt, keep_alive 0) while requests run: it answers at once,
    later requests are served without waiting, and the model goes once the last one ends."""
    async with registry("a") as (reg, loads):
        hosted = reg.find("a")
        runtime = await reg.acquire(hosted)  # a running request
        for _ in range(3):
            with trio.fail_after(0.1):
                await reg.unload_when_idle(hosted)
        assert status(reg, "a") is ModelStatus.LOADED
        with trio.fail_after(0.1):  # the queue goes on
            await use(reg, "a")
        assert status(reg, "a") is ModelStatus.LOADED  # the first request still holds it
        reg.release(hosted, runtime)
        assert await settled(reg, "a") is ModelStatus.UNLOADED
        assert loads.closed == ["a"]


async def test_a_negative_keep_alive_outlasts_the_idle_limit(
        autojump_clock: trio.testing.MockClock) -> None:
    async with registry("a", idle_s=1.0) as (reg, _loads):
        await use(reg, "a", keep_alive_s=-1.0, set_keep_alive=True)
        await trio.sleep(60)
        assert status(reg, "a") is ModelStatus.LOADED
        await use(reg, "a", keep_alive_s=None, set_keep_alive=True)  # back to the server's
        await trio.sleep(2)
        assert await settled(reg, "a") is ModelStatus.UNLOADED


async def test_a_failed_load_is_reported_and_leaves_the_others(
        autojump_clock: trio.testing.MockClock) -> None:
    async with registry("a", "bad", failing=frozenset({"bad"}), max_loaded=2) as (reg, loads):
        await use(reg, "a")
        with pytest.raises(ServerError, match="could not load model 'bad'"):
            await use(reg, "bad")
        bad = reg.find("bad")
        assert bad.status is ModelStatus.FAILED
        assert "could not load model /models/bad.gguf" in bad.error
        assert status(reg, "a") is ModelStatus.LOADED
        await use(reg, "a")
        with pytest.raises(ServerError):  # tried again on the next request
            await use(reg, "bad")
        assert loads.started.count("bad") == 2


async def test_a_load_nobody_waits_for_is_cancelled(autojump_clock: trio.testing.MockClock) -> None:
    async with registry("a") as (reg, loads):
        with trio.move_on_after(LOAD_S / 4):  # the client leaves while its model loads
            await use(reg, "a")
        await trio.sleep(LOAD_S)
        assert loads.started == ["a"]
        assert status(reg, "a") is ModelStatus.UNLOADED  # the load stopped; nothing held
        assert not loads.runtimes
        await use(reg, "a")  # and the next request loads it
        assert status(reg, "a") is ModelStatus.LOADED


async def test_an_explicit_load_is_not_cancelled(autojump_clock: trio.testing.MockClock) -> None:
    async with registry("a") as (reg, _loads):
        await reg.ensure_loaded(reg.find("a"))
        assert status(reg, "a") is ModelStatus.LOADED


async def test_unload_under_load_ends_running_requests_cleanly(
        autojump_clock: trio.testing.MockClock) -> None:
    from tests.fakes import FakeSampler, text_script

    async with trio.open_nursery() as nursery:
        loads = Loads(nursery)
        reg = Registry(specs("a"), load=loads.load, close=loads.close, router=True)
        svc = Service(Settings(), reg)
        await nursery.start(svc.run)
        bound = await svc.bind("a")
        runtime = loads.runtimes["a"]
        runtime.sampler_factory = lambda p, g: FakeSampler(text_script("x" * 10_000))
        completion = await bound.submit(CompletionRequest(prompt=("hi",)))
        bound.release()
        items = []

        async def read() -> None:
            async for item in completion.items():
                items.append(item)

        async with trio.open_nursery() as inner:
            inner.start_soon(read)
            await trio.sleep(0.5)
            await svc.unload("a")
        last = items[-1]
        assert isinstance(last, Final)
        assert last.outcome.interruption is not None
        assert last.outcome.interruption.value == "model_changed"
        assert runtime.closed
        assert status(reg, "a") is ModelStatus.UNLOADED
        nursery.cancel_scope.cancel()


async def test_names_route_by_mode(autojump_clock: trio.testing.MockClock) -> None:
    async def close(_rt: Any) -> None:
        pass

    single = Registry(specs("main", "other"), load=None, close=close, default="main")
    assert single.find("gpt-4o").name == "main"  # any name: the default, as llama.cpp
    assert single.find("other.gguf").name == "other"
    assert single.find(None).name == "main"
    router = Registry(specs("a", "b"), load=None, close=close, router=True)
    with pytest.raises(NotFound, match="model 'gpt-4o' not found; known models: a, b") as info:
        router.find("gpt-4o")
    assert info.value.param == "model"
    with pytest.raises(InvalidRequest, match="'model' is required"):
        router.find(None)
    router.adopt(router.find("b"), FakeRuntime())
    assert router.find(None).name == "b"  # the loaded one


def test_specs_from_settings(tmp_path: Path) -> None:
    gemma, smol = tmp_path / "gemma.gguf", tmp_path / "smol.gguf"
    embedded = {"gemma3-270m": gemma, "smollm2-135m-instruct": smol}
    # no model options: the embedded Gemma is the default, under its file name
    found, default, router = specs_from_settings(Settings(), embedded)
    assert (default, router) == ("gemma.gguf", False)
    assert [(s.name, s.aliases) for s in found] == [
        ("gemma.gguf", ("gemma", "gemma3-270m")), ("smollm2-135m-instruct", ("smol.gguf",))]
    # a models directory and config models: router mode, no default without --model
    models = tmp_path / "models"
    models.mkdir()
    for name in ("x.gguf", "y.gguf", "notes.txt"):
        (models / name).write_text("")
    settings = Settings(models_dir=models, models=(
        ModelConfig("long", Path("x.gguf"), ("x-long",), (("ctx_size", 32768),)),))
    found, default, router = specs_from_settings(settings, embedded)
    assert (default, router) == (None, True)
    names = [s.name for s in found]
    # x.gguf is "long" already: the directory adds only y.gguf, and x.gguf names "long" too
    assert names == ["long", "gemma3-270m", "smollm2-135m-instruct", "y.gguf"]
    long = found[0]
    assert long.aliases == ("x-long", "x.gguf", "x")
    assert long.path == models / "x.gguf"
    assert long.settings(settings).ctx_size == 32768
    # --model by an embedded model's short name, with --alias
    found, default, _ = specs_from_settings(
        Settings(model_path=Path("smollm2-135m-instruct"), alias="chat"), embedded)
    assert default == "chat"
    assert found[0].path == smol
    assert "smollm2-135m-instruct" in found[0].aliases
    assert [s.name for s in found] == ["chat", "gemma3-270m"]
    # a link in the models directory to a model known by another name is an alias of it
    (models / "linked.gguf").symlink_to(models / "y.gguf")
    found, _, _ = specs_from_settings(Settings(models_dir=models), embedded)
    by_name = {s.name: s for s in found}
    assert "linked.gguf" not in by_name
    assert {"linked.gguf", "linked"} <= set(by_name["y.gguf"].aliases)


async def test_a_request_for_the_default_follows_a_new_default(
        autojump_clock: trio.testing.MockClock) -> None:
    async with registry("a", "b", router=False, default="a") as (reg, loads):
        got: list[str] = []

        async def default_request() -> None:
            hosted, runtime = await reg.acquire_resolved(lambda: reg.find(None))
            got.append(hosted.name)
            reg.release(hosted, runtime)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(default_request)
            await trio.sleep(LOAD_S / 2)  # "a" is loading for it
            reg.default = "b"  # goinfer's load switches the default meanwhile
        assert got == ["b"]
        assert loads.started[-1] == "b"


async def test_the_largest_context_counts_each_models_own_ctx_size(
        autojump_clock: trio.testing.MockClock) -> None:
    """Token prompts are bounded by it before their body is checked: a model of its own larger
    context must not be cut to the server's -c."""
    spec = ModelSpec("big", Path("/models/big.gguf"), (), (("ctx_size", 32768),))
    reg = Registry([*specs("a"), spec], load=Loads.load, close=Loads.close,  # type: ignore[arg-type]
                   router=True)
    assert reg.largest_ctx_size(Settings(ctx_size=8192)) == 32768
    assert Registry(specs("a"), load=Loads.load, close=Loads.close,  # type: ignore[arg-type]
                    router=True).largest_ctx_size(Settings(ctx_size=8192)) == 8192
