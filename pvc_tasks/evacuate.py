"""Fencing and evacuating a node by hand: ``pvc node fence N`` and ``pvc node evacuate N``.

Both are for a node whose worker is ABSENT (no presence): the VMs of a node whose worker runs move live with
``pvc node flush``, and nothing here may power off, or take the VMs of, a node that is running them.

    fence N      a ``fence`` job (``pvc_tasks.fencing``) that the operator asked for: IPMI power off, verify, power
                 on, then the fencing policies for the VMs that ran on N, exactly as after the monitor's
                 declaration, in maintenance mode too (the operator asked). For the nodes the monitor does not
                 fence: a node that died in maintenance mode or in a storm, or a failed fence to try again.
    evacuate N   an ``evacuate`` job (task ``pvc.cluster.evacuate``, run by the primary, passes of the fencing
                 engine without the power cycle): every VM recorded on N gets one ``recover`` job on another node
                 (same placement, ``node_limit``, fit, SR-IOV and storage-lock hook as after a fence). Those that
                 ran (running, paused, marked failed by a fence, stopped with autostart after one) are started
                 there, the others only defined. Allowed only when N's last fence succeeded, or when the operator
                 states that N is powered off (``confirm_powered_off``): a VM must never run twice, and only a
                 fence or a person can know that N runs nothing. Who said so is recorded in the job
                 (``params.off_by``, ``requested_by``) and in N's fence record.

Creation is ONE transaction, version-checked against N's ``daemon_state`` and fence record as read: the job, N
``dead`` (a worker that starts on N later starts no VM and destroys its copies of VMs now placed elsewhere,
``pvc_workers.reconcile``) and N's fence record naming the job. Of racing requests, and of a request racing the
monitor's own declaration, exactly one creates a job; the others get 409 ``node_busy`` naming it.
"""

from __future__ import annotations

import json
import time

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NoNodeError

from pvc_tasks import dispatch, fencing
from pvc_tasks.app import app
from pvc_tasks.errors import Conflict, NotFound
from pvc_tasks.jobs import Job, JobStore, Origin, commit
from pvc_tasks.state import fence_record, node_alive
from zk_schema import Schema

__all__ = ["EVACUATE", "submit_evacuate", "submit_fence"]

EVACUATE = "pvc.cluster.evacuate"


@app.task(name=EVACUATE)
def tick(job_id: str, vm: str, node: str, periodic: bool = False) -> dict:
    """Runs on the primary: one pass of an evacuate job (the fencing engine, without the power cycle)."""
    return fencing.run_pass(job_id, periodic)


def submit_fence(zk: KazooClient, schema: Schema, node: str, origin: Origin | None = None) -> Job:
    """Fence ``node`` now (its worker must be absent); the fence job."""
    who = (origin.requested_by if origin else "") or "an operator"
    return _submit(zk, schema, node, "fence", fencing.FENCE,
                   {"why": f"fenced by hand by {who}", "manual": True}, "fencing", origin)


def submit_evacuate(zk: KazooClient, schema: Schema, node: str, confirm_powered_off: bool = False,
                    origin: Origin | None = None) -> Job:
    """Recover every VM of ``node`` elsewhere (its worker must be absent, and it fenced or said to be off)."""
    who = (origin.requested_by if origin else "") or "an operator"
    off_by = f"{who} confirmed that it is powered off" if confirm_powered_off else ""
    return _submit(zk, schema, node, "evacuate", EVACUATE, {"off_by": off_by}, "evacuating", origin)


def _submit(zk: KazooClient, schema: Schema, node: str, kind: str, stage: str, params: dict, record_state: str,
            origin: Origin | None) -> Job:
    store = JobStore(zk, schema)
    state_path, fence_path = schema.path("node.daemon_state", node), schema.path("node.fence", node)
    for _attempt in range(10):
        try:
            state, state_stat = zk.get(state_path)
            fence_data, fence_stat = zk.get(fence_path)
        except NoNodeError as exc:
            raise NotFound(f"no node {node!r}", code="node_not_found") from exc
        if node_alive(zk, schema, node):
            raise Conflict(f"node {node}'s worker is running: {kind} is for a node that is down; move its VMs "
                           f"with `pvc node flush {node}`", code="node_present", details={"node": node})
        record = fence_record(fence_data)
        if record.get("job"):
            try:
                active = store.get(record["job"])
            except NotFound:
                active = None
            if active is not None and not active.terminal:
                raise Conflict(f"node {node} already has {active.kind} job {active.id} ({active.phase}); wait for "
                               f"it, or follow it with `pvc job watch {active.id}`", code="node_busy",
                               details={"job": active.id})
        job_params = dict(params, target=node)
        if kind == "evacuate" and not params["off_by"]:
            # Fenced since its worker last ran: a node that came back after its fence is "run" or "stop" again.
            if record.get("state") != "fenced" or state != b"dead":
                last = f"its last fence: {record['state']}" if record.get("state") else "it was never fenced"
                raise Conflict(f"node {node} is not known to be powered off ({last}): fence it (`pvc node fence "
                               f"{node}`), or, if you know that it is off, evacuate with --confirm-powered-off",
                               code="not_fenced", details={"node": node})
            job_params["off_by"] = f"fence job {record['job']} confirmed it powered off"
        job = Job.new(kind, "", "", job_params, stage=stage, origin=origin)
        job.steps = 3
        new_record = {"job": job.id, "state": record_state, "since": time.time(),
                      "reason": job_params.get("why") or job_params["off_by"]}
        try:
            commit(zk, [*store.create_ops(job), ("set", state_path, b"dead", state_stat.version),
                        ("set", fence_path, json.dumps(new_record).encode(), fence_stat.version)])
        except BadVersionError:
            continue  # the monitor declared it, or another request won: decide again on what is there now
        dispatch.publish(job)
        return job
    raise Conflict(f"node {node}: requests kept racing; retry", code="node_busy")

