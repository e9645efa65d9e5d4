"""The cluster's safety invariants, checked against each node's OWN libvirt as well as ZooKeeper.

Run at the end of every integration test that changes VMs (``tests/conftest.py`` does it for every cluster the
harness starts) and usable from benches and by hand: ``check(cluster)`` raises ``InvariantViolation`` listing every
broken invariant, or returns what it read.

Where libvirt is read: every ``pvc-worker`` answers the remote-control command ``pvc_domains``
(``pvc_workers.control``) with what its libvirt connection reports at that moment. That is the only way in for
libvirt's test driver, whose hypervisor state lives inside the worker process (a node whose worker is down has no
domains at all); a QEMU node whose worker is down is read straight from its libvirtd. A node that cannot be read
is reported, never assumed empty.

The invariants, in the order they are checked
    jobs       every job is terminal (waited for, up to ``timeout``);
    twice      no VM (by name or UUID) is defined on two nodes, as the nodes' libvirt says;
    placed     every VM ZooKeeper places on a node that is up is defined there, with ZooKeeper's UUID and state
               (``failed`` is a stopped domain);
    leaked     no node's libvirt holds a domain ZooKeeper does not place on that node (a leftover copy);
    markers    no VM and no node holds an active-job marker; no migration slot; no node reservation; no node is
               left ``flush`` / ``unflush`` without a job;
    vfs        a VF marked used names a VM that ZooKeeper places on the VF's node and whose XML uses that VF, and
               every VF a VM's XML uses is marked used by it;
    flushed    a node in domain state ``flushed`` runs no VM (per ZooKeeper and per its libvirt);
    indexes    (schema 8) every VM's UUID is indexed under its name and every UUID entry names a VM with that UUID.
    Unfinished jobs are found by reading every job record, never through the index of open jobs: the check must not
    trust what it checks (``tests`` prove that index separately).

ZooKeeper and libvirt are read one after the other, not atomically, so a check that finds a problem reads again
for up to ``settle`` s before it reports: once every job is terminal nothing should move, and a problem that
persists is real.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from celery import Celery
from kazoo.client import KazooClient
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from pvc_tasks.jobs import JobStore
from pvc_tasks.routing import worker_hostname
from pvc_tasks.state import domain_records, names, node_alive, vf_records
from pvc_tasks.vfs import uses
from zk_schema import Schema, cluster_version

if TYPE_CHECKING:
    from pvc_dev.cluster import LocalCluster

__all__ = ["TICKING_KEYS", "InvariantViolation", "Observed", "check", "libvirt_domains", "observe",
           "zk_snapshot", "zk_state"]

#: Node keys that legitimately change while nothing happens: the keepalive and the inventory's figures written
#: with it, and faults, which the primary's monitor sets and clears on its own judgement of keepalives. Every other
#: znode is compared by ``zk_state`` (the "nothing changed" check of tests that must write nothing).
TICKING_KEYS = ("node.keepalive", "node.load", "node.memory.total", "node.memory.used", "node.memory.free",
                "node.memory.allocated", "node.memory.provisioned", "node.vcpu.total", "node.vcpu.allocated",
                "node.vms.total", "node.vms.running", "node.faults", "base.faults")

#: The libvirt state each ZooKeeper VM state must have on its node.
_EXPECTED_STATE = {"running": "running", "stopped": "stopped", "failed": "stopped", "paused": "paused"}


class InvariantViolation(AssertionError):
    """One or more invariants are broken; the message lists each."""


@dataclass
class Observed:
    """One reading of the cluster: ZooKeeper's VMs and every node's libvirt domains (None: unreadable; a
    test-driver node whose worker is down is absent, its hypervisor died with the worker)."""

    vms: dict[str, dict]
    libvirt: dict[str, dict[str, dict] | None]
    problems: list[str] = field(default_factory=list)


def zk_snapshot(zk: KazooClient, path: str = "/") -> dict[str, bytes]:
    """Every znode below ``path`` with its data."""
    out: dict[str, bytes] = {}

    def walk(p: str) -> None:
        data, _ = zk.get(p)
        out[p] = data
        for child in zk.get_children(p):
            walk(f"{p.rstrip('/')}/{child}")

    walk(path)
    return out


def zk_state(zk: KazooClient) -> dict[str, bytes]:
    """The whole cluster tree minus ``TICKING_KEYS`` and the index entries of jobs that have ended (the primary's
    janitor removes those on its own schedule): two equal states mean nothing was written."""
    schema = Schema.load(cluster_version(zk))
    ticking = {schema.path(k) for k in TICKING_KEYS if k.startswith("base.")}
    for node in names(zk, schema, "base.node"):
        ticking |= {schema.path(k, node) for k in TICKING_KEYS if k.startswith("node.")}
    if "job_open" in schema.roots:
        ticking |= {schema.path("job_open", j) for j in JobStore(zk, schema).open_index()[1]}
    return {p: d for p, d in zk_snapshot(zk).items() if p not in ticking}


def _broker(cluster: LocalCluster) -> Celery:
    app = getattr(cluster, "_inspect_app", None)
    if app is None or app.conf.broker_url != cluster.broker_url:
        app = Celery("pvc-inspect", broker=cluster.broker_url)
        app.conf.update(accept_content=["json"], broker_connection_retry_on_startup=True)
        cluster._inspect_app = app  # type: ignore[attr-defined]
    return app


def libvirt_domains(cluster: LocalCluster, timeout: float = 5, only: Iterable[str] | None = None
                    ) -> dict[str, dict[str, dict] | None]:
    """node -> {domain name: {"uuid", "state"}} as each node's libvirt reports it (None: it could not be read).
    A node whose hypervisor died with its worker (test driver, embedded QEMU) is left out. ``only``: ask just
    these nodes (a paused worker would cost the whole ``timeout``)."""
    schema = cluster.schema
    out: dict[str, dict[str, dict] | None] = {}
    asking = []
    for spec in (s for s in cluster.nodes if only is None or s.name in only):
        worker = cluster.workers.get(spec.name)
        if worker is not None and worker.alive() and node_alive(cluster.zk, schema, spec.name):
            asking.append(spec.name)
        elif spec.hypervisor == "qemu" and spec.name in cluster.libvirtds:
            out[spec.name] = _read_libvirtd(str(cluster.libvirtds[spec.name].info["uri"]))
        elif worker is not None and worker.alive():
            out[spec.name] = None  # a worker that runs but is not registered (starting, or cut off)
    if asking:
        replies = _ask(cluster, asking, timeout)
        by_host = {host: answer for reply in replies for host, answer in reply.items()}
        for node in asking:
            answer = by_host.get(worker_hostname(node)) or {}
            out[node] = answer.get("domains") if "domains" in answer else None
    return out


def _ask(cluster: LocalCluster, nodes: list[str], timeout: float) -> list[dict]:
    """Broadcast ``pvc_domains`` to ``nodes`` over a fresh connection, once more if the first one breaks.

    Why fresh: a pooled connection can outlive its server (a test that restarted Redis), and once in CI a
    check's broadcast died with "Connection closed by server"; if it happens twice, say what Redis was doing."""
    app = _broker(cluster)
    for attempt in (1, 2):
        try:
            with app.connection_for_write() as conn:
                return app.control.broadcast(
                    "pvc_domains", destination=[worker_hostname(n) for n in nodes], reply=True, timeout=timeout,
                    limit=len(nodes), connection=conn)
        except (OSError, OperationalError, RedisError) as exc:
            if attempt == 2:
                broker = cluster.broker_service
                raise RuntimeError(f"the workers could not be asked for their domains: {exc!r}; the broker "
                                   f"{'runs' if broker.alive() else 'is not running'}; its log ends:\n"
                                   f"{broker.log_tail(10)}") from exc
    raise AssertionError("unreachable")


