"""Between the HTTP layer and the engine: the models (through the registry) and the running
requests.

A handler asks :meth:`Service.bind` for the model its request names and gets a
:class:`Bound`: that model's runtime, leased until the handler ends (the model
cannot be unloaded under it). :meth:`Bound.submit` does all fallible work for a
completion (tokenizing, checking the context, converting and parsing its grammar,
building the sampler in a worker thread) and returns a
:class:`~app.running.Completion`, which holds its own lease until it ends: a
handler that got one can send its 200, and every error knowable before the first
token has already been raised as an :class:`~app.errors.ApiError`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import trio

from app.bound import Bound
from app.completion import CompletionRequest, Interruption, SamplingParams
from app.discovery import ModelSpec
from app.engine.model import ModelLoadError, check_model_file, fingerprint
from app.errors import (
    InvalidRequest,
    Overloaded,
    ServerError,
    Unavailable,
)
from app.hosted import Hosted, ModelStatus
from app.prepare import Prepared, prepare
from app.registry import Registry
from app.requests import Defaults, server_constraint
from app.running import Completion
from app.runtime import RuntimeLike
from app.settings import Settings

T = TypeVar("T")
Offload = Callable[[Callable[[], Prepared]], Awaitable[Prepared]]

log = logging.getLogger(__name__)


class ModelChanged(Unavailable):
    """The request's model was unloaded while it was prepared; binding again may serve it."""

#: how long an unload or a switch waits for running requests to end after asking them to
SWITCH_DRAIN_S = 10.0


