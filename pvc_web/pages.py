"""What a browser opens besides the JSON API: the live status page and Swagger UI's files, all from the package.

- ``/api/v1/status``: a read-only page of the cluster (``pvc_web/static/status.*``): nodes, running jobs with
  progress bars, recent failures, VMs. Its script reads the events stream (``/api/v1/events``) and nothing else,
  so it moves as the cluster changes; it needs no build step and loads nothing from another host (its Content
  Security Policy forbids it).
- ``/api/v1/docs/static/<file>``: Swagger UI's files, from the ``swagger-ui-bundle`` package pinned in setup.py
  (the page at ``/api/v1/docs`` is flask-smorest's, pointed here instead of a CDN: without internet it was blank).

Both are behind the token like everything else; a browser may give it as the Basic password (``pvc_web.auth``).
"""

from __future__ import annotations

from importlib import resources

from flask import Blueprint, Response, abort, send_from_directory
from swagger_ui_bundle import swagger_ui_path

from pvc_web.blueprint import API_PREFIX

__all__ = ["SWAGGER_UI_URL", "blp"]

blp = Blueprint("pages", __name__)

SWAGGER_UI_URL = f"{API_PREFIX}/docs/static/"
#: The files flask-smorest's Swagger page loads (nothing else of the bundle is served).
_SWAGGER_FILES = frozenset({"swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js",
                            "favicon-16x16.png", "favicon-32x32.png"})
_STATUS_FILES = {"status.js": "text/javascript", "status.css": "text/css"}
#: Only this host's scripts, styles and connections: the page works offline and injected markup cannot run.
_STATUS_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _static(name: str) -> bytes:
    return resources.files("pvc_web").joinpath("static", name).read_bytes()


def _page(body: bytes, mimetype: str) -> Response:
    response = Response(body, mimetype=mimetype)
    response.headers["Content-Security-Policy"] = _STATUS_CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-cache"
    return response


@blp.route(f"{API_PREFIX}/status")
def status_page() -> Response:
    return _page(_static("status.html"), "text/html")


@blp.route(f"{API_PREFIX}/status/<string:name>")
def status_asset(name: str) -> Response:
    if name not in _STATUS_FILES:
        abort(404)
    return _page(_static(name), _STATUS_FILES[name])


@blp.route("/favicon.ico")
def favicon() -> Response:
    """Browsers ask for it on every page (Swagger UI's too); open, empty: a 401 there only litters their logs."""
    return Response(status=204)


@blp.route(f"{SWAGGER_UI_URL}<string:name>")
def swagger_asset(name: str) -> Response:
    if name not in _SWAGGER_FILES:
        abort(404)
    response = send_from_directory(swagger_ui_path, name, max_age=3600)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
