"""VM migration from its node S to a node T: four steps, each on the queue of the node that owns what it touches.

Kinds
    ``migrate``    temporary: the VM's ``last_node`` (its home) becomes S, so ``unmigrate`` can bring it back. A VM
                   that is already away from home is refused (409 ``already_migrated``) unless forced, and a forced
                   migration (a flush's, too) keeps the home it had; arriving at its home clears it;
    ``move``       permanent: ``last_node`` is cleared; a move to the node the VM is on makes its migration
                   permanent without moving it;
    ``unmigrate``  to ``last_node`` (which is then cleared).

Methods (the request's, else ``force_live`` -> live, else the VM's ``migration_method`` meta)
    ``live``       libvirt peer-to-peer live migration where the hypervisor has one (real QEMU nodes). On the
                   test driver, which has no migration API, the definition is handed over instead: the domain is
                   destroyed on S and started on T (see docs/hypervisors.md);
    ``shutdown``   graceful shutdown on S (bounded; forced off after the bound as ``pvc_tasks.lifecycle`` says),
                   then start on T;
    ``default``    live, falling back to shutdown when live is impossible or fails;
    a stopped VM only changes node (``cold``). A VM with a hostdev (PCI passthrough) VF always migrates by
    shutdown; asking for live is refused (pvc_tasks.vfs).

Protocol (S = source, T = target; each arrow is a message to the next node's queue, sent only after the job's
``stage`` names the next task in ZooKeeper, so no task waits on another and a stale message does nothing)

    API      (``pvc_tasks.migration_submit``) validate; choose T (explicit, else the VM's selector, else the
             cluster's) among alive, ready nodes in the VM's node_limit that FIT it (memory; free VFs on the same
             PFs for a VM with SR-IOV VFs); ONE transaction: job + VM marker (version-checked) + reservation on
             T (version-checked, so parallel placements never overfill T) + migration slot      -> prepare @T
    1 prepare  @T  claim; re-check: the VM's active job is this one and it is still on S; T ready, in the
                   node_limit, fits (its own reservation counted); hand-over paths define the XML on T  -> perform @S
    2 perform  @S  live migration / hand-over (destroy) / graceful shutdown / nothing (stopped)        -> finish @T
    3 finish   @T  start on T unless it arrived running; verify; ONE transaction: VM node=T, last_node, state;
                   T's reservation released; T's fresh resource figures; for a VM with SR-IOV VFs its XML
                   rewritten for T's VFs, T's VFs used, S's released (pvc_tasks.vfs)          -> cleanup @S
    4 cleanup  @S  undefine S's copy; ONE transaction: job succeeded, marker released, S's figures

Rollback, on any failure or cancel before the commit in step 3 (and by the janitor when a node dies mid-way)
    abort_target @T  undefine T's copy (never a copy that is running: then the migration did happen, and the
                     job ROLLS FORWARD to the commit instead); release T's reservation                -> abort_source @S
    abort_source @S  start the VM again on S if it ran before and runs nowhere; ONE transaction ends the job
                     failed/cancelled with the reason and releases the marker and any reservation

Invariants: the VM is destroyed on S before it is started on T (hand-over), or moved by libvirt, which never runs
it twice; ZooKeeper's ``node`` changes only in step 3's transaction, after T runs it. Cancel is honoured at every
step start and during live migration (libvirt's abortJob), and always ends with the VM on exactly one node.
"""

from __future__ import annotations

import logging

from pvc_tasks import defaults, dispatch, placement, slots, vfs
from pvc_tasks.context import HypervisorError, MigrationAborted
from pvc_tasks.errors import Conflict, NotFound
from pvc_tasks.jobs import Job, JobState, JobStore
from pvc_tasks.lifecycle import graceful_shutdown
from pvc_tasks.runner import JobCancelled, JobFailed, JobRun, hop, node_figure_ops, step_task
from pvc_tasks.state import domain_record, node_alive, vf_record

__all__ = ["KINDS", "METHODS", "PREPARE", "STEPS", "end_ops", "orphaned"]

log = logging.getLogger(__name__)

