"""Flush (drain) and unflush (ready) of a node N, as one parent job whose children are migration and lifecycle jobs.

States of N (``node.domain_state``): ready -> flush -> flushed, and flushed -> unflush -> ready. ``flush`` and
``unflush`` exist only while their job lives: N's ``node.active_job`` names it, both set in the transaction that
creates it, and whoever ends it writes N's next state in the ending transaction (``end_ops``): ``flushed`` when a
flush succeeded (then no VM runs on N), else ``ready`` with the node fault ``flush`` saying what happened and what
to do next.

Request (``submit_node_action``): decided on N's state and active job as read with their versions, which the
creating transaction checks, so a burst of requests for N makes one job. A flush is refused with 409
``insufficient_capacity`` when N's running VMs would not fit elsewhere (``pvc_tasks.capacity``), unless
``allow_shutdown``.
Flush of N (``pvc node flush N``)
    Every VM on N leaves by a child ``migrate`` job (forced: a VM already away from its home keeps it; others get
    N), in ``capacity.flush_order``, target chosen when it leaves (so earlier moves count), with node priority for
    migration slots (``pvc_tasks.slots``). A running VM with no valid target is shut down (a child ``shutdown``
    job) and marked autostart only when the flush allows shutdowns; otherwise it stays running on N and the flush
    ends failed. A stopped VM with no target stays. Before ending, VMs that reached N meanwhile join the plan.
Unflush of N (``pvc node ready N``)
    Starts N's autostart VMs (child ``start`` jobs, which clear autostart only when they succeed) and brings back
    every VM whose last_node is N (child ``unmigrate`` jobs), within the same limits.

The engine (``pvc_tasks.engine``): a pass (``pvc.flush.tick`` on N's queue) that never waits. Each pass
recomputes what is left from ZooKeeper (VMs and their active jobs), cancels or submits children as slots allow
(deciding on the refusals' error codes, never their text), records progress, and either ends the job or schedules
the next pass; passes are serialised by a lease.

Cancel (``pvc node ready N`` during a flush, or ``pvc job cancel`` of the flush): queued children are cancelled,
running ones asked to stop (they finish or roll back: each VM ends on exactly one node); when none is left running,
ONE transaction ends the job ``cancelled`` and makes N ready (with the fault).
Failure: a child that fails is submitted again, at most ``flush_retries`` times (its node restarted, a connection
dropped: most failures are transient); a VM whose last try failed, or whose retry finds no target, stays on N with
the reason in ``result.stayed``; the flush goes on with the others and ends ``failed`` listing them. If N's worker
restarts, it resumes the flush (``pvc_workers.reconcile``); if it stays away, the janitor ends the flush with the
reason, and N is ready again (with the fault) for a later ``ready`` or flush.
"""

from __future__ import annotations

import logging
import time
import uuid

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NoNodeError

from pvc_tasks import capacity, dispatch, placement, slots
from pvc_tasks.app import app
from pvc_tasks.engine import collect_ended, continue_job, pass_deadline, record_outcome, take_lease
from pvc_tasks.errors import Conflict, NotFound, PvcError, describe
from pvc_tasks.faults import fault_ops
from pvc_tasks.jobs import Job, JobState, JobStore, Op, Origin, commit
from pvc_tasks.state import domain_record, domain_records_matching, node_alive
from zk_schema import Schema

__all__ = ["FAULT", "TICK", "end_ops", "submit_node_action"]

log = logging.getLogger(__name__)

TICK = "pvc.flush.tick"
#: The node fault a flush or unflush that did not succeed leaves (cleared when the next one starts or succeeds).
FAULT = "flush"


# ---- API side ---------------------------------------------------------------------------------------------------
def _noop(store: JobStore, kind: str, node: str, why: str, origin: Origin | None, ops: list[Op]) -> Job:
    job = Job.new(kind, "", node, {}, stage=TICK, origin=origin)
    job.end(JobState.SUCCEEDED, "", {"noop": why})
    job.note(why)
    commit(store.zk, [*store.create_ops(job), *ops])
    return job


def _running_on(zk: KazooClient, schema: Schema, node: str) -> list[str]:
    return [v["name"] for v in _touching(zk, schema, "flush", node) if v["state"] in capacity.ACTIVE]


