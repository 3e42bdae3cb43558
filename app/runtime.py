"""One loaded model with everything that runs it: context, engine thread, embedder, template."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from app.bridge import TrioOutbox
from app.chat import ChatTemplate, select
from app.completion import SamplingParams
from app.engine.context import Context, ContextConfig
from app.engine.embedding import Embedder
from app.engine.events import SamplerLike
from app.engine.lora import Adapters, LoraError
from app.engine.model import Model, ModelInfo, ModelLoadError
from app.engine.prompt_cache import PromptCache
from app.engine.rerank import Reranker, RerankError, is_reranker
from app.engine.sampling import Sampler
from app.engine.scheduler import Engine
from app.engine.threads import ThreadTuner
from app.settings import Settings
from grammar import Grammar

log = logging.getLogger(__name__)


class ModelLike(Protocol):
    """What the service needs of a loaded model (:class:`app.engine.model.Model`)."""

    n_vocab: int
    eog_ids: frozenset[int]

    @property
    def info(self) -> ModelInfo: ...

    def tokenize(self, text: str, *, add_special: bool = True,
                 parse_special: bool = True) -> list[int]: ...

    def valid_token(self, token: int) -> bool: ...

    def piece(self, token: int) -> bytes: ...

    def token_text(self, token: int) -> str: ...

    def detokenize(self, tokens: list[int]) -> str: ...

    def fim_tokens(self) -> tuple[int, int, int] | None: ...

    def fim_repo_tokens(self) -> tuple[int, int]: ...


class RuntimeLike(Protocol):
    """One loaded model and what runs it; tests put fakes behind this."""

    @property
    def model(self) -> ModelLike: ...

    @property
    def engine(self) -> Engine: ...

    @property
    def chat(self) -> ChatTemplate: ...

    @property
    def embedder(self) -> Embedder | None: ...

    @property
    def leases(self) -> Leases: ...

    @property
    def lora(self) -> Adapters | None: ...

    @property
    def reranker(self) -> Reranker | None: ...

    def new_sampler(self, params: SamplingParams, grammar: str | None,
                    parsed: Grammar | None = None) -> SamplerLike:
        """Build a request's sampler. Blocking (grammar construction): call in a worker."""
        ...

    def close(self) -> None: ...


class Leases:
    """Counts the users of a runtime's model memory; thread-safe.

    Everything that touches the model, context or embedder outside the engine
    thread (preparing a request, tokenizing, embedding, a submitted completion's
    sampler) holds a lease; :meth:`drain` refuses new ones and waits for the
    count to reach zero, so memory is freed only when no thread can touch it.
    """

    def __init__(self) -> None:
        self._n = 0
        self._closing = False
        self._cond = threading.Condition()

    @property
    def count(self) -> int:
        return self._n

    def acquire(self) -> bool:
        """Take a lease; False once the runtime is draining."""
        with self._cond:
            if self._closing:
                return False
            self._n += 1
            return True

    def release(self) -> None:
        with self._cond:
            self._n -= 1
            self._cond.notify_all()

    def drain(self, timeout_s: float) -> bool:
        """Refuse new leases, wait for held ones; False (and leases allowed again) on timeout."""
        with self._cond:
            self._closing = True
            if self._cond.wait_for(lambda: self._n == 0, timeout_s):
                return True
            self._closing = False
            return False


def chat_template_for(settings: Settings, model: Model) -> ChatTemplate:
    """The chat template the settings and the model call for.

    Raises:
        ValueError: an unknown built-in or a template that does not compile.
    """
    info = model.info
    return select(
        file=settings.chat_template_file, name=settings.chat_template,
        gguf_template=info.chat_template, architecture=info.architecture,
        bos_token=model.token_text(info.bos) if info.bos >= 0 else "",
        eos_token=model.token_text(info.eos) if info.eos >= 0 else "", jinja=settings.jinja,
        tool_format=settings.tool_call_format)


@dataclass(frozen=True, slots=True)
class Facts:
    """What ``/props`` shows of a loaded model, kept by the registry while it sleeps (is
    unloaded for idleness), so that asking does not load it again (llama.cpp's
    ``is_sleeping``)."""

    info: ModelInfo
    bos_text: str
    eos_text: str
    slot_ctx: int
    total_slots: int
    n_ctx: int
    chat_source: str
    chat_name: str


def facts_of(runtime: RuntimeLike) -> Facts:
    model, engine, info = runtime.model, runtime.engine, runtime.model.info
    return Facts(info=info,
                 bos_text=model.token_text(info.bos) if info.bos >= 0 else "",
                 eos_text=model.token_text(info.eos) if info.eos >= 0 else "",
                 slot_ctx=engine.slot_ctx, total_slots=len(engine.slots),
                 n_ctx=engine.ctx.n_ctx, chat_source=runtime.chat.source,
                 chat_name=runtime.chat.name)