KINDS = ("migrate", "move", "unmigrate")
METHODS = ("default", "live", "shutdown")
STEPS = 4
PREPARE, PERFORM, FINISH, CLEANUP = (f"pvc.migrate.{s}" for s in ("prepare", "perform", "finish", "cleanup"))
ABORT_TARGET, ABORT_SOURCE = "pvc.migrate.abort_target", "pvc.migrate.abort_source"


# ---- steps on the nodes -----------------------------------------------------------------------------------------
#: The VM keys each step re-checks (its marker, its node); prepare also reads what the target check and a
#: hand-over need, perform what a live migration needs. Reading the whole record (16 keys with the XML) at every
#: step was a third of a flush's ZooKeeper requests.
_OURS = ("active_job", "node")
_PREPARE_KEYS = (*_OURS, "memory", "meta.node_limit", "xml")
_PERFORM_KEYS = (*_OURS, "meta.max_downtime")


def _check_still_ours(run: JobRun, on: str, keys: tuple[str, ...] = _OURS) -> dict:
    """The job must still own the VM, and the VM must still be recorded on S (or T for a roll-forward check)."""
    schema, zk, vm = run.ctx.schema, run.ctx.zk, run.vm
    try:
        record = domain_record(zk, schema, vm, only=keys)
    except NotFound as exc:
        raise JobFailed(f"VM {vm} was removed meanwhile") from exc
    if record["active_job"] != run.job.id:
        raise JobFailed(f"VM {vm}'s active job is no longer this one")
    if record["node"] != on:
        raise JobFailed(f"VM {vm} is recorded on {record['node']}, not {on}: the world changed under the job")
    return record


def _check_target_unchanged(run: JobRun) -> str:
    params = run.job.params
    if params["target"] != params["reserved_on"]:
        raise JobFailed(f"the job's target changed from {params['reserved_on']} to {params['target']} while it "
                        f"waited; aborted")
    return params["reserved_on"]


def _abort(run: JobRun, outcome: JobState, reason: str) -> None:
    """on_error of every step before the commit: start the rollback on T (which continues on S)."""
    abort = {"abort": {"outcome": str(outcome), "reason": reason}}
    hop(run, ABORT_TARGET, run.job.params["reserved_on"], params=abort, message=f"rolling back: {reason}")


@step_task(PREPARE, claims=("prepare", lambda j: f"preparing {j.node} for {j.vm} ({j.params['method']})"),
           on_error=_abort)
def prepare(run: JobRun) -> None:
    """Runs on T: re-check the target and, for hand-over paths, define the VM here (not started)."""
    params, vm, node = run.job.params, run.vm, run.ctx.node
    _check_target_unchanged(run)
    record = _check_still_ours(run, params["source"], _PREPARE_KEYS)
    try:
        placement.check_target(run.ctx.zk, run.ctx.schema, record, node, own_job=run.job.id,
                               states=tuple(params.get("target_states") or ("ready",)))
    except Conflict as exc:
        raise JobFailed(f"target {node} can no longer take {vm}: {exc.message}") from exc
    reserved_vfs = (params.get("vf_map") or {}).values()
    taken = [vf for vf in reserved_vfs if vf_record(run.ctx.zk, run.ctx.schema, node, vf)["used"] == "true"]
    if taken:
        raise JobFailed(f"target {node}'s VF(s) {', '.join(taken)} reserved for {vm} are in use meanwhile")
    live = params["method"] in ("live", "default") and run.hv.live_migration
    # This node's own policy judges what it will run before anything moves (a live migration's XML reaches this
    # libvirt from the source's, never through a define here).
    run.hv.check_xml(params.get("target_xml") or record["xml"], vm)
    if run.hv.state(vm) in ("stopped", "crashed"):
        # A copy that is not running, left by an earlier life of this node (ZooKeeper places the VM on the source):
        # its XML may be stale, so it is never what the VM becomes here.
        run.note_only(f"removing a stale copy of {vm} that {node}'s libvirt still held")
        run.hv.undefine(vm)
    if not live and run.hv.state(vm) == "missing":
        run.hv.define(params.get("target_xml") or record["xml"], vm)  # with the target's VFs, if it has any
    hop(run, PERFORM, params["source"], phase=("perform", 2),
        message=f"{node} is ready for {vm}; moving it off {params['source']}")


