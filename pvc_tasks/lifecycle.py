"""VM lifecycle: define, start, shutdown, stop, restart, undefine — each a job of one task.

Protocol
    1. The API (``pvc_tasks.submit``) validates the request, then in ONE ZooKeeper transaction creates the job
       record and sets the VM's ``active_job`` marker (for ``define``: creates the whole VM record too, in state
       ``defining``). A second request on the same VM loses that transaction and gets 409.
    2. The API sends the task below with ``task_id = job id``. Every task here is routed to ``node.<node>``:
       the queue of the node that holds the VM (``pvc_tasks.routing``), so it runs beside the VM's libvirt.
    3. The task claims the job, runs its phases, and ends it in one transaction that also writes the VM's
       observed state and clears the marker (``pvc_tasks.runner``).

Phases and rollback, per task
    define     ``define``: libvirt defineXML. Failure or cancel deletes the VM record: nothing half-defined stays.
    start      ``start`` (defining it first from ZooKeeper's XML if the node lost it). Failure records the
               reason in ``failed_reason``; the state is what libvirt reports. An unflush's start
               (``clear_autostart``) clears the VM's autostart with its success, never before. Refused on a node
               that is flushing or flushed (409 ``node_not_ready``).
    shutdown   ``shutdown``: ACPI request, then wait (bounded by ``timeout``, default 180 s). On timeout the VM is
               forced off and the job says so (``result.forced``), unless ``shutdown_force`` (the VM's meta, else
               the cluster's config; default on, as PVC) is off: then the job fails with a reason and the VM keeps
               running. Cancel stops waiting and leaves the VM as it is; ``vm stop`` during it supersedes it
               (``pvc_tasks.submit``): this job ends cancelled and the stop job forces the VM off.
    stop       ``stop``: force off (libvirt destroy).
    restart    ``shutdown`` (bounded, as above) then ``start``.
    undefine   ``undefine``: refuses a running VM; success deletes the VM record.
"""

from __future__ import annotations

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from pvc_tasks import vfs
from pvc_tasks.jobs import Job, JobState, JobStore, Op
from pvc_tasks.runner import JobFailed, JobRun, job_task
from zk_schema import Schema

__all__ = ["TASKS", "define_orphaned", "graceful_shutdown", "shutdown_force", "unrecorded"]


def shutdown_force(zk: KazooClient, schema: Schema, vm: str = "") -> bool:
    """Is a VM whose graceful shutdown timed out forced off? Its meta ``shutdown_force`` ("true"/"false"), else
    the cluster's ``config.shutdown_force`` (without ``vm``: the cluster's alone); by default yes, as PVC does (a
    layout without the keys: yes too)."""
    keys = [("domain.meta.shutdown_force", (vm,))] if vm else []
    for key, instance in [*keys, ("base.config.shutdown_force", ())]:
        if key not in schema.keys:
            continue
        try:
            value = zk.get(schema.path(key, *instance))[0].decode()
        except NoNodeError:
            continue
        if value in ("true", "false"):
            return value == "true"
    return True


def graceful_shutdown(run: JobRun, vm: str, timeout: float) -> bool:
    """ACPI shutdown, then a wait bounded by ``timeout``; a guest still running after it is forced off (libvirt
    destroy) when ``shutdown_force`` says so, and the job says it was; otherwise the job fails and the VM keeps
    running. True when it was forced off. A ``vm stop`` that superseded this job ends it cancelled."""
    if run.hv.state(vm) != "running":
        return False
    run.hv.shutdown(vm)
    if run.wait_for(lambda: run.hv.state(vm) != "running", timeout):
        run.cancel_point()  # stopped by a superseding `vm stop`: say so, not "shut down"
        return False
    if not shutdown_force(run.ctx.zk, run.ctx.schema, vm):
        raise JobFailed(f"VM {vm} did not shut down within {timeout:g} s and is still running on {run.ctx.node} "
                        f"(shutdown_force is off); use `pvc vm stop {vm}` to force it off")
    run.note_only(f"{vm} did not shut down within {timeout:g} s: forced off (shutdown_force)")
    run.hv.destroy(vm)
    return True