def _touching(zk: KazooClient, schema: Schema, kind: str, node: str) -> list[dict]:
    """The VMs on ``node`` (and, for an unflush, those whose home it is), with the keys a flush decides on."""
    if kind == "flush":
        return domain_records_matching(zk, schema, ("node",), lambda r: r["node"] == node, capacity.PLACEMENT_KEYS)
    return domain_records_matching(zk, schema, ("node", "last_node"), lambda r: node in (r["node"], r["last_node"]),
                                   capacity.PLACEMENT_KEYS)


def submit_node_action(zk: KazooClient, schema: Schema, node: str, action: str, origin: Origin | None = None,
                       allow_shutdown: bool = False) -> Job:
    """``flush`` or ``ready`` node N: the job that does it (possibly an already-running or a no-op one).

    Every decision is made on the node's state and active job as read WITH their versions, and the transaction that
    creates the job checks those versions (and, for a flush, every other node's state, see ``pvc_tasks.capacity``):
    of a burst of requests for N exactly one creates a job, and the others find it and answer it."""
    for _attempt in range(10):
        try:
            return _submit_once(zk, schema, node, action, origin, allow_shutdown)
        except BadVersionError:
            continue  # another request changed a node's state between our read and our write: decide again
    raise Conflict(f"node {node}: requests kept racing; retry", code="node_busy")


def _submit_once(zk: KazooClient, schema: Schema, node: str, action: str, origin: Origin | None,
                 allow_shutdown: bool) -> Job:
    from pvc_tasks.submit import cancel_job

    state_path, active_path = schema.path("node.domain_state", node), schema.path("node.active_job", node)
    try:
        state_data, state_stat = zk.get(state_path)
        active_data, active_stat = zk.get(active_path)
    except NoNodeError as exc:
        raise NotFound(f"no node {node!r}", code="node_not_found") from exc
    store = JobStore(zk, schema)
    active = store.get(active_data.decode()) if active_data else None
    if active is not None and active.terminal:
        active = None
    state, clear_fault = state_data.decode(), fault_ops(zk, schema.path("node.faults", node), FAULT, None)
    if action == "flush":
        if active is not None and active.kind == "flush":
            return active
        if active is not None:
            raise Conflict(f"node {node} is being made ready by job {active.id}; wait for it or cancel it",
                           code="node_busy", details={"job": active.id})
        if state == "flushed" and not _running_on(zk, schema, node):
            return _noop(store, "flush", node, f"{node} is already flushed", origin, [])
    else:
        if active is not None and active.kind == "flush":
            return cancel_job(zk, schema, active.id)  # ready during a flush cancels it; N returns to ready
        if active is not None:
            return active
        if state == "ready" and not _plan(zk, schema, "unflush", node):
            # Nothing to bring back or start: the operator has seen what a failed flush left, and says ready.
            return _noop(store, "unflush", node, f"{node} is already ready", origin, clear_fault)
    if not node_alive(zk, schema, node):
        raise Conflict(f"node {node}'s worker is not running", code="node_unavailable", details={"node": node})
    checks = (capacity.guard(zk, schema, node) if action == "flush" and not allow_shutdown else [])
    kind = "flush" if action == "flush" else "unflush"
    params = {"allow_shutdown": True} if kind == "flush" and allow_shutdown else {}
    job = Job.new(kind, "", node, params, stage=TICK, origin=origin)
    commit(zk, [*store.create_ops(job), ("set", state_path, kind.encode(), state_stat.version),
                ("set", active_path, job.id.encode(), active_stat.version), *checks, *clear_fault])
    dispatch.publish(job)
    return job


# ---- the tick, on N ------------------------------------------------------------------------------------
def _concerned(kind: str, node: str, vm: dict) -> bool:
    if kind == "flush":
        return vm["node"] == node
    return (vm["node"] == node and vm.get("meta.autostart") == "true" and vm["state"] != "running") or \
        (vm["last_node"] == node and vm["node"] != node)


def _plan(zk: KazooClient, schema: Schema, kind: str, node: str) -> list[str]:
    """The VMs a flush or unflush of ``node`` is about, in the order it takes them (``capacity.flush_order``);
    fixed at the job's first pass (later passes then cost O(slots), not O(VMs))."""
    return [v["name"] for v in capacity.flush_order(_touching(zk, schema, kind, node)) if _concerned(kind, node, v)]


