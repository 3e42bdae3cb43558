"""The engine thread: slots, the waiting queue and the continuous batch.

One thread owns the model's context. Each step it

1. takes commands (submit, cancel, stop) from a thread-safe queue,
2. gives waiting requests (FIFO) to idle slots, preferring the slot whose cached
   tokens share the longest prefix with the prompt (when it is meaningful: else an
   empty slot, else the least recently used), and brings in a longer prefix from
   the host-memory prompt cache or another slot (:mod:`app.engine.prompt_cache`),
3. builds one batch: one token for every generating slot, then prompt chunks of
   slots still reading their prompt, up to ``n_batch`` rows,
4. calls ``llama_decode`` once, samples each slot at its own row (a grammar
   step the fast path cannot settle is finished on a worker thread while the
   other slots go on), and
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
from collections.abc import Sequence

from app.engine import prompt_cache, slot_files
from app.engine.delivery import Delivery
from app.engine.events import Done, Failed, Job, Progress, Started, StopType, Token, TokenInfo
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
from app.engine.slots import Counters, Slot, SlotInfo, SlotState, common_prefix
from app.engine.text import Detokenizer, IndentWatch, StopMatcher
from app.engine.threads import ThreadTuner

log = logging.getLogger(__name__)

#: threads that finish grammar steps the fast path could not (see Sampler.resolve)
GRAMMAR_WORKERS = 2
#: a grammar step still open after this long fails its request (the watchdog)
GRAMMAR_STEP_BUDGET_S = 30.0
_STALL_WAIT_S = 0.002
#: a common prefix this long (or half the prompt) decides which idle slot a request gets
MEANINGFUL_PREFIX = 16
#: the cache-reuse scan compares at most this many tokens per token of cache and prompt
REUSE_SCAN_FACTOR = 8


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
        self.lora = lora
        #: the jobs of the decode now running (replaced, never mutated: read by other threads)
        self._decoding: frozenset[int] = frozenset()
        self._lora_set: tuple[float, ...] = ()
        self._lora_turn = 0

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
                    self._slot_op(cmd)
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

    def _slot_op(self, op: SlotOp) -> None:
        slot_files.apply(self.ctx, self.slots[op.slot_id], op)

    # --- slots -------------------------------------------------------------
    def _assign(self) -> None:
        if not self._waiting:
            return
        for job in list(self._waiting):
            slot = self._choose_slot(job)
            if slot is None:
                continue
            self._waiting.remove(job)
            self._begin(slot, job)

    def _choose_slot(self, job: Job) -> Slot | None:
        idle = [s for s in self.slots if s.job is None]
        if job.request.id_slot >= 0:
            idle = [s for s in idle if s.id == job.request.id_slot]
        if not idle:
            return None
        prompt = job.request.prompt
        lora = job.request.lora
        if job.request.cache_prompt:
            def shared(s: Slot) -> int:
                return common_prefix(s.cache, prompt) if s.cache_lora == lora else 0

            best = max(idle, key=lambda s: (shared(s), -s.last_used))
            # a shared BOS or first word is no reason to overwrite a slot's cache
            if shared(best) >= min(MEANINGFUL_PREFIX, len(prompt) // 2):
                return best
        # the slot whose cache is worth least: an empty one, else the least recently used
        return min(idle, key=lambda s: (bool(s.cache), s.last_used))

    def _begin(self, slot: Slot, job: Job) -> None:
        req = job.request
        prompt = req.prompt
        if slot.cache_lora != req.lora:  # that KV was computed with other adapters
            self._save_to_ram(slot, 0)
            self.ctx.seq_clear(slot.id)
            slot.cache.clear()
            slot.cache_lora = req.lora
        keep = common_prefix(slot.cache, prompt) if req.cache_prompt else 0
        if req.cache_prompt and self.prompt_cache is not None and not req.lora:
            keep = self._reuse(slot, prompt, keep)
        if req.cache_prompt and req.n_cache_reuse > 0 and self.can_shift:
            keep = self._reuse_chunks(slot, prompt, keep, req.n_cache_reuse)
        keep = min(keep, len(prompt) - 1)  # at least one token to evaluate, for logits
        if keep < len(slot.cache) and not self.ctx.seq_rm(slot.id, keep, -1):
            self.ctx.seq_clear(slot.id)
            keep = 0
        del slot.cache[keep:]
        self.counters.requests_started_total += 1
        slot.job = job
        slot.state = SlotState.PROMPT
        slot.next_prompt = keep
        slot.tokens_cached = keep
        slot.pending = -1
        slot.n_decoded = 0
        slot.shifted = False
        slot.outbox.clear()
        slot.detok = Detokenizer()
        slot.stops = StopMatcher(req.stops)
        slot.indent = IndentWatch(req.n_indent)
        slot.new_line = False
        slot.t_start = time.perf_counter()
        slot.t_prompt = slot.t_start
        self._prompt_order.append(slot)
        slot.outbox.append(Started(id_slot=slot.id, tokens_cached=keep))
        if req.return_progress:
            slot.outbox.append(Progress(len(prompt), keep, keep, 0.0))

    def _reuse_chunks(self, slot: Slot, prompt: Sequence[int], keep: int, n_min: int) -> int:
        """llama.cpp's cache reuse: after the common prefix, chunks of at least ``n_min`` cached
        tokens that the prompt holds next (what is left when a part in the middle was cut) are
        moved back into place instead of being evaluated again. Returns the new ``keep``."""
        cache = slot.cache
        head_c = head_p = keep
        # the scan can be quadratic (long runs a little shorter than n_min at every offset):
        # held to a linear budget of comparisons, so no prompt stalls the step loop
        budget = REUSE_SCAN_FACTOR * (len(cache) + len(prompt))
        while head_c < len(cache) and head_p < len(prompt) and budget > 0:
            n = 0
            while (head_c + n < len(cache) and head_p + n < len(prompt)
                   and cache[head_c + n] == prompt[head_p + n]):
                n += 1
            budget -= n + 1
            if n < n_min:
                head_c += 1
                continue
            if not self.ctx.seq_rm(slot.id, head_p, head_c):
                break
            self.ctx.seq_add(slot.id, head_c, head_c + n, head_p - head_c)
            cache[head_p:head_p + n] = cache[head_c:head_c + n]
            keep += n
            head_c += n
            head_p += n
            self.counters.cache_reused_tokens_total += n
        return keep

    def _reuse(self, slot: Slot, prompt: Sequence[int], keep: int) -> int:
        """Save what ``slot`` is about to lose, and bring in the longest prefix of ``prompt``
        held anywhere (the RAM cache or another slot's cells). Returns the new ``keep``."""
        cache = self.prompt_cache
        assert cache is not None
        entry, best = cache.best(prompt)
        donor: Slot | None = None
        for other in self.slots:
            if (other is not slot and other.state is not SlotState.SAMPLING
                    and not other.cache_lora):
                n = prompt_cache.common_prefix(other.cache, prompt)
                if n > best:
                    donor, best = other, n
        use = best >= keep + prompt_cache.MIN_GAIN
        # what this slot holds beyond the part the request keeps goes to RAM first
        self._save_to_ram(slot, best if use else keep)
        if not use:
            return keep
        if donor is not None:
            state = self.ctx.get_seq_state(donor.id)
            tokens = list(donor.cache)
        else:
            assert entry is not None
            cache.touch(entry)
            state, tokens = entry.data, list(entry.tokens)
        if state is None or not self.ctx.set_seq_state(slot.id, state):
            slot.cache.clear()
            return 0
        slot.cache = tokens
        cache.stats.hits += 1
        cache.stats.tokens_restored += best - keep
        return best

    def _save_to_ram(self, slot: Slot, kept_here: int) -> None:
        """Put what ``slot`` is about to lose beyond ``kept_here`` tokens in the RAM prompt cache
        (only KV computed without adapters: the cache has no key for them)."""
        cache = self.prompt_cache
        if (cache is None or slot.cache_lora or len(slot.cache) - kept_here < prompt_cache.MIN_TOKENS
                or cache.covers(slot.cache)):
            return
        state = self.ctx.get_seq_state(slot.id)
        if state is not None:
            cache.put(slot.cache, state)

    def _release(self, slot: Slot) -> None:
        if slot.job is not None:
            sampler = slot.job.sampler
            if slot.sampling is not None:
                # a grammar worker may still be using it: free it when the worker is done
                slot.sampling.add_done_callback(lambda _f: sampler.close())
            else:
                sampler.close()
        slot.sampling = None
        slot.job = None
        slot.state = SlotState.IDLE
        slot.outbox.clear()
        slot.last_used = time.perf_counter()
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
        now = time.perf_counter()
        c = self.counters
        c.prompt_tokens_cached_total += slot.tokens_cached
        c.prompt_seconds_total += slot.t_prompt - slot.t_start
        if slot.n_decoded:
            c.predicted_seconds_total += now - slot.t_prompt
        c.n_tokens_max = max(c.n_tokens_max, slot.n_past)
        slot.outbox.append(Done(
            stop_type=stop_type, stopping_word=word, tokens_predicted=slot.n_decoded,
            tokens_evaluated=len(job.request.prompt), tokens_cached=slot.tokens_cached,
            truncated=truncated or slot.shifted, id_slot=slot.id,
            prompt_ms=(slot.t_prompt - slot.t_start) * 1000.0,
            predicted_ms=(now - slot.t_prompt) * 1000.0 if slot.n_decoded else 0.0,
            prompt_n=len(job.request.prompt) - slot.tokens_cached,
            grammar_rejections=job.sampler.rejections,
            grammar_full_passes=job.sampler.full_passes,
            grammar_narrowed_passes=job.sampler.narrowed_passes))
        self._delivery.finish(job, slot.outbox)
        self._release(slot)

    def _any_stalled(self) -> bool:
        return any(s.job is not None and (s.outbox or s.sampling is not None) for s in self.slots)

    # --- one step ----------------------------------------------------------
    def _step(self) -> bool:
        """Build and decode one batch; False when there was nothing to decode."""
        ctx = self.ctx
        ctx.clear_batch()
        lora = self._choose_lora()
        plan: list[tuple[Slot, int, int]] = []  # (slot, first row, rows)
        logit_rows: dict[int, int] = {}  # slot id -> row with logits
        for slot in self.slots:
            if slot.job is not None and slot.job.request.lora != lora:
                continue
            if slot.state is SlotState.GENERATE and not slot.outbox:
                row = ctx.add(slot.pending, slot.n_past, slot.id, True)
                plan.append((slot, row, 1))
                logit_rows[slot.id] = row
        budget = ctx.n_batch - ctx.n_rows
        for slot in list(self._prompt_order):
            if budget <= 0:
                break
            if slot.outbox or (slot.job is not None and slot.job.request.lora != lora):
                continue
            job = slot.job
            assert job is not None
            prompt = job.request.prompt
            take = min(budget, len(prompt) - slot.next_prompt)
            if 1 < take == len(prompt) - slot.next_prompt:
                # the last prompt token is decoded in a step of its own, as it is when the
                # whole prompt is cached: the first token's logits, and so a seeded reply,
                # are then the same with the prompt cache warm or cold
                take -= 1
            first = ctx.n_rows
            for i in range(slot.next_prompt, slot.next_prompt + take):
                last = i == len(prompt) - 1
                row = ctx.add(prompt[i], i, slot.id, last)
                if last:
                    logit_rows[slot.id] = row
            plan.append((slot, first, take))
            budget -= take
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
        if rc == 1 and self._free_idle_cells():  # a full shared pool (--kv-unified)
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

    def _choose_lora(self) -> tuple[float, ...]:
        """The adapters' scales of this step: the only ones in use, else each in turn; applied
        to the context when they change."""
        ready = sorted({s.job.request.lora for s in self.slots if s.job is not None
                        and not s.outbox and s.state in (SlotState.GENERATE, SlotState.PROMPT)})
        if not ready:
            return self._lora_set
        chosen = ready[self._lora_turn % len(ready)] if len(ready) > 1 else ready[0]
        self._lora_turn += 1
        if chosen != self._lora_set and self.lora is not None:
            self.lora.apply(self.ctx.raw, chosen)
            self._lora_set = chosen
        return chosen

    def _decode_aborted(self, plan: list[tuple[Slot, int, int]]) -> None:
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

    def _free_idle_cells(self) -> bool:
        """Drop the cached prefixes of idle slots (their cells are only a cache); whether any
        were held."""
        freed = False
        for slot in self.slots:
            if slot.job is None and slot.cache:
                self.ctx.seq_clear(slot.id)
                slot.cache.clear()
                freed = True
        return freed

    def _decode_failed(self, plan: list[tuple[Slot, int, int]], rc: int) -> None:
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
            start = slot.next_prompt
            slot.cache.extend(req.prompt[start:start + rows])
            slot.next_prompt += rows
            self.counters.prompt_tokens_total += rows
            if req.return_progress:
                slot.outbox.append(Progress(len(req.prompt), slot.tokens_cached, slot.next_prompt,
                                            (time.perf_counter() - slot.t_start) * 1000.0))
            if slot.next_prompt < len(req.prompt):
                return
            slot.state = SlotState.GENERATE
            slot.t_prompt = time.perf_counter()
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
        info = TokenInfo(token=token, logprob=sampled.logprob,
                         top=sampled.top)
        if token in self.model.eog_ids:
            if info.logprob is not None:
                slot.outbox.append(Token(text="", tokens=(info,)))
            self._finish(slot, StopType.EOS)
            return
        result = slot.stops.feed(slot.detok.feed(self.model.piece(token)))
        text = result.text
        cut = slot.indent.feed(text)
        if cut is not None:  # n_indent: this line is indented less; it is not part of the reply
            slot.outbox.append(Token(text=text[:cut], tokens=(info,)))
            self._finish(slot, StopType.LIMIT, flush=False)
            return
        slot.outbox.append(Token(text=text, tokens=(info,)))
        if req.ends is not None and text and req.ends(text):
            self._finish(slot, StopType.EOS)
            return
        over_time = (req.t_max_predict_ms > 0 and slot.new_line and
                     (time.perf_counter() - slot.t_prompt) * 1000.0 > req.t_max_predict_ms)
        slot.new_line = slot.new_line or "\n" in text
        if result.stop_word is not None:
            self._finish(slot, StopType.WORD, word=result.stop_word)
        elif 0 < req.n_predict <= slot.n_decoded or over_time:
            self._finish(slot, StopType.LIMIT)
        elif slot.n_past + 1 >= slot.n_ctx and not (self.context_shift and self._shift(slot)):
            self._finish(slot, StopType.LIMIT, truncated=True)
        else:
            slot.pending = token

    def _shift(self, slot: Slot) -> bool:
        """Make room in a full slot as llama.cpp's context shift does: keep the first
        ``n_keep`` tokens, drop ``n_discard`` after them (default: half of the rest) and move
        the others back. False when nothing can be dropped (the reply ends truncated)."""
        job = slot.job
        assert job is not None
        req = job.request
        n_keep = max(0, min(slot.n_ctx - 4, req.n_keep))
        n_left = slot.n_past - n_keep
        n_discard = min(max(req.n_discard or n_left // 2, 0), max(0, n_left - 1))
        if n_discard <= 0 or not self.ctx.seq_rm(slot.id, n_keep, n_keep + n_discard):
            return False
        self.ctx.seq_add(slot.id, n_keep + n_discard, slot.n_past, -n_discard)
        del slot.cache[n_keep:n_keep + n_discard]
        slot.shifted = True
        self.counters.context_shifts_total += 1
        return True

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
