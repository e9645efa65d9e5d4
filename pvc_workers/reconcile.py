"""Reconciling a node with ZooKeeper when its worker starts: ZooKeeper says WHAT lives here, libvirt says HOW.

VMs (``reconcile_vms``)
    * recorded on this node but unknown to libvirt (always so after a restart on the test driver, whose state
      lives in the worker process; on a real node, a domain someone undefined by hand): defined again from the
      XML in ZooKeeper, and started when ZooKeeper last recorded it running;
    * known to both: ZooKeeper's state is set to what libvirt reports;
    * known only to libvirt: left alone and logged as foreign (pvc does not adopt domains it did not define);
    * known to libvirt but recorded on ANOTHER node (this node was fenced and its VMs recovered elsewhere): this
      stale copy is destroyed if it runs (ZooKeeper is the truth; a VM never runs twice) and undefined;
    * recorded in state ``defining`` or with an active job: left to the job reconciler below;
    * recorded ``failed`` (e.g. a failed fence marked it so): defined, never started.

A node returning after it was declared dead (``returning``) starts NOTHING: the fence job decides what happens
to each of its VMs (recovered elsewhere, or marked failed), and a VM must never run twice.

Jobs (``reconcile_jobs``)
    * ``running`` on this node: the previous worker died during it, so it ends ``failed`` with that reason
      (a ``define`` is rolled back);
    * ``queued`` on this node: sent again. A message still in Redis and this copy cannot both run it: the task
      claims the job with a compare-and-set first, so correctness never depends on the broker's redelivery.
"""

from __future__ import annotations

import logging

from pvc_tasks.app import app
from pvc_tasks.context import HypervisorError, NodeContext
from pvc_tasks.jobs import JobState
from pvc_tasks.lifecycle import TASKS
from pvc_tasks.runner import handle_orphan
from pvc_tasks.state import domain_records

__all__ = ["reconcile_jobs", "reconcile_vms"]

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
    for vm in set(live) & set(elsewhere):
        if live[vm].state == "running":
            log.error("VM %s runs here but ZooKeeper places it on %s: destroying this copy", vm, elsewhere[vm])
        try:
            if live[vm].state != "stopped":
                hv.destroy(vm)
            hv.undefine(vm)
            counts["stale_removed"] += 1
        except HypervisorError as exc:
            log.error("could not remove the stale copy of %s on %s: %s", vm, ctx.node, exc)
    for record in mine:
        vm = record["name"]
        if record["state"] == "defining" or record["active_job"]:
            continue
        if vm not in live:
            try:
                hv.define(record["xml"])
                counts["redefined"] += 1
                if record["state"] == "running" and not returning:
                    hv.start(vm)
                    counts["restarted"] += 1
            except HypervisorError as exc:
                log.error("could not restore VM %s on %s: %s", vm, ctx.node, exc)
                zk.set(schema.path("domain.failed_reason", vm), f"restore on worker start failed: {exc}".encode())
        observed = hv.state(vm)
        if observed not in ("missing", record["state"]) and not (record["state"] == "failed" and observed == "stopped"):
            zk.set(schema.path("domain.state", vm), observed.encode())
            counts["updated"] += 1
    counts["foreign"] = len(set(live) - {r["name"] for r in mine} - set(elsewhere))
    if counts["foreign"]:
        log.warning("%d libvirt domain(s) on %s are not managed by pvc", counts["foreign"], ctx.node)
    log.info("reconciled VMs of %s: %s", ctx.node, counts)
    return counts


def reconcile_jobs(ctx: NodeContext) -> dict[str, int]:
    """Fail this node's jobs that died with the previous worker; re-send the queued ones."""
    counts = {"failed": 0, "resent": 0}
    for job in ctx.jobs.all():
        if job.node != ctx.node or job.terminal:
            continue
        if job.state == JobState.RUNNING:
            handle_orphan(ctx.jobs, job, f"the worker of node {ctx.node} restarted while the job was running "
                                         f"(phase {job.phase}); the job did not finish")
            counts["failed"] += 1
        elif job.stage:
            app.send_task(job.stage, kwargs={"job_id": job.id, "vm": job.vm, "node": job.node})
            counts["resent"] += 1
        elif job.kind in TASKS:
            TASKS[job.kind].apply_async(kwargs={"job_id": job.id, "vm": job.vm, "node": job.node, **job.params},
                                        task_id=job.id)
            counts["resent"] += 1
    log.info("reconciled jobs of %s: %s", ctx.node, counts)
    return counts
