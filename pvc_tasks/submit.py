"""Creating, enqueueing and cancelling jobs: the client side of the task families (used by the API).

Each submission validates first and writes nothing until everything checked out; then ONE transaction creates
the job and records its intent (the VM's ``active_job`` marker, with a version check so that of two racing
requests exactly one wins; for ``define`` the whole VM record). Only then is the task published
(``pvc_tasks.dispatch``). If the broker cannot take the message the request still succeeds: the job record is the
outbox, and the re-driver publishes it once the broker answers (``pvc_tasks.redrive``).
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import replace

from kazoo.client import KazooClient
from kazoo.exceptions import BadVersionError, NodeExistsError, NoNodeError

from pvc_tasks import dispatch, kinds, placement, selector, vfs
from pvc_tasks.domain_xml import DomainXml, read
from pvc_tasks.errors import Conflict, Invalid, NotFound, Unavailable
from pvc_tasks.jobs import Job, JobState, JobStore, Op, Origin, commit, notify_parent
from pvc_tasks.state import domain_records_matching, node_alive, node_record, node_records, vf_records
from pvc_tasks.xml_policy import XmlPolicy, violations
from zk_schema import Schema, SchemaError

__all__ = ["ACTIONS", "cancel_job", "meta_values", "read_define", "set_meta", "submit_define", "submit_vm_action"]

log = logging.getLogger(__name__)

MIGRATION_METHODS = ("default", "live", "shutdown")
#: Rounds a define decides again after a racing change (another define, a VF claim, a flush of its node). Every
#: define bumps the VM directory's version (the UUID check), so a burst of concurrent defines races each round and
#: only one wins it: with 5 rounds and no pause, 8 parallel defines got 409 ``busy``. Each lost round waits a random
#: moment, longer each time (``DEFINE_BACKOFF`` s per round at most), so the others' commits get through.
DEFINE_ATTEMPTS = 40
DEFINE_BACKOFF = 0.01
#: How long (s) a define waits for the define lock before it answers 409 ``busy``.
DEFINE_LOCK_TIMEOUT = 30.0

#: Action -> VM states it may start from (anything else is 409 invalid_state, with the state in the message).
ACTIONS = {
    "start": ("stopped", "failed", "crashed", "paused"),
    "shutdown": ("running", "paused"),
    "stop": ("running", "paused", "crashed"),
    "restart": ("running",),
    "undefine": ("stopped", "failed", "crashed"),
}

def read_define(zk: KazooClient, schema: Schema, xml: str, policy: XmlPolicy) -> DomainXml:
    """libvirt's reading of a define's XML (``pvc_tasks.domain_xml``), judged by ``policy`` with the cluster's
    SR-IOV VFs (from ZooKeeper): ``Invalid`` (``xml_not_allowed``) naming every problem."""
    doc = read(xml)
    if doc.libvirt.find("devices/interface") is not None or doc.libvirt.find("devices/hostdev") is not None:
        records = vf_records(zk, schema, only=vfs.PCI_KEYS)
        addresses = {vfs.pci_of_record(r) for r in records}
        policy = replace(policy, vf_addresses=frozenset(a for a in addresses if a),
                         vf_names=frozenset(r["name"] for r in records))
    problems = violations(doc, policy)
    if problems:
        raise Invalid(f"xml: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
                      code="xml_not_allowed", details={"xml": problems})
    return doc


def meta_values(zk: KazooClient, schema: Schema, meta: dict, *, partial: bool = False) -> dict[str, str]:
    """VM meta as ``domain.meta.*`` key values, validated: unknown nodes, selectors and methods are ``Invalid``.
    ``partial``: only the keys given (a meta update); else every key, with defaults (a define)."""
    values: dict[str, str] = {}
    if "node_limit" in meta or not partial:
        limit = meta.get("node_limit") or []
        unknown = sorted(set(limit) - set(zk.get_children(schema.path("base.node"))))
        if unknown:
            raise Invalid(f"node_limit: unknown node(s) {', '.join(unknown)}", details={"node_limit": unknown})
        values["meta.node_limit"] = ",".join(limit)
    if "node_selector" in meta or not partial:
        sel = meta.get("node_selector") or ""
        if sel and sel not in selector.METHODS:
            raise Invalid(f"node_selector: {sel!r} is not one of {', '.join(selector.METHODS)}",
                          details={"node_selector": [sel]})
        values["meta.node_selector"] = sel
    if "migration_method" in meta or not partial:
        method = meta.get("migration_method") or "default"
        if method not in MIGRATION_METHODS:
            raise Invalid(f"migration_method: {method!r} is not one of {', '.join(MIGRATION_METHODS)}",
                          details={"migration_method": [method]})
        values["meta.migration_method"] = method
    if "autostart" in meta or not partial:
        values["meta.autostart"] = "true" if meta.get("autostart") else "false"
    if meta.get("max_downtime") is not None:
        values["meta.max_downtime"] = str(int(meta["max_downtime"]))
    if "shutdown_force" in meta:  # None: follow the cluster's config.shutdown_force
        force = meta["shutdown_force"]
        values["meta.shutdown_force"] = "" if force is None else "true" if force else "false"
    return values


def set_meta(zk: KazooClient, schema: Schema, vm: str, meta: dict) -> None:
    """Change some of a VM's meta in one transaction (validated first; nothing written on a bad value)."""
    if zk.exists(schema.path("domain", vm)) is None:
        raise NotFound(f"no VM {vm!r}", code="vm_not_found")
    values = meta_values(zk, schema, meta, partial=True)
    if not values:
        raise Invalid("meta: nothing to change", details={"meta": ["give at least one field"]})
    try:
        commit(zk, [("set", schema.path(f"domain.{k}", vm), v.encode(), -1) for k, v in values.items()])
    except NoNodeError as exc:
        raise NotFound(f"no VM {vm!r}", code="vm_not_found") from exc


