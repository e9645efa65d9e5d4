"""Parent jobs driven by passes ("ticks"): flush/unflush of a node, and the fencing of a node.

Such a job never waits inside a task. A pass reads ZooKeeper, submits or checks child jobs, records its progress
and either ends the job or schedules the next pass. Three things trigger a pass: the first message, a child's end
(``child_ended`` -> the parent's task at once), and one periodic safety pass every ``ENGINE_TICK`` s.

Passes are serialised by a lease in the job record (``params.lease``: a token and an expiry): a pass that finds
the lease held marks the job ``dirty`` and returns, and the holder passes once more when it is done, so a
child's end is never missed and two passes never submit for one VM. A lease outlives a crashed holder by at most
``ENGINE_LEASE`` s, so a pass never outlives its lease: it stops submitting after half of it (``pass_deadline``)
and asks for the next pass at once (``continue_job(..., again=True)``), and a step longer than that (a power
cycle) first extends the lease to that step's bound (``extend_lease``). ``params.scheduled`` says that a periodic
pass is already on its way, so there is only ever one.

The outbox (``pvc_tasks.redrive``) sees an engine job like a step job: a pass takes the stage (``stage_taken``)
and scheduling the next periodic pass hands it on (``sent``). A periodic pass lost with the broker is published
again by the re-driver as a periodic pass (which clears ``scheduled`` when it takes the lease, so the next one is
scheduled again); a restarted worker or a new primary resumes the job with ``resume_passes``.
"""

from __future__ import annotations

import time

from pvc_tasks import defaults, dispatch
from pvc_tasks.jobs import Job, JobState, JobStore

__all__ = ["child_ended", "collect_ended", "continue_job", "extend_lease", "pass_deadline", "record_outcome",
           "resume_passes", "take_lease"]


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
        job.params["lease"] = {"token": token, "until": time.time() + defaults.ENGINE_LEASE}
        job.stage_taken, job.resends = job.stage, 0
        taken = True
        return True

    job = store.update(job_id, mutate)
    return job if taken else None


def pass_deadline() -> float:
    """The monotonic time after which a pass that has just taken (or extended) its lease submits nothing more."""
    return time.monotonic() + defaults.ENGINE_LEASE / 2


def extend_lease(store: JobStore, job_id: str, token: str, seconds: float, result: dict | None = None) -> bool:
    """Hold this pass's lease ``seconds`` longer than ``ENGINE_LEASE`` from now, before a step that may take that
    long, recording ``result`` (what the step must not lose if this pass dies in it) in the same write; False when
    the pass no longer holds the lease (then it must stop)."""
    held = False

    def mutate(job: Job) -> bool:
        nonlocal held
        lease = job.params.get("lease") or {}
        held = not job.terminal and lease.get("token") == token
        if held:
            job.params["lease"] = dict(lease, until=time.time() + defaults.ENGINE_LEASE + seconds)
            if result is not None:
                job.result = result
        return held

    store.update(job_id, mutate)
    return held


def _names(names: list[str], shown: int = 4) -> str:
    """``a, b, c, d and 3 more``: a phase stays one line however many children run."""
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def continue_job(store: JobStore, job_id: str, token: str, result: dict, notes: list[str], waiting: str,
                 again: bool = False) -> dict:
    """Record progress (``result`` with ``done``/``stayed``/``total``), give the lease back, schedule the next
    pass; ``waiting`` says why nothing more could be started now; ``again``: this pass ran out of time, so the
    next one runs at once."""
    flags: dict[str, bool] = {}

    def mutate(job: Job) -> bool:
        if job.terminal:
            return False
        job.result = result
        done, total = len(result.get("done", [])) + len(result.get("stayed", {})), result.get("total", 0)
        in_flight = sorted(result.get("running", {}))
        job.percent = max(job.percent, min(99, int(100 * done / max(total, 1))))
        job.progress = {"done": done, "total": total, "in_flight": in_flight}
        job.phase = (f"{job.kind} {done}/{total}" + (f", in flight: {_names(in_flight)}" if in_flight else "")
                     + (f", waiting: {waiting}" if waiting else ""))
        for note in notes:
            job.note(note)
        if waiting and waiting != job.params.get("waiting"):  # say once why the job waits, not at every pass
            job.note(f"waiting: {waiting}")
        job.params["waiting"] = waiting
        if job.params.get("lease", {}).get("token") == token:
            job.params["lease"] = {}
        flags["again"], job.params["dirty"] = again or bool(job.params.get("dirty")), False
        flags["schedule"] = not job.params.get("scheduled")
        job.params["scheduled"] = True
        job.stage_taken = ""  # this pass is over; the outbox counts from the last message sent
        if flags["schedule"] or flags["again"]:
            job.sent = time.time()
        return True

    job = store.update(job_id, mutate)
    if not job.terminal:
        if flags.get("again"):  # a child ended while this pass ran
            dispatch.publish(job)
        if flags.get("schedule"):  # the one periodic safety pass
            dispatch.publish(job, periodic=True, countdown=defaults.ENGINE_TICK)
    return {"job": job_id, "state": "running", "waiting": waiting}


def collect_ended(store: JobStore, result: dict, notes: list[str], retries: int = 0) -> None:
    """Move children that ended since the last pass from ``result["running"]`` to ``done`` or ``stayed``. A child
    that FAILED is forgotten instead, at most ``retries`` times per VM (``result["retried"]``: times and last
    reason), so the pass submits it again: a worker restart or a lost connection is transient, and a cause that
    is not fails the same way again."""
    running, retried = result["running"], result.setdefault("retried", {})
    for name, child_id in list(running.items()):
        child = store.get(child_id)
        if not child.terminal:
            continue
        del running[name]
        if child.state == JobState.SUCCEEDED:
            result["done"].append(name)
            notes.append(f"{name}: {child.kind} done" + (f" (now on {child.result['node']})"
                                                          if child.result.get("node") else ""))
        elif child.state == JobState.FAILED and retried.get(name, {}).get("times", 0) < retries:
            times = retried.get(name, {}).get("times", 0) + 1
            retried[name] = {"times": times, "last": child.reason}
            notes.append(f"{name}: {child.kind} failed ({child.reason}); trying again ({times} of {retries})")
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


def child_ended(store: JobStore, child: Job) -> None:
    """A child's end makes its parent pass at once (on the parent's queue)."""
    parent = store.get(child.parent)
    if not parent.terminal:
        dispatch.publish(parent)


def resume_passes(store: JobStore, job: Job) -> None:
    """A worker restarted or a primary took over: free the lease of a pass that died with its process, and pass."""

    def mutate(j: Job) -> bool:
        if j.terminal:
            return False
        j.params.update(lease={}, scheduled=False)
        j.hand_to(j.stage, j.node)
        return True

    job = store.update(job.id, mutate)
    if not job.terminal:
        dispatch.publish(job)
