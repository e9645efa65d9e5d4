"""Flush (drain) and unflush (ready) of a node N, as one parent job whose children are migration and lifecycle jobs.

States of N (``node.domain_state``): ready -> flush -> flushed, and flushed -> unflush -> ready. N's
``node.active_job`` names the flush or unflush job; both are set in the transaction that creates it.

Flush of N (``pvc node flush N``)
    Every VM on N leaves by a child ``migrate`` job (so ``last_node`` = N and unflush brings it back), target chosen
    when it leaves (so earlier moves count), with node priority for migration slots (``pvc_tasks.slots``). A
    running VM with no valid target is shut down (bounded; a child ``shutdown`` job) and marked autostart, with the
    reason recorded; a stopped VM with no target stays. N accepts no new VMs (placement requires ``ready``).
Unflush of N (``pvc node ready N``)
    Starts N's autostart VMs (child ``start`` jobs; autostart is then cleared) and brings back every VM whose
    last_node is N (child ``unmigrate`` jobs), within the same limits.

The engine (``pvc_tasks.engine``): a pass (``pvc.flush.tick`` on N's queue) that never waits. Each pass
recomputes what is left from ZooKeeper (VMs and their active jobs), cancels or submits children as slots allow,
records progress, and either ends the job or schedules the next pass; passes are serialised by a lease.

Cancel (``pvc node ready N`` during a flush, or ``pvc job cancel`` of the flush): queued children are cancelled,
running ones asked to stop (they finish or roll back: each VM ends on exactly one node); when none is left running,
ONE transaction ends the job ``cancelled``, sets N ready and clears its active job.
Failure: a child that fails is submitted again, at most ``flush_retries`` times (its node restarted, a connection
dropped: most failures are transient); a VM whose last try failed, or whose retry finds no target, stays on N with
the reason in ``result.stayed``; the flush goes on with the others and ends ``failed`` listing them. If N's worker
restarts, it resumes the flush (``pvc_workers.reconcile``); if it stays away, the janitor ends the flush with the
reason, and a later ``ready`` (an unflush) or flush works, since the node's active job is then ended.
"""

from __future__ import annotations

import logging
import uuid

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError

from pvc_tasks import dispatch
from pvc_tasks.app import app
from pvc_tasks.engine import collect_ended, continue_job, record_outcome, take_lease
from pvc_tasks.errors import Conflict, NotFound, PvcError, describe
from pvc_tasks.jobs import Job, JobState, JobStore, Op, Origin, commit
from pvc_tasks.state import domain_record, domain_records, node_record
from zk_schema import Schema

__all__ = ["TICK", "end_ops", "submit_node_action"]

log = logging.getLogger(__name__)

TICK = "pvc.flush.tick"


# ---- API side ---------------------------------------------------------------------------------------------------
def _noop(store: JobStore, kind: str, node: str, why: str, origin: Origin | None) -> Job:
    job = Job.new(kind, "", node, {}, stage=TICK, origin=origin)
    job.end(JobState.SUCCEEDED, "", {"noop": why})
    job.note(why)
    commit(store.zk, [store.create_op(job)])
    return job


