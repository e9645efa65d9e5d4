"""``pvc-worker --node NAME``: one process per node, a Celery worker on that node's queue plus its threads.

Start-up, in order
    1. Settings from ``--config`` / ``$PVC_CONFIG`` / ``PVC_*`` variables; connect to ZooKeeper.
    2. Load the schema version the CLUSTER records (not the newest this code knows): paths must match the data.
    3. Register: create the node's keys if missing, take the ephemeral ``presence`` znode (refusing to start
       while another live worker holds it: two workers for one node would both act on one hypervisor).
    4. Open ONE libvirt connection for the process's life. Write the node's SR-IOV inventory and apply every VF's
       desired config from ZooKeeper to the NIC (``pvc_tasks.sriov``). Reconcile VMs and jobs
       (``pvc_workers.reconcile``).
    5. Start the keepalive, inventory, janitor, session-watch (presence after a session loss, self-fence) and
       watchdog (a consumer that stopped taking messages restarts the process, ``pvc_workers.watchdog``) threads,
       a check of this node's own BMC (a fault when fencing it would fail), and a watch on the cluster's schema
       version.
    6. Consume ``node.<NAME>`` with a thread pool (the test driver's state is per process; threads share it);
       once Celery is ready, a coordinator contends for primary (``pvc_workers.election``), which adds the
       ``cluster`` queue while it is primary. The remote-control command ``pvc_domains`` answers what this
       node's libvirt reports (``pvc_workers.control``; the harness's invariant checker asks it).

A schema-version change stops the Celery worker warmly (running tasks finish) and re-executes the process with
the same arguments: watches set on old paths cannot be moved in place. Shutdown (SIGTERM, Ctrl-C) drains the
pool, marks the node ``stop`` and closes the session, which removes ``presence``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time

from kazoo.client import KazooClient
from kazoo.exceptions import NodeExistsError

from pvc_tasks import defaults, logs, metrics
from pvc_tasks.app import configure
from pvc_tasks.config import Settings, load_settings
from pvc_tasks.context import HypervisorError, NicError, NodeContext, install
from pvc_tasks.jobs import commit
from pvc_tasks.routing import CLUSTER_QUEUE, worker_hostname, worker_queues
from pvc_tasks.secrets import check_key, seal
from pvc_tasks.sriov import apply_all
from pvc_tasks.zkclient import connect
from pvc_workers import control  # noqa: F401 - importing restricts Celery's control panel, adds pvc_domains
from pvc_workers.election import Election
from pvc_workers.health import check_own_bmc
from pvc_workers.hypervisor import LibvirtHypervisor
from pvc_workers.ipmi import fencer
from pvc_workers.janitor import Janitor
from pvc_workers.keepalive import Inventory, Keepalive
from pvc_workers.reconcile import reconcile_jobs, reconcile_vms
from pvc_workers.session import SessionWatch
from pvc_workers.sriov import nic_for
from pvc_workers.vf_inventory import VfInventory
from pvc_workers.watchdog import Watchdog
from pvc_workers.xml_guard import XmlGuard
from zk_schema import Schema, SchemaError, available_versions, cluster_version

__all__ = ["main"]

log = logging.getLogger("pvc_workers")

#: Exit status when the worker cannot start (bad configuration, no cluster, a live twin).
EXIT_CONFIG = 2


class StartupError(Exception):
    """The worker cannot start; the message says why and what to do."""


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pvc-worker", description="pvc node worker (one per node)")
    parser.add_argument("--node", help="this node's name (or PVC_NODE / `node` in the config file)")
    parser.add_argument("--config", help="TOML settings file (or PVC_CONFIG)")
    parser.add_argument("--zookeeper", help="ZooKeeper hosts, e.g. 127.0.0.1:2181/pvc")
    parser.add_argument("--redis", help="Redis URL (the Celery broker unless --broker/PVC_BROKER names another); "
                                          "prefer PVC_REDIS or the config file: argv is visible to every user")
    parser.add_argument("--libvirt-uri", help="libvirt URI of this node's hypervisor")
    return parser.parse_args(argv)


def _register(zk: KazooClient, schema: Schema, settings: Settings) -> bool:
    """Create or complete the node's keys and take its presence; True when the node returns from being declared
    dead (its fence decides about its VMs, so start-up must start none)."""
    node = settings.node
    if zk.exists(schema.path("node", node)) is None:
        try:
            commit(zk, [("create", p, d) for p, d in schema.create_ops("node", node)])
        except NodeExistsError:
            pass  # another start raced us; the missing-key pass below completes it
    for key in schema.section_keys("node"):
        path = schema.path(key.full_name, node)
        if zk.exists(path) is None:
            zk.create(path, key.default.encode(), makepath=True)
    presence = schema.path("node.presence", node)
    returning = zk.get(schema.path("node.daemon_state", node))[0].decode() == "dead"
    values = {"daemon_state": "init", "self_fence_after": f"{settings.self_fence_after:g}",
              "router_state": "secondary" if settings.coordinator else "client",
              "schema_version": str(schema.version), "hypervisor": settings.libvirt_uri,
              "ipmi.hostname": settings.ipmi_hostname, "ipmi.username": settings.ipmi_username,
              "ipmi.password": seal(settings.ipmi_password, settings.secret_key)}
    # Presence and the reset state in one transaction: a reader never sees this process's presence beside the
    # "run" state of a predecessor.
    ops = [("create", presence, str(os.getpid()).encode(), "ephemeral")]
    # What this code can load, for `pvc cluster upgrade` to check before it moves the cluster: at the NEWEST
    # layout's path (an upgrade reads it there), under the node when this cluster's layout has it there too.
    latest = Schema.latest()
    if zk.exists(latest.path("node", node)) is not None:
        ops.append(("create", latest.path("node.schema_loadable", node),
                    ",".join(str(v) for v in available_versions()).encode(), "ephemeral"))
    known = {key.name for key in schema.section_keys("node")}  # an older cluster layout lacks newer keys
    ops += [("set", schema.path(f"node.{k}", node), v.encode(), -1) for k, v in values.items() if k in known]
    # A previous worker killed without closing its session holds presence until the session expires.
    deadline = time.monotonic() + settings.zk_session_timeout * 1.5
    while True:
        try:
            commit(zk, ops)
            return returning
        except NodeExistsError:
            if time.monotonic() > deadline:
                raise StartupError(f"another worker for node {node} is running (presence {presence} is held); "
                                   f"stop it first") from None
            time.sleep(defaults.PRESENCE_RETRY_INTERVAL)


def _set_state(ctx: NodeContext, state: str) -> None:
    ctx.zk.set(ctx.schema.path("node.daemon_state", ctx.node), state.encode())


class Daemon:
    """The worker process's parts and their life cycle."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop = threading.Event()
        self.reexec = False
        self.election: Election | None = None
        self.returning = False
        self.zk = connect(settings)

    def prepare(self) -> NodeContext:
        settings = self.settings
        if not settings.node:
            raise StartupError("no node name: pass --node NAME (or set PVC_NODE)")
        try:
            self.zk.start(timeout=15)
        except Exception as exc:
            raise StartupError(f"cannot reach ZooKeeper at {settings.zookeeper}: {exc}") from exc
        version = cluster_version(self.zk)
        if version is None:
            raise StartupError(f"no pvc cluster at {settings.zookeeper}: run `pvc cluster init` first")
        try:
            schema = Schema.load(version)
        except SchemaError as exc:
            raise StartupError(f"this worker is too old for the cluster: {exc}") from exc
        returning = self.returning = _register(self.zk, schema, settings)
        if returning:
            log.warning("node %s returns after it was declared dead: no VM is started at start-up", settings.node)
        guard = XmlGuard(settings.xml_policy, lambda: self.vf_inventory.vfs(), lambda device: self.nic.has(device))
        try:
            hypervisor = LibvirtHypervisor(settings.libvirt_uri, guard.check, settings.migration_uri,
                                           settings.migration_bandwidth)
        except HypervisorError as exc:
            raise StartupError(str(exc)) from exc
        ctx = NodeContext(settings.node, settings, self.zk, schema, hypervisor,
                          fence=fencer(settings.ipmi_timeout, settings.ipmi_cipher_suite))
        try:
            ctx.nic = self.nic = nic_for(settings.libvirt_uri, hypervisor.conn, settings.sriov_backend)
            self.vf_inventory = VfInventory(ctx, ctx.nic, settings.sriov_pfs)
            self.vf_inventory.sync()
            log.info("SR-IOV settings applied from ZooKeeper: %s", apply_all(ctx))
        except NicError as exc:
            raise StartupError(f"SR-IOV: {exc}") from exc
        install(ctx)
        # The task modules and the queues before the reconciler's first send: that send fixes Celery's queue map,
        # which must already hold ours.
        app = configure(settings)
        app.loader.import_default_modules()
        app.conf.task_queues = [*worker_queues(settings.node), CLUSTER_QUEUE]  # cluster: consumed only as primary
        reconcile_vms(ctx, returning)
        reconcile_jobs(ctx)
        self.zk.DataWatch(schema.path("base.schema.version"), self._on_schema_version(schema.version))
        return ctx

    def _primary(self) -> bool:
        """True while this worker is the primary coordinator (its janitor then re-drives the cluster queue)."""
        return self.election is not None and self.election.monitor is not None

    def _on_schema_version(self, loaded: int):
        def watch(data: bytes | None, _stat) -> bool:
            if data is not None and data.decode() and int(data.decode()) != loaded:
                log.warning("cluster schema moved from %s to %s: restarting this worker to reload it",
                            loaded, data.decode())
                self.reexec = True
                os.kill(os.getpid(), signal.SIGTERM)  # Celery's warm shutdown: running tasks finish first
                return False
            return True

        return watch

    def run(self) -> int:
        ctx = self.prepare()
        inventory = Inventory(ctx, self.stop, self.vf_inventory.sync)
        ctx.inventory = inventory.after
        threads = [inventory, Keepalive(ctx, inventory, self.stop),
                   Janitor(ctx, self.stop, self._primary, self.returning), SessionWatch(ctx, self.stop),
                   Watchdog(ctx, self.stop),
                   threading.Thread(target=check_own_bmc, args=(ctx,), daemon=True)]
        for thread in threads:
            thread.start()
        if self.settings.metrics_listen:
            metrics.serve(self.settings.metrics_listen)
        app = configure(self.settings)
        worker = app.Worker(hostname=worker_hostname(ctx.node), queues=[q.name for q in worker_queues(ctx.node)],
                            pool_cls="threads", concurrency=self.settings.worker_concurrency,
                            loglevel=self.settings.log_level, send_events=True, without_gossip=True,
                            without_mingle=True, optimization="fair")
        from celery.signals import worker_ready, worker_shutting_down

        def ready(sender, **_) -> None:
            _set_state(ctx, "run")
            if self.settings.coordinator:
                self.election = Election(ctx, sender)
                self.election.start()

        def shutting_down(**_) -> None:  # hand primary over before the worker stops, not at session expiry
            if self.election is not None:
                self.election.leave(self.settings.zk_session_timeout)

        worker_ready.connect(ready, weak=False)
        worker_shutting_down.connect(shutting_down, weak=False)
        try:
            worker.start()
        finally:
            self.stop.set()
            try:
                _set_state(ctx, "stop")
            finally:
                ctx.hypervisor.close()
                self.zk.stop()
                self.zk.close()
        return worker.exitcode or 0


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        settings = load_settings(args.config, node=args.node, zookeeper=args.zookeeper, redis=args.redis,
                                 libvirt_uri=args.libvirt_uri)
    except (OSError, ValueError) as exc:
        print(f"pvc-worker: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logs.setup(settings.log_level, settings.log_format, f"[{settings.node or '?'}]", node=settings.node)
    try:
        if settings.ipmi_password:
            check_key(settings.secret_key)
        daemon = Daemon(settings)
    except ValueError as exc:  # MissingIdentity, SecretError: say which setting, never its value
        print(f"pvc-worker: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        status = daemon.run()
    except StartupError as exc:
        print(f"pvc-worker: {exc}", file=sys.stderr)
        daemon.zk.stop()
        return EXIT_CONFIG
    if daemon.reexec:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, "-m", "pvc_workers", *(argv if argv is not None else sys.argv[1:])])
    return status