def _graceful_shutdown(run: JobRun, vm: str, timeout: float, step: int, steps: int) -> bool:
    run.phase("shutdown", step, steps, f"asking {vm} to shut down (up to {timeout:g} s)")
    return graceful_shutdown(run, vm, timeout)


def _timeout(run: JobRun, params: dict) -> float:
    return float(params.get("timeout") or run.ctx.settings.shutdown_timeout)


@job_task("pvc.vm.define", phase=("define", lambda j: f"defining {j.vm} on {j.node}"))
def define(run: JobRun, vm: str, node: str, **params) -> dict:
    """Runs on the target node: define the VM's XML (read from ZooKeeper) in the node's libvirt."""
    run.remove_vm_when = {JobState.FAILED, JobState.CANCELLED}
    xml, _ = run.ctx.zk.get(run.ctx.schema.path("domain.xml", vm))
    facts = run.hv.define(xml.decode(), vm)
    run.on_success.update(uuid=facts.uuid, memory=str(facts.memory_mib), vcpus=str(facts.vcpus))
    return {"node": node, "uuid": facts.uuid}


@job_task("pvc.vm.start", phase=("start", lambda j: f"starting {j.vm} on {j.node}"))
def start(run: JobRun, vm: str, node: str, **params) -> dict:
    """Runs on the VM's node: start the domain."""
    if params.get("clear_autostart"):  # an unflush's start: the flag goes only with a start that succeeded
        run.on_success["meta.autostart"] = "false"
    if run.hv.state(vm) == "missing":  # ZooKeeper is the truth: a node that lost the definition gets it again
        run.hv.define(run.ctx.zk.get(run.ctx.schema.path("domain.xml", vm))[0].decode(), vm)
    if run.hv.state(vm) != "running":
        run.hv.start(vm)
    return {"node": node, "state": run.hv.state(vm)}


@job_task("pvc.vm.shutdown")
def shutdown(run: JobRun, vm: str, node: str, **params) -> dict:
    """Runs on the VM's node: graceful shutdown, bounded by ``timeout``."""
    forced = _graceful_shutdown(run, vm, _timeout(run, params), 1, 1)
    return {"node": node, "state": run.hv.state(vm), "forced": forced}


@job_task("pvc.vm.stop", phase=("stop", lambda j: f"forcing {j.vm} off"))
def stop(run: JobRun, vm: str, node: str, **params) -> dict:
    """Runs on the VM's node: force the domain off."""
    if run.hv.state(vm) not in ("stopped", "missing"):
        run.hv.destroy(vm)
    return {"node": node, "state": run.hv.state(vm)}


@job_task("pvc.vm.restart")
def restart(run: JobRun, vm: str, node: str, **params) -> dict:
    """Runs on the VM's node: graceful shutdown (bounded), then start."""
    forced = _graceful_shutdown(run, vm, _timeout(run, params), 1, 2)
    run.phase("start", 2, 2, f"starting {vm}")
    run.hv.start(vm)
    return {"node": node, "state": run.hv.state(vm), "forced": forced}


@job_task("pvc.vm.undefine", phase=("undefine", lambda j: f"undefining {j.vm}"))
def undefine(run: JobRun, vm: str, node: str, **params) -> dict:
    """Runs on the VM's node: remove the domain from libvirt, then its record from ZooKeeper."""
    run.remove_vm_when = {JobState.SUCCEEDED}
    state = run.hv.state(vm)
    if state == "running":
        raise JobFailed(f"VM {vm} is running; stop or shut it down first")
    if state != "missing":
        run.hv.undefine(vm)
    return {"node": node}


#: Job kind -> the task that performs it (the API enqueues through this map).
TASKS = {"define": define, "start": start, "shutdown": shutdown, "stop": stop, "restart": restart,
         "undefine": undefine}


def unrecorded(store: JobStore, job: Job) -> list[Op]:
    """A define that never ran (cancelled while queued) or cannot finish: its VM record goes, as its own rollback
    would have removed it (its VF claims with it)."""
    return vfs.remove_vm_ops(store.zk, store.schema, job.vm)


def define_orphaned(store: JobStore, job: Job, reason: str) -> None:
    """A define whose node died or lost its message: ends failed and leaves no half-defined VM behind."""
    store.finish(job.id, JobState.FAILED, reason, ops=lambda j: unrecorded(store, j), release=False)
