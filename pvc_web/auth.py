"""Token authentication: every endpoint except ``/api/v1/health`` needs a configured token.

Clients send ``X-Api-Key: <token>``. Browsers (Swagger UI) may use HTTP Basic with the token as the password
(any user name); a 401 carries ``WWW-Authenticate: Basic`` so that they prompt. Tokens are compared with
``hmac.compare_digest`` against every configured token (no early exit on a match), and never logged. An API with
no token configured refuses every authenticated request rather than running open.
"""

from __future__ import annotations

import hmac

from flask import Flask, request

from pvc_web.errors import error_response

__all__ = ["install", "presented"]

OPEN_ENDPOINTS = frozenset({"/api/v1/health"})


def presented() -> str | None:
    """The token the request presents (X-Api-Key, or the password of HTTP Basic), unchecked."""
    token = request.headers.get("X-Api-Key")
    if token:
        return token
    if request.authorization and request.authorization.type == "basic":
        return request.authorization.password
    return None


def _valid(token: str | None, tokens: list[str]) -> bool:
    if not token:
        return False
    matched = False
    for candidate in tokens:
        matched |= hmac.compare_digest(token.encode(), candidate.encode())
    return matched


def install(app: Flask, tokens: list[str]) -> None:
    tokens = [t for t in tokens if t]

    @app.before_request
    def _authenticate():
        if request.path.rstrip("/") in OPEN_ENDPOINTS:
            return None
        if _valid(presented(), tokens):
            return None
        message = ("no API token is configured on the server (set PVC_API_TOKENS)" if not tokens else
                   "missing or invalid API token: send it in the X-Api-Key header")
        response = error_response(401, "unauthorised", message)
        response.headers["WWW-Authenticate"] = 'Basic realm="pvc"'
        return response
