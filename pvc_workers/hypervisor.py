"""The libvirt implementation of ``pvc_tasks.context.Hypervisor``: ONE connection for the worker's life.

With libvirt's test driver (``test:///abs/path/node.xml``, the embedded default) the hypervisor's state lives in
this process: it starts from the node file (CPUs, memory) each time the worker starts, so the worker's start-up
reconciler re-defines the node's VMs from ZooKeeper. The test driver has no migration API (see
docs/hypervisors.md). The connection is shared by the worker's threads; libvirt-python calls are thread-safe.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

import libvirt

from pvc_tasks import defaults
from pvc_tasks.context import DomainFacts, HypervisorError, MigrationAborted, NodeResources

__all__ = ["LibvirtHypervisor"]

log = logging.getLogger(__name__)

_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "running",  # shutting down: still running until it is off
    libvirt.VIR_DOMAIN_SHUTOFF: "stopped",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "paused",
}


#: libvirt's answers that mean "the definition or the node's setup is wrong": a job failing on one says so.
_CONFIG_ERRORS = frozenset({
    libvirt.VIR_ERR_XML_ERROR, libvirt.VIR_ERR_XML_DETAIL, libvirt.VIR_ERR_CONFIG_UNSUPPORTED,
    libvirt.VIR_ERR_NO_NETWORK, libvirt.VIR_ERR_INVALID_NETWORK, libvirt.VIR_ERR_NO_STORAGE_POOL,
    libvirt.VIR_ERR_NO_STORAGE_VOL, libvirt.VIR_ERR_NO_NODE_DEVICE, libvirt.VIR_ERR_NO_SECRET,
    libvirt.VIR_ERR_NO_NWFILTER, libvirt.VIR_ERR_NO_INTERFACE,
})


def _quiet(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; ours are raised as HypervisorError instead."""


libvirt.registerErrorHandler(_quiet, None)

_event_loop: threading.Thread | None = None


def _ensure_event_loop() -> None:
    """libvirt's default event loop on a daemon thread, registered before the first connection opens: the
    embedded QEMU driver (``qemu:///embed``) refuses to open without one, and keepalives and domain events of
    remote connections need it."""
    global _event_loop
    if _event_loop is not None:
        return
    libvirt.virEventRegisterDefaultImpl()

    def run() -> None:
        while True:
            libvirt.virEventRunDefaultImpl()

    _event_loop = threading.Thread(target=run, name="libvirt-events", daemon=True)
    _event_loop.start()


def _figures(sent: int, remaining: int, total: int, seconds: float) -> dict:
    """A live migration's figures in MiB, for people: sent so far, left to send, the guest's total (QEMU's
    estimate: pages dirtied again are sent again, so sent may pass it), the seconds since the start and the mean
    rate over them."""
    mib = 1024 * 1024
    return {"sent_mib": round(max(sent, 0) / mib, 1), "remaining_mib": round(remaining / mib, 1),
            "total_mib": round(total / mib, 1), "mib_per_s": round(max(sent, 0) / mib / max(seconds, 1e-3), 1),
            "seconds": round(seconds, 1)}