def _read_libvirtd(uri: str) -> dict[str, dict] | None:
    import libvirt

    try:
        conn = libvirt.openReadOnly(uri)
    except libvirt.libvirtError:
        return None
    try:
        return {d.name(): {"uuid": d.UUIDString(), "state": "running" if d.isActive() else "stopped"}
                for d in conn.listAllDomains()}
    finally:
        conn.close()


def observe(cluster: LocalCluster) -> Observed:
    """Read ZooKeeper and every node's libvirt once and list what is wrong (jobs aside)."""
    zk, schema = cluster.zk, cluster.schema
    vms = {r["name"]: r for r in domain_records(zk, schema)}
    seen = Observed(vms, libvirt_domains(cluster))
    _check_libvirt(seen)
    seen.problems += _check_markers(zk, schema, vms)
    seen.problems += _check_vfs(zk, schema, vms)
    seen.problems += _check_flushed(zk, schema, seen)
    seen.problems += _check_uuid_index(zk, schema, vms)
    return seen


def _check_uuid_index(zk: KazooClient, schema: Schema, vms: dict[str, dict]) -> list[str]:
    if "domain_uuid" not in schema.roots:
        return []
    entries = {u: zk.get(schema.path("domain_uuid", u))[0].decode() for u in names(zk, schema, "base.domain_uuid")}
    problems = [f"indexes: VM {n}'s UUID {vm['uuid']} is indexed as {entries.get(vm['uuid']) or 'nothing'}"
                for n, vm in vms.items() if vm["uuid"] and entries.get(vm["uuid"]) != n]
    problems += [f"indexes: UUID {u} names {n}, which has no such VM" for u, n in entries.items()
                 if vms.get(n, {}).get("uuid") != u]
    return problems


