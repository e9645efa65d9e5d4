"""The API side of a migration: validate the request, choose the target, and create the job in ONE transaction.

``submit_migration`` is step 0 of the protocol in ``pvc_tasks.migration`` (which runs the steps on the nodes): it
resolves the method (a VM with a hostdev VF always migrates by shutdown, see ``pvc_tasks.vfs``), places the VM on
a target that fits it (memory, node_limit, free VFs on the same PFs), and commits the job with the VM's marker,
the target's reservation (memory, vCPUs, VFs), a migration slot and the target's domain state (still ready), each
version-checked; then it sends ``pvc.migrate.prepare`` to the target's queue.
"""

from __future__ import annotations

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError

from pvc_tasks import dispatch, placement, slots, vfs
from pvc_tasks.errors import Conflict, Invalid
from pvc_tasks.jobs import Job, JobState, JobStore, Origin, commit
from pvc_tasks.migration import KINDS, METHODS, PREPARE, STEPS
from pvc_tasks.state import free_vm, node_alive
from zk_schema import Schema

__all__ = ["submit_migration"]


def _method(vm: dict, method: str | None, force_live: bool, hostdev: list[str]) -> str:
    if method and method not in METHODS:
        raise Invalid(f"method: {method!r} is not one of {', '.join(METHODS)}", details={"method": [method]})
    if hostdev and (method == "live" or force_live):
        raise Conflict(f"VM {vm['name']} uses hostdev VF(s) {', '.join(hostdev)} (PCI passthrough), which cannot "
                       f"be live-migrated; migrate it with method shutdown", code="live_refused",
                       details={"vfs": hostdev})
    if vm["state"] in ("stopped", "failed", "crashed"):
        return "cold"
    if hostdev:
        return "shutdown"
    return method or ("live" if force_live else vm.get("meta.migration_method") or "default")


def _home(vm: dict, target: str) -> str:
    """The ``last_node`` a migrate leaves: the VM's home if it has one (PVC: a forced migration never overwrites
    it), else the node it leaves; none when the VM arrives home."""
    home = vm["last_node"] or vm["node"]
    return "" if home == target else home


def _make_permanent(store: JobStore, vm: dict, marker_path: str, marker_stat, origin: Origin | None) -> Job:
    """``move`` to the VM's own node: its temporary migration becomes permanent (``last_node`` cleared), no VM
    moves; a job that has already ended says so (checked against the VM's marker: no job may hold it)."""
    name = vm["name"]
    if not vm["last_node"]:
        raise Conflict(f"VM {name} is already on {vm['node']}, its home", code="same_node",
                       details={"node": vm["node"]})
    job = Job.new("move", name, vm["node"], {"source": vm["node"], "target": vm["node"], "reserved_on": ""},
                  stage="", origin=origin)
    job.end(JobState.SUCCEEDED, "", {"node": vm["node"], "permanent": True, "was_home": vm["last_node"]})
    job.note(f"{name} stays on {vm['node']}, now its home (it was {vm['last_node']})")
    try:
        commit(store.zk, [*store.create_ops(job), ("check", marker_path, marker_stat.version),
                          ("set", store.schema.path("domain.last_node", name), b"", -1)])
    except BadVersionError:
        raise Conflict(f"VM {name} got another job at the same moment", code="vm_busy") from None
    return job


#: The VM keys a migration's submission decides on (not its meta for other purposes, profile, console...).
_VM_KEYS = ("state", "node", "last_node", "xml", "memory", "vcpus", "meta.migration_method", "meta.node_selector",
            "meta.node_limit")


