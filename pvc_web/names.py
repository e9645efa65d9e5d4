"""Path parameters that name things (``vm``, ``node``, ``vf``, ``job_id``) are checked before any view runs.

A name that breaks ``pvc_tasks.names`` is answered 400 ``invalid_request`` naming the parameter and the rule;
it never reaches a ZooKeeper path (where ``..``, ``/`` or NUL made kazoo raise, a 500 before this existed).
Query and body fields use ``pvc_web.schemas.Name``, the same rule as a marshmallow field.
"""

from __future__ import annotations

from flask import Flask, request

from pvc_tasks.errors import Invalid
from pvc_tasks.names import JOB_ID, NAME, NAME_RULE

__all__ = ["install"]

_RULES = {"vm": (NAME, NAME_RULE), "node": (NAME, NAME_RULE), "vf": (NAME, NAME_RULE),
          "job_id": (JOB_ID, "a job id (a UUID)")}


def install(app: Flask) -> None:
    @app.before_request
    def _check_names():
        for param, value in (request.view_args or {}).items():
            pattern, rule = _RULES.get(param, (None, ""))
            if pattern is not None and not pattern.fullmatch(value):
                raise Invalid(f"{param}: {value!r} is not a valid name ({rule})", details={param: [rule]})
