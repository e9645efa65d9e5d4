"""Node and cluster faults: JSON lists ``[{"id", "message", "since"}]`` in ``node.faults`` and ``base.faults``.

Each writer owns its fault ids (``ipmi``, ``keepalive_missed``, ``fence_storm``, ``step_hung``, ``jobs_over_bound``,
``flush``) and changes the list with a version-checked write, so writers of other faults in the same list are never
overwritten. ``fault_ops`` builds that write as a transaction op, so a fault can be set in the very transaction that
causes it (a flush that ends failed writes its ``flush`` fault with its own end).
"""

from __future__ import annotations

import json
import time

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from pvc_tasks.jobs import Op

__all__ = ["fault_ops"]


def fault_ops(zk: KazooClient, path: str, fault_id: str, message: str | None) -> list[Op]:
    """The version-checked write adding (``message``) or clearing (None) the fault ``fault_id`` in the list at
    ``path``; no op when the list already says so (or does not exist). A fault keeps its ``since`` while its
    message changes."""
    try:
        data, stat = zk.get(path)
    except NoNodeError:
        return []
    try:
        faults = [f for f in json.loads(data or b"[]") if isinstance(f, dict)]
    except ValueError:
        faults = []
    current = next((f for f in faults if f.get("id") == fault_id), None)
    if message is None and current is None:
        return []
    if message is not None and current is not None and current.get("message") == message:
        return []
    faults = [f for f in faults if f.get("id") != fault_id]
    if message is not None:
        faults.append({"id": fault_id, "message": message,
                       "since": current["since"] if current else round(time.time(), 3)})
    return [("set", path, json.dumps(faults).encode(), stat.version)]
