"""Where a request runs and how much of its prompt is already computed.

Functions of the slots, the context and the host-memory prompt cache, called by the engine
thread between two steps (:mod:`app.engine.scheduler`):

- :func:`choose_slot`: the idle slot whose cache shares the longest meaningful prefix with
  the prompt, else an empty one, else the least recently used;
- :func:`place`: keep that slot's common prefix, bring in a longer one from the RAM cache or
  another slot (:func:`bring_prefix`), move chunks after a cut back into place
  (:func:`reuse_chunks`, llama.cpp's ``--cache-reuse``), and drop the rest of its cells.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.engine import prompt_cache
from app.engine.events import GenerationRequest
from app.engine.ports import ContextLike
from app.engine.prompt_cache import PromptCache, common_prefix
from app.engine.slots import Counters, Slot, SlotState

#: a common prefix this long (or half the prompt) decides which idle slot a request gets
MEANINGFUL_PREFIX = 16
#: the cache-reuse scan compares at most this many tokens per token of cache and prompt
REUSE_SCAN_FACTOR = 8


def choose_slot(slots: Sequence[Slot], request: GenerationRequest) -> Slot | None:
    """The idle slot ``request`` should take (only its ``id_slot`` if it names one); None
    when there is none."""
    idle = [s for s in slots if s.job is None]
    if request.id_slot >= 0:
        idle = [s for s in idle if s.id == request.id_slot]
    if not idle:
        return None
    prompt = request.prompt
    if request.cache_prompt:
        def shared(s: Slot) -> int:
            return common_prefix(s.cache, prompt) if s.cache_lora == request.lora else 0

        best = max(idle, key=lambda s: (shared(s), -s.last_used))
        # a shared BOS or first word is no reason to overwrite a slot's cache
        if shared(best) >= min(MEANINGFUL_PREFIX, len(prompt) // 2):
            return best
    # the slot whose cache is worth least: an empty one, else the least recently used
    return min(idle, key=lambda s: (bool(s.cache), s.last_used))


def place(ctx: ContextLike, slot: Slot, request: GenerationRequest, *, slots: Sequence[Slot],
          cache: PromptCache | None, can_shift: bool, counters: Counters) -> int:
    """Make ``slot``'s sequence hold the longest computed prefix of ``request``'s prompt it
    can get, and nothing after it; returns that prefix's length (at most the prompt's
    length less one: the last token is evaluated, for its logits)."""
    prompt = request.prompt
    if slot.cache_lora != request.lora:  # that KV was computed with other adapters
        save_to_ram(ctx, cache, slot, 0)
        ctx.seq_clear(slot.id)
        slot.cache.clear()
        slot.cache_lora = request.lora
    keep = common_prefix(slot.cache, prompt) if request.cache_prompt else 0
    if request.cache_prompt and cache is not None and not request.lora:
        keep = bring_prefix(ctx, cache, slots, slot, prompt, keep)
    if request.cache_prompt and request.n_cache_reuse > 0 and can_shift:
        keep, moved = reuse_chunks(ctx, slot, prompt, keep, request.n_cache_reuse)
        counters.cache_reused_tokens_total += moved
    keep = min(keep, len(prompt) - 1)
    if keep < len(slot.cache) and not ctx.seq_rm(slot.id, keep, -1):
        ctx.seq_clear(slot.id)
        keep = 0
    del slot.cache[keep:]
    return keep


def reuse_chunks(ctx: ContextLike, slot: Slot, prompt: Sequence[int], keep: int,
                 n_min: int) -> tuple[int, int]:
    """llama.cpp's cache reuse: after the common prefix, chunks of at least ``n_min`` cached
    tokens that the prompt holds next (what is left when a part in the middle was cut) are
    moved back into place instead of being evaluated again. Returns the new ``keep`` and
    the number of tokens moved."""
    cache = slot.cache
    head_c = head_p = keep
    moved = 0
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
        if not ctx.seq_rm(slot.id, head_p, head_c):
            break
        ctx.seq_add(slot.id, head_c, head_c + n, head_p - head_c)
        cache[head_p:head_p + n] = cache[head_c:head_c + n]
        keep += n
        head_c += n
        head_p += n
        moved += n
    return keep, moved


def bring_prefix(ctx: ContextLike, cache: PromptCache, slots: Sequence[Slot], slot: Slot,
                 prompt: Sequence[int], keep: int) -> int:
    """Save what ``slot`` is about to lose, and bring in the longest prefix of ``prompt``
    held anywhere (the RAM cache or another slot's cells). Returns the new ``keep``."""
    entry, best = cache.best(prompt)
    donor: Slot | None = None
    for other in slots:
        if other is not slot and other.state is not SlotState.SAMPLING and not other.cache_lora:
            n = common_prefix(other.cache, prompt)
            if n > best:
                donor, best = other, n
    use = best >= keep + prompt_cache.MIN_GAIN
    # what this slot holds beyond the part the request keeps goes to RAM first
    save_to_ram(ctx, cache, slot, best if use else keep)
    if not use:
        return keep
    if donor is not None:
        state = ctx.get_seq_state(donor.id)
        tokens = list(donor.cache)
    else:
        assert entry is not None
        cache.touch(entry)
        state, tokens = entry.data, list(entry.tokens)
    if state is None or not ctx.set_seq_state(slot.id, state):
        slot.cache.clear()
        return 0
    slot.cache = tokens
    cache.stats.hits += 1
    cache.stats.tokens_restored += best - keep
    return best


def save_to_ram(ctx: ContextLike, cache: PromptCache | None, slot: Slot, kept_here: int) -> None:
    """Put what ``slot`` is about to lose beyond ``kept_here`` tokens in the RAM prompt cache
    (only KV computed without adapters: the cache has no key for them)."""
    if (cache is None or slot.cache_lora or len(slot.cache) - kept_here < prompt_cache.MIN_TOKENS
            or cache.covers(slot.cache)):
        return
    state = ctx.get_seq_state(slot.id)
    if state is not None:
        cache.put(slot.cache, state)


def shift(ctx: ContextLike, slot: Slot, counters: Counters) -> bool:
    """Make room in a full slot as llama.cpp's context shift does: keep the first
    ``n_keep`` tokens, drop ``n_discard`` after them (default: half of the rest) and move
    the others back. False when nothing can be dropped (the reply ends truncated)."""
    job = slot.job
    assert job is not None
    req = job.request
    n_keep = max(0, min(slot.n_ctx - 4, req.n_keep))
    n_left = slot.n_past - n_keep
    n_discard = min(max(req.n_discard or n_left // 2, 0), max(0, n_left - 1))
    if n_discard <= 0 or not ctx.seq_rm(slot.id, n_keep, n_keep + n_discard):
        return False
    ctx.seq_add(slot.id, n_keep + n_discard, slot.n_past, -n_discard)
    del slot.cache[n_keep:n_keep + n_discard]
    slot.shifted = True
    counters.context_shifts_total += 1
    return True


def free_idle_cells(ctx: ContextLike, slots: Sequence[Slot]) -> bool:
    """Drop the cached prefixes of idle slots (their cells are only a cache: a full shared
    pool, ``--kv-unified``, needs them); whether any were held."""
    freed = False
    for slot in slots:
        if slot.job is None and slot.cache:
            ctx.seq_clear(slot.id)
            slot.cache.clear()
            freed = True
    return freed
