"""``/jobs``: list (filters), show, cancel."""

from __future__ import annotations

import threading

from flask import current_app

from pvc_tasks.jobs import JobStore
from pvc_tasks.submit import cancel_job
from pvc_web.blueprint import Blueprint, handle
from pvc_web.schemas import JobQuerySchema, JobSchema, JobWaitSchema
from pvc_web.views import job_view

PREFIX = "/jobs"
blp = Blueprint("jobs", __name__, description="Jobs: state, phase, percent, messages, result or reason")


@blp.route("")
@blp.arguments(JobQuerySchema, location="query")
@blp.response(200, JobSchema(many=True))
def list_jobs(query: dict):
    """Jobs, newest first, filtered by state, kind, node, VM, parent and creation time; at most ``limit`` of them
    (pages: ``before`` = the last one's ``created``)."""
    h = handle()
    wanted = {k: query[k] for k in ("state", "kind", "node", "vm", "parent") if query.get(k)}
    since, before = query.get("since", 0.0), query.get("before", float("inf"))
    jobs = [j for j in h.jobs()
            if since <= j.created < before and all(str(getattr(j, k)) == v for k, v in wanted.items())]
    jobs.sort(key=lambda j: j.created, reverse=True)
    return [job_view(j) for j in jobs[: query["limit"]]]


@blp.route("/<string:job_id>")
@blp.arguments(JobWaitSchema, location="query")
@blp.response(200, JobSchema)
def show_job(query: dict, job_id: str):
    """One job (404 ``job_not_found`` when unknown). With ``wait``, a long-poll for its next change.

    Long-polls hold a server thread, so at most half the API's threads wait at once; beyond that the job is
    answered at once and the client simply asks again."""
    h = handle()
    store = JobStore(h.zk, h.schema)
    waiters: threading.BoundedSemaphore = current_app.extensions["pvc_waiters"]
    if query["wait"] > 0 and waiters.acquire(blocking=False):
        try:
            return job_view(*store.wait_change(job_id, query["after"], query["wait"]))
        finally:
            waiters.release()
    return job_view(*store.get_versioned(job_id))


@blp.route("/<string:job_id>/cancel", methods=["POST"])
@blp.response(200, JobSchema)
@blp.alt_response(409, description="the job already ended")
def cancel(job_id: str):
    """Cancel a job: a queued job ends at once; a running one stops at its next safe point."""
    h = handle()
    return job_view(cancel_job(h.zk, h.schema, job_id))
