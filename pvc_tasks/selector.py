"""Choosing a node for a VM: pure functions over node records, no I/O.

Methods (the VM's ``node_selector`` meta, else the cluster's ``migration_selector``):

    mem      most free memory (total - allocated to running VMs - reserved by in-flight migrations)
    memprov  most memory not provisioned to VMs, running or not (reservations count as provisioned)
    load     lowest load average
    vcpus    fewest allocated vCPUs (reservations count)
    vms      fewest VMs (each reservation counts as one)

Reservations (``node.reserved``, a JSON object job id -> {"memory", "vcpus"}) are VMs on their way to the node;
counting them is what keeps two parallel placements from both picking the node with the last free room.

Candidates are alive, in domain state ``ready``, inside the VM's ``node_limit`` (when set), not excluded (the
source of a migration), and the VM must fit in free memory. Ties go to the node whose name sorts first, so the
choice is deterministic.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

__all__ = ["FIT_KEYS", "KEYS", "METHODS", "candidates", "free_memory", "keys_for", "reservations", "select"]

METHODS = ("mem", "memprov", "load", "vcpus", "vms")
#: The node keys the selector reads: placement fetches only these (``alive`` comes with every node record).
KEYS = ("domain_state", "memory.total", "memory.allocated", "memory.provisioned", "reserved", "load",
        "vcpu.allocated", "vms.total")


def _num(record: dict, key: str) -> float:
    try:
        return float(record.get(key) or 0)
    except ValueError:
        return 0.0


def reservations(record: dict) -> dict[str, dict]:
    """The node's reservations: job id -> {"memory", "vcpus"[, "vfs"]} (unreadable entries left out)."""
    try:
        entries = json.loads(record.get("reserved") or "{}")
    except ValueError:
        return {}
    return {k: v for k, v in entries.items() if isinstance(v, dict)} if isinstance(entries, dict) else {}


def _reserved(record: dict) -> tuple[float, float, int]:
    """(memory MiB, vCPUs, count) reserved on the node by in-flight jobs."""
    values = list(reservations(record).values())
    return (sum(float(e.get("memory", 0)) for e in values), sum(float(e.get("vcpus", 0)) for e in values),
            len(values))


def free_memory(record: dict) -> float:
    """MiB a new VM may use on the node: total - allocated - reserved."""
    return _num(record, "memory.total") - _num(record, "memory.allocated") - _reserved(record)[0]


_SCORES = {
    # Higher is better for every score, so one max() serves all methods.
    "mem": free_memory,
    "memprov": lambda r: _num(r, "memory.total") - _num(r, "memory.provisioned") - _reserved(r)[0],
    "load": lambda r: -_num(r, "load"),
    "vcpus": lambda r: -(_num(r, "vcpu.allocated") + _reserved(r)[1]),
    "vms": lambda r: -(_num(r, "vms.total") + _reserved(r)[2]),
}


#: The keys every choice reads (is the node ready, does the VM fit), and what each method's score adds to them.
FIT_KEYS = ("domain_state", "memory.total", "memory.allocated", "reserved")
_SCORE_KEYS = {"mem": (), "memprov": ("memory.provisioned",), "load": ("load",), "vcpus": ("vcpu.allocated",),
               "vms": ("vms.total",)}


def keys_for(method: str) -> tuple[str, ...]:
    """The node keys ``select(nodes, method, ...)`` reads: placement fetches 4 or 5 keys per node, not all of
    ``KEYS`` (an unknown method gets them all; ``select`` refuses it)."""
    return FIT_KEYS + _SCORE_KEYS[method] if method in _SCORE_KEYS else KEYS


def candidates(nodes: Iterable[dict], memory_mib: int, node_limit: Iterable[str] = (),
               exclude: Iterable[str] = ()) -> list[dict]:
    """Nodes that may take a VM needing ``memory_mib``."""
    limit, excluded = set(node_limit), set(exclude)
    return [n for n in nodes
            if n.get("alive") and n.get("domain_state") == "ready"
            and (not limit or n["name"] in limit) and n["name"] not in excluded
            and free_memory(n) >= memory_mib]


def select(nodes: Iterable[dict], method: str, memory_mib: int, node_limit: Iterable[str] = (),
           exclude: Iterable[str] = ()) -> str | None:
    """The best node name by ``method``, or None when nothing fits."""
    if method not in _SCORES:
        raise ValueError(f"unknown selector {method!r}; choose one of {', '.join(METHODS)}")
    pool = candidates(nodes, memory_mib, node_limit, exclude)
    if not pool:
        return None
    # Sort by name first: max() keeps the first of equal scores, which makes ties deterministic.
    return max(sorted(pool, key=lambda n: n["name"]), key=_SCORES[method])["name"]
