"""The llama context and the batch: created and used on the engine thread only."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass

import llama_cpp.llama_cpp as C

from app.engine.model import Model
from app.settings import KV_CACHE_TYPES


@dataclass(frozen=True, slots=True)
class ContextConfig:
    n_ctx: int
    n_batch: int
    n_seq_max: int
    threads: int | None = None
    threads_batch: int | None = None
    flash_attn: str = "off"  # on, off, auto (llama.cpp decides per device)
    type_k: str = "f16"  # KV cache element types, by ggml's names (KV_CACHE_TYPES)
    type_v: str = "f16"
    kv_unified: bool = False
    n_ubatch: int | None = None  # physical micro-batch (llama.cpp's -ub); None: n_batch



def _native_abort_check() -> object | None:
    """A C function ggml can call as its abort callback without Python: libc's ``strlen``, on
    a two-byte flag (``"\\0"``: go on, ``"x"``: abort). A Python callback would take the GIL
    at every graph node (see the engine notes); ``strlen`` of the flag is a plain read, from
    whichever compute thread checks it. ``bool`` is returned in the low byte of the return
    register on the ABIs llama.cpp runs on here, and ``strlen`` of the flag is 0 or 1. None
    when libc cannot be found: then a decode is not interrupted and cancellation waits for it
    to end."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.cast(ctypes.CDLL(name).strlen, C.ggml_abort_callback)
    except (OSError, AttributeError):
        return None


_ABORT_CHECK = _native_abort_check()


class ContextError(RuntimeError):
    """llama.cpp refused to create the context (its reason is in its log)."""


