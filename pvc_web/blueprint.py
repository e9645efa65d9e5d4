"""The flask-smorest pieces every blueprint shares: a 400-on-validation parser, the error schema, helpers."""

from __future__ import annotations

from flask import current_app
from flask_smorest import Api
from flask_smorest import Blueprint as _Blueprint
from webargs.flaskparser import FlaskParser

from pvc_web.cluster import ClusterHandle
from pvc_web.errors import handle_http
from pvc_web.schemas import ErrorSchema

__all__ = ["API_PREFIX", "Blueprint", "PvcApi", "accepted", "handle"]

API_PREFIX = "/api/v1"


class _Parser(FlaskParser):
    # Bad input is a client error the client can fix: 400 naming the field (webargs' default is 422).
    DEFAULT_VALIDATION_STATUS = 400


class Blueprint(_Blueprint):
    ARGUMENTS_PARSER = _Parser()


class PvcApi(Api):
    ERROR_SCHEMA = ErrorSchema

    def handle_http_exception(self, error):  # smorest's own handler, replaced to keep one error shape
        return handle_http(error)


def handle() -> ClusterHandle:
    return current_app.extensions["pvc"]


def accepted(job: dict) -> tuple[dict, int, dict]:
    """A mutation's answer: 202, the job, and where to follow it."""
    return job, 202, {"Location": f"{API_PREFIX}/jobs/{job['id']}"}
