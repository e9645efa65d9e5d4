"""Request bodies a hostile client cannot turn into a 500 or a full disk.

- Size: waitress answers 413 from the Content-Length before reading (``pvc_web.wsgi``); Flask's
  ``MAX_CONTENT_LENGTH`` (the same ``api_max_body``) covers chunked bodies.
- Content type: a request that is not GET or HEAD and carries a body or a Content-Type must say
  ``application/json``, else 415. HTML forms (the cross-site request a browser sends without asking) can only say
  ``application/x-www-form-urlencoded``, ``multipart/form-data`` or ``text/plain``.
- JSON: objects and arrays nest at most ``API_JSON_DEPTH`` (32) deep, else 400 ``invalid_request``. The depth is
  counted on the bytes before parsing, so a body nested 100,000 deep never reaches the recursive parser (whose
  RecursionError was a 500), whichever parser reads it (webargs parses bodies with its own ``json.loads``).
"""

from __future__ import annotations

import re

from flask import Flask, request

from pvc_tasks.defaults import API_JSON_DEPTH
from pvc_web.errors import error_response

__all__ = ["install", "json_depth"]

# Strings (with their escapes) are skipped whole, so brackets inside them do not count.
# Possessive quantifiers: an unterminated string must fail in linear time, not backtrack exponentially.
_TOKENS = re.compile(rb'"(?:[^"\\]++|\\.)*+"|[\[\]{}]', re.DOTALL)


def json_depth(data: bytes | str, limit: int) -> int:
    """The deepest nesting of ``data``'s arrays and objects, counting stops early once above ``limit``."""
    raw = data.encode() if isinstance(data, str) else data
    depth = deepest = 0
    for match in _TOKENS.finditer(raw):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        elif token in (b"]", b"}"):
            depth -= 1
    return deepest


def install(app: Flask) -> None:
    @app.before_request
    def _json_only():
        if request.method in ("GET", "HEAD"):
            return None
        declared = request.headers.get("Content-Type")
        if (declared or request.content_length) and request.mimetype != "application/json":
            return error_response(415, "unsupported_media_type",
                                  f"send the body as application/json, not {declared or 'without a type'}")
        if request.content_length and json_depth(request.get_data(cache=True), API_JSON_DEPTH) > API_JSON_DEPTH:
            return error_response(400, "invalid_request", f"JSON nested deeper than {API_JSON_DEPTH} levels",
                                  {"body": [f"at most {API_JSON_DEPTH} levels of arrays and objects"]})
        return None