def _shutdown_on_source(run: JobRun, timeout: float) -> str:
    """The graceful shutdown of a shutdown migration: ``how`` it left, "forced" when it had to be forced off."""
    run.note_only(f"shutting {run.vm} down on {run.ctx.node} (up to {timeout:g} s)")
    return "forced" if graceful_shutdown(run, run.vm, timeout) else "shutdown"


def _live(run: JobRun, target: str, record: dict) -> None:
    peer = run.ctx.zk.get(run.ctx.schema.path("node.hypervisor", target))[0].decode()
    downtime = int(record.get("meta.max_downtime") or defaults.MAX_DOWNTIME_MS)
    run.note_only(f"live-migrating {run.vm} to {target} (max downtime {downtime} ms)")

    def cancelled() -> bool:
        return run.ctx.jobs.get(run.job.id).cancel_requested

    def progress(fraction: float, figures: dict) -> None:
        run.percent_within(fraction, figures, _moving(figures))

    try:
        applied = run.hv.migrate_live(run.vm, peer, max_downtime_ms=downtime,
                                      timeout=run.ctx.settings.migration_timeout,
                                      stall=run.ctx.settings.migration_stall, progress=progress,
                                      cancelled=cancelled, dest_xml=run.job.params.get("target_xml") or "")
    except MigrationAborted as exc:
        if cancelled():
            raise JobCancelled(str(exc)) from exc
        raise
    if applied.get("max_downtime_ms"):
        run.note_only(f"hypervisor applied max downtime {applied['max_downtime_ms']} ms")
    if figures := applied.get("figures"):
        run.note_only(f"live migration sent {figures['sent_mib']:g} MiB in {figures['seconds']:.1f} s "
                      f"({figures['mib_per_s']:g} MiB/s)")


def _moving(figures: dict) -> str:
    """The phase of a live migration under way: ``live migration: 40 of 64 MiB sent, 24 MiB left, 90 MiB/s``."""
    if not figures:
        return "live migration: starting"
    return (f"live migration: {figures['sent_mib']:g} of {figures['total_mib']:g} MiB sent, "
            f"{figures['remaining_mib']:g} MiB left, {figures['mib_per_s']:g} MiB/s")


@step_task(PERFORM, on_error=_abort)
def perform(run: JobRun) -> None:
    """Runs on S: move the VM's execution off S by the job's method."""
    params, vm, source = run.job.params, run.vm, run.ctx.node
    target = _check_target_unchanged(run)
    record = _check_still_ours(run, source, _PERFORM_KEYS)
    was_running, method, how = run.hv.state(vm) == "running", params["method"], "cold"
    timeout = float(params.get("timeout") or run.ctx.settings.shutdown_timeout)
    if was_running and method in ("live", "default") and run.hv.live_migration:
        try:
            _live(run, target, record)
            how = "live"
        except HypervisorError as exc:
            if method == "live":
                raise JobFailed(str(exc)) from exc
            run.note_only(f"live migration failed ({exc}); falling back to shutdown migration")
            how = _shutdown_on_source(run, timeout)
    elif was_running and method in ("live", "default"):
        # No live migration on this hypervisor (test driver, embedded QEMU): hand the definition over instead.
        run.hv.destroy(vm)
        how = "handover"
    elif was_running:
        how = _shutdown_on_source(run, timeout)
    left = {"handover": f"{vm} left {source}: {run.hv.uri} has no live migration, so its definition is handed "
                        f"over (destroyed here, started on {target})"}.get(how, f"{vm} left {source} ({how})")
    doing = "recording" if not was_running else "verifying" if how == "live" else "starting"
    hop(run, FINISH, target, ops=lambda: node_figure_ops(run.ctx, vm), params={"was_running": was_running, "how": how},
        phase=("finish", 3), message=f"{left}; {doing} it on {target}")


