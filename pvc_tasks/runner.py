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

From its claim to its end a step holds a lease (``pvc_tasks.leases``), renewed by every sign of progress the body
reports through ``JobRun``; a step that shows none for ``step_lease`` s has its job ended without it by the
janitor. If its thread comes back after that, ``_settle_late`` records what it did to the VM.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from kazoo.exceptions import BadVersionError, NoNodeError

from pvc_tasks import defaults, dispatch, vfs
from pvc_tasks.app import app
from pvc_tasks.context import HypervisorError, NodeContext, current
from pvc_tasks.errors import describe
from pvc_tasks.jobs import Job, JobState, JobStore, Op, commit
from pvc_tasks.leases import LEASES

__all__ = ["JobCancelled", "JobFailed", "JobRun", "StageLost", "fail_orphan", "hop", "job_task", "node_figure_ops",
           "step_task"]

log = logging.getLogger(__name__)


class JobFailed(Exception):
    """An expected failure; the message is the job's reason."""


class JobCancelled(Exception):
    """The operator cancelled the job; the body stopped at a safe point."""


class StageLost(Exception):
    """The job left this step's stage while the step ran (the janitor handed it to a rollback): hands off."""


class JobRun:
    """The handle a task body uses to report progress and to stage what its outcome writes to ZooKeeper."""

    def __init__(self, ctx: NodeContext, job: Job, version: int | None = None) -> None:
        self.ctx = ctx
        self.job = job
        #: The znode version ``job`` was read or written at: the step's next write tries it first instead of a read.
        self.version = version
        #: The stage this step took. ``job`` follows the record, which may move on without this step (the janitor
        #: handed it to a rollback): every write of the step is checked against this, never against ``job``.
        self.stage = job.stage
        self.vm = job.vm
        self.hv = ctx.hypervisor
        #: VM keys written with the terminal transition, by outcome (key name -> data).
        self.on_success: dict[str, str] = {}
        #: VM keys written when the job fails (e.g. a recovery marks its VM ``failed``).
        self.on_failure: dict[str, str] = {}
        #: Outcomes after which the VM's record is deleted instead of updated (define rollback, undefine).
        self.remove_vm_when: set[JobState] = set()
        #: More ops committed with a successful end (a recovery moves its VM's SR-IOV VF use to this node).
        self.success_ops: list[Op] = []
        #: When ``percent_within`` last wrote the job's progress figures (monotonic s).
        self._progress_at = 0.0

    def phase(self, name: str, step: int, steps: int, message: str | None = None) -> None:
        """Enter phase ``name`` (step k of n); also a cancel point."""
        LEASES.renew()

        def mutate(job: Job) -> bool:
            self._still_mine(job)
            job.advance(name, step, steps)
            if message:
                job.note(message)
            return True

        self.update(mutate)
        if self.job.cancel_requested:
            raise JobCancelled(f"cancelled by request before phase {name!r}")

    def percent_within(self, fraction: float, progress: dict | None = None, phase: str = "") -> None:
        """Report progress inside the current step (0..1); never goes backwards. Every call renews the step's
        lease: the body's loop is alive and its hypervisor answered (a live migration's watcher calls this on every
        tick, and bounds a migration that moves no data itself). ``progress`` (the job's figures) and ``phase``
        are written with a rise of the percent, else at most every ``PROGRESS_EVERY`` s: a watcher looks ten
        times a second, and each write is a ZooKeeper write and a watch event for every reader."""
        LEASES.renew()
        job = self.job
        start = 100 * (job.step - 1) / job.steps
        target = int(start + max(0.0, min(fraction, 1.0)) * 100 / job.steps)
        figures = bool(progress) and progress != job.progress and \
            time.monotonic() - self._progress_at >= defaults.PROGRESS_EVERY
        if target <= job.percent and not figures:
            return
        if progress:
            self._progress_at = time.monotonic()

        def mutate(j: Job) -> bool:
            # Progress of a step that lost its stage is not written, and not raised either: the caller may be
            # watching a hypervisor operation that must be followed to its end (a live migration).
            if not self._owns(j):
                return False
            _raise_percent(j, target)
            if progress:
                j.progress, j.phase = dict(progress), phase or j.phase
            return True

        self.update(mutate)

    def note_only(self, text: str) -> None:
        """Add a message to the job without changing its phase (not once the step lost its stage)."""
        LEASES.renew()
        self.update(lambda j: self._owns(j) and (j.note(text), True)[1])

    @property
    def known(self) -> tuple[Job, int] | None:
        """The job and its znode version as this step last saw them (for ``JobStore.update_versioned``)."""
        return None if self.version is None else (self.job, self.version)

    def update(self, mutate: Callable[[Job], bool], extra: Callable[[Job], list[Op]] | None = None) -> Job:
        """``JobStore.update`` of this step's job, starting from the copy it holds."""
        self.job, self.version = self.ctx.jobs.update_versioned(self.job.id, mutate, extra, known=self.known)
        return self.job

    def _owns(self, job: Job) -> bool:
        """The job still waits on this very step: not ended, at this step's stage on this node."""
        return not job.terminal and (job.stage, job.node) == (self.stage, self.ctx.node)

    def _still_mine(self, job: Job) -> None:
        if not self._owns(job):
            raise StageLost(f"job {job.id} moved from {self.stage} on {self.ctx.node} to {job.stage} on {job.node} "
                            f"({job.state}) meanwhile")

    def cancel_point(self) -> None:
        LEASES.renew()
        self.job, self.version = self.ctx.jobs.get_versioned(self.job.id)
        if self.job.cancel_requested:
            raise JobCancelled(self.job.params.get("cancel_reason")
                               or f"cancelled by request during phase {self.job.phase!r}")

    def wait_for(self, predicate: Callable[[], bool], timeout: float,
                 interval: float = defaults.STEP_POLL_INTERVAL) -> bool:
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


