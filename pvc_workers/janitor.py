"""The janitor: every worker ends or re-drives the jobs nobody else would, so no job waits forever.

Each pass (every ``janitor_interval`` s) over the unfinished jobs, read through the index of open jobs (schema 8;
its cost follows the jobs in flight, not the history):

* a non-terminal job of ANOTHER node whose worker is absent (no presence znode, seen so by this janitor for
  ``absent_after`` s of its own clock, and a keepalive older than that) is orphaned: its kind rolls it back through
  a live node or ends it ``failed``, with "node X's worker is not running". The janitor's own clock matters: a
  worker killed and restarted at once takes its presence back the moment the old session expires, and a pass
  falling into that instant must not end the jobs the new worker is about to reconcile;
* a job waiting on THIS node's queue (or on the cluster queue, when this worker is primary) for a message nobody
  took is published again from its record, a bounded number of times (``pvc_tasks.redrive``; this worker alone
  can see the messages it holds and its queue's length);
* a step of THIS process that showed no progress for ``step_lease`` s (``pvc_tasks.leases``: a thread stuck in a
  hypervisor call) has its job ended as a dead worker's would be (the kind's ``orphaned``), or, for kinds whose
  ``stuck`` is ``restart`` (migrations), makes the worker restart itself (``pvc_tasks.kinds``). The node fault
  ``step_hung`` stays while such a thread has not come back;
* a job still ``queued`` after ``queue_timeout`` s ends ``failed``: the outer bound, whatever happened;
* on the primary: index entries of jobs that have ended are deleted (``JobStore.open_index``);
* on the primary, every ``history_interval`` s, over the whole history: terminal jobs older than ``job_retention``
  s, and all but the newest ``job_history``, are deleted (``prune``), and an unfinished job missing from the index
  (created by a writer still on schema 7 while the cluster moved to 8) is indexed;
* on the primary: the cluster fault ``jobs_over_bound`` is set, or cleared, from the unfinished jobs' ages
  (``pvc_tasks.backlog``);
* on a node that returned from being declared dead (``returning``): its local copies of VMs that ZooKeeper now
  places elsewhere are removed (``pvc_workers.reconcile.remove_stale_copies``) while a fence, evacuation or
  recovery of this node is unfinished, and once more after the last one ended.

Every worker runs a janitor; they race harmlessly, because ending a job is a compare-and-set that does nothing
to a job already ended, and a re-drive counts only while the step is still untaken.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from celery.worker import state as worker_state
from kazoo.exceptions import KazooException, NodeExistsError, NoNodeError

from pvc_tasks import dispatch, fencing, kinds, redrive
from pvc_tasks.backlog import backlog, fault_message
from pvc_tasks.context import NodeContext
from pvc_tasks.jobs import Job, JobState, orphan, past_history
from pvc_tasks.leases import LEASES
from pvc_tasks.state import keepalive_age, node_alive
from pvc_workers.health import set_fault
from pvc_workers.reconcile import remove_stale_copies
from pvc_workers.watchdog import restart_worker

__all__ = ["Janitor", "held_here"]

log = logging.getLogger(__name__)


def held_here() -> set[str]:
    """Jobs this worker process holds a message for: reserved, waiting for its countdown, or running."""
    held = set()
    for request in list(worker_state.requests.values()):
        try:
            held.add((request.kwargs or {}).get("job_id"))
        except Exception:  # noqa: BLE001 - a request whose body cannot be read holds nothing we could re-drive
            continue
    return held


class Janitor(threading.Thread):
    def __init__(self, ctx: NodeContext, stop: threading.Event, primary: Callable[[], bool] = lambda: False,
                 returning: bool = False) -> None:
        super().__init__(name="janitor", daemon=True)
        self.ctx, self.stop, self.primary = ctx, stop, primary
        #: This node came back after it was declared dead: its VMs may be committed elsewhere after our start.
        self.returning = returning
        #: Node -> when (this process's monotonic clock) its presence was first seen missing.
        self.gone_since: dict[str, float] = {}
        #: When (monotonic) the primary reads the whole job history next.
        self.next_history = 0.0

    def _absent(self, node: str) -> float | None:
        """Seconds since the node's last keepalive when its worker counts as absent, else None."""
        if node_alive(self.ctx.zk, self.ctx.schema, node):
            self.gone_since.pop(node, None)
            return None
        gone = time.monotonic() - self.gone_since.setdefault(node, time.monotonic())
        if gone < self.ctx.settings.absent_after:
            return None
        age = keepalive_age(self.ctx.zk, self.ctx.schema, node,
                            self.ctx.schema.path("node.keepalive", self.ctx.node))
        if age is None or age > self.ctx.settings.absent_after:
            return age if age is not None else float("inf")
        return None

    def _recovering_me(self, job) -> bool:
        """An unfinished fence or evacuation of this node, or recovery of one of its VMs."""
        node = self.ctx.node
        return not job.terminal and ((job.params.get("target") == node and job.kind in fencing.KINDS)
                                     or (job.kind == "recover" and job.params.get("dead") == node))

    def judge_leases(self) -> None:
        """End the jobs of this process's steps whose lease lapsed; keep ``step_hung`` while their threads hang."""
        lease_s = self.ctx.settings.step_lease
        for lease in LEASES.overdue(lease_s) if lease_s > 0 else []:
            job = self.ctx.jobs.get(lease.job_id)
            if job.terminal or (job.stage, job.node, job.stage_taken) != (lease.stage, self.ctx.node, lease.stage):
                continue  # it moved on as we looked: not stuck
            reason = (f"step {lease.stage} showed no progress for {lease_s:g} s on node {self.ctx.node} (a thread "
                      f"stuck in a hypervisor call that does not return)")
            if kinds.get(job.kind).stuck == "restart":
                why = (f"{reason}; node {self.ctx.node}'s worker restarts itself so that the call dies with it, and "
                       f"its reconcile rolls job {job.id} back from what each hypervisor says")
                self.ctx.jobs.update(job.id, lambda j, why=why: (j.note(why), True)[1])
                restart_worker(self.ctx, "step_hung", why)
            log.warning("job %s: %s; ending it without that step", job.id, reason)
            orphan(self.ctx.jobs, job, reason)
        hung = LEASES.hung()
        set_fault(self.ctx, "node.faults", "step_hung", "; ".join(
            f"step {lease.stage} of job {lease.job_id} (thread {lease.thread}) has not returned for "
            f"{LEASES.clock() - lease.renewed:.0f} s; its job was ended without it" for lease in hung[:3]
        ) if hung else None, self.ctx.node)

    def sweep(self) -> None:
        settings, now = self.ctx.settings, time.time()
        absent: dict[str, float | None] = {}
        queue_len: dict[str, int | None] = {}
        held: set[str] | None = None
        jobs, ended = self.ctx.jobs.open_index()
        if self.returning:
            self.returning = any(self._recovering_me(job) for job in jobs)
            remove_stale_copies(self.ctx)
        if self.primary():
            set_fault(self.ctx, "base.faults", "jobs_over_bound", fault_message(backlog(jobs, now, settings)))
            self._delete_all([self.ctx.schema.path("job_open", job_id) for job_id in ended])
            if time.monotonic() >= self.next_history:
                self.next_history = time.monotonic() + settings.history_interval
                self.history({job.id for job in jobs} | set(ended), now)
        for job in jobs:
            if job.node and job.node != self.ctx.node:  # node "": a cluster job, resumed by each new primary
                if job.node not in absent:
                    absent[job.node] = self._absent(job.node)
                age = absent[job.node]
                if age is not None:
                    seen = "never" if age == float("inf") else f"{age:.0f} s ago"
                    orphan(self.ctx.jobs, job, f"node {job.node}'s worker is not running (last keepalive {seen}); "
                                               f"the job cannot proceed")
                    continue
            if job.state == JobState.QUEUED and now - job.created > settings.queue_timeout:
                orphan(self.ctx.jobs, job, f"not started within {settings.queue_timeout:g} s: the task message was "
                                           f"lost or node {job.node} is stuck")
                continue
            mine = job.node == self.ctx.node or (not job.node and self.primary())
            if not mine or settings.redrive_after <= 0 or not redrive.overdue(job, now, settings.redrive_after):
                continue
            if job.node not in queue_len:
                queue_len[job.node] = dispatch.waiting(job.node)
            if queue_len[job.node] != 0:
                continue  # the queue is behind (or the broker cannot say): its messages are not lost
            if held is None:
                held = held_here()
            if job.id not in held and redrive.redrive(self.ctx.jobs, job, settings.redrive_after,
                                                      settings.redrive_limit) == "broker":
                queue_len[job.node] = None  # the broker refused: no more re-sends in this pass

    def history(self, indexed: set[str], now: float) -> None:
        """The primary's read of every job record: prune, and index the unfinished jobs the index lacks."""
        jobs = self.ctx.jobs.all()
        self.prune(jobs, now)
        if "job_open" not in self.ctx.schema.roots:
            return
        for job in jobs:
            if not job.terminal and job.id not in indexed:
                log.info("job %s was not in the index of open jobs (created during the upgrade to schema 8)", job.id)
                try:
                    self.ctx.zk.create(self.ctx.schema.path("job_open", job.id), b"")
                except NodeExistsError:
                    continue

    def _delete_all(self, paths: list[str]) -> None:
        pending = [self.ctx.zk.delete_async(path) for path in paths]
        for result in pending:
            try:
                result.get()
            except NoNodeError:
                pass  # another janitor, or an old primary finishing its pass

    def prune(self, jobs: list[Job], now: float) -> int:
        """Delete the ended jobs past ``job_retention`` or beyond the newest ``job_history`` (``past_history``);
        returns how many."""
        settings = self.ctx.settings
        doomed = past_history(jobs, now, settings.job_history, settings.job_retention)
        self._delete_all([self.ctx.jobs.path(job.id) for job in doomed])
        if doomed:
            log.info("pruned %d ended job(s) (kept: the newest %d, none older than %g s)", len(doomed),
                     settings.job_history, settings.job_retention)
        return len(doomed)

    def run(self) -> None:
        while not self.stop.wait(self.ctx.settings.janitor_interval):
            try:
                self.judge_leases()
                self.sweep()
            except KazooException as exc:
                log.warning("janitor pass skipped: %s", exc)
            except Exception:
                log.exception("janitor pass failed")
