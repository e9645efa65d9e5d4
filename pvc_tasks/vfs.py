"""The VFs a VM uses: found in its XML, claimed and released in ZooKeeper by the VM's own transactions.

A VM's XML names a VF of its node in one of two ways:
    ``macvtap``  ``<interface type='direct'><source dev='ens1f0v3' mode='passthrough'/>``: by interface name;
    ``hostdev``  ``<interface type='hostdev'>`` or ``<hostdev mode='subsystem' type='pci'>`` whose
                 ``<source><address .../>`` is the VF's PCI address (PCI passthrough).
A device that names no VF of the node (macvtap on a plain NIC, a passed-through GPU) is not SR-IOV: left alone.

Life of a VF with a VM (``used`` / ``used_by`` on the VF; the VM's XML is the VM's side of the same fact)
    define     every VF the XML names on the chosen node must be free: not used, and not reserved by a migration
               or recovery coming to that node. The define transaction marks them used by the VM (version-checked
               on ``used``, with a check of the node's reservations).
    undefine   the transaction that removes the VM record (also a rolled-back define) releases them.
    migrate    a VM with a hostdev VF always migrates by shutdown: a PCI device cannot be live-migrated, and
               forcing live is refused. For EACH VF the VM uses, the target must have a free VF on a PF of the same
               name (the same VF name is preferred); a node without one is no candidate. The picked VFs join the
               job's reservation on the target, and the target's XML (source dev / PCI address rewritten) is made at
               submit and kept in the job. Nothing about VFs is written before the commit on the target, whose ONE
               transaction sets the VM's node and XML, marks the target's VFs used and releases the source's. An
               abort before it leaves both sides as they were; the reservation goes with the job.
    recover    as migrate, from the fenced node: the recovery's commit moves the VF use to the target.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from pvc_tasks.errors import Conflict, Invalid
from pvc_tasks.jobs import Op
from pvc_tasks.placement import choose_target, read_reserved
from pvc_tasks.state import VF_USE_KEYS, delete_tree_ops, vf_records
from zk_schema import Schema

__all__ = ["PCI_KEYS", "Placement", "VfUse", "claim_ops", "commit_ops", "for_define", "hostdev_names", "named_devices",
           "pci_of_record", "place", "plan", "release_ops", "remove_vm_ops", "reserved_names", "rewrite", "uses",
           "vm_uses"]

_PCI = ("domain", "bus", "slot", "function")


@dataclass(frozen=True)
class VfUse:
    """One VF a VM's XML names: how (``macvtap`` | ``hostdev``), and the VF's record on the VM's node."""

    mode: str
    vf: dict

    @property
    def name(self) -> str:
        return self.vf["name"]


def _pci_of(element: ET.Element | None) -> tuple[int, ...] | None:
    if element is None or not all(element.get(a) for a in _PCI):
        return None
    try:
        return tuple(int(element.get(a, ""), 0) for a in _PCI)
    except ValueError:
        return None


#: The keys of a VF record that hold its PCI address.
PCI_KEYS = tuple(f"pci.{a}" for a in _PCI)


def pci_of_record(record: dict) -> tuple[int, ...] | None:
    """A VF record's PCI address (domain, bus, slot, function), None when it has none."""
    try:
        return tuple(int(record.get(f"pci.{a}") or "", 0) for a in _PCI)
    except ValueError:
        return None


def named_devices(root: ET.Element):
    """(mode, element to rewrite, macvtap dev or None, PCI tuple or None) for every candidate device."""
    for iface in root.iter("interface"):
        source = iface.find("source")
        if iface.get("type") == "direct" and source is not None and source.get("dev"):
            yield "macvtap", source, source.get("dev"), None
        elif iface.get("type") == "hostdev" and source is not None:
            yield "hostdev", source.find("address"), None, _pci_of(source.find("address"))
    for hostdev in root.iter("hostdev"):
        source = hostdev.find("source")
        if hostdev.get("type") == "pci" and source is not None:
            yield "hostdev", source.find("address"), None, _pci_of(source.find("address"))


def uses(xml: str | ET.Element, node_vfs: list[dict]) -> list[VfUse]:
    """The VFs of a node (``node_vfs``: its VF records) that the domain XML (text, or a parsed tree such as
    libvirt's reading of it) names, in document order."""
    by_name = {r["name"]: r for r in node_vfs}
    by_pci = {pci_of_record(r): r for r in node_vfs}
    found = []
    for mode, _element, dev, pci in named_devices(xml if isinstance(xml, ET.Element) else ET.fromstring(xml)):
        record = by_name.get(dev or "") if mode == "macvtap" else by_pci.get(pci)
        if record is not None:
            found.append(VfUse(mode, record))
    return found


def vm_uses(zk: KazooClient, schema: Schema, node: str, xml: str) -> list[VfUse]:
    return uses(xml, vf_records(zk, schema, node, only=VF_USE_KEYS)) if node and xml and _has_devices(xml) else []


