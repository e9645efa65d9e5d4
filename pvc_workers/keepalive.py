"""Keepalive and inventory: two threads, so that a slow hypervisor never delays the keepalive.

* ``Inventory`` asks the hypervisor for resources and domains every interval and keeps the latest figures; it
  also re-reads the node's SR-IOV NICs (``pvc_workers.vf_inventory``), which writes only when they changed. A
  step that changed a VM here gets the figures from ``after(vm)``, which reads only that VM again and sums the
  rest from the last full pass (the step writes them in its own transaction).
* ``Keepalive`` writes, every interval, the node's keepalive timestamp together with the latest inventory in ONE
  transaction: a reader never sees a fresh keepalive beside stale resources from another moment. It touches only
  ZooKeeper, so it keeps beating while a task or libvirt is slow.

Figures (MiB / count): memory.total from libvirt; memory.allocated = memory of running VMs; memory.provisioned =
memory of every defined VM; memory.free = total - allocated; memory.used = allocated; vcpu.allocated = vCPUs of
running VMs; vms.total / vms.running; load = the host's 1-minute load average.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from kazoo.exceptions import KazooException

from pvc_tasks.context import DomainFacts, NodeContext, NodeResources
from pvc_tasks.jobs import commit

__all__ = ["Inventory", "Keepalive"]

log = logging.getLogger(__name__)


class Inventory(threading.Thread):
    """Polls the hypervisor; ``figures`` holds the latest node key values."""

    def __init__(self, ctx: NodeContext, stop: threading.Event, nic_sync: Callable[[], object] | None = None) -> None:
        super().__init__(name="inventory", daemon=True)
        self.ctx, self.stop, self.nic_sync = ctx, stop, nic_sync
        self._lock = threading.Lock()
        self._domains: dict[str, DomainFacts] = {}
        self._resources: NodeResources | None = None
        #: VMs a step re-read while a full listing ran: their step's facts are newer than the listing's.
        self._touched: set[str] = set()
        self.figures: dict[str, str] = {}
        self.refresh()

    def refresh(self) -> dict[str, str]:
        """Everything from the hypervisor again (every interval): this also catches what no step did, a guest
        that powered itself off."""
        with self._lock:
            self._touched = set()
        resources, domains = self.ctx.hypervisor.resources(), self.ctx.hypervisor.domains()
        with self._lock:
            for vm in self._touched:
                if vm in self._domains:
                    domains[vm] = self._domains[vm]
                else:
                    domains.pop(vm, None)
            self._resources, self._domains = resources, domains
            return self._figure()

    def after(self, *vms: str) -> dict[str, str]:
        """The figures after a step changed ``vms``: only those domains are read again. A full listing costs a
        libvirt call or three per domain, and every step end on a node with hundreds of VMs paid it: a flush of
        500 VMs grew faster than its size."""
        facts = {vm: self.ctx.hypervisor.facts(vm) for vm in vms if vm}
        with self._lock:
            self._touched.update(facts)
            for vm, fact in facts.items():
                if fact is None:
                    self._domains.pop(vm, None)
                else:
                    self._domains[vm] = fact
            return self._figure()

    def _figure(self) -> dict[str, str]:
        res, domains = self._resources, self._domains.values()
        running = [d for d in domains if d.state in ("running", "paused")]
        allocated = sum(d.memory_mib for d in running)
        self.figures = {
            "memory.total": str(res.memory_total_mib),
            "memory.allocated": str(allocated),
            "memory.used": str(allocated),
            "memory.free": str(max(res.memory_total_mib - allocated, 0)),
            "memory.provisioned": str(sum(d.memory_mib for d in domains)),
            "vcpu.total": str(res.cpus),
            "vcpu.allocated": str(sum(d.vcpus for d in running)),
            "vms.total": str(len(domains)),
            "vms.running": str(len(running)),
            "load": f"{res.load:.2f}",
        }
        return self.figures

    def run(self) -> None:
        while not self.stop.wait(self.ctx.settings.keepalive_interval):
            try:
                self.refresh()
            except Exception:
                log.exception("inventory of %s failed", self.ctx.node)
            try:
                if self.nic_sync is not None:
                    self.nic_sync()  # writes to ZooKeeper only when the NICs changed
            except Exception:
                log.exception("SR-IOV inventory of %s failed", self.ctx.node)


class Keepalive(threading.Thread):
    """Writes the keepalive timestamp and the inventory's figures every interval."""

    def __init__(self, ctx: NodeContext, inventory: Inventory, stop: threading.Event) -> None:
        super().__init__(name="keepalive", daemon=True)
        self.ctx, self.inventory, self.stop = ctx, inventory, stop

    def beat(self) -> None:
        schema, node = self.ctx.schema, self.ctx.node
        values = dict(self.inventory.figures, keepalive=f"{time.time():.3f}")
        results = commit(self.ctx.zk, [("set", schema.path(f"node.{k}", node), v.encode(), -1)
                                       for k, v in values.items()])
        # The keepalive's stat, stamped by ZooKeeper's leader just before the commit returned: the monitor's clock.
        self.ctx.last_beat = (results[-1].mtime, time.monotonic())

    def run(self) -> None:
        interval = self.ctx.settings.keepalive_interval
        while True:
            try:
                self.beat()
            except KazooException as exc:
                log.warning("keepalive of %s not written: %s", self.ctx.node, exc)
            if self.stop.wait(interval):
                return
