"""``/jobs``: list (filters), show, cancel."""

from __future__ import annotations

from pvc_tasks.jobs import JobStore
from pvc_tasks.submit import cancel_job
from pvc_web.blueprint import Blueprint, handle
from pvc_web.schemas import JobQuerySchema, JobSchema
from pvc_web.views import job_view

PREFIX = "/jobs"
blp = Blueprint("jobs", __name__, description="Jobs: state, phase, percent, messages, result or reason")


@blp.route("")
@blp.arguments(JobQuerySchema, location="query")
@blp.response(200, JobSchema(many=True))
def list_jobs(query: dict):
    """Jobs, newest first, filtered by state, kind, node and VM."""
    h = handle()
    wanted = {k: query[k] for k in ("state", "kind", "node", "vm") if query.get(k)}
    jobs = [j for j in JobStore(h.zk, h.schema).all()
            if all(str(getattr(j, k)) == v for k, v in wanted.items())]
    jobs.sort(key=lambda j: j.created, reverse=True)
    return [job_view(j) for j in jobs[: query["limit"]]]


@blp.route("/<string:job_id>")
@blp.response(200, JobSchema)
def show_job(job_id: str):
    """One job (404 ``job_not_found`` when unknown)."""
    h = handle()
    return job_view(JobStore(h.zk, h.schema).get(job_id))


@blp.route("/<string:job_id>/cancel", methods=["POST"])
@blp.response(200, JobSchema)
@blp.alt_response(409, description="the job already ended")
def cancel(job_id: str):
    """Cancel a job: a queued job ends at once; a running one stops at its next safe point."""
    h = handle()
    return job_view(cancel_job(h.zk, h.schema, job_id))
