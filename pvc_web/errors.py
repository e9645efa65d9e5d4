"""One error shape for every 4xx and 5xx answer, documented in the OpenAPI document and docs/api.md:

    {"error": "<stable code>", "message": "<sentence for a person>", "details": {...}}

``error`` codes are stable (clients switch on them); ``message`` may be reworded; ``details`` carries the
offending fields for validation errors (field name -> list of problems) and context (e.g. the active job) for
conflicts. Internal errors are logged with their traceback and answer a generic message, never the exception.
"""

from __future__ import annotations

import logging

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from pvc_tasks.errors import PvcError

__all__ = ["error_response", "register"]

log = logging.getLogger(__name__)

#: Stable codes of the HTTP errors raised by Flask/webargs themselves.
_HTTP_CODES = {400: "invalid_request", 401: "unauthorised", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 409: "conflict", 413: "too_large", 415: "unsupported_media_type",
               422: "invalid_request", 500: "internal_error", 503: "unavailable"}


def error_response(status: int, code: str, message: str, details: dict | None = None):
    response = jsonify({"error": code, "message": message, "details": details or {}})
    response.status_code = status
    return response


def _flatten(problems: object, prefix: str, into: dict) -> None:
    if isinstance(problems, dict):
        for key, value in problems.items():
            _flatten(value, f"{prefix}.{key}" if prefix else str(key), into)
    else:
        into[prefix] = [str(p) for p in problems] if isinstance(problems, list) else [str(problems)]


def _validation_details(exc: HTTPException) -> dict[str, list[str]]:
    """webargs puts {location: {field: [problems]}} in ``exc.data["messages"]``; flatten to {"a.b": problems}."""
    messages = (getattr(exc, "data", None) or {}).get("messages") or {}
    details: dict[str, list[str]] = {}
    for location, fields in messages.items():
        _flatten(fields, "" if isinstance(fields, dict) else location, details)
    return details


def handle_http(exc: HTTPException):
    status = exc.code or 500
    details = _validation_details(exc)
    if details:
        message = "invalid request: " + "; ".join(f"{k}: {' '.join(v)}" for k, v in sorted(details.items()))
        return error_response(400 if status == 422 else status, "invalid_request", message, details)
    if status == 404:  # no route matched (a missing VM or job is a PvcError with its own code): name what was asked
        return error_response(404, "not_found", f"no API endpoint {request.method} {request.path}: see "
                                                f"/api/v1/docs for the endpoints")
    return error_response(status, _HTTP_CODES.get(status, "http_error"), exc.description or exc.name)


def register(app: Flask) -> None:
    @app.errorhandler(PvcError)
    def _pvc(exc: PvcError):
        return error_response(exc.status, exc.code, exc.message, exc.details)

    @app.errorhandler(Exception)
    def _internal(exc: Exception):
        if isinstance(exc, HTTPException):
            return handle_http(exc)
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal error; the API log has the details")
