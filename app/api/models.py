"""The model registry over HTTP: ``GET /v1/models`` (and ``/models``), ``POST /models/load``,
``POST /models/unload``, as llama.cpp's router mode serves them.

Every known model is listed with its ``status``: ``{"value": "loaded" | "loading" |
"unloading" | "unloaded" | "failed"}``, and for a failed one ``"failed": true`` and the
``error``. Loading and unloading answer ``{"success": true}``.
"""

from __future__ import annotations

from typing import Any

from quart import Response

from app.api.common import Family, json_response, read_valid, service
from app.api.report import model_meta
from app.errors import JSON
from app.hosted import Hosted, ModelStatus

models = Family("models", __name__)


def model_entry(hosted: Hosted) -> JSON:
    status: JSON = {"value": hosted.status.value}
    if hosted.status is ModelStatus.FAILED:
        status.update(failed=True, error=hosted.error)
    try:
        created = int(hosted.spec.path.stat().st_mtime)
    except OSError:
        created = 0
    spec = hosted.spec
    shown = spec.aliases if spec.shown_aliases is None else spec.shown_aliases
    entry: JSON = {"id": hosted.name, "object": "model", "created": created,
                   "owned_by": "sluice", "aliases": list(shown),
                   "tags": list(hosted.spec.tags),
                   "path": str(hosted.spec.path), "status": status}
    meta = model_meta(hosted)
    if meta:
        entry["meta"] = meta
    return entry


@models.route("/v1/models", methods=["GET"])
@models.route("/models", methods=["GET"])
async def list_models() -> Response:
    registry = service().registry
    return json_response({"object": "list", "data": [model_entry(h) for h in registry.listed()]})


@models.route("/v1/models/<path:name>", methods=["GET"])
async def one_model(name: str) -> Response:
    registry = service().registry
    return json_response(model_entry(registry.find(name)))


async def _name() -> tuple[str, dict[str, Any]]:
    body = await read_valid("models_load")
    return body["model"], body


@models.route("/models/load", methods=["POST"])
async def load() -> Response:
    """Load a model now (it stays loaded until evicted, idle or unloaded)."""
    name, _ = await _name()
    svc = service()
    hosted = svc.registry.find(name)
    await svc.registry.ensure_loaded(hosted)
    return json_response({"success": True, "model": hosted.name})


@models.route("/models/unload", methods=["POST"])
async def unload() -> Response:
    """Unload a model; its running requests end, marked ``"model_changed": true``."""
    name, _ = await _name()
    svc = service()
    hosted = svc.registry.find(name)
    await svc.registry.unload(hosted)
    return json_response({"success": True, "model": hosted.name})