def _has_devices(xml: str) -> bool:
    """Cheap test: does the XML have any device that could name a VF (most VMs have none)?"""
    return "direct" in xml or "hostdev" in xml


def for_define(zk: KazooClient, schema: Schema, reading: ET.Element,
               nodes: list[str]) -> dict[str, list[VfUse] | Conflict]:
    """Per node: the VFs a new VM would use there, by libvirt's ``reading`` of its XML, or why that node cannot take
    it (a VF the XML names elsewhere in the cluster is missing here, or is used or reserved). {} when the XML names
    no VF anywhere."""
    if reading.find("devices/interface") is None and reading.find("devices/hostdev") is None:
        return {}
    found = {node: uses(reading, vf_records(zk, schema, node, only=VF_USE_KEYS)) for node in nodes}
    for node, mine in found.items():
        twice = sorted({u.name for u in mine if [v.name for v in mine].count(u.name) > 1})
        if twice:  # its claim would be written twice in one transaction, which can never commit
            raise Invalid(f"xml: VF {twice[0]} of node {node} is named by two devices (by name and by PCI "
                          f"address, or twice)", details={"xml": [f"VF {twice[0]} named twice"]})
    wanted = max((len(f) for f in found.values()), default=0)
    if not wanted:
        return {}
    out: dict[str, list[VfUse] | Conflict] = {}
    for node, mine in found.items():
        held = reserved_names(read_reserved(zk, schema, node)[0])
        taken = [u for u in mine if u.vf["used"] == "true" or u.name in held]
        if len(mine) < wanted:
            out[node] = Conflict(f"node {node} lacks {wanted - len(mine)} of the {wanted} VF(s) the XML names",
                                 code="no_target", details={"node": node})
        elif taken:
            who = taken[0].vf["used_by"] or f"job {held.get(taken[0].name)}"
            out[node] = Conflict(f"VF {taken[0].name} on {node} is already in use by {who}", code="vf_in_use",
                                 details={"node": node, "vf": taken[0].name})
        else:
            out[node] = mine
    return out


def hostdev_names(found: list[VfUse]) -> list[str]:
    return [u.name for u in found if u.mode == "hostdev"]


def reserved_names(reserved: dict, except_job: str = "") -> dict[str, str]:
    """VF name -> job id, for VFs held by reservations on a node (``node.reserved``), except ``except_job``'s."""
    return {vf: job for job, entry in reserved.items() if job != except_job for vf in entry.get("vfs", [])}


def plan(vm: str, found: list[VfUse], target: str, target_vfs: list[dict], reserved: dict,
         own_job: str = "") -> dict[str, str]:
    """Source VF -> a free target VF on a PF of the same name (same name preferred); ``Conflict`` (no_target)
    naming the first VF the target cannot match."""
    held = reserved_names(reserved, own_job)
    free = [r for r in target_vfs if r["used"] != "true" and r["name"] not in held]
    mapping: dict[str, str] = {}
    for use in found:
        pool = [r for r in free if r["pf"] == use.vf["pf"] and r["name"] not in mapping.values()]
        if not pool:
            raise Conflict(f"target {target} has no free VF on PF {use.vf['pf']} for VM {vm}'s {use.mode} VF "
                           f"{use.name}", code="no_target", details={"node": target, "pf": use.vf["pf"]})
        same = [r for r in pool if r["name"] == use.name]
        mapping[use.name] = (same or pool)[0]["name"]
    return mapping


def rewrite(xml: str, found: list[VfUse], mapping: dict[str, str], target_vfs: list[dict]) -> str:
    """The XML with each used VF replaced by its mapped target VF (macvtap: source dev; hostdev: PCI address)."""
    root = ET.fromstring(xml)
    by_name = {r["name"]: r for r in target_vfs}
    source_pci = {pci_of_record(u.vf): u.name for u in found if u.mode == "hostdev"}
    for mode, element, dev, pci in named_devices(root):
        if mode == "macvtap" and dev in mapping:
            element.set("dev", by_name[mapping[dev]]["name"])
        elif mode == "hostdev" and pci in source_pci and element is not None:
            new = by_name[mapping[source_pci[pci]]]
            for attribute in _PCI:
                element.set(attribute, new[f"pci.{attribute}"])
    return ET.tostring(root, encoding="unicode")


# ---- transaction ops --------------------------------------------------------------------------------------------
def _mark(schema: Schema, node: str, vf: str, vm: str, version: int = -1) -> list[Op]:
    return [("set", schema.path("sriov_vf.used", node, vf), b"true" if vm else b"false", version),
            ("set", schema.path("sriov_vf.used_by", node, vf), vm.encode(), -1)]


