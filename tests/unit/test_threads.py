"""The decode-thread tuner (app/engine/threads.py) on synthetic timings."""

from __future__ import annotations

from app.engine.threads import RETRY_S, ThreadTuner


def feed(tuner: ThreadTuner, seconds_for: dict[int, float], n: int, t0: float,
         rows: int = 1, used: list[int] | None = None) -> tuple[list[int], float]:
    """``n`` decodes, each taking ``seconds_for[current threads]``; returns the switches made."""
    switches, now = [], t0
    for _ in range(n):
        if used is not None:
            used.append(tuner.current)
        dt = seconds_for[tuner.current]
        now += dt
        new = tuner.observe(rows, dt, now)
        if new is not None:
            switches.append(new)
    return switches, now


def test_a_quiet_machine_keeps_the_configured_threads() -> None:
    tuner = ThreadTuner(2)
    switches, _ = feed(tuner, {2: 0.020, 1: 0.032}, 2000, 0.0)
    assert switches == []
    assert tuner.current == 2


def test_a_busy_machine_moves_to_one_thread_and_back_when_it_is_free() -> None:
    tuner = ThreadTuner(2)
    feed(tuner, {2: 0.020, 1: 0.032}, 50, 0.0)  # quiet: 20 ms per token
    used: list[int] = []
    switches, now = feed(tuner, {2: 0.060, 1: 0.038}, 400, 1.0, used=used)  # a neighbour
    assert switches[0] == 1
    # it stays at one thread but for short probes of two every few seconds
    assert used[-300:].count(1) > 0.9 * 300
    used = []
    feed(tuner, {2: 0.020, 1: 0.032}, 400, now + RETRY_S, used=used)  # it leaves
    assert tuner.current == 2
    assert used[-300:].count(2) == 300


def test_when_one_thread_is_no_faster_the_threads_stay() -> None:
    tuner = ThreadTuner(2)
    feed(tuner, {2: 0.020, 1: 0.032}, 50, 0.0)
    switches, _ = feed(tuner, {2: 0.060, 1: 0.090}, 400, 1.0)  # slow for both
    assert tuner.current == 2
    assert set(switches) <= {1, 2}
    assert len(switches) <= 2 * (400 * 0.06 / RETRY_S + 1)  # trials are rate-limited


def test_prompt_batches_are_not_judged() -> None:
    tuner = ThreadTuner(2)
    assert all(tuner.observe(256, 1.0, float(i)) is None for i in range(100))


def test_one_configured_thread_is_left_alone() -> None:
    tuner = ThreadTuner(1)
    switches, _ = feed(tuner, {1: 0.5}, 100, 0.0)
    assert switches == []
