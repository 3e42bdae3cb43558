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


def allowed_origin(origin: str, allowed: tuple[str, ...]) -> bool:
    return origin in allowed or "*" in allowed or ("localhost" in allowed and _is_localhost(origin))


def websocket_origin_ok(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    """May a websocket from ``origin`` connect? Browsers always send ``Origin`` (and cannot be
    stopped by CORS on a websocket, so the server must check): the server's own page (the
    same host), or an origin of the CORS allow-list. Clients that are not browsers send none."""
    if not origin:
        return True
    try:
        same = bool(host) and urllib.parse.urlsplit(origin).netloc == host
    except ValueError:
        return False
    return same or allowed_origin(origin, allowed)


def headers(origin: str | None, allowed: tuple[str, ...], *, preflight: bool,
            methods: str = ALLOW_METHODS, allow_headers: str = ALLOW_HEADERS,
            credentials: bool = False) -> dict[str, str]:
    """The CORS headers for a request from ``origin`` (none when it is not allowed); a
    preflight's allowed ``methods`` and ``allow_headers`` are ``--cors-methods`` and
    ``--cors-headers``; ``credentials`` (``--cors-credentials``) lets a browser send cookies
    with the request (Sluice needs none; a proxy in front of it may)."""
    if not origin or not allowed_origin(origin, allowed):
        return {}
    out = {"Access-Control-Allow-Origin": origin, "Vary": "Origin",
           "Access-Control-Expose-Headers": EXPOSE_HEADERS}
    if credentials:
        out["Access-Control-Allow-Credentials"] = "true"
    if preflight:
        out.update({"Access-Control-Allow-Methods": methods,
                    "Access-Control-Allow-Headers": allow_headers,
                    "Access-Control-Max-Age": "600"})
    return out
