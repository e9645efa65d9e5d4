"""Reconciling a node with ZooKeeper when its worker starts: ZooKeeper says WHAT lives here, libvirt says HOW.

VMs (``reconcile_vms``)
    * recorded on this node but unknown to libvirt (always so after a restart on the test driver, whose state
      lives in the worker process; on a real node, a domain someone undefined by hand): defined again from the
      XML in ZooKeeper, and started when ZooKeeper last recorded it running;
    * known to both: ZooKeeper's state is set to what libvirt reports;
    * known only to libvirt: left alone and logged as foreign (pvc does not adopt domains it did not define);
    * known to libvirt but recorded on ANOTHER node (this node was fenced and its VMs recovered elsewhere): this
      stale copy is destroyed if it runs (ZooKeeper is the truth; a VM never runs twice) and undefined;
    * recorded in state ``defining``, or with an active job that may have touched it here (a step of this node
      that had started, or a step on another node): left to the job reconciler below. A VM whose job waits for a
      step of THIS node that has not started is restored like the others: nothing touched it here yet, and a
      node that restarted under a queued migration must not hand over a VM that lost its running state to the
      restart (a flush then "moved" it stopped);
    * recorded ``failed`` (e.g. a failed fence marked it so): defined, never started.

A node returning after it was declared dead (``returning``) starts NOTHING: the fence job decides what happens
to each of its VMs (recovered elsewhere, or marked failed), and a VM must never run twice. The fence powers the
node on before it has recovered every VM, so a VM still recorded here at start-up is defined again and committed
on another node later: its janitor runs ``remove_stale_copies`` at every pass until no fence, evacuation or
recovery of the node is left, then once more (``pvc_workers.janitor``).

Jobs (``reconcile_jobs``), each job whose current step is on this node's queue
    * its step had started (``stage_taken``): the previous worker died during it, so the job's kind ends it or
      rolls it back with that reason (``orphaned`` in ``pvc_tasks.kinds``; a ``define`` is removed, a migration
      rolls back);
    * its step had not started: its message is published again from the record (``pvc_tasks.dispatch``). A message
      still in the broker and this copy cannot both run it: the step takes its stage with a compare-and-set first,
      so correctness never depends on the broker's redelivery;
    * an engine job (flush, unflush): its lease is freed and a pass is sent (``pvc_tasks.engine.resume_passes``).
"""

from __future__ import annotations

import logging

from pvc_tasks import dispatch, kinds
from pvc_tasks.context import HypervisorError, NodeContext
from pvc_tasks.engine import resume_passes
from pvc_tasks.errors import NotFound
from pvc_tasks.jobs import commit, orphan
from pvc_tasks.state import domain_records, read_keys

__all__ = ["reconcile_jobs", "reconcile_vms", "remove_stale_copies"]

log = logging.getLogger(__name__)


