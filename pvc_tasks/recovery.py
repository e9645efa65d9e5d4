"""Recovery of a fenced node's VM on another node: one job on the TARGET's queue (never the dead node's).

The fence job (``pvc_tasks.fencing``) submits one ``recover`` job per VM that ran on the dead node X, only after X
was seen powered off (or, after a failed fence, only as its policy allows); an evacuation (``pvc_tasks.evacuate``)
one per VM on X, defining without starting those that were not running:

    fence job   choose T as for a migration (the VM's selector, node_limit, fit; X excluded); ONE transaction:
                recover job (a child of the fence job) + VM marker (version-checked) + reservation on T
                                                                                     -> pvc.recover.start @T
                (``submit_recoveries``: 16 VMs at a time from one read of the nodes, in one transaction)
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
import json
import logging
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError

from pvc_tasks import defaults, dispatch, placement, selector, vfs
from pvc_tasks.context import HypervisorError
from pvc_tasks.errors import Conflict, NotFound
from pvc_tasks.jobs import Job, JobStore, commit
from pvc_tasks.runner import JobFailed, JobRun, job_task
from pvc_tasks.state import domain_record, free_vm, node_records, read_keys
from zk_schema import Schema

__all__ = ["START", "end_ops", "load_hook", "submit_recoveries", "submit_recovery"]

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
        job = _recover_job(vm_name, target, dead, parent, start, where.job_params())
        try:
            commit(zk, [*store.create_ops(job), ("set", marker_path, job.id.encode(), marker_stat.version),
                        placement.reserve_op(schema, target, where.reserved, where.version, job.id,
                                             int(vm["memory"] or 0), int(vm["vcpus"] or 0),
                                             list(where.vf_map.values())), *where.checks])
        except BadVersionError:
            continue  # the marker or T's reservations changed: decide again
        dispatch.publish(job)
        return job
    raise Conflict(f"VM {vm_name}: placement kept racing; retried 10 times", code="busy")


def _recover_job(vm: str, target: str, dead: str, parent: str, start: bool, params: dict | None = None) -> Job:
    job = Job.new("recover", vm, target, {"dead": dead, "start": start, **(params or {})}, parent=parent, stage=START)
    job.steps = 3
    return job


#: What placing a recovery reads of each VM (its XML only to see whether it may use VFs).
_KEYS = ("node", "xml", "memory", "vcpus", "meta.node_selector", "meta.node_limit")
#: What it reads of each node besides its reservations, which it reads with their version.
_NODE_KEYS = tuple(k for k in selector.KEYS if k != "reserved")


def submit_recoveries(zk: KazooClient, schema: Schema, vms: list[str], dead: str, parent: str,
                      start: Collection[str], deadline: float = float("inf")) -> dict[str, Job | Exception]:
    """``submit_recovery`` for many VMs at once (a fence's whole plan), ``start`` naming those to start: each batch
    of ``RECOVERY_BATCH`` VMs is placed from ONE read of the nodes, its reservations counted as they are made, and
    committed in ONE transaction (jobs, markers, one version-checked reservation write per target); a batch that
    lost a race is decided again; its messages are published beside the next batch's reads (a publish is a broker
    round trip). A VM with SR-IOV VFs takes the one-by-one path (its VFs are picked per target). No batch starts
    after ``deadline`` (monotonic): the VMs left out are absent from the answer.
    Per VM: its job, or why not (``NotFound``, ``Conflict`` as from ``submit_recovery``)."""
    out: dict[str, Job | Exception] = {}
    with ThreadPoolExecutor(4, thread_name_prefix="recovery-publish") as publisher:
        for first in range(0, len(vms), defaults.RECOVERY_BATCH):
            if time.monotonic() > deadline:
                break
            batch = vms[first:first + defaults.RECOVERY_BATCH]
            for _attempt in range(10):
                try:
                    decided, batched = _batch(zk, schema, batch, dead, parent, start)
                except BadVersionError:
                    continue  # a marker or a target's reservations changed: decide the batch again
                out.update(decided)
                for job in batched:
                    publisher.submit(dispatch.publish, job)
                break
            else:
                out.update({name: Conflict(f"VM {name}: placement kept racing; retried 10 times", code="busy")
                            for name in batch})
    return out


def _batch(zk: KazooClient, schema: Schema, batch: list[str], dead: str, parent: str,
           start: Collection[str]) -> tuple[dict[str, Job | Exception], list[Job]]:
    """The batch's outcomes, and the jobs it created in its transaction (still to publish)."""
    store, out = JobStore(zk, schema), {}
    markers = [zk.get_async(schema.path("domain.active_job", name)) for name in batch]
    records = read_keys(zk, schema, "domain", [(name,) for name in batch], _KEYS)
    nodes = {n["name"]: n for n in node_records(zk, schema, _NODE_KEYS)}
    pending = {name: zk.get_async(schema.path("node.reserved", name)) for name in nodes}
    reserved, versions = {}, {}
    for name, result in pending.items():  # the reservations the selector counts are the ones the commit checks
        data, stat = result.get()
        reserved[name], versions[name] = json.loads(data or b"{}"), stat.version
        nodes[name]["reserved"] = json.dumps(reserved[name])
    default_method = zk.get(schema.path("base.config.migration_selector"))[0].decode()
    ops, jobs = [], []
    for name, record, marker_read in zip(batch, records, markers):
        marker, marker_stat = marker_read.get() if record is not None else (b"", None)
        vm = dict(record or {}, name=name)
        if record is None:
            out[name] = NotFound(f"no VM {name!r}", code="vm_not_found")
        elif vm["node"] != dead:
            out[name] = Conflict(f"VM {name} is no longer on {dead}", code="moved")
        elif marker:
            out[name] = Conflict(f"VM {name} already has an active job {marker.decode()}", code="vm_busy")
        elif vfs.vm_uses(zk, schema, dead, vm["xml"]):
            out[name] = _one(zk, schema, name, dead, parent, name in start)
        elif (target := selector.select(nodes.values(), method := vm["meta.node_selector"] or default_method,
                                        int(vm["memory"] or 0), placement.node_limit(vm), exclude=[dead])) is None:
            out[name] = placement.no_target(vm, method)
        else:
            job = _recover_job(name, target, dead, parent, name in start)
            reserved[target] = placement.with_reservation(reserved[target], job.id, int(vm["memory"] or 0),
                                                          int(vm["vcpus"] or 0))
            nodes[target]["reserved"] = json.dumps(reserved[target])
            ops += [*store.create_ops(job), ("set", schema.path("domain.active_job", name), job.id.encode(),
                                           marker_stat.version)]
            jobs.append(job)
    if jobs:
        commit(zk, ops + [("set", schema.path("node.reserved", node), json.dumps(reserved[node], sort_keys=True)
                           .encode(), versions[node]) for node in sorted({job.node for job in jobs})])
    out.update({job.vm: job for job in jobs})
    return out, jobs


def _one(zk: KazooClient, schema: Schema, name: str, dead: str, parent: str, start: bool) -> Job | Exception:
    try:
        return submit_recovery(zk, schema, name, dead, parent, start=start)
    except (Conflict, NotFound) as exc:
        return exc


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
            run.hv.define(params.get("target_xml") or record["xml"], vm)  # with this node's VFs, if it uses any
        if params.get("start", True):
            run.phase("start", 3, 3, f"starting {vm} on {node} (was on fenced node {dead})")
            if run.hv.state(vm) != "running":
                run.hv.start(vm)
    except HypervisorError as exc:
        if run.hv.state(vm) not in ("missing", "running"):
            run.hv.undefine(vm)
        raise JobFailed(f"recovery of {vm} on {node} failed: {exc.as_reason(node)}") from exc
    run.on_success.update(node=node, last_node=dead, failed_reason="")
    run.success_ops = vfs.commit_ops(run.ctx.schema, vm, dead, node, params)
    return {"node": node, "from": dead}


def end_ops(store: JobStore, job: Job) -> list:
    """Whoever ends a recovery gives back its reservation on the target."""
    return placement.release_op(store.zk, store.schema, job.node, job.id)
