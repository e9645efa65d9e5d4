"""Every kind of job, in one table: its tasks, where they run, and what happens at its end, when its node dies, on
cancel and when a worker restarts.

Columns
    ``tasks``     the Celery tasks a job of this kind may wait for; the first is where a new job starts. Where each
                  runs is ``pvc_tasks.routing``'s decision, from the task's family and the job's ``node``.
    ``runs_on``   that decision in words, for the reader.
    ``end_ops``   ops every end of such a job commits in its terminal transaction, whoever ends it (its own step,
                  a rollback, the janitor, a cancel): what the job holds besides its VM marker.
    ``orphaned``  the job's current step cannot run: its node died or restarted during it, its message was lost
                  for good, or the node was fenced. A kind with a rollback rolls back through the nodes that are
                  alive; the others end ``failed`` with the reason.
    ``cancel_ops`` ops that end a job cancelled while still queued (it never ran), instead of the default
                  (VM marker released, ``end_ops``).
    ``engine``    a parent job driven by passes (``pvc_tasks.engine``) rather than steps: it is re-driven by
                  publishing a pass, and a worker restart resumes it instead of failing it.
    ``stuck``     what a step of this kind whose lease lapsed (``pvc_tasks.leases``: no progress, its thread stuck
                  in a hypervisor call) leads to. ``fail``: the job ends as ``orphaned`` says, and what the call
                  did is recorded when it returns. ``restart``: the worker exits to be restarted, so the hung call
                  dies with its process, and the restarted worker's reconcile rolls the job back from what each
                  hypervisor says: for migrations, whose hypervisor operation can still complete while a rollback
                  beside it runs (a VM left running unrecorded on the target, or on two nodes).
    ``bound``     seconds after its creation past which an unfinished job of this kind counts as stuck (reported
                  as the cluster fault ``jobs_over_bound``; see ``pvc_tasks.backlog``), from the settings.

How a step is re-sent is the same for every kind: ``pvc_tasks.dispatch.publish(job)`` rebuilds the message from
the record (``pvc_tasks.redrive``). Every task module is imported here explicitly; nothing registers itself as a
side effect of being imported, and a kind missing from the table fails loudly (``UnknownKind``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pvc_tasks import evacuate, fencing, flush, lifecycle, migration, recovery, sriov
from pvc_tasks.config import Settings
from pvc_tasks.jobs import Job, JobStore, Op
from pvc_tasks.runner import fail_orphan

__all__ = ["KINDS", "Kind", "UnknownKind", "get"]

EndOps = Callable[[JobStore, Job], list[Op]]
Orphaned = Callable[[JobStore, Job, str], None]
Bound = Callable[[Settings], float]


class UnknownKind(LookupError):
    """A job record names a kind this code does not know (a newer cluster, or a bug): nothing guesses."""


def nothing(_store: JobStore, _job: Job) -> list[Op]:
    """No ops beyond the VM marker."""
    return []


def released(store: JobStore, job: Job) -> list[Op]:
    """A queued job cancelled: its VM marker and what its kind holds."""
    return store.release_ops(job) + get(job.kind).end_ops(store, job)


@dataclass(frozen=True)
class Kind:
    name: str
    tasks: tuple[str, ...]
    runs_on: str
    end_ops: EndOps = nothing
    orphaned: Orphaned = fail_orphan
    cancel_ops: EndOps = released
    engine: bool = False
    stuck: str = "fail"
    bound: Bound = lambda s: s.job_bound

    @property
    def first(self) -> str:
        """The task a new job of this kind starts with."""
        return self.tasks[0]


_VM_NODE = "node.<VM's node>: the VM's libvirt domain lives there"


def _waits_for_guest(s: Settings) -> float:
    return s.shutdown_timeout + s.job_bound


def _migrates(s: Settings) -> float:
    return s.shutdown_timeout + s.migration_timeout + s.job_bound


def _engine(s: Settings) -> float:
    return 12 * s.job_bound

_MIGRATION = (migration.PREPARE, migration.PERFORM, migration.FINISH, migration.CLEANUP, migration.ABORT_TARGET,
              migration.ABORT_SOURCE)

KINDS: dict[str, Kind] = {kind.name: kind for kind in [
    Kind("define", (lifecycle.define.name,), "node.<chosen node>: the domain is defined in its libvirt",
         orphaned=lifecycle.define_orphaned, cancel_ops=lifecycle.unrecorded),
    Kind("start", (lifecycle.start.name,), _VM_NODE),
    Kind("shutdown", (lifecycle.shutdown.name,), _VM_NODE, bound=_waits_for_guest),
    Kind("stop", (lifecycle.stop.name,), _VM_NODE),
    Kind("restart", (lifecycle.restart.name,), _VM_NODE, bound=_waits_for_guest),
    Kind("undefine", (lifecycle.undefine.name,), _VM_NODE),
    *(Kind(name, _MIGRATION, "node.<target> for prepare/finish/abort_target, node.<source> for perform/cleanup/"
                             "abort_source: each step on the node that owns what it touches",
           end_ops=migration.end_ops, orphaned=migration.orphaned, stuck="restart", bound=_migrates)
      for name in migration.KINDS),
    Kind("recover", (recovery.START,), "node.<target>: never the fenced node; the VM is defined and started there",
         end_ops=recovery.end_ops),
    Kind("vf_config", (sriov.CONFIGURE,), "node.<VF's node>: its NIC holds the VF"),
    *(Kind(name, (flush.TICK,), "node.<node>: the engine of a node's flush or unflush runs beside its hypervisor",
           end_ops=flush.end_ops, engine=True, bound=_engine) for name in ("flush", "unflush")),
    Kind("fence", (fencing.FENCE,), "cluster: run by the primary, whoever that is now", engine=True, bound=_engine),
    Kind("evacuate", (evacuate.EVACUATE,), "cluster: run by the primary; the evacuated node is down",
         engine=True, bound=_engine),
]}


def get(name: str) -> Kind:
    """The kind named ``name``; ``UnknownKind`` when the table has no such kind."""
    try:
        return KINDS[name]
    except KeyError:
        raise UnknownKind(f"job kind {name!r} is not in pvc_tasks.kinds.KINDS") from None
