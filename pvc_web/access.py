"""Request ids and the access log: one line per API request, who asked, what came back, how long it took.

Each request gets an id: the client's ``X-Request-Id`` when it is 1-64 characters of ``[A-Za-z0-9._:-]`` (a proxy
or a script can then follow a request across its own logs), else a new one. It is echoed in the response's
``X-Request-Id`` and recorded on the job the request creates (``request_id``, beside ``requested_by``). The line
(logger ``pvc_web.access``, level INFO): method, path, status, milliseconds, the token's name (``-`` when none
was accepted), the request id and the client's address. Never the token, the query string or the body: they may
hold secrets. The method and path are the client's (a path's ``%0A`` arrives decoded, as a line break), so every
byte of them outside printable ASCII, and ``%`` itself, is written percent-encoded: no client can forge a line.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from urllib.parse import quote

from flask import Flask, Response, g, request

from pvc_web.auth import caller

__all__ = ["HEADER", "install", "printable", "request_id"]

HEADER = "X-Request-Id"
_SANE = re.compile(r"\A[A-Za-z0-9._:-]{1,64}\Z")
log = logging.getLogger("pvc_web.access")
#: Printable ASCII but ``%`` and the space: what a logged method or path may keep as it is.
_KEEP = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")


def printable(text: str) -> str:
    """``text`` with every character outside printable ASCII (line breaks, controls, spaces, non-ASCII) and ``%``
    percent-encoded (UTF-8), so that it is one unambiguous field of one log line."""
    return quote(text, safe=_KEEP)


def request_id() -> str:
    """The current request's id ("" outside a request that went through ``install``'s hook)."""
    return g.get("pvc_request_id", "")


def install(app: Flask) -> None:
    """Registered before the auth check, so a refused request is logged with its id too."""

    @app.before_request
    def _begin() -> None:
        offered = request.headers.get(HEADER, "")
        g.pvc_request_id = offered if _SANE.match(offered) else uuid.uuid4().hex
        g.pvc_started = time.monotonic()

    @app.after_request
    def _end(response: Response) -> Response:
        rid = request_id() or uuid.uuid4().hex
        response.headers[HEADER] = rid
        who = caller()
        fields = {"method": printable(request.method), "path": printable(request.path), "status": response.status_code,
                  "ms": round((time.monotonic() - g.get("pvc_started", time.monotonic())) * 1000, 1),
                  "token": who.name if who else "-", "request_id": rid, "client": request.remote_addr or "-"}
        log.info("%s %s %s %.1f ms token=%s id=%s client=%s", *fields.values(), extra={"pvc": fields})
        return response
