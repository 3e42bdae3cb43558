"""One step's batch: which rows each slot puts in it, and whose LoRA adapters it runs.

The engine (:mod:`app.engine.scheduler`) decodes what :func:`plan` added to the context's
batch. Generating slots come first, one token each (every stream moves at every step),
then the prompt chunks of slots still reading their prompts, oldest first, up to the
batch's rows. A step decodes only the slots whose adapters' scales it set
(:class:`LoraTurns`): two requests with different scales take turns.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.engine.ports import ContextLike, LoraLike
from app.engine.slots import Slot, SlotState

#: (slot, first row, rows) of each slot in the batch
Plan = list[tuple[Slot, int, int]]


def plan(ctx: ContextLike, slots: Sequence[Slot], prompt_order: Sequence[Slot],
         lora: tuple[float, ...]) -> tuple[Plan, dict[int, int]]:
    """Fill ``ctx``'s (cleared) batch; returns the plan and each slot id's logits row."""
    rows: Plan = []
    logit_rows: dict[int, int] = {}
    for slot in slots:
        if slot.job is not None and slot.job.request.lora != lora:
            continue
        if slot.state is SlotState.GENERATE and not slot.outbox:
            row = ctx.add(slot.pending, slot.n_past, slot.id, True)
            rows.append((slot, row, 1))
            logit_rows[slot.id] = row
    budget = ctx.n_batch - ctx.n_rows
    for slot in list(prompt_order):
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
        rows.append((slot, first, take))
        budget -= take
    return rows, logit_rows


class LoraTurns:
    """The adapters' scales each step runs with: the only ones in use, else each in turn;
    applied to the context when they change."""

    def __init__(self, lora: LoraLike | None) -> None:
        self.lora = lora
        self.current: tuple[float, ...] = ()
        self._turn = 0

    def choose(self, ctx: ContextLike, slots: Sequence[Slot]) -> tuple[float, ...]:
        ready = sorted({s.job.request.lora for s in slots if s.job is not None
                        and not s.outbox and s.state in (SlotState.GENERATE, SlotState.PROMPT)})
        if not ready:
            return self.current
        chosen = ready[self._turn % len(ready)] if len(ready) > 1 else ready[0]
        self._turn += 1
        if chosen != self.current and self.lora is not None:
            self.lora.apply(ctx.raw, chosen)
            self.current = chosen
        return chosen
