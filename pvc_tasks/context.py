"""What a task may use on its node, provided by the worker at start-up.

``pvc_tasks`` never imports ``pvc_workers``: tasks reach the node's hypervisor through the ``Hypervisor``
protocol below, and the worker installs an implementation (libvirt) with ``install()`` before it consumes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from kazoo.client import KazooClient

from pvc_tasks.config import Settings
from pvc_tasks.jobs import JobStore
from zk_schema import Schema

__all__ = ["DomainFacts", "Hypervisor", "HypervisorError", "MigrationAborted", "Nic", "NicError", "NodeContext",
           "NodeResources", "XmlRefused", "current", "install"]


class HypervisorError(Exception):
    """The hypervisor refused or failed an operation; the message is the hypervisor's own. ``config``: it refused
    because of the VM's definition or the node's setup (a network, storage pool or device that does not exist, a
    setting it does not support): the operator's to fix, not a fault of pvc or of the node."""

    def __init__(self, message: str, *, config: bool = False) -> None:
        super().__init__(message)
        self.config = config

    def as_reason(self, node: str) -> str:
        """The reason of a job the hypervisor of ``node`` refused: an expected failure, not "internal error"; a
        configuration error says so and whose it is to fix."""
        if self.config:
            return f"configuration error on {node}: {self} (the VM's XML or the node's setup must change)"
        return f"hypervisor of {node}: {self}"


class XmlRefused(HypervisorError):
    """This node's own check of a VM's XML refused it (``pvc_workers.xml_guard``): libvirt never saw it."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"{problems[0]}{more}", config=True)

    def as_reason(self, node: str) -> str:
        return f"xml_not_allowed on {node}: {self}"


class NicError(Exception):
    """The node's SR-IOV NIC (or its simulation) could not be read or refused a setting."""


@dataclass(frozen=True)
class DomainFacts:
    """What the hypervisor reports about one domain."""

    name: str
    uuid: str
    state: str  # running | stopped | paused | crashed | other
    memory_mib: int
    vcpus: int


@dataclass(frozen=True)
class NodeResources:
    memory_total_mib: int
    cpus: int
    load: float


class MigrationAborted(HypervisorError):
    """A live migration was aborted (cancel or convergence timeout); the VM still runs on the source."""


class Hypervisor(Protocol):
    """The operations a node's tasks need from its hypervisor; every call is bounded by the hypervisor."""

    uri: str
    #: True when the hypervisor can live-migrate to a peer (libvirt's test driver and embedded QEMU cannot).
    live_migration: bool

    def migrate_live(self, name: str, peer_uri: str, *, max_downtime_ms: int, timeout: float, stall: float,
                     progress: Callable[[float, dict], None], cancelled: Callable[[], bool],
                     dest_xml: str = "") -> dict:
        """Live-migrate to ``peer_uri`` (with ``dest_xml`` as the target's definition when the VM's devices differ
        there, e.g. another SR-IOV VF); ``progress`` gets 0..1 and the figures in MiB (``sent_mib``,
        ``remaining_mib``, ``total_mib``, ``mib_per_s``; empty before libvirt has any) on every look at the
        migration, ``cancelled`` is polled; returns what the hypervisor applied (``max_downtime_ms``) and the last
        ``figures``. Raises ``MigrationAborted`` when
        cancelled, not converged within ``timeout`` s, or no data moved for ``stall`` s (the VM stays here)."""

    def check_xml(self, xml: str, vm: str) -> None:
        """Raise ``XmlRefused`` unless this node's own policy allows ``xml`` as VM ``vm``'s definition (``define``
        and a live migration's target XML check it too; a migration's prepare asks before anything moves)."""

    def define(self, xml: str, vm: str) -> DomainFacts:
        """Define VM ``vm`` from ``xml``, once this node's policy allowed it (else ``XmlRefused``)."""

    def undefine(self, name: str) -> None: ...

    def start(self, name: str) -> None: ...

    def shutdown(self, name: str) -> None:
        """Ask the guest to shut down and return at once; callers poll ``state``."""

    def destroy(self, name: str) -> None: ...

    def state(self, name: str) -> str:
        """``running`` | ``stopped`` | ``paused`` | ``crashed`` | ``missing``."""

    def domains(self) -> dict[str, DomainFacts]: ...

    def facts(self, name: str) -> DomainFacts | None:
        """One domain's facts; None when it is not defined here."""

    def resources(self) -> NodeResources: ...


class Nic(Protocol):
    """A node's SR-IOV NICs (``pvc_workers.sriov``): production ``ip link`` or the simulated NIC state."""

    #: ``ip-link`` | ``simulated`` (shown by the API, so nobody mistakes a simulation for hardware).
    kind: str

    def has(self, device: str | tuple[int, ...]) -> bool:
        """Is there an interface of this name (or a PCI device at this (domain, bus, slot, function)) on the node?"""

    def apply(self, pf: str, index: int, vf: str, config: dict[str, str]) -> dict[str, str]:
        """Apply the settings in ``config`` to VF ``index`` of ``pf``; returns errors by setting (empty: all
        applied). Raises ``NicError`` only when nothing could be tried."""


@dataclass
class NodeContext:
    """Everything a task on this node uses; one per worker process."""

    node: str
    settings: Settings
    zk: KazooClient
    schema: Schema
    hypervisor: Hypervisor
    #: ``inventory(*vms)``: this node's resource figures (node key name -> value) after a step changed ``vms``
    #: (only those are read again), written with every step's transaction that changes a VM here, so placement
    #: never reads figures that lag behind a change the job made.
    inventory: Callable[..., dict[str, str]] | None = None
    #: Fences a node through its BMC: ``fence(hostname, username, password)`` -> {"ok", "reason", "steps",
    #: "seconds"} (the worker's IPMI adapter, ``pvc_workers.ipmi``; tasks never import the worker).
    fence: Callable[[str, str, str], dict] | None = None
    #: The node's SR-IOV NICs; None on a node without SR-IOV configuration.
    nic: Nic | None = None
    #: ZooKeeper's clock as this node's last keepalive write saw it: (the znode's mtime in ms, this process's
    #: monotonic time when the commit returned). The fencing monitor's "now" (``pvc_workers.monitor``).
    last_beat: tuple[int, float] | None = None

    @property
    def jobs(self) -> JobStore:
        return JobStore(self.zk, self.schema)


_current: NodeContext | None = None


def install(ctx: NodeContext) -> None:
    """Called once by the worker before it starts consuming."""
    global _current
    _current = ctx


def current() -> NodeContext:
    if _current is None:
        raise RuntimeError("no node context: tasks run only inside pvc-worker")
    return _current