def _check_flushed(zk: KazooClient, schema: Schema, seen: Observed) -> list[str]:
    """A ``flushed`` node runs no VM, as ZooKeeper and as the node's own libvirt say."""
    problems = []
    for node in names(zk, schema, "base.node"):
        if zk.get(schema.path("node.domain_state", node))[0].decode() != "flushed":
            continue
        recorded = sorted(n for n, vm in seen.vms.items() if vm["node"] == node and vm["state"] in ("running",
                                                                                                    "paused"))
        running = sorted(n for n, facts in (seen.libvirt.get(node) or {}).items() if facts["state"] != "stopped")
        if recorded or running:
            problems.append(f"flushed: node {node} is flushed but runs {', '.join(sorted({*recorded, *running}))}")
    return problems


def _check_libvirt(seen: Observed) -> None:
    where: dict[str, list[str]] = {}
    for node, domains in seen.libvirt.items():
        if domains is None:
            seen.problems.append(f"node {node}: its libvirt could not be read")
            continue
        for name, facts in domains.items():
            where.setdefault(name, []).append(node)
            where.setdefault(f"uuid {facts['uuid']}", []).append(node)
    for what, nodes in where.items():
        if len(nodes) > 1:
            seen.problems.append(f"twice: {what} is defined on {', '.join(sorted(nodes))}")
    for name, vm in seen.vms.items():
        domains = seen.libvirt.get(vm["node"])
        if domains is None:
            continue  # its node is down, unknown to the harness, or unreadable (reported above)
        facts = domains.get(name)
        if facts is None:
            seen.problems.append(f"placed: VM {name} is recorded on {vm['node']}, whose libvirt lacks it")
            continue
        if vm.get("uuid") and facts["uuid"] != vm["uuid"]:
            seen.problems.append(f"placed: VM {name} has UUID {facts['uuid']} on {vm['node']}, {vm['uuid']} in ZK")
        expected = _EXPECTED_STATE.get(vm["state"], vm["state"])
        if facts["state"] != expected:
            seen.problems.append(f"placed: VM {name} is {facts['state']} on {vm['node']} but ZooKeeper says "
                                 f"{vm['state']}")
    for node, domains in seen.libvirt.items():
        for name in sorted(domains or {}):
            if seen.vms.get(name, {}).get("node") != node:
                owner = seen.vms.get(name, {}).get("node") or "no node (not in ZooKeeper)"
                seen.problems.append(f"leaked: {node}'s libvirt holds {name}, which ZooKeeper places on {owner}")


