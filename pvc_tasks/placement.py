"""Placement of a VM on a node: target choice with in-flight reservations, and the reservation's life.

A reservation is an entry ``job id -> {"memory": MiB, "vcpus": n[, "vfs": [names]]}`` in the target node's
``node.reserved`` key
(a JSON object). It is created in the SAME transaction that creates the job, with a version check on that key, so
two placements racing for the last room on a node cannot both win: the loser's transaction fails and it chooses
again with the winner's reservation counted. It is removed in the transaction that commits the VM on the node (the
same transaction writes the node's fresh resource figures, so the VM is never counted twice or not at all) or in
the one that aborts the job.

Node figures seen by the selector (``pvc_tasks.selector``): the keepalive's libvirt figures plus the reservations.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from kazoo.interfaces import IAsyncResult

from pvc_tasks import selector
from pvc_tasks.errors import Conflict, Invalid
from pvc_tasks.jobs import Op
from pvc_tasks.state import node_record, node_records
from zk_schema import Schema

__all__ = ["check_target", "choose_target", "no_target", "node_limit", "read_reserved", "release_op", "reserve_op",
           "still_ready_op", "with_reservation"]


def read_reserved(zk: KazooClient, schema: Schema, node: str) -> tuple[dict, int]:
    """The node's reservations and the key's version (for the version-checked write)."""
    try:
        data, stat = zk.get(schema.path("node.reserved", node))
    except NoNodeError:
        return {}, -1
    try:
        return json.loads(data or b"{}"), stat.version
    except ValueError:
        return {}, stat.version


def with_reservation(reserved: dict, job_id: str, memory_mib: int, vcpus: int, vfs: list[str] | None = None) -> dict:
    """``reserved`` plus ``job_id``'s reservation (memory, vCPUs and any SR-IOV VFs it will use)."""
    entry: dict = {"memory": memory_mib, "vcpus": vcpus}
    if vfs:
        entry["vfs"] = sorted(vfs)
    return dict(reserved, **{job_id: entry})


def reserve_op(schema: Schema, node: str, reserved: dict, version: int, job_id: str, memory_mib: int,
               vcpus: int, vfs: list[str] | None = None) -> Op:
    """The version-checked write adding ``job_id``'s reservation (``with_reservation``)."""
    entries = with_reservation(reserved, job_id, memory_mib, vcpus, vfs)
    return ("set", schema.path("node.reserved", node), json.dumps(entries, sort_keys=True).encode(), version)


def release_op(zk: KazooClient, schema: Schema, node: str, job_id: str) -> list[Op]:
    """Ops removing the job's reservation on ``node`` (version-checked), or none when it holds none."""
    reserved, version = read_reserved(zk, schema, node)
    if job_id not in reserved:
        return []
    del reserved[job_id]
    return [("set", schema.path("node.reserved", node), json.dumps(reserved, sort_keys=True).encode(), version)]


def still_ready_op(zk: KazooClient, schema: Schema, node: str, states: tuple[str, ...] = ("ready",),
                   pending: IAsyncResult | None = None) -> Op:
    """The check, for the transaction that places a VM on ``node``, that the node's domain state is still one of
    ``states`` when it commits: a flush of the node accepted between the placement's reads and its write fails the
    transaction (the placement is then decided again), so no VM is ever placed on a node being drained.
    ``pending``: that state's read, already sent with ``zk.get_async`` (its round trip overlaps the caller's)."""
    path = schema.path("node.domain_state", node)
    data, stat = pending.get() if pending is not None else zk.get(path)
    if data.decode() not in states:
        raise Conflict(f"target {node} is {data.decode()}, not ready", code="node_not_ready", details={"node": node})
    return ("check", path, stat.version)


def node_limit(vm: dict) -> list[str]:
    """The nodes a VM may run on (its ``meta.node_limit``; empty: any)."""
    return [n for n in (vm.get("meta.node_limit") or "").split(",") if n]


def check_target(zk: KazooClient, schema: Schema, vm: dict, target: str, *, own_job: str = "",
                 states: tuple[str, ...] = ("ready",)) -> dict:
    """The target's record when it may take the VM now; ``Conflict`` naming the reason otherwise.

    ``own_job``: a job whose reservation on the target is the VM's own (counted as free when re-checking).
    ``states``: the target's acceptable domain states (an unflush brings VMs back to its node while ``unflush``)."""
    record = node_record(zk, schema, target, only=selector.FIT_KEYS)
    memory, limit = int(vm.get("memory") or 0), node_limit(vm)
    if target == vm.get("node"):
        raise Conflict(f"VM {vm['name']} is already on {target}", code="same_node", details={"node": target})
    if not record["alive"]:
        raise Conflict(f"target {target}'s worker is not running", code="node_unavailable", details={"node": target})
    if record["domain_state"] not in states:
        raise Conflict(f"target {target} is {record['domain_state']}, not ready", code="node_not_ready",
                       details={"node": target})
    if limit and target not in limit:
        raise Conflict(f"target {target} is not in VM {vm['name']}'s node_limit ({', '.join(limit)})",
                       code="not_in_node_limit", details={"node": target, "node_limit": limit})
    if own_job:
        record = dict(record, reserved=json.dumps({k: v for k, v in json.loads(record.get("reserved") or "{}")
                                                   .items() if k != own_job}))
    free = selector.free_memory(record)
    if free < memory:
        raise Conflict(f"VM {vm['name']} needs {memory} MiB but target {target} has {free:.0f} MiB free",
                       code="no_target", details={"node": target, "free": free, "needed": memory})
    return record


def choose_target(zk: KazooClient, schema: Schema, vm: dict, explicit: str | None = None,
                  states: tuple[str, ...] = ("ready",), fits: Callable[[str], object] | None = None) -> str:
    """An explicit target (checked) or the selector's choice among valid candidates; ``Conflict`` when none.
    ``fits(node)`` raises ``Conflict`` when the node lacks something the VM needs besides memory (its VFs)."""
    if explicit:
        if zk.exists(schema.path("node", explicit)) is None:
            raise Invalid(f"target: no node named {explicit!r}", details={"target": [f"unknown node {explicit!r}"]})
        check_target(zk, schema, vm, explicit, states=states)
        if fits is not None:
            fits(explicit)
        return explicit
    method = vm.get("meta.node_selector") or zk.get(schema.path("base.config.migration_selector"))[0].decode()
    memory = int(vm.get("memory") or 0)
    nodes = node_records(zk, schema, selector.keys_for(method))
    unfit: dict[str, str] = {}
    for node in nodes if fits is not None else []:
        try:
            fits(node["name"])
        except Conflict as exc:
            unfit[node["name"]] = exc.message
    chosen = selector.select(nodes, method, memory, node_limit(vm), exclude=[vm.get("node", ""), *unfit])
    if chosen is None:
        raise no_target(vm, method, list(unfit.values()))
    return chosen


def no_target(vm: dict, method: str, reasons: list[str] = ()) -> Conflict:
    """Why the selector found no node for ``vm``."""
    why = f"; {'; '.join(reasons)}" if reasons else ""
    return Conflict(f"no target for VM {vm['name']}: no other ready node in its node_limit has "
                    f"{int(vm.get('memory') or 0)} MiB free (selector {method}){why}", code="no_target",
                    details={"selector": method})
