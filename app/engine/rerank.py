"""Reranking (llama.cpp's ``--reranking``): a relevance score per (query, document) pair.

A reranker is a model whose GGUF declares rank pooling (``<arch>.pooling_type`` = 4, which
llama.cpp's converter writes for reranking models): its classifier head turns the pooled
sequence into a score. llama.cpp aborts the process when rank pooling meets a model without
that head, so a model that does not declare it is refused before any context is made.

Like the embedder it has a context of its own and decodes one pair at a time under a lock.
"""

from __future__ import annotations

import threading

import llama_cpp.llama_cpp as C

from app.engine.model import Model

#: llama.cpp's LLAMA_POOLING_TYPE_RANK
RANK_POOLING = 4


class RerankError(Exception):
    """The model is not a reranker, or a pair does not fit the context."""


def is_reranker(model: Model) -> bool:
    return model.meta(f"{model.info.architecture}.pooling_type") == str(RANK_POOLING)


def pair_tokens(model: Model, query: str, document: str) -> list[int]:
    """The tokens of one pair as llama.cpp builds them: the model's ``rerank`` template with
    ``{query}`` and ``{document}``, else BOS query EOS SEP document EOS (each as the vocabulary
    asks)."""
    template = C.llama_model_chat_template(model.ptr, b"rerank")
    if template:
        text = template.decode("utf-8", "replace")
        text = text.replace("{query}", query).replace("{document}", document)
        return model.tokenize(text, add_special=False, parse_special=True)
    vocab = model.vocab
    eos = int(C.llama_vocab_eos(vocab))
    if eos < 0:
        eos = int(C.llama_vocab_sep(vocab))
    out: list[int] = []
    if C.llama_vocab_get_add_bos(vocab):
        out.append(int(C.llama_vocab_bos(vocab)))
    out += model.tokenize(query, add_special=False, parse_special=False)
    if C.llama_vocab_get_add_eos(vocab):
        out.append(eos)
    if C.llama_vocab_get_add_sep(vocab):
        out.append(int(C.llama_vocab_sep(vocab)))
    out += model.tokenize(document, add_special=False, parse_special=False)
    if C.llama_vocab_get_add_eos(vocab):
        out.append(eos)
    return out


class Reranker:
    """Scores token sequences with the model's classifier head (rank pooling)."""

    def __init__(self, model: Model, *, n_ctx: int, threads: int | None = None) -> None:
        if not is_reranker(model):
            raise RerankError(f"--reranking: {model.info.path.name} is not a reranker (its GGUF "
                              "does not declare rank pooling)")
        params = C.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_ctx
        params.n_ubatch = n_ctx  # pooling needs a whole pair in one micro-batch
        params.n_seq_max = 1
        params.embeddings = True
        params.pooling_type = RANK_POOLING
        if threads:
            params.n_threads = params.n_threads_batch = threads
        ptr = C.llama_init_from_model(model.ptr, params)
        if not ptr:
            raise RerankError("llama.cpp could not create the reranking context")
        self._model = model
        self._ctx = ptr
        self._mem = C.llama_get_memory(ptr)
        self._batch = C.llama_batch_init(n_ctx, 0, 1)
        self.n_ctx = n_ctx
        self._lock = threading.Lock()

    def tokens(self, query: str, document: str) -> list[int]:
        return pair_tokens(self._model, query, document)

    def score(self, tokens: list[int]) -> float:
        """The relevance score of one pair's tokens. Blocking; call from a worker thread.

        Raises:
            RerankError: the pair is empty or does not fit the context.
        """
        if not tokens:
            raise RerankError("the pair is empty")
        if len(tokens) > self.n_ctx:
            raise RerankError(f"query and document are {len(tokens)} tokens, over the "
                              f"reranking context of {self.n_ctx}")
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
            if C.llama_decode(self._ctx, b) != 0:
                raise RerankError("decoding the pair failed")
            ptr = C.llama_get_embeddings_seq(self._ctx, 0)
            if not ptr:
                raise RerankError("the model produced no score")
            return float(ptr[0])

    def close(self) -> None:
        if self._ctx:
            C.llama_batch_free(self._batch)
            C.llama_free(self._ctx)
            self._ctx = None
