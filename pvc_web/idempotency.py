"""Safe retries: a request that creates a job may carry an ``Idempotency-Key`` header; the same key from the same
client gets the same job back, however often it is sent.

A client whose connection broke cannot tell whether its request took effect; it sends the request again with
the same key. The job's id is derived from the key and the client's token (``uuid5``), so nothing has to remember
keys: the job record is the memory, kept as long as the job (``job_retention``, 7 days by default).

1. Before the view runs: if the derived job exists, the request is a retry. The same request (method, path and
   body: the job's ``request`` fingerprint) gets that job again, 202 with ``Idempotent-Replayed: true``; a
   different request with the key gets 409 ``idempotency_key_reused``.
2. Else the view creates its job under the derived id (``origin()``, passed to the submit functions), in the same
   transaction as everything else it writes. Two identical requests racing: one transaction wins, the other fails
   on the existing job record and is answered with the winner's job, as in 1.

Keys are 1-255 printable ASCII characters (a UUID is a good key). Without the header nothing changes.
"""

from __future__ import annotations

import functools
import hashlib
import uuid
from collections.abc import Callable

from flask import g, request
from kazoo.exceptions import NodeExistsError

from pvc_tasks.errors import Conflict, Invalid, NotFound, PvcError
from pvc_tasks.jobs import JobStore, Origin
from pvc_web.access import request_id
from pvc_web.auth import caller, presented
from pvc_web.blueprint import accepted, handle
from pvc_web.views import job_view

__all__ = ["HEADER", "idempotent", "origin"]

HEADER = "Idempotency-Key"
_NAMESPACE = uuid.UUID("1b7d2c4e-3f55-4c5e-9b0a-5d2f3e6c7a81")


def _origin(key: str) -> Origin:
    if not 0 < len(key) <= 255 or not key.isascii() or not key.isprintable():
        raise Invalid(f"{HEADER}: give 1-255 printable ASCII characters (a UUID is a good key)",
                      details={HEADER: ["invalid key"]})
    client = hashlib.sha256((presented() or "").encode()).hexdigest()
    fingerprint = hashlib.sha256(b"\0".join([request.method.encode(), request.path.encode(),
                                             request.get_data()])).hexdigest()
    return Origin(str(uuid.uuid5(_NAMESPACE, f"{client}:{key}")), fingerprint, _requester(), request_id())


def _replay(wanted: Origin):
    """The answer to a retry of the request that created ``wanted``'s job, or None when there is no such job."""
    h = handle()
    try:
        job = JobStore(h.zk, h.schema).get(wanted.job_id)
    except NotFound:
        return None
    if job.request != wanted.request:
        raise Conflict(f"{HEADER} was already used for another request (job {job.id}); use a new key for a new "
                       f"request", code="idempotency_key_reused", details={"job": job.id})
    body, status, headers = accepted(job_view(job))
    return body, status, {**headers, "Idempotent-Replayed": "true"}


def idempotent(view: Callable) -> Callable:
    """Honour ``Idempotency-Key`` on a view that creates one job and answers ``accepted(...)``."""

    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        key = request.headers.get(HEADER)
        g.pvc_origin = None
        if key is None:
            return view(*args, **kwargs)
        wanted = _origin(key)
        replayed = _replay(wanted)
        if replayed is not None:
            return replayed
        g.pvc_origin = wanted
        try:
            return view(*args, **kwargs)
        except (PvcError, NodeExistsError):
            replayed = _replay(wanted)  # a twin of this request won the race for the same job record
            if replayed is not None:
                return replayed
            raise

    return wrapper


def _requester() -> str:
    who = caller()
    return who.name if who else ""


def origin() -> Origin:
    """Who asked for the current request's job, and with an ``Idempotency-Key`` the id and fingerprint it must
    carry."""
    return g.get("pvc_origin") or Origin(requested_by=_requester(), request_id=request_id())
