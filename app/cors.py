"""CORS with an allow-list of origins (``origins`` in the config file).

Only listed origins (or every origin, with ``"*"``) get CORS headers; a browser
refuses responses to any other. Preflight requests are answered for every
route, before API-key checks (browsers send no credentials with them).
"""

from __future__ import annotations

import urllib.parse

ALLOW_METHODS = "GET, POST, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type, X-Api-Key"
EXPOSE_HEADERS = "X-Request-Id"


def _is_localhost(origin: str) -> bool:
    """llama.cpp's ``--cors-origins localhost``: an origin on this machine's loopback names."""
    try:
        host = urllib.parse.urlsplit(origin).hostname
    except ValueError:
        return False
    return host in ("localhost", "127.0.0.1", "::1")


def headers(origin: str | None, allowed: tuple[str, ...], *, preflight: bool) -> dict[str, str]:
    """The CORS headers for a request from ``origin`` (none when it is not allowed)."""
    if not origin or not (origin in allowed or "*" in allowed
                          or ("localhost" in allowed and _is_localhost(origin))):
        return {}
    out = {"Access-Control-Allow-Origin": origin, "Vary": "Origin",
           "Access-Control-Expose-Headers": EXPOSE_HEADERS}
    if preflight:
        out.update({"Access-Control-Allow-Methods": ALLOW_METHODS,
                    "Access-Control-Allow-Headers": ALLOW_HEADERS,
                    "Access-Control-Max-Age": "600"})
    return out