def _commit_ops(run: JobRun, observed: str) -> list:
    """VM on T, its last_node by kind, T's reservation released, T's fresh figures: one transaction."""
    schema, zk, vm, params = run.ctx.schema, run.ctx.zk, run.vm, run.job.params
    last = params.get("home", params["source"]) if run.job.kind == "migrate" else ""
    values = {"node": run.ctx.node, "last_node": last, "state": observed, "failed_reason": ""}
    ops = [("set", schema.path(f"domain.{k}", vm), v.encode(), -1) for k, v in values.items()]
    return (ops + vfs.commit_ops(schema, vm, params["source"], run.ctx.node, params)
            + placement.release_op(zk, schema, run.ctx.node, run.job.id) + node_figure_ops(run.ctx, vm))


@step_task(FINISH, on_error=_abort)
def finish(run: JobRun) -> None:
    """Runs on T: start the VM here unless it arrived running, verify, and commit its new place."""
    params, vm, node = run.job.params, run.vm, run.ctx.node
    _check_target_unchanged(run)
    _check_still_ours(run, params["source"])
    if params["was_running"] and run.hv.state(vm) != "running":
        run.hv.start(vm)
    observed = run.hv.state(vm)
    if params["was_running"] and observed != "running":
        raise JobFailed(f"VM {vm} is {observed} on {node} after the migration, not running")
    hop(run, CLEANUP, params["source"], ops=lambda: _commit_ops(run, observed), phase=("cleanup", 4),
        message=f"{vm} is now on {node}; removing its old definition from {params['source']}")


@step_task(CLEANUP, cancellable=False)
def cleanup(run: JobRun) -> None:
    """Runs on S: remove S's copy of the definition and end the job (after the commit: a cancel is too late)."""
    vm, source, target = run.vm, run.ctx.node, run.job.params["reserved_on"]
    note = ""
    try:
        state = run.hv.state(vm)
        if state == "running":
            raise HypervisorError(f"{vm} still runs on {source}")  # never undefine a running copy
        if state != "missing":
            run.hv.undefine(vm)
    except HypervisorError as exc:
        note = f"; cleanup of {source} incomplete: {exc}"
        log.error("cleanup of %s on %s: %s", vm, source, exc)
    how = run.job.params.get("how", "")
    run.job = run.ctx.jobs.finish(run.job.id, JobState.SUCCEEDED, "", {"node": target, "from": source, "how": how,
                                                                        "forced": how == "forced"},
                                  ops=lambda _j: node_figure_ops(run.ctx, vm), known=run.known)
    if note:
        run.ctx.jobs.update(run.job.id, lambda j: (j.note(note.lstrip("; ")), True)[1])


@step_task(ABORT_TARGET, cancellable=False)
def abort_target(run: JobRun) -> None:
    """Runs on T: undo T's side (or roll forward when T already runs the VM), then hand over to S."""
    ctx, vm, node, job_id = run.ctx, run.vm, run.ctx.node, run.job.id
    source = run.job.params["source"]
    if run.hv.state(vm) == "running" and domain_record(ctx.zk, ctx.schema, vm, only=("node",))["node"] == source:
        # The VM already runs here (a live migration completed, or T started it before a crash): rolling back
        # would kill the only running copy. Commit the migration instead.
        hop(run, CLEANUP, source, ops=lambda: _commit_ops(run, "running"), phase=("cleanup", 4),
            message=f"{vm} already runs on {node}: the migration is committed instead of rolled back")
        return
    state = run.hv.state(vm)
    if state not in ("missing", "running"):
        try:
            if state != "stopped":
                # An incoming live migration still in flight (the perform step was judged stuck while libvirt
                # went on): destroying the incoming copy makes the migration fail, and S keeps running the VM.
                run.hv.destroy(vm)
            if run.hv.state(vm) != "missing":
                run.hv.undefine(vm)
        except HypervisorError as exc:
            log.warning("abort of job %s: could not remove %s from %s: %s", job_id, vm, node, exc)
    hop(run, ABORT_SOURCE, source, ops=lambda: placement.release_op(ctx.zk, ctx.schema, node, job_id),
        message=f"{node}'s side rolled back")


