"""The capacity guard of a flush: can every running VM of node N go somewhere else, counting the other drains?

A flush of N is refused with 409 ``insufficient_capacity`` (naming the VMs that would have to be shut down and the
shortfall in MiB) unless the operator allows shutdowns (``allow_shutdown``). The estimate (``drain``, pure):

* targets: nodes whose worker is alive and whose domain state is ``ready``; a node that is flushing, flushed or
  unflushing is never a target (its own VMs are leaving, or it has none and must stay empty, or its VMs are
  coming back), and neither is N;
* demand: the running (or paused) VMs still on a node that is being drained, N last: the flushes accepted before
  this one have their VMs placed first, since they were promised the room;
* a VM whose migration is in flight (its job holds a reservation) is already counted in its target's free memory;
* placement: in the order a flush takes its VMs (``flush_order``: running first, largest first), each VM on the
  allowed target with the most free memory, as the default ``mem`` selector chooses.

It is an estimate of memory only (not VFs, not the VM's own selector): a VM that finds no target when its turn
comes is still never shut down without ``allow_shutdown`` (it stays on N and the flush ends failed, see
``pvc_tasks.flush``). The decision holds under concurrent requests: the transaction that creates the flush checks
the version of every node's domain state it read (``state_checks``), so of two flushes that would each fit alone
but not together, the second one's transaction fails and it is decided again with the first counted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from kazoo.client import KazooClient

from pvc_tasks import placement, selector
from pvc_tasks.errors import Conflict
from pvc_tasks.jobs import Op
from pvc_tasks.state import domain_records_matching, names, node_records
from zk_schema import Schema

__all__ = ["ACTIVE", "PLACEMENT_KEYS", "Drain", "drain", "flush_order", "guard", "state_checks"]

#: VM states that need a running target (a paused VM keeps its memory).
ACTIVE = ("running", "paused")
#: The VM keys a flush's decisions read (not the XML): scans of every VM stay cheap.
PLACEMENT_KEYS = ("node", "state", "memory", "meta.node_limit", "meta.autostart", "active_job", "last_node")


def flush_order(vms: Iterable[dict]) -> list[dict]:
    """The order in which a flush takes a node's VMs: running ones first (they are the ones at risk), largest
    memory first (a big VM finds room before small ones have fragmented it), then by name (deterministic)."""
    return sorted(vms, key=lambda v: (v.get("state") not in ACTIVE, -int(v.get("memory") or 0), v["name"]))


@dataclass
class Drain:
    """The estimate for one node: VMs that would have to be shut down and their memory."""

    node: str
    shut_down: list[str] = field(default_factory=list)
    shortfall_mib: int = 0
    targets: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return not self.shut_down


def drain(nodes: list[dict], vms: list[dict], node: str, draining: Iterable[str], in_flight: Iterable[str] = ()
          ) -> Drain:
    """Pure: place the active VMs of the ``draining`` nodes, then ``node``'s, on the available targets.
    ``in_flight``: job ids holding a reservation (their VM is already counted where it goes)."""
    others = [n for n in sorted(set(draining)) if n != node]
    leaving = {*others, node}
    # Copies of the other nodes whose allocated memory grows as VMs are placed; the selector applies its own rules
    # (alive, ready, node_limit, fits) and its own choice ("mem": most free, ties to the first name).
    pool = [dict(n) for n in nodes if n["name"] not in leaving]
    by_name = {n["name"]: n for n in pool}
    flying = set(in_flight)
    result = Drain(node, targets=[n["name"] for n in selector.candidates(pool, 0)])
    for source in [*others, node]:
        active = [v for v in vms if v.get("node") == source and v.get("state") in ACTIVE
                  and (v.get("active_job") or "") not in flying]
        for vm in flush_order(active):
            memory = int(vm.get("memory") or 0)
            chosen = selector.select(pool, "mem", memory, placement.node_limit(vm))
            if chosen is not None:
                target = by_name[chosen]
                target["memory.allocated"] = str(float(target.get("memory.allocated") or 0) + memory)
            elif source == node:
                result.shut_down.append(vm["name"])
                result.shortfall_mib += memory
    return result


def state_checks(zk: KazooClient, schema: Schema, skip: str) -> list[Op]:
    """Version checks of every node's domain state but ``skip``'s (read BEFORE the records the decision uses, so
    a change in between fails the transaction instead of slipping past it)."""
    paths = [schema.path("node.domain_state", n) for n in names(zk, schema, "base.node") if n != skip]
    pending = [(path, zk.exists_async(path)) for path in paths]
    return [("check", path, stat.version) for path, result in pending if (stat := result.get()) is not None]


def guard(zk: KazooClient, schema: Schema, node: str) -> list[Op]:
    """The version checks under which flushing ``node`` fits; ``Conflict`` insufficient_capacity otherwise."""
    checks = state_checks(zk, schema, node)
    nodes = node_records(zk, schema)
    draining = [n["name"] for n in nodes if n.get("domain_state") == "flush"]
    in_flight = [job for n in nodes for job in selector.reservations(n)]
    leaving = {node, *draining}
    vms = domain_records_matching(zk, schema, ("node",), lambda r: r["node"] in leaving, PLACEMENT_KEYS)
    estimate = drain(nodes, vms, node, draining, in_flight)
    if not estimate.fits:
        unavailable = sorted(n["name"] for n in nodes if n["name"] != node and n["name"] not in estimate.targets)
        raise Conflict(
            f"flushing {node} would shut down {len(estimate.shut_down)} running VM(s) ({', '.join(estimate.shut_down)})"
            f": {estimate.shortfall_mib} MiB more than the other ready nodes ({', '.join(estimate.targets) or 'none'})"
            f" can take" + (f"; not available: {', '.join(unavailable)}" if unavailable else "")
            + f". Free room first, or flush with allow_shutdown (`pvc node flush {node} --allow-shutdown`) to shut "
              f"them down (they are marked autostart, and `pvc node ready {node}` starts them again)",
            code="insufficient_capacity",
            details={"vms": estimate.shut_down, "shortfall_mib": estimate.shortfall_mib,
                     "targets": estimate.targets, "unavailable": unavailable})
    return checks