def submit_migration(zk: KazooClient, schema: Schema, vm_name: str, kind: str, target: str | None = None,
                     method: str | None = None, force_live: bool = False, timeout: float | None = None,
                     parent: str = "", priority: str = "user", target_states: tuple[str, ...] = ("ready",),
                     origin: Origin | None = None, force: bool = False) -> Job:
    """Validate, place, and create the job (one transaction with the VM marker, T's reservation and a migration
    slot, each version-checked); enqueue. ``priority`` "node" for flush/unflush/fence work (pvc_tasks.slots).
    ``force``: migrate a VM that is already away from home (it keeps that home)."""
    if kind not in KINDS:
        raise Invalid(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    store = JobStore(zk, schema)
    for _attempt in range(10):
        vm, marker_path, marker_stat = free_vm(zk, schema, vm_name, only=_VM_KEYS)
        if vm["state"] not in ("running", "stopped", "failed", "crashed", "paused"):
            raise Conflict(f"cannot migrate VM {vm_name}: it is {vm['state']}", code="invalid_state",
                           details={"state": vm["state"]})
        if kind == "move" and target and target == vm["node"]:
            return _make_permanent(store, vm, marker_path, marker_stat, origin)
        if kind == "migrate" and vm["last_node"] and not force:
            raise Conflict(f"VM {vm_name} was already migrated here from its home {vm['last_node']}: "
                           f"`pvc vm unmigrate {vm_name}` returns it, `pvc vm move {vm_name} {vm['node']}` makes its "
                           f"place permanent, or migrate with force (it keeps {vm['last_node']} as its home)",
                           code="already_migrated", details={"last_node": vm["last_node"], "node": vm["node"]})
        if kind == "unmigrate":
            if not vm["last_node"]:
                raise Conflict(f"VM {vm_name} has no last node to return to", code="no_last_node")
            if target and target != vm["last_node"]:
                raise Invalid(f"target: unmigrate returns VM {vm_name} to {vm['last_node']}, not {target}",
                              details={"target": [target]})
            target = vm["last_node"]
        found = vfs.vm_uses(zk, schema, vm["node"], vm["xml"])
        hostdev = vfs.hostdev_names(found)
        source, resolved = vm["node"], _method(vm, method, force_live, hostdev)
        if not node_alive(zk, schema, source):
            raise Conflict(f"source {source}'s worker is not running, so VM {vm_name} cannot leave it",
                           code="node_unavailable", details={"node": source})
        where = vfs.place(zk, schema, vm, found, target, target_states)
        chosen = where.node
        state_read = zk.get_async(schema.path("node.domain_state", chosen))  # answered while the ops are built
        # ``reserved_on`` never changes: it is where the reservation (and any copy prepare made) must be undone,
        # even if someone re-plans ``target`` meanwhile.
        job = Job.new(kind, vm_name, chosen, {"source": source, "target": chosen, "reserved_on": chosen,
                                              "method": resolved,
                                              "requested": method or "", "force_live": force_live,
                                              "target_states": list(target_states),
                                              "home": _home(vm, chosen),
                                              **({"timeout": timeout} if timeout else {}),
                                              **where.job_params()},
                      parent=parent, stage=PREPARE, origin=origin)
        job.steps = STEPS
        if hostdev and resolved == "shutdown" and method != "shutdown":
            job.note(f"{vm_name} uses hostdev VF(s) {', '.join(hostdev)}: shutdown migration (no live)")
        ops = [*store.create_ops(job), ("set", marker_path, job.id.encode(), marker_stat.version),
               placement.reserve_op(schema, chosen, where.reserved, where.version, job.id, int(vm["memory"] or 0),
                                    int(vm["vcpus"] or 0), list(where.vf_map.values())),
               slots.admit_op(zk, schema, job.id, source, chosen, priority), *where.checks]
        try:
            ops.append(placement.still_ready_op(zk, schema, chosen, target_states, state_read))
        except Conflict:
            if target:
                raise
            continue  # the chosen node began to drain since we read it: choose again
        try:
            commit(zk, ops)
        except BadVersionError:
            if zk.exists(marker_path).version != marker_stat.version:
                # Another request took the VM between our read and our write: of racing requests exactly one
                # wins, even if its job has already ended by now.
                raise Conflict(f"VM {vm_name} got another job at the same moment", code="vm_busy") from None
            continue  # another placement reserved on T, took a slot, or drains T: decide again with it counted
        break
    else:
        raise Conflict(f"VM {vm_name}: placement kept racing with other requests; retry", code="busy")
    dispatch.publish(job)
    return job
