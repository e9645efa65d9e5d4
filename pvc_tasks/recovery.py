"""Recovery of a fenced node's VM on another node: one job on the TARGET's queue (never the dead node's).

The fence job (``pvc_tasks.fencing``) submits one ``recover`` job per VM that ran on the dead node X, only after X
was seen powered off (or, after a failed fence, only as its policy allows); an evacuation (``pvc_tasks.evacuate``)
one per VM on X, defining without starting those that were not running:

    fence job   choose T as for a migration (the VM's selector, node_limit, fit; X excluded); ONE transaction:
                recover job (a child of the fence job) + VM marker (version-checked) + reservation on T
                                                                                     -> pvc.recover.start @T
    start  @T   claim; run the storage-lock hook (e.g. remove X's Ceph RBD locks on the VM's disks, see
                docs/fencing.md); define the VM's XML; start it; ONE transaction: VM node=T, last_node=X (so
                ``pvc node ready X`` brings it back), state, T's reservation released, T's figures, job
                succeeded, marker released. A VM with SR-IOV VFs gets free VFs of the same PFs on T (T must
                have them to be chosen, see pvc_tasks.vfs); the same transaction rewrites its XML, marks them
                used and releases X's.

Failure (the hook or the start fails): T's copy is removed and the VM stays recorded on X in state ``failed`` with
the reason; the job fails with it. Recovery is not a migration: it takes no migration slot (X is gone; its VMs are
down until they run again), but it does reserve memory on T, so parallel recoveries never overfill a node.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError

from pvc_tasks import dispatch, placement, vfs
from pvc_tasks.context import HypervisorError
from pvc_tasks.errors import Conflict
from pvc_tasks.jobs import Job, JobStore, commit
from pvc_tasks.runner import JobFailed, JobRun, job_task
from pvc_tasks.state import domain_record, free_vm
from zk_schema import Schema

__all__ = ["START", "end_ops", "load_hook", "submit_recovery"]

log = logging.getLogger(__name__)

START = "pvc.recover.start"


def load_hook(spec: str) -> Callable[[str, str, str], None]:
    """The storage-lock hook named ``module:function`` (called as ``hook(vm, xml, dead_node)``); a no-op when
    ``spec`` is empty. A hook that raises stops the recovery of that VM: better a VM down than two writers."""
    if not spec:
        return lambda vm, xml, dead_node: None
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise JobFailed(f"storage lock hook {spec!r} cannot be loaded: {exc}") from exc


def submit_recovery(zk: KazooClient, schema: Schema, vm_name: str, dead: str, parent: str,
                    start: bool = True) -> Job:
    """Create the recover job of ``vm_name`` (which ran on the dead node) on a chosen target and send it; with
    ``start`` False (an evacuated VM that was not running) it is only defined there. ``Conflict``: no target
    (code ``no_target``) or the VM got another job (``vm_busy``)."""
    store = JobStore(zk, schema)
    for _attempt in range(10):
        vm, marker_path, marker_stat = free_vm(zk, schema, vm_name)
        if vm["node"] != dead:
            raise Conflict(f"VM {vm_name} is no longer on {dead}", code="moved")
        where = vfs.place(zk, schema, vm, vfs.vm_uses(zk, schema, dead, vm["xml"]))
        target = where.node
        job = Job.new("recover", vm_name, target, {"dead": dead, "start": start, **where.job_params()},
                      parent=parent, stage=START)
        job.steps = 3
        try:
            commit(zk, [store.create_op(job), ("set", marker_path, job.id.encode(), marker_stat.version),
                        placement.reserve_op(schema, target, where.reserved, where.version, job.id,
                                             int(vm["memory"] or 0), int(vm["vcpus"] or 0),
                                             list(where.vf_map.values())), *where.checks])
        except BadVersionError:
            continue  # the marker or T's reservations changed: decide again
        dispatch.publish(job)
        return job
    raise Conflict(f"VM {vm_name}: placement kept racing; retried 10 times", code="busy")


@job_task(START)
def start(run: JobRun, vm: str, node: str, **_params) -> dict:
    """Runs on the target: storage locks, define, start, and the commit of the VM on this node."""
    dead = run.job.params["dead"]
    record = domain_record(run.ctx.zk, run.ctx.schema, vm)
    if record["node"] != dead:
        raise JobFailed(f"VM {vm} is no longer recorded on {dead} (now {record['node']}); nothing recovered")
    run.on_failure = {"state": "failed"}
    run.phase("storage locks", 1, 3, f"releasing {dead}'s storage locks on {vm}'s disks")
    try:
        load_hook(run.ctx.settings.storage_lock_hook)(vm, record["xml"], dead)
    except JobFailed:
        raise
    except Exception as exc:
        raise JobFailed(f"storage lock hook failed for {vm}: {exc}; not started, so it never has two writers") from exc
    run.phase("define", 2, 3, f"defining {vm} on {node}")
    params = run.job.params
    try:
        if run.hv.state(vm) == "missing":
            run.hv.define(params.get("target_xml") or record["xml"])  # with this node's VFs, if it uses any
        if params.get("start", True):
            run.phase("start", 3, 3, f"starting {vm} on {node} (was on fenced node {dead})")
            if run.hv.state(vm) != "running":
                run.hv.start(vm)
    except HypervisorError as exc:
        if run.hv.state(vm) not in ("missing", "running"):
            run.hv.undefine(vm)
        raise JobFailed(f"recovery of {vm} on {node} failed: {exc}") from exc
    run.on_success.update(node=node, last_node=dead, failed_reason="")
    run.success_ops = vfs.commit_ops(run.ctx.schema, vm, dead, node, params)
    return {"node": node, "from": dead}


def end_ops(store: JobStore, job: Job) -> list:
    """Whoever ends a recovery gives back its reservation on the target."""
    return placement.release_op(store.zk, store.schema, job.node, job.id)