def _submit_child(zk: KazooClient, schema: Schema, job: Job, vm: dict, failed_before: str) -> tuple[str, str, str]:
    """Submit the next child for ``vm``: (outcome, detail, code) with outcome "child" (detail: its id), "wait",
    "stayed" or "done" (detail: why), and the refusal's error code ("" when none).
    ``failed_before``: the reason of this VM's previous child, when this is a retry."""
    from pvc_tasks.migration_submit import submit_migration
    from pvc_tasks.submit import set_meta, submit_vm_action

    name = vm["name"]
    try:
        if job.kind == "unflush" and vm["node"] == job.node:
            # autostart is cleared by the start's own end, and only when it succeeded (a failed start keeps it)
            return "child", submit_vm_action(zk, schema, name, "start", {"clear_autostart": True},
                                             parent=job.id).id, ""
        if job.kind == "unflush":  # back to N, which is "unflush" until the job ends
            return "child", submit_migration(zk, schema, name, "unmigrate", parent=job.id, priority="node",
                                             target_states=("ready", "unflush")).id, ""
        # force: a VM already away from its home keeps that home (PVC's rule), it is not refused
        return "child", submit_migration(zk, schema, name, "migrate", parent=job.id, priority="node",
                                         force=True).id, ""
    except Conflict as exc:
        if exc.code in WAIT_CODES:
            return "wait", exc.message, exc.code
        if failed_before:  # a retry finds no way: the VM stays, and the first failure says why
            return "stayed", f"{failed_before}; then: {exc.message}", exc.code
        if exc.code == "no_target" and job.kind == "flush":
            if vm["state"] not in capacity.ACTIVE:
                return "done", f"{name} is {vm['state']} and has no target: it stays on {job.node}", exc.code
            if not job.params.get("allow_shutdown"):
                return "stayed", (f"{exc.message}; left running on {job.node} (the flush was not allowed to shut "
                                  f"VMs down)"), exc.code
            set_meta(zk, schema, name, {"autostart": True})
            return "child", submit_vm_action(zk, schema, name, "shutdown", parent=job.id).id, ""
        return "stayed", exc.message, exc.code
    except PvcError as exc:
        return "stayed", exc.message, exc.code


#: The VM keys a pass decides on (``_concerned``, its active job, ``_submit_child``); the submission reads its own.
_PASS_KEYS = ("node", "state", "last_node", "meta.autostart", "active_job")

#: Refusals that mean "not now": the VM is tried again at a later pass.
WAIT_CODES = ("migration_limit", "vm_busy", "busy")


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


def _cancel_children(ctx, job: Job, result: dict, notes: list[str], token: str) -> dict:
    from pvc_tasks.submit import cancel_job

    running = result["running"]
    for child_id in running.values():
        try:
            cancel_job(ctx.zk, ctx.schema, child_id)
        except Conflict:
            pass  # ended meanwhile
    if not running:
        ctx.jobs.finish(job.id, JobState.CANCELLED, "cancelled by request; VMs already moved stay where they are",
                        result, release=False, notes=notes)
        return {"job": job.id, "state": "cancelled"}
    return continue_job(ctx.jobs, job.id, token, result, notes, f"cancelling: waiting for {len(running)} child job(s)")


def _late_arrivals(store: JobStore, job: Job, result: dict) -> tuple[list[str], str]:
    """Before a flush may call N flushed: VMs that reached N after the plan was made (a migration to N that was
    placed before the flush began), and whether one is still on its way (a reservation on N)."""
    zk, schema = store.zk, store.schema
    known = set(result["plan"])
    arrived = [name for name in _plan(zk, schema, "flush", job.node) if name not in known]
    incoming = [job_id for job_id in placement.read_reserved(zk, schema, job.node)[0] if _live(store, job_id)]
    waiting = f"{len(incoming)} migration(s) to {job.node} placed before the flush are finishing" if incoming else ""
    return arrived, waiting


def _live(store: JobStore, job_id: str) -> bool:
    """A reservation's job still runs (one that ended has given its reservation back, or the checker says so)."""
    try:
        return not store.get(job_id).terminal
    except NotFound:
        return False


