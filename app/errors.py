"""The server's error hierarchy and its single mapping to HTTP.

Handlers raise these; :func:`error_body` and :attr:`ApiError.status` are the only
place where an error becomes a status code and a JSON body, in the shape of
llama.cpp's server and OpenAI: ``{"error": {"code", "message", "type", ...}}``.
"""

from __future__ import annotations

from typing import Any, ClassVar

JSON = dict[str, Any]


class ApiError(Exception):
    """An error a client sees. Subclasses fix the status and the type string."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"

    def __init__(self, message: str, *, param: str | None = None, **extra: object) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.extra = extra
        self.headers: dict[str, str] = {}  # sent with the error response

    def body(self) -> JSON:
        error: JSON = {"code": self.status, "message": self.message, "type": self.type}
        if self.param is not None:
            error["param"] = self.param
        error.update(self.extra)
        return {"error": error}


class InvalidRequest(ApiError):
    status = 400
    type = "invalid_request_error"


class ContextOverflow(InvalidRequest):
    """The prompt does not fit the slot's context."""

    type = "exceed_context_size_error"

    def __init__(self, n_prompt_tokens: int, n_ctx: int) -> None:
        super().__init__(
            f"the request exceeds the available context size: {n_prompt_tokens} prompt tokens, "
            f"context of {n_ctx} tokens per slot",
            n_prompt_tokens=n_prompt_tokens,
            n_ctx=n_ctx,
        )


class Unauthorized(ApiError):
    status = 401
    type = "authentication_error"


class NotFound(ApiError):
    status = 404
    type = "not_found_error"


class Conflict(ApiError):
    """The server's state does not allow this now (a model still in use cannot be unloaded)."""

    status = 409
    type = "conflict_error"


class MethodNotAllowed(ApiError):
    status = 405
    type = "invalid_request_error"


class PayloadTooLarge(ApiError):
    status = 413
    type = "invalid_request_error"


class NotSupported(ApiError):
    status = 501
    type = "not_supported_error"


class Unavailable(ApiError):
    status = 503
    type = "unavailable_error"


class Overloaded(Unavailable):
    """Too many requests wait already; the client should retry after ``retry_after_s``."""

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after_s)}


class SlotBusy(Unavailable):
    """A slot action on a slot that is processing a request."""


class SlotFileError(InvalidRequest):
    """A slot state file that could not be written or read."""


class ServerError(ApiError):
    status = 500
    type = "server_error"


def error_body(exc: ApiError) -> JSON:
    """The JSON body for ``exc`` (its status is ``exc.status``)."""
    return exc.body()


#: Anthropic's error type for each status (its API's names)
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                    403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                    429: "rate_limit_error", 503: "overloaded_error", 529: "overloaded_error"}


def anthropic_body(exc: ApiError) -> JSON:
    """``exc`` in Anthropic's shape: ``{"type": "error", "error": {"type", "message"}}``."""
    kind = _ANTHROPIC_TYPES.get(exc.status, "invalid_request_error" if exc.status < 500
                                else "api_error")
    return {"type": "error", "error": {"type": kind, "message": exc.message}}


def ollama_body(exc: ApiError) -> JSON:
    """``exc`` in Ollama's shape: ``{"error": "<message>"}``."""
    return {"error": exc.message}