def claim_ops(zk: KazooClient, schema: Schema, node: str, vm: str, found: list[VfUse]) -> list[Op]:
    """Mark the VFs used by ``vm`` (``Conflict`` vf_in_use when one is taken), version-checked on each ``used``
    key and on the node's reservations, for the VM's creating transaction."""
    if not found:
        return []
    reserved, version = read_reserved(zk, schema, node)
    held = reserved_names(reserved)
    ops: list[Op] = [("check", schema.path("node.reserved", node), version)]
    for use in found:
        data, stat = zk.get(schema.path("sriov_vf.used", node, use.name))
        owner = zk.get(schema.path("sriov_vf.used_by", node, use.name))[0].decode()
        if data == b"true" or use.name in held:
            by = f"VM {owner}" if data == b"true" else f"job {held[use.name]} (a VM on its way to {node})"
            raise Conflict(f"VF {use.name} on {node} is already in use by {by}", code="vf_in_use",
                           details={"node": node, "vf": use.name})
        ops += _mark(schema, node, use.name, vm, stat.version)
    return ops


def release_ops(zk: KazooClient, schema: Schema, node: str, vm: str) -> list[Op]:
    """Release every VF of ``node`` that ``vm`` uses."""
    mine = [r["name"] for r in vf_records(zk, schema, node, only=("used_by",)) if r["used_by"] == vm]
    return [op for vf in mine for op in _mark(schema, node, vf, "")]


def commit_ops(schema: Schema, vm: str, source: str, target: str, params: dict) -> list[Op]:
    """For a migration's or recovery's commit: the VM's new XML, the target's VFs used, the source's released (the
    VM's active job has held them since the pick, so nobody else changed them)."""
    mapping = params.get("vf_map") or {}
    if not mapping:
        return []
    ops: list[Op] = [("set", schema.path("domain.xml", vm), params["target_xml"].encode(), -1)]
    for source_vf, target_vf in mapping.items():
        ops += _mark(schema, target, target_vf, vm) + _mark(schema, source, source_vf, "")
    return ops


@dataclass(frozen=True)
class Placement:
    """Where a VM goes and what it takes there: the target, the target's reservations as read (with the version the
    creating transaction checks), the VF pick made from that same read, and check ops pinning the picked VFs."""

    node: str
    reserved: dict
    version: int
    vf_map: dict[str, str]
    target_xml: str
    checks: list[Op]

    def job_params(self) -> dict:
        """What the job carries for its commit (nothing for a VM without VFs)."""
        return {"vf_map": self.vf_map, "target_xml": self.target_xml} if self.vf_map else {}


def place(zk: KazooClient, schema: Schema, vm: dict, found: list[VfUse], explicit: str | None = None,
          states: tuple[str, ...] = ("ready",)) -> Placement:
    """``placement.choose_target`` for a VM using the VFs ``found`` on its node: only nodes with a free VF on each
    of those PFs are candidates (an explicit target without one: ``Conflict`` no_target naming the PF)."""
    target_vfs: dict[str, list[dict]] = {}

    def fits(node: str) -> None:
        target_vfs[node] = vf_records(zk, schema, node, only=VF_USE_KEYS)
        plan(vm["name"], found, node, target_vfs[node], read_reserved(zk, schema, node)[0])

    node = choose_target(zk, schema, vm, explicit, states, fits=fits if found else None)
    reserved, version = read_reserved(zk, schema, node)
    if not found:
        return Placement(node, reserved, version, {}, "", [])
    mapping = plan(vm["name"], found, node, target_vfs[node], reserved)
    checks: list[Op] = []
    for vf in mapping.values():
        data, stat = zk.get(schema.path("sriov_vf.used", node, vf))
        if data == b"true":  # claimed since the records were read
            raise Conflict(f"VF {vf} on {node} was taken meanwhile; retry", code="busy")
        checks.append(("check", schema.path("sriov_vf.used", node, vf), stat.version))
    return Placement(node, reserved, version, mapping, rewrite(vm["xml"], found, mapping, target_vfs[node]), checks)


def remove_vm_ops(zk: KazooClient, schema: Schema, vm: str) -> list[Op]:
    """Ops deleting a VM's record, its UUID's index entry (schema 8) and releasing the VFs it holds on its node
    (undefine, a rolled-back define)."""
    root = schema.path("domain", vm)
    if zk.exists(root) is None:
        return []
    node = zk.get(schema.path("domain.node", vm))[0].decode()
    return (release_ops(zk, schema, node, vm) if node else []) + delete_tree_ops(zk, root) + _uuid_entry_ops(
        zk, schema, vm)


def _uuid_entry_ops(zk: KazooClient, schema: Schema, vm: str) -> list[Op]:
    if "domain_uuid" not in schema.roots:
        return []
    vm_uuid = zk.get(schema.path("domain.uuid", vm))[0].decode()
    if not vm_uuid:
        return []
    path = schema.path("domain_uuid", vm_uuid)
    try:
        owner, stat = zk.get(path)
    except NoNodeError:
        return []  # a VM defined before the index, whose UUID another VM shared: the index names the other
    return [("delete", path, stat.version)] if owner.decode() == vm else []
