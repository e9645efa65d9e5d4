"""Leases of the steps this worker process is running: a step that stops making progress is noticed.

A step takes a lease when it takes its stage (``pvc_tasks.runner``) and renews it whenever it shows progress: a
phase, a percent, a note, a cancel check, a tick of a bounded wait, data moved by a live migration. A step whose
lease was not renewed for ``step_lease`` s is stuck (a thread blocked in a hypervisor call that does not return,
a deadlock): the janitor of the same process judges it (``pvc_workers.janitor``) by the kind's ``stuck`` column
(``pvc_tasks.kinds``): the job ends ``failed`` with the reason, the node fault ``step_hung`` stays until the
thread comes back, and what the call did is recorded then; or, for a migration, whose hypervisor operation may
still complete while a rollback runs beside it, the worker restarts itself, so the call dies with the process,
and its reconcile rolls the migration back from what each hypervisor says.

Why in-process and on this process's monotonic clock: only the process running a step can tell a stuck thread
from a slow one, and no clock of another machine enters the judgement (a dead process is not judged here: its
presence vanishes and the other janitors, or its own reconcile after a restart, end its jobs). The renewals cost
nothing (no ZooKeeper write), so a step may renew on every tick.

Why a live migration moving bytes is never cut off: its watcher (``pvc_workers.hypervisor``) reports progress on
every look at it, each renewing the lease, however long it takes; the watcher itself aborts one that sends no
data for ``migration_stall`` s or has not converged within ``migration_timeout`` s, with the VM still running on
its source. Only a watcher whose own libvirt call hangs lets the lease lapse.

When a lapsed step's thread finally returns, its job has ended without it: its writes find the stage gone
(``StageLost``) or the job ended, and the runner re-reads its VM from this node's hypervisor (``runner``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = ["LEASES", "Lease", "Leases"]


@dataclass
class Lease:
    job_id: str
    stage: str
    #: When (the registry's clock) the step last showed progress.
    renewed: float
    #: Set by the judge: the job was ended without this step; its thread has not returned yet.
    lapsed: bool = False
    thread: str = field(default_factory=lambda: threading.current_thread().name)


class Leases:
    """The running steps of one process (thread-safe); ``clock`` is monotonic."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._held: dict[int, Lease] = {}  # by id of the Lease: one job may briefly have two steps here
        self._local = threading.local()

    @contextmanager
    def hold(self, job_id: str, stage: str) -> Iterator[Lease]:
        """The calling thread runs ``stage`` of ``job_id`` inside this block."""
        lease = Lease(job_id, stage, self.clock())
        with self._lock:
            self._held[id(lease)] = lease
        previous, self._local.lease = getattr(self._local, "lease", None), lease
        try:
            yield lease
        finally:
            self._local.lease = previous
            with self._lock:
                self._held.pop(id(lease), None)

    def renew(self) -> None:
        """The calling thread's step made progress (nothing when it holds no lease)."""
        lease = getattr(self._local, "lease", None)
        if lease is not None:
            lease.renewed = self.clock()

    def overdue(self, after: float) -> list[Lease]:
        """Leases not renewed for ``after`` s and not judged yet; each is marked lapsed as it is returned, so a
        step is judged once."""
        now, out = self.clock(), []
        with self._lock:
            for lease in self._held.values():
                if not lease.lapsed and now - lease.renewed > after:
                    lease.lapsed = True
                    out.append(lease)
        return out

    def hung(self) -> list[Lease]:
        """Lapsed leases whose thread is still inside its step."""
        with self._lock:
            return [lease for lease in self._held.values() if lease.lapsed]


#: The registry of this process (a worker runs one node).
LEASES = Leases()
