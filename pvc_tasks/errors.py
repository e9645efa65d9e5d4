"""Errors with a stable code, raised by job submission and mapped by the API to HTTP statuses."""

from __future__ import annotations

from typing import Any

__all__ = ["Conflict", "Invalid", "NotFound", "PvcError", "Unavailable", "describe"]


class PvcError(Exception):
    """Base: ``code`` is a stable machine-readable slug, ``message`` a sentence for a person."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.details = details or {}


class Invalid(PvcError):
    status = 400
    code = "invalid_request"


class NotFound(PvcError):
    status = 404
    code = "not_found"


class Conflict(PvcError):
    status = 409
    code = "conflict"


class Unavailable(PvcError):
    status = 503
    code = "unavailable"


def describe(exc: BaseException) -> str:
    """An exception as a job's reason: its type and message, never empty (kazoo's ConnectionLoss() has none)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
