"""Sentence embeddings on a context of their own (``--embedding``; ``--pooling``).

The embedding context is separate from the generation context, so embedding
requests never disturb running generations. One input is decoded at a time
(a lock serializes callers; the C calls release the GIL) and its pooled vector
is L2-normalised.
"""

from __future__ import annotations

import math
import threading

import llama_cpp.llama_cpp as C
import numpy as np

from app.engine.model import Model

#: the poolings that give one vector per input (llama.cpp's --pooling; rank is a reranker's)
POOLING = {"mean": C.LLAMA_POOLING_TYPE_MEAN, "cls": C.LLAMA_POOLING_TYPE_CLS,
           "last": C.LLAMA_POOLING_TYPE_LAST}


class EmbeddingError(Exception):
    """An input the embedding context cannot take (empty, or longer than its context)."""


class Embedder:
    """Mean-pooled, L2-normalised embeddings of token sequences."""

    def __init__(self, model: Model, *, n_ctx: int, threads: int | None = None,
                 pooling: str = "mean") -> None:
        params = C.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_ctx
        params.n_ubatch = n_ctx  # pooling needs a whole input in one micro-batch
        params.n_seq_max = 1
        params.embeddings = True
        params.pooling_type = POOLING[pooling]
        if threads:
            params.n_threads = params.n_threads_batch = threads
        ptr = C.llama_init_from_model(model.ptr, params)
        if not ptr:
            raise RuntimeError("llama.cpp could not create the embedding context")
        self._ctx = ptr
        self._mem = C.llama_get_memory(ptr)
        self._batch = C.llama_batch_init(n_ctx, 0, 1)
        self.n_ctx = n_ctx
        self.n_embd = int(C.llama_model_n_embd(model.ptr))
        self._lock = threading.Lock()

    def embed(self, tokens: list[int]) -> list[float]:
        """The normalised embedding of one input. Blocking; call from a worker thread.

        Raises:
            EmbeddingError: the input is empty or does not fit the context.
        """
        if not tokens:
            raise EmbeddingError("input is empty")
        if len(tokens) > self.n_ctx:
            raise EmbeddingError(f"input of {len(tokens)} tokens exceeds the embedding context "
                                 f"of {self.n_ctx}")
        with self._lock:
            C.llama_memory_clear(self._mem, True)
            b = self._batch
            for i, tok in enumerate(tokens):
                b.token[i] = tok
                b.pos[i] = i
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = 0
                b.logits[i] = 1
            b.n_tokens = len(tokens)
            rc = C.llama_decode(self._ctx, b)
            if rc != 0:
                raise EmbeddingError(f"decoding failed ({rc})")
            ptr = C.llama_get_embeddings_seq(self._ctx, 0)
            if not ptr:
                raise EmbeddingError("the model produced no pooled embedding")
            vec = np.ctypeslib.as_array(ptr, shape=(self.n_embd,)).astype(np.float64)
        norm = math.sqrt(float(np.dot(vec, vec)))
        out: list[float] = (vec / norm if norm > 0 else vec).tolist()
        return out

    def close(self) -> None:
        if self._ctx:
            C.llama_batch_free(self._batch)
            C.llama_free(self._ctx)
            self._ctx = None