def _require_ready(zk: KazooClient, schema: Schema, node: str) -> None:
    record = node_record(zk, schema, node)
    if not record["alive"]:
        raise Conflict(f"node {node}'s worker is not running, so it cannot take the job; start pvc-worker "
                       f"--node {node} or choose another node", code="node_unavailable", details={"node": node})
    if record["domain_state"] != "ready":
        raise Conflict(f"node {node} is {record['domain_state']}, not ready", code="node_not_ready",
                       details={"node": node})


def _choose_node(zk: KazooClient, schema: Schema, memory_mib: int, meta: dict, unfit: list[str]) -> str:
    method = meta.get("node_selector") or zk.get(schema.path("base.config.migration_selector"))[0].decode()
    chosen = selector.select(node_records(zk, schema), method, memory_mib, meta.get("node_limit") or [], unfit)
    if chosen is None:
        vf_note = f" (and free VFs for its SR-IOV NICs; unfit: {', '.join(unfit)})" if unfit else ""
        raise Conflict(f"no ready node has {memory_mib} MiB free for this VM{vf_note} (selector {method})",
                       code="no_target")
    return chosen


def submit_define(zk: KazooClient, schema: Schema, xml: str, node: str | None = None,
                  meta: dict | None = None, origin: Origin | None = None, policy: XmlPolicy | None = None) -> Job:
    """Create VM + define job in one transaction and enqueue it on the chosen node.

    The XML is read as libvirt reads it and must pass ``policy`` (``read_define``; the default policy when None);
    what is stored and defined is its canonical text. Its UUID must be new to the cluster. From schema 8 the
    transaction creates the UUID's index entry (``domain_uuid``): the check is one read, and of two defines racing
    with one UUID the second's create fails; it decides again and finds the first's VM. Before 8, a define read
    every VM's UUID and bumped the VM directory's version (``base.domain``). The transaction also checks the schema
    version it decided under, so a define by an API that has not yet seen an upgrade never commits into the old
    layout. Defines take the define lock (``base.lock.define``, schema 7) in turn, so that in a burst each one's
    check and commit run without another define racing it: FIFO, where racing rounds alone starved some (8 parallel
    defines on a cluster of 100 VMs took over 10 s each)."""
    meta = meta or {}
    doc = read_define(zk, schema, xml, policy or XmlPolicy())
    name, memory_mib, vcpus, vm_uuid, xml = doc.name, doc.memory_mib, doc.vcpus, doc.uuid, doc.xml
    values = meta_values(zk, schema, meta)

    def define() -> Job:
        for attempt in range(DEFINE_ATTEMPTS):
            layout = _layout_check(zk, schema)
            if zk.exists(schema.path("domain", name)) is not None:
                raise Conflict(f"a VM named {name} already exists", code="vm_exists", details={"vm": name})
            uniqueness = _uuid_unique(zk, schema, name, vm_uuid)
            per_node = vfs.for_define(zk, schema, doc.libvirt, [n["name"] for n in node_records(zk, schema)])
            chosen = node
            if chosen:
                if zk.exists(schema.path("node", chosen)) is None:
                    raise Invalid(f"node: no node named {chosen!r}", details={"node": [f"unknown node {chosen!r}"]})
                _require_ready(zk, schema, chosen)
                if isinstance(per_node.get(chosen), Conflict):
                    raise per_node[chosen]
            else:
                chosen = _choose_node(zk, schema, memory_mib, meta,
                                      [n for n, v in per_node.items() if isinstance(v, Conflict)])
            found = per_node.get(chosen) or []
            job = Job.new("define", name, chosen, {}, stage=kinds.get("define").first, origin=origin)
            record = dict(values, xml=xml, uuid=vm_uuid, node=chosen, state="defining", memory=str(memory_mib),
                          vcpus=str(vcpus), active_job=job.id)
            ops = [("create", path, data) for path, data in schema.create_ops("domain", name, values=record)]
            # The VFs it names are marked used by it in the same transaction (version-checked, see pvc_tasks.vfs).
            claims = vfs.claim_ops(zk, schema, chosen, name, found)
            try:
                commit(zk, ops + claims + uniqueness + [layout, *JobStore(zk, schema).create_ops(job),
                                                        placement.still_ready_op(zk, schema, chosen)])
            except (BadVersionError, NodeExistsError):
                # Another define (of this name or UUID), a VF claim, a flush of the node or an upgrade committed
                # first: decide again, after a pause; the next round names the VM that took the name or UUID.
                time.sleep(random.uniform(0, DEFINE_BACKOFF * (attempt + 1)))
                continue
            dispatch.publish(job)
            return job
        raise Conflict(f"VM {name}: other defines kept changing the cluster; retry", code="busy")

    if "base.lock.define" not in schema.keys:  # a cluster not upgraded yet: the version check alone
        return define()
    lock = zk.Lock(schema.path("base.lock.define"), "define")
    if not lock.acquire(timeout=DEFINE_LOCK_TIMEOUT):
        raise Conflict(f"VM {name}: other defines held the define lock for {DEFINE_LOCK_TIMEOUT:g} s; retry",
                       code="busy")
    try:
        return define()
    finally:
        lock.release()


