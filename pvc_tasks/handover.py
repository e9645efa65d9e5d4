"""Moving the primary role by hand: ``pvc node primary N`` and ``pvc node secondary N``.

The API only records the operator's request in ``config.primary_request``; the coordinators' election carries it
out (``pvc_workers.election``: the holder relinquishes, the requested node takes over, its monitor and the
``cluster`` queue move with the role, and cluster work queued meanwhile waits in the broker for the new primary).
A request that cannot be carried out is refused here instead of recorded: a node that is not a coordinator or
whose worker is absent cannot take over, and the only live coordinator cannot step down.
"""

from __future__ import annotations

import json
import time

from kazoo.client import KazooClient

from pvc_tasks.errors import Conflict
from pvc_tasks.jobs import Origin
from pvc_tasks.state import node_record, node_records
from zk_schema import Schema

__all__ = ["request_handover"]


def request_handover(zk: KazooClient, schema: Schema, node: str, want: str, origin: Origin | None = None) -> dict:
    """Ask for ``node`` to become primary (``want`` "primary") or to stop being it ("secondary"); returns
    ``{"node", "want", "primary", "done"}`` (``done``: nothing to do, it already is so)."""
    if "base.config.primary_request" not in schema.keys:
        raise Conflict(f"the cluster's schema ({schema.version}) predates primary requests: run `pvc cluster "
                       f"upgrade` first", code="schema_too_old")
    record = node_record(zk, schema, node)
    if record["router_state"] == "client":
        raise Conflict(f"node {node} is not a coordinator (coordinator = false): it never leads",
                       code="not_coordinator", details={"node": node})
    primary = zk.get(schema.path("base.config.primary_node"))[0].decode()
    answer = {"node": node, "want": want, "primary": primary, "done": (primary == node) == (want == "primary")}
    if answer["done"]:
        return answer
    if want == "primary" and not record["alive"]:
        raise Conflict(f"node {node}'s worker is not running: it cannot take over", code="node_unavailable",
                       details={"node": node})
    others = [n["name"] for n in node_records(zk, schema)
              if n["alive"] and n["router_state"] != "client" and n["name"] != node]
    if want == "secondary" and not others:
        raise Conflict(f"node {node} is the only live coordinator: no other node can take over",
                       code="no_other_coordinator", details={"node": node})
    request = {"node": node, "want": want, "by": (origin.requested_by if origin else "") or "an operator",
               "since": round(time.time(), 3)}
    zk.set(schema.path("base.config.primary_request"), json.dumps(request).encode())
    return answer