@step_task(ABORT_SOURCE, cancellable=False)
def abort_source(run: JobRun) -> None:
    """Runs on S: make sure the VM runs here again if it ran before, then end the job with the reason."""
    ctx, vm, node, job, job_id = run.ctx, run.vm, run.ctx.node, run.job, run.job.id
    abort = job.params.get("abort") or {"outcome": "failed", "reason": "rolled back"}
    reason = abort["reason"]
    try:
        on_source = domain_record(ctx.zk, ctx.schema, vm)["node"] == node
    except NotFound:
        on_source = False
    # Before perform ran, whether it ran is what ZooKeeper last recorded (e.g. S's worker restarted meanwhile).
    was_running = job.params.get("was_running", record_state(ctx, vm) == "running")
    if on_source and was_running and run.hv.state(vm) != "running":
        try:
            if run.hv.state(vm) == "missing":
                run.hv.define(domain_record(ctx.zk, ctx.schema, vm)["xml"], vm)
            run.hv.start(vm)
            reason += f"; {vm} restarted on {node}"
        except HypervisorError as exc:
            reason += f"; restarting {vm} on {node} failed: {exc}"
    outcome = JobState.CANCELLED if abort["outcome"] == JobState.CANCELLED else JobState.FAILED
    observed = run.hv.state(vm)

    def ops(_job: Job) -> list:
        values = {"failed_reason": reason if outcome == JobState.FAILED else ""}
        if on_source and observed != "missing":
            values["state"] = observed
        out = [("set", ctx.schema.path(f"domain.{k}", vm), v.encode(), -1) for k, v in values.items()]
        return out + node_figure_ops(ctx, vm)  # the reservation and the slot go with end_ops

    run.job = ctx.jobs.finish(job_id, outcome, reason, ops=ops)


def record_state(ctx, vm: str) -> str:
    try:
        return domain_record(ctx.zk, ctx.schema, vm)["state"]
    except NotFound:
        return "missing"


# ---- the janitor's and the reconciler's entry point -------------------------------------------------------------
def orphaned(store: JobStore, job: Job, reason: str) -> None:
    """A migration whose current step cannot run (its node died or restarted, or its message was lost): roll it
    back from the nodes that are alive — T's side first when T is alive, then S's — or end it when neither is."""
    zk, schema = store.zk, store.schema
    source, target = job.params["source"], job.params["reserved_on"]
    if job.stage == CLEANUP:  # committed: the VM runs on T; S's leftover copy is removed when S's worker starts
        store.finish(job.id, JobState.SUCCEEDED, "", {"node": target, "from": source},
                     notes=[f"cleanup on {source} deferred: {reason}"])
        return
    route = [(ABORT_SOURCE, source)] if job.stage == ABORT_SOURCE else [(ABORT_TARGET, target), (ABORT_SOURCE, source)]
    for stage, node in route:
        if not node_alive(zk, schema, node):
            continue
        moved = False

        def mutate(j: Job, stage: str = stage, node: str = node) -> bool:
            nonlocal moved
            moved = False  # decided afresh on each attempt of update()
            if j.terminal or j.stage != job.stage or j.node != job.node:
                return False  # another janitor got there first
            j.hand_to(stage, node)  # a re-drive: the step may run again, even the one that was running
            moved = True
            j.params["abort"] = {"outcome": "failed", "reason": reason}
            j.note(f"rolling back from {node}: {reason}")
            return True

        moved_job = store.update(job.id, mutate)
        if moved:
            dispatch.publish(moved_job)
        return
    store.finish(job.id, JobState.FAILED, f"{reason}; neither {source} nor {target} can roll it back now")


def end_ops(store: JobStore, job: Job) -> list:
    """Whoever ends a migration gives back its reservation (if the commit has not already) and its slot."""
    return (placement.release_op(store.zk, store.schema, job.params["reserved_on"], job.id)
            + slots.release_ops(store.zk, store.schema, job.id))