def _check_markers(zk: KazooClient, schema: Schema, vms: dict[str, dict]) -> list[str]:
    problems = [f"markers: VM {n} still holds active job {vm['active_job']}" for n, vm in vms.items()
                if vm["active_job"]]
    problems += [f"markers: VM {n} is still '{vm['state']}'" for n, vm in vms.items() if vm["state"] == "defining"]
    slots = json.loads(zk.get(schema.path("base.migrations"))[0] or b"{}")
    if slots:
        problems.append(f"markers: migration slots held: {slots}")
    for node in names(zk, schema, "base.node"):
        reserved = json.loads(zk.get(schema.path("node.reserved", node))[0] or b"{}")
        if reserved:
            problems.append(f"markers: node {node} holds reservations {reserved}")
        marker = zk.get(schema.path("node.active_job", node))[0].decode()
        if marker:
            problems.append(f"markers: node {node} still holds active job {marker}")
        state = zk.get(schema.path("node.domain_state", node))[0].decode()
        if state in ("flush", "unflush"):
            problems.append(f"markers: node {node} is left '{state}' with no job")
    return problems


def _check_vfs(zk: KazooClient, schema: Schema, vms: dict[str, dict]) -> list[str]:
    problems: list[str] = []
    by_node: dict[str, list[dict]] = {}
    for vf in vf_records(zk, schema):
        by_node.setdefault(vf["node"], []).append(vf)
    for node, vfs in by_node.items():
        for vf in vfs:
            user = vf.get("used_by") or ""
            if vf.get("used") != "true":
                if user:
                    problems.append(f"vfs: {node}/{vf['name']} is free but names {user} as its user")
                continue
            vm = vms.get(user)
            if vm is None or vm["node"] != node:
                where = "does not exist" if vm is None else f"is on {vm['node']}"
                problems.append(f"vfs: {node}/{vf['name']} is used by {user or '(nobody)'}, which {where}")
            elif vf["name"] not in {u.name for u in uses(vm["xml"], vfs)}:
                problems.append(f"vfs: {node}/{vf['name']} is used by {user}, whose XML does not name it")
    for name, vm in vms.items():
        for use in uses(vm["xml"] or "", by_node.get(vm["node"], [])):
            if use.vf.get("used") != "true" or use.vf.get("used_by") != name:
                problems.append(f"vfs: VM {name} uses {vm['node']}/{use.name}, which is not marked used by it")
    return problems


def _unfinished_jobs(zk: KazooClient, schema: Schema) -> list[str]:
    return [f"{j.kind} {j.id} ({j.state}, phase {j.phase}, node {j.node or 'cluster'})"
            for j in JobStore(zk, schema).all() if not j.terminal]


def check(cluster: LocalCluster, timeout: float = 60, settle: float = 5) -> Observed:
    """Wait (up to ``timeout`` s) until every job is terminal and every running worker consumes, then check every
    invariant; ``InvariantViolation`` listing each broken one, else what was observed."""
    zk, schema = cluster.zk, cluster.schema
    deadline = time.monotonic() + timeout
    while unfinished := _unfinished_jobs(zk, schema):
        if time.monotonic() > deadline:
            raise InvariantViolation(f"jobs: not terminal after {timeout:g} s: " + "; ".join(unfinished))
        time.sleep(0.1)
    for spec in cluster.nodes:  # a worker that is (re)starting answers once Celery consumes
        worker = cluster.workers.get(spec.name)
        if worker is not None and worker.alive():
            cluster.wait_worker(spec.name, max(1.0, deadline - time.monotonic()))
    settled = time.monotonic() + settle
    while True:
        seen = observe(cluster)
        if not seen.problems:
            return seen
        if time.monotonic() > settled:
            raise InvariantViolation("\n  ".join(["cluster invariants broken:", *seen.problems]))
        time.sleep(0.2)
