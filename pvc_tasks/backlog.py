"""Stuck work made visible: how old the oldest unfinished jobs are, how often steps were re-sent, and which jobs
passed their kind's bound (``bound`` in ``pvc_tasks.kinds``).

``GET /health`` shows the figures, ``GET /cluster`` (``pvc cluster status``) also the jobs over their bound, and
the primary's janitor keeps the cluster fault ``jobs_over_bound`` in step with them. Nothing here ends a job: the
re-driver and the janitor do that; this says when they could not.
"""

from __future__ import annotations

from collections.abc import Iterable

from pvc_tasks import kinds
from pvc_tasks.config import Settings
from pvc_tasks.jobs import Job

__all__ = ["backlog", "fault_message"]


def backlog(jobs: Iterable[Job], now: float, settings: Settings) -> dict:
    """{"queued"|"running": {"count", "oldest_s"}, "resends", "over_bound": [{"id", "kind", "vm", "node", "state",
    "age_s", "bound_s"}, oldest first]} over the unfinished jobs. A kind this code does not know has no bound."""
    figures: dict = {state: {"count": 0, "oldest_s": None} for state in ("queued", "running")}
    figures.update(resends=0, over_bound=[])
    for job in jobs:
        if job.terminal:
            continue
        age = round(max(now - job.created, 0.0), 1)
        state = figures[str(job.state)]
        state["count"] += 1
        state["oldest_s"] = max(state["oldest_s"] or 0.0, age)
        figures["resends"] += job.resends
        kind = kinds.KINDS.get(job.kind)
        bound = kind.bound(settings) if kind else float("inf")
        if age > bound:
            figures["over_bound"].append({"id": job.id, "kind": job.kind, "vm": job.vm, "node": job.node,
                                          "state": str(job.state), "age_s": age, "bound_s": bound})
    figures["over_bound"].sort(key=lambda j: -j["age_s"])
    return figures


def fault_message(figures: dict) -> str | None:
    """The text of the cluster fault ``jobs_over_bound``, or None when no job passed its bound."""
    over = figures["over_bound"]
    if not over:
        return None
    oldest = over[0]
    where = f" on {oldest['node']}" if oldest["node"] else ""
    what = f" of VM {oldest['vm']}" if oldest["vm"] else ""
    return (f"{len(over)} job(s) unfinished past their bound; oldest: {oldest['kind']} job {oldest['id']}{what}"
            f"{where}, {oldest['state']} for {oldest['age_s']:.0f} s (bound {oldest['bound_s']:.0f} s)")
