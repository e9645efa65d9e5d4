"""Request bodies a hostile client cannot turn into a 500 or a full disk.

- Size: waitress answers 413 from the Content-Length before reading (``pvc_web.wsgi``); Flask's
  ``MAX_CONTENT_LENGTH`` (the same ``api_max_body``) covers chunked bodies.
- Content type: a request that is not GET or HEAD and carries a body or a Content-Type must say
  ``application/json``, else 415. HTML forms (the cross-site request a browser sends without asking) can only say
  ``application/x-www-form-urlencoded``, ``multipart/form-data`` or ``text/plain``.
- JSON: objects and arrays nest at most ``API_JSON_DEPTH`` (32) deep, else 400 ``invalid_request``. The depth is
  counted on the bytes before parsing, so a body nested 100,000 deep never reaches the recursive parser (whose
  RecursionError was a 500), whichever parser reads it (webargs parses bodies with its own ``json.loads``).

These checks run only for a caller the token check admitted (``pvc_web.auth`` answers first, and the endpoints
open without a token serve GET and HEAD only, whose bodies are never read), and in time linear in the body
(``json_depth``: a few C-speed passes over its bytes).
"""

from __future__ import annotations

from array import array
from itertools import accumulate

from flask import Flask, request

from pvc_tasks.defaults import API_JSON_DEPTH
from pvc_web.auth import caller
from pvc_web.errors import error_response

__all__ = ["install", "json_depth"]

#: Every byte but a bracket (deleted), and the brackets as signed bytes: +1 opens, -1 (0xff) closes.
_NOT_BRACKETS = bytes(range(256)).translate(None, b"[]{}")
_SIGNS = bytes.maketrans(b"[]{}", b"\x01\xff\x01\xff")


def json_depth(data: bytes | str, limit: int) -> int:
    """The deepest nesting of ``data``'s arrays and objects outside strings, or ``limit + 1`` when deeper.

    Only C-speed passes over the bytes, each linear, and no Python step per token: an escaped backslash, then an
    escaped quote, never ends a string (pairs are taken left to right, as a parser reads them), so both go first;
    what lies between the remaining quotes is a string and goes next; the running sum of the brackets left is the
    depth. Malformed JSON may count deeper than a parser would go (it stops at the first error), never shallower.
    The regular expression this replaces started a new string at every quote of an unterminated one: ``"``
    followed by n ``\\"`` cost n^2 (40 KB: 12 s holding the GIL)."""
    raw = data.encode() if isinstance(data, str) else data
    text = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(text.split(b'"')[::2]) if b'"' in text else text
    brackets = outside.translate(_SIGNS, _NOT_BRACKETS)
    return min(limit + 1, max(accumulate(array("b", brackets), initial=0)))


def install(app: Flask) -> None:
    @app.before_request
    def _json_only():
        if request.method in ("GET", "HEAD") or caller() is None:
            return None  # no caller: an open endpoint (GET and HEAD only, pvc_web.auth), whose body is not read
        declared = request.headers.get("Content-Type")
        if (declared or request.content_length) and request.mimetype != "application/json":
            return error_response(415, "unsupported_media_type",
                                  f"send the body as application/json, not {declared or 'without a type'}")
        if request.content_length and json_depth(request.get_data(cache=True), API_JSON_DEPTH) > API_JSON_DEPTH:
            return error_response(400, "invalid_request", f"JSON nested deeper than {API_JSON_DEPTH} levels",
                                  {"body": [f"at most {API_JSON_DEPTH} levels of arrays and objects"]})
        return None
