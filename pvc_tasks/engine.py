"""Parent jobs driven by passes ("ticks"): flush/unflush of a node, and the fencing of a node.

Such a job never waits inside a task. A pass reads ZooKeeper, submits or checks child jobs, records its progress
and either ends the job or schedules the next pass. Three things trigger a pass: the first message, a child's end
(``CHILD_ENDED`` -> the parent's task at once), and one periodic safety pass every ``TICK_INTERVAL`` s.

Passes are serialised by a lease in the job record (``params.lease``: a token and an expiry): a pass that finds
the lease held marks the job ``dirty`` and returns, and the holder passes once more when it is done, so a
child's end is never missed and two passes never submit for one VM. A lease outlives a crashed holder by at most
``LEASE`` s. ``params.scheduled`` says that a periodic pass is already on its way, so there is only ever one.
"""

from __future__ import annotations

import time

from pvc_tasks.app import app
from pvc_tasks.jobs import CHILD_ENDED, Job, JobState, JobStore

__all__ = ["ENGINE_TASKS", "LEASE", "TICK_INTERVAL", "collect_ended", "continue_job", "record_outcome", "take_lease"]

#: Seconds between safety passes (children's ends trigger one at once) and the lifetime of a pass's lease.
TICK_INTERVAL, LEASE = 1.0, 10.0
#: Job kind -> the task that makes a pass over it.
ENGINE_TASKS: dict[str, str] = {}


def take_lease(store: JobStore, job_id: str, token: str, periodic: bool) -> Job | None:
    """The job, leased to this pass; None when it ended or another pass holds it (which is then told to pass
    again at once, so a child's end is never missed)."""
    taken = False

    def mutate(job: Job) -> bool:
        nonlocal taken
        taken = False
        lease = job.params.get("lease") or {}
        if job.terminal:
            return False
        if periodic:
            job.params["scheduled"] = False
        if lease and lease.get("until", 0) > time.time():
            job.params["dirty"] = True
            return True
        if job.state == JobState.QUEUED:
            job.state, job.started = JobState.RUNNING, time.time()
            job.advance(job.kind, 1, 1)
        job.params["lease"] = {"token": token, "until": time.time() + LEASE}
        taken = True
        return True

    job = store.update(job_id, mutate)
    return job if taken else None


def continue_job(store: JobStore, job_id: str, token: str, result: dict, notes: list[str], waiting: str) -> dict:
    """Record progress (``result`` with ``done``/``stayed``/``total``), give the lease back, schedule the next
    pass; ``waiting`` says why nothing more could be started now."""
    flags: dict[str, bool] = {}

    def mutate(job: Job) -> bool:
        if job.terminal:
            return False
        job.result = result
        done = len(result.get("done", [])) + len(result.get("stayed", {}))
        job.percent = max(job.percent, min(99, int(100 * done / max(result.get("total", 0), 1))))
        job.phase = f"{job.kind} {done}/{result.get('total', 0)}" + (f", waiting: {waiting}" if waiting else "")
        for note in notes:
            job.note(note)
        if waiting and waiting != job.params.get("waiting"):  # say once why the job waits, not at every pass
            job.note(f"waiting: {waiting}")
        job.params["waiting"] = waiting
        if job.params.get("lease", {}).get("token") == token:
            job.params["lease"] = {}
        flags["again"], job.params["dirty"] = bool(job.params.get("dirty")), False
        flags["schedule"] = not job.params.get("scheduled")
        job.params["scheduled"] = True
        return True

    job = store.update(job_id, mutate)
    if not job.terminal:
        task = ENGINE_TASKS[job.kind]
        kwargs = {"job_id": job_id, "vm": "", "node": job.node}
        if flags.get("again"):  # a child ended while this pass ran
            app.send_task(task, kwargs=kwargs)
        if flags.get("schedule"):  # the one periodic safety pass
            app.send_task(task, kwargs=dict(kwargs, periodic=True), countdown=TICK_INTERVAL)
    return {"job": job_id, "state": "running", "waiting": waiting}


def collect_ended(store: JobStore, result: dict, notes: list[str]) -> None:
    """Move children that ended since the last pass from ``result["running"]`` to ``done`` or ``stayed``."""
    running = result["running"]
    for name, child_id in list(running.items()):
        child = store.get(child_id)
        if not child.terminal:
            continue
        del running[name]
        if child.state == JobState.SUCCEEDED:
            result["done"].append(name)
            notes.append(f"{name}: {child.kind} done" + (f" (now on {child.result['node']})"
                                                          if child.result.get("node") else ""))
        else:
            result["stayed"][name] = f"{child.kind} {child.state}: {child.reason}"
            notes.append(f"{name} stays: {child.reason}")


def record_outcome(result: dict, notes: list[str], name: str, outcome: str, detail: str) -> str:
    """Record what a pass decided for one VM: ``child`` (a job id), ``done`` / ``stayed`` (a note) or ``wait``
    (returned: why nothing could start now; "" otherwise)."""
    if outcome == "child":
        result["running"][name] = detail
    elif outcome == "done":
        result["done"].append(name)
        notes.append(detail)
    elif outcome == "stayed":
        result["stayed"][name] = detail
        notes.append(f"{name} stays: {detail}")
    else:
        return detail
    return ""


def _child_ended(store: JobStore, child: Job) -> None:
    """A child's end makes its parent pass at once (on the parent's queue)."""
    parent = store.get(child.parent)
    task = ENGINE_TASKS.get(parent.kind)
    if task is not None and not parent.terminal:
        app.send_task(task, kwargs={"job_id": parent.id, "vm": "", "node": parent.node})


CHILD_ENDED.append(_child_ended)