@dataclass(eq=False)
class Runtime:
    model: Model
    context: Context
    engine: Engine
    chat: ChatTemplate
    embedder: Embedder | None = None
    leases: Leases = field(default_factory=Leases)
    lora: Adapters | None = None
    reranker: Reranker | None = None

    @classmethod
    def start(cls, settings: Settings, model: Model, template: ChatTemplate | None = None,
              token: trio.lowlevel.TrioToken | None = None) -> Runtime:
        """Create the context and start the engine thread.

        Call from the Trio thread, or pass the Trio loop's ``token`` from a worker.

        Raises:
            ContextError, LoraError, RerankError: the model cannot be run with these settings.
        """
        if settings.reranking and not is_reranker(model):
            raise RerankError(f"--reranking: {model.info.path.name} is not a reranker (its GGUF "
                              "does not declare rank pooling)")
        context = Context(model, ContextConfig(
            n_ctx=settings.ctx_size, n_batch=settings.batch_size, n_seq_max=settings.parallel,
            threads=settings.threads, threads_batch=settings.threads_batch,
            flash_attn=settings.flash_attn, type_k=settings.cache_type_k,
            type_v=settings.cache_type_v, kv_unified=settings.kv_unified,
            n_ubatch=settings.ubatch_size))
        try:
            adapters = Adapters(model, settings.lora) if settings.lora else None
        except LoraError:
            context.close()
            raise
        outbox = TrioOutbox(token or trio.lowlevel.current_trio_token())
        ram = settings.cache_ram_mib
        cache = None if ram == 0 else PromptCache(None if ram < 0 else ram * 1024 * 1024)
        tuner = ThreadTuner(context.threads) if settings.adapt_threads else None
        can_shift = context.can_shift
        if (settings.context_shift or settings.cache_reuse) and not can_shift:
            log.warning("this model's memory cannot shift positions: --context-shift and "
                        "--cache-reuse are off for it")
        engine = Engine(model, context, outbox, n_slots=settings.parallel,
                        # --kv-unified: one pool, and any slot may fill it (llama.cpp's);
                        # otherwise each slot holds its own -c / -np cells
                        slot_ctx=context.n_ctx_seq if settings.kv_unified
                        else min(settings.slot_ctx, context.n_ctx_seq), prompt_cache=cache,
                        tuner=tuner, context_shift=settings.context_shift, can_shift=can_shift,
                        lora=adapters)
        outbox.on_gone = engine.cancel
        engine.start()
        embedder = None
        if settings.embedding:
            embedder = Embedder(model, n_ctx=min(settings.slot_ctx, 8192), threads=settings.threads,
                                pooling=settings.pooling)
        reranker = Reranker(model, n_ctx=min(settings.slot_ctx, 8192),
                            threads=settings.threads) if settings.reranking else None
        return cls(model, context, engine, template or chat_template_for(settings, model), embedder,
                   lora=adapters, reranker=reranker)

    def new_sampler(self, params: SamplingParams, grammar: str | None,
                    parsed: Grammar | None = None) -> SamplerLike:
        return Sampler(self.model, params, grammar, parsed)

    def close(self) -> None:
        """Stop the engine thread, then free the context, the embedder and the model. Blocking.

        Call after :meth:`Leases.drain` succeeded. Memory is freed only if the engine
        thread (and its grammar workers) really stopped; otherwise it is kept, and
        logged: a leak is better than freeing memory a thread still reads.
        """
        self.engine.stop()
        if self.engine.alive or self.leases.count:
            log.error("the engine thread did not stop (or the model is still in use): "
                      "keeping the model's memory instead of freeing it under a running thread")
            return
        self.context.close()
        if self.embedder is not None:
            self.embedder.close()
        if self.reranker is not None:
            self.reranker.close()
        self.model.close()


def load_runtime(settings: Settings, token: trio.lowlevel.TrioToken,
                 cancelled: Callable[[], bool] | None = None) -> Runtime:
    """Load ``settings.model_path`` and start its runtime. Blocking: call in a worker thread.

    Raises:
        ModelLoadError: the file cannot be loaded (or the load was cancelled), its chat
            template does not compile, or the context cannot be created.
    """
    assert settings.model_path is not None
    model = Model(settings.model_path, n_gpu_layers=settings.n_gpu_layers,
                  verbose=settings.verbose, cancelled=cancelled)
    try:
        template = chat_template_for(settings, model)
        return Runtime.start(settings, model, template, token)
    except (ValueError, OSError, RuntimeError, LoraError, RerankError) as exc:
        model.close()
        raise ModelLoadError(str(exc)) from None


def return_memory() -> None:
    """Give freed heap memory back to the OS (glibc's ``malloc_trim``), after an unload."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(name).malloc_trim(0)
