"""Named API tokens with roles; every endpoint except ``/api/v1/health`` (and an empty ``/favicon.ico``) needs one.
Those two answer GET and HEAD only: any other method is 405 before any other check, so that nothing reads the body
of a request without a token.

The server keeps only hashes. An ``api_tokens`` entry is ``NAME:ROLE:sha256:HEX`` (``pvc-api --new-token NAME``
prints a fresh token and its entry): NAME is who asked for a job (``requested_by``), ROLE is ``admin`` (everything)
or ``read-only`` (GET and HEAD only: any other method is 403 ``forbidden``). Tokens are random, so one SHA-256 is
the right hash (a slow password hash buys nothing against 192 random bits). The presented token is hashed and its
digest compared with ``hmac.compare_digest`` against every entry, with no early exit on a match; tokens and hashes
are never logged.

Clients send ``X-Api-Key: <token>``. HTTP Basic (the token as the password; any user name) is accepted only for
GET of the pages a browser or a scraper opens (Swagger UI and the OpenAPI document, the status page and the events
stream it reads, the metrics), so that a browser can open them: a browser re-sends cached
Basic credentials with any request to the host, including a form posted from another site, which must not be able
to act (CSRF). ``X-Api-Key`` is a custom header, which a cross-site form cannot send. For the same reason a
mutation must carry its body, if any, as ``application/json`` (``pvc_web.limits``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from flask import Flask, g, request

from pvc_web.errors import error_response

__all__ = ["ROLES", "Caller", "TokenTable", "caller", "entry", "install", "new_token", "presented"]

OPEN_ENDPOINTS = frozenset({"/api/v1/health", "/favicon.ico"})
#: Pages a browser (or Prometheus) opens: Basic allowed, GET only. None of them changes anything, and another
#: site's page cannot read their answers (no CORS), so a browser's cached credentials give it nothing.
BROWSER_PATHS = ("/api/v1/docs", "/api/v1/openapi.json", "/api/v1/status", "/api/v1/events", "/api/v1/metrics")
ROLES = ("admin", "read-only")
READ_METHODS = frozenset({"GET", "HEAD"})
_ENTRY = re.compile(r"\A(?P<name>[A-Za-z0-9][A-Za-z0-9_.@-]{0,62}):(?P<role>[a-z-]+):sha256:(?P<hex>[0-9a-f]{64})\Z")


@dataclass(frozen=True)
class Caller:
    name: str
    role: str


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def entry(name: str, role: str, token: str) -> str:
    """The ``api_tokens`` entry of ``token``."""
    return f"{name}:{role}:sha256:{_digest(token).hex()}"


def new_token(name: str, role: str = "admin") -> tuple[str, str]:
    """A fresh token and its ``api_tokens`` entry."""
    token = secrets.token_urlsafe(24)
    return token, entry(name, role, token)


class TokenTable:
    """The configured entries, parsed once; ``ValueError`` naming the bad entry by its position (never its text,
    which might be a token pasted by mistake)."""

    def __init__(self, entries: list[str]) -> None:
        self.entries: list[tuple[bytes, Caller]] = []
        for i, entry in enumerate(e for e in entries if e):
            found = _ENTRY.match(entry)
            if not found:
                raise ValueError(f"api_tokens entry {i + 1} is not NAME:ROLE:sha256:HEX (tokens are stored hashed: "
                                 f"`pvc-api --new-token NAME` prints a token and its entry)")
            if found["role"] not in ROLES:
                raise ValueError(f"api_tokens entry {i + 1}: role {found['role']!r} is not one of {', '.join(ROLES)}")
            self.entries.append((bytes.fromhex(found["hex"]), Caller(found["name"], found["role"])))

    def find(self, token: str | None) -> Caller | None:
        if not token:
            return None
        digest, match = _digest(token), None
        for stored, who in self.entries:
            if hmac.compare_digest(digest, stored):
                match = who
        return match


def presented(*, basic: bool = False) -> str | None:
    """The token the request presents: X-Api-Key, or (``basic``) the password of HTTP Basic; unchecked."""
    token = request.headers.get("X-Api-Key")
    if token:
        return token
    if basic and request.authorization and request.authorization.type == "basic":
        return request.authorization.password
    return None


def caller() -> Caller | None:
    """Who the current request authenticated as."""
    return g.get("pvc_caller")


def _browser_page() -> bool:
    path = request.path.rstrip("/")
    return request.method in READ_METHODS and any(path == p or path.startswith(p + "/") for p in BROWSER_PATHS)


def install(app: Flask, table: TokenTable) -> None:
    @app.before_request
    def _authenticate():
        if request.path.rstrip("/") in OPEN_ENDPOINTS:
            if request.method in READ_METHODS:
                return None
            # Answered here, before any other hook: nothing of an open endpoint's request but its method and path
            # is looked at without a token (the body check once ran on these, quadratic in a crafted body).
            response = error_response(405, "method_not_allowed", f"{request.path} answers GET and HEAD only")
            response.headers["Allow"] = "GET, HEAD"
            return response
        browser = _browser_page()
        who = table.find(presented(basic=browser))
        if who is None:
            if not table.entries:
                message = "no API token is configured on the server (set api_tokens)"
            elif request.authorization and not browser:
                message = ("HTTP Basic is accepted only for the pages a browser opens (docs, status, events, "
                           "metrics): send the token in the X-Api-Key header")
            else:
                message = "missing or invalid API token: send it in the X-Api-Key header"
            response = error_response(401, "unauthorised", message)
            # Only the browser pages ask for Basic credentials; elsewhere they would not be accepted.
            response.headers["WWW-Authenticate"] = ('Basic realm="pvc"' if browser else
                                                    'ApiKey realm="pvc", header="X-Api-Key"')
            return response
        if who.role == "read-only" and request.method not in READ_METHODS:
            return error_response(403, "forbidden", f"token {who.name!r} is read-only: {request.method} "
                                                    f"{request.path} needs an admin token")
        g.pvc_caller = who
        return None
