"""From token bytes to text: incremental UTF-8 decoding and stop strings.

Both are linear in the output: each token's bytes are decoded once, and a
stop string is searched only over the text not yet released plus the longest
stop string's worth of tail.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass


class Detokenizer:
    """Turns a stream of token pieces (bytes) into text without splitting characters.

    A multi-byte UTF-8 character cut across two tokens is held back until its
    last byte arrives; :meth:`flush` releases what is left at the end (invalid
    bytes become U+FFFD, never dropped silently).
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, piece: bytes) -> str:
        return self._decoder.decode(piece)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


@dataclass(frozen=True, slots=True)
class StopResult:
    text: str  # text that may be released now
    stop_word: str | None  # the stop string found, if any (generation must end)


class StopMatcher:
    """Finds stop strings in generated text, holding back partial matches.

    Text that could be the beginning of a stop string is not released until the
    next piece shows whether it is; on a match, the text before the stop string
    is released and the stop string itself is not.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(dict.fromkeys(s for s in stops if s))
        self._held = ""
        # per stop string: how much of it the text so far ends with (a KMP automaton), and its
        # failure function; a character costs amortized O(1) per stop string, whatever their
        # length (a suffix scan cost ~16 M character operations a token at 1,000-character stops)
        self._state = [0] * len(self._stops)
        self._fail = [_failure(s) for s in self._stops]

    @property
    def held(self) -> str:
        return self._held

    def feed(self, text: str) -> StopResult:
        if not self._stops:
            return StopResult(text, None)
        buf = self._held + text
        base = len(self._held)
        first: tuple[int, str] | None = None
        for k, stop in enumerate(self._stops):
            state, fail, n = self._state[k], self._fail[k], len(stop)
            for j, ch in enumerate(text):
                while state and stop[state] != ch:
                    state = fail[state - 1]
                if stop[state] == ch:
                    state += 1
                if state == n:  # a whole stop string ends at buf[base + j]
                    at = base + j + 1 - n
                    if first is None or at < first[0]:
                        first = (at, stop)
                    break
            self._state[k] = state
        if first is not None:
            self._held = ""
            self._state = [0] * len(self._stops)
            return StopResult(buf[: first[0]], first[1])
        keep = max(self._state)  # the longest suffix that may begin a stop string
        self._held = buf[len(buf) - keep :] if keep else ""
        return StopResult(buf[: len(buf) - keep], None)

    def flush(self) -> str:
        """Release the held text at the end of generation (no stop string came)."""
        out, self._held = self._held, ""
        self._state = [0] * len(self._stops)
        return out


def _failure(pattern: str) -> list[int]:
    """KMP: for each prefix of ``pattern``, the length of its longest proper border."""
    fail = [0] * len(pattern)
    k = 0
    for i in range(1, len(pattern)):
        while k and pattern[i] != pattern[k]:
            k = fail[k - 1]
        if pattern[i] == pattern[k]:
            k += 1
        fail[i] = k
    return fail


class IndentWatch:
    """llama.cpp's ``n_indent``: the first line that starts less indented than ``n_indent``
    (spaces or tabs) after a newline ends generation there. The first line, which continues
    the prompt, is not checked."""

    def __init__(self, n_indent: int) -> None:
        self.n_indent = n_indent
        self._line_start = False
        self._indent = 0

    def feed(self, text: str) -> int | None:
        """The index in ``text`` of a short-indented line's first character, else None."""
        if self.n_indent <= 0:
            return None
        for i, ch in enumerate(text):
            if ch == "\n":
                self._line_start, self._indent = True, 0
            elif self._line_start:
                if ch in " \t":
                    self._indent += 1
                    continue
                self._line_start = False
                if self._indent < self.n_indent:
                    return i
        return None
