"""Narrowing a grammar's full-vocabulary pass to the tokens that can possibly pass it.

When the sampled token breaks the grammar and the walk over the best candidates
finds nothing, the sampler must mask the whole vocabulary through llama.cpp's
grammar (262,144 tokens on the default model: tens of milliseconds). Most of
those tokens cannot pass because of their *first byte*: after ``{"name": "`` in
a tool call only tokens starting with the tool names' first letters can. So the
sampler follows the grammar in Python too (:class:`grammar.Recognizer`, the
same stack machine llama.cpp runs), asks which characters may come next, and
hands llama.cpp only the tokens whose first byte can start one of them.

The filter only ever removes tokens llama.cpp's grammar would reject (a token
whose first byte cannot start any allowed character, or whose text is empty),
so the allowed set, its order (ascending ids) and hence the sampled token are
those of the full pass. It switches itself off (full passes as before) when the
Python state cannot be trusted: a grammar with token references, a character
split across two tokens, or a token the Python recognizer refuses that
llama.cpp accepted.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import numpy as np
import numpy.typing as npt

from grammar import Grammar, GrammarError, Recognizer
from grammar.gbnf_ast import CharClass

#: a grammar this ambiguous (parse stacks alive at once) is not followed in Python: each token
#: would cost the engine thread too much; full passes then go over the whole vocabulary
MAX_STACKS = 64
#: above this share of the vocabulary the filter saves too little to be worth it
MAX_SHARE = 0.5
#: first-byte buckets larger than this may be narrowed by the second byte...
REFINE_OVER = 2000
#: ... while more candidates than this are left
NARROW_TARGET = 4096

# the code points each UTF-8 lead byte can start: (first, last)
_LEAD_RANGES: list[tuple[int, int] | None] = [None] * 256
for _b in range(0x80):
    _LEAD_RANGES[_b] = (_b, _b)
for _b in range(0xC2, 0xE0):
    _LEAD_RANGES[_b] = ((_b - 0xC0) << 6, ((_b - 0xC0) << 6) + 0x3F)
for _b in range(0xE0, 0xF0):  # E0 starts U+0800 at the lowest (shorter forms are invalid)
    _LEAD_RANGES[_b] = (max((_b - 0xE0) << 12, 0x800), ((_b - 0xE0) << 12) + 0xFFF)
for _b in range(0xF0, 0xF5):  # F0 starts U+10000 at the lowest
    _LEAD_RANGES[_b] = (max((_b - 0xF0) << 18, 0x10000), min(((_b - 0xF0) << 18) + 0x3FFFF,
                                                             0x10FFFF))


def _class_may_match(cls: CharClass, lo: int, hi: int) -> bool:
    """Whether some code point in ``lo..hi`` matches ``cls``."""
    if not cls.negated:
        return any(a <= hi and b >= lo for a, b in cls.ranges)
    # negated: some point of lo..hi lies outside every range
    point = lo
    for a, b in sorted(cls.ranges):
        if b < point:
            continue
        if a > point:
            return True
        point = b + 1
        if point > hi:
            return False
    return point <= hi


@functools.lru_cache(maxsize=4096)
def first_bytes(cls: CharClass) -> frozenset[int]:
    """Bytes a UTF-8 encoding of a character matching ``cls`` can start with."""
    out = set()
    for byte, span in enumerate(_LEAD_RANGES):
        if span is not None and _class_may_match(cls, *span):
            out.add(byte)
    return frozenset(out)


class VocabIndex:
    """The vocabulary's token ids by the first byte of their text, and by the first two bytes
    for tokens starting with an ASCII character (built once per model)."""

    def __init__(self, pieces: Iterable[bytes]) -> None:
        buckets: list[list[int]] = [[] for _ in range(256)]
        pairs: dict[int, list[int]] = {}
        n = 0
        for token, piece in enumerate(pieces):
            n += 1
            if not piece:  # llama.cpp's grammar rejects tokens with empty text
                continue
            buckets[piece[0]].append(token)
            if piece[0] < 0x80:
                key = piece[0] << 8 | piece[1] if len(piece) > 1 else -1 - piece[0]
                pairs.setdefault(key, []).append(token)
        self.n_vocab = n
        self.by_byte = [np.asarray(b, dtype=np.int32) for b in buckets]
        self._pairs = {k: np.asarray(v, dtype=np.int32) for k, v in pairs.items()}
        self._empty = np.zeros(0, dtype=np.int32)

    def pair(self, first: int, second: int) -> npt.NDArray[np.int32]:
        """Tokens whose text starts with the ASCII byte ``first`` then the byte ``second``."""
        return self._pairs.get(first << 8 | second, self._empty)

    def single(self, first: int) -> npt.NDArray[np.int32]:
        """The tokens whose text is the one ASCII byte ``first``."""
        return self._pairs.get(-1 - first, self._empty)


class GrammarTracker:
    """Follows the accepted tokens through the grammar in Python; proposes candidate ids."""

    def __init__(self, grammar: Grammar, index: VocabIndex, piece: Callable[[int], bytes],
                 eog_ids: Iterable[int]) -> None:
        self._index = index
        self._piece = piece
        self._eog = np.asarray(sorted(eog_ids), dtype=np.int32)
        try:
            self._recognizer: Recognizer | None = Recognizer(grammar, cache_size=4096)
        except GrammarError:  # token references: no text to follow
            self._recognizer = None
        self._state = self._recognizer.initial() if self._recognizer is not None else None
        self.narrowed = 0  # full passes that ran on a narrowed candidate set
        self._mask = np.zeros(index.n_vocab, dtype=bool)

    @property
    def active(self) -> bool:
        return self._state is not None

    @property
    def width(self) -> int:
        """Parse stacks alive now: what each token check costs llama.cpp, roughly."""
        return len(self._state) if self._state is not None else 0

    def accept(self, token: int) -> None:
        """The grammar accepted ``token`` (not an end-of-generation token)."""
        if self._state is None or self._recognizer is None:
            return
        try:
            text = self._piece(token).decode("utf-8")
        except UnicodeDecodeError:
            return self.disable()  # a character split across tokens: leave it to llama.cpp
        state = self._recognizer.advance(self._state, text)
        if not state or len(state) > MAX_STACKS:
            return self.disable()  # refused (llama.cpp knows better), or too ambiguous to follow
        self._state = state

    def disable(self) -> None:
        """Stop narrowing: every full pass goes over the whole vocabulary again."""
        self._state = None

    def candidates(self) -> npt.NDArray[np.int32] | None:
        """Ascending ids that may pass the grammar now, or None (use the whole vocabulary)."""
        state, recognizer = self._state, self._recognizer
        if state is None or recognizer is None:
            return None
        classes, _complete = recognizer.next_classes(state)
        index = self._index
        groups = {first: [index.by_byte[first]] for first in _allowed_bytes(classes)}
        total = sum(len(g[0]) for g in groups.values())
        # look one character further into the biggest ASCII buckets (" " starts half the
        # vocabulary) until few enough tokens are left to mask them cheaply
        for first in sorted((b for b in groups if b < 0x80), key=lambda b: -len(groups[b][0])):
            if total <= NARROW_TARGET:
                break
            before = len(groups[first][0])
            if before <= REFINE_OVER // 8:
                break
            after = recognizer.advance(state, chr(first))
            seconds = _allowed_bytes(recognizer.next_classes(after)[0])
            refined = [index.single(first), *(index.pair(first, b) for b in seconds)]
            groups[first] = refined
            total += sum(len(r) for r in refined) - before
        if total + len(self._eog) > MAX_SHARE * index.n_vocab:
            return None
        mask = self._mask
        mask[:] = False
        for parts in groups.values():
            for part in parts:
                mask[part] = True
        mask[self._eog] = True
        self.narrowed += 1
        return np.flatnonzero(mask).astype(np.int32)


def _allowed_bytes(classes: Iterable[CharClass]) -> set[int]:
    out: set[int] = set()
    for cls in classes:
        out |= first_bytes(cls)
    return out