class Service:
    """Owns the model registry and the registry of submitted completions.

    A model can be unloaded while the server runs (``/models/unload``, goinfer's
    routes): its running requests then end like an abort, marked
    ``"model_changed": true``. Idle and evicted models are unloaded only when
    nothing uses them.
    """

    def __init__(self, settings: Settings, models: Registry | RuntimeLike | None, *,
                 offload: Offload = trio.to_thread.run_sync) -> None:
        self.settings = settings
        self._offload = offload  # runs a blocking preparation (tests run it inline)
        if isinstance(models, Registry):
            self.registry = models
        else:
            self.registry = fixed_registry(settings, models)
        self.registry.stop_running = self._stop_running
        self._ids = itertools.count(1)
        self._running: weakref.WeakValueDictionary[int, Completion] = weakref.WeakValueDictionary()
        self._preparing = 0
        self._token = trio.lowlevel.current_trio_token()
        self._fingerprints: dict[Path, str] = {}
        self.shutting_down = False

    @property
    def max_ctx_size(self) -> int:
        """The most KV cells any of the models holds (``-c``, or a model's own ``ctx_size``):
        no prompt longer than this can be evaluated anywhere here."""
        return self.registry.largest_ctx_size(self.settings)

    @property
    def drain_s(self) -> float:
        return self.registry.drain_s

    @drain_s.setter
    def drain_s(self, value: float) -> None:
        self.registry.drain_s = value

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The service's own tasks: model loads and unloads, idle and stalled watchers."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.registry.run)
            nursery.start_soon(self.watch_stalled)
            task_status.started()

    # --- the models ------------------------------------------------------------------------
    @property
    def runtime(self) -> RuntimeLike | None:
        """The default model's runtime, if loaded."""
        hosted = self.registry.default_hosted
        return hosted.runtime if hosted is not None else None

    async def bind(self, name: str | None = None, *, field: str = "model",
                   keep_alive_s: float | None = None, set_keep_alive: bool = False) -> Bound:
        """The model ``name`` (or the default), loaded if needed, leased until :meth:`Bound.release`.

        Raises:
            NotFound: no such model (router mode); InvalidRequest: no name and no default.
            Unavailable: shutting down. Overloaded: no room to load it (503, Retry-After).
            ServerError: its load failed.
        """
        if self.shutting_down:
            raise Unavailable("the server is shutting down")
        self.registry.find(name, field=field)  # an unknown name fails now
        hosted, runtime = await self.registry.acquire_resolved(
            lambda: self.registry.find(name, field=field), keep_alive_s=keep_alive_s,
            set_keep_alive=set_keep_alive)
        return Bound(self, hosted, runtime)

    def peek(self, name: str | None = None, *, field: str = "model") -> Hosted:
        """The model ``name`` names, without loading it (raises as :meth:`bind`)."""
        return self.registry.find(name, field=field)

    @contextlib.asynccontextmanager
    async def use(self, name: str | None = None, **kwargs: Any) -> AsyncIterator[Bound]:
        bound = await self.bind(name, **kwargs)
        try:
            yield bound
        finally:
            bound.release()

    @contextmanager
    def lease(self) -> Iterator[RuntimeLike]:
        """The default model's runtime if it is loaded, kept loaded until the block ends.

        Raises:
            Unavailable: it is not loaded, or it is being unloaded.
        """
        hosted = self.registry.default_hosted
        runtime = hosted.runtime if hosted is not None else None
        if hosted is None or runtime is None:
            raise Unavailable("no model is loaded")
        if not runtime.leases.acquire():
            raise Unavailable("the model is being unloaded")
        try:
            yield runtime
        finally:
            self.registry.release(hosted, runtime)

    async def submit(self, request: CompletionRequest, model: str | None = None) -> Completion:
        """Bind ``model`` (or the default) and submit ``request`` to it."""
        async with self.use(model) as bound:
            return await bound.submit(request)

    async def unload(self, name: str | None = None) -> None:
        """Unload one model (ending its requests), or with no name every loaded one."""
        if name is None:
            await self.registry.unload_all()
        else:
            await self.registry.unload(self.registry.find(name))

    async def switch_model(self, path: Path | None, **overrides: Any) -> None:
        """goinfer's load: unload every model (ending their requests), then load ``path``
        (a known model's file; None: unload only), which becomes the default model.

        ``overrides`` replace that model's settings (``ctx_size``, ``embedding``,
        ``n_gpu_layers``).

        Raises:
            ModelLoadError: the new model could not be loaded (no model is loaded then).
            Conflict: a model stayed in use past the drain time.
        """
        registry = self.registry
        if path is None:
            await registry.unload_all()
            return
        hosted = registry.by_path(path)
        if overrides:  # before anything can load it: a request arriving meanwhile may
            registry.replace_spec(hosted, hosted.spec.with_overrides(**overrides))
        registry.default = hosted.name  # requests arriving meanwhile wait for the new model
        await registry.unload_all()
        try:
            await registry.ensure_loaded(hosted)
        except ServerError as exc:
            raise ModelLoadError(str(exc)) from None

    async def load_model(self, path: Path, *, field: str, **overrides: Any) -> None:
        """goinfer's load of the model file ``path``; ``field`` names the request field in errors.

        Raises:
            InvalidRequest: the file is not a loadable GGUF model (checked before
                the loaded models are unloaded).
            ServerError: llama.cpp failed to load it; no model is loaded then.
        """
        try:
            check_model_file(path)
        except ModelLoadError as exc:
            raise InvalidRequest(f"invalid value for '{field}': {exc}", param=field) from None
        try:
            await self.switch_model(path, **overrides)
        except ModelLoadError as exc:
            raise ServerError(f"could not load {path.name!r}: {exc}") from None

    def _stop_running(self, runtime: RuntimeLike) -> None:
        for completion in list(self._running.values()):
            if completion.prepared.runtime is runtime:
                completion.request_stop(Interruption.MODEL_CHANGED)

    @property
    def defaults(self) -> Defaults:
        """What a request falls back to: ``-n``, ``--seed`` and the default sampling flags."""
        return Defaults(n_predict=self.settings.n_predict, seed=self.settings.seed,
                        constraint=server_constraint(self.settings),
                        n_keep=self.settings.keep, cache_prompt=self.settings.cache_prompt,
                        n_cache_reuse=self.settings.cache_reuse,
                        sampling=replace(SamplingParams(seed=self.settings.seed),
                                         **dict[str, Any](self.settings.sampling),
                                         dry_given=any(name.startswith("dry_") for name, _
                                                       in self.settings.sampling)))

    # --- submitting ----------------------------------------------------------------
    async def _submit(self, bound: Bound, request: CompletionRequest) -> Completion:
        """Prepare ``request`` for ``bound``'s model and register it (see :meth:`Bound.submit`)."""
        if self.shutting_down:
            raise Unavailable("the server is shutting down")
        runtime, hosted = bound.runtime, bound.hosted
        limit = len(runtime.engine.slots) + self.settings.max_queue
        if sum(1 for c in list(self._running.values()) if c.prepared.runtime is runtime) + \
                self._preparing >= limit:
            raise Overloaded(f"{limit} requests are running or waiting (--max-queue "
                             f"{self.settings.max_queue}); retry later", retry_after_s=1)
        if not runtime.engine.alive:
            raise Unavailable("the engine is not running")
        if not runtime.leases.acquire():  # held until the completion ends
            raise Unavailable("the model is being unloaded")
        built: list[Prepared] = []

        def work() -> Prepared:
            prepared = prepare(runtime, request, schema_strict=self.settings.schema_strict,
                               schema_mode=self.settings.schema_mode,
                               schema_dry=self.settings.schema_dry)
            built.append(prepared)
            return prepared

        self._preparing += 1
        try:
            prepared = await self._offload(work)
            # a client that left meanwhile is noticed here: its sampler is freed below and
            # nothing reaches the engine (the worker could not be abandoned: it writes C memory)
            await trio.lowlevel.checkpoint_if_cancelled()
            if self.shutting_down:
                raise Unavailable("the server is shutting down")
            if hosted.runtime is not runtime or hosted.status is not ModelStatus.LOADED:
                raise ModelChanged("the model changed while the request was being prepared")
        except BaseException:
            for p in built:
                p.sampler.close()
            self.registry.release(hosted, runtime)
            raise
        finally:
            self._preparing -= 1
        job_id = next(self._ids)
        timeout = self.settings.request_timeout_s
        completion = Completion(
            id=job_id, prepared=prepared, model_name=bound.name,
            deadline=trio.current_time() + timeout if timeout else float("inf"),
            current=lambda: hosted.runtime,
            on_end=lambda job_id: self._ended(job_id, hosted, runtime))
        self._running[job_id] = completion
        return completion

    async def fingerprint(self, path: Path) -> str:
        """The model file's identity (:func:`app.engine.model.fingerprint`), read once per file
        in a worker."""
        known = self._fingerprints.get(path)
        if known is None:
            known = self._fingerprints[path] = await trio.to_thread.run_sync(fingerprint, path)
        return known

    def _ended(self, job_id: int, hosted: Hosted, runtime: RuntimeLike) -> None:
        # also called by a completion's finalizer, possibly on another thread
        self._running.pop(job_id, None)
        runtime.leases.release()
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self.registry.released, hosted)

    def reap_stalled(self) -> int:
        """Abandon completions whose client has not taken a piece for ``--send-timeout``.

        A client that keeps its connection open but stops reading would otherwise hold
        its slot (and the model) for as long as it likes. Returns how many were abandoned.
        """
        now = trio.current_time()
        stalled = [c for c in self._running.values()
                   if c.stalled(now, self.settings.send_timeout_s)]
        for completion in stalled:
            log.warning("request %d: the client took no data for %.0f s; freeing its slot",
                        completion.id, self.settings.send_timeout_s)
            completion.abandon()
        return len(stalled)

    async def watch_stalled(self, interval_s: float = 1.0) -> None:
        """Run :meth:`reap_stalled` every ``interval_s`` (start it in the server's nursery)."""
        while True:
            await trio.sleep(interval_s)
            self.reap_stalled()

    def running(self, job_id: int) -> Completion | None:
        return self._running.get(job_id)

    def abort(self, job_id: int) -> bool:
        """End the running completion ``job_id``; False when there is none."""
        completion = self._running.get(job_id)
        if completion is None:
            return False
        completion.request_stop(Interruption.ABORTED)
        return True

    def begin_shutdown(self) -> None:
        """Refuse new requests; running ones continue until :meth:`stop_all`."""
        self.shutting_down = True

    def stop_all(self) -> None:
        for completion in list(self._running.values()):
            completion.request_stop(Interruption.SHUTDOWN)



def fixed_registry(settings: Settings, runtime: RuntimeLike | None) -> Registry:
    """A registry holding one runtime that is already loaded and cannot be reloaded."""
    async def close(rt: RuntimeLike) -> None:
        await trio.to_thread.run_sync(rt.close)

    path = settings.model_path or Path("model.gguf")
    name = settings.alias_names[0] if settings.alias_names else path.name
    specs = [ModelSpec(name, path)] if runtime is not None else []
    registry = Registry(specs, load=None, close=close,
                        default=specs[0].name if specs else None,
                        max_waiting=settings.max_queue, wait_s=settings.models_wait_s)
    if runtime is not None:
        registry.adopt(registry._hosted[specs[0].name], runtime)
    return registry
