"""This node's SR-IOV inventory in ZooKeeper: written at start, then whenever the NIC's inventory changes.

What it writes (one transaction per PF: the PF's keys and all its VFs')
    PF  ``phy``, ``mtu``, ``vfcount``: observed.
    VF  ``pf``, ``index``, ``pci.*``, ``mac``, ``mtu``: observed; ``phy_mac``: the MAC the VF had when first seen.
        A VF seen for the FIRST time also gets ``config.*`` from its live settings, so adopting a node changes
        nothing on its NICs. A VF already in ZooKeeper never gets ``config.*`` from the system: ZooKeeper's config
        is applied to the NIC (``pvc_tasks.sriov.apply_all``), never the other way round.

What it removes
    A PF no longer in the node's configuration (``sriov_pfs``), with all its VFs (a warning names any VM that used
    one). A VF its PF no longer has (fewer VFs configured) unless a VM uses it: that record stays, with an error in
    the log, because the VM's bookkeeping still points at it. A configured PF missing from the system (driver
    reload) is left as it is in ZooKeeper: absence may be brief, and its VFs' config must survive it.
"""

from __future__ import annotations

import logging

from pvc_tasks.context import NodeContext
from pvc_tasks.jobs import Op, commit
from pvc_tasks.state import delete_tree_ops, pf_records, supported, vf_records
from pvc_workers.sriov import IpLinkNic, PhysicalFunction, SimulatedNic, VirtualFunction

__all__ = ["VfInventory"]

log = logging.getLogger(__name__)


def _observed(vf: VirtualFunction) -> dict[str, str]:
    domain, bus, slot, function = vf.pci
    return {"pf": vf.pf, "index": str(vf.index), "mac": vf.mac, "mtu": str(vf.mtu), "pci.domain": domain,
            "pci.bus": bus, "pci.slot": slot, "pci.function": function}


class VfInventory:
    """Keeps ZooKeeper's PF/VF records of this node in line with its NICs; ``sync`` writes only differences."""

    def __init__(self, ctx: NodeContext, nic: IpLinkNic | SimulatedNic, pfs: list[str]) -> None:
        self.ctx, self.nic, self.pfs = ctx, nic, list(pfs)
        self._last: tuple | None = None

    def sync(self) -> dict[str, int]:
        """One pass; returns what changed ({} when the NIC looks as it did last time)."""
        if not supported(self.ctx.schema):
            return {}
        pfs, vfs = self.nic.inventory(self.pfs) if self.pfs else ([], [])
        snapshot = (tuple(pfs), tuple(vfs))
        if snapshot == self._last:
            return {}
        counts = {"pfs_removed": 0, "vfs_created": 0, "vfs_updated": 0, "vfs_removed": 0}
        zk, schema, node = self.ctx.zk, self.ctx.schema, self.ctx.node
        known_pfs = {r["name"]: r for r in pf_records(zk, schema, node)}
        known_vfs = {r["name"]: r for r in vf_records(zk, schema, node)}
        for name in sorted(set(known_pfs) - set(self.pfs)):
            gone = [r for r in known_vfs.values() if r["pf"] == name]
            users = sorted({r["used_by"] for r in gone if r["used"] == "true"})
            if users:
                log.warning("PF %s left the configuration of %s; its VFs go too, though VMs used them: %s",
                            name, node, ", ".join(users))
            ops = [op for r in gone for op in delete_tree_ops(zk, schema.root("sriov_vf", node, r["name"]))]
            commit(zk, ops + delete_tree_ops(zk, schema.root("sriov_pf", node, name)))
            counts["pfs_removed"] += 1
            counts["vfs_removed"] += len(gone)
        for pf in pfs:
            mine = [vf for vf in vfs if vf.pf == pf.name]
            ops = self._pf_ops(pf, known_pfs.get(pf.name)) + self._vf_ops(pf, mine, known_vfs, counts)
            if ops:
                commit(zk, ops)
        self._last = snapshot
        log.info("SR-IOV inventory of %s: %d PF(s), %d VF(s); %s", node, len(pfs), len(vfs), counts)
        return counts

    def vfs(self) -> tuple[frozenset[tuple[int, ...]], frozenset[str]]:
        """This node's VFs as its NICs showed them at the last ``sync`` (PCI addresses, interface names): what the
        node's XML check lets a VM name (``pvc_workers.xml_guard``), never ZooKeeper's records."""
        if self._last is None:
            return frozenset(), frozenset()
        found = self._last[1]
        return frozenset(tuple(int(p, 16) for p in vf.pci) for vf in found), frozenset(vf.name for vf in found)

    def _pf_ops(self, pf: PhysicalFunction, known: dict | None) -> list[Op]:
        schema, node = self.ctx.schema, self.ctx.node
        values = {"phy": pf.name, "mtu": str(pf.mtu), "vfcount": str(pf.vfcount)}
        if known is None:
            return [("create", p, d) for p, d in schema.create_ops("sriov_pf", node, pf.name, values=values)]
        return [("set", schema.path(f"sriov_pf.{k}", node, pf.name), v.encode(), -1)
                for k, v in values.items() if known.get(k) != v]

    def _vf_ops(self, pf: PhysicalFunction, vfs: list[VirtualFunction], known: dict[str, dict],
                counts: dict[str, int]) -> list[Op]:
        zk, schema, node = self.ctx.zk, self.ctx.schema, self.ctx.node
        ops: list[Op] = []
        for vf in vfs:
            observed = _observed(vf)
            record = known.get(vf.name)
            if record is None:
                live = {f"config.{k}": v for k, v in vf.live.items()}  # the adapters fill every setting
                values = {**observed, **live, "phy_mac": vf.mac}
                ops += [("create", p, d) for p, d in schema.create_ops("sriov_vf", node, vf.name, values=values)]
                counts["vfs_created"] += 1
                continue
            changed = [("set", schema.path(f"sriov_vf.{k}", node, vf.name), v.encode(), -1)
                       for k, v in observed.items() if record.get(k) != v]
            ops += changed
            counts["vfs_updated"] += bool(changed)
        present = {vf.name for vf in vfs}
        for name, record in sorted(known.items()):
            if record["pf"] != pf.name or name in present:
                continue
            if record["used"] == "true":
                log.error("VF %s vanished from PF %s on %s but VM %s uses it; its record is kept",
                          name, pf.name, node, record["used_by"])
                continue
            ops += delete_tree_ops(zk, schema.root("sriov_vf", node, name))
            counts["vfs_removed"] += 1
        return ops