def _begin(job: Job) -> bool:
    """queued -> running, in the caller's compare-and-set; False when the job is no longer queued."""
    if job.state != JobState.QUEUED:
        return False
    job.state, job.started = JobState.RUNNING, time.time()
    return True


def node_figure_ops(ctx: NodeContext, *vms: str) -> list[Op]:
    """Ops writing this node's resource figures after the step changed ``vms`` here (empty outside a worker with
    an inventory)."""
    if ctx.inventory is None:
        return []
    return [("set", ctx.schema.path(f"node.{k}", ctx.node), v.encode(), -1) for k, v in ctx.inventory(*vms).items()]


def _outcome_ops(run: JobRun, outcome: JobState, reason: str) -> list[Op]:
    ctx, schema, vm = run.ctx, run.ctx.schema, run.vm
    if not vm:  # a node's own job (VF settings): no VM keys to write
        return node_figure_ops(ctx)
    root = schema.path("domain", vm)
    if ctx.zk.exists(root) is None:
        return node_figure_ops(ctx, vm)
    if outcome in run.remove_vm_when:
        return vfs.remove_vm_ops(ctx.zk, schema, vm) + node_figure_ops(ctx, vm)
    values = dict(run.on_success if outcome == JobState.SUCCEEDED else
                  run.on_failure if outcome == JobState.FAILED else {})
    observed = run.hv.state(vm)
    if observed != "missing" and not (outcome == JobState.FAILED and "state" in values):
        values["state"] = observed
    values["failed_reason"] = reason if outcome == JobState.FAILED else ""
    extra = run.success_ops if outcome == JobState.SUCCEEDED else []
    return ([("set", schema.path(f"domain.{key}", vm), value.encode(), -1) for key, value in values.items()]
            + extra + node_figure_ops(ctx, vm))


def _finish(run: JobRun, outcome: JobState, reason: str = "", result: dict | None = None) -> Job:
    return run.ctx.jobs.finish(run.job.id, outcome, reason, result,
                               ops=lambda job: _outcome_ops(run, outcome, reason),
                               release=outcome not in run.remove_vm_when, known=run.known)


def job_task(name: str, phase: tuple[str, Callable[[Job], str]] | None = None) -> Callable:
    """Declare a one-step job's Celery task ``name`` whose body is ``fn(run, vm=..., node=..., **job.params)``.

    ``phase`` (name, message from the job): the body's only phase, entered by the write that takes the job, so a
    one-phase job writes its record twice (take, end) instead of three times; without it the take enters
    ``starting`` and the body calls ``run.phase``."""

    def decorate(fn: Callable) -> Callable:
        @app.task(name=name)
        @functools.wraps(fn)
        def task(job_id: str, vm: str, node: str) -> dict:
            ctx = current()
            if node != ctx.node:
                # The router put it on the wrong queue: refuse rather than act on the wrong hypervisor.
                ctx.jobs.finish(job_id, JobState.FAILED, f"task for node {node} reached node {ctx.node}")
                return {"job": job_id, "state": "failed"}
            taken = _take_stage(ctx, job_id, name, node, phase or ("starting", None))
            if taken is None:
                return {"job": job_id, "state": "skipped"}
            run = JobRun(ctx, *taken)
            job = run.job
            with _leased(run, name):
                try:
                    result = fn(run, vm=vm, node=node, **job.params) or {}
                    job = _finish(run, JobState.SUCCEEDED, "", result)
                except StageLost as exc:
                    log.warning("job %s: %s; %s stops here", job_id, exc, name)
                except JobCancelled as exc:
                    job = _finish(run, JobState.CANCELLED, str(exc))
                except JobFailed as exc:
                    job = _finish(run, JobState.FAILED, str(exc))
                except HypervisorError as exc:
                    job = _finish(run, JobState.FAILED, exc.as_reason(node))
                except Exception as exc:
                    log.exception("job %s (%s) crashed", job_id, name)
                    job = _finish(run, JobState.FAILED, f"internal error in {name}: {describe(exc)}")
            return {"job": job_id, "state": str(job.state), "reason": job.reason}

        return task

    return decorate


