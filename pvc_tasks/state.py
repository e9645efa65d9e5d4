"""Reading node and VM records from ZooKeeper, and the transaction ops that create or delete them.

Nodes, VMs, and the SR-IOV PFs and VFs of each node. Records are read with parallel asynchronous gets: one round
trip's latency for all keys of all instances, which keeps a list of hundreds of VMs fast. Secret keys (IPMI
password) are never part of a record.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from kazoo.protocol.states import ZnodeStat

from pvc_tasks.errors import Conflict, NotFound
from pvc_tasks.jobs import Op
from zk_schema import Schema

__all__ = [
    "LEADING",
    "VF_USE_KEYS",
    "delete_tree_ops",
    "desired_vf_config",
    "domain_record",
    "domain_records",
    "domain_records_matching",
    "fence_record",
    "free_vm",
    "names",
    "node_alive",
    "node_record",
    "node_records",
    "pf_records",
    "read_keys",
    "supported",
    "vf_record",
    "vf_records",
]


def names(zk: KazooClient, schema: Schema, collection: str) -> list[str]:
    """Children of a collection key such as ``base.node`` or ``base.domain``, sorted."""
    try:
        return sorted(zk.get_children(schema.path(collection)))
    except NoNodeError:
        return []


def read_keys(zk: KazooClient, schema: Schema, section: str, instances: Iterable[tuple[str, ...]],
              only: Iterable[str] | None = None) -> list[dict | None]:
    """All non-secret keys (or the keys named in ``only``) of each instance (None for an instance that vanished),
    in parallel."""
    wanted_keys = set(only) if only is not None else None
    keys = [k for k in schema.section_keys(section) if not k.secret and (wanted_keys is None or k.name in wanted_keys)]
    wanted = list(instances)
    pending = [[zk.get_async(schema.path(k.full_name, *inst)) for k in keys] for inst in wanted]
    exists = [zk.exists_async(schema.root(section, *inst)) for inst in wanted]
    records: list[dict | None] = []
    for inst_results, present in zip(pending, exists):
        if present.get() is None:
            for r in inst_results:
                r.exception  # noqa: B018 - drain the result; the instance is gone
            records.append(None)
            continue
        record = {}
        for key, result in zip(keys, inst_results):
            try:
                record[key.name] = result.get()[0].decode()
            except NoNodeError:
                record[key.name] = None
        records.append(record)
    return records


#: Router states that only a live worker can be in (PVC's names); a node without presence shows ``secondary``.
LEADING = ("primary", "takeover", "relinquish")


def _with_liveness(name: str, record: dict, alive: bool) -> dict:
    """A node's record with its name and ``alive`` (its worker holds presence); a dead primary shows secondary."""
    record.update(name=name, alive=alive)
    if not alive and record.get("router_state") in LEADING:  # it crashed while primary: no longer so
        record["router_state"] = "secondary"
    return record


def node_record(zk: KazooClient, schema: Schema, name: str, only: Iterable[str] | None = None) -> dict:
    """One node's record (``only`` those keys) with ``alive``; ``NotFound`` node_not_found."""
    record = read_keys(zk, schema, "node", [(name,)], only)[0]
    if record is None:
        raise NotFound(f"no node {name!r}", code="node_not_found")
    return _with_liveness(name, record, zk.exists(schema.path("node.presence", name)) is not None)


def node_records(zk: KazooClient, schema: Schema, only: Iterable[str] | None = None) -> list[dict]:
    """Every node's record (``only`` those keys: placement reads a few, not the ~30 of each node), with ``alive``."""
    all_names = names(zk, schema, "base.node")
    presence = [zk.exists_async(schema.path("node.presence", n)) for n in all_names]
    records = read_keys(zk, schema, "node", [(n,) for n in all_names], only)
    return [_with_liveness(name, record, present.get() is not None)
            for name, record, present in zip(all_names, records, presence) if record is not None]


def domain_record(zk: KazooClient, schema: Schema, vm: str, only: Iterable[str] | None = None) -> dict:
    """One VM's record (``only`` those keys: a migration step re-checks two, not the 16 with the XML) with ``name``;
    ``NotFound`` vm_not_found."""
    try:
        record = read_keys(zk, schema, "domain", [(vm,)], only)[0]
    except ValueError:
        record = None
    if record is None:
        raise NotFound(f"no VM {vm!r}", code="vm_not_found")
    record["name"] = vm
    return record


def domain_records(zk: KazooClient, schema: Schema) -> list[dict]:
    all_names = names(zk, schema, "base.domain")
    records = read_keys(zk, schema, "domain", [(n,) for n in all_names])
    return [dict(r, name=n) for n, r in zip(all_names, records) if r is not None]