def _pass(ctx, job: Job, token: str) -> dict:
    store, zk, schema, job_id, node = ctx.jobs, ctx.zk, ctx.schema, job.id, job.node
    result = dict(job.result)
    if "plan" not in result:
        result.update(plan=_plan(zk, schema, job.kind, node), done=[], stayed={}, running={})
    running: dict[str, str] = result["running"]
    notes: list[str] = []
    collect_ended(store, result, notes, ctx.settings.flush_retries)
    if job.cancel_requested:
        return _cancel_children(ctx, job, result, notes, token)
    handled = set(result["done"]) | set(result["stayed"]) | set(running)
    waiting, deadline, more = "", pass_deadline(), False
    room, binding = slots.room(zk, schema, **({"source": node} if job.kind == "flush" else {"target": node}))
    for name in [n for n in result["plan"] if n not in handled]:
        if time.monotonic() > deadline:
            more = True
            break
        try:
            record = domain_record(zk, schema, name, only=_PASS_KEYS)
        except NotFound:
            result["done"].append(name)
            notes.append(f"{name} was removed meanwhile")
            continue
        if not _concerned(job.kind, node, record):
            result["done"].append(name)
            continue
        if record["active_job"]:
            waiting = f"{name} has another job ({record['active_job']})"
            continue
        migrates = job.kind == "flush" or record["node"] != node  # an unflush starts the VMs already on N
        if migrates and not room:
            waiting = f"no migration slot: {binding} limit is reached"
            break  # the next child's end frees one
        failed_before = result.get("retried", {}).get(name, {}).get("last", "")
        outcome, detail, code = _submit_child(zk, schema, job, record, failed_before)
        record_outcome(result, notes, name, outcome, detail)
        if migrates and outcome == "child":
            room -= 1
        if outcome == "wait":
            waiting = detail
            if code == "migration_limit":
                break  # no slot now: the next child's end frees one
    result["total"] = len(result["plan"])
    left = len(result["plan"]) - len(result["done"]) - len(result["stayed"])
    if not running and left <= 0 and job.kind == "flush":
        arrived, waiting = _late_arrivals(store, job, result)
        if arrived or waiting:
            result["plan"] += arrived
            notes += [f"{name} arrived on {node} during the flush: it leaves too" for name in arrived]
            return continue_job(store, job_id, token, result, notes, waiting or "VMs arrived on the node")
    if not running and left <= 0:
        stayed = result["stayed"]
        outcome = JobState.FAILED if stayed else JobState.SUCCEEDED
        reason = ("VMs stayed on " + node + ": " + "; ".join(f"{k}: {v}" for k, v in sorted(stayed.items()))
                  if stayed else "")
        store.finish(job_id, outcome, reason, result, release=False, notes=notes)
        return {"job": job_id, "state": str(outcome)}
    return continue_job(store, job_id, token, result, notes, waiting, again=more)


def _fault(job: Job) -> str | None:
    """The node fault a flush or unflush leaves when it did not succeed: what happened, what is where, what next."""
    if job.state == JobState.SUCCEEDED:
        return None
    node, result = job.node, job.result or {}
    plan, done = result.get("plan"), set(result.get("done", []))
    left = sorted(n for n in plan or [] if n not in done)
    if job.kind == "flush":
        where = (f"still on {node}: {', '.join(left)}" if left else
                 "no VM was left behind" if plan is not None else "its VMs were not moved")
        return (f"flush job {job.id} {job.state}: {job.reason}. {where}. {node} is ready and takes VMs again; fix "
                f"the cause, then `pvc node flush {node}` again, or `pvc node ready {node}` to bring back the VMs "
                f"that left")
    return (f"unflush job {job.id} {job.state}: {job.reason}. "
            + (f"Not back or not started: {', '.join(left)}. " if left else "")
            + f"{node} is ready; `pvc node ready {node}` tries again")


def end_ops(store: JobStore, job: Job) -> list[Op]:
    """Whoever ends a flush or unflush (its tick, a cancel, the janitor) writes, with the job's end: the node's
    active job cleared; its state ``flushed`` when a flush succeeded, else ``ready`` (a node is never left
    ``flush``/``unflush`` without a live job, nor ``flushed`` with a VM still running on it); and its ``flush``
    fault, set to what went wrong and what to do next, or cleared on success."""
    schema = store.schema
    path = schema.path("node.active_job", job.node)
    data, stat = store.zk.get(path)
    if data.decode() != job.id:
        return []
    final = "flushed" if job.kind == "flush" and job.state == JobState.SUCCEEDED else "ready"
    return [("set", path, b"", stat.version), ("set", schema.path("node.domain_state", job.node), final.encode(), -1),
            *fault_ops(store.zk, schema.path("node.faults", job.node), FAULT, _fault(job))]
