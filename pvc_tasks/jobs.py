"""Job records in ZooKeeper: where they are stored and their compare-and-set transitions (the record itself, its
states and ops: ``pvc_tasks.jobmodel``, re-exported here).

A job is one znode, ``schema.path("job", id)``, whose data is the JSON record (``Job.to_bytes``). One znode per
job makes every transition a single version-checked write (or one transaction together with the VM keys it
changes), so two writers can never interleave half-updates: the loser re-reads and re-decides.

States: ``queued -> running -> succeeded | failed | cancelled`` (and ``queued -> cancelled | failed``). A
terminal job never changes again. Percent never decreases. The VM's ``active_job`` marker is set in the same
transaction that creates the job and cleared in the same transaction that ends it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from kazoo.client import KazooClient
from kazoo.exceptions import (
    BadVersionError,
    ConnectionClosedError,
    ConnectionLoss,
    NoNodeError,
    OperationTimeoutError,
    SessionExpiredError,
)

from pvc_tasks import defaults
from pvc_tasks.errors import Invalid, NotFound
from pvc_tasks.jobmodel import TERMINAL, Job, JobState, Op, Origin
from zk_schema import Schema

__all__ = ["TERMINAL", "TRANSIENT", "Job", "JobState", "JobStore", "Op", "Origin", "commit", "end_ops", "notify_parent",
           "orphan", "past_history", "patient"]

#: ZooKeeper errors after which the same request may work a moment later: the connection dropped (the session
#: survives a short outage and kazoo reconnects by itself), or the session expired and kazoo opens a new one.
TRANSIENT = (ConnectionLoss, OperationTimeoutError, SessionExpiredError, ConnectionClosedError)


def patient(fn: Callable, *args, deadline: float = defaults.ZK_RETRY_DEADLINE):
    """``fn(*args)``, tried again with backoff while ZooKeeper is unreachable, for at most ``deadline`` s. Only for
    reads, and for writes whose retry decides afresh (a compare-and-set re-reads first): a write that may have
    applied before its answer was lost must not simply be sent again."""
    delay, end = defaults.ZK_RETRY_FIRST_DELAY, time.monotonic() + deadline
    while True:
        try:
            return fn(*args)
        except TRANSIENT:
            if time.monotonic() > end:
                raise
            time.sleep(delay)
            delay = min(delay * 2, defaults.ZK_RETRY_MAX_DELAY)


def commit(zk: KazooClient, ops: Iterable[Op]) -> list:
    """Run ops as one ZooKeeper transaction; raises the first failure (BadVersionError, NodeExistsError, ...).

    A transaction larger than ``ZK_MAX_REQUEST`` is refused here (``Invalid``, code ``too_large``): sent, it would
    exceed the server's ``jute.maxbuffer`` and the server would drop the connection, failing every other request
    in flight on this process's shared session."""
    ops = list(ops)
    size = sum(len(op[1]) + (len(op[2]) if op[0] in ("create", "set") else 0) + 64 for op in ops)
    if size > defaults.ZK_MAX_REQUEST:
        raise Invalid(f"the change is too large for ZooKeeper ({size} bytes; at most {defaults.ZK_MAX_REQUEST})",
                      code="too_large", details={"bytes": size})
    tx = zk.transaction()
    for op in ops:
        if op[0] == "create":
            tx.create(op[1], op[2], ephemeral=len(op) > 3)
        elif op[0] == "set":
            tx.set_data(op[1], op[2], op[3])
        elif op[0] == "delete":
            tx.delete(op[1], op[2])
        elif op[0] == "check":
            tx.check(op[1], op[2])
        else:
            raise ValueError(f"unknown transaction op {op[0]!r}")
    results = tx.commit()
    for result in results:
        # Kazoo reports the real cause first and RolledBackError for the others.
        if isinstance(result, Exception) and result.__class__.__name__ != "RolledBackError":
            raise result
    for result in results:
        if isinstance(result, Exception):
            raise result
    return results