class Context:
    """A llama context with ``n_seq_max`` sequences, each with its own KV stream.

Separate streams (``kv_unified=False``, the default) keep one sequence's attention
from spanning the others' cells: measured here, a lone stream generates ~20 % faster
than with one unified pool, and a sequence's cells never move with its
neighbours. Each sequence gets ``n_ctx / n_seq_max`` cells. ``--kv-unified`` asks
for the one shared buffer instead; the scheduler still holds each slot to its
share, so a slot never runs out of cells because of another.
"""

    def __init__(self, model: Model, cfg: ContextConfig) -> None:
        params = C.llama_context_default_params()
        params.n_ctx = cfg.n_ctx
        params.n_batch = cfg.n_batch
        params.n_ubatch = min(cfg.n_ubatch or cfg.n_batch, cfg.n_batch)
        params.n_seq_max = cfg.n_seq_max
        threads = cfg.threads or os.cpu_count() or 1
        params.n_threads = threads
        params.n_threads_batch = cfg.threads_batch or threads
        params.flash_attn_type = {"on": 1, "off": 0, "auto": -1}[cfg.flash_attn]
        params.kv_unified = cfg.kv_unified
        params.type_k = KV_CACHE_TYPES[cfg.type_k]
        params.type_v = KV_CACHE_TYPES[cfg.type_v]
        # Keep the whole sliding-window cache so a slot's prefix can be reused
        # after a partial removal (Gemma 3 uses sliding-window attention).
        params.swa_full = True
        params.no_perf = True
        ptr = C.llama_init_from_model(model.ptr, params)
        if not ptr:
            raise ContextError(
                f"llama.cpp could not create a context of {cfg.n_ctx} cells for "
                f"{cfg.n_seq_max} slots (KV cache {cfg.type_k}/{cfg.type_v}, flash attention "
                f"{cfg.flash_attn}): too little memory, or cache types this model's head size "
                "does not divide (run with -v for llama.cpp's reason)")
        self.ptr = ptr
        self.mem = C.llama_get_memory(ptr)
        self.n_ctx = int(C.llama_n_ctx(ptr))
        self.n_ctx_seq = int(C.llama_n_ctx_seq(ptr))
        self.n_batch = cfg.n_batch
        self.n_seq_max = cfg.n_seq_max
        self.threads = threads
        self.threads_batch = params.n_threads_batch
        self._batch = C.llama_batch_init(cfg.n_batch, 0, 1)
        self.n_rows = 0
        # set from any thread (abort_decode), read by ggml between graph nodes; the context
        # holds the buffer as long as llama.cpp may read it (until llama_free)
        self._abort_flag = ctypes.create_string_buffer(2)
        self.can_abort = _ABORT_CHECK is not None
        if _ABORT_CHECK is not None:
            C.llama_set_abort_callback(ptr, _ABORT_CHECK,
                                       ctypes.cast(self._abort_flag, ctypes.c_void_p))

    # --- batch -------------------------------------------------------------
    def clear_batch(self) -> None:
        self.n_rows = 0

    def add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        """Append one row; returns its index. The caller keeps rows < n_batch."""
        i = self.n_rows
        if i >= self.n_batch or not 0 <= seq < self.n_seq_max:
            raise ValueError("batch row out of range")
        b = self._batch
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq
        b.logits[i] = 1 if logits else 0
        self.n_rows = i + 1
        return i

    def decode(self) -> int:
        """llama_decode of the batch: 0, 1 (no KV room), 2 (aborted by :meth:`abort_decode`:
        llama.cpp has removed the positions of the micro-batch it stopped in, the earlier
        ones of this batch stay), < 0 an error."""
        self._batch.n_tokens = self.n_rows
        rc = int(C.llama_decode(self.ptr, self._batch))
        self._abort_flag[0] = b"\0"  # an abort asked after this decode ended is void
        return rc

    def abort_decode(self) -> None:
        """Ask the decode now running (if any) to stop at its next graph node. Any thread."""
        self._abort_flag[0] = b"x"

    def set_threads(self, n: int) -> None:
        """Decode with ``n`` threads (the configured counts when ``n`` is ``threads``)."""
        batch = self.threads_batch if n >= self.threads else n
        C.llama_set_n_threads(self.ptr, n, batch)

    # --- per-sequence memory ----------------------------------------------
    def seq_rm(self, seq: int, p0: int, p1: int = -1) -> bool:
        return bool(C.llama_memory_seq_rm(self.mem, seq, p0, p1))

    def seq_clear(self, seq: int) -> None:
        C.llama_memory_seq_rm(self.mem, seq, -1, -1)

    def seq_add(self, seq: int, p0: int, p1: int, delta: int) -> None:
        """Move the positions ``[p0, p1)`` of ``seq`` by ``delta`` (a context shift)."""
        C.llama_memory_seq_add(self.mem, seq, p0, p1, delta)

    @property
    def can_shift(self) -> bool:
        """Whether this context's memory can move positions (context shift, cache reuse)."""
        return bool(C.llama_memory_can_shift(self.mem))

    def save_seq(self, seq: int, path: str, tokens: list[int]) -> int:
        """Write sequence ``seq``'s KV and its tokens to ``path``; returns bytes written (0: failed)."""
        arr = (C.llama_token * max(1, len(tokens)))(*tokens)
        return int(C.llama_state_seq_save_file(self.ptr, path.encode(), seq, arr, len(tokens)))

    def load_seq(self, seq: int, path: str, capacity: int) -> list[int] | None:
        """Replace sequence ``seq`` with the state in ``path``; its tokens, or None on failure."""
        self.seq_clear(seq)
        arr = (C.llama_token * capacity)()
        count = ctypes.c_size_t(0)
        n = C.llama_state_seq_load_file(self.ptr, path.encode(), seq, arr, capacity,
                                        ctypes.byref(count))
        if n == 0:
            self.seq_clear(seq)
            return None
        return list(arr[: count.value])

    def get_seq_state(self, seq: int) -> bytearray | None:
        """A copy of sequence ``seq``'s state (KV cells and positions), or None on failure."""
        size = int(C.llama_state_seq_get_size(self.ptr, seq))
        if size <= 0:
            return None
        data = bytearray(size)
        buf = (ctypes.c_uint8 * size).from_buffer(data)
        written = int(C.llama_state_seq_get_data(self.ptr, buf, size, seq))
        del buf  # release the export of data's buffer
        return data if written == size else None

    def set_seq_state(self, seq: int, data: bytearray) -> bool:
        """Replace sequence ``seq`` with a state from :meth:`get_seq_state` of this context."""
        self.seq_clear(seq)
        buf = (ctypes.c_uint8 * len(data)).from_buffer(data)
        read = int(C.llama_state_seq_set_data(self.ptr, buf, len(data), seq))
        del buf
        if read == 0:
            self.seq_clear(seq)
            return False
        return True

    def used_cells(self) -> int:
        total = 0
        for seq in range(self.n_seq_max):
            pos = int(C.llama_memory_seq_pos_max(self.mem, seq))
            total += pos + 1 if pos >= 0 else 0
        return total

    def close(self) -> None:
        if self.ptr:
            C.llama_batch_free(self._batch)
            C.llama_free(self.ptr)
            self.ptr = None

    @property
    def raw(self) -> ctypes.c_void_p:
        return self.ptr  # type: ignore[no-any-return]
