"""Server-Sent Events framing (WHATWG HTML, "Server-sent events").

The only module that writes SSE bytes. Every event is one ``data:`` line of
compact JSON followed by a blank line; comment lines keep an idle stream alive
through proxies.
"""

from __future__ import annotations

import json

from app.errors import JSON

HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}

PING = b": ping\n\n"
DONE = b"data: [DONE]\n\n"


def event(payload: JSON) -> bytes:
    """Frame one JSON object as an SSE ``data:`` event.

    ``json.dumps`` escapes newlines inside strings, so the payload is always a
    single ``data:`` line.
    """
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def named(name: str, payload: JSON) -> bytes:
    """An event with an ``event:`` type line (Anthropic's and OpenAI Responses' streams)."""
    return f"event: {name}\n".encode() + event(payload)