def fail_orphan(store: JobStore, job: Job, reason: str) -> None:
    """End a job whose task can no longer end it (its worker died, its message was lost), from any process: the
    default ``orphaned`` of ``pvc_tasks.kinds``. The VM's marker is released; the VM's state is left for its node's
    reconciler, which alone can ask that node's hypervisor."""
    store.finish(job.id, JobState.FAILED, reason)


def hop(run: JobRun, task_name: str, node: str, ops: Callable[[], list[Op]] | None = None,
        message: str | None = None, params: dict | None = None, phase: tuple[str, int] | None = None) -> None:
    """Hand a multi-step job to its next task on ``node``'s queue.

    The job's ``stage`` (the task that may act next) and ``node`` (whose queue holds it) are written, with ``ops()``
    (a function: version-checked ops are rebuilt from fresh reads when a concurrent write forces a retry)
    (and ``params`` merged into the job's), in one transaction BEFORE the message is sent, so a stale or duplicated
    message finds a stage that is not its own and does nothing. No task ever waits for another: each hands over.

    The write happens only while the job is still at the calling step's stage: if the janitor handed the job to a
    rollback meanwhile (this node looked absent), ``StageLost`` stops the step without touching the job, whose new
    owner reads what this step did from the hypervisors. A write that was retried after its first attempt
    committed (a lost connection) finds the hand-over done and only publishes."""
    own, here = run.stage, run.ctx.node

    def mutate(job: Job) -> bool:
        if job.terminal:
            raise JobFailed(f"job ended meanwhile ({job.state})")
        if (job.stage, job.node) == (task_name, node) and (own, here) != (task_name, node):
            return False  # our hand-over committed already
        if (job.stage, job.node) != (own, here):
            raise StageLost(f"job {job.id} moved from {own} on {here} to {job.stage} on {job.node} meanwhile")
        job.hand_to(task_name, node)
        job.params.update(params or {})
        if phase:
            job.advance(phase[0], phase[1], job.steps)
        if message:
            job.note(message)
        return True

    run.update(mutate, (lambda _j: ops()) if ops else None)
    dispatch.publish(run.job)


def step_task(name: str, *, claims: tuple[str, Callable[[Job], str]] | None = None,
              on_error: Callable[[JobRun, JobState, str], None] | None = None,
              cancellable: bool = True) -> Callable:
    """Declare one step of a multi-step job: a Celery task ``name`` whose body is ``fn(run)``.

    The step acts only if the job is not terminal and its ``stage`` names this task on this node (else the message
    is stale: ignored). ``claims`` (phase name, message from the job): the first step, which also moves the job
    ``queued -> running`` and enters that phase in the same write; later steps' phases are entered by the ``hop``
    that hands the job to them. An exception
    calls ``on_error(run, outcome, reason)`` (cancelled on ``JobCancelled``, failed otherwise), which starts the
    family's rollback. A step after the family's commit is not ``cancellable``: the change has happened, and a
    cancel arriving then must neither call it undone nor skip the step's tidying up."""

    def decorate(fn: Callable) -> Callable:
        @app.task(name=name)
        @functools.wraps(fn)
        def task(job_id: str, vm: str, node: str) -> dict:
            ctx = current()
            taken = _take_stage(ctx, job_id, name, node, claims)
            if taken is None:
                return {"job": job_id, "state": "skipped"}
            run = JobRun(ctx, *taken)
            with _leased(run, name):
                try:
                    if cancellable and run.job.cancel_requested:
                        raise JobCancelled(f"cancelled by request before {name}")
                    fn(run)
                except StageLost as exc:
                    log.warning("job %s: %s; step %s stops here", job_id, exc, name)
                except JobCancelled as exc:
                    _step_error(run, on_error, JobState.CANCELLED, str(exc))
                except JobFailed as exc:
                    _step_error(run, on_error, JobState.FAILED, str(exc))
                except HypervisorError as exc:
                    _step_error(run, on_error, JobState.FAILED, exc.as_reason(node))
                except Exception as exc:  # every job must end with a reason, whatever went wrong
                    log.exception("job %s step %s crashed", job_id, name)
                    _step_error(run, on_error, JobState.FAILED, f"internal error in {name}: {describe(exc)}")
            return {"job": job_id, "stage": run.job.stage, "state": str(run.job.state)}

        return task

    return decorate


