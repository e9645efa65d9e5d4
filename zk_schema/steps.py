"""Hand-written upgrade steps: data a new version derives from what the cluster holds, which a layout file alone
cannot express (``zk_schema.upgrade`` runs a version's step after its declarative plan, before it records the
version).

Each step is idempotent (it creates only what is missing), so a crashed upgrade runs it again safely. Reads are
issued asynchronously in one batch: a cluster of thousands of VMs and jobs is indexed in seconds, not minutes.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from kazoo.client import KazooClient
from kazoo.exceptions import NodeExistsError, NoNodeError

from zk_schema.schema import Schema

__all__ = ["STEPS", "index_8"]

#: Job states that are not terminal; a step of the layout may not import the job model (pvc_tasks imports us).
_UNFINISHED = ("queued", "running")


def _read_all(zk: KazooClient, paths: list[str]) -> list[bytes | None]:
    pending = [zk.get_async(p) for p in paths]
    values: list[bytes | None] = []
    for result in pending:
        try:
            values.append(result.get()[0])
        except NoNodeError:
            values.append(None)  # deleted meanwhile (an undefine, a pruned job): nothing to index
    return values


def _create_missing(zk: KazooClient, entries: list[tuple[str, bytes]]) -> int:
    pending = [zk.create_async(path, data) for path, data in entries]
    created = 0
    for result in pending:
        try:
            result.get()
            created += 1
        except NodeExistsError:
            # Indexed already (a re-run), or, for UUIDs, two VMs that shared one before schema 7 checked them: the
            # index names the first by name, and the other keeps running but cannot be found by its UUID.
            continue
    return created


def index_8(zk: KazooClient, new: Schema) -> dict[str, int]:
    """Fill schema 8's indexes: each VM's UUID (``domain_uuid``) and each unfinished job (``job_open``)."""
    vms = [names[0] for names in new.instances(zk, "domain")]
    uuids = _read_all(zk, [new.path("domain.uuid", vm) for vm in vms])
    entries = [(new.path("domain_uuid", u.decode()), vm.encode()) for vm, u in zip(vms, uuids) if u]
    indexed_vms = _create_missing(zk, entries)
    jobs = [names[0] for names in new.instances(zk, "job")]
    records = _read_all(zk, [new.path("job", job) for job in jobs])
    unfinished = []
    for job, data in zip(jobs, records):
        try:
            state = json.loads(data or b"{}").get("state")
        except ValueError:
            state = None
        if state in _UNFINISHED:
            unfinished.append((new.path("job_open", job), b""))
    return {"uuids": indexed_vms, "open_jobs": _create_missing(zk, unfinished)}


#: Target version -> its step.
STEPS: dict[int, Callable[[KazooClient, Schema], dict[str, int]]] = {8: index_8}
