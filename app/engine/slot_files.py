"""Saving, restoring and erasing an idle slot's KV (``POST /slots/{id}?action=...``).

Runs on the engine thread between two steps, answering the caller through the
command's future.
"""

from __future__ import annotations

from app.engine.ports import ContextLike, SlotBusy, SlotFileError, SlotOp
from app.engine.slots import Slot


def apply(ctx: ContextLike, slot: Slot, op: SlotOp) -> None:
    """Carry out ``op`` on ``slot``; the result or the error goes to ``op.future``."""
    if slot.job is not None:
        op.future.set_exception(SlotBusy(f"slot {slot.id} is processing a request"))
        return
    if op.kind == "erase":
        n = len(slot.cache)
        ctx.seq_clear(slot.id)
        slot.cache.clear()
        op.future.set_result({"n_erased": n})
    elif op.kind == "save":
        written = ctx.save_seq(slot.id, op.path, slot.cache)
        if written == 0:
            op.future.set_exception(SlotFileError(f"could not write {op.path}"))
        else:
            op.future.set_result({"n_saved": len(slot.cache), "n_written": written})
    else:
        tokens = ctx.load_seq(slot.id, op.path, slot.n_ctx)
        if tokens is None:
            slot.cache.clear()
            op.future.set_exception(SlotFileError(f"could not restore from {op.path}"))
        else:
            slot.cache = tokens
            op.future.set_result({"n_restored": len(tokens)})