def reconcile_vms(ctx: NodeContext, returning: bool = False) -> dict[str, int]:
    """Bring libvirt and ZooKeeper into agreement for this node's VMs; returns counts of what was done."""
    hv, schema, zk = ctx.hypervisor, ctx.schema, ctx.zk
    live = hv.domains()
    counts = {"redefined": 0, "restarted": 0, "updated": 0, "foreign": 0, "stale_removed": 0}
    records = domain_records(zk, schema)
    mine = [r for r in records if r["node"] == ctx.node]
    # A VM with an active job may be mid-migration to or from here: that job's rollback decides, not us.
    elsewhere = {r["name"]: r["node"] for r in records if r["node"] != ctx.node and not r["active_job"]}
    counts["stale_removed"] = _remove_stale(ctx, live, elsewhere)
    for record in mine:
        vm = record["name"]
        if record["state"] == "defining" or _held(ctx, record["active_job"]):
            continue
        if vm not in live:
            try:
                hv.define(record["xml"], vm)
                counts["redefined"] += 1
                if record["state"] == "running" and not returning:
                    hv.start(vm)
                    counts["restarted"] += 1
            except HypervisorError as exc:
                log.error("could not restore VM %s on %s: %s", vm, ctx.node, exc)
                zk.set(schema.path("domain.failed_reason", vm),
                       f"restore on worker start failed: {exc.as_reason(ctx.node)}".encode())
        observed = hv.state(vm)
        ops = []
        if observed not in ("missing", record["state"]) and not (record["state"] == "failed" and observed == "stopped"):
            ops.append(("set", schema.path("domain.state", vm), observed.encode(), -1))
        if observed == "running" and record["failed_reason"]:
            # It runs: whatever failed before (a restore at an earlier start, a fence) is no longer its state.
            ops.append(("set", schema.path("domain.failed_reason", vm), b"", -1))
        if ops:
            commit(zk, ops)
            counts["updated"] += 1
    counts["foreign"] = len(set(live) - {r["name"] for r in mine} - set(elsewhere))
    if counts["foreign"]:
        log.warning("%d libvirt domain(s) on %s are not managed by pvc", counts["foreign"], ctx.node)
    log.info("reconciled VMs of %s: %s", ctx.node, counts)
    return counts


def _remove_stale(ctx: NodeContext, live: dict, elsewhere: dict[str, str]) -> int:
    """Destroy (if it runs) and undefine each local copy of a VM that ZooKeeper places on another node."""
    removed = 0
    for vm in set(live) & set(elsewhere):
        if live[vm].state == "running":
            log.error("VM %s runs here but ZooKeeper places it on %s: destroying this copy", vm, elsewhere[vm])
        try:
            if live[vm].state != "stopped":
                ctx.hypervisor.destroy(vm)
            ctx.hypervisor.undefine(vm)
            removed += 1
        except HypervisorError as exc:
            log.error("could not remove the stale copy of %s on %s: %s", vm, ctx.node, exc)
    return removed


def remove_stale_copies(ctx: NodeContext) -> int:
    """Again after start-up, on a node returning from being declared dead, while its VMs are being recovered
    elsewhere: a VM still recorded here at start-up was defined again then, and its recovery commits it on
    another node later. Reads only the records of the VMs this node's libvirt holds."""
    live = ctx.hypervisor.domains()
    records = read_keys(ctx.zk, ctx.schema, "domain", [(vm,) for vm in live], ["node", "active_job"])
    elsewhere = {vm: r["node"] for vm, r in zip(live, records)
                 if r is not None and r["node"] not in ("", ctx.node) and not r["active_job"]}
    removed = _remove_stale(ctx, live, elsewhere)
    if removed:
        log.warning("removed %d stale copies of VMs recovered elsewhere from %s", removed, ctx.node)
    return removed


def _held(ctx: NodeContext, job_id: str) -> bool:
    """The VM's active job decides what happens to it here: it is not waiting, untaken, for a step of this node."""
    if not job_id:
        return False
    try:
        job = ctx.jobs.get(job_id)
    except NotFound:
        return False  # a marker whose job was pruned: nothing holds the VM
    return not job.terminal and not (job.node == ctx.node and job.stage_taken != job.stage)


def reconcile_jobs(ctx: NodeContext) -> dict[str, int]:
    """End or roll back this node's steps that died with the previous worker; re-send the ones not started."""
    counts = {"orphaned": 0, "resent": 0, "resumed": 0}
    for job in ctx.jobs.unfinished():
        if job.node != ctx.node or job.terminal:
            continue
        if kinds.get(job.kind).engine:
            resume_passes(ctx.jobs, job)
            counts["resumed"] += 1
        elif job.stage_taken == job.stage:
            orphan(ctx.jobs, job, f"the worker of node {ctx.node} restarted during step {job.stage} (phase "
                                  f"{job.phase}); the step did not finish")
            counts["orphaned"] += 1
        else:
            dispatch.publish(job)
            counts["resent"] += 1
    log.info("reconciled jobs of %s: %s", ctx.node, counts)
    return counts
