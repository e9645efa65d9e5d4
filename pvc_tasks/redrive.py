"""The job record is the outbox: a step whose message was lost is published again from ZooKeeper.

Every non-terminal job records the task that may act next (``stage``), on whose queue (``node``; "" is the
cluster queue), whether that task has started (``stage_taken``, a compare-and-set of the step itself), when its
message was last published (``sent``) and how often it was published again (``resends``). Whoever writes a stage
publishes it right after the write commits (``pvc_tasks.dispatch``); nothing else is needed on the happy path, so
the outbox costs no ZooKeeper write of its own.

Re-drive protocol (one pass of each worker's janitor; ``pvc_workers.janitor``)
    1. Who: the worker of the node whose queue holds the step re-drives it (the primary for the cluster queue).
       Only that node can tell a lost message from a held one: it sees its own Celery worker's reserved and
       running messages, and its queue's length. A node whose worker is gone is the janitor's other case: its
       jobs are orphaned (rolled back through a live node, or failed) by the other nodes.
    2. When: the step is not taken ``redrive_after`` s after ``sent`` (or, for an engine job, the lease of the pass
       that took it lapsed that long ago: the pass died before scheduling the next), the node's queue is empty (a
       queue that is not empty is behind, not lossy) and this worker holds no message for the job (reserved,
       waiting for its countdown, or running).
    3. What: record ``sent`` and ``resends`` + 1 (compare-and-set: not if the step was taken meanwhile), then
       publish the stage again. The broker answered the queue-length question just before, so a re-send it refuses
       is rare; it is counted, and the next pass tries again.
    4. Bound: after ``redrive_limit`` re-sends in a row that nobody took, the node is not consuming its queue;
       the job's kind ends or rolls it back with that reason (``orphaned`` in ``pvc_tasks.kinds``). The outer
       bound stays: a job still queued after ``queue_timeout`` s fails.

Why duplicates are safe: a step acts only after it took its stage with a compare-and-set on the job record (and a
one-step job moves ``queued -> running`` in the same write); a second message for the same stage, or one for a
stage the job has left, finds that and does nothing. An engine pass takes a lease instead, and a re-driven engine
job is sent a periodic pass, which clears ``scheduled`` and so schedules the next periodic pass again.
"""

from __future__ import annotations

import logging
import time

from pvc_tasks import dispatch, kinds
from pvc_tasks.jobs import Job, JobStore, orphan

__all__ = ["overdue", "redrive"]

log = logging.getLogger(__name__)


def overdue(job: Job, now: float, after: float) -> bool:
    """True when ``job`` waits for a step nobody took ``after`` s after its message was published, or for an
    engine pass whose lease lapsed ``after`` s ago (the pass died before it could schedule the next one)."""
    if job.terminal or not job.stage:
        return False
    if job.stage_taken == job.stage:
        until = (job.params.get("lease") or {}).get("until") if kinds.get(job.kind).engine else None
        return bool(until) and now - until > after
    return now - (job.sent or job.created) > after


def _where(job: Job) -> str:
    return f"node {job.node}'s queue" if job.node else "the cluster queue"


def redrive(store: JobStore, job: Job, after: float, limit: int) -> str:
    """Publish ``job``'s stage again: "sent"; "broker" when the broker refused it; "gave up" when ``limit``
    re-sends went untaken and the job's kind ended or rolled it back; "" when the job moved on meanwhile."""
    if job.resends >= limit:
        orphan(store, job, f"step {job.stage} was published {job.resends + 1} times to {_where(job)} and never "
                           f"taken within {after:g} s: that worker is not consuming its queue")
        return "gave up"
    counted = False

    def mutate(j: Job) -> bool:
        nonlocal counted
        counted = j.stage == job.stage and j.node == job.node and overdue(j, time.time(), after)
        if counted:
            j.sent, j.resends = time.time(), j.resends + 1
            j.note(f"{j.stage} re-sent to {_where(j)}: not taken {after:g} s after it was published "
                   f"({j.resends} of {limit})")
        return counted

    job = store.update(job.id, mutate)
    if not counted:
        return ""
    log.warning("job %s (%s): %s re-sent to %s", job.id, job.kind, job.stage, _where(job))
    return "sent" if dispatch.publish(job, periodic=kinds.get(job.kind).engine) else "broker"
