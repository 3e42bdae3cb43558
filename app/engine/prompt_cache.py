"""The host-memory prompt cache (``--cache-ram``): slot states kept in RAM, LRU.

When a slot is about to drop KV it holds (a new request with another prefix
gets the slot), its sequence state (``llama_state_seq_get_data``: the KV cells
of every layer and their positions) is copied into host memory with its
tokens. A later request whose prompt shares a longer prefix with a saved state
(or with the cells of another slot, busy or not) than with its own slot's gets
that state copied into its slot (``llama_state_seq_set_data`` into the slot's
sequence; measured on the default model: 12.5 MB for 1,500 tokens, 22 ms to
save, 14 ms to restore, against 5.6 s to evaluate them), and evaluates only the
rest. Copies go through host memory because a partial ``seq_cp`` between
separate KV streams aborts the process.

Used on the engine thread only.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass

#: states shorter than this are not worth keeping
MIN_TOKENS = 32
#: a saved state is used only when it beats the slot's own prefix by this many tokens
MIN_GAIN = 16


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """The length of the common prefix, compared in C-speed slices of 256."""
    n = min(len(a), len(b))
    i = 0
    while i < n:
        j = min(i + 256, n)
        sa, sb = a[i:j], b[i:j]
        if type(sa) is not type(sb):  # a list never equals a tuple
            sa, sb = tuple(sa), tuple(sb)
        if sa == sb:
            i = j
            continue
        while i < j and a[i] == b[i]:
            i += 1
        return i
    return n


@dataclass(eq=False, slots=True)
class Entry:
    tokens: tuple[int, ...]
    data: bytearray


@dataclass
class CacheStats:
    hits: int = 0  # requests that got a state from the cache or another slot
    tokens_restored: int = 0  # prompt tokens those requests did not evaluate
    saves: int = 0
    evictions: int = 0


class PromptCache:
    """Saved sequence states bounded by ``limit_bytes`` (None: unbounded), least recently used
    out first."""

    def __init__(self, limit_bytes: int | None) -> None:
        self.limit = limit_bytes
        self._entries: collections.OrderedDict[int, Entry] = collections.OrderedDict()
        self._next = 0
        self.bytes = 0
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self._entries)

    def best(self, prompt: Sequence[int]) -> tuple[Entry | None, int]:
        """The entry sharing the longest prefix with ``prompt`` (most recent on ties)."""
        found: Entry | None = None
        best = 0
        for entry in reversed(self._entries.values()):
            if not entry.tokens or not prompt or entry.tokens[0] != prompt[0]:
                continue
            n = common_prefix(entry.tokens, prompt)
            if n > best:
                found, best = entry, n
        return found, best

    def touch(self, entry: Entry) -> None:
        for key, value in self._entries.items():
            if value is entry:
                self._entries.move_to_end(key)
                return

    def covers(self, tokens: Sequence[int]) -> bool:
        """Whether a saved state already holds ``tokens`` (or a longer state starting with them)."""
        n = len(tokens)
        return any(len(e.tokens) >= n and common_prefix(e.tokens, tokens) == n
                   for e in self._entries.values())

    def put(self, tokens: Sequence[int], data: bytearray) -> bool:
        """Keep a state; drops the states it supersedes and the oldest ones beyond the limit."""
        size = len(data)
        if len(tokens) < MIN_TOKENS or (self.limit is not None and size > self.limit):
            return False
        key_tokens = tuple(tokens)
        for key, entry in list(self._entries.items()):
            n = len(entry.tokens)
            if n <= len(key_tokens) and key_tokens[:n] == entry.tokens:
                self._drop(key)  # a prefix of the new state: superseded
        while self.limit is not None and self._entries and self.bytes + size > self.limit:
            self._drop(next(iter(self._entries)))
            self.stats.evictions += 1
        self._entries[self._next] = Entry(key_tokens, data)
        self._next += 1
        self.bytes += size
        self.stats.saves += 1
        return True

    def _drop(self, key: int) -> None:
        entry = self._entries.pop(key)
        self.bytes -= len(entry.data)

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0
