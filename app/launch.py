"""``python -m app``: the server's start — settings (:mod:`app.cli`), the process set up
for llama.cpp (malloc's threshold, OpenMP's wait policy), the models found and the default
one loaded before the first request, then :func:`app.server.serve` on Trio."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from app.cli import load_settings
from app.settings import ConfigError, Settings


def embedded_model(settings: Settings) -> Path | None:
    """``--model`` naming an embedded model by its alias (and no file of that name exists)."""
    from app.engine.model import EMBEDDED

    name = str(settings.model_path) if settings.model_path is not None else ""
    if name not in EMBEDDED or settings.model_path is None or settings.model_path.exists() or (
            settings.models_dir is not None and (settings.models_dir / name).exists()):
        return None
    return EMBEDDED[name]()


def resolve_model_path(settings: Settings) -> Path | None:
    """``--model`` as given, or, when it names no file, a file of that name in ``--models-dir``."""
    path = settings.model_path
    if path is None or path.exists() or settings.models_dir is None or path.is_absolute():
        return path
    candidate = settings.models_dir / path
    # the name must be a plain file name in the folder (the file itself may be a symlink)
    if len(path.parts) != 1 or path.name in (".", ".."):
        raise ConfigError(f"model name {str(path)!r} must be a file name inside --models-dir")
    return candidate


#: glibc's M_MMAP_THRESHOLD; and the fixed threshold the server sets
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 128 * 1024


def fix_malloc_threshold() -> bool:
    """Keep large allocations in their own mappings, returned to the OS when freed.

    glibc raises its mmap threshold each time a large mapped block is freed, after which
    blocks of that size (the samplers' per-token arrays of a 262k vocabulary are 1-3 MB)
    come from the heap, whose freed memory it keeps. Measured with schema-constrained
    traffic: RSS rose from 552 to ~790 MiB and stayed there with the default; with the
    threshold fixed at 128 KiB it stayed at 587 MiB. Returns whether it could be set.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False  # not glibc
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


#: GOMP_SPINCOUNT per --poll step: --poll 50 spins 200,000 times before sleeping
SPINS_PER_POLL = 4000


def apply_poll(poll: int, env: dict[str, str] | Any) -> str:
    """Set OpenMP's wait policy for the decode threads; must run before llama.cpp loads.

    ggml asks for ``OMP_WAIT_POLICY=active`` when none is set, and an active wait spins
    without limit: beside one busy process, decoding on 2 cores fell 50-fold (ENGINE_NOTES).
    ``--poll`` bounds the spin as llama.cpp's flag of that name bounds its threadpool's:
    0 is ``PASSIVE``, 100 is ``ACTIVE`` (what ggml picks by itself), between them
    ``GOMP_SPINCOUNT = poll * 4000``; the default, 50, lets an idle decode thread sleep, which
    ``--adapt-threads`` needs (see the README's "A busy machine" and bench/contention.py).
    Variables the user set win. Returns what was set.
    """
    if "OMP_WAIT_POLICY" in env or "GOMP_SPINCOUNT" in env:
        return "OMP_WAIT_POLICY/GOMP_SPINCOUNT from the environment"
    if poll <= 0:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
        return "OMP_WAIT_POLICY=PASSIVE"
    if poll >= 100:
        env["OMP_WAIT_POLICY"] = "ACTIVE"
        return "OMP_WAIT_POLICY=ACTIVE"
    env["GOMP_SPINCOUNT"] = str(poll * SPINS_PER_POLL)
    return f"GOMP_SPINCOUNT={env['GOMP_SPINCOUNT']}"


def main(argv: list[str] | None = None) -> int:
    import logging
    import os

    import trio

    fix_malloc_threshold()
    try:
        settings, args = load_settings(sys.argv[1:] if argv is None else argv, os.environ)
    except ConfigError as exc:
        print(f"sluice: error: {exc}", file=sys.stderr)
        return 2
    for warning in args.env_warnings:
        print(f"sluice: warning: {warning}", file=sys.stderr)
    apply_poll(settings.poll, os.environ)  # before llama.cpp (and its OpenMP) loads

    from app.discovery import specs_from_settings
    from app.engine.model import EMBEDDED, Model, ModelLoadError
    from app.runtime import chat_template_for
    from app.server import build_registry, serve

    try:
        if args.assemble_model:
            for make in EMBEDDED.values():
                print(make())
            return 0
        if settings.model_path is not None and embedded_model(settings) is None:
            settings = replace(settings, model_path=resolve_model_path(settings))
        specs, default, router = specs_from_settings(settings, embedded_paths())
        preloaded = None
        registry = build_registry(settings, specs, default, router)
        hosted = registry.default_hosted
        if hosted is not None:
            model_settings = hosted.spec.settings(settings)
            model = Model(hosted.spec.path, n_gpu_layers=model_settings.n_gpu_layers,
                          verbose=settings.verbose)
            try:
                preloaded = (model, chat_template_for(model_settings, model))
            except (ValueError, OSError) as exc:
                model.close()
                raise ConfigError(str(exc)) from None
    except (ConfigError, ModelLoadError) as exc:
        print(f"sluice: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if settings.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cells = (f"sharing {settings.ctx_size} tokens" if settings.kv_unified
             else f"x {settings.slot_ctx} tokens")
    what = (f"{hosted.name} ({settings.parallel} slots {cells})"
            if hosted is not None else "no model loaded yet")
    scheme = "https" if settings.ssl_cert_file is not None else "http"
    where = ", ".join(b if b.startswith("unix:") else f"{scheme}://{b}{settings.api_prefix}"
                      for b in settings.binds)
    print(f"sluice: serving {what} on {where}; "
          f"{len(specs)} models known (--models-max {settings.models_max})",
          file=sys.stderr, flush=True)
    from app.engine.context import ContextError
    from app.engine.lora import LoraError
    from app.engine.rerank import RerankError

    try:
        trio.run(serve, settings, registry, preloaded)
    except (ContextError, LoraError, RerankError) as exc:
        print(f"sluice: error: {exc}", file=sys.stderr)
        return 2
    return 0


def embedded_paths() -> dict[str, Path]:
    """The embedded models that are installed, by short name (assembled on first use)."""
    from app.engine.model import EMBEDDED, ModelLoadError

    out = {}
    for name, make in EMBEDDED.items():
        try:
            out[name] = make()
        except (ModelLoadError, ImportError, OSError):
            continue
    return out
