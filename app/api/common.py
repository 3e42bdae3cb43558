"""What every API family shares: the service, JSON bodies and streamed responses."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from quart import Response, current_app, request

from app import sse
from app.errors import JSON
from app.validation import parse_json_body

if TYPE_CHECKING:
    from app.service import Service


def service() -> Service:
    return current_app.config["SLUICE_SERVICE"]  # type: ignore[no-any-return]


def json_response(body: JSON | list[Any], status: int = 200,
                  headers: dict[str, str] | None = None) -> Response:
    resp = Response(json.dumps(body, ensure_ascii=False), status=status,
                    content_type="application/json")
    for key, value in (headers or {}).items():
        resp.headers[key] = value
    return resp


async def read_json() -> JSON:
    raw = await request.get_data(cache=False, as_text=False)
    return parse_json_body(raw if isinstance(raw, bytes) else raw.encode())


def streamed(body: AsyncIterator[bytes], job_id: int, *, text: bool = False,
             headers: dict[str, str] | None = None) -> Response:
    """A 200 whose body is ``body``: Server-Sent Events, or plain text with ``text``.

    Only call this once the request was submitted: the status is final.
    """
    base = ({"Content-Type": "text/plain; charset=utf-8", "Cache-Control": "no-cache",
             "X-Accel-Buffering": "no"} if text else dict(sse.HEADERS))
    resp = Response(body, status=200, headers={**base, "X-Request-Id": str(job_id),
                                               **(headers or {})})
    resp.timeout = None
    return resp
