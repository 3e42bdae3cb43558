"""Between the HTTP layer and the engine: the loaded model's life and the running requests.

:meth:`Service.submit` does all fallible work for a completion (waiting for a
model that is loading, tokenizing, checking the context, converting and parsing
its grammar, building the sampler in a worker thread) and returns a
:class:`~app.running.Completion`: a handler that got one can send its 200, and
every error knowable before the first token has already been raised as an
:class:`~app.errors.ApiError`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import logging
import weakref
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import trio

from app import chat
from app.completion import CompletionRequest, Interruption
from app.engine import ports, scheduler
from app.engine.embedding import Embedder, EmbeddingError
from app.engine.model import Model, ModelLoadError, check_model_file
from app.engine.slots import SlotInfo
from app.errors import (
    Conflict,
    InvalidRequest,
    NotSupported,
    Overloaded,
    ServerError,
    SlotBusy,
    SlotFileError,
    Unavailable,
)
from app.prepare import Prepared, prepare
from app.requests import Defaults
from app.running import Completion
from app.runtime import ModelLike, Runtime, RuntimeLike
from app.settings import Settings

T = TypeVar("T")
Offload = Callable[[Callable[[], Prepared]], Awaitable[Prepared]]

log = logging.getLogger(__name__)

#: how long an unload or a switch waits for running requests to end after asking them to
SWITCH_DRAIN_S = 10.0
#: how long a slot action may wait for the engine thread
SLOT_ACTION_TIMEOUT_S = 60.0


class Service:
    """Owns the loaded model's runtime and the registry of submitted completions.

    The model can be switched or unloaded while the server runs (goinfer's
    routes): running requests then end like an abort, marked
    ``"model_changed": true``; requests arriving during a load wait for the new
    model; with no model loaded they get 503.
    """

    def __init__(self, settings: Settings, runtime: RuntimeLike | None, *,
                 offload: Offload = trio.to_thread.run_sync) -> None:
        self.settings = settings
        self._offload = offload  # runs a blocking preparation (tests run it inline)
        self.runtime = runtime
        self.loading = False
        self._ready = trio.Event()  # cleared while a model loads
        self._ready.set()
        self._switch = trio.Lock()
        self._ids = itertools.count(1)
        self._running: weakref.WeakValueDictionary[int, Completion] = weakref.WeakValueDictionary()
        self._preparing = 0
        self._idle_waiters: list[trio.Event] = []
        self._token = trio.lowlevel.current_trio_token()
        self.shutting_down = False
        self.drain_s = SWITCH_DRAIN_S

    # --- the loaded model --------------------------------------------------------
    def _rt(self) -> RuntimeLike:
        if self.runtime is None:
            raise Unavailable("loading model" if self.loading else "no model is loaded")
        return self.runtime

    @property
    def model(self) -> ModelLike:
        return self._rt().model

    @contextmanager
    def lease(self) -> Iterator[RuntimeLike]:
        """The loaded runtime, kept alive (not unloaded) until the block ends.

        Raises:
            Unavailable: no model, or it is being unloaded.
        """
        runtime = self._rt()
        if not runtime.leases.acquire():
            raise Unavailable("the model is being unloaded")
        try:
            yield runtime
        finally:
            runtime.leases.release()

    async def with_model(self, work: Callable[[RuntimeLike], T]) -> T:
        """Run ``work(runtime)`` in a worker thread under a lease (tokenizing, embedding...)."""
        with self.lease() as runtime:
            return await trio.to_thread.run_sync(work, runtime)

    @property
    def engine(self) -> scheduler.Engine:
        return self._rt().engine

    @property
    def chat(self) -> chat.ChatTemplate:
        return self._rt().chat

    @property
    def embedder(self) -> Embedder | None:
        return self._rt().embedder

    async def embed(self, token_lists: list[list[int]]) -> list[list[float]]:
        """Embed each token list in a worker thread.

        Raises:
            NotSupported: embeddings are off.
            InvalidRequest: an input does not fit, naming ``input[i]``.
        """
        with self.lease() as runtime:
            embedder = runtime.embedder
            if embedder is None:
                raise NotSupported("embeddings are disabled; start the server with --embedding")
            vectors = []
            for i, tokens in enumerate(token_lists):
                try:
                    vectors.append(await trio.to_thread.run_sync(embedder.embed, tokens))
                except EmbeddingError as exc:
                    raise InvalidRequest(f"invalid value for 'input[{i}]': {exc}",
                                         param=f"input[{i}]") from None
            return vectors

    @property
    def model_name(self) -> str:
        return self.settings.alias or self.model.info.path.name

    @property
    def defaults(self) -> Defaults:
        return Defaults(n_predict=self.settings.n_predict, seed=self.settings.seed)

    async def load_model(self, path: Path, *, field: str, **overrides: Any) -> None:
        """Switch to the model file ``path``; ``field`` names the request field in errors.

        Raises:
            InvalidRequest: the file is not a loadable GGUF model (checked before
                the current model is unloaded).
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

    async def switch_model(self, path: Path | None, **overrides: Any) -> None:
        """Unload the current model (ending its requests) and load ``path`` (None: unload only).

        ``overrides`` replace settings for the new model (``ctx_size``, ``embedding``,
        ``n_gpu_layers``). On a load failure no model is loaded.

        Raises:
            ModelLoadError: the new model could not be loaded.
        """
        async with self._switch:
            self.loading = path is not None
            self._ready = trio.Event()
            old, self.runtime = self.runtime, None
            for completion in list(self._running.values()):
                completion.request_stop(Interruption.MODEL_CHANGED)
            with trio.move_on_after(self.drain_s):
                await self._wait_idle()
            if old is not None:
                if not await trio.to_thread.run_sync(old.leases.drain, self.drain_s):
                    self.runtime, self.loading = old, False
                    self._ready.set()
                    raise Conflict(f"the model is still in use by {old.leases.count} operations "
                                   f"after {self.drain_s:g} s; it stays loaded, try again")
                await trio.to_thread.run_sync(old.close)
            if path is None:
                self._ready.set()  # nothing to wait for: requests get 503 at once
                return
            try:
                settings = replace(self.settings, model_path=path, **overrides)
                model = await trio.to_thread.run_sync(
                    lambda: Model(path, n_gpu_layers=settings.n_gpu_layers,
                                  verbose=settings.verbose))
                self.runtime = Runtime.start(settings, model)
                self.settings = settings
            finally:
                self.loading = False
                self._ready.set()

    # --- submitting ----------------------------------------------------------------
    async def submit(self, request: CompletionRequest) -> Completion:
        """Prepare ``request`` and register it; waits while a model is loading.

        Cancellation: a client that leaves while its request is prepared costs
        the rest of that preparation (it runs in a worker thread), nothing more.

        Raises:
            InvalidRequest: and its subclasses, naming the field.
            Unavailable: shutting down, no model loaded, the model changed
                meanwhile, or the engine is not running.
        """
        if self.shutting_down:
            raise Unavailable("the server is shutting down")
        await self._ready.wait()
        runtime = self._rt()
        limit = len(runtime.engine.slots) + self.settings.max_queue
        if len(self._running) + self._preparing >= limit:
            raise Overloaded(f"{limit} requests are running or waiting (--max-queue "
                             f"{self.settings.max_queue}); retry later", retry_after_s=1)
        if not runtime.engine.alive:
            raise Unavailable("the engine is not running")
        if not runtime.leases.acquire():  # held until the completion ends
            raise Unavailable("the model is being unloaded")
        built: list[Prepared] = []

        def work() -> Prepared:
            prepared = prepare(runtime, request)
            built.append(prepared)
            return prepared

        self._preparing += 1
        try:
            prepared = await self._offload(work)
            if self.runtime is not runtime or self.shutting_down:
                raise Unavailable("the model changed while the request was being prepared"
                                  if not self.shutting_down else "the server is shutting down")
        except BaseException:
            for p in built:
                p.sampler.close()
            runtime.leases.release()
            raise
        finally:
            self._preparing -= 1
            self._check_idle()
        job_id = next(self._ids)
        timeout = self.settings.request_timeout_s
        completion = Completion(
            id=job_id, prepared=prepared, model_name=self.model_name,
            deadline=trio.current_time() + timeout if timeout else float("inf"),
            current=lambda: self.runtime,
            on_end=lambda job_id: self._ended(job_id, runtime))
        self._running[job_id] = completion
        return completion

    def _ended(self, job_id: int, runtime: RuntimeLike) -> None:
        # also called by a completion's finalizer, possibly on another thread
        self._running.pop(job_id, None)
        runtime.leases.release()
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._check_idle)

    def _check_idle(self) -> None:
        if not self._running and not self._preparing:
            for event in self._idle_waiters:
                event.set()
            self._idle_waiters.clear()

    async def _wait_idle(self) -> None:
        """Until no completion is registered or being prepared."""
        if self._running or self._preparing:
            event = trio.Event()
            self._idle_waiters.append(event)
            await event.wait()

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

    # --- slots ---------------------------------------------------------------------
    def slot_infos(self) -> list[SlotInfo]:
        return self.engine.slot_infos()

    async def slot_action(self, kind: str, slot_id: int, path: str = "") -> dict[str, int]:
        """Save, restore or erase an idle slot's KV (``path`` for save and restore).

        Raises:
            SlotBusy: the slot is processing a request.
            SlotFileError: the file could not be written or read.
            Unavailable: the engine did not answer in time.
        """
        engine = self.engine
        if not engine.alive:
            raise Unavailable("the engine is not running")
        future = engine.slot_action(kind, slot_id, path)
        try:
            return await trio.to_thread.run_sync(future.result, SLOT_ACTION_TIMEOUT_S)
        except ports.SlotBusy as exc:
            raise SlotBusy(str(exc)) from None
        except ports.SlotFileError as exc:
            raise SlotFileError(str(exc), param="filename") from None
        except ports.EngineStopped as exc:
            raise Unavailable(str(exc)) from None
        except concurrent.futures.TimeoutError:
            raise Unavailable("the engine did not answer the slot action in time") from None
