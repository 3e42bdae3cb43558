"""LoRA adapters (llama.cpp's ``--lora`` / ``--lora-scaled``), loaded with the model.

llama.cpp applies adapters to a whole context, not to one sequence: a decode step runs every
slot it holds with the same scales. The scheduler therefore decodes together only slots whose
requests asked for the same scales, takes turns between different ones, and treats a slot's
cached prompt as valid only for the scales it was computed with.

Adapters belong to their model: llama.cpp frees them with it, so they are never freed here.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp.llama_cpp as C

from app.engine.model import Model


class LoraError(Exception):
    """An adapter file llama.cpp cannot load for this model."""


@dataclass(frozen=True, slots=True)
class Adapter:
    id: int
    path: Path
    ptr: Any


class Adapters:
    """The loaded adapters and the scales requests get unless they name their own."""

    def __init__(self, model: Model, files: tuple[tuple[Path, float], ...]) -> None:
        loaded = []
        for i, (path, _scale) in enumerate(files):
            ptr = C.llama_adapter_lora_init(model.ptr, str(path).encode())
            if not ptr:
                raise LoraError(f"could not load LoRA adapter {path}: not an adapter for "
                                f"{model.info.architecture} models of this shape, or unreadable")
            loaded.append(Adapter(i, path, ptr))
        self.items = tuple(loaded)
        #: the server-wide scales (``POST /lora-adapters`` replaces the tuple as a whole)
        self.scales: tuple[float, ...] = tuple(scale for _path, scale in files)

    def resolve(self, requested: tuple[tuple[int, float], ...] | None) -> tuple[float, ...]:
        """A request's scales: the ids it names (the others 0, as llama.cpp), else the
        server's. Normalised: no adapter in use is ``()``. Ids must have been checked."""
        if requested is None:
            scales = self.scales
        else:
            given = dict(requested)
            scales = tuple(given.get(a.id, 0.0) for a in self.items)
        return scales if any(scales) else ()

    def apply(self, ctx: Any, scales: tuple[float, ...]) -> None:
        """Make ``scales`` (``()``: none) the context's adapters. Engine thread only."""
        chosen = [(a.ptr, s) for a, s in zip(self.items, scales, strict=False) if s != 0.0]
        n = len(chosen)
        ptrs = (C.llama_adapter_lora_p_ctypes * max(1, n))(*(p for p, _ in chosen))
        values = (ctypes.c_float * max(1, n))(*(s for _, s in chosen))
        if C.llama_set_adapters_lora(ctx, ptrs, n, values) != 0:
            raise RuntimeError("llama.cpp could not set the LoRA adapters")
