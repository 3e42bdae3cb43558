"""The models a server knows, which of them are loaded, and their life: load on demand, LRU
eviction, idle unload, per-request ``keep_alive``.

Everything here runs on the Trio thread; loading and freeing a model run in worker
threads through the ``load`` and ``close`` callables. A loaded model's runtime is
reference-counted by its :class:`~app.runtime.Leases` (requests, tokenizing,
embedding, slot actions each hold one), and a model is unloaded only after its
leases drained, so its memory is freed when no thread can touch it.

Decisions (README "Several models"):

- A name the registry knows (a model's name or one of its aliases) routes to that model.
  In *single-model mode* (no ``--models-dir`` and no ``models`` in the config file) any
  other name goes to the default model, as llama.cpp's server ignores ``model``; in
  *router mode* an unknown name is a 404 listing the known ones.
- A request without a model goes to the default model (``--model``; the embedded
  Gemma when the server starts with no model options at all); without one, to the
  most recently used loaded model; with none loaded, it is a 400 asking for ``model``.
- Eviction never takes a model with a lease or a waiting request. When every loaded
  model is busy, a request waits up to ``--models-wait`` seconds in a queue of at most
  ``--max-queue`` requests, then gets 503 with ``Retry-After``.
- ``UNLOADING`` models count towards ``--models-max``: the next model loads only once
  the memory of the one it replaces was freed.
- A model whose load failed is ``failed`` with the error; the next request for it tries
  once more (the file may have been fixed) and gets the error as a 500 if it fails again.
- When nobody waits for a model that is loading on demand any more (every client left),
  its load is cancelled (llama.cpp's progress callback) and it goes back to ``unloaded``.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from app.discovery import ModelSpec
from app.errors import Conflict, InvalidRequest, NotFound, Overloaded, ServerError, Unavailable
from app.hosted import Event, Hosted, ModelStatus, Room, room_for
from app.runtime import RuntimeLike, facts_of
from app.settings import Settings

log = logging.getLogger(__name__)

#: how often the idle watcher looks at the loaded models
IDLE_CHECK_S = 0.25


Loader = Callable[[Hosted], Awaitable[RuntimeLike]]
Closer = Callable[[RuntimeLike], Awaitable[None]]


@dataclass(eq=False)
class Registry:
    """The known models and the loaded ones' lifecycle. Start :meth:`run` in a nursery."""

    specs: list[ModelSpec]
    load: Loader | None  # None: nothing can be loaded (tests with a fixed runtime)
    close: Closer
    default: str | None = None
    router: bool = False
    max_loaded: int = 1
    max_waiting: int = 64
    wait_s: float = 60.0
    idle_s: float | None = None
    drain_s: float = 10.0
    #: ends a runtime's running requests (an explicit unload); set by the service
    stop_running: Callable[[RuntimeLike], None] = lambda runtime: None
    #: more specs on demand (a models directory rescanned); returns all of them
    rescan: Callable[[], list[ModelSpec]] | None = None
    _hosted: dict[str, Hosted] = field(default_factory=dict)
    _names: dict[str, Hosted] = field(default_factory=dict)
    _nursery: trio.Nursery | None = None
    _changed: trio.Event = field(default_factory=trio.Event)

    def __post_init__(self) -> None:
        self._add(self.specs)

    # --- what exists -------------------------------------------------------------------------
    def _add(self, specs: list[ModelSpec]) -> None:
        for spec in specs:
            if spec.name in self._hosted:
                continue
            hosted = Hosted(spec)
            self._hosted[spec.name] = hosted
            for name in spec.names:
                self._names.setdefault(name, hosted)

    def refresh(self) -> None:
        """Pick up model files added to the models directory since the last look."""
        if self.rescan is not None:
            paths = {h.spec.path.resolve() for h in self._hosted.values()}
            self._add([s for s in self.rescan()
                       if s.path.resolve() not in paths and not set(s.names) & set(self._names)])

    def all(self) -> list[Hosted]:
        self.refresh()
        return list(self._hosted.values())

    def listed(self) -> list[Hosted]:
        """The models the listings show: the served ones, and any other that is loaded."""
        return [h for h in self.all() if h.spec.listed or h.status is not ModelStatus.UNLOADED]

    def largest_ctx_size(self, base: Settings) -> int:
        """The most KV cells a known model is given (its own ``ctx_size``, else ``base``'s);
        no look at the models directory (new files there take ``base``'s)."""
        return max([base.ctx_size, *(h.spec.settings(base).ctx_size
                                     for h in self._hosted.values())])

    def get(self, name: str) -> Hosted | None:
        hosted = self._names.get(name)
        if hosted is None and self.rescan is not None:
            self.refresh()
            hosted = self._names.get(name)
        return hosted

    def by_path(self, path: Path) -> Hosted:
        """The model of file ``path``, added (named by its file name) if unknown."""
        for hosted in self.all():
            if hosted.spec.path == path:
                return hosted
        spec = ModelSpec(path.name, path, (path.stem,))
        self._add([spec])
        return self._hosted[spec.name]

    def known(self) -> list[str]:
        return [h.name for h in self.all()]

    def find(self, name: str | None, *, field: str = "model") -> Hosted:
        """The model a request names (``field``), or the default one.

        Raises:
            NotFound: router mode and no model has that name.
            InvalidRequest: no name, no default and no loaded model.
            Unavailable: the server knows no model at all.
        """
        if name:
            hosted = self.get(name)
            if hosted is not None:
                return hosted
            if self.router or self.default is None:
                raise NotFound(f"model {name!r} not found; known models: "
                               f"{', '.join(self.known()) or 'none'}", param=field)
        if self.default is not None:
            return self._hosted[self.default]
        loaded = [h for h in self._hosted.values() if h.status is ModelStatus.LOADED]
        if loaded:
            return max(loaded, key=lambda h: h.last_used)
        if not self._hosted:
            raise Unavailable("no model is loaded")
        raise InvalidRequest(f"'{field}' is required: no model is loaded and there is no "
                             f"default; known models: {', '.join(self.known())}", param=field)

    @property
    def default_hosted(self) -> Hosted | None:
        return self._hosted[self.default] if self.default is not None else None

    # --- running -------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the loads and unloads and watch for idle models until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                while True:
                    await trio.sleep(IDLE_CHECK_S)
                    self._unload_expired()
            finally:
                self._nursery = None

    def _pulse(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` in the service's long-lived nursery. An exception it raises is
        logged and ends that task only: a task started for one request (a fan-in, a load)
        must never end the nursery every other request depends on."""
        if self._nursery is None:
            raise Unavailable("the server is not running")

        async def guarded() -> None:
            try:
                await fn(*args)
            except Exception:
                log.exception("a background task failed: %s", getattr(fn, "__qualname__", fn))

        self._nursery.start_soon(guarded)

    def _make_room(self, wanted: Hosted) -> Room:
        """May ``wanted`` start loading? Starts the unload of the least recently used idle
        model when that makes room."""
        room, victim = room_for(wanted, list(self._hosted.values()), self.max_loaded)
        if victim is not None:
            log.info("unloading %s (least recently used) to load %s", victim.name, wanted.name)
            self._start_unload(victim)
        return room

    def _start_load(self, hosted: Hosted) -> None:
        assert self.load is not None
        hosted.apply(Event.LOAD)
        hosted.cancel_load = False
        hosted.error = ""
        self.spawn(self._load_task, hosted)
        self._pulse()

    async def _load_task(self, hosted: Hosted) -> None:
        assert self.load is not None
        from app.engine.model import LoadCancelled

        started = trio.current_time()
        try:
            runtime = await self.load(hosted)
        except LoadCancelled:
            hosted.apply(Event.CANCELLED)
            log.info("load of %s cancelled: nobody waits for it", hosted.name)
        except Exception as exc:  # a load failure must leave the other models untouched
            hosted.apply(Event.FAILED)
            hosted.error = str(exc) or type(exc).__name__
            hosted.failures += 1
            log.error("could not load %s: %s", hosted.name, hosted.error)
        else:
            hosted.runtime = runtime
            hosted.facts = facts_of(runtime)
            hosted.apply(Event.LOADED)
            hosted.loads += 1
            hosted.load_s = trio.current_time() - started
            self._touch(hosted)
        finally:
            self._pulse()

    def _start_unload(self, hosted: Hosted, *, stop: bool = False) -> None:
        hosted.apply(Event.UNLOAD)
        self.spawn(self._unload_task, hosted, stop, None)
        self._pulse()

    async def _unload_task(self, hosted: Hosted, stop: bool,
                           done: Callable[[str | None], None] | None) -> None:
        """Drain and free ``hosted``'s runtime (its status is already ``unloading``); on a
        drain timeout it stays loaded."""
        runtime = hosted.runtime
        error = None
        try:
            if runtime is not None:
                if stop:
                    self.stop_running(runtime)
                # nothing held (eviction, idle): no thread needed to wait
                if not runtime.leases.drain(0) and not await trio.to_thread.run_sync(
                        runtime.leases.drain, self.drain_s):
                    hosted.apply(Event.DRAIN_TIMEOUT)
                    error = (f"the model is still in use by {runtime.leases.count} operations "
                             f"after {self.drain_s:g} s; it stays loaded, try again")
                    return
                hosted.runtime = None
                await self.close(runtime)
                hosted.unloads += 1
            hosted.apply(Event.UNLOADED)
            hosted.expires_at = math.inf
        finally:
            self._pulse()
            if done is not None:
                done(error)

    def _touch(self, hosted: Hosted) -> None:
        hosted.last_used = trio.current_time()
        limit = hosted.keep_alive_s if hosted.keep_alive_s is not None else self.idle_s
        hosted.expires_at = math.inf if limit is None or limit < 0 else hosted.last_used + limit

    def _unload_expired(self) -> None:
        now = trio.current_time()
        for hosted in self._hosted.values():
            if (hosted.status is ModelStatus.LOADED and not hosted.busy
                    and now >= hosted.expires_at):
                log.info("unloading %s: idle", hosted.name)
                self._start_unload(hosted)

    # --- what requests call ----------------------------------------------------------------
    async def acquire(self, hosted: Hosted, *, keep_alive_s: float | None = None,
                      set_keep_alive: bool = False) -> RuntimeLike:
        """Load ``hosted`` if needed and return its runtime with a lease taken.

        Give the lease back with :meth:`release`. ``keep_alive_s`` (with
        ``set_keep_alive``) becomes the model's idle limit after this request.

        Raises:
            Overloaded: no room to load it in time, or too many waiting (503, Retry-After).
            ServerError: its load failed.
            Unavailable: nothing can be loaded.
        """
        _, runtime = await self.acquire_resolved(lambda: hosted, keep_alive_s=keep_alive_s,
                                                 set_keep_alive=set_keep_alive)
        return runtime

    def _wait_for(self, hosted: Hosted) -> None:
        hosted.waiting += 1
        hosted.cancel_load = False

    def _stop_waiting(self, hosted: Hosted) -> None:
        hosted.waiting -= 1
        if hosted.waiting == 0 and hosted.status is ModelStatus.LOADING and not hosted.pinned:
            hosted.cancel_load = True  # everyone left: stop the load (the loader asks)

    async def acquire_resolved(self, resolve: Callable[[], Hosted], *,
                               keep_alive_s: float | None = None,
                               set_keep_alive: bool = False) -> tuple[Hosted, RuntimeLike]:
        """As :meth:`acquire`, for the model ``resolve()`` names, asked again after every
        change: a request for the default model that arrives while the default is switched
        (goinfer's load) waits for the new default instead of reloading the old one."""
        hosted = resolve()
        if set_keep_alive:
            hosted.keep_alive_s = keep_alive_s
        deadline = trio.current_time() + self.wait_s
        tried = False
        self._wait_for(hosted)
        try:
            while True:
                current = resolve()
                if current is not hosted:
                    self._stop_waiting(hosted)
                    hosted, tried = current, False
                    self._wait_for(hosted)
                    if set_keep_alive:
                        hosted.keep_alive_s = keep_alive_s
                runtime = hosted.runtime
                if (hosted.status is ModelStatus.LOADED and runtime is not None
                        and runtime.leases.acquire()):
                    self._touch(hosted)
                    return hosted, runtime
                if hosted.status in (ModelStatus.UNLOADED, ModelStatus.FAILED):
                    if hosted.status is ModelStatus.FAILED and tried:
                        raise ServerError(f"could not load model {hosted.name!r}: {hosted.error}")
                    if self.load is None:
                        raise Unavailable("no model is loaded")
                    room = self._make_room(hosted)
                    if room is Room.NOW:
                        self._start_load(hosted)
                        tried = True
                        continue
                    blocked = sum(h.waiting for h in self._hosted.values() if h.status in (
                        ModelStatus.UNLOADED, ModelStatus.FAILED))
                    if room is Room.BLOCKED and blocked > self.max_waiting:
                        raise Overloaded(f"{self.max_waiting} requests already wait for a model "
                                         "to load (--max-queue); retry later", retry_after_s=5)
                changed = self._changed
                with trio.move_on_at(deadline):
                    await changed.wait()
                    continue
                raise Overloaded(
                    f"model {hosted.name!r} could not be loaded within {self.wait_s:g} s: "
                    f"{self.max_loaded} model(s) are loaded (--models-max) and all are in use; "
                    "retry later", retry_after_s=5)
        finally:
            self._stop_waiting(hosted)

    def release(self, hosted: Hosted, runtime: RuntimeLike) -> None:
        """Give back a lease from :meth:`acquire` (or one a completion held). Trio thread."""
        runtime.leases.release()
        self.released(hosted)

    def released(self, hosted: Hosted) -> None:
        """A lease of ``hosted`` was given back (from any path). Trio thread."""
        if hosted.runtime is not None and hosted.status is ModelStatus.LOADED:
            self._touch(hosted)
            if hosted.expires_at <= hosted.last_used and not hosted.busy:
                self._start_unload(hosted)  # keep_alive 0: unload after this request
        self._pulse()

    @contextlib.contextmanager
    def pin(self, hosted: Hosted) -> Iterator[None]:
        was, hosted.pinned = hosted.pinned, True
        try:
            yield
        finally:
            hosted.pinned = was

    async def ensure_loaded(self, hosted: Hosted) -> None:
        """Load ``hosted`` (``POST /models/load``) and keep it loaded; no lease is left held."""
        with self.pin(hosted):
            runtime = await self.acquire(hosted)
        self.release(hosted, runtime)

    async def unload(self, hosted: Hosted, *, stop: bool = True) -> None:
        """Unload ``hosted``, first ending its running requests (``stop``); no-op if unloaded.

        Raises:
            Conflict: operations still held the model after the drain time; it stays loaded.
        """
        while hosted.status in (ModelStatus.LOADING, ModelStatus.UNLOADING):
            await self._changed.wait()
        if hosted.status is not ModelStatus.LOADED:
            return
        result: list[str | None] = []
        finished = trio.Event()

        def done(error: str | None) -> None:
            result.append(error)
            finished.set()

        hosted.apply(Event.UNLOAD)
        self.spawn(self._unload_task, hosted, stop, done)
        await finished.wait()
        if result[0] is not None:
            raise Conflict(result[0])

    async def unload_when_idle(self, hosted: Hosted) -> None:
        """Ollama's ``keep_alive: 0``: unload now if nothing uses the model, else as soon as its
        last request ends. Never waits on running requests: a busy model's queue goes on (an
        unload that drained for 10 s stalled it at each such call)."""
        hosted.keep_alive_s = 0.0
        if hosted.status is ModelStatus.LOADED:
            self._touch(hosted)
            if not hosted.busy:
                await self.unload(hosted, stop=False)

    async def unload_all(self) -> None:
        for hosted in list(self._hosted.values()):
            await self.unload(hosted)

    def adopt(self, hosted: Hosted, runtime: RuntimeLike) -> None:
        """Mark ``hosted`` as loaded with ``runtime`` (loaded before the server started)."""
        hosted.runtime = runtime
        hosted.facts = facts_of(runtime)
        hosted.apply(Event.ADOPT)
        hosted.loads += 1
        self._touch(hosted)

    def replace_spec(self, hosted: Hosted, spec: ModelSpec) -> None:
        """New settings for a model (goinfer's load with ``ctx``...); a loaded model keeps its
        old ones until it is loaded again."""
        hosted.spec = spec

    def loaded(self) -> list[Hosted]:
        return [h for h in self._hosted.values() if h.status is ModelStatus.LOADED]

    def close_all_now(self) -> None:
        """At exit: free every loaded runtime (blocking; the engines stop first)."""
        for hosted in self._hosted.values():
            if hosted.runtime is not None:
                hosted.runtime.close()
                hosted.runtime = None
                hosted.apply(Event.CLOSE)
