"""SR-IOV NIC adapters: what a node's PFs and VFs are, and applying a VF's settings to them.

Two implementations of one interface (``inventory(pfs)`` and ``apply(pf, index, vf, config)``):

``IpLinkNic`` (production)
    Inventory from sysfs (``/sys/class/net/<pf>/mtu``, ``device/sriov_numvfs``, ``device/virtfn<n>`` -> the VF's
    PCI address and netdev name) and the VFs' live settings from ``ip -json -d link show dev <pf>``. Settings are
    applied with one ``ip link set`` command per setting (``ip_link_commands``), so one refused setting (a driver
    without ``query_rss``, say) is reported by name and does not stop the others.

``SimulatedNic`` (libvirt test-driver nodes; these machines cannot create VFs)
    Inventory from libvirt's node-device API: a PCI device with a ``virt_functions`` capability is a PF, one with
    ``phys_function`` a VF, and their ``net`` child devices give the interface names and MACs (the test-driver
    node file of ``pvc_dev`` describes them). Applying writes the settings to a JSON file per node (the
    *simulated NIC state*, next to the node file) and records there the exact ``ip link`` commands production would
    have run. The file outlives the worker, as a real NIC's settings outlive its daemon; deleting it is a cold boot.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import libvirt

from pvc_tasks import defaults
from pvc_tasks.context import NicError
from pvc_tasks.sriov import DEFAULT_LIVE, SETTINGS

__all__ = ["IpLinkNic", "PhysicalFunction", "SimulatedNic", "VirtualFunction", "ip_link_commands", "nic_for",
           "parse_vfinfo"]

log = logging.getLogger(__name__)

#: MTU of every simulated PF (a VF's MTU may not exceed its PF's).
SIMULATED_PF_MTU = 9000


@dataclass(frozen=True)
class PhysicalFunction:
    name: str
    mtu: int
    vfcount: int


@dataclass(frozen=True)
class VirtualFunction:
    """A VF as the system sees it now; ``live`` holds its current settings: every one of ``DEFAULT_LIVE`` but the
    MAC (which is ``mac``)."""

    name: str
    pf: str
    index: int
    pci: tuple[str, str, str, str]  # domain, bus, slot, function (hex, as libvirt's <address> writes them)
    mac: str
    mtu: int
    live: dict[str, str] = field(default_factory=dict, compare=False)


def _on(value: str) -> str:
    return "on" if value == "true" else "off"


def ip_link_commands(pf: str, index: int, vf: str, config: dict[str, str]) -> list[tuple[str, list[str]]]:
    """(setting group, argv) for every setting in ``config``; VLAN id and QoS go together, as do the two rates.
    An empty ``mac`` or ``mtu`` means "leave as it is" and produces no command."""
    base = ["ip", "link", "set", "dev", pf, "vf", str(index)]
    commands: list[tuple[str, list[str]]] = []
    if "vlan_id" in config or "vlan_qos" in config:
        commands.append(("vlan", base + ["vlan", config.get("vlan_id", "0"), "qos", config.get("vlan_qos", "0")]))
    if "tx_rate_min" in config or "tx_rate_max" in config:
        commands.append(("tx_rate", base + ["min_tx_rate", config.get("tx_rate_min", "0"),
                                            "max_tx_rate", config.get("tx_rate_max", "0")]))
    flags = {"spoof_check": "spoofchk", "trust": "trust", "query_rss": "query_rss"}
    for key, word in flags.items():
        if key in config:
            commands.append((key, base + [word, _on(config[key])]))
    if "link_state" in config:
        commands.append(("link_state", base + ["state", config["link_state"]]))
    if config.get("mac"):
        commands.append(("mac", base + ["mac", config["mac"]]))
    if config.get("mtu"):
        commands.append(("mtu", ["ip", "link", "set", "dev", vf, "mtu", config["mtu"]]))
    return commands


_GROUP_KEYS = {"vlan": ("vlan_id", "vlan_qos"), "tx_rate": ("tx_rate_min", "tx_rate_max")}


def parse_vfinfo(document: list[dict]) -> dict[int, dict[str, str]]:
    """VF number -> live settings, from ``ip -json -d link show dev <pf>`` (old and new iproute2 layouts)."""
    out: dict[int, dict[str, str]] = {}
    for link in document:
        for info in link.get("vfinfo_list") or []:
            vlans = info.get("vlan_list") or [{"vlan": info.get("vlan", 0), "qos": info.get("qos", 0)}]
            rate = info.get("rate") or {}
            flag = {True: "true", False: "false"}
            out[int(info["vf"])] = {
                "vlan_id": str(vlans[0].get("vlan", 0)), "vlan_qos": str(vlans[0].get("qos", 0)),
                "tx_rate_min": str(rate.get("min_tx", info.get("min_tx_rate", 0))),
                "tx_rate_max": str(rate.get("max_tx", info.get("max_tx_rate", 0))),
                "spoof_check": flag.get(info.get("spoofchk"), "true"),
                "link_state": str(info.get("link_state", "auto")),
                "trust": flag.get(info.get("trust"), "false"),
                "query_rss": flag.get(info.get("query_rss_en"), "false"),
                "mac": str(info.get("address", "")),
            }
    return out


def _pci(address: str) -> tuple[str, str, str, str]:
    """``0000:3b:02.1`` -> ("0x0000", "0x3b", "0x02", "0x1")."""
    domain, bus, rest = address.split(":")
    slot, function = rest.split(".")
    return f"0x{domain}", f"0x{bus}", f"0x{slot}", f"0x{function}"


class IpLinkNic:
    """Production: sysfs for the inventory, ``ip link`` for the settings."""

    kind = "ip-link"

    def __init__(self, sysfs: str = "/sys", timeout: float = defaults.NIC_COMMAND_TIMEOUT) -> None:
        self.sysfs, self.timeout = Path(sysfs), timeout

    def has(self, device: str | tuple[int, ...]) -> bool:
        """Is there an interface of this name (or a PCI device at this address) on this node now?"""
        if isinstance(device, str):
            return (self.sysfs / "class" / "net" / device).exists()
        return (self.sysfs / "bus" / "pci" / "devices" / "{:04x}:{:02x}:{:02x}.{:x}".format(*device)).exists()

    def _run(self, argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise NicError(f"{' '.join(argv)}: {exc}") from exc
        if done.returncode != 0:
            raise NicError(f"{' '.join(argv)}: {done.stderr.strip() or f'exit {done.returncode}'}")
        return done.stdout

    def inventory(self, pfs: list[str]) -> tuple[list[PhysicalFunction], list[VirtualFunction]]:
        found_pfs, found_vfs = [], []
        for pf in pfs:
            base = self.sysfs / "class" / "net" / pf
            if not base.exists():
                log.warning("SR-IOV PF %s is configured but not present on this node", pf)
                continue
            count = int((base / "device" / "sriov_numvfs").read_text().strip() or 0)
            found_pfs.append(PhysicalFunction(pf, int((base / "mtu").read_text()), count))
            try:
                live = parse_vfinfo(json.loads(self._run(["ip", "-json", "-d", "link", "show", "dev", pf])))
            except (NicError, ValueError) as exc:
                log.warning("live VF settings of %s unreadable: %s", pf, exc)
                live = {}
            for index in range(count):
                virtfn = base / "device" / f"virtfn{index}"
                nets = sorted(os.listdir(virtfn / "net")) if (virtfn / "net").exists() else []
                name = nets[0] if nets else f"{pf}v{index}"
                mtu_file = self.sysfs / "class" / "net" / name / "mtu"
                settings = dict(DEFAULT_LIVE, **live.get(index, {}))
                mtu = int(mtu_file.read_text()) if mtu_file.exists() else 1500
                found_vfs.append(VirtualFunction(name, pf, index, _pci(os.path.basename(os.readlink(virtfn))),
                                                 settings.pop("mac"), mtu, settings))
        return found_pfs, found_vfs

    def apply(self, pf: str, index: int, vf: str, config: dict[str, str]) -> dict[str, str]:
        errors: dict[str, str] = {}
        for group, argv in ip_link_commands(pf, index, vf, config):
            try:
                self._run(argv)
            except NicError as exc:
                for key in _GROUP_KEYS.get(group, (group,)):
                    errors[key] = str(exc)
        return errors


class SimulatedNic:
    """Test-driver nodes: PFs/VFs from libvirt node devices, settings in a JSON file (see the module docstring)."""

    kind = "simulated"

    def __init__(self, conn: libvirt.virConnect, state_file: Path | None) -> None:
        self.conn, self.state_file = conn, state_file
        self._memory: dict = {}
        self._lock = threading.Lock()

    def state(self) -> dict:
        """The simulated NIC state: {"vfs": {vf: settings}, "commands": {vf: [argv, ...]}}."""
        if self.state_file is None:
            return json.loads(json.dumps(self._memory)) or {"vfs": {}, "commands": {}}
        try:
            return json.loads(self.state_file.read_text())
        except (FileNotFoundError, ValueError):
            return {"vfs": {}, "commands": {}}

    def _save(self, state: dict) -> None:
        if self.state_file is None:
            self._memory = state
            return
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
        tmp.replace(self.state_file)  # atomic: a reader never sees half a file

    def has(self, device: str | tuple[int, ...]) -> bool:
        """Is there an interface of this name (or a PCI device at this address) among the node's devices?"""
        pci, net = self._devices()
        if isinstance(device, str):
            return any(interface == device for interface, _mac in net.values())
        return any(_address_of(cap) == device for cap in pci.values())

    def _devices(self) -> tuple[dict[str, ET.Element], dict[str, tuple[str, str]]]:
        """PCI devices by libvirt name, and net devices: parent PCI name -> (interface, MAC)."""
        pci, net = {}, {}
        try:
            devices = self.conn.listAllDevices(0)
        except libvirt.libvirtError as exc:
            raise NicError(f"node devices unreadable: {exc}") from exc
        for dev in devices:
            root = ET.fromstring(dev.XMLDesc(0))
            cap = root.find("capability")
            if cap is None:
                continue
            if cap.get("type") == "pci":
                pci[dev.name()] = cap
            elif cap.get("type") == "net":
                net[root.findtext("parent") or ""] = (cap.findtext("interface") or "", cap.findtext("address") or "")
        return pci, net

    def inventory(self, pfs: list[str]) -> tuple[list[PhysicalFunction], list[VirtualFunction]]:
        pci, net = self._devices()
        by_address = {_address_of(cap): name for name, cap in pci.items()}
        saved = self.state().get("vfs", {})
        found_pfs, found_vfs = [], []
        for name, cap in sorted(pci.items()):
            functions = cap.find("capability[@type='virt_functions']")
            interface = net.get(name, ("", ""))[0]
            if functions is None or interface not in pfs:
                continue
            addresses = functions.findall("address")
            # A simulated PF's MTU is fixed: pvc never changes a PF's settings, only its VFs'.
            found_pfs.append(PhysicalFunction(interface, SIMULATED_PF_MTU, len(addresses)))
            for index, address in enumerate(addresses):
                key = tuple(address.get(a, "") for a in ("domain", "bus", "slot", "function"))
                vf_name, mac = net.get(by_address.get(_normal(key), ""), (f"{interface}v{index}", ""))
                live = {**DEFAULT_LIVE, "mac": mac, "mtu": "1500", **saved.get(vf_name, {})}
                mac, mtu = live.pop("mac"), int(live.pop("mtu"))
                found_vfs.append(VirtualFunction(vf_name, interface, index, key, mac, mtu, live))
        return found_pfs, found_vfs

    def apply(self, pf: str, index: int, vf: str, config: dict[str, str]) -> dict[str, str]:
        """Record the settings and the commands production would run. A setting group named in the state file's
        ``refuse`` map ({group: message}, written by a test as a driver's limits would be) is refused with that
        message, like ``IpLinkNic``'s failed command, and the other groups still apply."""
        with self._lock:
            state = self.state()
            refuse = state.get("refuse", {})
            commands = ip_link_commands(pf, index, vf, config)
            errors = {key: refuse[group] for group, _argv in commands if group in refuse
                      for key in _GROUP_KEYS.get(group, (group,))}
            settings = state.setdefault("vfs", {}).setdefault(vf, {})
            settings.update({k: v for k, v in config.items()
                             if k in SETTINGS and (v or k not in ("mac", "mtu")) and k not in errors})
            state.setdefault("commands", {})[vf] = [argv for group, argv in commands if group not in refuse]
            self._save(state)
        return errors


def _normal(address: tuple[str, ...]) -> tuple[int, ...]:
    return tuple(int(part, 16) for part in address)


def _address_of(cap: ET.Element) -> tuple[int, ...]:
    return tuple(int(cap.findtext(part) or 0) for part in ("domain", "bus", "slot", "function"))


def nic_for(libvirt_uri: str, conn: libvirt.virConnect, backend: str = "auto") -> IpLinkNic | SimulatedNic:
    """The adapter for this node: ``simulated`` on test-driver nodes unless ``backend`` says otherwise. A test
    node file ``/dir/hv1.xml`` keeps its simulated NIC state in ``/dir/hv1.nic.json``."""
    if backend == "auto":
        backend = "simulated" if libvirt_uri.startswith("test://") else "ip-link"
    if backend == "ip-link":
        return IpLinkNic()
    if backend != "simulated":
        raise NicError(f"unknown SR-IOV backend {backend!r} (auto, ip-link or simulated)")
    path = libvirt_uri.removeprefix("test://")
    state = Path(path).with_suffix(".nic.json") if path.startswith("/") else None
    return SimulatedNic(conn, state)
