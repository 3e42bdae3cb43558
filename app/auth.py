"""API keys: ``Authorization: Bearer <key>`` or ``X-Api-Key: <key>``; a websocket may also
give it as ``?api_key=<key>`` (a browser cannot set headers on one).

With no key configured every route is open. With keys, every route but the
public ones needs one; keys are compared in constant time.
"""

from __future__ import annotations

import hmac

from app.errors import Unauthorized

PUBLIC_PATHS = frozenset({"/health", "/v1/health", "/models", "/v1/models", "/", "/index.html",
                          "/openapi.json"})
PUBLIC_PREFIXES = ("/web/",)


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    if x_api_key:
        return x_api_key.strip()
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return None


def check(path: str, method: str, keys: tuple[str, ...], authorization: str | None,
          x_api_key: str | None, query_key: str | None = None) -> None:
    """Raise :class:`Unauthorized` unless the request may pass."""
    if not keys or method == "OPTIONS" or path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
        return
    key = presented_key(authorization, x_api_key) or (query_key or None)
    if key is None:
        raise Unauthorized("Invalid API Key")
    given = key.encode()
    # Compare against every key so the time taken does not depend on which matched.
    ok = False
    for candidate in keys:
        ok |= hmac.compare_digest(given, candidate.encode())
    if not ok:
        raise Unauthorized("Invalid API Key")