def _take_stage(ctx: NodeContext, job_id: str, name: str, node: str,
                claims: tuple[str, Callable[[Job], str] | None] | None) -> tuple[Job, int] | None:
    """Compare-and-set: the job's ``stage`` is ``name`` on this node and not yet taken -> taken (the first step also
    moves the job queued -> running and enters its phase in the same write). None for a stale or duplicated
    message: of two messages for one stage, delivered at once to two threads, exactly one runs the step."""
    taken = False

    def mutate(job: Job) -> bool:
        nonlocal taken
        taken = False  # update() calls this again after a lost race: the second look must see the winner's take
        if node != ctx.node or job.terminal or job.stage != name or job.node != node or job.stage_taken == name:
            log.info("stale %s message for job %s (stage %s on %s, taken: %s); ignored", name, job_id, job.stage,
                     job.node, job.stage_taken == name)
            return False
        if claims:
            if not _begin(job):
                return False
            job.advance(claims[0], 1, job.steps)
            if claims[1]:
                job.note(claims[1](job))
        job.stage_taken, taken = name, True
        return True

    job, version = ctx.jobs.update_versioned(job_id, mutate)
    return (job, version) if taken else None


@contextmanager
def _leased(run: JobRun, name: str) -> Iterator[None]:
    """The step ``name`` runs inside this block under a lease; if it was judged stuck, settle what it did."""
    with LEASES.hold(run.job.id, name) as lease:
        yield
        if lease.lapsed:
            _settle_late(run, name)


def _settle_late(run: JobRun, name: str) -> None:
    """A step judged stuck came back after its job was ended without it: what it did reached this node's
    hypervisor but not ZooKeeper. Record the VM's state as this hypervisor reports it, when ZooKeeper still places
    the VM here and no job holds it now (version-checked: a job that takes it meanwhile wins); otherwise only say
    so, on the job and in the log, for the operator (the VM's next job, or this worker's reconcile at its next
    start, reads the hypervisor again)."""
    ctx, vm, schema = run.ctx, run.vm, run.ctx.schema
    if not vm:
        return
    try:
        placed = ctx.zk.get(schema.path("domain.node", vm))[0].decode()
        marker, stat = ctx.zk.get(schema.path("domain.active_job", vm))
        observed = run.hv.state(vm)
        if placed == ctx.node and not marker and observed != "missing":
            commit(ctx.zk, [("check", schema.path("domain.active_job", vm), stat.version),
                            ("set", schema.path("domain.state", vm), observed.encode(), -1)])
            text = f"step {name} returned late; {vm} is {observed} on {ctx.node}, as now recorded"
        else:
            text = (f"step {name} returned late; {vm} is {observed} on {ctx.node} (ZooKeeper places it on "
                    f"{placed}, {'held by job ' + marker.decode() if marker else 'no job holds it'}): check it")
    except (NoNodeError, BadVersionError):
        return  # undefined meanwhile, or a new job took the VM: its own end records the state
    log.warning("job %s: %s", run.job.id, text)
    ctx.jobs.update(run.job.id, lambda job: (job.note(text), True)[1])


def _step_error(run: JobRun, on_error: Callable | None, outcome: JobState, reason: str) -> None:
    if on_error is None:
        run.job = run.ctx.jobs.finish(run.job.id, outcome, reason)
        return
    try:
        on_error(run, outcome, reason)
    except StageLost as exc:  # the janitor started the rollback already, from another node
        log.warning("job %s: %s; its rollback is under way there", run.job.id, exc)
    except Exception:  # the rollback itself failed: end the job, loudly, rather than leave it open
        log.exception("rollback of job %s failed", run.job.id)
        run.job = run.ctx.jobs.finish(run.job.id, JobState.FAILED, f"{reason}; rollback failed, see the worker log")