def _layout_check(zk: KazooClient, schema: Schema) -> Op:
    """The op that fails a define's transaction if the cluster's schema version moved since ``schema`` was loaded;
    ``Unavailable`` when it has moved already (the API reloads its schema from the version's watch)."""
    path = schema.path("base.schema.version")
    data, stat = zk.get(path)
    if data.decode() != str(schema.version):
        raise Unavailable(f"the cluster's layout moved to schema {data.decode()} while this request was decided "
                          f"(on {schema.version}); retry", code="schema_changed")
    return ("check", path, stat.version)


def _uuid_unique(zk: KazooClient, schema: Schema, name: str, vm_uuid: str) -> list[Op]:
    """``Conflict`` uuid_exists naming the VM that has the UUID; else the ops that keep it unique in the define's
    transaction (schema 8: the index entry; before: the VM directory's version, which every define bumps)."""
    if "domain_uuid" in schema.roots:
        try:
            owner = zk.get(schema.path("domain_uuid", vm_uuid))[0].decode()
        except NoNodeError:
            return [("create", schema.path("domain_uuid", vm_uuid), name.encode())]
    else:
        directory = zk.exists(schema.path("base.domain"))
        twin = domain_records_matching(zk, schema, ["uuid"], lambda r: r["uuid"] == vm_uuid, only=["uuid"])
        if not twin:
            return [("set", schema.path("base.domain"), b"", directory.version)]
        owner = twin[0]["name"]
    raise Conflict(f"VM {owner} already has UUID {vm_uuid}; give this VM another <uuid> (or none: one is generated)",
                   code="uuid_exists", details={"vm": owner, "uuid": vm_uuid})


def _refuse_start_on_drained(zk: KazooClient, schema: Schema, vm: str, node: str) -> None:
    """A flushed node runs no VM, and a flushing one is being emptied: a start there would break that promise."""
    state = zk.get(schema.path("node.domain_state", node))[0].decode()
    if state in ("flush", "flushed"):
        raise Conflict(f"cannot start VM {vm}: its node {node} is {state}; move it to a ready node first (`pvc vm "
                       f"move {vm}`), or `pvc node ready {node}`, which starts its autostart VMs",
                       code="node_not_ready", details={"node": node, "domain_state": state})