def submit_node_action(zk: KazooClient, schema: Schema, node: str, action: str, origin: Origin | None = None) -> Job:
    """``flush`` or ``ready`` node N: the job that does it (possibly an already-running or a no-op one)."""
    from pvc_tasks.submit import cancel_job

    record = node_record(zk, schema, node)
    store = JobStore(zk, schema)
    active = store.get(record["active_job"]) if record["active_job"] else None
    if active is not None and active.terminal:
        active = None
    state = record["domain_state"]
    if action == "flush":
        if active is not None and active.kind == "flush":
            return active
        if active is not None:
            raise Conflict(f"node {node} is being made ready by job {active.id}; wait for it or cancel it",
                           code="node_busy", details={"job": active.id})
        if state == "flushed":
            return _noop(store, "flush", node, f"{node} is already flushed", origin)
    else:
        if active is not None and active.kind == "flush":
            return cancel_job(zk, schema, active.id)  # ready during a flush cancels it; N returns to ready
        if active is not None:
            return active
        if state == "ready":
            return _noop(store, "unflush", node, f"{node} is already ready", origin)
    if not record["alive"]:
        raise Conflict(f"node {node}'s worker is not running", code="node_unavailable", details={"node": node})
    kind, new_state = ("flush", "flush") if action == "flush" else ("unflush", "unflush")
    job = Job.new(kind, "", node, {}, stage=TICK, origin=origin)
    state_stat = zk.exists(schema.path("node.domain_state", node))
    active_stat = zk.exists(schema.path("node.active_job", node))
    try:
        commit(zk, [store.create_op(job),
                    ("set", schema.path("node.domain_state", node), new_state.encode(), state_stat.version),
                    ("set", schema.path("node.active_job", node), job.id.encode(), active_stat.version)])
    except BadVersionError as exc:
        raise Conflict(f"node {node} changed state at the same moment; retry", code="node_busy") from exc
    dispatch.publish(job)
    return job


# ---- the tick, on N's worker ------------------------------------------------------------------------------------
def _end_node_ops(schema: Schema, node: str, state: str) -> list[Op]:
    return [("set", schema.path("node.domain_state", node), state.encode(), -1)]  # active_job: end_ops


def _plan(zk: KazooClient, schema: Schema, job: Job) -> list[str]:
    """The VMs the job is about, fixed at its first pass (later passes then cost O(slots), not O(VMs))."""
    node = job.node
    if job.kind == "flush":
        return [v["name"] for v in domain_records(zk, schema) if v["node"] == node]
    return [v["name"] for v in domain_records(zk, schema)
            if (v["node"] == node and v.get("meta.autostart") == "true" and v["state"] != "running")
            or (v["last_node"] == node and v["node"] != node)]


def _still_concerned(job: Job, vm: dict) -> bool:
    if job.kind == "flush":
        return vm["node"] == job.node
    return (vm["node"] == job.node and vm.get("meta.autostart") == "true" and vm["state"] != "running") or \
        (vm["last_node"] == job.node and vm["node"] != job.node)


def _submit_child(zk: KazooClient, schema: Schema, job: Job, vm: dict, failed_before: str) -> tuple[str, str]:
    """Submit the next child for ``vm``: ("child", id) | ("wait", why) | ("stayed", why) | ("done", why).
    ``failed_before``: the reason of this VM's previous child, when this is a retry."""
    from pvc_tasks.migration_submit import submit_migration
    from pvc_tasks.submit import set_meta, submit_vm_action

    name = vm["name"]
    try:
        if job.kind == "unflush" and vm["node"] == job.node:
            set_meta(zk, schema, name, {"autostart": False})
            return "child", submit_vm_action(zk, schema, name, "start", parent=job.id).id
        if job.kind == "unflush":  # back to N, which is "unflush" until the job ends
            return "child", submit_migration(zk, schema, name, "unmigrate", parent=job.id, priority="node",
                                             target_states=("ready", "unflush")).id
        return "child", submit_migration(zk, schema, name, "migrate", parent=job.id, priority="node").id
    except Conflict as exc:
        if exc.code in ("migration_limit", "vm_busy", "busy"):
            return "wait", exc.message
        if failed_before:  # a retry finds no way: the VM stays, and the first failure says why
            return "stayed", f"{failed_before}; then: {exc.message}"
        if exc.code == "no_target" and job.kind == "flush":
            if vm["state"] != "running":
                return "done", f"{name} is {vm['state']} and has no target: it stays on {job.node}"
            set_meta(zk, schema, name, {"autostart": True})
            child = submit_vm_action(zk, schema, name, "shutdown", parent=job.id)
            return "child", child.id
        return "stayed", exc.message
    except PvcError as exc:
        return "stayed", exc.message


