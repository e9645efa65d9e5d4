"""Node and cluster faults (JSON lists in ``node.faults`` and ``base.faults``), and this node's BMC check.

A fault is ``{"id", "message", "since"}`` (``pvc_tasks.faults``); each writer owns its ids (``ipmi`` is written by
the node itself, ``keepalive_missed`` and ``fence_storm`` by the primary's monitor, ``flush`` by the flush and
unflush jobs) and changes the list with compare-and-set, so writers never overwrite each other's faults.
``pvc cluster status`` and ``pvc node info`` show them.
"""

from __future__ import annotations

import logging

from kazoo.exceptions import BadVersionError

from pvc_tasks.context import NodeContext
from pvc_tasks.faults import fault_ops
from pvc_tasks.jobs import commit
from pvc_workers.ipmi import Bmc, IpmiError, power_status

__all__ = ["check_own_bmc", "set_fault"]

log = logging.getLogger(__name__)


def set_fault(ctx: NodeContext, key: str, fault_id: str, message: str | None, *instance: str) -> None:
    """Add (message) or clear (None) one fault in the JSON list at ``key`` (``pvc_tasks.faults``); retried when
    another writer changed the list at the same moment."""
    path = ctx.schema.path(key, *instance)
    for _attempt in range(10):
        ops = fault_ops(ctx.zk, path, fault_id, message)
        if not ops:
            return
        try:
            commit(ctx.zk, ops)
            return
        except BadVersionError:
            continue


def check_own_bmc(ctx: NodeContext) -> bool:
    """At start: can this node's BMC be reached with its configured credentials? Else a node fault ``ipmi``
    (fencing this node would fail), never silence. Runs in its own thread: a dead BMC costs one timeout there."""
    s = ctx.settings
    bmc = Bmc(s.ipmi_hostname, s.ipmi_username, s.ipmi_password, s.ipmi_timeout, s.ipmi_cipher_suite)
    try:
        on = power_status(bmc)
    except IpmiError as exc:
        log.error("IPMI check of %s failed: %s; this node cannot be fenced", ctx.node, exc)
        set_fault(ctx, "node.faults", "ipmi", f"IPMI unreachable: {exc}; this node cannot be fenced", ctx.node)
        return False
    log.info("IPMI of %s reachable (power %s)", ctx.node, "on" if on else "off")
    set_fault(ctx, "node.faults", "ipmi", None, ctx.node)
    return True