def submit_vm_action(zk: KazooClient, schema: Schema, vm: str, action: str, params: dict | None = None,
                     parent: str = "", origin: Origin | None = None) -> Job:
    """Create a lifecycle job for an existing VM (one transaction with its marker) and enqueue it."""
    if action not in ACTIONS:
        raise Invalid(f"state: {action!r} is not one of {', '.join(ACTIONS)}", details={"state": [action]})
    # Only the keys this decision needs, read in parallel (one round trip); the marker with its version, which
    # the creating transaction checks.
    marker_path = schema.path("domain.active_job", vm)
    try:
        pending = {key: zk.get_async(schema.path(f"domain.{key}", vm)) for key in ("state", "node")}
        marker, stat = zk.get_async(marker_path).get()
        record = {key: result.get()[0].decode() for key, result in pending.items()}
    except (NoNodeError, SchemaError) as exc:
        raise NotFound(f"no VM {vm!r}", code="vm_not_found") from exc
    store = JobStore(zk, schema)
    shutdown = _running_shutdown(store, marker.decode()) if marker and action == "stop" else None
    if marker and shutdown is None:
        active = marker.decode()
        raise Conflict(f"VM {vm} already has an active job {active}; wait for it or cancel it first",
                       code="vm_busy", details={"job": active})
    if shutdown is not None:
        record["state"] = "running"  # what the shutdown found; the stop acts on what libvirt says when it runs
    if record["state"] not in ACTIONS[action]:
        raise Conflict(f"cannot {action} VM {vm}: it is {record['state']}", code="invalid_state",
                       details={"state": record["state"]})
    node = record["node"]
    if action == "start":
        _refuse_start_on_drained(zk, schema, vm, node)
    if not node_alive(zk, schema, node):
        raise Conflict(f"node {node}'s worker is not running, so it cannot {action} {vm}; start pvc-worker "
                       f"--node {node}", code="node_unavailable", details={"node": node})
    job = Job.new(action, vm, node, params or {}, parent=parent, stage=kinds.get(action).first, origin=origin)
    if shutdown is not None:
        job.note(f"supersedes shutdown job {shutdown[0].id}: forcing {vm} off")
    ops = [*store.create_ops(job), ("set", marker_path, job.id.encode(), stat.version),
           *([_supersede_op(store, *shutdown, job.id)] if shutdown is not None else [])]
    try:
        commit(zk, ops)
    except BadVersionError as exc:
        raise Conflict(f"VM {vm} got another job at the same moment; retry after it ends",
                       code="vm_busy") from exc
    if shutdown is not None:
        notify_parent(store, store.get(shutdown[0].id))  # a flush's shutdown child: its flush passes again
    dispatch.publish(job)
    return job


def _running_shutdown(store: JobStore, active: str) -> tuple[Job, int] | None:
    """The VM's active job and its version when it is a shutdown that ``vm stop`` may supersede."""
    try:
        job, version = store.get_versioned(active)
    except NotFound:
        return None
    return (job, version) if job.kind == "shutdown" and not job.terminal else None


def _supersede_op(store: JobStore, job: Job, version: int, stop_id: str) -> Op:
    """``vm stop`` while a shutdown job of the VM runs (or waits): the write that ends that job (queued) or asks it
    to stop (running: its wait is a cancel point), with the reason, version-checked; the stop job takes the VM's
    marker in the same transaction and forces the VM off."""
    reason = f"superseded by `vm stop` (job {stop_id}), which forces the VM off"
    if job.state == JobState.QUEUED:
        job.end(JobState.CANCELLED, reason)
    else:
        job.cancel_requested = True
        job.params["cancel_reason"] = reason
        job.note(reason)
    return ("set", store.path(job.id), job.to_bytes(), version)


def cancel_job(zk: KazooClient, schema: Schema, job_id: str) -> Job:
    """Cancel a job: a queued one ends at once (marker released in the same transaction); a running one is
    asked to stop at its next cancel point. Cancelling an ended job is a 409."""
    store = JobStore(zk, schema)

    def mutate(job: Job) -> bool:
        if job.terminal:
            raise Conflict(f"job {job_id} already ended ({job.state})", code="job_ended",
                           details={"state": str(job.state)})
        if job.state == JobState.QUEUED:
            job.end(JobState.CANCELLED, "cancelled by request while queued")
        else:
            job.cancel_requested = True
            job.note("cancel requested")
        return True

    def extra(job: Job) -> list:
        return kinds.get(job.kind).cancel_ops(store, job) if job.state == JobState.CANCELLED else []

    job = store.update(job_id, mutate, extra)
    notify_parent(store, job)
    return job