class LibvirtHypervisor:
    """A node's hypervisor through one libvirt connection."""

    def __init__(self, uri: str, guard: Callable[[str, str], str], migration_uri: str = "",
                 migration_bandwidth: int = 0) -> None:
        self.uri = uri
        #: ``guard(xml, vm)``: the canonical text this node may define, or ``XmlRefused`` (``pvc_workers.xml_guard``).
        self.guard = guard
        self.migration_bandwidth = migration_bandwidth
        #: Where QEMU sends migration data (``tcp://host``); empty lets libvirt use the peer's hostname.
        self.migration_uri = migration_uri
        # The test driver has no migration API; two embedded QEMU drivers cannot reach each other.
        self.live_migration = uri.startswith("qemu") and "embed" not in uri
        _ensure_event_loop()
        try:
            self.conn = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"cannot open libvirt at {uri}: {exc}") from exc

    def close(self) -> None:
        try:
            self.conn.close()
        except libvirt.libvirtError:
            pass

    def _domain(self, name: str) -> libvirt.virDomain:
        try:
            return self.conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"no domain {name} on {self.uri}: {exc}") from exc

    def _facts(self, dom: libvirt.virDomain) -> DomainFacts:
        state, max_kib, _mem, vcpus, _cpu = dom.info()
        return DomainFacts(dom.name(), dom.UUIDString(), _STATES.get(state, "other"), max_kib // 1024, vcpus)

    def _call(self, what: str, fn, *args):
        try:
            return fn(*args)
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"{what} failed: {exc.get_error_message() or exc}",
                                  config=exc.get_error_code() in _CONFIG_ERRORS) from exc

    def check_xml(self, xml: str, vm: str) -> None:
        self.guard(xml, vm)

    def define(self, xml: str, vm: str) -> DomainFacts:
        return self._facts(self._call("define", self.conn.defineXML, self.guard(xml, vm)))

    def undefine(self, name: str) -> None:
        self._call(f"undefine {name}", self._domain(name).undefine)

    def start(self, name: str) -> None:
        self._call(f"start {name}", self._domain(name).create)

    def shutdown(self, name: str) -> None:
        self._call(f"shutdown {name}", self._domain(name).shutdown)

    def destroy(self, name: str) -> None:
        self._call(f"destroy {name}", self._domain(name).destroy)

    def state(self, name: str) -> str:
        try:
            state, _reason = self.conn.lookupByName(name).state()
        except libvirt.libvirtError:
            return "missing"
        return _STATES.get(state, "other")

    def facts(self, name: str) -> DomainFacts | None:
        try:
            return self._facts(self.conn.lookupByName(name))
        except libvirt.libvirtError:
            return None

    def domains(self) -> dict[str, DomainFacts]:
        facts = {}
        for dom in self._call("list domains", self.conn.listAllDomains):
            try:
                facts[dom.name()] = self._facts(dom)
            except libvirt.libvirtError:
                continue  # undefined between the listing and the read
        return facts

    def migrate_live(self, name: str, peer_uri: str, *, max_downtime_ms: int, timeout: float, stall: float,
                     progress: Callable[[float, dict], None], cancelled: Callable[[], bool],
                     dest_xml: str = "") -> dict:
        """libvirt peer-to-peer live migration, watched from here: progress from the job's data figures, abort on
        cancel, when it has not converged within ``timeout`` s, or when no data was sent for
        ``stall`` s (the VM then keeps running on this node). However long it takes, a migration whose data keeps
        moving is never cut off: ``progress`` is called on every look, and that renews the step's lease."""
        dom = self._domain(name)
        flags = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST
                 | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
        params: dict = {libvirt.VIR_MIGRATE_PARAM_URI: self.migration_uri} if self.migration_uri else {}
        if dest_xml:  # the target's definition differs (an SR-IOV VF of the target's)
            params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] = self.guard(dest_xml, name)
        if self.migration_bandwidth:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = int(self.migration_bandwidth)
        outcome: dict[str, BaseException | None] = {"error": None}
        applied: dict = {}

        def run() -> None:
            try:
                dom.migrateToURI3(peer_uri, params, flags)
            except libvirt.libvirtError as exc:
                outcome["error"] = exc

        worker = threading.Thread(target=run, name=f"migrate-{name}", daemon=True)
        started = moved = time.monotonic()
        copied, fraction = -1, 0.0  # bytes sent so far (it only grows while data moves), and the share done
        worker.start()
        aborted = ""
        while worker.is_alive():
            worker.join(defaults.MIGRATION_WATCH_INTERVAL)
            if not worker.is_alive():
                break
            if not aborted and cancelled():
                aborted = "cancelled by request"
            elif not aborted and time.monotonic() - started > timeout:
                aborted = f"did not converge within {timeout:g} s"
            elif not aborted and stall and time.monotonic() - moved > stall:
                aborted = f"no data moved for {stall:g} s"
            if aborted:
                try:
                    dom.abortJob()
                except libvirt.libvirtError:
                    pass  # finished or failed meanwhile; the thread's outcome says which
                progress(fraction, {})  # libvirt answered: the abort is under way, the step is not stuck
                continue
            if max_downtime_ms and not applied:
                # The downtime limit is a parameter of the running migration job: set it once the job exists,
                # and read it back so the caller can report what QEMU really uses.
                try:
                    dom.migrateSetMaxDowntime(int(max_downtime_ms))
                    applied["max_downtime_ms"] = dom.migrateGetMaxDowntime()
                except libvirt.libvirtError:
                    pass
            try:
                stats = dom.jobStats()
            except libvirt.libvirtError:
                stats = {}  # no migration job yet (QEMU still starting on the target) or already gone
            # Data sent, not data left: a guest that dirties memory makes "left" grow again between passes while
            # bytes keep moving (non-convergence is the timeout's to judge, not a stall).
            if (sent := stats.get("data_processed") or 0) > copied:
                copied, moved = sent, time.monotonic()
            total, remaining = stats.get("data_total") or 0, stats.get("data_remaining")
            figures = {}
            if total and remaining is not None:
                fraction = 1 - remaining / total
                figures = applied["figures"] = _figures(copied, remaining, total, time.monotonic() - started)
            # On every look libvirt answered, even before the first figures (the target's QEMU can take a second
            # to start): each call renews the step's lease, and only a call that hangs stops them.
            progress(fraction, figures)
        if aborted and outcome["error"] is not None:
            raise MigrationAborted(f"live migration of {name} aborted: {aborted}; it still runs here")
        if outcome["error"] is not None:
            raise HypervisorError(f"live migration of {name} failed: {outcome['error']}")
        return applied

    def resources(self) -> NodeResources:
        _model, memory_mib, cpus, *_ = self._call("node info", self.conn.getInfo)
        return NodeResources(memory_total_mib=memory_mib, cpus=cpus, load=os.getloadavg()[0])