def domain_records_matching(zk: KazooClient, schema: Schema, first: Iterable[str], match: Callable[[dict], bool],
                            only: Iterable[str] | None = None) -> list[dict]:
    """The records (``only`` those keys) of the VMs whose ``first`` keys ``match``: a scan reads a key or two per
    VM and the rest only for the VMs it picked (a flush looks at one node's VMs among thousands)."""
    all_names = names(zk, schema, "base.domain")
    light = read_keys(zk, schema, "domain", [(n,) for n in all_names], first)
    picked = [n for n, r in zip(all_names, light) if r is not None and match(r)]
    records = read_keys(zk, schema, "domain", [(n,) for n in picked], only)
    return [dict(r, name=n) for n, r in zip(picked, records) if r is not None]


def free_vm(zk: KazooClient, schema: Schema, vm: str, only: Iterable[str] | None = None) -> tuple[dict, str, ZnodeStat]:
    """A VM with no active job: its record (``only`` those keys), its marker's path and the marker's stat (for the
    version check of the transaction that gives it a job). ``Conflict`` vm_busy naming the active job otherwise."""
    marker_path = schema.path("domain.active_job", vm)
    marker_read = zk.get_async(marker_path)  # answered with the record's reads
    record = domain_record(zk, schema, vm, only)
    marker, stat = marker_read.get()
    if marker:
        raise Conflict(f"VM {vm} already has an active job {marker.decode()}; wait for it or cancel it",
                       code="vm_busy", details={"job": marker.decode()})
    return record, marker_path, stat


def node_alive(zk: KazooClient, schema: Schema, node: str) -> bool:
    """The node's worker holds its presence (an ephemeral znode that dies with the worker's session)."""
    return zk.exists(schema.path("node.presence", node)) is not None


# ---- SR-IOV PFs and VFs --------------------------------------------------------------------------------------------
def supported(schema: Schema) -> bool:
    """Layouts before version 5 have no place for a node's PFs and VFs: SR-IOV stays off until the upgrade."""
    return "node.sriov.vf" in schema.keys


def _records(zk: KazooClient, schema: Schema, section: str, directory: str, node: str | None,
             only: Iterable[str] | None = None) -> list[dict]:
    if not supported(schema):
        return []
    nodes = [node] if node else names(zk, schema, "base.node")
    instances = []
    for name in nodes:
        try:
            instances += [(name, child) for child in sorted(zk.get_children(schema.path(directory, name)))]
        except NoNodeError:
            continue
    records = read_keys(zk, schema, section, instances, only)
    return [dict(r, node=i[0], name=i[1]) for i, r in zip(instances, records) if r]


def pf_records(zk: KazooClient, schema: Schema, node: str | None = None) -> list[dict]:
    return _records(zk, schema, "sriov_pf", "node.sriov.pf", node)


#: The VF keys placement and VF bookkeeping need (a third of a VF record: reads stay cheap on a migration's path).
VF_USE_KEYS = ("pf", "used", "used_by", "pci.domain", "pci.bus", "pci.slot", "pci.function")


def vf_records(zk: KazooClient, schema: Schema, node: str | None = None, pf: str | None = None,
               only: Iterable[str] | None = None) -> list[dict]:
    """VF records (every key, or ``only`` these and ``pf``) of one node or all, optionally of one PF."""
    keys = None if only is None else {"pf", *only}
    return [r for r in _records(zk, schema, "sriov_vf", "node.sriov.vf", node, keys) if not pf or r["pf"] == pf]


def vf_record(zk: KazooClient, schema: Schema, node: str, vf: str) -> dict:
    if zk.exists(schema.path("node", node)) is None:
        raise NotFound(f"no node {node!r}", code="node_not_found")
    record = read_keys(zk, schema, "sriov_vf", [(node, vf)])[0]
    if record is None:
        raise NotFound(f"node {node} has no VF {vf!r}", code="vf_not_found", details={"node": node, "vf": vf})
    return dict(record, node=node, name=vf)


def desired_vf_config(record: dict) -> dict[str, str]:
    """A VF record's desired settings (``config.*``), by setting name."""
    return {key.removeprefix("config."): value or "" for key, value in record.items() if key.startswith("config.")}


def fence_record(data: bytes | None) -> dict:
    """A node's ``fence`` key as a dict ({} when empty or unreadable)."""
    try:
        record = json.loads(data or b"{}")
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def keepalive_age(zk: KazooClient, schema: Schema, node: str, clock: str) -> float | None:
    """Seconds between the node's last keepalive and the last write of ``clock``, a znode the caller has just
    written (its own keepalive, the job it works on): both stamped by ZooKeeper, so no node's clock matters, and an
    older ``clock`` only makes the age look smaller. None when the node never wrote one."""
    stat, now = zk.exists(schema.path("node.keepalive", node)), zk.exists(clock)
    if stat is None or now is None or stat.version == 0:
        return None
    return max(0.0, (now.mtime - stat.mtime) / 1000)


def delete_tree_ops(zk: KazooClient, path: str) -> list[Op]:
    """Ops deleting ``path`` and everything below it, children first."""
    ops: list[Op] = []
    for child in zk.get_children(path):
        ops.extend(delete_tree_ops(zk, f"{path}/{child}"))
    ops.append(("delete", path, -1))
    return ops
