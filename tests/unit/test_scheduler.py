"""The scheduler's batching decisions, driven step by step with a fake model."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from app.engine.events import (
    CHANNEL_CAPACITY,
    Done,
    Event,
    Failed,
    GenerationRequest,
    Job,
    Progress,
    Started,
    StopType,
    Token,
)
from app.engine.ports import EngineStopped
from app.engine.sampling import Sampled
from app.engine.scheduler import Engine
from tests.fakes import EOS, FakeContext, FakeSampler


class FakeModel:
    """Renders token t as ``<t>`` so texts show the ids."""

    eog_ids = frozenset({EOS})

    def piece(self, token: int) -> bytes:
        return f"<{token}>".encode()


class Collect:
    """Receives posted events; consumes them at once unless told a receiver is slow or gone."""

    def __init__(self) -> None:
        self.events: dict[int, list[Event]] = {}
        self.full: set[int] = set()
        self.gone: set[int] = set()
        self.engine: Engine | None = None

    def post(self, items: Sequence[tuple[Job, Event]]) -> None:
        for job, event in items:
            if job.id in self.gone:
                assert self.engine is not None
                self.engine.cancel(job.id)
                continue
            self.events.setdefault(job.id, []).append(event)
            if job.id not in self.full:
                job.consumed += 1

    def text(self, job_id: int) -> str:
        return "".join(e.text for e in self.events.get(job_id, []) if isinstance(e, Token))

    def done(self, job_id: int) -> Done | None:
        for e in self.events.get(job_id, []):
            if isinstance(e, Done):
                return e
        return None


def make(n_slots: int = 2, n_batch: int = 8, slot_ctx: int = 64) -> tuple[Engine, FakeContext, Collect]:
    ctx = FakeContext(n_batch=n_batch, n_seq_max=n_slots)
    box = Collect()
    engine = Engine(FakeModel(), ctx, box, n_slots=n_slots, slot_ctx=slot_ctx)
    box.engine = engine
    return engine, ctx, box


def job(job_id: int, prompt: Sequence[int], *, n_predict: int = -1, length: int = 1000,
        stops: tuple[str, ...] = (), id_slot: int = -1) -> Job:
    req = GenerationRequest(prompt=tuple(prompt), n_predict=n_predict, stops=stops, id_slot=id_slot)
    return Job(id=job_id, request=req, sampler=FakeSampler(length=length), sink=None)


def test_generating_slots_come_first_then_prompt_chunks_fill_the_batch() -> None:
    engine, ctx, _ = make(n_slots=3, n_batch=8)
    engine.submit(job(1, [2, 10, 11]))
    engine.run_once()  # job 1's prompt but its last token in one batch
    assert ctx.batches[-1] == [(2, 0, 0, False), (10, 1, 0, False)]
    engine.run_once()  # the last token alone, with logits (as a cached prompt's is)
    assert ctx.batches[-1] == [(11, 2, 0, True)]
    engine.submit(job(2, list(range(20, 32))))  # 12 tokens
    engine.run_once()
    # one generation row for job 1, then 7 prompt rows of job 2 (no logits yet)
    batch = ctx.batches[-1]
    assert batch[0] == (100, 3, 0, True)
    assert [r[2] for r in batch[1:]] == [1] * 7
    assert [r[1] for r in batch[1:]] == list(range(7))
    assert not any(r[3] for r in batch[1:])
    engine.run_once()
    batch = ctx.batches[-1]
    assert batch[0] == (101, 4, 0, True)
    assert [r[1] for r in batch[1:]] == list(range(7, 11))  # all but the last
    assert not any(r[3] for r in batch[1:])
    engine.run_once()
    batch = ctx.batches[-1]
    assert batch[0] == (102, 5, 0, True)
    assert batch[1:] == [(31, 11, 1, True)]  # the last prompt token asks for logits


def test_requests_beyond_the_slots_wait_in_fifo_order() -> None:
    engine, _ctx, box = make(n_slots=1, n_batch=8)
    for i in (1, 2, 3):
        engine.submit(job(i, [2, 5], n_predict=2))
    for _ in range(20):
        engine.run_once()
    starts = [(jid, ev) for jid, evs in box.events.items() for ev in evs if isinstance(ev, Started)]
    assert [jid for jid, _ in starts] == [1, 2, 3]
    assert all(box.done(i) is not None for i in (1, 2, 3))


def test_cancelled_queued_request_never_runs() -> None:
    engine, ctx, box = make(n_slots=1)
    engine.submit(job(1, [2, 5], n_predict=3))
    engine.submit(job(2, [2, 6], n_predict=3))
    engine.run_once()
    engine.cancel(2)
    for _ in range(10):
        engine.run_once()
    assert 2 not in box.events
    assert all(r[0] != 6 for b in ctx.batches for r in b)


def test_cancel_frees_the_slot_at_the_next_step_and_keeps_others_running() -> None:
    engine, ctx, _box = make(n_slots=2)
    engine.submit(job(1, [2, 5]))
    engine.submit(job(2, [2, 6]))
    engine.run_once()
    engine.run_once()
    engine.cancel(1)
    engine.run_once()
    assert [r[2] for r in ctx.batches[-1]] == [1]
    assert engine.slot_infos()[0].is_processing is False
    assert engine.slot_infos()[1].is_processing is True


def test_gone_receiver_frees_its_slot() -> None:
    engine, _ctx, box = make(n_slots=1)
    engine.submit(job(1, [2, 5]))
    engine.run_once()
    box.gone.add(1)
    engine.run_once()
    engine.run_once()
    assert engine.slot_infos()[0].is_processing is False


def test_slow_receiver_pauses_only_its_slot() -> None:
    engine, ctx, box = make(n_slots=2, slot_ctx=1000)
    first = job(1, [2, 5])
    engine.submit(first)
    engine.submit(job(2, [2, 6]))
    box.full.add(1)  # job 1's receiver stops consuming
    for _ in range(CHANNEL_CAPACITY + 5):
        engine.run_once()
    assert first.posted - first.consumed == CHANNEL_CAPACITY  # never more in flight
    assert [r[2] for r in ctx.batches[-1]] == [1]  # only job 2 is decoded
    first.consumed = first.posted  # the receiver catches up
    engine.run_once()
    engine.run_once()
    assert 0 in [r[2] for r in ctx.batches[-1]]


def test_prompt_reuse_picks_longest_prefix_slot_and_evaluates_only_the_suffix() -> None:
    engine, ctx, box = make(n_slots=2, n_batch=16)
    engine.submit(job(1, [2, 7, 7, 7], n_predict=1))
    engine.submit(job(2, [2, 8, 8, 8], n_predict=1))
    for _ in range(4):
        engine.run_once()
    engine.submit(job(3, [2, 8, 8, 8, 9, 9], n_predict=1))
    engine.run_once()
    engine.run_once()  # the last prompt token in a step of its own
    assert [[(r[0], r[1], r[2]) for r in b] for b in ctx.batches[-2:]] == [[(9, 4, 1)],
                                                                        [(9, 5, 1)]]
    started = next(e for e in box.events[3] if isinstance(e, Started))
    assert (started.id_slot, started.tokens_cached) == (1, 4)


def test_identical_prompt_keeps_one_token_to_evaluate() -> None:
    engine, ctx, _box = make(n_slots=1)
    engine.submit(job(1, [2, 7, 7], n_predict=1))
    for _ in range(3):
        engine.run_once()
    engine.submit(job(2, [2, 7, 7], n_predict=1))
    engine.run_once()
    assert [(r[0], r[1]) for r in ctx.batches[-1]] == [(7, 2)]
    assert (0, 2) in ctx.removed


def test_n_predict_zero_evaluates_the_prompt_only() -> None:
    engine, _ctx, box = make()
    engine.submit(job(1, [2, 5, 6], n_predict=0))
    engine.run_once()
    engine.run_once()
    done = box.done(1)
    assert done is not None
    assert (done.stop_type, done.tokens_predicted, done.tokens_evaluated) == (StopType.LIMIT, 0, 3)
    assert box.text(1) == ""


def test_eos_ends_generation() -> None:
    engine, _ctx, box = make()
    engine.submit(job(1, [2, 5], length=3))
    for _ in range(6):
        engine.run_once()
    done = box.done(1)
    assert done is not None
    assert done.stop_type is StopType.EOS
    assert box.text(1) == "<100><101><102>"


def test_stop_string_ends_generation_and_is_not_emitted() -> None:
    engine, _ctx, box = make()
    engine.submit(job(1, [2, 5], stops=("<102>",)))
    for _ in range(6):
        engine.run_once()
    done = box.done(1)
    assert done is not None
    assert (done.stop_type, done.stopping_word) == (StopType.WORD, "<102>")
    assert box.text(1) == "<100><101>"


def test_an_ends_watch_ends_the_reply_where_it_says_and_frees_the_slot() -> None:
    engine, _ctx, box = make()
    seen: list[str] = []

    def ends(text: str) -> bool:
        seen.append(text)
        return "".join(seen).endswith("<102>")

    engine.submit(Job(id=1, request=GenerationRequest(prompt=(2, 5), ends=ends),
                      sampler=FakeSampler(length=1000), sink=None))
    for _ in range(8):
        engine.run_once()
    done = box.done(1)
    assert done is not None
    assert done.stop_type is StopType.EOS
    assert box.text(1) == "<100><101><102>"  # the text that ended it is kept
    assert done.tokens_predicted == 3
    assert all(s.job is None for s in engine.slots)


def test_context_end_truncates() -> None:
    engine, ctx, box = make(slot_ctx=6)
    engine.submit(job(1, [2, 5, 6]))
    for _ in range(10):
        engine.run_once()
    done = box.done(1)
    assert done is not None
    assert done.truncated
    assert done.stop_type is StopType.LIMIT
    positions = [r[1] for b in ctx.batches for r in b if r[2] == 0]
    assert max(positions) < 6



def test_context_shift_keeps_n_keep_drops_half_the_rest_and_goes_on() -> None:
    ctx = FakeContext(n_batch=8, n_seq_max=1)
    box = Collect()
    engine = Engine(FakeModel(), ctx, box, n_slots=1, slot_ctx=12, context_shift=True,
                    can_shift=True)
    box.engine = engine
    req = GenerationRequest(prompt=(2, 5, 6, 7), n_predict=20, n_keep=2)
    engine.submit(Job(id=1, request=req, sampler=FakeSampler(length=1000), sink=None))
    for _ in range(40):
        engine.run_once()
    done = box.done(1)
    assert done is not None
    # 20 tokens in a 12-cell slot: it went on past the end, and says it was truncated
    assert (done.tokens_predicted, done.stop_type, done.truncated) == (20, StopType.LIMIT, True)
    assert box.text(1) == "".join(f"<{t}>" for t in range(100, 120))
    # the first shift: 11 cells used, keep 2, drop half of the other 9 (4), move 5..11 back by 4
    assert ctx.shifted[0] == (0, 6, 11, -4)
    positions = [r[1] for b in ctx.batches for r in b if r[2] == 0]
    assert max(positions) < 12
    # the kept prefix is still the prompt's first tokens
    assert engine.slots[0].cache[:2] == [2, 5]


def test_context_shift_keeps_at_most_all_but_four_cells() -> None:
    ctx = FakeContext(n_batch=8, n_seq_max=1)
    box = Collect()
    engine = Engine(FakeModel(), ctx, box, n_slots=1, slot_ctx=12, context_shift=True,
                    can_shift=True)
    box.engine = engine
    req = GenerationRequest(prompt=tuple(range(2, 12)), n_predict=6, n_keep=10)
    engine.submit(Job(id=1, request=req, sampler=FakeSampler(length=1000), sink=None))
    for _ in range(20):
        engine.run_once()
    done = box.done(1)
    assert done is not None
    assert done.truncated
    assert done.tokens_predicted == 6
    # n_keep is held to n_ctx - 4 = 8 (as llama.cpp): each shift drops one of the 3 after them
    assert ctx.shifted
    assert set(ctx.shifted) == {(0, 9, 11, -1)}


def test_requested_slot_is_honoured() -> None:
    engine, _ctx, box = make(n_slots=3)
    engine.submit(job(1, [2, 5], n_predict=1, id_slot=2))
    engine.run_once()
    started = next(e for e in box.events[1] if isinstance(e, Started))
    assert started.id_slot == 2


@pytest.mark.parametrize("n_slots", [1, 4])
def test_every_batch_stays_within_n_batch(n_slots: int) -> None:
    engine, ctx, box = make(n_slots=n_slots, n_batch=8, slot_ctx=64)
    for i in range(6):
        engine.submit(job(i, [2, *range(10, 30)], n_predict=5))
    for _ in range(80):
        engine.run_once()
    assert all(len(b) <= 8 for b in ctx.batches)
    assert all(box.done(i) is not None for i in range(6))


class SlowGrammarSampler(FakeSampler):
    """Leaves its 3rd step open; :meth:`resolve` (on a grammar worker) waits for ``release``."""

    def __init__(self) -> None:
        super().__init__(length=1000)
        self.release = threading.Event()
        self.resolving = threading.Event()
        self.used_after_close = False

    def sample(self, ctx: Any, row: int) -> Sampled | None:
        if self.n == 2:
            self.n += 1
            return None
        return super().sample(ctx, row)

    def resolve(self) -> Sampled:
        self.resolving.set()
        assert self.release.wait(10)
        if self.closed:
            self.used_after_close = True
        return Sampled(token=500)


def _run_until(engine: Engine, predicate: Any, steps: int = 2000) -> None:
    for _ in range(steps):
        engine.run_once()
        if predicate():
            return
        time.sleep(0.001)
    raise AssertionError("condition not reached")


def test_a_slow_grammar_step_does_not_hold_up_other_slots() -> None:
    engine, ctx, box = make(n_slots=2, slot_ctx=1000)
    slow = SlowGrammarSampler()
    engine.submit(Job(id=1, request=GenerationRequest(prompt=(2, 5)), sampler=slow, sink=None))
    engine.submit(job(2, [2, 6]))
    _run_until(engine, slow.resolving.is_set)
    before = sum(1 for b in ctx.batches for r in b if r[2] == 1)
    for _ in range(20):
        engine.run_once()
    # slot 1 kept decoding while slot 0's grammar step was open, slot 0 was not decoded
    assert sum(1 for b in ctx.batches for r in b if r[2] == 1) >= before + 20
    assert all(r[2] == 1 for b in ctx.batches[-20:] for r in b)
    assert engine.slot_infos()[0].state == "sampling"
    slow.release.set()
    _run_until(engine, lambda: "<500>" in box.text(1))
    _run_until(engine, lambda: box.text(1).count(">") >= 5)
    assert box.text(1).startswith("<100><101><500><")  # resumed in order after the open step
    engine.stop()


def test_cancel_during_an_open_grammar_step_frees_the_sampler_after_the_worker() -> None:
    engine, _ctx, _box = make(n_slots=1)
    slow = SlowGrammarSampler()
    engine.submit(Job(id=1, request=GenerationRequest(prompt=(2, 5)), sampler=slow, sink=None))
    _run_until(engine, slow.resolving.is_set)
    engine.cancel(1)
    engine.run_once()
    assert engine.slot_infos()[0].is_processing is False
    assert not slow.closed  # the worker still has it
    slow.release.set()
    _run_until(engine, lambda: slow.closed)
    assert not slow.used_after_close
    engine.stop()


def test_a_dying_engine_fails_its_requests_and_answers_every_pending_command() -> None:
    engine, ctx, box = make(n_slots=1)

    def broken() -> int:
        raise RuntimeError("decode exploded")

    ctx.decode = broken  # type: ignore[method-assign]
    engine.submit(job(1, [2, 5]))
    engine.submit(job(2, [2, 6]))  # still queued when the engine dies
    engine.start()
    engine._thread.join(5)
    assert not engine.alive
    for job_id in (1, 2):
        failed = [e for e in box.events.get(job_id, []) if isinstance(e, Failed)]
        assert failed, job_id
        assert "decode exploded" in failed[0].message
    future = engine.slot_action("erase", 0)
    with pytest.raises(EngineStopped):
        future.result(timeout=1)
    engine.stop()


def test_a_grammar_step_over_its_budget_fails_only_its_request() -> None:
    engine, _ctx, box = make(n_slots=2, slot_ctx=1000)
    engine.grammar_step_budget_s = 0.05
    slow = SlowGrammarSampler()
    engine.submit(Job(id=1, request=GenerationRequest(prompt=(2, 5)), sampler=slow, sink=None))
    engine.submit(job(2, [2, 6]))
    _run_until(engine, slow.resolving.is_set)
    _run_until(engine, lambda: any(isinstance(e, Failed) for e in box.events.get(1, [])))
    failed = next(e for e in box.events[1] if isinstance(e, Failed))
    assert "grammar step took over" in failed.message
    assert engine.slot_infos()[0].is_processing is False
    assert engine.slot_infos()[1].is_processing is True  # the other request goes on
    assert not slow.closed  # still in the worker's hands
    slow.release.set()
    _run_until(engine, lambda: slow.closed)
    engine.stop()


# --- the host-memory prompt cache (--cache-ram) ---------------------------------------------------
def cached(n_slots: int, limit: int | None = None) -> tuple[Engine, FakeContext, Collect]:
    from app.engine.prompt_cache import PromptCache

    ctx = FakeContext(n_batch=64, n_seq_max=n_slots)
    box = Collect()
    engine = Engine(FakeModel(), ctx, box, n_slots=n_slots, slot_ctx=256,
                    prompt_cache=PromptCache(limit))
    box.engine = engine
    return engine, ctx, box


def started(box: Collect, job_id: int) -> Started:
    return next(e for e in box.events[job_id] if isinstance(e, Started))


def run(engine: Engine, n: int = 40) -> None:
    for _ in range(n):
        engine.run_once()


SYSTEM = list(range(1000, 1100))  # a 100-token shared system prompt


def test_a_slot_about_to_lose_its_prefix_is_saved_and_restored_elsewhere() -> None:
    engine, ctx, box = cached(n_slots=1)
    engine.submit(job(1, [*SYSTEM, 7], n_predict=2))
    run(engine)
    engine.submit(job(2, list(range(3000, 3100)), n_predict=2))  # another conversation
    run(engine)
    assert ctx.saved == [0]  # job 1's state went to RAM before job 2 took the slot
    engine.submit(job(3, [*SYSTEM, 8], n_predict=2))
    run(engine)
    assert started(box, 3).tokens_cached == len(SYSTEM)
    assert ctx.restored[-1] == (0, "state of 0")
    assert engine.prompt_cache is not None
    assert engine.prompt_cache.stats.hits == 1
    assert engine.prompt_cache.stats.tokens_restored == len(SYSTEM)
    # the system prompt was evaluated once, by job 1; job 3 evaluated only its own token
    rows = [row for b in ctx.batches for row in b]
    assert sum(1 for row in rows if row[0] in SYSTEM) == len(SYSTEM)
    assert (8, len(SYSTEM), 0, True) in rows


def test_a_busy_slots_prefix_is_copied_into_the_new_requests_slot() -> None:
    engine, ctx, box = cached(n_slots=2)
    engine.submit(job(1, [*SYSTEM, 7]))  # keeps generating
    run(engine, 5)
    engine.submit(job(2, [*SYSTEM, 8], n_predict=2))
    run(engine, 5)
    s = started(box, 2)
    assert (s.id_slot, s.tokens_cached) == (1, len(SYSTEM))
    assert ctx.restored == [(1, "state of 0")]
    first_rows = [row for b in ctx.batches for row in b if row[2] == 1]
    assert first_rows[0][:2] == (8, len(SYSTEM))  # slot 1 evaluated only token 8


def test_no_copy_when_the_slots_own_prefix_is_as_good() -> None:
    engine, ctx, box = cached(n_slots=1)
    engine.submit(job(1, [*SYSTEM, 7], n_predict=2))
    run(engine)
    engine.submit(job(2, [*SYSTEM, 9], n_predict=2))
    run(engine)
    assert started(box, 2).tokens_cached == len(SYSTEM)
    assert ctx.restored == []
    assert ctx.saved == []  # it loses only a few tokens: not worth saving


def test_the_cache_keeps_to_its_limit_dropping_the_oldest() -> None:
    from app.engine.prompt_cache import PromptCache

    cache = PromptCache(limit_bytes=150)
    for i in range(5):
        assert cache.put(list(range(i * 100, i * 100 + 40)), bytearray(64))
    assert len(cache) == 2
    assert cache.bytes == 128
    assert cache.stats.evictions == 3
    entry, n = cache.best([*range(400, 440), 1])
    assert entry is not None
    assert n == 40
    assert cache.best(list(range(0, 40)))[0] is None  # evicted
    assert not cache.put(list(range(40)), bytearray(200))  # larger than the limit
    # a longer state supersedes the states it extends
    cache.put([*range(400, 440), 1, 2], bytearray(10))
    assert len(cache) == 2
    assert cache.covers(list(range(400, 440)))


def test_return_progress_reports_each_prompt_chunk() -> None:
    engine, _ctx, box = make(n_slots=1, n_batch=8)
    req = GenerationRequest(prompt=tuple(range(2, 22)), n_predict=1, return_progress=True)
    engine.submit(Job(id=1, request=req, sampler=FakeSampler(), sink=None))
    for _ in range(6):
        engine.run_once()
    progress = [(e.total, e.cache, e.processed) for e in box.events[1] if isinstance(e, Progress)]
    # the last prompt token is a step of its own
    assert progress == [(20, 0, 0), (20, 0, 8), (20, 0, 16), (20, 0, 19), (20, 0, 20)]
    assert box.done(1) is not None


class TextModel:
    """Token t is character chr(t)."""

    eog_ids = frozenset({EOS})

    def piece(self, token: int) -> bytes:
        return chr(token).encode()


def test_n_indent_ends_at_a_line_indented_less() -> None:
    ctx = FakeContext(n_batch=8, n_seq_max=1)
    box = Collect()
    engine = Engine(TextModel(), ctx, box, n_slots=1, slot_ctx=64)
    box.engine = engine
    script = [ord(c) for c in "x = 1\n    y = 2\n  z\n    w"]
    req = GenerationRequest(prompt=(2, 5), n_indent=4)
    engine.submit(Job(id=1, request=req, sampler=FakeSampler(script), sink=None))
    for _ in range(40):
        engine.run_once()
    done = box.done(1)
    assert done is not None
    assert done.stop_type is StopType.LIMIT
    # the first line continues the prompt; "  z" is indented 2 < 4: cut before its text
    assert box.text(1) == "x = 1\n    y = 2\n  "


def test_t_max_predict_ms_ends_after_a_newline_once_the_time_is_up() -> None:
    ctx = FakeContext(n_batch=8, n_seq_max=1)
    box = Collect()
    engine = Engine(TextModel(), ctx, box, n_slots=1, slot_ctx=256)
    box.engine = engine
    script = [ord(c) for c in "ab\n" + "c" * 100]
    req = GenerationRequest(prompt=(2, 5), t_max_predict_ms=1)
    engine.submit(Job(id=1, request=req, sampler=FakeSampler(script), sink=None))
    for _ in range(3):
        engine.run_once()
    time.sleep(0.01)
    for _ in range(20):
        engine.run_once()
    done = box.done(1)
    assert done is not None
    assert done.stop_type is StopType.LIMIT
    assert box.text(1).startswith("ab\n")
    assert len(box.text(1)) < 10  # it stopped soon after the newline, past the time limit


def test_cache_reuse_moves_the_chunk_after_a_cut_into_place() -> None:
    ctx = FakeContext(n_batch=64, n_seq_max=1)
    box = Collect()
    engine = Engine(FakeModel(), ctx, box, n_slots=1, slot_ctx=128, can_shift=True)
    box.engine = engine
    first = list(range(2, 42))  # 40 tokens
    engine.submit(Job(id=1, request=GenerationRequest(prompt=tuple(first), n_predict=1),
                      sampler=FakeSampler(), sink=None))
    for _ in range(4):
        engine.run_once()
    assert box.done(1) is not None
    # the next prompt cuts tokens 10..19 out of the middle
    second = first[:10] + first[20:]
    engine.submit(Job(id=2, request=GenerationRequest(prompt=tuple(second), n_predict=1,
                                                      n_cache_reuse=8),
                      sampler=FakeSampler(), sink=None))
    for _ in range(4):
        engine.run_once()
    started = next(e for e in box.events[2] if isinstance(e, Started))
    # 10 shared at the front, then the 20 after the cut moved back by 10 (one is evaluated)
    assert started.tokens_cached == len(second) - 1
    assert (0, 20, 40, -10) in ctx.shifted
    assert engine.slots[0].cache[:len(second)] == second
    assert engine.counters.cache_reused_tokens_total == 20
    # without n_cache_reuse only the common prefix is kept
    engine.submit(Job(id=3, request=GenerationRequest(prompt=tuple(first[:5] + first[15:]),
                                                      n_predict=1), sampler=FakeSampler(),
                      sink=None))
    for _ in range(4):
        engine.run_once()
    started = next(e for e in box.events[3] if isinstance(e, Started))
    assert started.tokens_cached == 5


class FakeLora:
    def __init__(self) -> None:
        self.applied: list[tuple[float, ...]] = []

    def apply(self, ctx: Any, scales: tuple[float, ...]) -> None:
        self.applied.append(scales)


def test_slots_with_other_lora_scales_take_turns_and_do_not_share_a_cache() -> None:
    ctx = FakeContext(n_batch=16, n_seq_max=3)
    box = Collect()
    lora = FakeLora()
    engine = Engine(FakeModel(), ctx, box, n_slots=3, slot_ctx=64, lora=lora)
    box.engine = engine
    for job_id, scales in ((1, (1.0,)), (2, ()), (3, (1.0,))):
        req = GenerationRequest(prompt=(2, 5, 6), n_predict=4, lora=scales)
        engine.submit(Job(id=job_id, request=req, sampler=FakeSampler(), sink=None))
    for _ in range(30):
        engine.run_once()
    assert all(box.done(i) is not None for i in (1, 2, 3))
    seqs = [{row[2] for row in batch} for batch in ctx.batches]
    slot_of = {i: next(e for e in box.events[i] if isinstance(e, Started)).id_slot
               for i in (1, 2, 3)}
    # a batch holds slots of one set of scales: 1 and 3 together, 2 alone
    for batch in seqs:
        assert batch <= {slot_of[1], slot_of[3]} or batch == {slot_of[2]}
    assert {slot_of[1], slot_of[3]} in seqs
    assert lora.applied[:2] in ([(), (1.0,)], [(1.0,), ()])  # switched as the turns went
    # the next request without adapters finds no cache in a slot computed with them
    engine.submit(Job(id=4, request=GenerationRequest(prompt=(2, 5, 6, 7), n_predict=1,
                                                      id_slot=slot_of[1]),
                      sampler=FakeSampler(), sink=None))
    for _ in range(4):
        engine.run_once()
    assert next(e for e in box.events[4] if isinstance(e, Started)).tokens_cached == 0


def test_cache_reuse_scan_is_bounded_on_a_hostile_prompt() -> None:
    ctx = FakeContext(n_batch=512, n_seq_max=1)
    box = Collect()
    engine = Engine(FakeModel(), ctx, box, n_slots=1, slot_ctx=20000, can_shift=True)
    box.engine = engine
    n = 6000
    engine.slots[0].cache = [2, 7] + [1] * n  # runs of 1 at every offset, each too short
    req = GenerationRequest(prompt=(2, *([1] * n)), n_predict=1, n_cache_reuse=n + 10)
    engine.submit(Job(id=1, request=req, sampler=FakeSampler(), sink=None))
    started = time.perf_counter()
    engine.run_once()
    assert time.perf_counter() - started < 3.0  # quadratic: ~18 million comparisons in Python
    assert next(e for e in box.events[1] if isinstance(e, Started)).tokens_cached == 1


def test_a_job_cancelled_in_the_middle_of_a_decode_stops_it_and_the_others_go_again() -> None:
    """The prompt chunk of A is decoding beside B's token when A's client leaves: the decode
    is aborted (llama.cpp stops at a graph node), A's slot is free after that step, and B's
    rows are decoded again at the same positions (the fake context refuses any other), so B's
    reply is the one it would have had."""
    engine, ctx, box = make(n_slots=2, n_batch=8)
    b = job(2, [1, 2], n_predict=6)
    engine.submit(b)
    engine.run_once()  # B reads its prompt and starts generating
    a = job(1, list(range(10, 40)), n_predict=4)
    engine.submit(a)

    def client_leaves() -> None:
        if any(tok == 14 for tok, _pos, _seq, _l in ctx.rows):  # a chunk of A's prompt
            ctx.during_decode = None
            engine.cancel(a.id)

    ctx.during_decode = client_leaves
    steps = 0
    while box.done(b.id) is None and steps < 50:
        engine.run_once()
        steps += 1
    assert ctx.aborted == 1
    assert all(s.job is None or s.job.id != a.id for s in engine.slots)  # A's slot, free
    assert box.done(a.id) is None  # a cancelled job gets no final event
    done = box.done(b.id)
    assert done is not None
    alone_engine, _ctx, alone = make(n_slots=2, n_batch=8)
    alone_engine.submit(job(2, [1, 2], n_predict=6))
    for _ in range(20):
        alone_engine.run_once()
    assert box.text(b.id) == alone.text(2)


def test_cancel_asks_for_an_abort_only_while_the_job_is_decoding() -> None:
    engine, ctx, _box = make()
    engine.submit(job(1, [1, 2, 3]))
    engine.cancel(1)  # queued, not decoding: no abort
    assert ctx.aborting is False
