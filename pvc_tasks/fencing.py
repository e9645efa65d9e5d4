"""Fencing a dead node X and recovering its VMs: one ``fence`` job on the cluster queue (run by the primary).

Protocol
    0. declare   the primary's monitor (``pvc_workers.monitor``) decided X is dead (keepalives missed, saving throws
                 spent, not in maintenance, no storm). ONE transaction: X's ``daemon_state`` run -> dead
                 (version-checked: X is declared dead, and fenced, once) + the fence job + X's ``fence`` record.
    1. fence     if X's worker started again since, the job is cancelled: X runs, nothing to fence; while
                 maintenance mode is on, the job waits (X was declared just before maintenance began). Then
                 IPMI power off -> verify off -> power on (``pvc_workers.ipmi``, each command bounded), under a
                 lease extended to the power cycle's bound and with the plan (the VMs that ran on X) recorded
                 first. The outcome is recorded in X's ``fence`` key (with the job's id) before anything else: a
                 pass that finds it there takes it, so a new primary resuming the job never fences twice, nor
                 takes X, powered on again meanwhile, for a node that came back.
    2. jobs      every job still queued or running on X ends (a migration rolls back through its other node, see
                 pvc_tasks.migration), with the reason "node X was fenced"; stale messages left in X's queue find
                 their jobs ended and do nothing when X returns.
    3. recover   the policy (``successful_fence`` / ``failed_fence``) decides for each VM that ran on X:
                 ``migrate``: a child ``recover`` job on its target (``pvc_tasks.recovery``); with no valid target
                 the VM stays on X stopped, with autostart set (``pvc node ready X`` starts it);
                 ``none``: the VM is marked ``failed`` with the reason and never started elsewhere.
                 After a FAILED fence, ``migrate`` applies only when X self-fences (its worker stops its VMs when cut
                 off from ZooKeeper) and X's self-fence interval has passed since its last keepalive: otherwise X
                 may still run them, and a VM must never run twice.
    4. end       when every child has ended: X's domain state becomes ``flushed`` (its VMs' ``last_node`` is X, so
                 ``pvc node ready X`` brings them back); the job succeeds, or fails listing the VMs that stayed.

The passes run through ``pvc_tasks.engine`` (a lease in the job, children's ends trigger a pass). A primary that
dies mid-way loses nothing: the next primary re-sends every unfinished cluster job at takeover (``resume``), and
each step is idempotent (the fence outcome is recorded; VM markers are compare-and-set).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError

from pvc_tasks import defaults, dispatch
from pvc_tasks.app import app
from pvc_tasks.engine import (
    collect_ended,
    continue_job,
    extend_lease,
    pass_deadline,
    record_outcome,
    resume_passes,
    take_lease,
)
from pvc_tasks.errors import NotFound, describe
from pvc_tasks.jobs import Job, JobState, JobStore, commit, orphan
from pvc_tasks.recovery import submit_recoveries
from pvc_tasks.secrets import SecretError, unseal
from pvc_tasks.state import domain_records, fence_record, keepalive_age
from zk_schema import Schema

__all__ = ["FENCE", "IN_FLIGHT", "KINDS", "declare_dead", "resume", "run_pass"]

log = logging.getLogger(__name__)

FENCE = "pvc.cluster.fence"
#: The job kinds this engine drives (a fence, and an evacuation: the same passes without the power cycle).
KINDS = ("fence", "evacuate")
#: What a fence job waiting for maintenance to end says (job ``waiting``, ``pvc job show``).
MAINTENANCE_WAIT = ("maintenance mode is on: {node} is declared dead and will be fenced when maintenance ends "
                    "(`pvc cluster maintenance off`); if its worker starts again first, nothing is fenced")


def declare_dead(zk: KazooClient, schema: Schema, node: str, why: str) -> Job | None:
    """Step 0: X run -> dead with its fence job, in one version-checked transaction; None if X is not ``run``
    any more (it came back, or another primary declared it first)."""
    path = schema.path("node.daemon_state", node)
    data, stat = zk.get(path)
    if data.decode() != "run":
        return None
    job = Job.new("fence", "", "", {"target": node, "why": why}, stage=FENCE)
    job.steps = 3
    record = {"job": job.id, "state": "fencing", "since": time.time(), "reason": why}
    try:
        commit(zk, [*JobStore(zk, schema).create_ops(job), ("set", path, b"dead", stat.version),
                    ("set", schema.path("node.fence", node), json.dumps(record).encode(), -1)])
    except BadVersionError:
        return None
    dispatch.publish(job)
    return job


def resume(store: JobStore) -> int:
    """At takeover: send every unfinished cluster job's pass (fence, evacuate) again, freeing leases of the
    previous primary."""
    count = 0
    for job in store.unfinished():
        if job.terminal or job.node or job.kind not in KINDS:
            continue
        resume_passes(store, job)
        count += 1
    return count


def _fence_step(ctx, job: Job) -> dict:
    """Step 1: IPMI power off, verify off, power on (through the worker's adapter, ``ctx.fence``)."""
    zk, schema, target = ctx.zk, ctx.schema, job.params["target"]
    started = time.time()
    hostname, username, stored = (zk.get(schema.path(f"node.ipmi.{k}", target))[0].decode()
                                  for k in ("hostname", "username", "password"))
    try:
        outcome = ctx.fence(hostname, username, unseal(stored, ctx.settings.secret_key))
    except SecretError as exc:
        outcome = {"ok": False, "reason": f"cannot read {target}'s IPMI password: {exc}", "steps": [],
                   "seconds": 0.0}
    log.warning("fence of %s: %s%s (%.1f s)", target, "confirmed" if outcome["ok"] else "FAILED",
                f": {outcome['reason']}" if outcome["reason"] else "", outcome["seconds"])
    outcome = dict(outcome, started_at=round(started, 3), finished_at=round(time.time(), 3))
    record = {"job": job.id, "state": "fenced" if outcome["ok"] else "fence-failed", "since": time.time(),
              "reason": outcome["reason"], "steps": outcome["steps"], "outcome": outcome}
    zk.set(schema.path("node.fence", target), json.dumps(record).encode())
    return outcome


def _fence_bound(ipmi_timeout: float) -> float:
    """The longest a power cycle can take (``pvc_workers.ipmi.fence``): power off, each verification after its
    settle time, power on, every command bounded by ``ipmi_timeout``."""
    return ipmi_timeout * (2 + defaults.FENCE_VERIFY_TRIES) + defaults.FENCE_SETTLE * defaults.FENCE_VERIFY_TRIES


def _recorded_fence(ctx, job: Job) -> dict | None:
    """The outcome of this job's power cycle when X's fence record holds it: a pass that fenced X and then died or
    outlived its lease (its result never reached the job) must not be taken for "X came back", nor fence again."""
    record = fence_record(ctx.zk.get(ctx.schema.path("node.fence", job.params["target"]))[0])
    if record.get("job") == job.id and record.get("state") in ("fenced", "fence-failed"):
        return record.get("outcome") or {"ok": record["state"] == "fenced", "reason": record.get("reason", ""),
                                         "steps": record.get("steps", []), "seconds": 0.0}
    return None


def _policy(ctx, target: str, fenced: dict, clock: str) -> tuple[str, str]:
    """("migrate" | "none" | "wait", why) for the VMs of ``target`` after its fence (or before an evacuation).
    ``clock``: a znode this pass has just written (its job), for ZooKeeper's "now"."""
    settings = ctx.settings
    if fenced.get("off_by"):
        return "migrate", f"{target} is powered off ({fenced['off_by']}): evacuated by hand"
    if fenced["ok"]:
        return settings.successful_fence, f"{target} was fenced (powered off)"
    why = f"fence of {target} failed ({fenced['reason']})"
    if settings.failed_fence == "none":
        return "none", why + "; policy failed_fence=none"
    self_fence = float(ctx.zk.get(ctx.schema.path("node.self_fence_after", target))[0].decode() or 0)
    age = keepalive_age(ctx.zk, ctx.schema, target, clock) or 0.0  # by ZooKeeper's clock: a skewed X cannot rush it
    if self_fence <= 0:
        return "none", why + f"; {target} does not self-fence, so it may still run its VMs"
    if age < self_fence + settings.keepalive_interval:
        return "wait", why + f"; waiting until {target}'s self-fence ({self_fence:g} s) has surely stopped its VMs"
    return "migrate", why + f"; {target} self-fenced {self_fence:g} s after losing ZooKeeper"


def _mark(zk: KazooClient, schema: Schema, vm: str, values: dict[str, str]) -> bool:
    """Write VM keys only while the VM has no active job (version-checked marker)."""
    marker = schema.path("domain.active_job", vm)
    data, stat = zk.get(marker)
    if data:
        return False
    try:
        commit(zk, [("check", marker, stat.version)]
               + [("set", schema.path(f"domain.{k}", vm), v.encode(), -1) for k, v in values.items()])
    except BadVersionError:
        return False
    return True


def _end_jobs_of(store: JobStore, target: str, before: float) -> int:
    """Step 2: end (or hand to their rollback) the jobs that were queued or running on the fenced node when it was
    declared dead; jobs created later (the node came back) are left alone. Returns how many such jobs are still
    open, counting migrations rolling back through their other node (they return to ``target`` to end)."""
    still_open = 0
    for other in store.unfinished():
        if other.terminal or other.created >= before:
            continue
        if other.node == target:
            orphan(store, other, f"node {target} was fenced; the job cannot proceed there")
            still_open += 1
        elif target in (other.params.get("source"), other.params.get("reserved_on")):
            still_open += 1
    return still_open


def _recover(ctx, job: Job, names: list[str], policy: str, why: str, start: set[str],
             deadline: float) -> dict[str, tuple[str, str]]:
    """Step 3 for the VMs ``names`` (those reached before ``deadline``), each: ("child", id) | ("done", note) |
    ("stayed", reason) | ("wait", why)."""
    zk, schema, target = ctx.zk, ctx.schema, job.params["target"]
    if policy == "wait":
        return {name: ("wait", why) for name in names}
    if policy == "none":
        out = {}
        for name in names:
            reason = f"{why}: {name} was not recovered, so that it never runs twice; start it when {target} is back"
            out[name] = (("stayed", reason) if _mark(zk, schema, name, {"state": "failed", "failed_reason": reason})
                         else ("wait", f"{name} has an active job"))
        return out
    return {name: _recovery_outcome(ctx, name, target, submitted)
            for name, submitted in submit_recoveries(zk, schema, names, target, job.id, start, deadline).items()}


def _recovery_outcome(ctx, name: str, target: str, submitted: Job | Exception) -> tuple[str, str]:
    if isinstance(submitted, Job):
        return "child", submitted.id
    if isinstance(submitted, NotFound):
        return "done", f"{name} was undefined"
    if submitted.code == "moved":
        return "done", f"{name} already left {target}"
    if submitted.code in ("vm_busy", "busy"):
        return "wait", submitted.message
    reason = f"no target for {name} ({submitted.message}); it stays stopped on {target} with autostart set"
    if _mark(ctx.zk, ctx.schema, name, {"state": "stopped", "meta.autostart": "true", "failed_reason": reason}):
        return "done", reason
    return "wait", f"{name} has an active job"


@app.task(name=FENCE)
def tick(job_id: str, vm: str, node: str, periodic: bool = False) -> dict:
    """Runs on the primary: one pass of a fence job (see the module docstring)."""
    return run_pass(job_id, periodic)


class _InFlight:
    """The cluster passes running in this process: a primary handing over waits for them, so that its successor,
    which frees their leases at takeover (``resume``), never runs a pass beside one of them (two power cycles)."""

    def __init__(self) -> None:
        self.count, self.changed = 0, threading.Condition()

    def __enter__(self) -> None:
        with self.changed:
            self.count += 1

    def __exit__(self, *_exc) -> None:
        with self.changed:
            self.count -= 1
            self.changed.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """True when no pass runs (waiting at most ``timeout`` s)."""
        with self.changed:
            return self.changed.wait_for(lambda: self.count == 0, timeout)


IN_FLIGHT = _InFlight()


def run_pass(job_id: str, periodic: bool) -> dict:
    """One pass of a fence or evacuate job (``pvc_tasks.evacuate``), under the job's lease."""
    from pvc_tasks.context import current

    ctx = current()
    token = uuid.uuid4().hex
    with IN_FLIGHT:
        job = take_lease(ctx.jobs, job_id, token, periodic)
        if job is None:
            return {"job": job_id, "state": "skipped"}
        try:
            return _pass(ctx, job, token)
        except Exception as exc:  # a pass that broke must not stall the job: note it, free the lease, pass again
            log.exception("%s pass of job %s failed", job.kind, job_id)
            return continue_job(ctx.jobs, job_id, token, dict(job.result), [f"pass failed: {describe(exc)}"], "")


def _plan(ctx, job: Job) -> dict:
    """The VMs this job takes care of, read before anything else (before a power cycle, so that X's returning
    worker is not what we read): a fence, those that ran on X; an evacuation, every VM on X, starting on their
    new node those that ran (running, paused, marked failed by a fence, or stopped with autostart after one)."""
    on_x = [v for v in domain_records(ctx.zk, ctx.schema) if v["node"] == job.params["target"]]
    if job.kind != "evacuate":
        return {"plan": [v["name"] for v in on_x if v["state"] in ("running", "paused")], "start": []}
    ran = [v["name"] for v in on_x if v["state"] in ("running", "paused", "failed")
           or (v["state"] == "stopped" and v["meta.autostart"] == "true")]
    return {"plan": [v["name"] for v in on_x if v["state"] != "defining"], "start": ran}


def _pass(ctx, job: Job, token: str) -> dict:
    store, zk, schema, target = ctx.jobs, ctx.zk, ctx.schema, job.params["target"]
    result, notes = dict(job.result), []
    if "plan" not in result:
        result.update(_plan(ctx, job), done=[], stayed={}, running={}, total=0)
    if "fence" not in result and (recorded := _recorded_fence(ctx, job)) is not None:
        result["fence"] = recorded
        notes.append(f"fence of {target}: outcome taken from its fence record (the pass that fenced it ended early)")
    if "fence" not in result:
        if zk.get(schema.path("node.daemon_state", target))[0].decode() != "dead":
            return _came_back(ctx, job, result)
        if job.kind == "evacuate":  # nothing to power off: the fence before it, or the operator, says it is off
            result["fence"] = {"ok": True, "reason": "", "steps": [], "seconds": 0.0,
                               "off_by": job.params["off_by"]}
        elif zk.get(schema.path("base.config.maintenance"))[0].decode() == "true" and not job.params.get("manual"):
            return continue_job(store, job.id, token, result, [], MAINTENANCE_WAIT.format(node=target))
        # The plan is recorded with the lease: a successor of a pass that dies in the power cycle must not read the
        # plan again from ZooKeeper, where the node's returning worker will have recorded its VMs stopped.
        elif not extend_lease(store, job.id, token, _fence_bound(ctx.settings.ipmi_timeout), result):
            return {"job": job.id, "state": "skipped"}  # another pass took over; it fences
        else:
            result["fence"] = _fence_step(ctx, job)
            notes.append(f"fence of {target}: " + ("confirmed off" if result["fence"]["ok"]
                                                      else f"FAILED: {result['fence']['reason']}"))
    policy, why = _policy(ctx, target, result["fence"], store.path(job.id))
    if result.get("policy") != policy:
        notes.append(f"{len(result['plan'])} VM(s) ran on {target}: {why}; policy {policy}")
        result["policy"] = policy
    if not result.get("jobs_ended"):  # scanned until none is left, not at every pass
        still_open = _end_jobs_of(store, target, job.created)
        result["jobs_ended"] = still_open == 0
        if still_open:
            notes.append(f"{still_open} job(s) of {target} being ended")
    collect_ended(store, result, notes)
    running, waiting = result["running"], ""
    left = [n for n in result["plan"] if n not in set(result["done"]) | set(result["stayed"]) | set(running)]
    start = set(left if job.kind == "fence" else result.get("start", []))
    outcomes = _recover(ctx, job, left, policy, why, start, pass_deadline())
    for name, outcome in outcomes.items():
        waiting = record_outcome(result, notes, name, *outcome) or waiting
    more = len(outcomes) < len(left)  # out of time: the next pass goes on at once
    result["total"] = len(result["plan"])
    if running or waiting or more or len(result["done"]) + len(result["stayed"]) < result["total"]:
        return continue_job(store, job.id, token, result, notes, waiting, again=more)
    return _end(ctx, job, result, notes, policy, why)


def _came_back(ctx, job: Job, result: dict) -> dict:
    """Before its fence, X's worker started again (it re-registers, so X is no longer ``dead``): it started none
    of its VMs and nobody else runs them, so there is nothing to fence; powering a live node off would only take
    its VMs down."""
    target, what = job.params["target"], "evacuated" if job.kind == "evacuate" else "fenced"
    reason = f"{target} came back before it was {what} (its worker started again); its VMs stay with it"
    record = {"job": job.id, "state": "returned", "since": time.time(), "reason": reason}
    ctx.jobs.finish(job.id, JobState.CANCELLED, reason, result, release=False,
                    ops=lambda _j: [("set", ctx.schema.path("node.fence", target), json.dumps(record).encode(), -1)])
    return {"job": job.id, "state": "cancelled"}


def _end(ctx, job: Job, result: dict, notes: list[str], policy: str, why: str) -> dict:
    schema, target = ctx.schema, job.params["target"]
    stayed, fenced = result["stayed"], result["fence"]["ok"]
    ops = []
    if policy == "migrate":  # its VMs left with last_node = X: `pvc node ready X` brings them back
        ops.append(("set", schema.path("node.domain_state", target), b"flushed", -1))
    if job.kind == "evacuate":
        record = {"job": job.id, "state": "evacuated", "since": time.time(), "reason": why}
        ops.append(("set", schema.path("node.fence", target), json.dumps(record).encode(), -1))
    if fenced and not stayed:
        outcome, reason = JobState.SUCCEEDED, ""
    else:
        outcome = JobState.FAILED
        reason = why if not fenced else f"{len(stayed)} VM(s) of {target} not recovered"
        if stayed:
            reason += ": " + "; ".join(f"{k}: {v}" for k, v in sorted(stayed.items()))
    ctx.jobs.finish(job.id, outcome, reason, result, ops=lambda _j: ops, release=False, notes=notes)
    return {"job": job.id, "state": str(outcome)}

