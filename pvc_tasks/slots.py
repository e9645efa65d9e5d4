"""Migration concurrency limits: at most N migrations out of a node, into a node, and in the whole cluster.

The cluster's migration slots are ONE znode, ``base.migrations``: a JSON object job id -> {"source", "target",
"priority"}. A migration takes its slot in the transaction that creates the job (version-checked: of two requests
racing for the last slot exactly one wins) and gives it back in the transaction that ends the job. Limits are the
cluster config keys ``config.limits.migrate_out_per_node``, ``migrate_in_per_node`` and ``migrate_cluster``
(defaults 2, 2, 5, in the spirit of KubeVirt's 2 per node / 5 per cluster; ``pvc cluster limits`` changes them).

Priority: flush, unflush and fencing work (``priority`` "node") goes ahead of user requests ("user"): while any
node has a live flush or unflush job (its ``active_job``; not its domain state, which a failed job must never leave
blocking), a user-requested migration is refused (409 ``migration_limit``, retry later), so an operator's drain is
never starved by a stream of user migrations.
"""

from __future__ import annotations

import json
from collections import Counter

from kazoo.client import KazooClient

from pvc_tasks.errors import Conflict
from pvc_tasks.jobs import Op
from pvc_tasks.state import names
from zk_schema import Schema

__all__ = ["LIMIT_KEYS", "admit_op", "limit_fields", "limits", "read_slots", "release_ops", "room"]

LIMIT_KEYS = {"out": "base.config.limits.migrate_out_per_node", "in": "base.config.limits.migrate_in_per_node",
              "cluster": "base.config.limits.migrate_cluster"}


def limit_fields(zk: KazooClient, schema: Schema) -> dict[str, int]:
    """The limits by their config key's last name (``migrate_out_per_node``, ...), as the API shows them."""
    current = limits(zk, schema)
    return {LIMIT_KEYS[short].rsplit(".", 1)[1]: value for short, value in current.items()}


def read_slots(zk: KazooClient, schema: Schema) -> tuple[dict, int]:
    data, stat = zk.get(schema.path("base.migrations"))
    try:
        return json.loads(data or b"{}"), stat.version
    except ValueError:
        return {}, stat.version


def limits(zk: KazooClient, schema: Schema) -> dict[str, int]:
    pending = {name: zk.get_async(schema.path(key)) for name, key in LIMIT_KEYS.items()}
    return {name: int(result.get()[0].decode() or 0) for name, result in pending.items()}


def _node_work_in_progress(zk: KazooClient, schema: Schema) -> list[str]:
    """Nodes with a live flush or unflush: a node's ``active_job`` is set in the transaction that creates that job
    and cleared in the one that ends it, whoever ends it, so a leftover state never blocks user migrations."""
    nodes = names(zk, schema, "base.node")
    pending = [(n, zk.get_async(schema.path("node.active_job", n))) for n in nodes]
    return [n for n, result in pending if result.get()[0]]


def admit_op(zk: KazooClient, schema: Schema, job_id: str, source: str, target: str, priority: str) -> Op:
    """The op taking a slot for ``job_id`` (version-checked), or ``Conflict`` when a limit is reached."""
    slots, version = read_slots(zk, schema)
    limit = limits(zk, schema)
    out = Counter(s["source"] for s in slots.values())
    into = Counter(s["target"] for s in slots.values())
    if priority == "user":
        busy = _node_work_in_progress(zk, schema)
        if busy:
            raise Conflict(f"node(s) {', '.join(busy)} are being flushed or unflushed, which goes ahead of "
                           f"user-requested migrations; retry when they are done", code="migration_limit",
                           details={"nodes": busy})
    if len(slots) >= limit["cluster"]:
        raise Conflict(f"{len(slots)} migrations are running, the cluster's limit; retry later",
                       code="migration_limit", details={"limit": "cluster"})
    if out[source] >= limit["out"]:
        raise Conflict(f"{out[source]} migrations are leaving {source}, its limit; retry later",
                       code="migration_limit", details={"limit": "out", "node": source})
    if into[target] >= limit["in"]:
        raise Conflict(f"{into[target]} migrations are arriving on {target}, its limit; retry later",
                       code="migration_limit", details={"limit": "in", "node": target})
    slots[job_id] = {"source": source, "target": target, "priority": priority}
    return ("set", schema.path("base.migrations"), json.dumps(slots, sort_keys=True).encode(), version)


def room(zk: KazooClient, schema: Schema, source: str = "", target: str = "") -> tuple[int, str]:
    """How many more migrations out of ``source`` (or into ``target``) the limits admit now, and which limit
    binds: a flush's pass stops there instead of trying a submission it knows will be refused. Advisory: each
    submission still takes its slot version-checked (``admit_op``)."""
    slots, _version = read_slots(zk, schema)
    limit = limits(zk, schema)
    free = {"the cluster's": limit["cluster"] - len(slots)}
    if source:
        free[f"{source}'s outgoing"] = limit["out"] - sum(s["source"] == source for s in slots.values())
    if target:
        free[f"{target}'s incoming"] = limit["in"] - sum(s["target"] == target for s in slots.values())
    binding = min(free, key=free.get)
    return max(free[binding], 0), binding


def release_ops(zk: KazooClient, schema: Schema, job_id: str) -> list[Op]:
    slots, version = read_slots(zk, schema)
    if job_id not in slots:
        return []
    del slots[job_id]
    return [("set", schema.path("base.migrations"), json.dumps(slots, sort_keys=True).encode(), version)]