def past_history(jobs: Iterable[Job], now: float, keep: int, retention: float) -> list[Job]:
    """The ended jobs to prune: those over ``retention`` s since they ended, and all but the ``keep`` that ended
    last. A child of an unfinished job is never among them: its parent reads it to learn how it ended."""
    jobs = list(jobs)
    unfinished = {job.id for job in jobs if not job.terminal}
    ended = sorted((job for job in jobs if job.terminal and job.parent not in unfinished),
                   key=lambda job: job.finished or job.created, reverse=True)
    return [job for rank, job in enumerate(ended) if rank >= keep or now - (job.finished or job.created) > retention]


def end_ops(store: JobStore, job: Job) -> list[Op]:
    """Ops every END of a job commits with its terminal write, whoever ends it (its own task, a rollback, the
    janitor, a cancel): the kind's ``end_ops`` in ``pvc_tasks.kinds`` (a migration gives back its slot)."""
    from pvc_tasks import kinds  # the table imports every task module, and they import this one

    return kinds.get(job.kind).end_ops(store, job)


def orphan(store: JobStore, job: Job, reason: str) -> None:
    """The job's current step cannot run (its node died or restarted during it, its message was lost for good, its
    node was fenced): its kind ends it or rolls it back (``orphaned`` in ``pvc_tasks.kinds``)."""
    from pvc_tasks import kinds  # see end_ops

    kinds.get(job.kind).orphaned(store, job, reason)


def notify_parent(store: JobStore, job: Job) -> None:
    """A child's end makes its parent pass at once (best effort: a parent also passes periodically)."""
    if not (job.parent and job.terminal):
        return
    from pvc_tasks import engine  # engine publishes through the dispatcher, which imports this module

    try:
        engine.child_ended(store, job)
    except Exception:
        logging.getLogger(__name__).exception("parent of job %s not notified", job.id)


