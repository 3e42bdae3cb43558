"""The engine thread: slots, the waiting queue and the continuous batch.

One thread owns the model's context. Each step it

1. takes commands (submit, cancel, stop) from a thread-safe queue,
2. gives waiting requests (FIFO) to idle slots and keeps as much of each prompt as
   some cache holds (:mod:`app.engine.placement`),
3. builds one batch: one token for every generating slot, then prompt chunks of
   slots still reading their prompt, up to ``n_batch`` rows (:mod:`app.engine.batching`),
4. calls ``llama_decode`` once, samples each slot at its own row (a grammar
   step the fast path cannot settle is finished on a worker thread while the
   other slots go on) and decides whether it goes on (:mod:`app.engine.stopping`), and
5. hands the step's events to the request side in one call (:class:`Outbox`).

A request is dropped between two steps when it is cancelled or its receiver is
gone; its slot is free for the next step and its KV stays as a prompt cache.
A slot whose receiver is full is paused (not decoded) until it drains, so a
slow client slows only its own stream.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time

from app.engine import batching, placement, slot_files
from app.engine.delivery import Delivery
from app.engine.events import Failed, Job, StopType, Token, TokenInfo
from app.engine.ports import (
    Cancel,
    Command,
    ContextLike,
    EngineStopped,
    LoraLike,
    Outbox,
    SlotOp,
    Stop,
    Submit,
    VocabLike,
    Wake,
)
from app.engine.prompt_cache import PromptCache
from app.engine.sampling import Sampled
from app.engine.slots import Counters, Slot, SlotInfo, SlotState
from app.engine.stopping import TokenFacts, Verdict, decide
from app.engine.threads import ThreadTuner

log = logging.getLogger(__name__)

#: threads that finish grammar steps the fast path could not (see Sampler.resolve)
GRAMMAR_WORKERS = 2
#: a grammar step still open after this long fails its request (the watchdog)
GRAMMAR_STEP_BUDGET_S = 30.0
_STALL_WAIT_S = 0.002


class Engine:
    """Runs the step loop on its own thread. Start with :meth:`start`, end with :meth:`stop`."""

    def __init__(self, model: VocabLike, context: ContextLike, outbox: Outbox, *, n_slots: int,
                 slot_ctx: int, prompt_cache: PromptCache | None = None,
                 tuner: ThreadTuner | None = None, context_shift: bool = False,
                 can_shift: bool = False, lora: LoraLike | None = None) -> None:
        if n_slots > context.n_seq_max:
            raise ValueError("more slots than context sequences")
        self.model = model
        self.ctx = context
        self.slots = [Slot(id=i, n_ctx=slot_ctx) for i in range(n_slots)]
        self.slot_ctx = slot_ctx
        self._commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._waiting: collections.deque[Job] = collections.deque()
        self._delivery = Delivery(outbox)
        self._prompt_order: list[Slot] = []
        self._thread = threading.Thread(target=self._run, name="sluice-engine", daemon=True)
        self.counters = Counters()
        self.error: BaseException | None = None
        self._grammar_pool = concurrent.futures.ThreadPoolExecutor(
            GRAMMAR_WORKERS, thread_name_prefix="sluice-grammar")
        self.grammar_step_budget_s = GRAMMAR_STEP_BUDGET_S
        self.prompt_cache = prompt_cache
        self.tuner = tuner
        #: a slot whose context is full drops old tokens and goes on (llama.cpp's
        #: --context-shift) instead of ending the reply ``truncated``
        self.context_shift = context_shift and can_shift
        #: the context can move positions: cache reuse (``n_cache_reuse``) is possible
        self.can_shift = can_shift
        #: LoRA adapters: a step decodes only slots that use the scales it set (app.engine.lora)
        self._lora = batching.LoraTurns(lora)
        #: the jobs of the decode now running (replaced, never mutated: read by other threads)
        self._decoding: frozenset[int] = frozenset()

    # --- API for other threads -------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> None:
        self._commands.put(Submit(job))

    def cancel(self, job_id: int) -> None:
        """End a job. One in the decode now running stops it at its next graph node (a long
        prompt chunk takes a second on a CPU); the other rows of that batch are decoded again
        in the next step."""
        self._commands.put(Cancel(job_id))
        if job_id in self._decoding:
            self.ctx.abort_decode()

    def slot_action(self, kind: str, slot_id: int, path: str = "", identity: str = ""
                    ) -> concurrent.futures.Future[dict[str, int]]:
        """Save, restore or erase an idle slot's KV between two steps.

        The future fails with :class:`SlotBusy` when the slot is processing and
        with :class:`SlotFileError` when the file cannot be written or read, or was
        computed by another model (``identity``, see :mod:`app.engine.slot_files`).
        """
        future: concurrent.futures.Future[dict[str, int]] = concurrent.futures.Future()
        self._commands.put(SlotOp(kind, slot_id, path, future, identity))
        if not self.alive and self._thread.ident is not None:
            self._fail_commands()  # nobody will take it
        return future

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread; returns once no thread of the engine uses the model any more."""
        self._commands.put(Stop())
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._grammar_pool.shutdown(wait=True, cancel_futures=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def n_waiting(self) -> int:
        return len(self._waiting)

    def slot_infos(self) -> list[SlotInfo]:
        return [s.info() for s in self.slots]

    # --- the loop ------------------------------------------------------------
    def run_once(self, *, block: bool = False) -> bool:
        """One iteration of the loop: commands, slot assignment, delivery, one decode.

        Returns False once a stop command was taken. ``block`` waits for a
        command when there is nothing to do. The thread calls this in a loop;
        tests call it directly to drive the scheduler step by step.
        """
        active = any(s.job is not None for s in self.slots) or bool(self._waiting)
        if not self._take_commands(block=block and not active and not self._delivery.finishing):
            return False
        self._assign()
        self._collect_sampling()
        self._flush()
        if not self._step() and block and (self._delivery.finishing or self._any_stalled()):
            return self._take_commands(block=True, timeout=_STALL_WAIT_S)
        return True

    def _run(self) -> None:
        try:
            while self.run_once(block=True):
                pass
        except Exception as exc:  # the thread must report, not vanish: /health turns 503
            self.error = exc
            log.exception("the engine thread failed; its requests fail and /health reports it")
            self._fail_all(f"engine failure: {exc!r}")
        finally:
            self._release_all()
            self._fail_commands()

    def _fail_commands(self) -> None:
        """Answer what is still queued once the loop has ended: no future waits forever."""
        while True:
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return
            match cmd:
                case SlotOp(future=future) if not future.done():
                    future.set_exception(EngineStopped("the engine is not running"))
                case Submit(job=job):
                    job.sampler.close()

    def _take_commands(self, *, block: bool, timeout: float | None = None) -> bool:
        """Apply queued commands; False when the engine must stop."""
        try:
            cmd = self._commands.get(block=block, timeout=timeout)
        except queue.Empty:
            return True
        while True:
            match cmd:
                case Submit(job=job):
                    self.counters.requests_total += 1
                    self._waiting.append(job)
                case Cancel(job_id=job_id):
                    self._drop(job_id)
                case SlotOp():
                    slot_files.apply(self.ctx, self.slots[cmd.slot_id], cmd)
                case Stop():
                    return False
                case Wake():
                    pass
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return True

    def _drop(self, job_id: int) -> None:
        for job in self._waiting:
            if job.id == job_id:
                self._waiting.remove(job)
                job.sampler.close()
                self.counters.requests_dropped_queued_total += 1
                return
        self._delivery.finishing.pop(job_id, None)
        for slot in self.slots:
            if slot.job is not None and slot.job.id == job_id:
                self._release(slot)
                return

    # --- slots -------------------------------------------------------------
    def _assign(self) -> None:
        """Give waiting jobs (in order) the slots placement picks for them."""
        for job in list(self._waiting):
            slot = placement.choose_slot(self.slots, job.request)
            if slot is None:
                continue
            self._waiting.remove(job)
            keep = placement.place(self.ctx, slot, job.request, slots=self.slots,
                                   cache=self.prompt_cache, can_shift=self.can_shift,
                                   counters=self.counters)
            self.counters.requests_started_total += 1
            slot.begin(job, keep, time.perf_counter())
            self._prompt_order.append(slot)

    def _release(self, slot: Slot) -> None:
        slot.release(time.perf_counter())
        if slot in self._prompt_order:
            self._prompt_order.remove(slot)

    def _finish(self, slot: Slot, stop_type: StopType, *, word: str = "",
                truncated: bool = False, flush: bool = True) -> None:
        job = slot.job
        assert job is not None
        if stop_type is not StopType.WORD and flush:
            tail = slot.stops.feed(slot.detok.flush()).text + slot.stops.flush()
            if tail:
                slot.outbox.append(Token(text=tail, tokens=()))
        slot.outbox.append(slot.done(stop_type, word=word, truncated=truncated,
                                     now=time.perf_counter(), counters=self.counters))
        self._delivery.finish(job, slot.outbox)
        self._release(slot)

    def _any_stalled(self) -> bool:
        return any(s.job is not None and (s.outbox or s.sampling is not None) for s in self.slots)

    # --- one step ----------------------------------------------------------
    def _step(self) -> bool:
        """Build and decode one batch; False when there was nothing to decode."""
        ctx = self.ctx
        ctx.clear_batch()
        plan, logit_rows = batching.plan(ctx, self.slots, self._prompt_order,
                                         self._lora.choose(ctx, self.slots))
        if not plan:
            return False
        started = time.perf_counter()
        self._decoding = frozenset(s.job.id for s, _f, _r in plan if s.job is not None)
        try:
            rc = ctx.decode()
        finally:
            self._decoding = frozenset()
        if self.tuner is not None and rc == 0 and len(plan) == len(logit_rows) == ctx.n_rows:
            # only generated tokens in this batch: a measure of decode speed
            now = time.perf_counter()
            threads = self.tuner.observe(ctx.n_rows, now - started, now)
            if threads is not None:
                ctx.set_threads(threads)
        self.counters.decode_calls_total += 1
        self.counters.busy_slots_total += len(plan)
        if rc == 2:  # aborted for a cancelled job: the others go again in the next step
            self._decode_aborted(plan)
            return True
        if rc == 1 and placement.free_idle_cells(self.ctx, self.slots):  # a full shared pool (--kv-unified)
            self._decode_aborted(plan)  # undone, and tried again next step with more room
            return True
        if rc != 0:
            self._decode_failed(plan, rc)
            return True
        for slot, _first, rows in plan:
            try:
                self._advance(slot, rows, logit_rows.get(slot.id))
            except Exception as exc:  # one request's sampler or stop logic: that request fails
                log.exception("request %s failed in its step", slot.job.id if slot.job else "?")
                # the step may have stopped between the decode and the bookkeeping: what the
                # sequence holds is unknown, and a stale tail makes the next decode fail
                self.ctx.seq_clear(slot.id)
                slot.cache.clear()
                if slot.job is not None:
                    self._fail(slot, f"internal error: {type(exc).__name__}")
        self._flush()
        return True

    def _decode_aborted(self, plan: batching.Plan) -> None:
        """Undo an aborted batch: each slot's rows of it leave its sequence (llama.cpp kept
        the micro-batches it finished), and nothing advances, so the next step adds the same
        rows again; the cancelled job is dropped by then (its command was queued first)."""
        for slot, _first, _rows in plan:
            start = slot.next_prompt if slot.state is SlotState.PROMPT else slot.n_past
            if not self.ctx.seq_rm(slot.id, start, -1):  # cannot happen for attention KV
                self.ctx.seq_clear(slot.id)
                slot.cache.clear()
                if slot.job is not None:
                    self._fail(slot, "decoding failed: an aborted batch could not be undone")

    def _decode_failed(self, plan: batching.Plan, rc: int) -> None:
        # rc 1 happens when the slots of --kv-unified fill their shared pool together: every
        # request of the batch fails, in llama.cpp's words
        reason = ("the context size has been exceeded (no room left in the KV cache)" if rc == 1
                  else f"llama_decode returned {rc}")
        for slot, _first, _rows in plan:
            # Positions decoded in a failed batch are unknown: drop the whole sequence.
            self.ctx.seq_clear(slot.id)
            slot.cache.clear()
            self._fail(slot, f"decoding failed: {reason}")

    def _fail(self, slot: Slot, message: str) -> None:
        slot.outbox.append(Failed(message=message))
        job = slot.job
        assert job is not None
        self._delivery.finish(job, slot.outbox)
        self._release(slot)

    def _advance(self, slot: Slot, rows: int, logit_row: int | None) -> None:
        job = slot.job
        if job is None:  # cancelled while its rows were decoding
            return
        req = job.request
        if slot.state is SlotState.PROMPT:
            if not slot.read_prompt(rows, time.perf_counter(), self.counters):
                return
            self._prompt_order.remove(slot)
            if req.n_predict == 0:
                self._finish(slot, StopType.LIMIT)
                return
        else:
            slot.cache.append(slot.pending)
        assert logit_row is not None
        sampled = job.sampler.sample(self.ctx.raw, logit_row)
        if sampled is None:  # the grammar's slow path: finish it on a worker
            slot.state = SlotState.SAMPLING
            slot.sampling_since = time.perf_counter()
            slot.sampling = self._grammar_pool.submit(job.sampler.resolve)
            slot.sampling.add_done_callback(lambda _f: self._commands.put(Wake()))
            return
        self._on_token(slot, sampled)

    def _collect_sampling(self) -> None:
        """Apply grammar steps finished off the thread; the slot generates again."""
        for slot in self.slots:
            future = slot.sampling
            if future is None:
                continue
            if not future.done():
                if time.perf_counter() - slot.sampling_since > self.grammar_step_budget_s:
                    # the one request fails, not the server; its worker finishes in the
                    # background and frees the sampler then
                    self._fail(slot, f"a grammar step took over {self.grammar_step_budget_s:g} s: "
                                     "the grammar is too costly for this model's vocabulary")
                continue
            slot.sampling = None
            slot.state = SlotState.GENERATE
            try:
                sampled = future.result()
            except Exception as exc:
                self._fail(slot, f"sampling failed: {exc!r}")
                continue
            self._on_token(slot, sampled)

    def _on_token(self, slot: Slot, sampled: Sampled) -> None:
        job = slot.job
        assert job is not None
        req = job.request
        if sampled.grammar_exhausted:
            self._finish(slot, StopType.EOS)
            return
        token = sampled.token
        slot.n_decoded += 1
        self.counters.tokens_predicted_total += 1
        info = TokenInfo(token=token, logprob=sampled.logprob, top=sampled.top)
        eog = token in self.model.eog_ids
        text, cut, word = "", None, None
        if eog:
            if info.logprob is not None:
                slot.outbox.append(Token(text="", tokens=(info,)))
        else:
            result = slot.stops.feed(slot.detok.feed(self.model.piece(token)))
            text, word = result.text, result.stop_word
            cut = slot.indent.feed(text)
            slot.outbox.append(Token(text=text if cut is None else text[:cut], tokens=(info,)))
        over_time = (req.t_max_predict_ms > 0 and slot.new_line and
                     (time.perf_counter() - slot.t_prompt) * 1000.0 > req.t_max_predict_ms)
        slot.new_line = slot.new_line or "\n" in text
        verdict = decide(TokenFacts(
            end_of_generation=eog, indent_cut=cut is not None,
            ends=cut is None and bool(text) and req.ends is not None and req.ends(text),
            stop_word=word, n_decoded=slot.n_decoded, n_predict=req.n_predict,
            over_time=over_time, n_past=slot.n_past, n_ctx=slot.n_ctx))
        match verdict:
            case Verdict.GO_ON:
                slot.pending = token
            case Verdict.EOS:
                self._finish(slot, StopType.EOS)
            case Verdict.CUT:  # the cut line is not part of the reply: nothing held back is
                self._finish(slot, StopType.LIMIT, flush=False)
            case Verdict.WORD:
                assert word is not None
                self._finish(slot, StopType.WORD, word=word)
            case Verdict.LIMIT:
                self._finish(slot, StopType.LIMIT)
            case Verdict.FULL:
                if self.context_shift and placement.shift(self.ctx, slot, self.counters):
                    slot.pending = token
                else:
                    self._finish(slot, StopType.LIMIT, truncated=True)

    # --- delivery ----------------------------------------------------------
    def _flush(self) -> None:
        self._delivery.flush(self.slots)

    def _fail_all(self, message: str) -> None:
        for slot in self.slots:
            if slot.job is not None:
                slot.outbox.append(Failed(message=message))
        for job in self._waiting:
            self._delivery.finish(job, [Failed(message=message)])
        self._waiting.clear()
        with contextlib.suppress(Exception):  # best effort while dying
            self._flush()

    def _release_all(self) -> None:
        for slot in self.slots:
            if slot.job is not None:
                self._release(slot)
        for job in self._waiting:
            job.sampler.close()
        self._waiting.clear()
