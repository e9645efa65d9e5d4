"""Running one job inside a task: claim, phases, cancel points, and exactly one terminal transition.

Every job task is declared with ``@job_task("pvc.<family>.<phase>")`` and receives a ``JobRun``. The wrapper:

1. checks that the message reached the node it names (routing sanity),
2. *claims* the job: compare-and-set ``queued -> running``. A job that is no longer queued (cancelled while it
   waited, failed by the janitor, or already run by a duplicate message) is left alone and the task returns;
   this is what makes a redelivered or late message harmless,
3. runs the body, which reports phases (``run.phase``) and may stop at cancel points (``run.cancel_point``),
4. ends the job in ONE transaction with the VM keys it changes: ``succeeded`` when the body returns,
   ``cancelled`` on ``JobCancelled``, ``failed`` with the reason on ``JobFailed`` or any other exception. The VM's
   observed hypervisor state is written in the same transaction, so ZooKeeper never lags what libvirt says.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

from pvc_tasks.app import app
from pvc_tasks.context import NodeContext, current
from pvc_tasks.jobs import Job, JobState, Op
from pvc_tasks.state import delete_tree_ops

__all__ = ["JobCancelled", "JobFailed", "JobRun", "fail_orphan", "job_task"]

log = logging.getLogger(__name__)


class JobFailed(Exception):
    """An expected failure; the message is the job's reason."""


class JobCancelled(Exception):
    """The operator cancelled the job; the body stopped at a safe point."""


class JobRun:
    """The handle a task body uses to report progress and to stage what its outcome writes to ZooKeeper."""

    def __init__(self, ctx: NodeContext, job: Job) -> None:
        self.ctx = ctx
        self.job = job
        self.vm = job.vm
        self.hv = ctx.hypervisor
        #: VM keys written with the terminal transition, by outcome (key name -> data).
        self.on_success: dict[str, str] = {}
        #: Outcomes after which the VM's record is deleted instead of updated (define rollback, undefine).
        self.remove_vm_when: set[JobState] = set()

    def phase(self, name: str, step: int, steps: int, message: str | None = None) -> None:
        """Enter phase ``name`` (step k of n); also a cancel point."""

        def mutate(job: Job) -> bool:
            job.advance(name, step, steps)
            if message:
                job.note(message)
            return True

        self.job = self.ctx.jobs.update(self.job.id, mutate)
        if self.job.cancel_requested:
            raise JobCancelled(f"cancelled by request before phase {name!r}")

    def percent_within(self, fraction: float) -> None:
        """Report progress inside the current step (0..1); never goes backwards."""
        job = self.job
        start = 100 * (job.step - 1) / job.steps
        target = int(start + max(0.0, min(fraction, 1.0)) * 100 / job.steps)
        if target > job.percent:
            self.job = self.ctx.jobs.update(job.id, lambda j: _raise_percent(j, target))

    def cancel_point(self) -> None:
        self.job = self.ctx.jobs.get(self.job.id)
        if self.job.cancel_requested:
            raise JobCancelled(f"cancelled by request during phase {self.job.phase!r}")

    def wait_for(self, predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
        """Poll ``predicate`` until true or ``timeout`` s; reports percent and honours cancel on each tick."""
        started = time.monotonic()
        while True:
            if predicate():
                return True
            elapsed = time.monotonic() - started
            if elapsed >= timeout:
                return False
            self.percent_within(elapsed / timeout)
            self.cancel_point()
            time.sleep(min(interval, max(timeout - elapsed, 0.01)))


def _raise_percent(job: Job, target: int) -> bool:
    if target <= job.percent or job.terminal:
        return False
    job.percent = min(target, 100)
    return True


def _claim(ctx: NodeContext, job_id: str) -> Job | None:
    claimed = False

    def mutate(job: Job) -> bool:
        nonlocal claimed
        if job.state != JobState.QUEUED:
            return False
        job.state, job.started, job.phase = JobState.RUNNING, time.time(), "starting"
        claimed = True
        return True

    job = ctx.jobs.update(job_id, mutate)
    return job if claimed else None


def _outcome_ops(run: JobRun, outcome: JobState, reason: str) -> list[Op]:
    ctx, schema, vm = run.ctx, run.ctx.schema, run.vm
    root = schema.path("domain", vm)
    if ctx.zk.exists(root) is None:
        return []
    if outcome in run.remove_vm_when:
        return delete_tree_ops(ctx.zk, root)
    values = dict(run.on_success) if outcome == JobState.SUCCEEDED else {}
    observed = run.hv.state(vm)
    if observed != "missing":
        values["state"] = observed
    values["failed_reason"] = reason if outcome == JobState.FAILED else ""
    return [("set", schema.path(f"domain.{key}", vm), value.encode(), -1) for key, value in values.items()]


def _finish(run: JobRun, outcome: JobState, reason: str = "", result: dict | None = None) -> Job:
    return run.ctx.jobs.finish(run.job.id, outcome, reason, result,
                               ops=lambda job: _outcome_ops(run, outcome, reason),
                               release=outcome not in run.remove_vm_when)


def job_task(name: str) -> Callable:
    """Declare a Celery task ``name`` whose body is ``fn(run, vm=..., node=..., **params)``."""

    def decorate(fn: Callable) -> Callable:
        @app.task(name=name, bind=True)
        @functools.wraps(fn)
        def task(self, job_id: str, vm: str, node: str, **params) -> dict:
            ctx = current()
            if node != ctx.node:
                # The router put it on the wrong queue: refuse rather than act on the wrong hypervisor.
                ctx.jobs.finish(job_id, JobState.FAILED, f"task for node {node} reached node {ctx.node}")
                return {"job": job_id, "state": "failed"}
            job = _claim(ctx, job_id)
            if job is None:
                log.info("job %s is no longer queued; message ignored", job_id)
                return {"job": job_id, "state": "skipped"}
            run = JobRun(ctx, job)
            try:
                result = fn(run, vm=vm, node=node, **params) or {}
                job = _finish(run, JobState.SUCCEEDED, "", result)
            except JobCancelled as exc:
                job = _finish(run, JobState.CANCELLED, str(exc))
            except JobFailed as exc:
                job = _finish(run, JobState.FAILED, str(exc))
            except Exception as exc:
                log.exception("job %s (%s) crashed", job_id, name)
                job = _finish(run, JobState.FAILED, f"internal error in {name}: {exc}")
            return {"job": job_id, "state": str(job.state), "reason": job.reason}

        return task

    return decorate


def fail_orphan(store, job_id: str, reason: str) -> Job:
    """End a job whose task can no longer end it (its worker died, its message was lost), from any process.

    The VM's marker is released; a ``define`` job's VM record is removed, as its own rollback would have done.
    The VM's state is left for its node's reconciler, which alone can ask that node's hypervisor."""
    job = store.get(job_id)
    if job.kind == "define":
        root = store.schema.path("domain", job.vm)
        return store.finish(job_id, JobState.FAILED, reason,
                            ops=lambda _j: delete_tree_ops(store.zk, root) if store.zk.exists(root) else [],
                            release=False)
    return store.finish(job_id, JobState.FAILED, reason)