@app.task(name=TICK)
def tick(job_id: str, vm: str, node: str, periodic: bool = False) -> dict:
    """Runs on N: one pass of the flush/unflush engine (see the module docstring)."""
    from pvc_tasks.context import current

    ctx = current()
    store = ctx.jobs
    token = uuid.uuid4().hex
    job = take_lease(store, job_id, token, periodic)
    if job is None:
        return {"job": job_id, "state": "skipped"}
    try:
        return _pass(ctx, job, token)
    except Exception as exc:  # a pass that broke must not stall the job: note it, free the lease, pass again
        log.exception("flush tick of job %s failed", job_id)
        return continue_job(store, job_id, token, dict(job.result), [f"pass failed: {describe(exc)}"], "")


def _pass(ctx, job: Job, token: str) -> dict:
    from pvc_tasks.submit import cancel_job

    store, zk, schema, job_id, node = ctx.jobs, ctx.zk, ctx.schema, job.id, job.node
    result = dict(job.result)
    if "plan" not in result:
        result.update(plan=_plan(zk, schema, job), done=[], stayed={}, running={})
    running: dict[str, str] = result["running"]
    notes: list[str] = []
    collect_ended(store, result, notes, ctx.settings.flush_retries)
    if job.cancel_requested:
        for child_id in running.values():
            try:
                cancel_job(zk, schema, child_id)
            except Conflict:
                pass  # ended meanwhile
        if not running:
            store.finish(job_id, JobState.CANCELLED, "cancelled by request; VMs already moved stay where they "
                                                     "are", result, release=False, notes=notes)
            return {"job": job_id, "state": "cancelled"}
        return continue_job(store, job_id, token, result, notes, f"cancelling: waiting for {len(running)} child job(s)")
    handled = set(result["done"]) | set(result["stayed"]) | set(running)
    waiting = ""
    for name in [n for n in result["plan"] if n not in handled]:
        try:
            record = domain_record(zk, schema, name)
        except NotFound:
            result["done"].append(name)
            notes.append(f"{name} was removed meanwhile")
            continue
        if not _still_concerned(job, record):
            result["done"].append(name)
            continue
        if record["active_job"]:
            waiting = f"{name} has another job ({record['active_job']})"
            continue
        failed_before = result.get("retried", {}).get(name, {}).get("last", "")
        blocked = record_outcome(result, notes, name, *_submit_child(zk, schema, job, record, failed_before))
        if blocked:
            waiting = blocked
            if "limit" in blocked or "migrations" in blocked or "flushed" in blocked:
                break  # no slot now: the next child's end frees one
    result["total"] = len(result["plan"])
    left = len(result["plan"]) - len(result["done"]) - len(result["stayed"])
    if not running and left <= 0:
        final = "flushed" if job.kind == "flush" else "ready"
        stayed = result["stayed"]
        outcome = JobState.FAILED if stayed else JobState.SUCCEEDED
        reason = ("VMs stayed on " + node + ": " + "; ".join(f"{k}: {v}" for k, v in sorted(stayed.items()))
                  if stayed else "")
        store.finish(job_id, outcome, reason, result, ops=lambda _j: _end_node_ops(schema, node, final),
                     release=False, notes=notes)
        return {"job": job_id, "state": str(outcome)}
    return continue_job(store, job_id, token, result, notes, waiting)


def end_ops(store: JobStore, job: Job) -> list[Op]:
    """Whoever ends a flush or unflush (its tick, a cancel, the janitor) clears the node's active job; a cancelled
    one also returns the node to ready (a failed one leaves its state: a later ready or flush takes over)."""
    path = store.schema.path("node.active_job", job.node)
    data, stat = store.zk.get(path)
    if data.decode() != job.id:
        return []
    ops: list[Op] = [("set", path, b"", stat.version)]
    if job.state == JobState.CANCELLED:
        ops.append(("set", store.schema.path("node.domain_state", job.node), b"ready", -1))
    return ops

