"""Saving, restoring and erasing an idle slot's KV (``POST /slots/{id}?action=...``).

Runs on the engine thread between two steps, answering the caller through the
command's future.

A saved file (llama.cpp's sequence state) holds tokens and KV but not what computed them.
Beside it, ``<file>.meta.json`` records the model's fingerprint and the LoRA scales of that
KV; a restore refuses a file without it or from another model (a model of the same shape
would otherwise continue from foreign KV), and the restored KV keeps its LoRA scales, so a
request under other scales does not reuse it (nor does the RAM prompt cache take it).
"""

from __future__ import annotations

import json
from pathlib import Path

from app.engine.ports import ContextLike, SlotBusy, SlotFileError, SlotOp
from app.engine.slots import Slot


def meta_path(path: str) -> Path:
    return Path(path + ".meta.json")


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
            return
        try:
            meta_path(op.path).write_text(json.dumps(
                {"model": op.identity, "lora": list(slot.cache_lora)}), encoding="utf-8")
        except OSError as exc:
            op.future.set_exception(SlotFileError(f"could not write {op.path}: {exc.strerror}"))
            return
        op.future.set_result({"n_saved": len(slot.cache), "n_written": written})
    else:
        lora = _check_identity(op)
        if lora is None:
            return
        tokens = ctx.load_seq(slot.id, op.path, slot.n_ctx)
        if tokens is None:
            slot.cache.clear()
            op.future.set_exception(SlotFileError(f"could not restore from {op.path}"))
        else:
            slot.cache = tokens
            slot.cache_lora = lora
            op.future.set_result({"n_restored": len(tokens)})


def _check_identity(op: SlotOp) -> tuple[float, ...] | None:
    """The LoRA scales of a file this model computed; None (the future failed) otherwise."""
    try:
        meta = json.loads(meta_path(op.path).read_text(encoding="utf-8"))
        model, lora = meta["model"], tuple(float(s) for s in meta["lora"])
        if not isinstance(model, str):
            raise TypeError("model")
    except FileNotFoundError:
        op.future.set_exception(SlotFileError(
            f"{op.path} carries no model identity ({meta_path(op.path).name} is missing): it "
            "was not saved by this server, and its KV may belong to another model"))
        return None
    except (OSError, ValueError, TypeError, KeyError):
        op.future.set_exception(SlotFileError(f"{meta_path(op.path).name} is not readable"))
        return None
    if model != op.identity:
        op.future.set_exception(SlotFileError(
            f"{op.path} was computed by another model (fingerprint {model[:16]}), not this one "
            f"({op.identity[:16]})"))
        return None
    return lora
