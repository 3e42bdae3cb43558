"""Ollama's listing routes: ``GET /api/version``, ``GET /api/tags`` (every model the server
knows), ``GET /api/ps`` (the loaded ones, with when they unload if idle), ``POST /api/show``.
Errors are Ollama's ``{"error": "..."}``, as on its generating routes (:mod:`app.api.ollama`).
"""

from __future__ import annotations

import hashlib
import math
import time
from datetime import UTC, datetime

import trio
from quart import Response

from app.api.common import Family, json_response, read_valid, service
from app.api.report import model_meta
from app.errors import JSON, InvalidRequest, ollama_body
from app.hosted import Hosted

ollama_models = Family("ollama_models", __name__, error_body=ollama_body)

VERSION = "0.6.3"  # the Ollama API version these routes follow


def now() -> str:
    """Ollama's ``created_at``: UTC, microseconds, ``Z``."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _details(hosted: Hosted) -> JSON:
    meta = model_meta(hosted)
    name = hosted.spec.path.name.lower()
    quant = next((q for q in ("q4_k_m", "q4_k_s", "q4_0", "q4_1", "q5_k_m", "q5_0", "q6_k",
                              "q8_0", "f16", "bf16", "f32") if q in name), "unknown")
    arch = meta.get("architecture", "")
    params = meta.get("n_params")
    return {"parent_model": "", "format": "gguf", "family": arch,
            "families": [arch] if arch else None,
            "parameter_size": f"{params / 1e6:.0f}M" if isinstance(params, int) else "",
            "quantization_level": quant.upper()}


def _size(hosted: Hosted) -> int:
    try:
        return hosted.spec.path.stat().st_size
    except OSError:
        return 0


def _modified(hosted: Hosted) -> str:
    try:
        mtime = hosted.spec.path.stat().st_mtime
    except OSError:
        mtime = 0.0
    return datetime.fromtimestamp(mtime, UTC).isoformat().replace("+00:00", "Z")


def _digest(hosted: Hosted) -> str:
    return hashlib.sha256(str(hosted.spec.path.resolve()).encode()).hexdigest()


# --- listing -------------------------------------------------------------------------------------
@ollama_models.route("/api/version", methods=["GET"])
async def version() -> Response:
    return json_response({"version": VERSION})


@ollama_models.route("/api/tags", methods=["GET"])
async def tags() -> Response:
    """Every model the server knows (Ollama lists what is installed)."""
    return json_response({"models": [
        {"name": h.name, "model": h.name, "modified_at": _modified(h), "size": _size(h),
         "digest": _digest(h), "details": _details(h)}
        for h in service().registry.listed()]})


@ollama_models.route("/api/ps", methods=["GET"])
async def ps() -> Response:
    """The loaded models, with when they will be unloaded if left idle."""
    out = []
    now_wall, now = time.time(), trio.current_time()
    for h in service().registry.loaded():
        left = h.expires_at - now
        expires = (datetime.fromtimestamp(now_wall + left, UTC).isoformat().replace("+00:00", "Z")
                   if math.isfinite(left) else "9999-12-31T23:59:59Z")
        out.append({"name": h.name, "model": h.name, "size": _size(h), "digest": _digest(h),
                    "details": _details(h), "expires_at": expires, "size_vram": 0,
                    "context_length": h.spec.settings(service().settings).slot_ctx})
    return json_response({"models": out})


@ollama_models.route("/api/show", methods=["POST"])
async def show() -> Response:
    body = await read_valid("ollama_show")
    name = body.get("model") or body.get("name")
    if not name:
        raise InvalidRequest("'model' is required", param="model")
    svc = service()
    hosted = svc.registry.find(name)
    info: JSON = {"general.architecture": model_meta(hosted).get("architecture", "")}
    template = hosted.runtime.chat.source if hosted.runtime is not None else ""
    return json_response({"modelfile": f"FROM {hosted.spec.path}\n", "parameters": "",
                          "template": template, "details": _details(hosted),
                          "model_info": info, "capabilities": ["completion", "tools"],
                          "modified_at": _modified(hosted)})
