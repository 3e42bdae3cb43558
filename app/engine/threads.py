"""Fewer decode threads while the machine is busy (``--adapt-threads``, on by default).

With every core in use by someone, llama.cpp's decode threads wait at each barrier for a thread
the OS has descheduled: beside one CPU-bound neighbour on 2 cores, 2 threads decoded at 22
tok/s and 1 thread at 26 (bench/contention.py). The tuner watches the time of each decode of
generated tokens (small batches; prompt chunks are not judged) and

* with the configured threads: when the median of the last 8 decodes of one batch size is over
  1.5x the fastest seen for that size, tries 1 thread for 4 decodes and keeps it if faster;
* with 1 thread: every few seconds tries the configured threads again for 4 decodes and goes
  back when they are faster (the neighbour left).

On a quiet machine the median never strays that far, so nothing changes there. Pure logic: the
engine applies the thread count it returns (``llama_set_n_threads``).
"""

from __future__ import annotations

import collections
import statistics

WINDOW = 8
TRIAL = 6
SLOW = 1.5
MAX_ROWS = 16  # batches with more rows hold prompt chunks: not a measure of decode speed
RETRY_S = 3.0
BACK_UP = 0.85  # the configured threads come back when 15 % faster than one...
DOWN = 0.9  # ... and one thread is kept when 10 % faster than the configured threads


class ThreadTuner:
    def __init__(self, full: int, *, reduced: int = 1) -> None:
        self.full = full
        self.reduced = reduced
        self.current = full
        self._best: dict[int, float] = {}
        self._recent: dict[int, collections.deque[float]] = {}
        self._trial: list[float] | None = None
        self._trial_rows = 0
        self._before = 0.0
        self._next = 0.0
        self.switches = 0

    def _window(self, rows: int) -> collections.deque[float]:
        return self._recent.setdefault(rows, collections.deque(maxlen=WINDOW))

    def observe(self, rows: int, seconds: float, now: float) -> int | None:
        """A decode of ``rows`` rows took ``seconds``; returns a thread count to switch to."""
        if rows > MAX_ROWS or self.full <= self.reduced:
            return None
        if self._trial is not None:
            if rows != self._trial_rows:
                return None
            self._trial.append(seconds)
            if len(self._trial) < TRIAL:
                return None
            return self._decide(statistics.median(self._trial), now)
        window = self._window(rows)
        window.append(seconds)
        if self.current == self.full:
            best = self._best.get(rows)
            self._best[rows] = seconds if best is None else min(best * 1.001, seconds)
            if (len(window) == WINDOW and now >= self._next
                    and statistics.median(window) > SLOW * self._best[rows]):
                return self._start(self.reduced, rows, statistics.median(window))
        elif now >= self._next and len(window) >= TRIAL:
            return self._start(self.full, rows, statistics.median(window))
        return None

    def _start(self, threads: int, rows: int, before: float) -> int:
        self._trial, self._trial_rows, self._before = [], rows, before
        self.current = threads
        return threads

    def _decide(self, trial: float, now: float) -> int | None:
        tried = self.current
        self._trial = None
        self._next = now + RETRY_S
        # keep the trial setting when faster; going back up must win clearly (a neighbour that
        # pauses for a moment is not a neighbour gone)
        margin = BACK_UP if tried == self.full else DOWN
        if trial < self._before * margin:
            self._recent.clear()
            self.switches += 1
            return None
        self.current = self.reduced if tried == self.full else self.full
        self._recent.clear()
        return self.current
