"""One loaded model with everything that runs it: context, engine thread, embedder, template."""

from __future__ import annotations

from dataclasses import dataclass

import trio

from app.bridge import TrioOutbox
from app.chat import ChatTemplate, select
from app.engine.context import Context, ContextConfig
from app.engine.embedding import Embedder
from app.engine.model import Model
from app.engine.scheduler import Engine
from app.settings import Settings


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
        eos_token=model.token_text(info.eos) if info.eos >= 0 else "")


@dataclass(eq=False)
class Runtime:
    model: Model
    context: Context
    engine: Engine
    chat: ChatTemplate
    embedder: Embedder | None = None

    @classmethod
    def start(cls, settings: Settings, model: Model,
              template: ChatTemplate | None = None) -> Runtime:
        """Create the context and start the engine thread. Call from the Trio thread."""
        context = Context(model, ContextConfig(
            n_ctx=settings.ctx_size, n_batch=settings.batch_size, n_seq_max=settings.parallel,
            threads=settings.threads, threads_batch=settings.threads_batch,
            flash_attn=settings.flash_attn))
        outbox = TrioOutbox(trio.lowlevel.current_trio_token())
        engine = Engine(model, context, outbox, n_slots=settings.parallel,
                        slot_ctx=min(settings.slot_ctx, context.n_ctx_seq))
        outbox.on_gone = engine.cancel
        engine.start()
        embedder = None
        if settings.embedding:
            embedder = Embedder(model, n_ctx=min(settings.slot_ctx, 8192), threads=settings.threads)
        return cls(model, context, engine, template or chat_template_for(settings, model), embedder)

    def close(self) -> None:
        """Stop the engine thread and free the context, the embedder and the model. Blocking."""
        self.engine.stop()
        self.context.close()
        if self.embedder is not None:
            self.embedder.close()
        self.model.close()