class JobStore:
    """Reads and transitions job records; ``schema`` may be a callable returning the current Schema."""

    def __init__(self, zk: KazooClient, schema: Schema | Callable[[], Schema]) -> None:
        self.zk = zk
        self._schema = schema

    @property
    def schema(self) -> Schema:
        return self._schema() if callable(self._schema) else self._schema

    def path(self, job_id: str) -> str:
        return self.schema.path("job", job_id)

    def create_ops(self, job: Job) -> list[Op]:
        """Ops creating the job's record and its entry in the index of open jobs (schema 8), in one transaction, so
        that every unfinished job is in the index, and every new job shows in it (the API's read model discovers
        new jobs there). The entry outlives the job's end until the primary's janitor sees the end
        (``open_index``); nothing but that janitor deletes it."""
        ops: list[Op] = [("create", self.path(job.id), job.to_bytes())]
        if "job_open" in self.schema.roots:
            ops.append(("create", self.schema.path("job_open", job.id), b""))
        return ops

    def get_versioned(self, job_id: str) -> tuple[Job, int]:
        try:
            data, stat = patient(self.zk.get, self.path(job_id))
        except (NoNodeError, ValueError) as exc:
            raise NotFound(f"no job {job_id}", code="job_not_found") from exc
        return Job.from_bytes(data), stat.version

    def get(self, job_id: str) -> Job:
        return self.get_versioned(job_id)[0]

    def wait_change(self, job_id: str, after: int, timeout: float) -> tuple[Job, int]:
        """The job once its revision (znode version) is above ``after``, or as it is after ``timeout`` s.

        A one-shot ZooKeeper watch wakes the caller on the next write, so a waiting client sees a change within
        one round trip instead of a polling interval."""
        changed = threading.Event()
        try:
            data, stat = self.zk.get(self.path(job_id), watch=lambda _event: changed.set())
        except (NoNodeError, ValueError) as exc:
            raise NotFound(f"no job {job_id}", code="job_not_found") from exc
        job = Job.from_bytes(data)
        if stat.version > after or job.terminal or not changed.wait(timeout):
            return job, stat.version
        return self.get_versioned(job_id)

    def all(self) -> list[Job]:
        """Every job record, read in parallel: the whole history (the API's job list, pruning)."""
        try:
            ids = patient(self.zk.get_children, self.schema.path("base.job"))
        except NoNodeError:
            return []
        return [job for job in self._read(ids) if job is not None]

    def unfinished(self) -> list[Job]:
        """Every unfinished job, read through the index of open jobs: its cost follows the jobs in flight, not the
        history. A cluster before schema 8 has no index: every record is read."""
        return self.open_index()[0]

    def open_index(self) -> tuple[list[Job], list[str]]:
        """(the unfinished jobs, the ids of index entries whose job has ended or is gone: the janitor's to delete)."""
        if "job_open" not in self.schema.roots:
            return [job for job in self.all() if not job.terminal], []
        try:
            ids = patient(self.zk.get_children, self.schema.path("base.job_open"))
        except NoNodeError:
            return [], []
        jobs, ended = [], []
        for job_id, job in zip(ids, self._read(ids)):
            if job is None or job.terminal:
                ended.append(job_id)
            else:
                jobs.append(job)
        return jobs, ended

    def _read(self, ids: list[str]) -> list[Job | None]:
        pending = [self.zk.get_async(self.path(i)) for i in ids]
        jobs: list[Job | None] = []
        for result in pending:
            try:
                jobs.append(Job.from_bytes(result.get()[0]))
            except NoNodeError:
                jobs.append(None)  # pruned between the listing and the read
        return jobs

    def update(self, job_id: str, mutate: Callable[[Job], bool], extra: Callable[[Job], list[Op]] | None = None,
               *, attempts: int = 20) -> Job:
        """Compare-and-set: ``mutate`` edits the job in place and returns False to skip the write.

        ``extra`` returns more ops committed in the same transaction. On a concurrent write the job is re-read
        and ``mutate`` decides again, so the last writer never overwrites what it did not see.

        ZooKeeper unreachable for a moment: reads wait (``patient``); a transaction whose answer was lost is judged
        by reading the job again: if it holds exactly what we wrote, the transaction applied (it is atomic, so
        ``extra`` did too); else ``mutate`` decides again on what is there."""
        return self.update_versioned(job_id, mutate, extra, attempts=attempts)[0]

    def update_versioned(self, job_id: str, mutate: Callable[[Job], bool],
                         extra: Callable[[Job], list[Op]] | None = None, *, attempts: int = 20,
                         known: tuple[Job, int] | None = None) -> tuple[Job, int]:
        """``update``, returning the job's znode version too; ``known``: the job as the caller last wrote or read
        it, with that version, tried first instead of a read (a step's writes follow each other: a concurrent
        write, such as a cancel request, fails the version check and the job is read again)."""
        for _ in range(attempts):
            if known is not None:
                job, version = Job.from_bytes(known[0].to_bytes()), known[1]  # mutate edits a copy
                known = None
            else:
                job, version = self.get_versioned(job_id)
            if not mutate(job):
                return job, version
            written = job.to_bytes()
            ops = [("set", self.path(job_id), written, version)] + (extra(job) if extra else [])
            try:
                return job, commit(self.zk, ops)[0].version
            except BadVersionError:
                continue
            except TRANSIENT:
                data, stat = patient(self.zk.get, self.path(job_id))
                if data == written:
                    return job, stat.version
        raise RuntimeError(f"job {job_id}: too many concurrent updates")

    def release_ops(self, job: Job) -> list[Op]:
        """Ops clearing the VM's active-job marker if it still names this job (version-checked)."""
        if not job.vm:
            return []  # a node's job (flush, unflush) has no VM marker
        path = self.schema.path("domain.active_job", job.vm)
        try:
            data, stat = self.zk.get(path)
        except NoNodeError:
            return []
        if data.decode() != job.id:
            return []
        return [("set", path, b"", stat.version)]

    def finish(self, job_id: str, state: JobState, reason: str = "", result: dict | None = None,
               ops: Callable[[Job], list[Op]] | None = None, *, release: bool = True,
               notes: list[str] | None = None, known: tuple[Job, int] | None = None) -> Job:
        """End a job (if not already ended) and release its VM marker, with ``ops``, in one transaction
        (``known``: see ``update_versioned``)."""

        ended = False

        def mutate(job: Job) -> bool:
            nonlocal ended
            ended = False  # decided afresh on each attempt of update()
            if job.terminal:
                return False
            for note in notes or []:
                job.note(note)
            job.end(state, reason, result)
            ended = True
            return True

        def extra(job: Job) -> list[Op]:
            return (ops(job) if ops else []) + (self.release_ops(job) if release else []) + end_ops(self, job)

        job = self.update_versioned(job_id, mutate, extra, known=known)[0]
        if ended:
            notify_parent(self, job)
        return job
